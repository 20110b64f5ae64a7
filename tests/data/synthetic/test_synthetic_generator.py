"""Synthetic records: the FaceRecord contract, argument checks and determinism per face."""

from __future__ import annotations

import numpy as np
import pytest

from sepbn.data.protocols import PROTOCOLS
from sepbn.data.synthetic import SYNTHETIC_PROTOCOLS, generate_face, make_synthetic_records

NUM_POINTS = {"300w": 68, "wflw": 98, "wider5": 5, "cofw": 29, "cofw_pupil": 29, "aflw": 19}


def test_records_follow_the_face_record_contract() -> None:
    for protocol in SYNTHETIC_PROTOCOLS:
        records = make_synthetic_records(3, protocol, seed=7, start_index=10)
        assert len(records) == 3
        for i, r in zip(range(10, 13), records):
            assert r.image_path is None and r.protocol == protocol
            assert r.image.shape == (160, 160, 3) and r.image.dtype == np.uint8
            assert r.landmarks.shape == (NUM_POINTS[protocol], 2)
            assert r.landmarks.dtype == np.float64
            assert r.valid.all() and r.valid.shape == (NUM_POINTS[protocol],)
            assert r.occluded.dtype == bool and r.occluded.shape == (NUM_POINTS[protocol],)
            assert r.domain in (0, 1, 2)
            assert r.source == f"synthetic[seed=7, i={i}]"
            assert set(r.attributes) == {"pose", "expression", "illumination", "occlusion", "blur"}
            assert r.attributes["pose"] == (r.domain != 0)
            if not r.attributes["occlusion"]:
                assert not r.occluded.any()
            assert PROTOCOLS[protocol].normalizer(r.landmarks, r.box) > 5.0
    # the box is the tight box of the 68 points whatever the protocol
    r300 = make_synthetic_records(1, "300w", seed=7)[0]
    r5 = make_synthetic_records(1, "wider5", seed=7)[0]
    tight = np.r_[r300.landmarks.min(0), r300.landmarks.max(0)]
    np.testing.assert_array_equal(r300.box, tight)
    np.testing.assert_array_equal(r5.box, tight)
    assert make_synthetic_records(0) == []


def test_bad_arguments_raise_with_valid_choices() -> None:
    valid = r"'300w'.*'aflw'.*'cofw'.*'cofw_pupil'.*'wflw'.*'wider5'"
    with pytest.raises(ValueError, match=r"'lapa'.*" + valid):
        make_synthetic_records(1, "lapa")
    for kwargs in (
        {"num_faces": -1},
        {"num_faces": 1, "seed": -2},
        {"num_faces": 1, "start_index": -1},
    ):
        with pytest.raises(ValueError, match=">= 0"):
            make_synthetic_records(**kwargs)
    with pytest.raises(ValueError, match=valid):
        generate_face(0, 0).landmarks("lapa")


def test_same_seed_gives_identical_faces_whatever_the_request() -> None:
    a = make_synthetic_records(6, "300w", seed=3)
    b = make_synthetic_records(6, "300w", seed=3)
    c = make_synthetic_records(2, "300w", seed=3, start_index=4)
    d = make_synthetic_records(6, "300w", seed=4)
    for ra, rb in zip(a, b):
        assert ra.image.tobytes() == rb.image.tobytes()
        np.testing.assert_array_equal(ra.landmarks, rb.landmarks)
    for ra, rc in zip(a[4:], c):
        assert ra.image.tobytes() == rc.image.tobytes() and ra.source == rc.source
        np.testing.assert_array_equal(ra.landmarks, rc.landmarks)
    assert all(ra.image.tobytes() != rd.image.tobytes() for ra, rd in zip(a, d))
    # faces within one dataset differ from each other
    assert len({r.image.tobytes() for r in a}) == len(a)

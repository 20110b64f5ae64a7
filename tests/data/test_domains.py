"""Pose sub-domains from landmark geometry: a 3D toy head, flip consistency, real yaw."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sepbn.data.domains import (
    POSE_POINTS,
    estimate_yaw,
    mirror_domain,
    pose_domain,
)
from sepbn.data.protocols import LandmarkProtocol, get_protocol


def _toy_heads(protocol: str, yaws_deg, roll=0.0, seed=0) -> np.ndarray:
    """Orthographic views of a head whose eye references sit at x = +-45, z = 0 and whose
    nose tip protrudes by the calibrated depth, rotated by yaw (nose to image-left for
    positive yaw) then by an in-plane roll, scaled and shifted."""
    proto = get_protocol(protocol)
    ref = POSE_POINTS[protocol]
    rng = np.random.default_rng(seed)
    half = 45.0
    pts3d = np.concatenate(
        [rng.uniform(-60, 60, (proto.num_points, 2)), np.zeros((proto.num_points, 1))], 1
    )
    for eye, sign in ((ref.left_eye, -1), (ref.right_eye, 1)):
        pts3d[list(eye), :] = 0.0
        pts3d[list(eye), 0] = sign * np.linspace(15, 35, len(eye))
    pts3d[ref.left] = (-half, 0, 0)
    pts3d[ref.right] = (half, 0, 0)
    pts3d[ref.nose] = (0, 40, ref.depth * 2 * half)
    out = []
    for yaw in yaws_deg:
        phi = math.radians(yaw)
        x = pts3d[:, 0] * math.cos(phi) - pts3d[:, 2] * math.sin(phi)
        xy = np.stack([x, pts3d[:, 1]], 1)
        r = math.radians(roll)
        rot = np.array([[math.cos(r), -math.sin(r)], [math.sin(r), math.cos(r)]])
        out.append(xy @ rot.T * 1.7 + (300, 200))
    return np.stack(out)


@pytest.mark.parametrize("protocol", sorted(POSE_POINTS))
@pytest.mark.parametrize("roll", [0.0, 20.0])
def test_yaw_of_a_toy_head_is_recovered(protocol, roll):
    yaws = [-70, -35, -31, -29, -10, 0, 12, 29, 31, 50, 80]
    heads = _toy_heads(protocol, yaws, roll)
    np.testing.assert_allclose(estimate_yaw(heads, get_protocol(protocol)), yaws, atol=1e-6)
    expected = [2, 2, 2, 0, 0, 0, 0, 0, 1, 1, 1]
    np.testing.assert_array_equal(pose_domain(heads, get_protocol(protocol)), expected)
    np.testing.assert_array_equal(
        pose_domain(heads, get_protocol(protocol), threshold=11), [2, 2, 2, 2, 0, 0, 1, 1, 1, 1, 1]
    )


@pytest.mark.parametrize("protocol", sorted(POSE_POINTS))
def test_pose_points_agree_with_the_flip_permutation(protocol):
    proto = get_protocol(protocol)
    ref = POSE_POINTS[protocol]
    perm = proto.flip_perm
    assert perm[ref.left] == ref.right and perm[ref.nose] == ref.nose
    assert sorted(perm[i] for i in ref.left_eye) == sorted(ref.right_eye)
    # So mirroring a face mirrors its domain.
    heads = _toy_heads(protocol, [-50, -5, 0, 20, 45], roll=10.0, seed=1)
    flipped = proto.flip(heads, width=640)
    np.testing.assert_array_equal(
        pose_domain(flipped, proto), mirror_domain(pose_domain(heads, proto))
    )


def test_missing_points_rules():
    proto = get_protocol("aflw")
    heads = _toy_heads("aflw", [0, 0, 0, 0, 50, 0])
    valid = np.ones((6, 19), bool)
    valid[0, [6, 7, 8]] = False  # image-left eye hidden: faces the image's left
    valid[1, [9, 10, 11]] = False
    valid[2, [6, 7, 8, 9, 10, 11]] = False  # no eyes: unknown
    valid[3, 13] = False  # no nose tip: unknown
    valid[4, 6] = False  # outer corner missing: eye-centre fallback still sees the profile
    valid[5, 6] = False
    np.testing.assert_array_equal(pose_domain(heads, proto, valid), [1, 2, -1, -1, 1, 0])
    assert np.isnan(estimate_yaw(heads, proto, valid)[:4]).all()


def test_unknown_protocol_gives_unknown_and_bad_input_raises():
    custom = LandmarkProtocol("tri3", 3, (0, 1, 2), "box")
    np.testing.assert_array_equal(pose_domain(np.zeros((4, 3, 2)), custom), [-1] * 4)
    with pytest.raises(ValueError, match=r"\(N, 68, 2\) for protocol '300w', got \(68, 2\)"):
        pose_domain(np.zeros((68, 2)), get_protocol("300w"))
    with pytest.raises(ValueError, match="threshold must be in"):
        pose_domain(np.zeros((1, 68, 2)), get_protocol("300w"), threshold=95)
    # Coincident eye references give no estimate rather than a division error.
    assert pose_domain(np.zeros((1, 68, 2)), get_protocol("300w"))[0] == -1


def test_mirror_domain():
    assert [mirror_domain(d) for d in (-1, 0, 1, 2)] == [-1, 0, 2, 1]
    np.testing.assert_array_equal(mirror_domain(np.array([1, 2, 0, -1])), [2, 1, 0, -1])


@pytest.mark.realdata
def test_real_aflw2000_yaw_bins(data_root):
    """Ground-truth yaw of the 16 AFLW2000-3D samples, binned at 30 degrees."""
    sio = pytest.importorskip("scipy.io")
    files = sorted((data_root / "AFLW2000-3D_samples" / "AFLW2000").glob("*.mat"))
    assert len(files) == 16
    pts68, pts19, valid19, yaw = [], [], [], []
    for f in files:
        m = sio.loadmat(f)
        pts68.append(m["pt3d_68"][:2].T)
        aflw21 = m["pt2d"].T
        pts19.append(np.delete(aflw21, [12, 16], axis=0))  # AFLW-19 drops the two ears
        valid19.append((pts19[-1] >= 0).all(axis=1))
        yaw.append(math.degrees(m["Pose_Para"][0, 1]))
    yaw = np.array(yaw)
    truth = np.where(yaw > 30, 1, np.where(yaw < -30, 2, 0))
    assert set(truth) == {0, 1, 2}
    np.testing.assert_array_equal(pose_domain(np.stack(pts68), get_protocol("300w")), truth)
    got = pose_domain(np.stack(pts19), get_protocol("aflw"), np.stack(valid19))
    np.testing.assert_array_equal(got, truth)
    est = estimate_yaw(np.stack(pts68), get_protocol("300w"))
    assert np.abs(est - yaw).max() < 12

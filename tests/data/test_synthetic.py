"""Tests of the synthetic face generator: contract, determinism, protocol semantics, pixels."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy.ndimage import map_coordinates

from sepbn.data.protocols import PROTOCOLS
from sepbn.data.synthetic import (
    SYNTHETIC_PROTOCOLS,
    SyntheticFaceConfig,
    benchmark_generator,
    generate_face,
    make_synthetic_records,
    sample_face_params,
    save_synthetic_preview,
)
from sepbn.data.synthetic_render import project, render_face

NUM_POINTS = {"300w": 68, "wflw": 98, "wider5": 5}
NEUTRAL = SyntheticFaceConfig(identity=0.0, expression=0.0, occlusion_prob=0.0, noise_std=0.0)


def _neutral_frontal(protocol: str = "300w") -> np.ndarray:
    middle = (NEUTRAL.image_size - 1) / 2
    p = sample_face_params(0, 0, NEUTRAL)
    p = replace(p, yaw=0.0, pitch=0.0, roll=0.0, center=(middle, middle))
    return render_face(p, NEUTRAL.image_size).landmarks(protocol)


def _similarity_align(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform of ``src`` (L, 2) onto ``dst`` (L, 2)."""
    a, b = src - src.mean(0), dst - dst.mean(0)
    ca, cb = a[:, 0] + 1j * a[:, 1], b[:, 0] + 1j * b[:, 1]
    z = (np.conj(ca) @ cb) / (np.conj(ca) @ ca)
    r = z * ca
    return np.stack([r.real, r.imag], axis=1) + dst.mean(0)


def test_config_rejects_bad_values_naming_them() -> None:
    bad = {
        "image_size": 10,
        "domain_probs": (0.5, 0.5, 0.5),
        "frontal_yaw": 40.0,
        "profile_yaw": (60.0, 30.0),
        "pitch": -1.0,
        "face_size": (0.0, 0.5),
        "camera_distance": 2.0,
        "occlusion_prob": 1.5,
        "noise_std": -1.0,
    }
    for name, value in bad.items():
        with pytest.raises(ValueError, match=name):
            SyntheticFaceConfig(**{name: value})


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
    with pytest.raises(ValueError, match=r"'cofw'.*'300w'.*'wflw'.*'wider5'"):
        make_synthetic_records(1, "cofw")
    for kwargs in (
        {"num_faces": -1},
        {"num_faces": 1, "seed": -2},
        {"num_faces": 1, "start_index": -1},
    ):
        with pytest.raises(ValueError, match=">= 0"):
            make_synthetic_records(**kwargs)
    with pytest.raises(ValueError, match="wider5"):
        generate_face(0, 0).landmarks("aflw")


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


def test_protocols_annotate_the_same_pixels_consistently() -> None:
    cfg = SyntheticFaceConfig(occlusion_prob=0.5)
    faces = {p: make_synthetic_records(5, p, seed=11, config=cfg) for p in SYNTHETIC_PROTOCOLS}
    for r68, r5, r98 in zip(faces["300w"], faces["wider5"], faces["wflw"]):
        assert r68.image.tobytes() == r5.image.tobytes() == r98.image.tobytes()
        np.testing.assert_array_equal(r68.box, r98.box)
        lm = r68.landmarks
        expected5 = np.stack([lm[36:42].mean(0), lm[42:48].mean(0), lm[30], lm[48], lm[54]])
        np.testing.assert_allclose(r5.landmarks, expected5, atol=1e-9)
        w = r98.landmarks
        np.testing.assert_allclose(w[0:33:2], lm[0:17], atol=1e-9)  # even contour points
        np.testing.assert_allclose(w[33:38], lm[17:22], atol=1e-9)  # left brow, upper edge
        np.testing.assert_allclose(w[42:47], lm[22:27], atol=1e-9)  # right brow, upper edge
        np.testing.assert_allclose(w[51:60], lm[27:36], atol=1e-9)  # nose
        np.testing.assert_allclose(w[[60, 64, 68, 72]], lm[[36, 39, 42, 45]], atol=1e-9)
        np.testing.assert_allclose(w[76:96], lm[48:68], atol=1e-9)  # lips
        assert r68.occluded[[36, 39, 42, 45]].tolist() == r98.occluded[[60, 64, 68, 72]].tolist()


def test_wflw_extra_points_are_where_their_names_say() -> None:
    w = _neutral_frontal("wflw")
    lm = _neutral_frontal("300w")
    # odd contour points lie between their even neighbours
    mid = 0.5 * (w[0:31:2] + w[2:33:2])
    assert np.linalg.norm(w[1:32:2] - mid, axis=1).max() < 0.05 * np.linalg.norm(lm[45] - lm[36])
    for corner_a, upper, corner_b, lower in ((60, [61, 62, 63], 64, [65, 66, 67]),
                                             (68, [69, 70, 71], 72, [73, 74, 75])):  # fmt: skip
        line_y = 0.5 * (w[corner_a, 1] + w[corner_b, 1])
        assert (w[upper, 1] < line_y).all() and (w[lower, 1] > line_y).all()
        xs = w[[corner_a, *upper, corner_b], 0]
        assert (np.diff(xs) > 0).all()  # upper lid runs left to right
        assert (np.diff(w[[corner_b, *lower, corner_a], 0]) < 0).all()  # lower lid back
        pupil = w[96] if corner_a == 60 else w[97]
        assert w[corner_a, 0] < pupil[0] < w[corner_b, 0]
    # lower brow edge (38-41, 47-50) lies below the upper edge, between brow and eye
    assert (w[38:42, 1] > w[[37, 36, 35, 34], 1]).all()
    assert (w[[50, 49, 48, 47], 1] > w[42:46, 1]).all()
    assert (w[38:42, 1] < w[60, 1]).all()


def test_template_has_300w_semantics_on_a_frontal_face() -> None:
    lm = _neutral_frontal()
    x, y = lm[:, 0], lm[:, 1]
    assert x[36] < x[39] < x[42] < x[45]  # eye corners, left to right
    assert x[48] < x[51] < x[54] and x[31] < x[33] < x[35]
    assert (np.diff(x[0:9]) > 0).all() and (np.diff(x[8:17]) > 0).all()
    assert y[8] == y.max() and x[0] == x.min() and x[16] == x.max()
    assert y[17:27].max() < y[36:48].min()  # brows above the eyes
    assert y[36:48].max() < y[30] < y[33] < y[51] < y[62] < y[57]  # eyes, nose, mouth
    assert (y[[37, 38]] < y[[41, 40]]).all() and (y[[43, 44]] < y[[47, 46]]).all()
    assert (np.diff(y[27:31]) > 0).all()  # the ridge runs down to the tip
    # mirror symmetry under the 300-W flip permutation: the neutral face is symmetric
    np.testing.assert_allclose(PROTOCOLS["300w"].flip(lm, 160), lm, atol=1e-6)


@pytest.mark.parametrize("protocol", SYNTHETIC_PROTOCOLS)
def test_flip_permutation_matches_the_regenerated_mirror_face(protocol: str) -> None:
    """Mirroring a face with protocol.flip equals generating its mirror image."""
    size = NEUTRAL.image_size
    flip = PROTOCOLS[protocol].flip
    for i in range(6):
        # A neutral face is symmetric: negating yaw and roll and mirroring the position
        # must give the mirrored annotation, point for point.
        p = sample_face_params(5, i, NEUTRAL)
        assert not p.attributes["expression"] and not p.occluders
        twin = replace(p, yaw=-p.yaw, roll=-p.roll, center=(size - 1 - p.center[0], p.center[1]))
        a, b = render_face(p, size), render_face(twin, size)
        mirrored = flip(a.landmarks(protocol), size)
        np.testing.assert_allclose(mirrored, b.landmarks(protocol), atol=1e-9)


def test_mirrored_parameters_render_the_mirror_image() -> None:
    cfg = SyntheticFaceConfig(noise_std=0.0, occlusion_prob=0.6)
    size = cfg.image_size
    flip = PROTOCOLS["300w"].flip
    for i in range(6):
        p = sample_face_params(9, i, cfg)
        a, b = render_face(p, size), render_face(p.mirrored(size), size)
        np.testing.assert_allclose(flip(a.landmarks("300w"), size), b.landmarks("300w"), atol=1e-9)
        assert b.params.domain == (0, 2, 1)[p.domain]
        diff = np.abs(a.image[:, ::-1].astype(int) - b.image.astype(int))
        assert diff.mean() < 0.2 and np.percentile(diff, 99) <= 2
        occluded = a.occluded(a.landmarks("300w"))
        np.testing.assert_array_equal(occluded[list(PROTOCOLS["300w"].flip_perm)],
                                      b.occluded(b.landmarks("300w")))  # fmt: skip


def test_pose_sub_domains_are_unbalanced_as_configured() -> None:
    cfg = SyntheticFaceConfig()
    params = [sample_face_params(0, i, cfg) for i in range(1500)]
    domains = np.array([p.domain for p in params])
    yaws = np.array([p.yaw for p in params])
    fractions = np.bincount(domains, minlength=3) / len(domains)
    np.testing.assert_allclose(fractions, [0.70, 0.15, 0.15], atol=0.04)
    assert (np.abs(yaws[domains == 0]) < 20.0).all()
    assert ((yaws[domains == 1] <= -35.0) & (yaws[domains == 1] >= -75.0)).all()
    assert ((yaws[domains == 2] >= 35.0) & (yaws[domains == 2] <= 75.0)).all()
    # "left" means the nose tip points to the image's left: measured on the projected
    # landmarks, with the in-plane roll undone, against the ear-level contour points
    for p in params[:300]:
        a = np.deg2rad(-p.roll)
        upright = project(p)[0][:68] @ np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]])
        x = upright[:, 0]
        turn = (x[30] - 0.5 * (x[0] + x[16])) / abs(x[16] - x[0])
        assert {0: abs(turn) < 0.4, 1: turn < -0.45, 2: turn > 0.45}[p.domain], (p.yaw, turn)
    other = SyntheticFaceConfig(domain_probs=(0.4, 0.5, 0.1))
    d = np.array([sample_face_params(1, i, other).domain for i in range(1000)])
    np.testing.assert_allclose(np.bincount(d, minlength=3) / 1000, [0.4, 0.5, 0.1], atol=0.05)


def test_landmarks_sit_on_the_drawn_features() -> None:
    """Local contrast around the landmarks peaks at zero offset, and pupils are dark."""
    cfg = SyntheticFaceConfig(occlusion_prob=0.0, domain_probs=(1.0, 0.0, 0.0), blur_prob=0.0)
    records = make_synthetic_records(50, "wflw", seed=21, config=cfg)
    contour = np.r_[0:33, 33:51, 55:60, 60:96]  # contour, brows, nose base, eyes, lips
    radius = 3
    contrast = np.zeros((2 * radius + 1, 2 * radius + 1))
    pupil_darker = []
    for r in records:
        gray = cv2.cvtColor(r.image, cv2.COLOR_RGB2GRAY).astype(np.float32)
        mean = cv2.blur(gray, (5, 5))
        std = np.sqrt(np.maximum(cv2.blur(gray * gray, (5, 5)) - mean * mean, 0.0))
        lm = r.landmarks[contour]
        for dy in range(-radius, radius + 1):
            for dx in range(-radius, radius + 1):
                at = [lm[:, 1] + dy, lm[:, 0] + dx]
                contrast[dy + radius, dx + radius] += map_coordinates(std, at, order=1).mean()
        pupils = map_coordinates(gray, [r.landmarks[96:98, 1], r.landmarks[96:98, 0]], order=1)
        cheeks = 0.5 * (r.landmarks[[4, 28]] + r.landmarks[[54, 28]])  # between jaw and nose
        skin = map_coordinates(gray, [cheeks[:, 1], cheeks[:, 0]], order=1)
        pupil_darker.append(pupils.mean() < 0.7 * skin.mean())
    peak = np.unravel_index(contrast.argmax(), contrast.shape)
    assert peak == (radius, radius), contrast
    ring2 = np.r_[contrast[radius - 2, :], contrast[radius + 2, :]].max()
    assert contrast[radius, radius] > 1.1 * ring2
    assert np.mean(pupil_darker) > 0.9


def test_occluded_flags_match_the_pixels() -> None:
    cfg = SyntheticFaceConfig(occlusion_prob=1.0)
    size = cfg.image_size
    covered_changed, n_covered = 0, 0
    for i in range(12):
        p = sample_face_params(2, i, cfg)
        face = render_face(p, size)
        clear = render_face(replace(p, occluders=()), size)
        lm = face.landmarks("300w")
        flags = face.occluded(lm)
        assert p.attributes["occlusion"] and face.occluder_mask is not None
        ij = np.round(lm).astype(int)
        inside = ((ij >= 0) & (ij < size)).all(1)
        changed = np.abs(face.image.astype(int) - clear.image.astype(int)).sum(-1)
        far = cv2.distanceTransform((face.occluder_mask == 0).astype(np.uint8), cv2.DIST_L2, 5)
        for k in np.flatnonzero(inside):
            x, y = ij[k]
            if flags[k]:
                n_covered += 1
                covered_changed += changed[y, x] > 0
            elif far[y, x] > 10:  # beyond the reach of the blur
                assert changed[y, x] == 0
    assert n_covered > 20 and covered_changed / n_covered > 0.9


def test_preview_is_written_with_landmarks(tmp_path: Path) -> None:
    out = save_synthetic_preview(tmp_path / "sub" / "preview.png", num=4, seed=0)
    img = cv2.imread(str(out))
    assert img is not None and img.shape == (24 + 2 * 160, 2 * 160, 3)
    raw = make_synthetic_records(1, seed=0)[0].image
    tile = cv2.cvtColor(img[24 : 24 + 160, :160], cv2.COLOR_BGR2RGB)
    drawn = (tile.astype(int) - raw).any(-1)
    assert drawn.mean() > 0.02  # the landmark dots (and label) are drawn over the face
    green = (tile[..., 1] > 200) & (tile[..., 0] < 80) & (tile[..., 2] < 80)
    assert green.sum() > 68
    with pytest.raises(ValueError, match="num"):
        save_synthetic_preview(tmp_path / "x.png", num=0)


def test_benchmark_reports_side_by_side_rates() -> None:
    result = benchmark_generator(num_faces=10)
    assert set(result) == {"images_per_s", "cpu_images_per_s", "jpeg_decodes_per_s", "ratio"}
    assert all(v > 0 for v in result.values())


def _read_300w_crops(root: Path) -> np.ndarray:
    shapes = []
    for f in sorted((root / "300W_train_crops").glob("*/trainset/*.pts"))[:600]:
        lines = f.read_text().splitlines()
        shapes.append(np.array([ln.split() for ln in lines[3:71]], dtype=np.float64) - 1.0)
    return np.stack(shapes)


def _frontal_mean(shapes: np.ndarray, ref: np.ndarray, eyes: tuple[int, int], nose: int):
    a, b = eyes
    iod = np.linalg.norm(shapes[:, b] - shapes[:, a], axis=1)
    axis = (shapes[:, b] - shapes[:, a]) / iod[:, None]
    offset = ((shapes[:, nose] - 0.5 * (shapes[:, a] + shapes[:, b])) * axis).sum(1) / iod
    frontal = shapes[np.abs(offset) < 0.04]
    assert len(frontal) > 50
    return np.mean([_similarity_align(s, ref) for s in frontal], axis=0)


@pytest.mark.realdata
def test_template_matches_real_annotations(data_root: Path) -> None:
    """The neutral frontal face is close to the mean of real near-frontal annotations."""
    ref = _neutral_frontal("300w")
    mean = _frontal_mean(_read_300w_crops(data_root), ref, (36, 45), 30)
    err = np.linalg.norm(_similarity_align(ref, mean) - mean, axis=1)
    nme = err / np.linalg.norm(mean[36] - mean[45])
    assert nme.mean() < 0.025 and nme.max() < 0.06
    # the measure has the power to catch a wrong point order: left/right swapped labels
    swapped = ref[list(PROTOCOLS["300w"].flip_perm)]
    bad = np.linalg.norm(_similarity_align(swapped, mean) - mean, axis=1)
    assert bad.mean() > 4.0 * err.mean()

    lists = data_root / "WFLW" / "WFLW_annotations" / "list_98pt_test"
    rows = []
    for name in ("blur", "makeup"):
        for line in (lists / f"list_98pt_test_{name}.txt").read_text().splitlines():
            rows.append(np.array(line.split()[:196], dtype=np.float64).reshape(98, 2))
    ref98 = _neutral_frontal("wflw")
    mean98 = _frontal_mean(np.stack(rows), ref98, (60, 72), 54)
    err98 = np.linalg.norm(_similarity_align(ref98, mean98) - mean98, axis=1)
    assert (err98 / np.linalg.norm(mean98[60] - mean98[72])).mean() < 0.04

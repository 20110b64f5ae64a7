"""Tests of the synthetic face generator: contract, determinism, protocol semantics, pixels."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy.io import loadmat
from scipy.ndimage import map_coordinates

from sepbn.data.formats.aflw import read_aflw2000
from sepbn.data.formats.coco import read_coco
from sepbn.data.formats.cofw import read_cofw68
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
from sepbn.data.synthetic_template import (
    FULL_MATRIX,
    FULL_OFFSET,
    NUM_BASE,
    NUM_LANDMARKS,
    PROTOCOL_WEIGHTS,
    TEMPLATE,
)

NUM_POINTS = {"300w": 68, "wflw": 98, "wider5": 5, "cofw": 29, "cofw_pupil": 29, "aflw": 19}
NEUTRAL = SyntheticFaceConfig(identity=0.0, expression=0.0, occlusion_prob=0.0, noise_std=0.0)


def _neutral_frontal(protocol: str = "300w") -> np.ndarray:
    middle = (NEUTRAL.image_size - 1) / 2
    p = sample_face_params(0, 0, NEUTRAL)
    p = replace(p, yaw=0.0, pitch=0.0, roll=0.0, center=(middle, middle))
    return render_face(p, NEUTRAL.image_size).landmarks(protocol)


def _similarity(src: np.ndarray, dst: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """The least-squares similarity transform taking ``src`` (L, 2) onto ``dst`` (L, 2)."""
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    ca, cb = (src - src_mean) @ np.array([1, 1j]), (dst - dst_mean) @ np.array([1, 1j])
    z = (np.conj(ca) @ cb) / (np.conj(ca) @ ca)  # rotation and scale as one complex number

    def apply(points: np.ndarray) -> np.ndarray:
        r = z * ((points - src_mean) @ np.array([1, 1j]))
        return np.stack([r.real, r.imag], axis=-1) + dst_mean

    return apply


def _similarity_align(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """``src`` (L, 2) moved onto ``dst`` (L, 2) by the least-squares similarity transform."""
    return _similarity(src, dst)(src)


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


def test_cofw_and_aflw_points_are_the_documented_combinations() -> None:
    """Expected points written out from the 300-W and WFLW points of the same faces."""
    cfg = SyntheticFaceConfig(occlusion_prob=0.5)
    protocols = ("300w", "wflw", "cofw", "cofw_pupil", "aflw")
    faces = {p: make_synthetic_records(5, p, seed=11, config=cfg) for p in protocols}
    again = make_synthetic_records(5, "aflw", seed=11, config=cfg)
    for r68, r98, r29, r29p, r19, r19b in zip(*faces.values(), again):
        assert r68.image.tobytes() == r29.image.tobytes() == r29p.image.tobytes()
        assert r68.image.tobytes() == r19.image.tobytes() == r19b.image.tobytes()
        np.testing.assert_array_equal(r19.landmarks, r19b.landmarks)
        np.testing.assert_array_equal(r29.box, r68.box)
        np.testing.assert_array_equal(r19.box, r68.box)
        np.testing.assert_array_equal(r29.landmarks, r29p.landmarks)
        lm, w = r68.landmarks, r98.landmarks
        ala_l, ala_r = 1.35 * lm[31] - 0.35 * lm[33], 1.35 * lm[35] - 0.35 * lm[33]
        expected29 = np.stack(
            [lm[17], lm[26], lm[21], lm[22],  # brow ends
             lm[19], w[40], lm[24], w[48],  # brow middles: top (upper edge), bottom (lower edge)
             lm[36], lm[45], lm[39], lm[42],  # eye corners
             w[62], w[66], w[70], w[74],  # lid middles
             w[96], w[97],  # pupils
             ala_l, ala_r, lm[30], lm[33],  # nose
             lm[48], lm[54], lm[51], lm[62], lm[66], lm[57], lm[8]]  # mouth, chin
        )  # fmt: skip
        np.testing.assert_allclose(r29.landmarks, expected29, atol=1e-9)
        expected19 = np.stack(
            [0.8 * lm[17] + 0.2 * lm[18], lm[19], lm[21],
             lm[22], lm[24], 0.8 * lm[26] + 0.2 * lm[25],
             1.1 * lm[36] - 0.1 * lm[39], lm[[37, 38, 40, 41]].mean(0), lm[39],
             lm[42], lm[[43, 44, 46, 47]].mean(0), 1.1 * lm[45] - 0.1 * lm[42],
             ala_l, lm[30], ala_r,
             lm[48], 0.5 * (lm[62] + lm[66]), lm[54],
             lm[8]]
        )  # fmt: skip
        np.testing.assert_allclose(r19.landmarks, expected19, atol=1e-9)
        same = {8: 36, 9: 45, 10: 39, 11: 42, 20: 30, 21: 33, 22: 48, 23: 54, 28: 8}
        assert r29.occluded[list(same)].tolist() == r68.occluded[list(same.values())].tolist()
        assert r19.occluded[[13, 18]].tolist() == r68.occluded[[30, 8]].tolist()


def _assert_left_first(x: np.ndarray, protocol: str, mid: float) -> None:
    """Of each flip pair the image-left point comes first; unpaired points are on the midline."""
    for i, j in enumerate(PROTOCOLS[protocol].flip_perm):
        if i < j:
            assert x[i] < x[j], (protocol, i, j)
        elif i == j:
            assert abs(x[i] - mid) < 1e-6, (protocol, i)


def test_cofw_and_aflw_points_are_where_their_names_say() -> None:
    lm = _neutral_frontal("300w")
    x, y = _neutral_frontal("cofw").T
    mid = lm[8, 0]  # the neutral frontal face is symmetric about the chin's column
    _assert_left_first(x, "cofw", mid)
    assert x[0] < x[4] < x[2] and x[3] < x[6] < x[1]  # brow outer, middle, inner end
    assert x[8] < x[16] < x[10] < x[11] < x[17] < x[9]  # eye corners around the pupils
    for top, bottom, upper_lid, pupil, lower_lid in ((4, 5, 12, 16, 13), (6, 7, 14, 17, 15)):
        assert y[top] < y[bottom] < y[upper_lid] < y[pupil] < y[lower_lid]
    assert x[18] < lm[31, 0] and x[19] > lm[35, 0]  # nose wings beyond iBUG's alar base
    assert y[16] < y[20] < y[21] < y[24] < y[25] < y[26] < y[27] < y[28] == y.max()
    assert x[22] < x[18] and x[23] > x[19]  # mouth corners wider than the nose

    x, y = _neutral_frontal("aflw").T
    _assert_left_first(x, "aflw", mid)
    for group in (np.r_[0:6], np.r_[6:12], np.r_[12:15], np.r_[15:18]):
        assert (np.diff(x[group]) > 0).all()  # brows, eyes, nose, mouth run left to right
    assert y[0:6].max() < y[6:12].min() and y[6:12].max() < y[13] < y[16] < y[18] == y.max()
    assert x[6] < lm[36, 0] and x[11] > lm[45, 0]  # outer eye corners beyond iBUG's
    assert x[12] < lm[31, 0] and x[14] > lm[35, 0]  # nose wings beyond the alar base
    for centre, upper, lower in ((7, [37, 38], [41, 40]), (10, [43, 44], [47, 46])):
        assert (lm[upper, 1] < y[centre]).all() and (y[centre] < lm[lower, 1]).all()
    assert lm[62, 1] < y[16] < lm[66, 1]  # mouth centre between the inner lips


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


def _layout_on_real_68(protocol: str, real68: np.ndarray) -> np.ndarray:
    """A synthetic protocol layout applied to real 68-point annotations ``(68, 2)``.

    Template points that the 68-point markup lacks (lower brow edge, irises) are put where
    the frontal template has them relative to its landmarks within 0.6 units (the brow
    and eye of their side), by a least-squares similarity transform.
    """
    assert not (PROTOCOL_WEIGHTS[protocol] @ FULL_OFFSET).any()  # no iris or pupil rims
    weights = PROTOCOL_WEIGHTS[protocol] @ FULL_MATRIX  # (L, P_base)
    base = np.zeros((NUM_BASE, 2))
    base[:NUM_LANDMARKS] = real68
    frontal = TEMPLATE[:, :2]
    for b in NUM_LANDMARKS + np.flatnonzero(weights[:, NUM_LANDMARKS:].any(axis=0)):
        near = np.linalg.norm(frontal[:NUM_LANDMARKS] - frontal[b], axis=1) < 0.6
        base[b] = _similarity(frontal[:NUM_LANDMARKS][near], real68[near])(frontal[b])
    return weights @ base


def _check_layout(protocol: str, pred: np.ndarray, gt: np.ndarray, iod: np.ndarray) -> np.ndarray:
    """Compare ``(N, L, 2)`` mapped points with real ones (NaN where not annotated).

    Thresholds, in inter-ocular distances: points that both markups define alike (eye
    corners, nose tip, mouth corners) differ by 0.01-0.05 between the two annotations
    of one face, so the mean must stay below 0.05 and each point's mean below 0.09 (the
    largest seen, 0.066, is at the brows, which COFW and iBUG outline differently); a
    left/right swap costs over 0.4, and a wrong feature typically 0.1-0.3.
    """
    err = np.linalg.norm(pred - gt, axis=-1) / iod[:, None]  # (N, L)
    per_point = np.nanmean(err, axis=0)
    assert np.nanmean(err) < 0.05, (protocol, per_point)
    assert per_point.max() < 0.09, (protocol, per_point)
    flip = list(PROTOCOLS[protocol].flip_perm)
    swapped = np.linalg.norm(pred[:, flip] - gt, axis=-1) / iod[:, None]
    assert np.nanmean(swapped) > 0.3
    return err


def _check_beats_ibug(
    err: np.ndarray,
    real68: np.ndarray,
    gt: np.ndarray,
    iod: np.ndarray,
    ours: list[int],
    ibug: list[int],
) -> None:
    """Points placed off the iBUG points (``err`` (N, L)) fit better than those points would."""
    plain = np.linalg.norm(real68[:, ibug] - gt[:, ours], axis=-1) / iod[:, None]
    assert (np.nanmean(err[:, ours], axis=0) < np.nanmean(plain, axis=0)).all()
    assert np.nanmean(err[:, ours]) < 0.75 * np.nanmean(plain)


@pytest.mark.realdata
def test_cofw_and_aflw_layouts_match_real_annotations(data_root: Path) -> None:
    """The layouts applied to real 68-point ground truth give the real COFW / AFLW points."""
    # COFW: the two COFW test faces that mmpose ships with 29 points; COFW68 re-annotated
    # the same faces with 68 points in the same pixel frame (test index = image id - 1345).
    cofw = read_coco(data_root / "mmpose_testdata" / "cofw" / "test_cofw.json")
    cofw68 = {Path(r.source).name: r for r in read_cofw68(data_root / "COFW68" / "COFW68_Data")}
    assert len(cofw) == 2
    real68 = np.stack(
        [cofw68[f"{int(r.image_path.stem) - 1345}_points.mat"].landmarks for r in cofw]
    )
    gt = np.stack([r.landmarks for r in cofw])
    pred = np.stack([_layout_on_real_68("cofw", lm) for lm in real68])
    iod = PROTOCOLS["cofw"].normalizer(gt)
    err = _check_layout("cofw", pred, gt, iod)
    _check_beats_ibug(err, real68, gt, iod, [18, 19], [31, 35])  # the nose wings

    # AFLW: the AFLW2000-3D samples hold the AFLW points and a 68-point 3-D fit of the
    # same face; the 3-D outer-eye-corner distance does not shrink with yaw.
    faces = read_aflw2000(data_root / "AFLW2000-3D_samples" / "AFLW2000")
    assert len(faces) == 16
    fits = [loadmat(r.source)["pt3d_68"].T.astype(np.float64) for r in faces]
    real68 = np.stack([f[:, :2] - 1.0 for f in fits])  # 1-based like pt2d
    iod = np.array([np.linalg.norm(f[36] - f[45]) for f in fits])
    gt = np.stack([np.where(r.valid[:, None], r.landmarks, np.nan) for r in faces])
    pred = np.stack([_layout_on_real_68("aflw", lm) for lm in real68])
    err = _check_layout("aflw", pred, gt, iod)
    _check_beats_ibug(err, real68, gt, iod, [12, 14], [31, 35])  # nose wings
    _check_beats_ibug(err, real68, gt, iod, [6, 11], [36, 45])  # outer eye corners

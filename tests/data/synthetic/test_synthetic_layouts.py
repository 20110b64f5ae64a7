"""Protocol layouts: what each protocol's points are, on generated and on real faces."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from scipy.io import loadmat

from sepbn.data.formats.aflw import read_aflw2000
from sepbn.data.formats.coco import read_coco
from sepbn.data.formats.cofw import read_cofw68
from sepbn.data.protocols import PROTOCOLS
from sepbn.data.synthetic import (
    SYNTHETIC_PROTOCOLS,
    SyntheticFaceConfig,
    make_synthetic_records,
    render_face,
    sample_face_params,
)
from sepbn.data.synthetic.layouts import PROTOCOL_WEIGHTS
from sepbn.data.synthetic.template import (
    FULL_MATRIX,
    FULL_OFFSET,
    NUM_BASE,
    NUM_LANDMARKS,
    TEMPLATE,
)


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


def test_wflw_extra_points_are_where_their_names_say(neutral_frontal: Callable) -> None:
    w = neutral_frontal("wflw")
    lm = neutral_frontal("300w")
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


def test_cofw_and_aflw_points_are_where_their_names_say(
    neutral_frontal: Callable,
) -> None:
    lm = neutral_frontal("300w")
    x, y = neutral_frontal("cofw").T
    mid = lm[8, 0]  # the neutral frontal face is symmetric about the chin's column
    _assert_left_first(x, "cofw", mid)
    assert x[0] < x[4] < x[2] and x[3] < x[6] < x[1]  # brow outer, middle, inner end
    assert x[8] < x[16] < x[10] < x[11] < x[17] < x[9]  # eye corners around the pupils
    for top, bottom, upper_lid, pupil, lower_lid in ((4, 5, 12, 16, 13), (6, 7, 14, 17, 15)):
        assert y[top] < y[bottom] < y[upper_lid] < y[pupil] < y[lower_lid]
    assert x[18] < lm[31, 0] and x[19] > lm[35, 0]  # nose wings beyond iBUG's alar base
    assert y[16] < y[20] < y[21] < y[24] < y[25] < y[26] < y[27] < y[28] == y.max()
    assert x[22] < x[18] and x[23] > x[19]  # mouth corners wider than the nose

    x, y = neutral_frontal("aflw").T
    _assert_left_first(x, "aflw", mid)
    for group in (np.r_[0:6], np.r_[6:12], np.r_[12:15], np.r_[15:18]):
        assert (np.diff(x[group]) > 0).all()  # brows, eyes, nose, mouth run left to right
    assert y[0:6].max() < y[6:12].min() and y[6:12].max() < y[13] < y[16] < y[18] == y.max()
    assert x[6] < lm[36, 0] and x[11] > lm[45, 0]  # outer eye corners beyond iBUG's
    assert x[12] < lm[31, 0] and x[14] > lm[35, 0]  # nose wings beyond the alar base
    for centre, upper, lower in ((7, [37, 38], [41, 40]), (10, [43, 44], [47, 46])):
        assert (lm[upper, 1] < y[centre]).all() and (y[centre] < lm[lower, 1]).all()
    assert lm[62, 1] < y[16] < lm[66, 1]  # mouth centre between the inner lips


@pytest.mark.parametrize("protocol", SYNTHETIC_PROTOCOLS)
def test_flip_permutation_matches_the_regenerated_mirror_face(
    protocol: str, neutral: SyntheticFaceConfig
) -> None:
    """Mirroring a face with protocol.flip equals generating its mirror image."""
    size = neutral.image_size
    flip = PROTOCOLS[protocol].flip
    for i in range(6):
        # A neutral face is symmetric: negating yaw and roll and mirroring the position
        # must give the mirrored annotation, point for point.
        p = sample_face_params(5, i, neutral)
        assert not p.attributes["expression"] and not p.occluders
        twin = replace(p, yaw=-p.yaw, roll=-p.roll, center=(size - 1 - p.center[0], p.center[1]))
        a, b = render_face(p, size), render_face(twin, size)
        mirrored = flip(a.landmarks(protocol), size)
        np.testing.assert_allclose(mirrored, b.landmarks(protocol), atol=1e-9)


def _layout_on_real_68(protocol: str, real68: np.ndarray, similarity: Callable) -> np.ndarray:
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
        base[b] = similarity(frontal[:NUM_LANDMARKS][near], real68[near])(frontal[b])
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
def test_cofw_and_aflw_layouts_match_real_annotations(
    data_root: Path, similarity: Callable
) -> None:
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
    pred = np.stack([_layout_on_real_68("cofw", lm, similarity) for lm in real68])
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
    pred = np.stack([_layout_on_real_68("aflw", lm, similarity) for lm in real68])
    err = _check_layout("aflw", pred, gt, iod)
    _check_beats_ibug(err, real68, gt, iod, [12, 14], [31, 35])  # nose wings
    _check_beats_ibug(err, real68, gt, iod, [6, 11], [36, 45])  # outer eye corners

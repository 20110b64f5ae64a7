"""NME (Eq. 8) and failure rate against hand-computed values and a loop reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sepbn.data.protocols import get_protocol
from sepbn.data.records import box_from_landmarks
from sepbn.metrics import failure_rate, nme_per_image


def nme_reference(pred, gt, norm, valid):
    """Eq. 8 written out point by point (without the x100)."""
    out = []
    for n in range(len(pred)):
        total, count = 0.0, 0
        for j in range(len(pred[n])):
            if valid[n][j]:
                dx, dy = pred[n][j][0] - gt[n][j][0], pred[n][j][1] - gt[n][j][1]
                total += math.sqrt(dx * dx + dy * dy)
                count += 1
        out.append(total / count / norm[n])
    return np.array(out)


def test_hand_computed_two_faces() -> None:
    gt = np.zeros((2, 3, 2))
    pred = np.zeros((2, 3, 2))
    # Face 0: point errors 5 (3-4-5), 0 and 10 -> mean 5, d = 10 -> 0.5.
    pred[0, 0] = [3, 4]
    pred[0, 2] = [6, 8]
    # Face 1: errors 1, 2 and an unannotated point far off -> mean 1.5, d = 6 -> 0.25.
    pred[1, 0] = [0, 1]
    pred[1, 1] = [2, 0]
    pred[1, 2] = [900, 900]
    valid = np.array([[True, True, True], [True, True, False]])
    nmes = nme_per_image(pred, gt, np.array([10.0, 6.0]), valid)
    assert nmes.dtype == np.float64
    np.testing.assert_allclose(nmes, [0.5, 0.25], rtol=1e-15)


def test_matches_loop_reference_numpy_and_torch() -> None:
    rng = np.random.default_rng(1)
    pred = rng.uniform(0, 200, (7, 19, 2))
    gt = pred + rng.normal(0, 3, pred.shape)
    norm = rng.uniform(20, 80, 7)
    valid = rng.random((7, 19)) > 0.2
    valid[:, 0] = True
    expected = nme_reference(pred, gt, norm, valid)
    np.testing.assert_allclose(nme_per_image(pred, gt, norm, valid), expected, rtol=1e-12)
    got = nme_per_image(
        torch.from_numpy(pred).float(),
        torch.from_numpy(gt).float(),
        torch.from_numpy(norm),
        torch.from_numpy(valid),
    )
    assert isinstance(got, np.ndarray) and got.dtype == np.float64
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # valid=None means every point counts.
    all_valid = nme_reference(pred, gt, norm, np.ones((7, 19), bool))
    np.testing.assert_allclose(nme_per_image(pred, gt, norm), all_valid, rtol=1e-12)


def test_nan_at_unannotated_point_is_ignored() -> None:
    gt = np.zeros((1, 2, 2))
    pred = np.array([[[3.0, 4.0], [np.nan, np.nan]]])
    nmes = nme_per_image(pred, gt, [5.0], [[True, False]])
    np.testing.assert_allclose(nmes, [1.0])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"gt": np.zeros((2, 4, 2))}, "does not match pred shape"),
        ({"norm": np.array([1.0, 0.0])}, "face 1 has d=0.0"),
        ({"norm": np.array([1.0])}, r"norm must have shape \(2,\)"),
        ({"valid": np.array([[True] * 3, [False] * 3])}, "face 1 has no valid landmark"),
        ({"valid": np.ones((2, 2), bool)}, r"valid must have shape \(2, 3\)"),
    ],
)
def test_bad_inputs_name_the_problem(kwargs: dict, message: str) -> None:
    args = {
        "pred": np.zeros((2, 3, 2)),
        "gt": np.zeros((2, 3, 2)),
        "norm": np.ones(2),
        "valid": None,
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        nme_per_image(**args)


def test_failure_rate_counts_strictly_above_threshold() -> None:
    # 0.10 itself is not a failure; 0.1001 and 0.3 are: 2 of 5.
    assert failure_rate([0.05, 0.10, 0.1001, 0.3, 0.0]) == pytest.approx(0.4)
    assert failure_rate(np.array([0.05, 0.07]), threshold=0.06) == pytest.approx(0.5)
    assert failure_rate(torch.tensor([0.2, 0.3])) == 1.0
    with pytest.raises(ValueError, match="empty"):
        failure_rate([])
    with pytest.raises(ValueError, match="image 1 has nan"):
        failure_rate([0.1, float("nan")])
    with pytest.raises(ValueError, match="threshold"):
        failure_rate([0.1], threshold=0.0)


def _shifted(num_points: int, shift: tuple[float, float], **points: tuple[float, float]):
    """Ground truth with some points placed by hand, and a prediction shifted by ``shift``."""
    rng = np.random.default_rng(0)
    gt = rng.uniform(50, 150, (num_points, 2))
    for index, xy in points.items():
        gt[int(index[1:])] = xy
    return gt, gt + np.array(shift)


def test_300w_inter_ocular_end_to_end() -> None:
    # Outer eye corners are iBUG points 37 and 46 (1-based) -> 36 and 45.
    gt, pred = _shifted(68, (3.0, 4.0), p36=(10.0, 20.0), p45=(40.0, 60.0))
    p = get_protocol("300w")
    d = p.normalizer(gt[None], box_from_landmarks(gt)[None])
    np.testing.assert_allclose(d, [50.0])  # hypot(30, 40)
    np.testing.assert_allclose(nme_per_image(pred[None], gt[None], d), [5.0 / 50.0])


def test_wflw_inter_ocular_end_to_end() -> None:
    # WFLW-98 outer eye corners are points 60 and 72 (0-based).
    gt, pred = _shifted(98, (6.0, 8.0), p60=(100.0, 100.0), p72=(100.0, 180.0))
    d = get_protocol("wflw").normalizer(gt[None], box_from_landmarks(gt)[None])
    np.testing.assert_allclose(d, [80.0])
    np.testing.assert_allclose(nme_per_image(pred[None], gt[None], d), [10.0 / 80.0])


def test_aflw_box_normalizer_end_to_end() -> None:
    # AFLW normalizes by sqrt(w * h) of the box: sqrt(100 * 50) = 70.7107 px.
    gt, pred = _shifted(19, (3.0, -4.0))
    valid = np.ones(19, bool)
    valid[[4, 11]] = False
    pred[[4, 11]] = 1e6  # unannotated points must not count
    box = np.array([10.0, 20.0, 110.0, 70.0])
    d = get_protocol("aflw").normalizer(gt[None], box[None])
    np.testing.assert_allclose(d, [math.sqrt(5000.0)])
    nme = nme_per_image(pred[None], gt[None], d, valid[None])
    np.testing.assert_allclose(nme, [5.0 / 70.71067811865476], rtol=1e-12)

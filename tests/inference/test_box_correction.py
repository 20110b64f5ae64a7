"""Fitting a detector's box correction, and the fitted numbers shipped with sepbn."""

from __future__ import annotations

from dataclasses import astuple

import numpy as np
import pytest

from sepbn.inference.face_detection import FACE_DETECTORS, BoxCorrection, FaceDetector
from sepbn.inference.face_detection.base import fitted_box_correction, load_box_corrections
from sepbn.inference.face_detection.box_correction import (
    fit_box_correction,
    fit_box_correction_to_boxes,
    match_detection,
    training_box,
)

# Detectors that need a file the user brings have no shipped correction.
UNFITTED = {"yunet"}


def _raw_from_target(target: np.ndarray, truth: BoxCorrection, aspect: np.ndarray) -> np.ndarray:
    """Raw boxes that ``truth`` maps exactly onto the square ``target`` boxes."""
    t = target[:, 2] - target[:, 0]
    s = t / truth.scale  # raw side sqrt(w h)
    cx = (target[:, 0] + target[:, 2]) / 2 - truth.offset_x * s
    cy = (target[:, 1] + target[:, 3]) / 2 - truth.offset_y * s
    w, h = s * aspect, s / aspect
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)


def _targets(rng: np.random.Generator, n: int) -> np.ndarray:
    side = rng.uniform(60, 400, n)
    corner = rng.uniform(0, 500, (n, 2))
    return np.concatenate([corner, corner + side[:, None]], axis=1)


def test_fit_recovers_a_known_transform() -> None:
    rng = np.random.default_rng(0)
    truth = BoxCorrection(scale=1.3, offset_x=-0.05, offset_y=0.12)
    target = _targets(rng, 200)
    raw = _raw_from_target(target, truth, aspect=rng.uniform(0.8, 1.25, 200))
    exact = fit_box_correction_to_boxes(raw, target)
    assert exact.correction.scale == pytest.approx(1.3, abs=1e-12)
    assert exact.correction.offset_x == pytest.approx(-0.05, abs=1e-12)
    assert exact.correction.offset_y == pytest.approx(0.12, abs=1e-12)
    assert exact.side_rms < 1e-12 and exact.centre_rms < 1e-12
    assert exact.mean_iou == pytest.approx(1.0)

    # 2% (of the side) noise on every corner: the fit stays within a few thousandths.
    noisy = raw + rng.normal(0, 0.02, raw.shape) * (raw[:, 2:3] - raw[:, 0:1])
    fit = fit_box_correction_to_boxes(noisy, target)
    assert fit.correction.scale == pytest.approx(1.3, abs=0.01)
    assert fit.correction.offset_x == pytest.approx(-0.05, abs=0.005)
    assert fit.correction.offset_y == pytest.approx(0.12, abs=0.005)
    assert 0.005 < fit.side_rms < 0.05
    np.testing.assert_allclose(fit.correction(noisy), target, atol=0.08 * 400)


def test_fit_by_hand_on_two_sizes() -> None:
    # Raw boxes half the target's side, centred 0.1 raw sides to the left of it:
    # scale 2, offset_x +0.1 (raw sides), offset_y 0.
    target = np.array([[0.0, 0.0, 100.0, 100.0], [0.0, 0.0, 40.0, 40.0], [10, 10, 30, 30]])
    side = (target[:, 2] - target[:, 0]) / 2
    centre = (target[:, :2] + target[:, 2:]) / 2 - np.stack([0.1 * side, 0 * side], axis=1)
    raw = np.concatenate([centre - side[:, None] / 2, centre + side[:, None] / 2], axis=1)
    fit = fit_box_correction_to_boxes(raw, target)
    assert astuple(fit.correction) == pytest.approx((2.0, 0.1, 0.0))


def test_fit_needs_three_faces_and_matching_shapes() -> None:
    with pytest.raises(ValueError, match="at least 3 detected faces"):
        fit_box_correction_to_boxes(np.zeros((2, 4)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="differ"):
        fit_box_correction_to_boxes(np.zeros((3, 4)), np.zeros((4, 4)))


def test_training_box_is_the_square_landmark_box() -> None:
    points = np.array([[10.0, 20.0], [50.0, 30.0], [30.0, 40.0]])  # 40 x 20, centre (30, 30)
    np.testing.assert_allclose(training_box(points), [10.0, 10.0, 50.0, 50.0])


def test_match_takes_the_nearest_centre_inside_the_target() -> None:
    target = np.array([0.0, 0.0, 100.0, 100.0])
    boxes = np.array([[200.0, 200, 300, 300], [0, 0, 60, 60], [30, 30, 80, 80]])
    assert match_detection(boxes, target) == 2
    assert match_detection(boxes[:1], target) is None
    assert match_detection(np.zeros((0, 4)), target) is None


class _Shifted(FaceDetector):
    """Finds the one face of each image as a box 0.8 times its side, 5 px higher."""

    name = "shifted"

    def __init__(self, targets: list[np.ndarray]) -> None:
        self._targets = iter(targets)

    def detect_raw(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x0, y0, x1, y1 = next(self._targets)
        cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2 - 5, 0.4 * (x1 - x0)
        box = np.array([[cx - half, cy - half, cx + half, cy + half]])
        if x1 - x0 < 50:  # misses the smallest faces
            return np.zeros((0, 4)), np.zeros(0)
        return box, np.ones(1)


def test_fit_from_a_detector_skips_missed_faces() -> None:
    targets = [np.array([0.0, 0.0, s, s]) for s in (40.0, 100.0, 100.0, 100.0, 100.0)]
    fit = fit_box_correction(_Shifted(targets), [np.zeros((8, 8, 3), np.uint8)] * 5, targets)
    assert (fit.num_faces, fit.num_found) == (5, 4)
    assert fit.correction.scale == pytest.approx(1.25)
    assert fit.correction.offset_y == pytest.approx(5 / 80)  # (target - raw centre) / raw side
    assert fit.to_dict()["num_found"] == 4


def test_the_shipped_corrections_cover_every_registered_detector() -> None:
    shipped = load_box_corrections()
    for name in FACE_DETECTORS:
        correction = fitted_box_correction(name)
        if name in UNFITTED:
            assert correction is None
            continue
        assert name in shipped, f"no fitted box correction for {name!r}"
        assert isinstance(correction, BoxCorrection)
        assert 0.5 < correction.scale < 2.0
        assert abs(correction.offset_x) < 0.5 and abs(correction.offset_y) < 0.5

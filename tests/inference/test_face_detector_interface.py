"""The face detector interface: box correction arithmetic and the registry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sepbn.inference.face_detection import (
    DEFAULT_FACE_DETECTOR,
    FACE_DETECTORS,
    BoxCorrection,
    FaceDetector,
    FaceDetectorError,
    build_face_detector,
)
from sepbn.inference.face_detection.base import downscale_for_detection


def test_box_correction_by_hand() -> None:
    # A 40 x 10 box centred at (30, 20): side sqrt(400) = 20.
    raw = np.array([[10.0, 15.0, 50.0, 25.0]])
    corrected = BoxCorrection(scale=1.5, offset_x=0.1, offset_y=-0.25)(raw)
    # centre (30 + 2, 20 - 5), half side 15
    np.testing.assert_allclose(corrected, [[17.0, 0.0, 47.0, 30.0]])
    np.testing.assert_allclose(BoxCorrection()(raw), [[20.0, 10.0, 40.0, 30.0]])


class _Fixed(FaceDetector):
    name = "fixed"

    def detect_raw(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.array([[0.0, 0.0, 10.0, 10.0]]), np.array([0.9])


def test_calling_a_detector_applies_its_correction() -> None:
    detector = _Fixed()
    boxes, scores = detector(np.zeros((4, 4, 3), np.uint8))
    np.testing.assert_array_equal(boxes, [[0.0, 0.0, 10.0, 10.0]])
    detector.box_correction = BoxCorrection(scale=2.0)
    boxes, scores = detector(np.zeros((4, 4, 3), np.uint8))
    np.testing.assert_allclose(boxes, [[-5.0, -5.0, 15.0, 15.0]])
    assert scores.tolist() == [0.9]


def test_unknown_detector_lists_the_valid_names() -> None:
    with pytest.raises(FaceDetectorError, match=r"unknown face detector 'yolo'; valid: .*haar"):
        build_face_detector("yolo")
    assert build_face_detector("haar").name == "haar"


def test_the_default_detector_is_registered() -> None:
    assert DEFAULT_FACE_DETECTOR in FACE_DETECTORS


def test_downscale_for_detection_keeps_small_photos_and_reports_the_factor() -> None:
    photo = np.zeros((300, 1200, 3), np.uint8)
    small, factor = downscale_for_detection(photo, 600)
    assert small.shape == (150, 600, 3) and factor == 0.5
    same, one = downscale_for_detection(photo, 0)
    assert same is photo and one == 1.0
    assert downscale_for_detection(photo, 2000)[1] == 1.0


@pytest.mark.realdata
def test_a_downscaled_detection_returns_boxes_in_photo_pixels(data_root: Path) -> None:
    from sepbn.data.image_io import load_image

    rgb = load_image(data_root / "300W" / "lfpw" / "testset" / "image_0001.png")
    full, _ = build_face_detector("haar", max_side=0).detect_raw(rgb)
    half, _ = build_face_detector("haar", max_side=max(rgb.shape) // 2).detect_raw(rgb)
    assert len(full) >= 1 and len(half) >= 1
    side = full[0, 2] - full[0, 0]
    np.testing.assert_allclose(half[0], full[0], atol=0.15 * side)

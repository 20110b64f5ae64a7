"""The face detector interface: box correction arithmetic and the registry."""

from __future__ import annotations

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

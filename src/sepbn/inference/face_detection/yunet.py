"""OpenCV's YuNet (``cv2.FaceDetectorYN``) on a model file the user provides.

``opencv-python-headless`` has the detector but no model, and sepbn downloads nothing: pass
the ``.onnx`` path: ``build_face_detector("yunet", model_path=...)``.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from sepbn.inference.face_detection.base import (
    FaceDetector,
    FaceDetectorError,
    downscale_for_detection,
)

__all__ = ["YuNetFaceDetector"]

MODEL_SOURCE = (
    "face_detection_yunet_2023mar.onnx from "
    "https://github.com/opencv/opencv_zoo/tree/main/models/face_detection_yunet"
)


class YuNetFaceDetector(FaceDetector):
    """YuNet face boxes through OpenCV's DNN module.

    Args:
        model_path: The YuNet ``.onnx`` file.
        min_score: Smallest face score kept.
        nms_threshold: IoU above which overlapping boxes are merged.
        max_side: Detect on a copy whose longest side is at most this (0: full size).
    """

    name = "yunet"

    def __init__(
        self,
        model_path: str | Path | None = None,
        min_score: float = 0.6,
        nms_threshold: float = 0.3,
        max_side: int = 640,
    ):
        if model_path is None:
            raise FaceDetectorError(
                f"the 'yunet' face detector needs its model file: download {MODEL_SOURCE} "
                "and pass model_path="
            )
        path = Path(model_path)
        if not path.is_file():
            raise FaceDetectorError(f"YuNet model {path} not found; it is {MODEL_SOURCE}")
        try:
            self._detector = cv2.FaceDetectorYN.create(
                str(path), "", (320, 320), float(min_score), float(nms_threshold), 5000
            )
        except cv2.error as e:
            raise FaceDetectorError(f"{path} is not a YuNet model OpenCV can read: {e}") from None
        self.model_path = path
        self.max_side = int(max_side)

    def detect_raw(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """YuNet's boxes and scores, highest first.

        Args:
            rgb: ``(H, W, 3)`` uint8 RGB.
        """
        small, factor = downscale_for_detection(rgb, self.max_side)
        self._detector.setInputSize((small.shape[1], small.shape[0]))
        _, faces = self._detector.detect(cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
        if faces is None or len(faces) == 0:
            return np.zeros((0, 4)), np.zeros(0)
        faces = np.asarray(faces, dtype=np.float64)  # (F, 15): x, y, w, h, 5 points, score
        boxes = np.concatenate([faces[:, :2], faces[:, :2] + faces[:, 2:4]], axis=1) / factor
        order = np.argsort(-faces[:, 14], kind="stable")
        return boxes[order], faces[order, 14]

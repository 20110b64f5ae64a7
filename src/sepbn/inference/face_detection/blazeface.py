"""MediaPipe's BlazeFace (full-range model), bundled in ``mediapipe`` 0.10.x wheels.

Only the ``mediapipe`` wheels up to 0.10.21 carry the face-detection models
(``mediapipe/modules/face_detection/*.tflite``) and the ``mp.solutions.face_detection``
API; 0.10.30 and later ship no model and would need one downloaded, which sepbn never
does. Those wheels need ``numpy<2`` (0.10.21) or ``protobuf<5`` and ``jax`` (0.10.14),
and they depend on ``opencv-contrib-python``, a second distribution of the ``cv2`` module
that overwrites sepbn's ``opencv-python-headless`` files in the same environment. So
``pip install 'sepbn[mediapipe]'`` is best done in an environment of its own; see the
README's "Face detectors".
"""

from __future__ import annotations

from types import ModuleType

import numpy as np

from sepbn.inference.face_detection.base import FaceDetector, FaceDetectorError

__all__ = ["BlazeFaceDetector"]

INSTALL_HINT = (
    "pip install 'sepbn[mediapipe]'  (mediapipe<=0.10.21, the last wheels with the face "
    "model; they need numpy<2 and bring a second cv2, opencv-contrib-python: best in an "
    "environment of its own)"
)


def _face_detection_solution() -> ModuleType:
    try:
        from mediapipe.python.solutions import face_detection
    except ImportError as e:
        raise FaceDetectorError(
            f"the 'mediapipe' face detector needs mediapipe with its bundled face model ({e}): "
            f"{INSTALL_HINT}"
        ) from None
    return face_detection


class BlazeFaceDetector(FaceDetector):
    """BlazeFace through ``mp.solutions.face_detection``.

    The model resizes the photo to its own input (192x192 for the full-range model), so
    no downscaling is needed here.

    Args:
        model_selection: 1 = full range (faces up to about 5 m, what photos need),
            0 = short range (selfies).
        min_score: Smallest detection confidence kept.
    """

    name = "mediapipe"

    def __init__(self, model_selection: int = 1, min_score: float = 0.5):
        face_detection = _face_detection_solution()
        if model_selection not in (0, 1):
            raise ValueError(f"model_selection must be 0 or 1, got {model_selection}")
        self._solution = face_detection.FaceDetection(
            model_selection=model_selection, min_detection_confidence=float(min_score)
        )
        self.model_selection = model_selection
        self.min_score = float(min_score)

    def detect_raw(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """BlazeFace's boxes and confidences, highest first.

        Args:
            rgb: ``(H, W, 3)`` uint8 RGB.
        """
        height, width = rgb.shape[:2]
        result = self._solution.process(np.ascontiguousarray(rgb))
        boxes, scores = [], []
        for detection in result.detections or []:
            rel = detection.location_data.relative_bounding_box
            x0, y0 = rel.xmin * width, rel.ymin * height
            boxes.append([x0, y0, x0 + rel.width * width, y0 + rel.height * height])
            scores.append(detection.score[0])
        if not boxes:
            return np.zeros((0, 4)), np.zeros(0)
        order = np.argsort(-np.asarray(scores), kind="stable")
        return np.asarray(boxes, dtype=np.float64)[order], np.asarray(scores, float)[order]

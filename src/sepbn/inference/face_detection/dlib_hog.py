"""dlib's HOG + linear SVM frontal face detector (``dlib.get_frontal_face_detector``).

The detector's model is compiled into dlib itself, so ``pip install 'sepbn[dlib]'``
(the ``dlib-bin`` wheel, no compiler needed) is all it takes. It finds faces of about 80
pixels and larger; each upsampling step halves that at four times the cost, so by default
the photo is brought to ``max_side`` first and not upsampled.
"""

from __future__ import annotations

from types import ModuleType

import numpy as np

from sepbn.inference.face_detection.base import (
    FaceDetector,
    FaceDetectorError,
    downscale_for_detection,
)

__all__ = ["DlibHOGFaceDetector"]

INSTALL_HINT = "pip install 'sepbn[dlib]'  (the dlib-bin wheel)"


def import_dlib() -> ModuleType:
    """The ``dlib`` module, or :class:`FaceDetectorError` naming the install."""
    try:
        import dlib
    except ImportError:
        raise FaceDetectorError(f"the 'dlib' face detector needs dlib: {INSTALL_HINT}") from None
    return dlib


class DlibHOGFaceDetector(FaceDetector):
    """dlib's frontal face detector.

    Scores are the SVM margins squashed to ``(0, 1)`` by a logistic function (margin 0,
    dlib's own threshold, is 0.5).

    Args:
        upsample: Times the image is doubled before scanning (finds smaller faces).
        max_side: Detect on a copy whose longest side is at most this (0: full size).
        adjust_threshold: Added to dlib's decision threshold (negative finds more).
    """

    name = "dlib"

    def __init__(self, upsample: int = 0, max_side: int = 1024, adjust_threshold: float = 0.0):
        dlib = import_dlib()
        if upsample < 0:
            raise ValueError(f"upsample must be >= 0, got {upsample}")
        self._detector = dlib.get_frontal_face_detector()
        self.upsample = int(upsample)
        self.max_side = int(max_side)
        self.adjust_threshold = float(adjust_threshold)

    def detect_raw(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """dlib's rectangles and squashed margins, highest first.

        Args:
            rgb: ``(H, W, 3)`` uint8 RGB.
        """
        small, factor = downscale_for_detection(rgb, self.max_side)
        rects, margins, _ = self._detector.run(
            np.ascontiguousarray(small), self.upsample, self.adjust_threshold
        )
        if not rects:
            return np.zeros((0, 4)), np.zeros(0)
        # dlib's rectangles are inclusive pixel indices: right/bottom + 1 is the edge.
        boxes = np.array([[r.left(), r.top(), r.right() + 1, r.bottom() + 1] for r in rects], float)
        scores = 1.0 / (1.0 + np.exp(-np.asarray(margins, dtype=np.float64)))
        order = np.argsort(-scores, kind="stable")
        return boxes[order] / factor, scores[order]

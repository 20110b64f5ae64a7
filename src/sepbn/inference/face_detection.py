"""Face boxes for photos: OpenCV's bundled Haar cascade, no download needed.

The cascade ships inside ``opencv-python-headless`` (``cv2.data.haarcascades``), so a fresh
install can find faces offline. It finds near-frontal faces; for profiles or crowded scenes
pass boxes from a stronger detector (``--box`` on the command line).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

_CASCADE = "haarcascade_frontalface_default.xml"


class HaarFaceDetector:
    """Detect faces with OpenCV's frontal-face Haar cascade.

    Args:
        min_size: Smallest face side in pixels.
        scale_factor: Image pyramid step of ``detectMultiScale``.
        min_neighbors: Detections that must overlap for a face to count.
    """

    def __init__(self, min_size: int = 40, scale_factor: float = 1.1, min_neighbors: int = 5):
        path = Path(cv2.data.haarcascades) / _CASCADE
        self._cascade = cv2.CascadeClassifier(str(path))
        if self._cascade.empty():
            raise FileNotFoundError(
                f"OpenCV's face cascade {path} is missing; reinstall opencv-python-headless"
            )
        self.min_size = int(min_size)
        self.scale_factor = float(scale_factor)
        self.min_neighbors = int(min_neighbors)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """Boxes ``(F, 4)`` as ``x_min, y_min, x_max, y_max``, largest face first.

        Args:
            image: ``(H, W, 3)`` uint8 RGB.
        """
        gray = cv2.equalizeHist(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY))
        found = self._cascade.detectMultiScale(
            gray,
            scaleFactor=self.scale_factor,
            minNeighbors=self.min_neighbors,
            minSize=(self.min_size, self.min_size),
        )
        if len(found) == 0:
            return np.zeros((0, 4), dtype=np.float64)
        xywh = np.asarray(found, dtype=np.float64).reshape(-1, 4)
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        return boxes[np.argsort(-(xywh[:, 2] * xywh[:, 3]))]

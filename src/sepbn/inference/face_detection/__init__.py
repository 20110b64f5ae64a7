"""Face boxes for photos: one interface, a registry, each detector in its own file.

- :class:`FaceDetector` and :class:`BoxCorrection` (:mod:`.base`): the interface, and the
  fitted mapping of a detector's box to the landmark network's training box.
- :func:`build_face_detector`, :data:`FACE_DETECTORS` (:mod:`.registry`).
- :class:`HaarFaceDetector` (:mod:`.haar`): OpenCV's bundled cascade, no extra needed.
"""

from sepbn.inference.face_detection.base import BoxCorrection, FaceDetector, FaceDetectorError
from sepbn.inference.face_detection.haar import HaarFaceDetector
from sepbn.inference.face_detection.registry import (
    DEFAULT_FACE_DETECTOR,
    FACE_DETECTORS,
    build_face_detector,
)

__all__ = [
    "DEFAULT_FACE_DETECTOR",
    "FACE_DETECTORS",
    "BoxCorrection",
    "FaceDetector",
    "FaceDetectorError",
    "HaarFaceDetector",
    "build_face_detector",
]

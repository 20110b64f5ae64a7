"""Face boxes for photos: one interface, a registry, each detector in its own file.

- :class:`FaceDetector` and :class:`BoxCorrection` (:mod:`.base`): the interface, and the
  fitted mapping of a detector's box to the landmark network's training box.
- :func:`build_face_detector`, :data:`FACE_DETECTORS` (:mod:`.registry`).
- :mod:`.box_correction`: fitting those mappings; the fitted numbers ship in
  ``box_corrections.json``.
- One file per detector, each registered by name: :class:`HaarFaceDetector` (``haar``,
  :mod:`.haar`, OpenCV's bundled cascade, no extra needed), ``mtcnn`` (:mod:`.mtcnn`,
  ``sepbn[mtcnn]``), ``dlib`` (:mod:`.dlib_hog`, ``sepbn[dlib]``), ``mediapipe``
  (:mod:`.blazeface`, ``sepbn[mediapipe]``) and ``yunet`` (:mod:`.yunet`, a model file
  the user brings). The optional packages are imported when a detector is built.
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

"""Face detectors by name: ``build_face_detector("haar")``, ``--detector NAME``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sepbn.inference.face_detection.base import FaceDetector, FaceDetectorError
from sepbn.inference.face_detection.haar import HaarFaceDetector

__all__ = ["DEFAULT_FACE_DETECTOR", "FACE_DETECTORS", "build_face_detector"]

#: Name -> constructor. Detectors whose package is an optional extra import it inside their
#: constructor and raise :class:`FaceDetectorError` naming the ``pip install`` that brings it.
FACE_DETECTORS: dict[str, Callable[..., FaceDetector]] = {
    "haar": HaarFaceDetector,
}

DEFAULT_FACE_DETECTOR = "haar"


def build_face_detector(name: str, **options: Any) -> FaceDetector:
    """The face detector called ``name``, built with ``options``.

    Raises:
        FaceDetectorError: An unknown name (the valid ones are listed) or a missing extra.
    """
    if name not in FACE_DETECTORS:
        raise FaceDetectorError(
            f"unknown face detector {name!r}; valid: {', '.join(sorted(FACE_DETECTORS))}"
        )
    return FACE_DETECTORS[name](**options)

"""Face detectors by name: ``build_face_detector("haar")``, ``--detector NAME``."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from sepbn.inference.face_detection.base import FaceDetector, FaceDetectorError
from sepbn.inference.face_detection.blazeface import BlazeFaceDetector
from sepbn.inference.face_detection.dlib_hog import DlibHOGFaceDetector
from sepbn.inference.face_detection.haar import HaarFaceDetector
from sepbn.inference.face_detection.mtcnn import MTCNNFaceDetector
from sepbn.inference.face_detection.yunet import YuNetFaceDetector

__all__ = ["DEFAULT_FACE_DETECTOR", "FACE_DETECTORS", "build_face_detector"]

#: Name -> constructor. Detectors whose package is an optional extra import it inside their
#: constructor and raise :class:`FaceDetectorError` naming the ``pip install`` that brings it.
FACE_DETECTORS: dict[str, Callable[..., FaceDetector]] = {
    "haar": HaarFaceDetector,
    "mtcnn": MTCNNFaceDetector,
    "dlib": DlibHOGFaceDetector,
    "mediapipe": BlazeFaceDetector,
    "yunet": YuNetFaceDetector,
}

#: Chosen by ``benchmarks/bench_predict.py`` (docs/benchmarks.md, "Predict on photos"): the
#: only detector with recall >= dlib HOG's on both 300-W common (100%) and WFLW (92%).
#: Its weights come with facenet-pytorch, a dependency of sepbn; ``haar`` needs nothing at all.
DEFAULT_FACE_DETECTOR = "mtcnn"


def build_face_detector(name: str, **options: Any) -> FaceDetector:
    """The face detector called ``name``, built with ``options``.

    Raises:
        FaceDetectorError: An unknown name or option (the valid ones are listed), a missing
            extra (naming the ``pip install``) or a missing model file.
    """
    if name not in FACE_DETECTORS:
        raise FaceDetectorError(
            f"unknown face detector {name!r}; valid: {', '.join(sorted(FACE_DETECTORS))}"
        )
    constructor = FACE_DETECTORS[name]
    valid = list(inspect.signature(constructor).parameters)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise FaceDetectorError(
            f"unknown option(s) {unknown} for face detector {name!r}; valid: {', '.join(valid)}"
        )
    return constructor(**options)

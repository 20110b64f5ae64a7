"""Inference on photos: face detectors, the landmark detector, photo files in and out, export."""

from sepbn.inference.detector import Face, LandmarkDetector
from sepbn.inference.errors import InferenceError
from sepbn.inference.face_detection import FaceDetectorError, HaarFaceDetector
from sepbn.inference.photos import PredictSummary, predict_photos

__all__ = [
    "Face",
    "FaceDetectorError",
    "HaarFaceDetector",
    "InferenceError",
    "LandmarkDetector",
    "PredictSummary",
    "predict_photos",
]

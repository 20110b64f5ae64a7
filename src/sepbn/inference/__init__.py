"""Inference on photos: face detectors, the landmark detector, photo files in and out, export."""

from sepbn.inference.detector import LandmarkDetector
from sepbn.inference.errors import InferenceError
from sepbn.inference.face import Face, SchemePoints
from sepbn.inference.face_detection import FaceDetectorError, HaarFaceDetector
from sepbn.inference.photos import PredictSummary, predict_photos
from sepbn.inference.writers import LandmarksFile, read_landmarks

__all__ = [
    "Face",
    "FaceDetectorError",
    "HaarFaceDetector",
    "InferenceError",
    "LandmarkDetector",
    "LandmarksFile",
    "PredictSummary",
    "SchemePoints",
    "predict_photos",
    "read_landmarks",
]

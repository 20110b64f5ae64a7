"""Inference on photos: face boxes, the landmark detector, photo files in and out."""

from sepbn.inference.detector import LandmarkDetector
from sepbn.inference.face_detection import HaarFaceDetector
from sepbn.inference.photos import predict_photos

__all__ = ["HaarFaceDetector", "LandmarkDetector", "predict_photos"]

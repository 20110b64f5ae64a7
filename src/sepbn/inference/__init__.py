"""Inference on photos: face boxes and the landmark detector."""

from sepbn.inference.detector import LandmarkDetector
from sepbn.inference.face_detection import HaarFaceDetector

__all__ = ["HaarFaceDetector", "LandmarkDetector"]

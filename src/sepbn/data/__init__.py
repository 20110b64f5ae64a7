"""Landmark data: protocols, format readers, transforms, datasets, synthetic faces."""

from sepbn.data.errors import DatasetError, SkipReport
from sepbn.data.protocols import PROTOCOLS, LandmarkProtocol, get_protocol, register_protocol
from sepbn.data.records import FaceRecord, box_from_landmarks

__all__ = [
    "PROTOCOLS",
    "DatasetError",
    "FaceRecord",
    "LandmarkProtocol",
    "SkipReport",
    "box_from_landmarks",
    "get_protocol",
    "register_protocol",
]

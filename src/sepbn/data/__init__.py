"""Landmark data: protocols, format readers, transforms, datasets, synthetic faces.

Data flows one way: :mod:`~sepbn.data.formats` read the official files into
:class:`FaceRecord` lists, :mod:`~sepbn.data.transforms` crop and augment them in one warp,
:mod:`~sepbn.data.cache` stores pre-cropped faces, and :mod:`~sepbn.data.datasets` turns
records or caches into training samples (several protocols at once for CNT).
"""

from sepbn.data.cache import FaceCache, prepare_cache
from sepbn.data.datasets import LandmarkDataset, MultiProtocolDataset, collate_landmarks
from sepbn.data.errors import DatasetError, SkipReport
from sepbn.data.formats import read_records, write_coco
from sepbn.data.protocols import PROTOCOLS, LandmarkProtocol, get_protocol, register_protocol
from sepbn.data.records import FaceRecord, box_from_landmarks
from sepbn.data.synthetic import SyntheticFaceConfig, make_synthetic_records
from sepbn.data.transforms import AugmentConfig, FaceCropTransform

__all__ = [
    "PROTOCOLS",
    "AugmentConfig",
    "DatasetError",
    "FaceCache",
    "FaceCropTransform",
    "FaceRecord",
    "LandmarkDataset",
    "LandmarkProtocol",
    "MultiProtocolDataset",
    "SkipReport",
    "SyntheticFaceConfig",
    "box_from_landmarks",
    "collate_landmarks",
    "get_protocol",
    "make_synthetic_records",
    "prepare_cache",
    "read_records",
    "register_protocol",
    "write_coco",
]

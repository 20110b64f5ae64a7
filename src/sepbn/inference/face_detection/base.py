"""The face detector interface: boxes and scores in the landmark network's box convention.

A landmark network is trained on crops around one kind of box: the tight box of the
ground-truth landmarks, made square (see :func:`sepbn.data.records.box_from_landmarks`). Every
face detector draws its box elsewhere (Haar's box is large and low, BlazeFace's tight around
the eyes and mouth, ...). :class:`BoxCorrection` maps a detector's raw box to the training
convention with three numbers fitted once per detector by least squares, on training faces
only (:mod:`.box_correction`), shipped in ``box_corrections.json`` next to this file and
read by :func:`fitted_box_correction`; :class:`FaceDetector` applies it to every detection.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import cv2
import numpy as np

from sepbn.errors import SepbnError

__all__ = [
    "BOX_CORRECTIONS_FILE",
    "BoxCorrection",
    "FaceDetector",
    "FaceDetectorError",
    "downscale_for_detection",
    "fitted_box_correction",
    "load_box_corrections",
]

BOX_CORRECTIONS_FILE = Path(__file__).with_name("box_corrections.json")


class FaceDetectorError(SepbnError, RuntimeError):
    """A face detector cannot be built (unknown name, missing extra, missing model file)."""


@dataclass(frozen=True)
class BoxCorrection:
    """Raw detector box -> square training-convention box.

    With the raw box's centre ``(cx, cy)`` and side ``s = sqrt(w h)``, the corrected box is
    the square of side ``scale * s`` centred at ``(cx + offset_x * s, cy + offset_y * s)``.

    Attributes:
        scale: Side of the corrected box per unit of the raw side.
        offset_x: Horizontal centre shift, in raw sides.
        offset_y: Vertical centre shift, in raw sides.
    """

    scale: float = 1.0
    offset_x: float = 0.0
    offset_y: float = 0.0

    def __call__(self, boxes: np.ndarray) -> np.ndarray:
        """Correct ``(F, 4)`` boxes ``x_min, y_min, x_max, y_max``; returns ``(F, 4)`` float64."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        w = boxes[:, 2] - boxes[:, 0]
        h = boxes[:, 3] - boxes[:, 1]
        side = np.sqrt(np.clip(w * h, 0.0, None))
        cx = (boxes[:, 0] + boxes[:, 2]) / 2 + self.offset_x * side
        cy = (boxes[:, 1] + boxes[:, 3]) / 2 + self.offset_y * side
        half = self.scale * side / 2
        return np.stack([cx - half, cy - half, cx + half, cy + half], axis=1)


@cache
def _read_corrections(path: str) -> dict[str, dict[str, float]]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)["detectors"]


def load_box_corrections(path: str | Path = BOX_CORRECTIONS_FILE) -> dict[str, BoxCorrection]:
    """Every fitted correction in the data file, by detector name."""
    return {
        name: BoxCorrection(
            scale=entry["scale"], offset_x=entry["offset_x"], offset_y=entry["offset_y"]
        )
        for name, entry in _read_corrections(str(path)).items()
    }


def fitted_box_correction(name: str) -> BoxCorrection | None:
    """The shipped correction of the detector called ``name``; ``None`` when it has none."""
    return load_box_corrections().get(name)


class FaceDetector(ABC):
    """Finds faces in an RGB photo.

    Subclasses implement :meth:`detect_raw`; calling the detector returns the boxes after
    :attr:`box_correction`, which is what :class:`sepbn.inference.LandmarkDetector` crops.

    Attributes:
        name: The registry name (``--detector NAME``).
        box_correction: The raw -> training box mapping; identity when ``None``. Unless set,
            the one fitted for :attr:`name` on the 300-W training crops
            (:func:`fitted_box_correction`), or ``None`` when the
            detector has no fitted correction.
    """

    name: str = "face_detector"

    @property
    def box_correction(self) -> BoxCorrection | None:
        if not hasattr(self, "_box_correction"):
            self._box_correction = fitted_box_correction(self.name)
        return self._box_correction

    @box_correction.setter
    def box_correction(self, correction: BoxCorrection | None) -> None:
        self._box_correction = correction

    @abstractmethod
    def detect_raw(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The detector's own boxes and confidence scores, highest score first.

        Args:
            rgb: ``(H, W, 3)`` uint8 RGB photo.

        Returns:
            ``(F, 4)`` float64 boxes ``x_min, y_min, x_max, y_max`` in photo pixels and
            ``(F,)`` float64 scores in ``[0, 1]``.
        """

    def __call__(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Boxes in the training convention (``(F, 4)`` float64) and scores (``(F,)``)."""
        boxes, scores = self.detect_raw(rgb)
        if self.box_correction is not None and len(boxes):
            boxes = self.box_correction(boxes)
        return boxes, scores


def downscale_for_detection(rgb: np.ndarray, max_side: int | None) -> tuple[np.ndarray, float]:
    """The photo shrunk so that its longer side is at most ``max_side``, and the factor.

    Detectors cost time in proportion to the pixels they scan, and a face that fills a
    large photo is found as well at 640 pixels as at 4000; a detector runs on the small
    copy and divides its boxes by the factor to return them in photo pixels.

    Args:
        rgb: ``(H, W, 3)`` uint8 photo.
        max_side: The longest side to detect at; ``None`` or 0 keeps the photo as it is.

    Returns:
        The (possibly) shrunk photo and ``factor = small side / photo side`` (<= 1).
    """
    longest = max(rgb.shape[:2])
    if not max_side or longest <= max_side:
        return rgb, 1.0
    factor = max_side / longest
    size = (max(1, round(rgb.shape[1] * factor)), max(1, round(rgb.shape[0] * factor)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA), factor

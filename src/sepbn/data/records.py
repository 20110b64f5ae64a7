"""The face record: what every format reader returns and every dataset consumes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class FaceRecord:
    """One annotated face.

    Attributes:
        image_path: The image file, or ``None`` when ``image`` holds the pixels.
        landmarks: ``(L, 2)`` float64, ``x, y`` in 0-based pixels of the image.
        box: ``(4,)`` float64 face box ``x_min, y_min, x_max, y_max`` in pixels.
        protocol: Key of the landmark protocol (``"wflw"``, ``"300w"``, ...).
        valid: ``(L,)`` bool, False where a point is not annotated (AFLW, AFLW2000-3D).
            Invalid points are excluded from the loss and the metrics. ``None`` (the default)
            marks every point valid: the record then holds an all-true array.
        occluded: ``(L,)`` bool occlusion flags where the format has them (COFW), else None.
        attributes: Named 0/1 attributes (WFLW: pose, expression, illumination,
            makeup, occlusion, blur).
        source: Where the record came from, ``"file:line"`` or ``"file[record]"``,
            used in every error message.
        image: ``(H, W, 3)`` uint8 RGB pixels for in-memory records (synthetic faces).
        domain: Optional sub-domain label (e.g. 0 frontal, 1 left, 2 right profile) for
            the brute-force SepBN of paper Sec. III-A / Table II.
    """

    image_path: Path | None
    landmarks: np.ndarray
    box: np.ndarray
    protocol: str
    valid: np.ndarray = None  # type: ignore[assignment]  # None: all valid, see __post_init__
    occluded: np.ndarray | None = None
    attributes: dict[str, bool] = field(default_factory=dict)
    source: str = ""
    image: np.ndarray | None = None
    domain: int | None = None

    def __post_init__(self) -> None:
        self.landmarks = np.asarray(self.landmarks, dtype=np.float64)
        self.box = np.asarray(self.box, dtype=np.float64)
        if self.valid is None:
            self.valid = np.ones(len(self.landmarks), dtype=bool)
        else:
            self.valid = np.asarray(self.valid, dtype=bool)

    @property
    def num_points(self) -> int:
        return int(self.landmarks.shape[0])


def box_from_landmarks(landmarks: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Tight ``x_min, y_min, x_max, y_max`` box of the (valid) landmarks."""
    pts = np.asarray(landmarks, dtype=np.float64)
    if valid is not None:
        pts = pts[np.asarray(valid, dtype=bool)]
    return np.concatenate([pts.min(axis=0), pts.max(axis=0)])

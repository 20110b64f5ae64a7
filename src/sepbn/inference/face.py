"""One face of a photo as :class:`~sepbn.inference.LandmarkDetector` returns it: its box,
scores and landmarks, their per-point confidence, and its points in further schemes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Face", "SchemePoints"]


@dataclass(frozen=True)
class SchemePoints:
    """A face's points in one landmark scheme.

    Attributes:
        landmarks: ``(L_p, 2)`` x, y in pixels of the photo, 0-based.
        confidence: ``(L_p,)`` per-point confidence in ``[0, 1]`` (module docstring).
    """

    landmarks: np.ndarray
    confidence: np.ndarray

    def to_dict(self, decimals: int = 2) -> dict[str, Any]:
        """JSON-ready ``{"landmarks", "confidence"}``."""
        return {
            "landmarks": np.round(self.landmarks, decimals).tolist(),
            "confidence": np.round(self.confidence, 3).tolist(),
        }


@dataclass(frozen=True)
class Face:
    """One face of a photo.

    Attributes:
        landmarks: ``(L, 2)`` x, y in pixels of the photo, 0-based.
        box: ``(4,)`` the face box the landmarks were predicted from (``x_min, y_min,
            x_max, y_max``, the detector's box after its correction, or the box given).
        score: The face detector's confidence; 1.0 for a box that was given.
        quality: Agreement of two differently cropped predictions (module docstring).
        confidence: ``(L,)`` per-point confidence of ``landmarks`` in ``[0, 1]``.
        schemes: The points in each scheme asked for with ``protocols`` (empty when only
            the detector's own protocol was asked for).
        track_id: On a video followed by :class:`~sepbn.inference.tracking.FaceTracker`, the
            face's identity across frames; ``None`` otherwise.
    """

    landmarks: np.ndarray
    box: np.ndarray
    score: float
    quality: float
    confidence: np.ndarray | None = None
    schemes: dict[str, SchemePoints] = field(default_factory=dict)
    track_id: int | None = None

    def to_dict(self, decimals: int = 2) -> dict[str, Any]:
        """JSON-ready ``{"box", "score", "quality", "landmarks", "confidence"}``, and
        ``"schemes": {name: {"landmarks", "confidence"}}`` when several were asked for."""
        out: dict[str, Any] = {
            "box": np.round(self.box, decimals).tolist(),
            "score": round(float(self.score), 4),
            "quality": round(float(self.quality), 4),
            "landmarks": np.round(self.landmarks, decimals).tolist(),
        }
        if self.confidence is not None:
            out["confidence"] = np.round(self.confidence, 3).tolist()
        if self.track_id is not None:
            out["track_id"] = self.track_id
        if self.schemes:
            out["schemes"] = {name: p.to_dict(decimals) for name, p in self.schemes.items()}
        return out

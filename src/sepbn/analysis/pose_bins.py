"""Faces binned by head yaw, for the analyses that split by pose (paper Fig. 3, Sec. III-A).

The yaw comes from :func:`sepbn.data.domains.estimate_yaw` (nose tip against the eye axis);
a face whose yaw cannot be measured but which :func:`~sepbn.data.domains.pose_domain` calls a
profile because one eye is not annotated at all (AFLW) counts as ±90°. Bins are given by their
edges in degrees; the default ``(-30, 30)`` gives the paper's three sub-domains: right
profile, near-frontal, left profile (positive yaw: the nose points to the image's left).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from sepbn.data.domains import (
    LEFT_PROFILE,
    RIGHT_PROFILE,
    YAW_THRESHOLD,
    estimate_yaw,
    pose_domain,
)
from sepbn.data.protocols import LandmarkProtocol
from sepbn.data.records import FaceRecord

__all__ = ["DEFAULT_YAW_EDGES", "UNKNOWN_BIN", "bin_names", "face_yaw", "yaw_bins"]

DEFAULT_YAW_EDGES = (-YAW_THRESHOLD, YAW_THRESHOLD)
UNKNOWN_BIN = -1


def face_yaw(records: Sequence[FaceRecord], protocol: LandmarkProtocol) -> np.ndarray:
    """Yaw in degrees of each face, NaN where neither the estimate nor the eye rule applies.

    Shape:
        - output: ``(N,)`` float64
    """
    landmarks = np.stack([r.landmarks for r in records])  # (N, L, 2)
    valid = np.stack([r.valid for r in records])  # (N, L)
    yaw = estimate_yaw(landmarks, protocol, valid)
    domain = pose_domain(landmarks, protocol, valid)
    unknown = np.isnan(yaw)
    yaw[unknown & (domain == LEFT_PROFILE)] = 90.0
    yaw[unknown & (domain == RIGHT_PROFILE)] = -90.0
    return yaw


def _check(edges: Sequence[float]) -> np.ndarray:
    e = np.asarray(edges, dtype=np.float64)
    if e.ndim != 1 or len(e) == 0 or np.any(np.diff(e) <= 0) or np.any(np.abs(e) >= 90):
        raise ValueError(f"yaw edges must increase strictly within (-90, 90) degrees, got {edges}")
    return e


def yaw_bins(yaw: np.ndarray, edges: Sequence[float] = DEFAULT_YAW_EDGES) -> np.ndarray:
    """Bin index of each yaw: ``0`` below the first edge ... ``len(edges)`` above the last;
    :data:`UNKNOWN_BIN` for NaN. A yaw equal to an edge goes to the bin above it.

    Shape:
        - yaw: ``(N,)``; output ``(N,)`` int64
    """
    e = _check(edges)
    y = np.asarray(yaw, dtype=np.float64)
    out = np.digitize(np.nan_to_num(y), e).astype(np.int64)
    out[np.isnan(y)] = UNKNOWN_BIN
    return out


def bin_names(edges: Sequence[float] = DEFAULT_YAW_EDGES) -> list[str]:
    """``["yaw < -30°", "-30° ≤ yaw < 30°", "yaw ≥ 30°"]`` for the default edges."""
    e = [f"{v:g}°" for v in _check(edges)]
    middle = [f"{a} ≤ yaw < {b}" for a, b in itertools.pairwise(e)]
    return [f"yaw < {e[0]}", *middle, f"yaw ≥ {e[-1]}"]

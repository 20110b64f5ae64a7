"""Faces binned by head yaw, for the analyses that split by pose (paper Fig. 3, Sec. III-A).

The yaw comes from :func:`sepbn.data.domains.estimate_yaw` (nose tip against the eye axis);
a face whose yaw cannot be measured but which :func:`~sepbn.data.domains.pose_domain` calls a
profile because one eye is not annotated at all (AFLW) counts as ±90°. Bins are given by their
edges in degrees; the default ``(-30, 30)`` gives the paper's three sub-domains: right
profile, near-frontal, left profile (positive yaw: the nose points to the image's left).

Every evaluation also reports the NME of three **head-pose bins** of the absolute yaw of the
ground truth (:func:`pose_bin_metrics`; SepBN's premise is that pose sub-domains are
imbalanced): ``frontal`` ``|yaw| < 15°``, ``moderate`` ``15° ≤ |yaw| < 30°``, ``profile``
``|yaw| ≥ 30°``, and an ``unknown`` count of faces whose yaw cannot be measured (a protocol
without eye and nose points, or those points not annotated). The estimate agrees with the
fitted 3D pose of the 16 AFLW2000-3D samples to within 8° (it underestimates the largest yaws,
65° and 71°, by about 6°), for 68-point faces and for the 5 points of ``wider5`` alike, so the
degrees are real degrees, not a scaled score; what limits the upper edge is the test sets:
the largest |yaw| on 300-W common (LFPW + HELEN test, 506 faces here) is 40.5°, and 45° would
leave its profile bin empty. With 15° and 30° the bins hold 370 / 124 / 12 faces on 300-W
common and 1751 / 804 / 440 on the 2995 AFLW faces of the MTFL test set (5 points); 30° is
also the near-frontal bound of the pose domains (:data:`sepbn.data.domains.YAW_THRESHOLD`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

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

__all__ = [
    "DEFAULT_YAW_EDGES",
    "POSE_BINS",
    "POSE_BIN_EDGES",
    "UNKNOWN_BIN",
    "bin_names",
    "face_yaw",
    "format_pose_bins",
    "landmark_yaw",
    "pose_bin_keys",
    "pose_bin_metrics",
    "yaw_bins",
]

DEFAULT_YAW_EDGES = (-YAW_THRESHOLD, YAW_THRESHOLD)
UNKNOWN_BIN = -1
# |yaw| edges in degrees of the evaluation's pose bins: frontal < 15° ≤ moderate < 30° ≤
# profile. Not 45° for the upper edge: no 300-W common face reaches it (see the module
# docstring for the counts).
POSE_BIN_EDGES = (15.0, 30.0)
POSE_BINS = ("frontal", "moderate", "profile")


def face_yaw(records: Sequence[FaceRecord], protocol: LandmarkProtocol) -> np.ndarray:
    """Yaw in degrees of each face, NaN where neither the estimate nor the eye rule applies.

    Shape:
        - output: ``(N,)`` float64
    """
    landmarks = np.stack([r.landmarks for r in records])  # (N, L, 2)
    valid = np.stack([r.valid for r in records])  # (N, L)
    return landmark_yaw(landmarks, protocol, valid)


def landmark_yaw(
    landmarks: np.ndarray, protocol: LandmarkProtocol, valid: np.ndarray | None = None
) -> np.ndarray:
    """:func:`face_yaw` of landmark arrays: the estimate, else ±90° by the missing-eye rule.

    Shape:
        - landmarks: ``(N, L, 2)``; valid: ``(N, L)`` or None for all annotated
        - output: ``(N,)`` float64, NaN where the yaw cannot be measured
    """
    yaw = estimate_yaw(landmarks, protocol, valid)
    domain = pose_domain(landmarks, protocol, valid)  # (N,)
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


def pose_bin_keys(edges: Sequence[float] = POSE_BIN_EDGES) -> list[str]:
    """The metric keys of :func:`pose_bin_metrics`: ``nme_pose_<bin>``, ``count_pose_<bin>``
    per bin, then ``count_pose_unknown``."""
    names = _pose_names(edges)
    return [f"{k}_pose_{b}" for b in names for k in ("nme", "count")] + ["count_pose_unknown"]


def _pose_names(edges: Sequence[float]) -> list[str]:
    e = _check(edges)
    if np.any(e <= 0):
        raise ValueError(f"|yaw| edges must be positive, got {list(edges)}")
    if len(e) == len(POSE_BINS) - 1:
        return list(POSE_BINS)
    return [f"bin{i}" for i in range(len(e) + 1)]


def pose_bin_metrics(
    nmes: np.ndarray,
    landmarks: np.ndarray,
    protocol: LandmarkProtocol,
    valid: np.ndarray | None = None,
    edges: Sequence[float] = POSE_BIN_EDGES,
) -> dict[str, float]:
    """Mean NME and face count per bin of absolute yaw (see the module docstring).

    Args:
        nmes: Per-image NMEs (fractions of d).
        landmarks: The ground truth the yaw is measured on (the face's pose, not the
            prediction's), in any pixel frame.
        protocol: Their protocol.
        valid: Annotation mask, or None for all annotated.
        edges: Increasing |yaw| edges in degrees; the default gives frontal, moderate,
            profile; other edges name the bins ``bin0``, ``bin1``, ...

    Returns:
        ``nme_pose_<bin>`` (left out for an empty bin) and ``count_pose_<bin>`` per bin,
        and ``count_pose_unknown``, the faces whose yaw cannot be measured; the counts add
        up to ``N``.

    Shape:
        - nmes: ``(N,)``; landmarks: ``(N, L, 2)``; valid: ``(N, L)``
    """
    errors = np.asarray(nmes, dtype=np.float64).reshape(-1)
    if errors.shape[0] != len(landmarks):
        raise ValueError(f"{errors.shape[0]} NMEs for {len(landmarks)} faces")
    names = _pose_names(edges)
    bins = yaw_bins(np.abs(landmark_yaw(landmarks, protocol, valid)), edges)  # (N,)
    out: dict[str, float] = {}
    for i, name in enumerate(names):
        chosen = bins == i
        if chosen.any():
            out[f"nme_pose_{name}"] = float(errors[chosen].mean())
        out[f"count_pose_{name}"] = int(chosen.sum())
    out["count_pose_unknown"] = int((bins == UNKNOWN_BIN).sum())
    return out


def format_pose_bins(metrics: Mapping[str, float], edges: Sequence[float] = POSE_BIN_EDGES) -> str:
    """The pose bins of ``metrics`` (from :func:`pose_bin_metrics`) as printed lines, e.g.
    ``frontal   |yaw| < 15°           NME  3.21%   370 faces``."""
    names = _pose_names(edges)
    e = [f"{v:g}°" for v in _check(edges)]
    ranges = [f"|yaw| < {e[0]}", *(f"{a} ≤ |yaw| < {b}" for a, b in itertools.pairwise(e))]
    ranges.append(f"|yaw| ≥ {e[-1]}")
    lines = ["NME by head pose (|yaw| of the ground-truth landmarks):"]
    for name, text in zip(names, ranges):
        nme = metrics.get(f"nme_pose_{name}")
        cell = "NME      –" if nme is None or math.isnan(nme) else f"NME {100 * nme:5.2f}%"
        count = int(metrics.get(f"count_pose_{name}", 0))
        lines.append(f"  {name:9} {text:20} {cell:>11} {count:5d} faces")
    unknown = int(metrics.get("count_pose_unknown", 0))
    lines.append(f"  {'unknown':9} {'yaw not measurable':20} {'':>11} {unknown:5d} faces")
    return "\n".join(lines)

"""Normalized Mean Error per image (paper Eq. 8) and the failure rate.

Units: every function here works with NME as a *fraction* of the normalizer d
(Eq. 8 without the ``x 100``); reports multiply by 100 when they print.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

FAILURE_THRESHOLD = 0.10


def as_float64(array: Any, name: str) -> np.ndarray:
    """A numpy float64 copy of a numpy array, torch tensor or nested sequence.

    Args:
        array: The values; torch tensors are detached and moved to the CPU.
        name: Argument name used in error messages.

    Returns:
        The values as a float64 numpy array.
    """
    if isinstance(array, torch.Tensor):
        array = array.detach().to("cpu", torch.float64).numpy()
    try:
        return np.asarray(array, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be numeric (numpy array or torch tensor): {err}") from None


def nme_per_image(
    pred: Any,
    gt: Any,
    norm: Any,
    valid: Any | None = None,
) -> np.ndarray:
    """Normalized Mean Error of each face, as a fraction of its normalizer d.

    ``NME = 1/L * sum_j ||p_j - g_j||_2 / d`` (Eq. 8, without the factor 100), where
    the mean runs over the valid points only, so unannotated points (AFLW) are
    neither counted as errors nor in L.

    Args:
        pred: Predicted landmarks in the same pixel frame as ``gt`` (numpy or torch).
        gt: Ground-truth landmarks.
        norm: The normalizer d of each face in pixels (inter-ocular distance or
            ``sqrt(w * h)`` of the box, see :meth:`LandmarkProtocol.normalizer`).
        valid: Which points are annotated; ``None`` means all.

    Returns:
        ``(N,)`` float64 NMEs (fractions, not percent).

    Raises:
        ValueError: On shape mismatches, a non-positive or non-finite ``norm``, or a
            face without any valid point (its NME is undefined); the message names
            the first offending face.

    Shape:
        - pred, gt: ``(N, L, 2)``
        - norm: ``(N,)``
        - valid: ``(N, L)`` bool
        - output: ``(N,)``
    """
    p = as_float64(pred, "pred")
    g = as_float64(gt, "gt")
    d = as_float64(norm, "norm").reshape(-1)
    if p.ndim != 3 or p.shape[-1] != 2:
        raise ValueError(f"pred must have shape (N, L, 2), got {p.shape}")
    if g.shape != p.shape:
        raise ValueError(f"gt shape {g.shape} does not match pred shape {p.shape}")
    n, num_points = p.shape[:2]
    if d.shape != (n,):
        raise ValueError(f"norm must have shape ({n},), got {d.shape}")
    bad = np.flatnonzero(~(np.isfinite(d) & (d > 0)))
    if bad.size:
        raise ValueError(f"norm must be positive and finite; face {bad[0]} has d={d[bad[0]]}")
    if valid is None:
        mask = np.ones((n, num_points), dtype=bool)
    else:
        mask = valid.detach().cpu().numpy() if isinstance(valid, torch.Tensor) else valid
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (n, num_points):
            raise ValueError(f"valid must have shape ({n}, {num_points}), got {mask.shape}")
    count = mask.sum(axis=1)
    empty = np.flatnonzero(count == 0)
    if empty.size:
        raise ValueError(f"face {empty[0]} has no valid landmark, its NME is undefined")
    dist = np.linalg.norm(p - g, axis=-1)  # (N, L)
    # where= keeps NaN predictions at unannotated points out of the sum.
    total = np.sum(dist, axis=1, where=mask)  # (N,)
    return total / count / d  # Eq. 8


def failure_rate(nmes: Any, threshold: float = FAILURE_THRESHOLD) -> float:
    """Fraction of faces whose NME exceeds ``threshold`` (the "FR@10%" of Table VII).

    Args:
        nmes: Per-image NMEs as fractions, e.g. from :func:`nme_per_image`.
        threshold: Failure threshold as a fraction (0.10 = 10%).

    Returns:
        The failure rate in ``[0, 1]``.
    """
    errors = check_errors(nmes)
    check_threshold(threshold)
    return float(np.mean(errors > threshold))


def check_errors(nmes: Any) -> np.ndarray:
    """Validate a non-empty 1-D vector of finite, non-negative errors.

    Returns:
        The errors as a float64 numpy vector.
    """
    errors = as_float64(nmes, "nmes")
    if errors.ndim != 1:
        raise ValueError(f"nmes must be a 1-D vector of per-image errors, got shape {errors.shape}")
    if errors.size == 0:
        raise ValueError("nmes is empty: no image to compute a metric over")
    bad = np.flatnonzero(~np.isfinite(errors) | (errors < 0))
    if bad.size:
        raise ValueError(f"nmes must be finite and >= 0; image {bad[0]} has {errors[bad[0]]}")
    return errors


def check_threshold(threshold: float) -> None:
    """Raise unless ``threshold`` is a positive, finite fraction."""
    if not (np.isfinite(threshold) and threshold > 0):
        raise ValueError(f"threshold must be a positive fraction such as 0.10, got {threshold!r}")

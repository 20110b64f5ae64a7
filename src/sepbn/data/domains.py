"""Head-pose sub-domain labels for the brute-force SepBN (paper Sec. III-A, Fig. 3).

The paper splits AFLW into near-frontal, left-profile and right-profile faces and sends
each subset through its own BN branch. Without a pose label we estimate yaw from the
2D landmarks: the nose tip's position along the line between the two outer eye corners.
For a frontal face it sits half-way; turning the head by yaw ``phi`` moves it by about
``k tan(phi)`` of the eye-corner distance, where ``k`` is the nose depth over the
eye-corner distance. ``k = 0.55`` for outer eye corners (0.65 for eye centres) was
fitted on the 16 AFLW2000-3D samples with ground-truth yaw (fits 0.33-0.75).

Domains, by the estimated yaw (positive = the nose points to the image's left):
    0  near-frontal, ``|yaw| <= 30`` degrees (the usual AFLW-Frontal bound),
    1  left profile, ``yaw > 30``: the face points to the image's left,
    2  right profile, ``yaw < -30``,
   -1  unknown: the protocol has no eye/nose points, or they are not annotated.

When an outer eye corner is not annotated, the mean of each eye's annotated points
is used as its centre instead. When one eye is missing entirely while the
other is (partly) annotated, as in AFLW profiles, the face is a profile towards the
side of the missing eye. A horizontal flip swaps domains 1 and 2.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sepbn.data.protocols import LandmarkProtocol

FRONTAL, LEFT_PROFILE, RIGHT_PROFILE, UNKNOWN_DOMAIN = 0, 1, 2, -1
NUM_POSE_DOMAINS = 3
YAW_THRESHOLD = 30.0  # degrees
EYE_CENTRE_DEPTH = 0.65  # k for eye centres (fitted like the 0.55 of outer corners)


@dataclass(frozen=True)
class PosePoints:
    """0-based indices used by the yaw estimate for one protocol.

    Attributes:
        left: Reference point on the image-left eye of a frontal face (outer corner).
        right: Reference point on the image-right eye.
        nose: Nose tip.
        left_eye: All points of the image-left eye (for the missing-eye rule).
        right_eye: All points of the image-right eye.
        depth: ``k``, nose depth over the reference-point distance.
    """

    left: int
    right: int
    nose: int
    left_eye: tuple[int, ...]
    right_eye: tuple[int, ...]
    depth: float = 0.55


POSE_POINTS: dict[str, PosePoints] = {
    "300w": PosePoints(36, 45, 30, tuple(range(36, 42)), tuple(range(42, 48))),
    "wflw": PosePoints(60, 72, 54, (*range(60, 68), 96), (*range(68, 76), 97)),
    "cofw": PosePoints(8, 9, 20, (8, 10, 12, 13, 16), (9, 11, 14, 15, 17)),
    "cofw_pupil": PosePoints(8, 9, 20, (8, 10, 12, 13, 16), (9, 11, 14, 15, 17)),
    "aflw": PosePoints(6, 11, 13, (6, 7, 8), (9, 10, 11)),
    "wider5": PosePoints(0, 1, 2, (0,), (1,), depth=EYE_CENTRE_DEPTH),
}


def estimate_yaw(
    landmarks: np.ndarray, protocol: LandmarkProtocol, valid: np.ndarray | None = None
) -> np.ndarray:
    """Rough yaw in degrees from 2D landmarks (positive: nose towards the image's left).

    Args:
        landmarks: ``(N, L, 2)`` pixel coordinates.
        protocol: Their protocol; must be in :data:`POSE_POINTS`.
        valid: ``(N, L)`` annotation mask; faces whose nose tip or a whole eye is not
            annotated get NaN.

    Returns:
        ``(N,)`` float64, NaN where it cannot be estimated (all NaN for a protocol
        without pose points).

    Shape:
        - landmarks: ``(N, L, 2)``
        - output: ``(N,)``
    """
    pts = np.asarray(landmarks, dtype=np.float64)
    if pts.ndim != 3 or pts.shape[1:] != (protocol.num_points, 2):
        raise ValueError(
            f"landmarks must be (N, {protocol.num_points}, 2) for protocol {protocol.name!r}, "
            f"got {pts.shape}"
        )
    ref = POSE_POINTS.get(protocol.name)
    if ref is None:
        return np.full(len(pts), np.nan)
    v = np.ones(pts.shape[:2], bool) if valid is None else np.asarray(valid, dtype=bool)
    yaw = _yaw(pts[:, ref.left], pts[:, ref.right], pts[:, ref.nose], ref.depth)
    yaw[~(v[:, ref.left] & v[:, ref.right] & v[:, ref.nose])] = np.nan
    # Fallback when an outer corner is not annotated (AFLW): the mean of each eye's
    # annotated points stands in for the eye centre.
    retry = np.isnan(yaw) & v[:, ref.nose]
    if retry.any() and len(ref.left_eye) > 1:
        centres = []
        for eye in (list(ref.left_eye), list(ref.right_eye)):
            w = v[retry][:, eye, None]  # (M, E, 1)
            with np.errstate(invalid="ignore", divide="ignore"):
                centres.append((pts[retry][:, eye] * w).sum(axis=1) / w.sum(axis=1))
        yaw[retry] = _yaw(centres[0], centres[1], pts[retry, ref.nose], EYE_CENTRE_DEPTH)
    return yaw


def _yaw(left: np.ndarray, right: np.ndarray, nose: np.ndarray, depth: float) -> np.ndarray:
    """Yaw in degrees from ``(N, 2)`` eye reference points and nose tips; NaN if degenerate."""
    axis = right - left  # (N, 2)
    length2 = np.einsum("nd,nd->n", axis, axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        # Projecting on the eye axis makes the ratio insensitive to in-plane roll.
        ratio = np.einsum("nd,nd->n", nose - left, axis) / length2
        yaw = np.degrees(np.arctan((0.5 - ratio) / depth))
    yaw[~(length2 > 0)] = np.nan
    return yaw


def pose_domain(
    landmarks: np.ndarray,
    protocol: LandmarkProtocol,
    valid: np.ndarray | None = None,
    threshold: float = YAW_THRESHOLD,
) -> np.ndarray:
    """Bin faces into near-frontal (0), left (1) and right (2) profile; -1 if unknown.

    Args:
        landmarks: ``(N, L, 2)`` pixel coordinates.
        protocol: Their protocol.
        valid: ``(N, L)`` annotation mask, or None for all annotated.
        threshold: Yaw in degrees separating near-frontal from profile faces.

    Returns:
        ``(N,)`` int64 domain labels.

    Shape:
        - landmarks: ``(N, L, 2)``
        - output: ``(N,)``
    """
    if not 0 < threshold < 90:
        raise ValueError(f"threshold must be in (0, 90) degrees, got {threshold!r}")
    yaw = estimate_yaw(landmarks, protocol, valid)
    out = np.full(len(yaw), UNKNOWN_DOMAIN, dtype=np.int64)
    known = ~np.isnan(yaw)
    out[known] = FRONTAL
    out[known & (yaw > threshold)] = LEFT_PROFILE
    out[known & (yaw < -threshold)] = RIGHT_PROFILE
    ref = POSE_POINTS.get(protocol.name)
    if valid is not None and ref is not None:
        v = np.asarray(valid, dtype=bool)
        has_left = v[:, list(ref.left_eye)].any(axis=1)
        has_right = v[:, list(ref.right_eye)].any(axis=1)
        # The eye on the side the face points to hides behind the nose in a profile.
        out[~known & ~has_left & has_right] = LEFT_PROFILE
        out[~known & has_left & ~has_right] = RIGHT_PROFILE
    return out


def mirror_domain(domain: np.ndarray | int) -> np.ndarray | int:
    """The pose domain of the horizontally flipped face: swaps 1 and 2."""
    d = np.asarray(domain)
    out = np.where(d == LEFT_PROFILE, RIGHT_PROFILE, np.where(d == RIGHT_PROFILE, LEFT_PROFILE, d))
    return int(out) if out.ndim == 0 else out

"""The 3-D face template behind the synthetic faces, defined in code.

Frame and units: a face-centred frame with ``X`` to the image's right, ``Y`` down and
``Z`` towards the camera; the origin is roughly the centre of the head (the pivot of
yaw and pitch), and one unit is half the distance between the outer eye corners
(about 4.5 cm on a real face). The 68 landmarks follow the iBUG 300-W order: jaw
contour 0-16, brows 17-26, nose 27-35, eyes 36-47, mouth 48-67, with point 0 and the
eye 36-41 on the image's left. Only the image-left half and the midline are written
out; the right half is their mirror image.

Besides the landmarks, the template holds the geometry the renderer needs (forehead
arc, lower brow edge, irises, nostrils, ears, head, neck and torso). The *full* point
set adds points derived linearly from those (jaw mid-points, dense eyelid curves, iris
and pupil rims), so one matrix product maps a deformed template to every point that is
drawn or annotated. Each protocol is a fixed weight matrix applied to the projected full
set (:mod:`sepbn.data.synthetic.layouts`), and the template is deformed by the identity
and expression modes of :mod:`sepbn.data.synthetic.modes`; drawing and annotation
therefore come from the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

# Image-left half and midline of the 68 landmarks, (X, Y, Z) in template units.
_LANDMARKS_LEFT: dict[int, tuple[float, float, float]] = {
    # jaw contour, from the image-left ear down to the chin (8)
    0: (-1.65, 0.00, 0.30),
    1: (-1.63, 0.43, 0.35),
    2: (-1.57, 0.85, 0.45),
    3: (-1.47, 1.26, 0.62),
    4: (-1.30, 1.64, 0.85),
    5: (-1.03, 1.97, 1.10),
    6: (-0.73, 2.24, 1.35),
    7: (-0.38, 2.43, 1.55),
    8: (0.00, 2.50, 1.65),
    # image-left brow, upper edge from the tail (17) to the inner end (21)
    17: (-1.34, -0.28, 1.20),
    18: (-1.13, -0.46, 1.50),
    19: (-0.85, -0.52, 1.72),
    20: (-0.56, -0.48, 1.88),
    21: (-0.28, -0.38, 1.97),
    # nose ridge from the bridge (27) to the tip (30), then the base 31-35
    27: (0.00, -0.03, 1.92),
    28: (0.00, 0.25, 2.07),
    29: (0.00, 0.53, 2.27),
    30: (0.00, 0.82, 2.50),
    31: (-0.31, 0.97, 1.98),
    32: (-0.16, 1.03, 2.12),
    33: (0.00, 1.07, 2.20),
    # image-left eye: outer corner 36, upper lid 37-38, inner corner 39, lower lid 40-41
    36: (-1.00, 0.00, 1.42),
    37: (-0.82, -0.11, 1.62),
    38: (-0.61, -0.10, 1.74),
    39: (-0.44, 0.03, 1.78),
    40: (-0.62, 0.08, 1.72),
    41: (-0.83, 0.08, 1.60),
    # outer lips: corner 48, upper lip 49-51, lower lip 57-59
    48: (-0.62, 1.48, 1.62),
    49: (-0.40, 1.39, 1.86),
    50: (-0.17, 1.34, 2.03),
    51: (0.00, 1.38, 2.07),
    57: (0.00, 1.76, 2.01),
    58: (-0.18, 1.74, 1.99),
    59: (-0.41, 1.66, 1.84),
    # inner lips (mouth closed): corner 60, upper 61-62, lower 66-67
    60: (-0.52, 1.50, 1.66),
    61: (-0.17, 1.51, 1.96),
    62: (0.00, 1.52, 1.99),
    66: (0.00, 1.54, 1.98),
    67: (-0.17, 1.53, 1.95),
}

# (image-left, image-right) landmark pairs; every other landmark lies on the midline.
# Written from the iBUG markup independently of sepbn.data.protocols; the tests check
# that the two agree on generated faces.
_LANDMARK_PAIRS: tuple[tuple[int, int], ...] = (
    *((k, 16 - k) for k in range(8)),  # jaw
    (17, 26), (18, 25), (19, 24), (20, 23), (21, 22),  # brows, tail to inner end
    (31, 35), (32, 34),  # nose base
    (36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46),  # outer, upper, inner, lower
    (48, 54), (49, 53), (50, 52), (59, 55), (58, 56),  # outer lips
    (60, 64), (61, 63), (67, 65),  # inner lips
)  # fmt: skip

NUM_LANDMARKS = 68
#: Frontal width of the jaw contour (points 0 to 16) in template units.
FACE_WIDTH_UNITS = 3.30


def _mirror_x(points: np.ndarray) -> np.ndarray:
    """Mirror ``(..., 3)`` template points across the midline plane ``X = 0``."""
    return points * np.array([-1.0, 1.0, 1.0])


class _TemplateBuilder:
    """Collects named point groups and the index of each point's mirror image."""

    def __init__(self) -> None:
        self.points: list[np.ndarray] = []
        self.mirror: list[int] = []
        self.groups: dict[str, np.ndarray] = {}

    @property
    def size(self) -> int:
        """Number of points added so far."""
        return len(self.mirror)

    def add_landmarks(self) -> None:
        """Add the 68 landmarks (they must come first: template index = iBUG index)."""
        pts = np.zeros((NUM_LANDMARKS, 3))
        mirror = list(range(NUM_LANDMARKS))
        for k, xyz in _LANDMARKS_LEFT.items():
            pts[k] = xyz
        for left, right in _LANDMARK_PAIRS:
            pts[right] = _mirror_x(pts[left])
            mirror[left], mirror[right] = right, left
        self.points.append(pts)
        self.mirror += mirror
        self.groups["landmarks"] = np.arange(NUM_LANDMARKS)

    def add_pair(self, name: str, left: ArrayLike) -> None:
        """Add ``name_l`` (image-left) and ``name_r`` (its mirror, same point order)."""
        left_pts = np.asarray(left, dtype=np.float64).reshape(-1, 3)
        n, start = len(left_pts), self.size
        self.points += [left_pts, _mirror_x(left_pts)]
        self.mirror += [start + n + i for i in range(n)] + [start + i for i in range(n)]
        self.groups[f"{name}_l"] = np.arange(start, start + n)
        self.groups[f"{name}_r"] = np.arange(start + n, start + 2 * n)

    def add_symmetric(self, name: str, left: ArrayLike, mid: ArrayLike = ()) -> None:
        """Add one group made of ``left``, ``mid`` (on the midline) and the mirror of ``left``."""
        left_pts = np.asarray(left, dtype=np.float64).reshape(-1, 3)
        mid_pts = np.asarray(mid, dtype=np.float64).reshape(-1, 3)
        n, m, start = len(left_pts), len(mid_pts), self.size
        self.points += [left_pts, mid_pts, _mirror_x(left_pts)]
        self.mirror += [start + n + m + i for i in range(n)]
        self.mirror += [start + n + i for i in range(m)]
        self.mirror += [start + i for i in range(n)]
        self.groups[name] = np.arange(start, start + 2 * n + m)


def _ring(
    center: Sequence[float], axis_u: Sequence[float], axis_v: Sequence[float], n: int
) -> np.ndarray:
    """``(n, 3)`` points, in order, on the ellipse ``center + cos(t) axis_u + sin(t) axis_v``."""
    t = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)[:, None]
    return np.asarray(center) + np.cos(t) * np.asarray(axis_u) + np.sin(t) * np.asarray(axis_v)


def _left_mid_ring(
    y: float, radius_x: float, radius_z: float, center_z: float, left_angles: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """A horizontal ring split into its image-left points and its two midline points.

    Angles are measured from ``+Z`` (the front); image-left points have angles in
    (180, 360) degrees.
    """
    a = np.deg2rad(np.asarray(left_angles, dtype=np.float64))
    left = np.stack(
        [radius_x * np.sin(a), np.full_like(a, y), center_z + radius_z * np.cos(a)], axis=1
    )
    mid = np.array([[0.0, y, center_z + radius_z], [0.0, y, center_z - radius_z]])
    return left, mid


def _build_base() -> _TemplateBuilder:
    """The undeformed template: landmarks first, then the geometry used for drawing."""
    b = _TemplateBuilder()
    b.add_landmarks()
    # Hairline arc from the image-left temple over the forehead; the face region is
    # the convex hull of the jaw contour and this arc.
    b.add_symmetric(
        "forehead",
        [
            (-1.63, -0.45, 0.45),
            (-1.53, -0.95, 0.80),
            (-1.27, -1.40, 1.15),
            (-0.88, -1.72, 1.48),
            (-0.45, -1.88, 1.68),
        ],
        [(0.00, -1.93, 1.76)],
    )
    # Lower brow edge under points 21, 20, 19, 18 (inner to outer, WFLW's order).
    b.add_pair(
        "brow_lower",
        [(-0.28, -0.24, 1.95), (-0.56, -0.32, 1.86), (-0.85, -0.37, 1.70), (-1.13, -0.35, 1.48)],
    )
    b.add_pair("iris", [(-0.72, -0.01, 1.72)])
    # Nostril rims, in a plane that faces down and forward.
    b.add_pair("nostril", _ring((-0.19, 0.98, 2.06), (0.075, 0.0, 0.0), (0.0, -0.03, 0.04), 6))
    # Ears stand slightly away from the head, so a frontal face shows their rims.
    b.add_pair("ear", _ring((-1.68, 0.30, -0.05), (0.0, 0.62, 0.0), (-0.11, 0.0, 0.31), 10))
    # Skull: an ellipsoid, sampled at polar angles from the crown and split into halves.
    shell_left, shell_mid = [], [np.array([[0.0, -2.75, -0.20]])]
    for polar in (35.0, 70.0, 100.0, 125.0):
        p = np.deg2rad(polar)
        left, mid = _left_mid_ring(
            -0.70 - 2.05 * np.cos(p), 1.72 * np.sin(p), 2.15 * np.sin(p), -0.20,
            (210.0, 240.0, 270.0, 300.0, 330.0),
        )  # fmt: skip
        shell_left.append(left)
        shell_mid.append(mid)
    b.add_symmetric("shell", np.concatenate(shell_left), np.concatenate(shell_mid))
    b.add_symmetric("curtain", [(-1.85, 1.90, -0.50), (-1.35, 2.40, -0.90)])
    neck_left, neck_mid = zip(
        *(_left_mid_ring(y, 0.68, 0.62, 0.15, (225.0, 270.0, 315.0)) for y in (1.3, 4.5))
    )
    b.add_symmetric("neck", np.concatenate(neck_left), np.concatenate(neck_mid))
    torso_left, torso_mid = zip(
        *(_left_mid_ring(y, 2.7, 1.2, 0.0, (200.0, 240.0, 270.0, 300.0, 340.0)) for y in (3.7, 7.0))
    )
    b.add_symmetric("torso", np.concatenate(torso_left), np.concatenate(torso_mid))
    return b


_BASE = _build_base()

#: ``(P_base, 3)`` template points before deformation.
TEMPLATE: np.ndarray = np.concatenate(_BASE.points).astype(np.float64)
#: ``(P_base,)`` index of each template point's mirror image (``X -> -X``).
MIRROR: np.ndarray = np.asarray(_BASE.mirror, dtype=np.int64)
NUM_BASE = len(TEMPLATE)
GROUPS: dict[str, np.ndarray] = dict(_BASE.groups)

# Eyelid samples: t = k / 12, k = 1..11, along a cubic through (corner, lid, lid, corner)
# at t = 0, 1/3, 2/3, 1; k = 4 and 8 reproduce the 300-W lid points exactly, and k = 3,
# 6, 9 are WFLW's quarter points.
LID_STEPS = 12
_LIDS = {
    "lid_upper_l": (36, 37, 38, 39),
    "lid_lower_l": (39, 40, 41, 36),
    "lid_upper_r": (42, 43, 44, 45),
    "lid_lower_r": (45, 46, 47, 42),
}
IRIS_RADIUS = 0.125
PUPIL_RADIUS = 0.05
_RIM_POINTS = 12


def _lagrange_weights(t: np.ndarray) -> np.ndarray:
    """``(len(t), 4)`` cubic Lagrange weights for nodes 0, 1/3, 2/3, 1."""
    nodes = np.array([0.0, 1.0, 2.0, 3.0]) / 3.0
    w = np.ones((len(t), 4))
    for j in range(4):
        for m in range(4):
            if m != j:
                w[:, j] *= (t - nodes[m]) / (nodes[j] - nodes[m])
    return w


def _build_full() -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """The linear map ``full = MATRIX @ base + OFFSET`` and the full set's groups."""
    rows: list[np.ndarray] = [np.eye(NUM_BASE)]
    offsets: list[np.ndarray] = [np.zeros((NUM_BASE, 3))]
    groups = dict(GROUPS)
    size = NUM_BASE

    def add(name: str, matrix: np.ndarray, offset: np.ndarray | None = None) -> None:
        nonlocal size
        rows.append(matrix)
        offsets.append(np.zeros((len(matrix), 3)) if offset is None else offset)
        groups[name] = np.arange(size, size + len(matrix))
        size += len(matrix)

    # Jaw mid-points by Catmull-Rom interpolation (ends repeated): WFLW's odd contour points.
    jaw_mid = np.zeros((16, NUM_BASE))
    for k in range(16):
        for idx, w in zip((k - 1, k, k + 1, k + 2), (-1.0, 9.0, 9.0, -1.0)):
            jaw_mid[k, min(max(idx, 0), 16)] += w / 16.0
    add("jaw_mid", jaw_mid)

    weights = _lagrange_weights(np.arange(1, LID_STEPS) / LID_STEPS)
    for name, nodes in _LIDS.items():
        lid = np.zeros((LID_STEPS - 1, NUM_BASE))
        lid[:, list(nodes)] = weights
        add(name, lid)

    for side in ("l", "r"):
        (iris,) = GROUPS[f"iris_{side}"]
        for name, radius, n in (
            ("iris_rim", IRIS_RADIUS, _RIM_POINTS),
            ("pupil_rim", PUPIL_RADIUS, _RIM_POINTS // 2),
        ):
            rim = np.zeros((n, NUM_BASE))
            rim[:, iris] = 1.0
            add(f"{name}_{side}", rim, _ring((0.0, 0.0, 0.0), (radius, 0, 0), (0, radius, 0), n))
    return np.concatenate(rows), np.concatenate(offsets), groups


#: ``(P_full, P_base)`` and ``(P_full, 3)``: ``full = FULL_MATRIX @ base + FULL_OFFSET``.
FULL_MATRIX, FULL_OFFSET, FULL_GROUPS = _build_full()
NUM_FULL = len(FULL_MATRIX)
#: The rows of the map below the identity block: the derived points only.
DERIVED_MATRIX = np.ascontiguousarray(FULL_MATRIX[NUM_BASE:])
DERIVED_OFFSET = np.ascontiguousarray(FULL_OFFSET[NUM_BASE:])


def lid_point(lid: str, k: int) -> int:
    """Full-set index of sample ``t = k / 12`` on an eyelid (``k`` in 1..11)."""
    return int(FULL_GROUPS[lid][k - 1])


def eye_polygon(side: str) -> np.ndarray:
    """Full-set indices of the closed eye contour, left to right along the upper lid.

    ``side`` is ``"l"`` or ``"r"`` (image side); the first ``LID_STEPS + 1`` entries are
    the upper lid from corner to corner.
    """
    first, last = (36, 39) if side == "l" else (42, 45)
    return np.concatenate(
        [[first], FULL_GROUPS[f"lid_upper_{side}"], [last], FULL_GROUPS[f"lid_lower_{side}"]]
    )

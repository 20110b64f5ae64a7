"""Shape modes of the synthetic faces: identity and expression deformations of the template.

A face's shape is the template of :mod:`sepbn.data.synthetic.template` plus a linear
combination of these ``(P_base, 3)`` displacement fields: person-to-person variation
(:data:`IDENTITY_MODES`, scaled by :data:`IDENTITY_SIGMAS`) and expressions, eye closure
and gaze (:data:`EXPRESSION_MODES`, per unit amount).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sepbn.data.synthetic.template import GROUPS, NUM_BASE, NUM_LANDMARKS, TEMPLATE


def _mode(points: Sequence[int] | np.ndarray, delta: np.ndarray) -> np.ndarray:
    """A ``(P_base, 3)`` displacement field that moves ``points`` by ``delta``."""
    field = np.zeros((NUM_BASE, 3))
    field[np.asarray(points, dtype=np.int64)] = delta
    return field


def _build_identity_modes() -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    """Person-to-person shape variation: named linear modes and their standard deviations."""
    t, g = TEMPLATE, GROUPS
    x, y, z = t[:, 0:1], t[:, 1:2], t[:, 2:3]
    ex, ey, ez = np.eye(3)
    every = np.arange(NUM_BASE)
    eyes = np.r_[36:48, g["iris_l"], g["iris_r"]]
    nose = np.r_[28:36, g["nostril_l"], g["nostril_r"]]
    nose_base = np.r_[30:36, g["nostril_l"], g["nostril_r"]]
    mouth = np.arange(48, 68)
    outer_lips = np.r_[49:54, 55:60]
    brows = np.r_[17:27, g["brow_lower_l"], g["brow_lower_r"]]
    lower = every[t[:, 1] > 0.9]
    upper = every[t[:, 1] < -0.3]
    eye_centre = np.where(t[:, :1] < 0, -0.72, 0.72) * ex + np.array([0.0, 0.0, 1.62])
    jaw_weight = np.array([0, 0, 0, 0.4, 0.8, 1.0, 0.8, 0.4, 0, 0.4, 0.8, 1.0, 0.8, 0.4, 0, 0, 0])
    modes = {
        # name: (field, sigma in template units per unit coefficient)
        "width": (x * ex, 0.05),
        "lower_face": (_mode(lower, (y[lower] - 0.9) * ey), 0.06),
        "upper_face": (_mode(upper, (y[upper] + 0.3) * ey), 0.05),
        "eye_spacing": (_mode(eyes, np.sign(x[eyes]) * ex), 0.04),
        "eye_size": (_mode(np.r_[36:48], (t[36:48] - eye_centre[36:48]) * (ex + ey)), 0.10),
        "nose_length": (_mode(nose, np.clip(y[nose] / 0.82, 0, 1) * ey), 0.07),
        "nose_width": (_mode(nose_base, x[nose_base] * ex), 0.15),
        "nose_depth": (_mode(nose, np.clip(z[nose] - 1.9, 0, None) * ez), 0.15),
        "mouth_width": (_mode(mouth, x[mouth] * ex), 0.08),
        "lip_thickness": (_mode(outer_lips, (y[outer_lips] - 1.52) * ey), 0.20),
        "brow_height": (_mode(brows, -ey), 0.05),
        "jaw_shape": (_mode(np.arange(17), x[:17] * jaw_weight[:, None] * ex), 0.06),
    }
    names = tuple(modes)
    return names, np.stack([m[0] for m in modes.values()]), np.array([m[1] for m in modes.values()])


def _build_expression_modes() -> dict[str, np.ndarray]:
    """Expression displacements per unit amount (mirror-symmetric, except gaze_x)."""
    t, g = TEMPLATE, GROUPS
    ex, ey, ez = np.eye(3)
    side = np.sign(t[:, 0:1])  # -1 image-left, +1 image-right
    brows = np.r_[17:27, g["brow_lower_l"], g["brow_lower_r"]]
    inner_brows = np.r_[20, 21, 22, 23, g["brow_lower_l"][:2], g["brow_lower_r"][:2]]
    chin = np.array([4, 5, 6, 7, 8, 9, 10, 11, 12])
    chin_drop = np.array([0.15, 0.45, 0.75, 0.95, 1.0, 0.95, 0.75, 0.45, 0.15])[:, None]
    lower_lip = np.r_[55:60, 65:68]
    corners = np.array([48, 54, 60, 64])
    near_corners = np.array([49, 53, 55, 59, 61, 63, 65, 67])
    upper_lids = np.array([37, 38, 43, 44])
    # each upper-lid point closes onto the lower-lid point below it
    lid_gap = t[[41, 40, 47, 46], 1:2] - t[upper_lids, 1:2]
    return {
        "mouth_open": _mode(chin, 0.30 * chin_drop * ey)
        + _mode(lower_lip, 0.35 * ey)
        + _mode(corners, 0.10 * ey)
        + _mode(np.r_[61:64], -0.03 * ey),
        "smile": _mode(corners, 0.10 * side[corners] * ex - 0.10 * ey - 0.05 * ez)
        + _mode(near_corners, 0.04 * side[near_corners] * ex - 0.04 * ey),
        "brow_raise": _mode(brows, -0.12 * ey),
        "frown": _mode(inner_brows, -0.06 * side[inner_brows] * ex + 0.08 * ey),
        "blink": _mode(upper_lids, lid_gap * ey),
        "gaze_x": _mode(np.r_[g["iris_l"], g["iris_r"]], ex),
        "gaze_y": _mode(np.r_[g["iris_l"], g["iris_r"]], ey),
    }


IDENTITY_NAMES, IDENTITY_MODES, IDENTITY_SIGMAS = _build_identity_modes()
EXPRESSION_MODES: dict[str, np.ndarray] = _build_expression_modes()
#: Template points that get small independent per-person jitter (landmarks and features).
JITTER_POINTS: np.ndarray = np.r_[
    0:NUM_LANDMARKS, GROUPS["forehead"], GROUPS["brow_lower_l"], GROUPS["brow_lower_r"]
]

"""Head pose and pinhole camera: the deformed template of a face projected into its image."""

from __future__ import annotations

import math

import numpy as np

from sepbn.data.synthetic.params import FaceParams
from sepbn.data.synthetic.template import DERIVED_MATRIX, DERIVED_OFFSET, NUM_LANDMARKS


def rotation_matrix(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """``(3, 3)`` head rotation ``R = R_roll @ R_pitch @ R_yaw`` from degrees.

    ``R_yaw`` turns about the vertical axis (positive moves the nose towards ``+X``),
    ``R_pitch`` about ``X`` (positive moves the nose up, towards ``-Y``), ``R_roll``
    about the optical axis.
    """
    y, p, r = math.radians(yaw), math.radians(pitch), math.radians(roll)
    cy, sy, cp, sp = math.cos(y), math.sin(y), math.cos(p), math.sin(p)
    cr, sr = math.cos(r), math.sin(r)
    r_yaw = np.array([[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]])
    r_pitch = np.array([[1.0, 0.0, 0.0], [0.0, cp, -sp], [0.0, sp, cp]])
    r_roll = np.array([[cr, -sr, 0.0], [sr, cr, 0.0], [0.0, 0.0, 1.0]])
    return r_roll @ r_pitch @ r_yaw


def project(params: FaceParams) -> tuple[np.ndarray, np.ndarray]:
    """Project the full point set of a face into the image.

    The projection is shifted so that the tight box of the 68 landmarks is centred on
    ``params.center``.

    Returns:
        ``points``, pixel coordinates, and ``depth``, the rotated ``Z`` (larger is
        nearer the camera).

    Shape:
        ``points``: ``(P_full, 2)``; ``depth``: ``(P_full,)``.
    """
    # the full set starts with the template points themselves; only the rest is derived
    derived = DERIVED_MATRIX @ params.shape + DERIVED_OFFSET  # (P_full - P_base, 3)
    full = np.concatenate([params.shape, derived])  # (P_full, 3)
    rotated = full @ rotation_matrix(params.yaw, params.pitch, params.roll).T
    d = params.camera_distance
    # pinhole camera looking at the head's centre from distance d
    xy = rotated[:, :2] * (params.scale * d / (d - rotated[:, 2:3]))
    lm = xy[:NUM_LANDMARKS]
    box_center = 0.5 * (lm.min(axis=0) + lm.max(axis=0))
    return xy + (np.asarray(params.center) - box_center), rotated[:, 2]

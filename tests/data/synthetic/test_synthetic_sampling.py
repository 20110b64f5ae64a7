"""Sampling: unbalanced pose sub-domains, and which way "left" turns the face."""

from __future__ import annotations

import numpy as np

from sepbn.data.synthetic import SyntheticFaceConfig, sample_face_params
from sepbn.data.synthetic.camera import project


def test_pose_sub_domains_are_unbalanced_as_configured() -> None:
    cfg = SyntheticFaceConfig()
    params = [sample_face_params(0, i, cfg) for i in range(1500)]
    domains = np.array([p.domain for p in params])
    yaws = np.array([p.yaw for p in params])
    fractions = np.bincount(domains, minlength=3) / len(domains)
    np.testing.assert_allclose(fractions, [0.70, 0.15, 0.15], atol=0.04)
    assert (np.abs(yaws[domains == 0]) < 20.0).all()
    assert ((yaws[domains == 1] <= -35.0) & (yaws[domains == 1] >= -75.0)).all()
    assert ((yaws[domains == 2] >= 35.0) & (yaws[domains == 2] <= 75.0)).all()
    # "left" means the nose tip points to the image's left: measured on the projected
    # landmarks, with the in-plane roll undone, against the ear-level contour points
    for p in params[:300]:
        a = np.deg2rad(-p.roll)
        upright = project(p)[0][:68] @ np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]])
        x = upright[:, 0]
        turn = (x[30] - 0.5 * (x[0] + x[16])) / abs(x[16] - x[0])
        assert {0: abs(turn) < 0.4, 1: turn < -0.45, 2: turn > 0.45}[p.domain], (p.yaw, turn)
    other = SyntheticFaceConfig(domain_probs=(0.4, 0.5, 0.1))
    d = np.array([sample_face_params(1, i, other).domain for i in range(1000)])
    np.testing.assert_allclose(np.bincount(d, minlength=3) / 1000, [0.4, 0.5, 0.1], atol=0.05)

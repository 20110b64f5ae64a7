"""SyntheticFaceConfig: range checks that name the offending field."""

from __future__ import annotations

import pytest

from sepbn.data.synthetic import SyntheticFaceConfig


def test_config_rejects_bad_values_naming_them() -> None:
    bad = {
        "image_size": 10,
        "domain_probs": (0.5, 0.5, 0.5),
        "frontal_yaw": 40.0,
        "profile_yaw": (60.0, 30.0),
        "pitch": -1.0,
        "face_size": (0.0, 0.5),
        "camera_distance": 2.0,
        "occlusion_prob": 1.5,
        "noise_std": -1.0,
    }
    for name, value in bad.items():
        with pytest.raises(ValueError, match=name):
            SyntheticFaceConfig(**{name: value})

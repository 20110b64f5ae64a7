"""Helpers shared by the synthetic-face tests: a neutral face and similarity alignment."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest

from sepbn.data.synthetic import SyntheticFaceConfig, render_face, sample_face_params

#: No identity, expression, occluders or noise: a mirror-symmetric face.
NEUTRAL = SyntheticFaceConfig(identity=0.0, expression=0.0, occlusion_prob=0.0, noise_std=0.0)


def neutral_frontal_landmarks(protocol: str = "300w") -> np.ndarray:
    """``(L, 2)`` landmarks of the neutral face, centred and looking straight at the camera."""
    middle = (NEUTRAL.image_size - 1) / 2
    p = sample_face_params(0, 0, NEUTRAL)
    p = replace(p, yaw=0.0, pitch=0.0, roll=0.0, center=(middle, middle))
    return render_face(p, NEUTRAL.image_size).landmarks(protocol)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """The least-squares similarity transform taking ``src`` (L, 2) onto ``dst`` (L, 2)."""
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    ca, cb = (src - src_mean) @ np.array([1, 1j]), (dst - dst_mean) @ np.array([1, 1j])
    z = (np.conj(ca) @ cb) / (np.conj(ca) @ ca)  # rotation and scale as one complex number

    def apply(points: np.ndarray) -> np.ndarray:
        r = z * ((points - src_mean) @ np.array([1, 1j]))
        return np.stack([r.real, r.imag], axis=-1) + dst_mean

    return apply


@pytest.fixture
def neutral() -> SyntheticFaceConfig:
    """The neutral sampling settings."""
    return NEUTRAL


@pytest.fixture
def neutral_frontal() -> Callable[[str], np.ndarray]:
    """``neutral_frontal(protocol)``: landmarks of the neutral frontal face."""
    return neutral_frontal_landmarks


@pytest.fixture
def similarity() -> Callable[..., Callable[[np.ndarray], np.ndarray]]:
    """``similarity(src, dst)``: the least-squares similarity transform from src onto dst."""
    return similarity_transform

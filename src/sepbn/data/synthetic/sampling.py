"""Every random choice of one synthetic face, drawn from its own seeded generator.

Face ``i`` of a seed is drawn from a generator seeded with ``(seed, i)``, so it is the
same whatever protocol, face count or start index is asked for. Poses come from
unbalanced sub-domains (most near-frontal, fewer left and right profiles, paper
Sec. III-A, Fig. 3); shapes from the template modes of :mod:`sepbn.data.synthetic.modes`.
"""

from __future__ import annotations

import numpy as np

from sepbn.data.synthetic.config import SyntheticFaceConfig
from sepbn.data.synthetic.modes import (
    EXPRESSION_MODES,
    IDENTITY_MODES,
    IDENTITY_SIGMAS,
    JITTER_POINTS,
)
from sepbn.data.synthetic.params import Clutter, FaceParams, Occluder
from sepbn.data.synthetic.template import FACE_WIDTH_UNITS, NUM_LANDMARKS, TEMPLATE

_SKIN_LIGHT = np.array([238.0, 205.0, 180.0])
_SKIN_DARK = np.array([92.0, 60.0, 42.0])
_HAIR = np.array(
    [[28, 22, 20], [62, 42, 30], [108, 72, 46], [192, 160, 112], [152, 150, 146], [140, 62, 32]],
    dtype=np.float64,
)  # black, dark brown, brown, blond, grey, red
_IRIS = np.array(
    [[96, 62, 36], [48, 34, 26], [78, 112, 150], [82, 108, 70], [122, 96, 56]], dtype=np.float64
)  # brown, dark, blue, green, hazel
_LIP_TINT = np.array([185.0, 78.0, 84.0])
_CLUTTER_KINDS = ("rect", "ellipse", "line")
_EXPRESSION_NAMES = tuple(EXPRESSION_MODES)
# Modes flattened to (modes, P_base * 3), so a shape is one matrix-vector product away.
_EXPRESSION_FLAT = np.stack([EXPRESSION_MODES[n].ravel() for n in _EXPRESSION_NAMES])
_IDENTITY_FLAT = IDENTITY_MODES.reshape(len(IDENTITY_MODES), -1)
_OCCLUDER_KINDS = ("rect", "ellipse", "hand")


def _triangular(rng: np.random.Generator, half_width: float) -> float:
    """A draw from the triangular distribution on ``(-half_width, half_width)``, mode 0."""
    return float(rng.triangular(-half_width, 0.0, half_width)) if half_width > 0 else 0.0


def _color(rng: np.random.Generator, base: np.ndarray, jitter: float) -> tuple[float, float, float]:
    """``base`` RGB plus Gaussian jitter, clipped to [0, 255]."""
    r, g, b = (base + rng.normal(0.0, jitter, 3)).tolist()
    return (min(max(r, 0.0), 255.0), min(max(g, 0.0), 255.0), min(max(b, 0.0), 255.0))


def sample_face_params(seed: int, index: int, config: SyntheticFaceConfig) -> FaceParams:
    """Draw every random choice of face ``index`` from a generator seeded with ``(seed, index)``.

    Raises:
        ValueError: If ``seed`` or ``index`` is negative.
    """
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be >= 0, got seed={seed}, index={index}")
    cfg, size = config, config.image_size
    rng = np.random.default_rng([seed, index])

    # Head pose, from one of three unbalanced sub-domains.
    u = rng.random()
    domain = 0 if u < cfg.domain_probs[0] else (1 if u < 1.0 - cfg.domain_probs[2] else 2)
    if domain == 0:
        yaw = _triangular(rng, cfg.frontal_yaw)
    else:
        yaw = float(rng.uniform(*cfg.profile_yaw)) * (-1.0 if domain == 1 else 1.0)
    pitch, roll = _triangular(rng, cfg.pitch), _triangular(rng, cfg.roll)
    scale = float(rng.uniform(*cfg.face_size)) * size / FACE_WIDTH_UNITS
    jitter = rng.uniform(-1.0, 1.0, 2) * cfg.center_jitter * size
    center = (float((size - 1) / 2 + jitter[0]), float((size - 1) / 2 + jitter[1]))

    # Shape: identity modes, per-point jitter, expression.
    coeffs = np.clip(rng.normal(size=len(IDENTITY_SIGMAS)), -2.5, 2.5) * IDENTITY_SIGMAS
    shape = TEMPLATE + ((coeffs * cfg.identity) @ _IDENTITY_FLAT).reshape(TEMPLATE.shape)
    shape[JITTER_POINTS] += rng.normal(0.0, 0.018 * cfg.identity, (len(JITTER_POINTS), 3))
    expr = {
        "mouth_open": float(rng.random() < 0.35) * rng.uniform(0.15, 1.0),
        "smile": float(rng.random() < 0.5) * rng.uniform(-0.3, 1.0),
        "brow_raise": rng.normal(0.0, 0.5),
        "frown": max(0.0, rng.normal(0.0, 0.4)),
        "blink": rng.uniform(0.6, 1.0) if rng.random() < 0.05 else rng.uniform(0.0, 0.3),
        "gaze_x": min(max(rng.normal(0.0, 0.03), -0.06), 0.06),
        "gaze_y": min(max(rng.normal(0.0, 0.02), -0.04), 0.04),
    }
    expr = {name: cfg.expression * amount for name, amount in expr.items()}
    amounts = np.array([expr[name] for name in _EXPRESSION_NAMES])
    shape += (amounts @ _EXPRESSION_FLAT).reshape(TEMPLATE.shape)

    # Appearance.
    skin_base = _SKIN_LIGHT + rng.random() * (_SKIN_DARK - _SKIN_LIGHT)
    skin = _color(rng, skin_base, 6.0)
    hair = _color(rng, _HAIR[rng.integers(len(_HAIR))], 8.0)
    brow = (hair[0] * 0.7, hair[1] * 0.7, hair[2] * 0.7)
    lips = _color(rng, (0.55 * np.asarray(skin) + 0.45 * _LIP_TINT) * rng.uniform(0.8, 1.0), 4.0)
    iris = _color(rng, _IRIS[rng.integers(len(_IRIS))], 6.0)
    eye_white = _color(rng, np.array([228.0, 224.0, 218.0]) * rng.uniform(0.85, 1.0), 3.0)
    clothing = _color(rng, rng.uniform(20.0, 235.0, 3), 0.0)
    hair_cut = float(rng.uniform(-0.5, 0.6))
    long_hair = bool(rng.random() < 0.3)
    background = rng.integers(0, 256, (2, 2, 3)).astype(np.uint8)
    clutter = tuple(
        Clutter(
            kind=_CLUTTER_KINDS[rng.integers(3)],
            center=(float(rng.uniform(0, size)), float(rng.uniform(0, size))),
            size=(float(rng.uniform(0.1, 0.5) * size), float(rng.uniform(0.02, 0.4) * size)),
            angle=float(rng.uniform(-90.0, 90.0)),
            color=_color(rng, rng.uniform(0.0, 255.0, 3), 0.0),
        )
        for _ in range(rng.integers(1, 5))
    )
    strength = cfg.light * rng.uniform(0.1, 0.9)
    azimuth = rng.uniform(0.0, 2.0 * np.pi)
    light = (
        float(rng.uniform(0.8, 1.1)),
        float(strength * np.cos(azimuth)),
        float(0.6 * strength * np.sin(azimuth)),
    )

    occluders: tuple[Occluder, ...] = ()
    if rng.random() < cfg.occlusion_prob:
        occluders = tuple(
            Occluder(
                kind=(kind := _OCCLUDER_KINDS[rng.integers(3)]),
                anchor=int(rng.integers(NUM_LANDMARKS)),
                offset=(float(rng.normal(0.0, 0.25)), float(rng.normal(0.0, 0.25))),
                size=(float(rng.uniform(0.6, 1.4)), float(rng.uniform(0.6, 1.4))),
                angle=float(rng.uniform(-90.0, 90.0)),
                color=_color(rng, skin_base if kind == "hand" else rng.uniform(0, 255, 3), 12.0),
                handedness=1.0 if rng.random() < 0.5 else -1.0,
            )
            for _ in range(1 + int(rng.random() < 0.25))
        )
    strong_blur = rng.random() < cfg.blur_prob
    blur_sigma = float(rng.uniform(1.4, 2.4) if strong_blur else rng.uniform(0.3, 0.9))
    noise_std = float(cfg.noise_std * rng.uniform(0.5, 1.5))
    noise_offset = (int(rng.integers(size)), int(rng.integers(size)))

    attributes = {
        "pose": domain != 0,
        "expression": bool(expr["mouth_open"] > 0.5 or expr["smile"] > 0.6 or expr["blink"] > 0.5),
        "illumination": bool(strength > 0.6),
        "occlusion": bool(occluders),
        "blur": bool(strong_blur),
    }
    return FaceParams(
        domain=domain,
        yaw=yaw,
        pitch=pitch,
        roll=roll,
        scale=scale,
        center=center,
        shape=shape,
        camera_distance=cfg.camera_distance,
        skin=skin,
        hair=hair,
        brow=brow,
        lips=lips,
        iris=iris,
        eye_white=eye_white,
        clothing=clothing,
        hair_cut=hair_cut,
        long_hair=long_hair,
        background=background,
        clutter=clutter,
        light=light,
        occluders=occluders,
        blur_sigma=blur_sigma,
        noise_std=noise_std,
        noise_offset=noise_offset,
        attributes=attributes,
    )

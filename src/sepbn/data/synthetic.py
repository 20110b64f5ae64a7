"""Synthetic faces with exactly known landmarks, for demos and tests without downloads.

A 3-D face template written in code (:mod:`sepbn.data.synthetic_template`) is deformed
by identity and expression modes, turned by a random head pose, projected, and drawn
with OpenCV from the same projected points (:mod:`sepbn.data.synthetic_render`), so
the landmarks are visible in the pixels. Poses form unbalanced sub-domains, most faces
near-frontal and fewer left and right profiles, the situation SepBN targets (paper
Sec. III-A, Fig. 3). The same face, pixel for pixel, can be annotated under every
protocol of the project (``"300w"``, ``"wflw"``, ``"cofw"``, ``"aflw"``, ``"wider5"``,
and ``"cofw_pupil"``), which is what cross-protocol training needs; each layout is a
fixed linear map of the projected template points, derived from real annotations
(see :data:`sepbn.data.synthetic_template.PROTOCOL_WEIGHTS`).

Face ``i`` of a seed is drawn from its own generator seeded with ``(seed, i)``, so it
is the same whatever protocol, ``num_faces`` or ``start_index`` is asked for: index
ranges give disjoint train and test sets, and two protocols can share faces.

Run ``python -m sepbn.data.synthetic`` to print the generator's speed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from sepbn.data.records import FaceRecord
from sepbn.data.synthetic_render import (
    FACE_WIDTH_UNITS,
    Clutter,
    FaceParams,
    Occluder,
    SyntheticFace,
    render_face,
)
from sepbn.data.synthetic_template import (
    EXPRESSION_MODES,
    IDENTITY_MODES,
    IDENTITY_SIGMAS,
    JITTER_POINTS,
    NUM_LANDMARKS,
    PROTOCOL_WEIGHTS,
    TEMPLATE,
)
from sepbn.data.visualize import write_png
from sepbn.errors import ConfigError

#: Protocols a synthetic face can be annotated with, sorted: ``"300w"`` (68 points),
#: ``"aflw"`` (19), ``"cofw"`` and ``"cofw_pupil"`` (29, the same points under two NME
#: normalizers), ``"wflw"`` (98) and ``"wider5"`` (5). Point order and flip pairs follow
#: :data:`sepbn.data.protocols.PROTOCOLS`; the layouts are documented at
#: :data:`sepbn.data.synthetic_template.PROTOCOL_WEIGHTS`.
SYNTHETIC_PROTOCOLS: tuple[str, ...] = tuple(sorted(PROTOCOL_WEIGHTS))
#: Pose sub-domain labels (``FaceRecord.domain``).
DOMAIN_NAMES: tuple[str, ...] = ("frontal", "left", "right")

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


@dataclass(frozen=True)
class SyntheticFaceConfig:
    """How synthetic faces are sampled. Angles are in degrees.

    Attributes:
        image_size: Side of the square images, pixels.
        domain_probs: Probabilities of the pose sub-domains (frontal, left profile,
            right profile); left means ``yaw < 0``, the nose pointing to the image's left.
        frontal_yaw: Near-frontal yaw lies in ``(-frontal_yaw, frontal_yaw)``
            (triangular, peaked at 0).
        profile_yaw: ``|yaw|`` range of the profiles (uniform).
        pitch: Pitch lies in ``(-pitch, pitch)`` (triangular); positive looks up.
        roll: Roll lies in ``(-roll, roll)`` (triangular).
        face_size: Range of the frontal face width (jaw contour) as a fraction of
            ``image_size``.
        center_jitter: Maximum shift of the landmark box centre from the image centre,
            as a fraction of ``image_size``.
        camera_distance: Camera to head distance in template units (half the outer
            inter-ocular distance); smaller means stronger perspective.
        identity: Scale of person-to-person shape variation (0 = the mean face).
        expression: Scale of expressions, eye closure and gaze (0 = neutral).
        occlusion_prob: Probability that a face has occluders in front of it.
        blur_prob: Probability of a strong blur (``attributes["blur"]``).
        noise_std: Typical pixel noise standard deviation, grey levels.
        light: Scale of the directional light gradient (0 = flat lighting).
    """

    image_size: int = 160
    domain_probs: tuple[float, float, float] = (0.70, 0.15, 0.15)
    frontal_yaw: float = 20.0
    profile_yaw: tuple[float, float] = (35.0, 75.0)
    pitch: float = 15.0
    roll: float = 20.0
    face_size: tuple[float, float] = (0.45, 0.6)
    center_jitter: float = 0.05
    camera_distance: float = 20.0
    identity: float = 1.0
    expression: float = 1.0
    occlusion_prob: float = 0.2
    blur_prob: float = 0.1
    noise_std: float = 4.0
    light: float = 1.0

    def __post_init__(self) -> None:
        if int(self.image_size) != self.image_size or self.image_size < 32:
            raise ValueError(f"image_size must be an integer >= 32, got {self.image_size!r}")
        probs = np.asarray(self.domain_probs, dtype=np.float64)
        if probs.shape != (3,) or (probs < 0).any() or abs(probs.sum() - 1.0) > 1e-6:
            raise ValueError(
                "domain_probs must be 3 non-negative probabilities (frontal, left, right) "
                f"summing to 1, got {self.domain_probs!r}"
            )
        lo, hi = self.profile_yaw
        if not 0.0 <= lo <= hi <= 90.0:
            raise ValueError(
                f"profile_yaw must satisfy 0 <= lo <= hi <= 90, got {self.profile_yaw!r}"
            )
        if not 0.0 <= self.frontal_yaw <= lo:
            raise ValueError(
                f"frontal_yaw must lie in [0, profile_yaw[0]={lo}] so the pose sub-domains "
                f"do not overlap, got {self.frontal_yaw!r}"
            )
        for name in ("pitch", "roll"):
            value = getattr(self, name)
            if not 0.0 <= value <= 60.0:
                raise ValueError(f"{name} must lie in [0, 60] degrees, got {value!r}")
        smallest, largest = self.face_size
        if not 0.0 < smallest <= largest <= 1.5:
            raise ValueError(f"face_size must satisfy 0 < lo <= hi <= 1.5, got {self.face_size!r}")
        if self.camera_distance <= 4.0:
            raise ValueError(
                f"camera_distance must exceed 4 template units (the head's depth), "
                f"got {self.camera_distance!r}"
            )
        for name in ("center_jitter", "identity", "expression", "noise_std", "light"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("occlusion_prob", "blur_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)!r}")


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


def generate_face(
    seed: int, index: int, config: SyntheticFaceConfig | None = None
) -> SyntheticFace:
    """Sample and render face ``index`` of ``seed``."""
    cfg = config if config is not None else SyntheticFaceConfig()
    return render_face(sample_face_params(seed, index, cfg), cfg.image_size)


def _check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOL_WEIGHTS:
        raise ConfigError(
            f"synthetic faces have no {protocol!r} layout; valid: {list(SYNTHETIC_PROTOCOLS)}"
        )


def make_synthetic_records(
    num_faces: int,
    protocol: str = "300w",
    seed: int = 0,
    config: SyntheticFaceConfig | None = None,
    start_index: int = 0,
) -> list[FaceRecord]:
    """Generate annotated synthetic faces as in-memory records.

    Args:
        num_faces: How many faces.
        protocol: Landmark layout, one of :data:`SYNTHETIC_PROTOCOLS`.
        seed: Dataset seed (>= 0).
        config: Sampling settings; the defaults of :class:`SyntheticFaceConfig` if None.
        start_index: Index of the first face; face ``i`` is the same for a given seed
            and config whatever ``num_faces``, ``start_index`` or ``protocol``.

    Returns:
        Records with ``image`` ``(S, S, 3)`` uint8 RGB, ``image_path=None``, landmarks in
        0-based pixels, ``box`` the tight box of the 68 projected points (the same under
        every protocol; it is also the ``"aflw"`` NME normalizer), ``valid`` all True,
        ``occluded`` True under an occluder, ``domain`` 0 frontal / 1 left (nose to the
        image's left) / 2 right, WFLW-style ``attributes`` and ``source``
        ``"synthetic[seed=..., i=...]"``.

    Raises:
        ValueError: On an unknown protocol or a negative count, seed or index.
    """
    _check_protocol(protocol)
    if num_faces < 0 or start_index < 0 or seed < 0:
        raise ConfigError(
            "num_faces, start_index and seed must be >= 0, got "
            f"num_faces={num_faces}, start_index={start_index}, seed={seed}"
        )
    cfg = config if config is not None else SyntheticFaceConfig()
    return [
        generate_face(seed, i, cfg).to_record(protocol, f"synthetic[seed={seed}, i={i}]")
        for i in range(start_index, start_index + num_faces)
    ]


def save_synthetic_preview(
    path: str | Path,
    num: int = 16,
    seed: int = 0,
    protocol: str = "300w",
    config: SyntheticFaceConfig | None = None,
) -> Path:
    """Save a PNG grid of generated faces with their landmarks drawn on top.

    Landmark colours: green, or red where an occluder covers the point. Each tile is
    labelled with its index and pose sub-domain.

    Returns:
        The written path.
    """
    _check_protocol(protocol)
    if num < 1:
        raise ValueError(f"num must be >= 1, got {num}")
    cfg = config if config is not None else SyntheticFaceConfig()
    size = cfg.image_size
    cols = int(np.ceil(np.sqrt(num)))
    rows = int(np.ceil(num / cols))
    title_h = 24
    canvas = np.full((title_h + rows * size, cols * size, 3), 255, dtype=np.uint8)
    title = f"synthetic faces, seed={seed}, protocol={protocol}, {size}px"
    cv2.putText(canvas, title, (6, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    for k, record in enumerate(make_synthetic_records(num, protocol, seed, cfg)):
        tile = np.ascontiguousarray(record.image)
        for (x, y), occ in zip(record.landmarks, record.occluded):
            color = (255, 0, 0) if occ else (0, 255, 0)
            center = (round(x * 16), round(y * 16))
            cv2.circle(tile, center, 16, color, -1, cv2.LINE_AA, 4)
        label = f"{k} {DOMAIN_NAMES[record.domain]}"
        for color, thickness in (((0, 0, 0), 3), ((255, 255, 255), 1)):  # outlined text
            cv2.putText(tile, label, (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, color, thickness)
        r, c = divmod(k, cols)
        canvas[title_h + r * size : title_h + (r + 1) * size, c * size : (c + 1) * size] = tile
    return write_png(path, canvas)


def benchmark_generator(
    num_faces: int = 500, config: SyntheticFaceConfig | None = None
) -> dict[str, float]:
    """Time the generator against decoding same-sized JPEGs, side by side in one run.

    Generation and decoding alternate in chunks of 50, so both see the same machine load.

    Returns:
        ``images_per_s`` (wall clock), ``cpu_images_per_s`` (process CPU time, less
        sensitive to other processes), ``jpeg_decodes_per_s`` and ``ratio``, generation
        speed over JPEG-decoding speed (the reference a real-data loader has to beat).
    """
    if num_faces < 1:
        raise ValueError(f"num_faces must be >= 1, got {num_faces}")
    cfg = config if config is not None else SyntheticFaceConfig()
    warm = make_synthetic_records(50, "300w", seed=1, config=cfg)  # noise texture, caches
    blobs = [cv2.imencode(".jpg", r.image)[1] for r in warm]
    gen_s = gen_cpu = dec_s = 0.0
    for start in range(0, num_faces, 50):
        n = min(50, num_faces - start)
        t0, c0 = time.perf_counter(), time.process_time()
        make_synthetic_records(n, "300w", seed=0, config=cfg, start_index=start)
        t1, c1 = time.perf_counter(), time.process_time()
        for blob in blobs[:n]:
            cv2.imdecode(blob, cv2.IMREAD_COLOR)
        dec_s += time.perf_counter() - t1
        gen_s, gen_cpu = gen_s + (t1 - t0), gen_cpu + (c1 - c0)
    return {
        "images_per_s": num_faces / gen_s,
        "cpu_images_per_s": num_faces / gen_cpu,
        "jpeg_decodes_per_s": num_faces / dec_s,
        "ratio": dec_s / gen_s,
    }


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=1000, help="faces to time")
    parser.add_argument("--preview", type=Path, help="also save a preview grid PNG here")
    args = parser.parse_args()
    result = benchmark_generator(args.num)
    print(
        f"synthetic faces at 160 px, one process: {result['images_per_s']:.0f} images/s "
        f"({result['cpu_images_per_s']:.0f} per CPU-second); decoding the same images as "
        f"JPEG: {result['jpeg_decodes_per_s']:.0f}/s; generation / decoding speed "
        f"ratio {result['ratio']:.2f}"
    )
    if args.preview is not None:
        print(f"preview written to {save_synthetic_preview(args.preview)}")

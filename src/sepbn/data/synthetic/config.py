"""How synthetic faces are sampled: :class:`SyntheticFaceConfig` and the pose sub-domains."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Pose sub-domain labels (``FaceRecord.domain``), in the order of
#: :attr:`SyntheticFaceConfig.domain_probs`.
DOMAIN_NAMES: tuple[str, ...] = ("frontal", "left", "right")


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

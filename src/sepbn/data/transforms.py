"""Face crop and augmentation composed into one affine warp (paper Sec. V-A).

A training sample is made by cropping the face box, squaring it, resizing it to the
network input and applying random rotation, box-corner perturbation, shear and a
horizontal flip. All of these are affine, so they are composed into a single ``2 x 3``
matrix per sample: the image is warped once with ``cv2.warpAffine`` and the landmarks
are mapped with the same matrix. The matrix is kept so that predictions made on the
crop map back to the original image exactly.

Pixel convention (the one ``cv2.warpAffine`` assumes): 0-based coordinates with the
centre of pixel ``(i, j)`` at ``x = j, y = i``. An image of width ``W`` therefore
covers ``[-0.5, W - 0.5]`` and its centre is ``(W - 1) / 2``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, overload

import cv2
import numpy as np
import torch

from sepbn.data.protocols import LandmarkProtocol, get_protocol

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)
BorderMode = Literal["constant", "replicate"]

# The tight landmark box puts the jaw contour exactly on the crop border. Enlarging the
# square by 1.25 keeps every point inside with a margin of 10% of the crop per side, as
# HRNet-Facial's x1.25 crops for WFLW / 300-W do.
DEFAULT_BOX_SCALE = 1.25

_BORDERS = {"constant": cv2.BORDER_CONSTANT, "replicate": cv2.BORDER_REPLICATE}


@dataclass(frozen=True)
class AugmentConfig:
    """Random augmentation ranges. Geometric defaults are the paper's (Sec. V-A).

    Attributes:
        rotation: Maximum rotation in degrees; the angle is uniform in
            ``[-rotation, rotation]`` (paper: 25).
        box_jitter: Each box corner moves independently by up to this fraction of the
            box width (x) and height (y) (paper: "within 15% of the bounding box size").
        shear: Maximum horizontal shear factor, uniform in ``[-shear, shear]``. The paper
            applies shear without giving a range; 0.1 (about 5.7 degrees) is a mild one.
        flip_prob: Probability of a horizontal flip with the protocol's permutation.
        brightness: Additive brightness shift, uniform in ``[-brightness, brightness]``
            times 255. Photometric augmentation is off by default, as in the paper.
        contrast: Contrast gain, uniform in ``[1 - contrast, 1 + contrast]``.
        grayscale_prob: Probability of converting the crop to gray (kept 3-channel).
        blur_prob: Probability of a Gaussian blur.
        blur_sigma: Range of the blur's standard deviation in output pixels.
        occlusion_prob: Probability of pasting one random solid-colour rectangle.
        occlusion_size: Range of the rectangle's sides as fractions of the output size.
    """

    rotation: float = 25.0
    box_jitter: float = 0.15
    shear: float = 0.1
    flip_prob: float = 0.5
    brightness: float = 0.0
    contrast: float = 0.0
    grayscale_prob: float = 0.0
    blur_prob: float = 0.0
    blur_sigma: tuple[float, float] = (0.5, 1.5)
    occlusion_prob: float = 0.0
    occlusion_size: tuple[float, float] = (0.15, 0.4)

    def __post_init__(self) -> None:
        checks = {
            "rotation": (self.rotation, 0.0, 90.0),
            "box_jitter": (self.box_jitter, 0.0, 0.45),
            "shear": (self.shear, 0.0, 1.0),
            "flip_prob": (self.flip_prob, 0.0, 1.0),
            "brightness": (self.brightness, 0.0, 1.0),
            "contrast": (self.contrast, 0.0, 1.0),
            "grayscale_prob": (self.grayscale_prob, 0.0, 1.0),
            "blur_prob": (self.blur_prob, 0.0, 1.0),
            "occlusion_prob": (self.occlusion_prob, 0.0, 1.0),
        }
        for name, (value, lo, hi) in checks.items():
            if not lo <= float(value) <= hi:
                raise ValueError(f"AugmentConfig.{name} must be in [{lo}, {hi}], got {value!r}")
        for name, (lo, hi), top in (
            ("blur_sigma", self.blur_sigma, math.inf),
            ("occlusion_size", self.occlusion_size, 1.0),
        ):
            if not 0.0 < lo <= hi <= top:
                raise ValueError(
                    f"AugmentConfig.{name} must be (low, high) with 0 < low <= high <= {top}, "
                    f"got {(lo, hi)!r}"
                )

    @property
    def photometric(self) -> bool:
        """Whether any photometric augmentation is enabled."""
        return bool(
            self.brightness
            or self.contrast
            or self.grayscale_prob
            or self.blur_prob
            or self.occlusion_prob
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AugmentConfig:
        """Build from a config mapping, rejecting unknown keys with the valid ones."""
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown augment option(s) {sorted(unknown)}; valid: {sorted(known)}")
        kw: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**kw)


def required_margin(augment: AugmentConfig | None, box_scale: float = DEFAULT_BOX_SCALE) -> float:
    """Side of the smallest centred square that holds every augmented crop window.

    In units of the base square side ``s0 = max(box width, box height)``. Worst case of
    the sampling in :meth:`FaceCropTransform.sample_matrix`: the jittered box grows to
    at most ``(1 + 2j) s0`` and its centre moves by at most ``j s0`` (``j`` = box
    jitter); the crop window of side ``s = (1 + 2j) s0 box_scale`` is rotated by up to
    ``theta`` (its half-extent grows by ``|cos| + |sin|``) and sheared by up to ``sh``
    (the x half-extent grows by ``1 + sh``). So::

        margin = 2 j + (1 + 2 j) box_scale (cos theta + sin theta) (1 + sh)

    which is 2.68 for the defaults (``j = 0.15``, 25 degrees, ``sh = 0.1``,
    ``box_scale = 1.25``), and just ``box_scale`` without augmentation.
    """
    if augment is None:
        return float(box_scale)
    j = augment.box_jitter
    theta = math.radians(min(augment.rotation, 45.0))
    spread = (math.cos(theta) + math.sin(theta)) * (1.0 + augment.shear)
    return 2.0 * j + (1.0 + 2.0 * j) * box_scale * spread


def compose_affine(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """The affine map ``outer(inner(p))`` of two ``(2, 3)`` (or batched ``(N, 2, 3)``) maps."""
    outer = np.asarray(outer, dtype=np.float64)
    inner = np.asarray(inner, dtype=np.float64)
    linear = outer[..., :2] @ inner[..., :2]
    shift = (outer[..., :2] @ inner[..., 2:]) + outer[..., 2:]
    return np.concatenate([linear, shift], axis=-1)


def invert_affine(matrix: ArrayT) -> ArrayT:
    """Inverse of an affine map given as ``[A | t]``: ``[A^-1 | -A^-1 t]``.

    Args:
        matrix: ``(2, 3)`` or ``(N, 2, 3)``, numpy or torch.

    Returns:
        Same shape and type as ``matrix``.

    Shape:
        - matrix: ``(..., 2, 3)``
        - output: ``(..., 2, 3)``
    """
    a, b = matrix[..., 0, 0], matrix[..., 0, 1]
    c, d = matrix[..., 1, 0], matrix[..., 1, 1]
    tx, ty = matrix[..., 0, 2], matrix[..., 1, 2]
    det = a * d - b * c
    ia, ib, ic, id_ = d / det, -b / det, -c / det, a / det
    rows = [
        [ia, ib, -(ia * tx + ib * ty)],
        [ic, id_, -(ic * tx + id_ * ty)],
    ]
    if isinstance(matrix, torch.Tensor):
        return torch.stack([torch.stack(r, dim=-1) for r in rows], dim=-2)
    return np.stack([np.stack(r, axis=-1) for r in rows], axis=-2)


def apply_affine(matrix: ArrayT, points: ArrayT) -> ArrayT:
    """Map points with one affine matrix, or each face's points with its own matrix.

    Args:
        matrix: ``(2, 3)`` for all points, or ``(N, 2, 3)`` one per face.
        points: ``(..., L, 2)`` x, y coordinates; with a batched matrix ``(N, L, 2)``.

    Returns:
        The mapped points, same shape as ``points``. Torch inputs give torch output in
        the points' dtype and device.

    Shape:
        - matrix: ``(2, 3)`` or ``(N, 2, 3)``
        - points: ``(..., L, 2)`` or ``(N, L, 2)``
        - output: same as ``points``
    """
    if isinstance(points, torch.Tensor):
        m = torch.as_tensor(matrix, dtype=points.dtype, device=points.device)
        return points @ m[..., :2].transpose(-1, -2) + m[..., None, :, 2]
    m = np.asarray(matrix, dtype=np.float64)
    pts = np.asarray(points, dtype=np.float64)
    return pts @ np.swapaxes(m[..., :2], -1, -2) + m[..., None, :, 2]


def is_mirrored(matrix: np.ndarray) -> bool | np.ndarray:
    """True where the affine map contains a reflection (negative determinant).

    Rotation, shear and positive scaling keep the determinant positive, so a crop matrix
    is mirrored exactly when its sample was horizontally flipped.
    """
    m = np.asarray(matrix, dtype=np.float64)
    det = m[..., 0, 0] * m[..., 1, 1] - m[..., 0, 1] * m[..., 1, 0]
    return bool(det < 0) if det.ndim == 0 else det < 0


def crop_matrix(
    box: np.ndarray,
    output_size: int,
    box_scale: float = DEFAULT_BOX_SCALE,
    angle: float = 0.0,
    shear: float = 0.0,
    flip: bool = False,
    corner_offsets: np.ndarray | None = None,
) -> np.ndarray:
    """The original -> crop affine matrix for explicit augmentation parameters.

    The (jittered) box is squared around its centre with side ``max(w, h) * box_scale``;
    that square is mapped onto the ``output_size`` crop after shearing and rotating
    about the box centre, then optionally mirrored.

    Args:
        box: ``x_min, y_min, x_max, y_max`` in original pixels.
        output_size: S, the crop side in pixels.
        box_scale: Enlargement of the square box around its centre.
        angle: Rotation in degrees (positive turns the face clockwise on screen).
        shear: Horizontal shear factor applied before the rotation.
        flip: Mirror the crop horizontally (``x -> S - 1 - x``).
        corner_offsets: ``(4,)`` offsets of ``x_min, y_min, x_max, y_max`` as fractions
            of the box width / height (the box-corner perturbation).

    Returns:
        ``(2, 3)`` float64.
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    w, h = x1 - x0, y1 - y0
    if not (w > 0 and h > 0):
        raise ValueError(f"face box must have positive width and height, got {list(box)}")
    if corner_offsets is not None:
        dx0, dy0, dx1, dy1 = (float(v) for v in corner_offsets)
        x0, x1 = x0 + dx0 * w, x1 + dx1 * w
        y0, y1 = y0 + dy0 * h, y1 + dy1 * h
    cx, cy = 0.5 * (x0 + x1), 0.5 * (y0 + y1)
    side = max(x1 - x0, y1 - y0) * box_scale
    k = output_size / side
    rad = math.radians(angle)
    cos, sin = math.cos(rad), math.sin(rad)
    # A = k * R(angle) @ [[1, shear], [0, 1]]
    a00, a01 = k * cos, k * (cos * shear - sin)
    a10, a11 = k * sin, k * (sin * shear + cos)
    centre = 0.5 * (output_size - 1)
    tx = centre - (a00 * cx + a01 * cy)
    ty = centre - (a10 * cx + a11 * cy)
    if flip:
        # x -> (S - 1) - x, the same mirror as LandmarkProtocol.flip(points, width=S).
        a00, a01, tx = -a00, -a01, (output_size - 1) - tx
    return np.array([[a00, a01, tx], [a10, a11, ty]], dtype=np.float64)


class FaceCropTransform:
    """Crop a face by its box, resize to ``S x S`` and optionally augment, in one warp.

    Args:
        protocol: The landmark protocol (its flip permutation is used by the flip).
        output_size: S, the network input side (paper: 128).
        box_scale: Enlargement of the square box around its centre; see
            :data:`DEFAULT_BOX_SCALE` for why 1.25.
        augment: Random augmentation ranges, or ``None`` for the deterministic
            evaluation crop.
        border: ``"constant"`` (black) or ``"replicate"`` outside the image.
    """

    def __init__(
        self,
        protocol: LandmarkProtocol | str,
        output_size: int = 128,
        box_scale: float = DEFAULT_BOX_SCALE,
        augment: AugmentConfig | None = None,
        border: BorderMode = "constant",
    ) -> None:
        self.protocol = get_protocol(protocol) if isinstance(protocol, str) else protocol
        if int(output_size) < 8:
            raise ValueError(f"output_size must be >= 8 pixels, got {output_size!r}")
        if not float(box_scale) > 0:
            raise ValueError(f"box_scale must be positive, got {box_scale!r}")
        if border not in _BORDERS:
            raise ValueError(f"border must be one of {sorted(_BORDERS)}, got {border!r}")
        self.output_size = int(output_size)
        self.box_scale = float(box_scale)
        self.augment = augment
        self.border = border
        self._flip_perm = np.asarray(self.protocol.flip_perm, dtype=np.int64)
        self._identity = np.arange(self.protocol.num_points)

    def __repr__(self) -> str:
        return (
            f"FaceCropTransform(protocol={self.protocol.name!r}, output_size={self.output_size}, "
            f"box_scale={self.box_scale}, augment={self.augment}, border={self.border!r})"
        )

    def sample_matrix(self, box: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """Draw the original -> crop matrix for one sample (deterministic without augment).

        Raises:
            ValueError: Augmentation is enabled and ``rng`` is None.
        """
        aug = self.augment
        if aug is None:
            return crop_matrix(box, self.output_size, self.box_scale)
        # One draw per parameter keeps a sample's stream short and fixed.
        u = _augment_rng(rng).random(7)
        offsets = (2.0 * u[:4] - 1.0) * aug.box_jitter
        return crop_matrix(
            box,
            self.output_size,
            self.box_scale,
            angle=(2.0 * u[4] - 1.0) * aug.rotation,
            shear=(2.0 * u[5] - 1.0) * aug.shear,
            flip=bool(u[6] < aug.flip_prob),
            corner_offsets=offsets,
        )

    def point_order(self, matrix: np.ndarray) -> np.ndarray:
        """Index array giving, for each crop landmark, the original landmark it came from.

        The identity, or the protocol's ``flip_perm`` when ``matrix`` is mirrored, so that
        ``crop_landmarks = apply_affine(matrix, landmarks)[order]`` keeps semantic order.
        """
        return self._flip_perm if is_mirrored(matrix) else self._identity

    @overload
    def __call__(
        self,
        image: np.ndarray,
        landmarks: np.ndarray,
        box: np.ndarray,
        valid: np.ndarray | None = None,
        rng: np.random.Generator | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...

    @overload
    def __call__(
        self,
        image: np.ndarray,
        landmarks: None,
        box: np.ndarray,
        valid: np.ndarray | None = None,
        rng: np.random.Generator | None = None,
    ) -> tuple[np.ndarray, None, np.ndarray]: ...

    def __call__(
        self,
        image: np.ndarray,
        landmarks: np.ndarray | None,
        box: np.ndarray,
        valid: np.ndarray | None = None,
        rng: np.random.Generator | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """Warp one face.

        Args:
            image: ``(H, W, 3)`` uint8 RGB.
            landmarks: ``(L, 2)`` in image pixels, or None (inference).
            box: ``x_min, y_min, x_max, y_max`` in image pixels.
            valid: ``(L,)`` bool; invalid points come out as ``(0, 0)``.
            rng: Random generator; required when augmentation is enabled.

        Returns:
            ``(crop, crop_landmarks, matrix)``: the ``(S, S, 3)`` uint8 crop, the
            ``(L, 2)`` float64 landmarks in crop pixels in semantic order (after a flip
            they are permuted with ``flip_perm``, see :meth:`point_order`), and the
            ``(2, 3)`` float64 original -> crop matrix (it includes the mirror).

        Shape:
            - image: ``(H, W, 3)``
            - landmarks: ``(L, 2)``
            - output: ``(S, S, 3)``, ``(L, 2)``, ``(2, 3)``
        """
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
        matrix = self.sample_matrix(box, rng)
        size = self.output_size
        crop = cv2.warpAffine(
            image,
            matrix,
            (size, size),
            flags=cv2.INTER_LINEAR,
            borderMode=_BORDERS[self.border],
            borderValue=(0, 0, 0),
        )
        if self.augment is not None and self.augment.photometric:
            crop = photometric_augment(crop, self.augment, _augment_rng(rng))
        if landmarks is None:
            return crop, None, matrix
        pts = np.asarray(landmarks, dtype=np.float64)
        if pts.shape != (self.protocol.num_points, 2):
            raise ValueError(
                f"landmarks must be ({self.protocol.num_points}, 2) for protocol "
                f"{self.protocol.name!r}, got {pts.shape}"
            )
        order = self.point_order(matrix)
        out = apply_affine(matrix, pts)[order]
        if valid is not None:
            out[~np.asarray(valid, dtype=bool)[order]] = 0.0
        return crop, out, matrix


def _augment_rng(rng: np.random.Generator | None) -> np.random.Generator:
    if rng is None:
        raise ValueError("FaceCropTransform with augment needs an rng (np.random.Generator)")
    return rng


def photometric_augment(
    crop: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator
) -> np.ndarray:
    """Brightness/contrast, grayscale, blur and an occluding patch on an ``(S, S, 3)`` crop.

    Each is applied with its own probability, in that order; the draws come after the
    geometric ones so enabling photometric augmentation does not change the geometry.
    """
    u = rng.random(3)
    if cfg.brightness or cfg.contrast:
        gain = 1.0 + (2.0 * rng.random() - 1.0) * cfg.contrast
        shift = (2.0 * rng.random() - 1.0) * cfg.brightness * 255.0
        # A 256-entry lookup table is much faster than float arithmetic on the pixels.
        lut = np.clip(np.arange(256) * gain + shift, 0, 255).round().astype(np.uint8)
        crop = cv2.LUT(crop, lut)
    if u[0] < cfg.grayscale_prob:
        crop = cv2.cvtColor(cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
    if u[1] < cfg.blur_prob:
        sigma = rng.uniform(*cfg.blur_sigma)
        crop = cv2.GaussianBlur(crop, (0, 0), sigmaX=sigma)
    if u[2] < cfg.occlusion_prob:
        size = crop.shape[0]
        pw, ph = (rng.uniform(*cfg.occlusion_size, size=2) * size).astype(int).clip(1, size)
        x, y = rng.integers(0, size - pw + 1), rng.integers(0, size - ph + 1)
        crop = crop.copy() if not crop.flags.writeable else crop
        crop[y : y + ph, x : x + pw] = rng.integers(0, 256, size=3, dtype=np.uint8)
    return crop

"""Drawing one synthetic face with OpenCV from its sampled parameters.

The template of :mod:`sepbn.data.synthetic.template` is deformed, rotated by the head
pose, projected with a pinhole camera (:mod:`sepbn.data.synthetic.camera`), and every
part of the face is drawn from those projected points: the landmarks of any protocol
are a fixed linear map of the same array, so they sit on the drawn features by
construction. All drawing uses anti-aliased primitives with ``_SHIFT`` fractional bits,
and pixel centres lie on integer coordinates (the 0-based convention of
:class:`~sepbn.data.records.FaceRecord`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import cv2
import numpy as np

from sepbn.data.synthetic.camera import project
from sepbn.data.synthetic.face import SyntheticFace
from sepbn.data.synthetic.params import Clutter, Color, FaceParams, Occluder
from sepbn.data.synthetic.template import (
    FACE_WIDTH_UNITS,
    FULL_GROUPS,
    GROUPS,
    LID_STEPS,
    NUM_LANDMARKS,
    TEMPLATE,
    eye_polygon,
)

_SHIFT = 4  # fractional bits of every coordinate handed to OpenCV
_ONE = 1 << _SHIFT
_AA = cv2.LINE_AA
_FAR_EAR_DEPTH = -0.8  # an ear further back than this is hidden behind the hair
_NOISE_SEED = 0x5EB  # the fixed noise texture; faces differ by where they cut it

# Index arrays into the full point set, built once.
_EYE = {side: eye_polygon(side) for side in ("l", "r")}
_IRIS_RIM = {side: FULL_GROUPS[f"iris_rim_{side}"] for side in ("l", "r")}
_PUPIL_RIM = {side: FULL_GROUPS[f"pupil_rim_{side}"] for side in ("l", "r")}
_BROW = {
    "l": np.r_[17:22, GROUPS["brow_lower_l"]],
    "r": np.r_[22:27, GROUPS["brow_lower_r"][::-1]],
}
_NOSE = np.r_[27:36, GROUPS["nostril_l"], GROUPS["nostril_r"]]
_UPPER_LIP = np.r_[48:55, 64, 63, 62, 61, 60]
_LOWER_LIP = np.r_[54:60, 48, 60, 67, 66, 65, 64]
_LIP_LINE = np.r_[48, 60:65, 54]
_FACE = np.r_[0:NUM_LANDMARKS, GROUPS["forehead"]]
_SHELL_Y = TEMPLATE[GROUPS["shell"], 1]


def _fixed(points: np.ndarray) -> np.ndarray:
    """Pixel coordinates to OpenCV's fixed point with ``_SHIFT`` fractional bits."""
    return np.rint(points * _ONE).astype(np.int32)


def _shade(color: Color, factor: float) -> Color:
    """``color`` darkened (``factor < 1``) or lightened, saturating at 255."""
    return (
        min(color[0] * factor, 255.0),
        min(color[1] * factor, 255.0),
        min(color[2] * factor, 255.0),
    )


def _fill_hull(img: np.ndarray, pts: np.ndarray, color: Color | float) -> None:
    """Fill the convex hull of fixed-point ``(n, 2)`` points."""
    cv2.fillConvexPoly(img, cv2.convexHull(pts), color, _AA, _SHIFT)


@functools.lru_cache(maxsize=4)
def _noise_texture(size: int) -> np.ndarray:
    """A fixed ``(2S, 2S, 3)`` uint8 texture of noise around 128 (std 32)."""
    rng = np.random.default_rng(_NOISE_SEED)
    tex = rng.normal(128.0, 32.0, (2 * size, 2 * size, 3))
    tex = np.clip(tex, 0, 255).astype(np.uint8)
    tex.setflags(write=False)
    return tex


def _point(x: float, y: float) -> tuple[int, int]:
    """One pixel position in fixed point."""
    return (round(x * _ONE), round(y * _ONE))


def _draw_clutter(img: np.ndarray, c: Clutter) -> None:
    """Draw one background shape."""
    if c.kind == "ellipse":
        axes = (round(c.size[0] * _ONE / 2), round(c.size[1] * _ONE / 2))
        cv2.ellipse(img, _point(*c.center), axes, c.angle, 0, 360, c.color, -1, _AA, _SHIFT)
    elif c.kind == "rect":
        corners = _fixed(_rotated_box(c.center, c.size, c.angle))
        cv2.fillConvexPoly(img, corners, c.color, _AA, _SHIFT)
    else:
        a = math.radians(c.angle)
        dx, dy = 0.5 * c.size[0] * math.cos(a), 0.5 * c.size[0] * math.sin(a)
        (x, y), thickness = c.center, max(1, int(c.size[1]))
        cv2.line(
            img, _point(x - dx, y - dy), _point(x + dx, y + dy), c.color, thickness, _AA, _SHIFT
        )


def _rotated_box(
    center: tuple[float, float] | np.ndarray, size: tuple[float, float], angle: float
) -> np.ndarray:
    """``(4, 2)`` corners, in order, of a ``size`` rectangle at ``center`` turned by ``angle``."""
    cos, sin = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    (cx, cy), hw, hh = center, 0.5 * size[0], 0.5 * size[1]
    return np.array(
        [
            [cx + cos * u - sin * v, cy + sin * u + cos * v]
            for u, v in ((-hw, -hh), (hw, -hh), (hw, hh), (-hw, hh))
        ]
    )


def _draw_occluder(
    img: np.ndarray, o: Occluder, points: np.ndarray, scale: float, color: Color | float
) -> None:
    """Draw ``o`` in ``color`` (called once on the image and once on the occluder mask)."""
    center = points[o.anchor] + scale * np.asarray(o.offset)
    w, h = scale * o.size[0], scale * o.size[1]
    if o.kind == "rect":
        cv2.fillConvexPoly(img, _fixed(_rotated_box(center, (w, h), o.angle)), color, _AA, _SHIFT)
        return
    axes = (int(0.5 * w * _ONE), int(0.5 * h * _ONE))
    if o.kind == "ellipse":
        cv2.ellipse(img, tuple(_fixed(center)), axes, o.angle, 0, 360, color, -1, _AA, _SHIFT)
        return
    # hand: a palm and five fingers, laid out in the hand's own (u, v) frame
    a = np.deg2rad(o.angle)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    palm_axes = (int(0.36 * w * _ONE), int(0.42 * h * _ONE))
    cv2.ellipse(img, tuple(_fixed(center)), palm_axes, o.angle, 0, 360, color, -1, _AA, _SHIFT)
    u = np.array([-0.27, -0.09, 0.09, 0.27, 0.30])
    u_tip = np.array([-0.30, -0.10, 0.10, 0.30, 0.64])
    v = np.array([-0.30, -0.30, -0.30, -0.30, 0.05])
    v_tip = np.array([-0.78, -0.88, -0.86, -0.74, -0.22])
    bases = np.stack([o.handedness * u * w, v * h], axis=1) @ rot.T + center
    tips = np.stack([o.handedness * u_tip * w, v_tip * h], axis=1) @ rot.T + center
    thickness = max(1, round(0.16 * w))
    for p, q in zip(_fixed(bases), _fixed(tips)):
        cv2.line(img, tuple(p), tuple(q), color, thickness, _AA, _SHIFT)


def _draw_eye(img: np.ndarray, p: FaceParams, fx: np.ndarray, side: str) -> None:
    """Eye white, iris and pupil clipped to the lid contour, then the lash line."""
    poly = fx[_EYE[side]]
    lo = np.maximum(poly.min(axis=0) // _ONE - 1, 0)
    hi = np.minimum(poly.max(axis=0) // _ONE + 2, [img.shape[1], img.shape[0]])
    upper = fx[_EYE[side][: LID_STEPS + 1]]  # corner, upper lid, corner
    lash = max(1, round(0.05 * p.scale))
    if np.all(hi - lo > 1):
        roi = img[lo[1] : hi[1], lo[0] : hi[0]]
        shift = lo * _ONE
        mask = np.zeros(roi.shape[:2], dtype=np.uint8)
        cv2.fillPoly(mask, [poly - shift], 255, _AA, _SHIFT)
        layer = np.empty_like(roi)
        layer[:] = p.eye_white
        # projected rims of discs are convex and already in order: no hull needed
        cv2.fillConvexPoly(layer, fx[_IRIS_RIM[side]] - shift, p.iris, _AA, _SHIFT)
        cv2.fillConvexPoly(layer, fx[_PUPIL_RIM[side]] - shift, (12.0, 10.0, 10.0), _AA, _SHIFT)
        weight = mask.astype(np.float32) * np.float32(1.0 / 255.0)
        roi[:] = cv2.blendLinear(layer, roi, weight, 1.0 - weight)
    cv2.polylines(img, [upper], False, (25.0, 20.0, 20.0), lash, _AA, _SHIFT)


def _draw_eye_region(img: np.ndarray, p: FaceParams, fx: np.ndarray, side: str) -> None:
    """Brow and eye of one ``side`` (``"l"`` or ``"r"``, the image side)."""
    cv2.fillPoly(img, [fx[_BROW[side]]], p.brow, _AA, _SHIFT)
    _draw_eye(img, p, fx, side)


def _draw_nose(img: np.ndarray, p: FaceParams, fx: np.ndarray) -> None:
    """Nose: a filled hull (it hides what lies behind it), its outline, nostrils, base."""
    hull = cv2.convexHull(fx[_NOSE])
    cv2.fillConvexPoly(img, hull, _shade(p.skin, 1.03), _AA, _SHIFT)
    cv2.polylines(img, [hull], True, _shade(p.skin, 0.8), 1, _AA, _SHIFT)
    for side in ("l", "r"):
        _fill_hull(img, fx[GROUPS[f"nostril_{side}"]], _shade(p.skin, 0.3))
    cv2.polylines(img, [fx[31:36]], False, _shade(p.skin, 0.6), 1, _AA, _SHIFT)


def _draw_mouth(img: np.ndarray, p: FaceParams, fx: np.ndarray) -> None:
    """Mouth opening, then the upper and lower lips between outer and inner contours."""
    cv2.fillPoly(img, [fx[60:68]], (70.0, 25.0, 30.0), _AA, _SHIFT)
    cv2.fillPoly(img, [fx[_UPPER_LIP]], _shade(p.lips, 0.88), _AA, _SHIFT)
    cv2.fillPoly(img, [fx[_LOWER_LIP]], p.lips, _AA, _SHIFT)
    cv2.polylines(img, [fx[_LIP_LINE]], False, _shade(p.lips, 0.45), 1, _AA, _SHIFT)


def _draw_ear(img: np.ndarray, p: FaceParams, fx: np.ndarray, side: str) -> None:
    """An ear: its rim is a projected ellipse, convex and in order."""
    ring = fx[GROUPS[f"ear_{side}"]]
    cv2.fillConvexPoly(img, ring, _shade(p.skin, 0.93), _AA, _SHIFT)
    cv2.polylines(img, [ring], True, _shade(p.skin, 0.7), 1, _AA, _SHIFT)


def _apply_light(img: np.ndarray, p: FaceParams) -> np.ndarray:
    """Multiply the image by the linear light gradient of ``p.light``."""
    size = img.shape[0]
    face_px = FACE_WIDTH_UNITS * p.scale
    brightness, gx, gy = p.light
    coords = np.arange(size, dtype=np.float32)
    across = (gx / face_px) * (coords - np.float32(p.center[0]))  # (S,) along x
    down = brightness + (gy / face_px) * (coords - np.float32(p.center[1]))  # (S,) along y
    gain = np.add.outer(down, across)  # (S, S)
    np.clip(gain, 0.3, 1.7, out=gain)
    return cv2.multiply(img, cv2.cvtColor(gain, cv2.COLOR_GRAY2RGB), dtype=cv2.CV_8U)


def render_face(params: FaceParams, image_size: int) -> SyntheticFace:
    """Draw a face from its parameters.

    Args:
        params: The sampled face.
        image_size: Side S of the square output.

    Returns:
        The image and the projected points it was drawn from.

    Shape:
        ``image``: ``(S, S, 3)`` uint8 RGB; ``points``: ``(P_full, 2)``.
    """
    p, size = params, image_size
    points, depth = project(p)
    fx = _fixed(points)
    img = cv2.resize(p.background, (size, size), interpolation=cv2.INTER_LINEAR)
    for c in p.clutter:
        _draw_clutter(img, c)
    _fill_hull(img, fx[GROUPS["torso"]], p.clothing)
    _fill_hull(img, fx[GROUPS["neck"]], _shade(p.skin, 0.72))

    ear_depth = {s: depth[GROUPS[f"ear_{s}"]].mean() for s in ("l", "r")}
    for side in ("l", "r"):
        if ear_depth[side] < _FAR_EAR_DEPTH:
            _draw_ear(img, p, fx, side)
    hair = GROUPS["shell"][p.hair_cut >= _SHELL_Y]  # the skull down to hair_cut
    if p.long_hair:
        hair = np.concatenate([hair, GROUPS["curtain"]])
    _fill_hull(img, fx[hair], p.hair)
    for side in ("l", "r"):
        if ear_depth[side] >= _FAR_EAR_DEPTH:
            _draw_ear(img, p, fx, side)
    _fill_hull(img, fx[_FACE], p.skin)

    # Features are drawn far to near, so under large yaw the nose hides the far eye.
    parts: list[tuple[float, Callable[[], None]]] = [
        (depth[36:42].mean(), lambda: _draw_eye_region(img, p, fx, "l")),
        (depth[42:48].mean(), lambda: _draw_eye_region(img, p, fx, "r")),
        (depth[27:36].mean(), lambda: _draw_nose(img, p, fx)),
        (depth[48:68].mean(), lambda: _draw_mouth(img, p, fx)),
    ]
    for _, draw in sorted(parts, key=lambda part: part[0]):
        draw()

    mask = None
    if p.occluders:
        mask = np.zeros((size, size), dtype=np.uint8)
        for o in p.occluders:
            _draw_occluder(img, o, points, p.scale, o.color)
            _draw_occluder(mask, o, points, p.scale, 255)
    img = _apply_light(img, p)
    if p.blur_sigma > 0:
        img = cv2.GaussianBlur(img, (0, 0), p.blur_sigma)
    if p.noise_std > 0:
        ox, oy = p.noise_offset
        tex = _noise_texture(size)[oy : oy + size, ox : ox + size]
        gain = p.noise_std / 32.0
        img = cv2.addWeighted(img, 1.0, tex, gain, -128.0 * gain)
    return SyntheticFace(params=p, image=img, points=points, occluder_mask=mask)

"""Everything random about one synthetic face, as plain data: pose, shape, colours, occluders.

:func:`sepbn.data.synthetic.sampling.sample_face_params` draws a :class:`FaceParams`;
:func:`sepbn.data.synthetic.render.render_face` draws it, deterministically.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from sepbn.data.synthetic.template import MIRROR

Color = tuple[float, float, float]


@dataclass(frozen=True)
class Occluder:
    """An object in front of the face, placed relative to one landmark.

    Attributes:
        kind: ``"rect"``, ``"ellipse"`` or ``"hand"``.
        anchor: The 300-W landmark (0..67) it is centred near.
        offset: Centre offset from the anchor, template units ``(dx, dy)``.
        size: ``(width, height)`` in template units.
        angle: In-plane rotation in degrees.
        color: RGB.
        handedness: +1 or -1; mirrors the thumb of a hand.
    """

    kind: str
    anchor: int
    offset: tuple[float, float]
    size: tuple[float, float]
    angle: float
    color: Color
    handedness: float = 1.0


@dataclass(frozen=True)
class Clutter:
    """A background shape: ``"rect"``, ``"ellipse"`` or ``"line"``, in pixels."""

    kind: str
    center: tuple[float, float]
    size: tuple[float, float]
    angle: float
    color: Color


@dataclass(frozen=True)
class FaceParams:
    """Everything random about one synthetic face; rendering it is deterministic.

    Attributes:
        domain: Pose sub-domain it was sampled from: 0 near-frontal, 1 left profile
            (``yaw < 0``, the nose points to the image's left), 2 right profile.
        yaw: Degrees; positive turns the nose towards the image's right.
        pitch: Degrees; positive tilts the face up.
        roll: Degrees; in-plane, positive turns the face clockwise in the image.
        scale: Pixels per template unit at the head's centre.
        center: Pixel centre of the tight box of the 68 projected landmarks.
        shape: ``(P_base, 3)`` deformed template (identity, expression, gaze).
        camera_distance: Distance of the camera from the head's centre, template units.
        skin, hair, brow, lips, iris, eye_white, clothing: RGB colours.
        hair_cut: Template ``Y`` down to which the skull is covered with hair.
        long_hair: Whether hair falls behind the neck.
        background: ``(2, 2, 3)`` uint8 corner colours of the background gradient.
        clutter: Background shapes.
        light: ``(brightness, gx, gy)``: the image is multiplied by
            ``brightness + gx * dx + gy * dy`` (clipped to [0.3, 1.7]), ``dx, dy``
            measured from ``center`` in face widths, so the side of the face towards
            the light is brighter.
        occluders: Objects drawn over the face.
        blur_sigma: Gaussian blur of the finished image, pixels (0 = none).
        noise_std: Standard deviation of the additive pixel noise, grey levels.
        noise_offset: Where the fixed noise texture is cut, ``(x, y)``.
        attributes: WFLW-style 0/1 attributes of the face.
    """

    domain: int
    yaw: float
    pitch: float
    roll: float
    scale: float
    center: tuple[float, float]
    shape: np.ndarray
    camera_distance: float
    skin: Color
    hair: Color
    brow: Color
    lips: Color
    iris: Color
    eye_white: Color
    clothing: Color
    hair_cut: float
    long_hair: bool
    background: np.ndarray
    clutter: tuple[Clutter, ...]
    light: tuple[float, float, float]
    occluders: tuple[Occluder, ...]
    blur_sigma: float
    noise_std: float
    noise_offset: tuple[int, int]
    attributes: dict[str, bool] = field(default_factory=dict)

    def mirrored(self, image_size: int) -> FaceParams:
        """The same face mirrored left-right in an image of ``image_size`` pixels.

        Every geometric and photometric parameter is mirrored, so rendering the result
        gives the mirror image of this face (up to anti-aliasing round-off), except for
        the pixel noise, which is a fixed texture and keeps its offset.
        """
        last = image_size - 1.0
        flip = np.array([-1.0, 1.0, 1.0])
        return replace(
            self,
            domain=(0, 2, 1)[self.domain],
            yaw=-self.yaw,
            roll=-self.roll,
            center=(last - self.center[0], self.center[1]),
            shape=self.shape[MIRROR] * flip,
            background=np.ascontiguousarray(self.background[:, ::-1]),
            clutter=tuple(
                replace(c, center=(last - c.center[0], c.center[1]), angle=-c.angle)
                for c in self.clutter
            ),
            light=(self.light[0], -self.light[1], self.light[2]),
            occluders=tuple(
                replace(
                    o,
                    anchor=int(MIRROR[o.anchor]),
                    offset=(-o.offset[0], o.offset[1]),
                    angle=-o.angle,
                    handedness=-o.handedness,
                )
                for o in self.occluders
            ),
        )

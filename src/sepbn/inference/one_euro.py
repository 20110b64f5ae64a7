"""The One Euro filter (Casiez, Roussel and Vogel, "1€ filter: a simple speed-based low-pass
filter for noisy input in interactive systems", CHI 2012), for landmark trajectories.

A first-order low-pass filter whose cutoff frequency follows the signal's speed: a slow point
(a face holding still) gets a low cutoff, which removes the frame-to-frame jitter of the
network; a fast one (a head turning) a high cutoff, which keeps the lag small. Per sample
``x_i`` at time ``t_i`` (``T_e = t_i - t_{i-1}``, the paper's Eqs. in Sec. "The 1€ filter"):

    α(f_c) = 1 / (1 + τ / T_e),   τ = 1 / (2π f_c)
    dx_i   = (x_i - x̂_{i-1}) / T_e,       dx̂_i = α(d_cutoff) dx_i + (1 - α(d_cutoff)) dx̂_{i-1}
    f_c    = min_cutoff + β |dx̂_i|
    x̂_i    = α(f_c) x_i + (1 - α(f_c)) x̂_{i-1}

with ``x̂_0 = x_0`` and ``dx̂_0 = 0``. Here each landmark is one 2-D signal: ``|dx̂|`` is the
length of its smoothed velocity, so both coordinates of a point share one cutoff.

**Pose and shape.** A face's points move mostly together (the head or the camera moves), and
a point's own noise is the network's. :class:`LandmarkSmoother` therefore splits each frame's
points into a pose, their centre ``c`` and the similarity ``(a, b)`` (rotation and scale,
``[[a, -b], [b, a]]``) that best maps the first frame's centred points onto them (least
squares), and a shape, the centred points mapped back by the inverse similarity. The pose,
fitted from all L points at once, is little noisy and gets a 1€ filter that follows motion
closely (:data:`MIN_CUTOFF`, :data:`BETA`); the shape, where each point's noise stays, gets a
slow one (:data:`SHAPE_MIN_CUTOFF`, :data:`SHAPE_BETA`: an expression still gets through
within a few frames). The output is the smoothed shape put back by the smoothed pose. On the
clips of ``benchmarks/bench_video.py`` this removes more of the jitter at the same NME than
one filter on every point (docs/benchmarks.md, section 9).

**Units.** Points are filtered in units of the face's size (the side ``sqrt(w h)`` of their
tight box on the first frame of the track), so speeds are in face sides per second and one
set of parameters fits faces of any size. The defaults were chosen on the clips of
``benchmarks/bench_video.py``.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "BETA",
    "D_CUTOFF",
    "MIN_CUTOFF",
    "SHAPE_BETA",
    "SHAPE_MIN_CUTOFF",
    "LandmarkSmoother",
    "OneEuroFilter",
]

#: Hz, the cutoff of a point at rest.
MIN_CUTOFF = 0.3
#: Hz per (face side / s): how fast the cutoff rises with the point's speed.
BETA = 40.0
#: Hz, the cutoff of the speed estimate.
D_CUTOFF = 1.0
#: Hz, the cutoff of a face's shape (its points with the pose taken out) at rest.
SHAPE_MIN_CUTOFF = 0.3
#: Hz per (face side / s) of shape change (an expression).
SHAPE_BETA = 5.0


def smoothing_factor(cutoff: np.ndarray | float, period: float) -> np.ndarray:
    """``α = 1 / (1 + τ / T_e)`` with ``τ = 1 / (2π f_c)``."""
    tau = 1.0 / (2.0 * math.pi * np.asarray(cutoff, dtype=np.float64))
    return 1.0 / (1.0 + tau / period)


class OneEuroFilter:
    """The 1€ filter over ``(..., D)`` arrays: each ``(D,)`` row is one signal whose speed is
    the norm of its velocity.

    Args:
        min_cutoff: ``f_c`` at rest, in Hz.
        beta: Cutoff increase per unit of speed (signal units per second).
        d_cutoff: Cutoff of the speed's own low-pass, in Hz.

    Raises:
        ValueError: A cutoff that is not positive, or a negative ``beta``.
    """

    def __init__(
        self, min_cutoff: float = MIN_CUTOFF, beta: float = BETA, d_cutoff: float = D_CUTOFF
    ) -> None:
        if not (min_cutoff > 0 and d_cutoff > 0 and beta >= 0):
            raise ValueError(
                f"One Euro filter needs min_cutoff > 0, d_cutoff > 0 and beta >= 0; got "
                f"min_cutoff={min_cutoff}, d_cutoff={d_cutoff}, beta={beta}"
            )
        self.min_cutoff, self.beta, self.d_cutoff = float(min_cutoff), float(beta), float(d_cutoff)
        self._x: np.ndarray | None = None  # x̂_{i-1}
        self._dx: np.ndarray | None = None  # dx̂_{i-1}
        self._t: float | None = None

    def reset(self) -> None:
        """Forget the past: the next sample passes through unchanged."""
        self._x = self._dx = self._t = None

    def __call__(self, x: np.ndarray, t: float) -> np.ndarray:
        """Filter the sample ``x`` taken at time ``t`` seconds; returns ``x̂``.

        Raises:
            ValueError: A time that does not increase, or a shape other than the first's.
        """
        x = np.asarray(x, dtype=np.float64)
        if self._x is None or self._t is None or self._dx is None:
            self._x, self._dx, self._t = x.copy(), np.zeros_like(x), float(t)
            return x.copy()
        if x.shape != self._x.shape:
            raise ValueError(f"sample shape {x.shape} differs from the first's {self._x.shape}")
        period = float(t) - self._t
        if not period > 0:
            raise ValueError(f"times must increase: {t} after {self._t}")
        a_d = smoothing_factor(self.d_cutoff, period)
        dx = a_d * (x - self._x) / period + (1.0 - a_d) * self._dx
        speed = np.linalg.norm(dx, axis=-1, keepdims=True)  # (..., 1)
        a = smoothing_factor(self.min_cutoff + self.beta * speed, period)
        self._x = a * x + (1.0 - a) * self._x
        self._dx, self._t = dx, float(t)
        return self._x.copy()


class LandmarkSmoother:
    """Smooth a face's ``(L, 2)`` landmarks as its pose and its shape (module docstring).

    Args:
        min_cutoff, beta, d_cutoff: The pose's filter (:class:`OneEuroFilter`; speed in face
            sides / s).
        shape_min_cutoff, shape_beta: The shape's filter.
    """

    def __init__(
        self,
        min_cutoff: float = MIN_CUTOFF,
        beta: float = BETA,
        d_cutoff: float = D_CUTOFF,
        shape_min_cutoff: float = SHAPE_MIN_CUTOFF,
        shape_beta: float = SHAPE_BETA,
    ) -> None:
        self.pose = OneEuroFilter(min_cutoff, beta, d_cutoff)
        self.shape = OneEuroFilter(shape_min_cutoff, shape_beta, d_cutoff)
        self.scale: float | None = None
        self.reference: np.ndarray | None = None  # (L, 2) the first frame's centred shape

    def __call__(self, landmarks: np.ndarray, t: float) -> np.ndarray:
        """The smoothed ``(L, 2)`` landmarks of the frame at ``t`` seconds."""
        points = np.asarray(landmarks, dtype=np.float64)
        if self.scale is None:
            w, h = points.max(axis=0) - points.min(axis=0)
            self.scale = max(float(np.sqrt(w * h)), 1e-6)
        x = points / self.scale  # face sides
        centre = x.mean(axis=0)
        centred = x - centre
        if self.reference is None:
            self.reference = centred
        a, b = _similarity(self.reference, centred)
        shape = centred @ np.linalg.inv(_matrix(a, b)).T  # in the reference's frame
        pose = self.pose(np.array([centre, [a, b]]), t)  # (2, 2): two signals
        smooth_shape = self.shape(shape, t)
        return (smooth_shape @ _matrix(*pose[1]).T + pose[0]) * self.scale


def _matrix(a: float, b: float) -> np.ndarray:
    """The similarity ``[[a, -b], [b, a]]``: rotation by ``atan2(b, a)``, scale ``|(a, b)|``."""
    return np.array([[a, -b], [b, a]])


def _similarity(reference: np.ndarray, centred: np.ndarray) -> tuple[float, float]:
    """``(a, b)`` of the similarity that maps the centred ``reference`` closest (least squares)
    to the centred points; the identity for a reference without extent."""
    norm = float((reference**2).sum())
    if norm < 1e-12:
        return 1.0, 0.0
    a = float((reference * centred).sum()) / norm
    b = float((reference[:, 0] * centred[:, 1] - reference[:, 1] * centred[:, 0]).sum()) / norm
    if a * a + b * b < 1e-12:  # a degenerate frame (all points on one spot)
        return 1.0, 0.0
    return a, b

"""The One Euro filter against its definition (Casiez et al. 2012), computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sepbn.inference.one_euro import LandmarkSmoother, OneEuroFilter


def alpha(cutoff: float, period: float) -> float:
    tau = 1 / (2 * math.pi * cutoff)
    return 1 / (1 + tau / period)


def test_three_samples_follow_the_papers_equations() -> None:
    f = OneEuroFilter(min_cutoff=1.0, beta=0.5, d_cutoff=2.0)
    xs, ts = [0.0, 1.0, 1.5], [0.0, 0.1, 0.25]
    got = [float(f(np.array([[x]]), t)[0, 0]) for x, t in zip(xs, ts)]
    # By hand: x̂0 = x0, dx̂0 = 0; then per sample the four equations of the module docstring.
    x_hat, dx_hat, expected = xs[0], 0.0, [xs[0]]
    for i in (1, 2):
        period = ts[i] - ts[i - 1]
        a_d = alpha(2.0, period)
        dx_hat = a_d * (xs[i] - x_hat) / period + (1 - a_d) * dx_hat
        a = alpha(1.0 + 0.5 * abs(dx_hat), period)
        x_hat = a * xs[i] + (1 - a) * x_hat
        expected.append(x_hat)
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_a_point_is_one_signal_whose_speed_is_its_velocitys_length() -> None:
    f = OneEuroFilter(min_cutoff=1.0, beta=2.0, d_cutoff=1.0)
    f(np.zeros((1, 2)), 0.0)
    got = f(np.array([[0.3, 0.4]]), 0.1)  # |x - x̂| = 0.5
    a_d = alpha(1.0, 0.1)
    speed = a_d * 0.5 / 0.1
    a = alpha(1.0 + 2.0 * speed, 0.1)
    np.testing.assert_allclose(got, [[0.3 * a, 0.4 * a]], rtol=1e-12)


def test_beta_zero_is_a_fixed_low_pass_and_a_constant_passes_unchanged() -> None:
    f = OneEuroFilter(min_cutoff=2.0, beta=0.0)
    f(np.array([[0.0]]), 0.0)
    a = alpha(2.0, 1 / 30)
    np.testing.assert_allclose(f(np.array([[1.0]]), 1 / 30), [[a]], rtol=1e-12)
    g = OneEuroFilter()
    for i in range(5):
        np.testing.assert_allclose(
            g(np.full((3, 2), 7.0), i / 30), np.full((3, 2), 7.0), rtol=1e-15
        )


def test_faster_points_lag_less() -> None:
    """The adaptive cutoff: a fast move is followed more closely than with beta = 0."""
    slow, adaptive = OneEuroFilter(beta=0.0), OneEuroFilter(beta=10.0)
    for f in (slow, adaptive):
        f(np.zeros((1, 2)), 0.0)
    step = np.array([[1.0, 0.0]])
    assert adaptive(step, 1 / 30)[0, 0] > slow(step, 1 / 30)[0, 0]


def test_bad_parameters_and_times_are_refused() -> None:
    with pytest.raises(ValueError, match="min_cutoff > 0"):
        OneEuroFilter(min_cutoff=0.0)
    with pytest.raises(ValueError, match="beta >= 0"):
        OneEuroFilter(beta=-1.0)
    f = OneEuroFilter()
    f(np.zeros((2, 2)), 1.0)
    with pytest.raises(ValueError, match="times must increase"):
        f(np.zeros((2, 2)), 1.0)
    with pytest.raises(ValueError, match="shape"):
        f(np.zeros((3, 2)), 2.0)


def test_the_smoother_works_in_face_sides_so_any_face_size_is_filtered_alike() -> None:
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 1, (68, 2))
    track = [base + rng.normal(0, 0.01, base.shape) + 0.02 * i for i in range(6)]
    small, large = LandmarkSmoother(), LandmarkSmoother()
    for i, points in enumerate(track):
        a, b = small(points * 50, i / 30), large(points * 400, i / 30)
        np.testing.assert_allclose(b, a * 8, rtol=1e-9)


def test_a_rigidly_moving_face_keeps_its_first_shape() -> None:
    """Noise-free similarity motion: the shape is constant, so the output is an exact
    similarity transform of the first frame's points (only the pose is filtered)."""
    rng = np.random.default_rng(1)
    first = rng.uniform(0, 100, (68, 2))
    smoother = LandmarkSmoother()
    for i in range(8):
        angle, scale = 0.05 * i, 1 + 0.03 * i
        rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        out = smoother(first @ rot.T + [3.0 * i, -2.0 * i], i / 30)
        # Fit a similarity from the first frame to the output by least squares, by hand.
        p, q = first - first.mean(0), out - out.mean(0)
        a = (p * q).sum() / (p**2).sum()
        b = (p[:, 0] * q[:, 1] - p[:, 1] * q[:, 0]).sum() / (p**2).sum()
        np.testing.assert_allclose(q, p @ np.array([[a, -b], [b, a]]).T, atol=1e-9)
    assert not np.allclose(out, first @ rot.T + [21.0, -14.0])  # the pose lags a little


def test_a_still_face_passes_unchanged_and_noise_is_reduced() -> None:
    rng = np.random.default_rng(2)
    face = rng.uniform(0, 100, (68, 2))
    smoother = LandmarkSmoother()
    for i in range(5):
        np.testing.assert_allclose(smoother(face, i / 30), face, atol=1e-9)
    noisy, smoothed = [], []
    smoother = LandmarkSmoother()
    for i in range(60):
        frame = face + rng.normal(0, 1.0, face.shape)
        noisy.append(frame)
        smoothed.append(smoother(frame, i / 30))
    step = lambda seq: np.linalg.norm(np.diff(seq[10:], axis=0), axis=2).mean()  # noqa: E731
    assert step(smoothed) < 0.5 * step(noisy)

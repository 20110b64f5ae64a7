"""``sepbn.nn.functional``: the pieces of the SepBN math both implementations share.

Each piece against a float64 reference written independently: the T×T band pooling that
exporters record against ATen's ``adaptive_max_pool2d`` (overlapping bands, ties, NaN),
Eq. 5's weights and their hard arg-max, Eq. 6's mixing against a loop, the eval fold
against ``F.batch_norm`` per sample, and the running-statistics helpers.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sepbn.nn import functional

DTYPE = torch.float64


@pytest.fixture
def exporting(monkeypatch) -> None:
    """:func:`functional.adaptive_max_pool2d` as an exporter records it (band maxima)."""
    monkeypatch.setattr(functional, "is_exporting", lambda: True)


@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 4, 2, 2), (3, 2, 17, 33), (2, 2, 40, 3)])
@pytest.mark.parametrize("pool_size", [1, 2, 3, 5])
def test_band_pooling_equals_aten_with_overlapping_bands_and_ties(
    shape, pool_size: int, exporting
) -> None:
    x = torch.randn(shape, dtype=DTYPE)
    for values in (x, x.round()):  # rounded: many ties inside windows
        expected = F.adaptive_max_pool2d(values, pool_size)
        assert torch.equal(functional.adaptive_max_pool2d(values, pool_size), expected)


def test_band_pooling_keeps_nan_and_infinities(exporting) -> None:
    x = torch.randn(2, 3, 11, 9)
    x[0, 1, 5, 5] = float("nan")
    x[1, 2, 0, 0] = float("inf")
    x[1, 0, 3, 3] = float("-inf")
    pooled = functional.adaptive_max_pool2d(x, 3)
    expected = F.adaptive_max_pool2d(x, 3)
    torch.testing.assert_close(pooled, expected, equal_nan=True, rtol=0, atol=0)
    assert int(pooled.isnan().sum()) >= 1


def test_band_pooling_gradient_equals_aten(exporting) -> None:
    """The band route is differentiable (``torch.export`` of a training graph) and sends the
    gradient to the same arg-max as ATen (no ties in random data)."""
    x = torch.randn(2, 3, 10, 7, dtype=DTYPE, requires_grad=True)
    grad = torch.randn(2, 3, 3, 3, dtype=DTYPE)
    (g_band,) = torch.autograd.grad(functional.adaptive_max_pool2d(x, 3), x, grad)
    (g_aten,) = torch.autograd.grad(F.adaptive_max_pool2d(x, 3), x, grad)
    # overlapping windows: the same terms, added in another order
    torch.testing.assert_close(g_band, g_aten, rtol=1e-14, atol=1e-14)


def test_pooling_is_atens_outside_exporters_and_bands_under_them() -> None:
    """Eager: ATen's op; ``torch.export`` and ``torch.jit.trace``: band maxima of the same value."""

    class Pool(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return functional.adaptive_max_pool2d(x, 3)

    x = torch.randn(2, 3, 10, 7)
    expected = F.adaptive_max_pool2d(x, 3)
    assert not functional.is_exporting()
    assert torch.equal(Pool()(x), expected)
    program = torch.export.export(Pool(), (x,))
    assert "adaptive_max_pool2d" not in str(program.graph) and "amax" in str(program.graph)
    assert torch.equal(program.module()(x), expected)
    traced = torch.jit.trace(Pool(), (x,))
    assert "adaptive_max_pool2d" not in str(traced.graph)
    assert torch.equal(traced(x), expected)


def test_set_weights_softmax_with_temperature_and_hard_argmax() -> None:
    logits = torch.randn(4, 2, 3, dtype=DTYPE)
    tau = torch.tensor(1.7)  # a float32 buffer, as in the layers
    e = torch.exp(logits / tau.double())
    torch.testing.assert_close(
        functional.set_weights(logits, tau), e / e.sum(-1, keepdim=True), rtol=1e-14, atol=1e-14
    )
    hard = functional.set_weights(logits.requires_grad_(), tau, hard=True)
    assert torch.equal(hard, F.one_hot(logits.argmax(-1), 3).to(DTYPE))
    assert hard.grad_fn is None  # no gradient crosses the arg-max (Table III)


def test_mix_sets_equals_a_loop_over_samples_groups_and_sets() -> None:
    """Eq. 6: ``γ̂[n, c] = Σ_k π[n, c // (C/G), k] γ[k, c]``, β̂ likewise."""
    n, g, k, c = 3, 2, 4, 6
    pi = torch.randn(n, g, k, dtype=DTYPE).softmax(-1)
    weight, bias = torch.randn(k, c, dtype=DTYPE), torch.randn(k, c, dtype=DTYPE)
    scale, shift = functional.mix_sets(pi, weight, bias)
    assert scale.shape == shift.shape == (n, c) and scale.is_contiguous() and shift.is_contiguous()
    for i in range(n):
        for ch in range(c):
            group = ch // (c // g)
            gamma = sum(pi[i, group, s] * weight[s, ch] for s in range(k))
            beta = sum(pi[i, group, s] * bias[s, ch] for s in range(k))
            torch.testing.assert_close(scale[i, ch], gamma, rtol=1e-14, atol=1e-14)
            torch.testing.assert_close(shift[i, ch], beta, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_fold_shared_statistics_equal_batch_norm_per_sample(memory_format) -> None:
    x = torch.randn(3, 4, 5, 6, dtype=DTYPE).contiguous(memory_format=memory_format)
    mean, var = torch.randn(4, dtype=DTYPE), torch.rand(4, dtype=DTYPE) + 0.5
    scale, shift = torch.randn(3, 4, dtype=DTYPE), torch.randn(3, 4, dtype=DTYPE)
    y = functional.fold_batch_norm(x, mean, var, 1e-3, scale, shift)
    for n in range(3):  # sample n is an inference-mode batch norm with its own affine
        expected = F.batch_norm(x[n : n + 1], mean, var, scale[n], shift[n], False, 0.0, 1e-3)
        torch.testing.assert_close(y[n : n + 1], expected, rtol=1e-14, atol=1e-14)
    assert y.is_contiguous(memory_format=memory_format)


def test_fold_per_sample_statistics_and_eps() -> None:
    x = torch.randn(2, 3, 4, 4, dtype=DTYPE)
    mean, var = torch.randn(2, 3, dtype=DTYPE), torch.rand(2, 3, dtype=DTYPE) + 0.5
    scale, shift = torch.randn(2, 3, dtype=DTYPE), torch.randn(2, 3, dtype=DTYPE)
    eps = torch.tensor([[1e-5], [0.5]], dtype=DTYPE)
    y = functional.fold_batch_norm(x, mean, var, eps, scale, shift)
    c = (slice(None), slice(None), None, None)
    expected = (x - mean[c]) / torch.sqrt(var[c] + eps[..., None, None]) * scale[c] + shift[c]
    torch.testing.assert_close(y, expected, rtol=1e-14, atol=1e-14)


def test_fold_output_keeps_the_input_dtype() -> None:
    x = torch.randn(2, 3, 4, 4).bfloat16()
    ones, zeros = torch.ones(2, 3), torch.zeros(2, 3)
    y = functional.fold_batch_norm(x, torch.zeros(3), torch.ones(3), 1e-5, ones, zeros)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), x.float(), rtol=2**-7, atol=0)


def test_running_stats_and_their_copy() -> None:
    src, dst = nn.BatchNorm2d(4), nn.BatchNorm2d(4)
    with torch.no_grad():
        src.running_mean.normal_()
        src.running_var.uniform_(0.5, 2.0)
        src.num_batches_tracked.fill_(7)
    mean, var = functional.running_stats(src)
    assert mean is src.running_mean and var is src.running_var
    functional.copy_running_stats(src, dst)
    assert torch.equal(dst.running_mean, src.running_mean)
    assert torch.equal(dst.running_var, src.running_var)
    assert int(dst.num_batches_tracked) == 7
    untracked = nn.BatchNorm2d(4, track_running_stats=False)
    functional.copy_running_stats(src, untracked)  # nothing to copy into: no error
    functional.copy_running_stats(untracked, dst)  # nothing to copy from: dst unchanged
    assert int(dst.num_batches_tracked) == 7


def test_mix_sets_under_autocast_keeps_the_parameters_precision() -> None:
    """Under CPU autocast γ̂ and β̂ are mixed in float32 (the parameters' dtype), not in the
    bfloat16 of autocast's matmuls: the layer's error bound (test_layers_pytorch) counts
    one rounding of each."""
    pi = torch.randn(3, 2, 4).softmax(-1)
    weight, bias = torch.randn(4, 6) + 1, torch.randn(4, 6)
    expected = functional.mix_sets(pi.double(), weight.double(), bias.double())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = functional.mix_sets(pi, weight, bias)
    for got, want in zip(mixed, expected):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-6)

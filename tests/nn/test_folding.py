"""fold_batch_norm: statistics and a per-sample affine as one multiply-add."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sepbn.nn._folding import fold_batch_norm

DTYPE = torch.float64


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_shared_statistics_equal_batch_norm_per_sample(memory_format) -> None:
    x = torch.randn(3, 4, 5, 6, dtype=DTYPE).contiguous(memory_format=memory_format)
    mean, var = torch.randn(4, dtype=DTYPE), torch.rand(4, dtype=DTYPE) + 0.5
    scale, shift = torch.randn(3, 4, dtype=DTYPE), torch.randn(3, 4, dtype=DTYPE)
    y = fold_batch_norm(x, mean, var, 1e-3, scale, shift)
    for n in range(3):  # sample n is an inference-mode batch norm with its own affine
        expected = F.batch_norm(x[n : n + 1], mean, var, scale[n], shift[n], False, 0.0, 1e-3)
        torch.testing.assert_close(y[n : n + 1], expected, rtol=1e-14, atol=1e-14)
    assert y.is_contiguous(memory_format=memory_format)


def test_per_sample_statistics_and_eps() -> None:
    x = torch.randn(2, 3, 4, 4, dtype=DTYPE)
    mean, var = torch.randn(2, 3, dtype=DTYPE), torch.rand(2, 3, dtype=DTYPE) + 0.5
    scale, shift = torch.randn(2, 3, dtype=DTYPE), torch.randn(2, 3, dtype=DTYPE)
    eps = torch.tensor([[1e-5], [0.5]], dtype=DTYPE)
    y = fold_batch_norm(x, mean, var, eps, scale, shift)
    c = (slice(None), slice(None), None, None)
    expected = (x - mean[c]) / torch.sqrt(var[c] + eps[..., None, None]) * scale[c] + shift[c]
    torch.testing.assert_close(y, expected, rtol=1e-14, atol=1e-14)


def test_output_keeps_the_input_dtype() -> None:
    x = torch.randn(2, 3, 4, 4).bfloat16()
    y = fold_batch_norm(x, torch.zeros(3), torch.ones(3), 1e-5, torch.ones(2, 3), torch.zeros(2, 3))
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), x.float(), rtol=2**-7, atol=0)

"""SimpleSepBatchNorm2d against Eqs. 3-5 (squeeze-and-excitation weights, no groups).

The layer has only the plain implementation: the dispatch never sends it to the C++ op.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

from helpers import randomize
from sepbn.nn import SimpleSepBatchNorm2d
from sepbn.nn.dispatch import use_native

DTYPE = torch.float64


def reference(layer: SimpleSepBatchNorm2d, x: Tensor) -> tuple[Tensor, Tensor]:
    """Eq. 3 (GAP → linear → ReLU → linear → sigmoid → softmax with τ), Eq. 4, per sample."""
    squeezed = torch.relu(x.mean(dim=(2, 3)) @ layer.squeeze.weight.T + layer.squeeze.bias)
    excited = torch.sigmoid(squeezed @ layer.excite.weight.T + layer.excite.bias)  # (N, K)
    e = torch.exp(excited / layer.temperature)
    lam = e / e.sum(dim=1, keepdim=True)  # Eq. 5
    norm = layer.norm
    if norm.training:
        mean, var = x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3), unbiased=False)
    else:
        mean, var = norm.running_mean, norm.running_var
    x_hat = (x - mean[:, None, None]) / torch.sqrt(var[:, None, None] + norm.eps)
    y = torch.empty_like(x)
    for n in range(x.shape[0]):
        gamma = sum(lam[n, k] * layer.weight[k] for k in range(layer.num_sets))  # Eq. 4
        beta = sum(lam[n, k] * layer.bias[k] for k in range(layer.num_sets))
        y[n] = gamma[:, None, None] * x_hat[n] + beta[:, None, None]
    return y, lam


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize(("channels", "num_sets", "reduction"), [(8, 3, 4), (6, 2, 16), (5, 1, 1)])
def test_matches_reference(training: bool, channels: int, num_sets: int, reduction: int) -> None:
    layer = randomize(SimpleSepBatchNorm2d(channels, num_sets, reduction, temperature=0.4))
    layer = layer.to(DTYPE).train(training)
    ref_layer = copy.deepcopy(layer)
    x = torch.randn(4, channels, 5, 3, dtype=DTYPE) * 2 + 1
    assert not use_native(layer, x) and not layer.has_native
    y_ref, lam_ref = reference(ref_layer, x)
    torch.testing.assert_close(layer(x), y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(layer.attention(x), lam_ref, rtol=1e-12, atol=1e-12)
    if training:
        torch.testing.assert_close(
            layer.norm.running_mean, ref_layer.norm.running_mean * 0.9 + 0.1 * x.mean(dim=(0, 2, 3))
        )


def test_weights_are_a_distribution_and_tend_to_uniform() -> None:
    layer = randomize(SimpleSepBatchNorm2d(16, num_sets=4, reduction=4))
    x = torch.randn(5, 16, 4, 4)
    lam = layer.attention(x)
    assert lam.shape == (5, 4) and (lam > 0).all()
    torch.testing.assert_close(lam.sum(dim=1), torch.ones(5))
    layer.temperature = 1e5
    torch.testing.assert_close(layer.attention(x), torch.full((5, 4), 0.25), atol=1e-5, rtol=0)


def test_hidden_width_and_repr() -> None:
    layer = SimpleSepBatchNorm2d(64, num_sets=3, reduction=16)
    assert layer.squeeze.out_features == 4 and layer.excite.out_features == 3
    assert SimpleSepBatchNorm2d(8, reduction=16).squeeze.out_features == 1
    assert "reduction=16" in repr(layer) and "num_sets=3" in repr(layer)
    with pytest.raises(ValueError, match="reduction"):
        SimpleSepBatchNorm2d(8, reduction=0)


def test_equal_sets_equal_batchnorm_and_every_parameter_learns() -> None:
    bn = nn.BatchNorm2d(6)
    layer = randomize(SimpleSepBatchNorm2d(6, num_sets=3, reduction=2))
    layer.norm.reset_running_stats()
    with torch.no_grad():
        bn.weight.normal_()
        layer.weight.copy_(bn.weight.expand(3, -1))
        layer.bias.copy_(bn.bias.expand(3, -1))
    x = torch.randn(4, 6, 5, 5)
    torch.testing.assert_close(layer(x), bn(x))
    randomize(layer)
    x.requires_grad_()
    (layer(x) * torch.randn(4, 6, 5, 5)).sum().backward()
    for name, p in [("x", x), *layer.named_parameters()]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name

"""Helpers shared by the model tests."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from sepbn.nn import SeparableNormBase


@torch.no_grad()
def randomize_norms(model: nn.Module, seed: int = 1) -> nn.Module:
    """Random running statistics and affine in every norm, and distinct SepBN sets.

    Fresh norms are the identity (γ = 1, β = 0, μ = 0, σ² = 1) and fresh SepBN sets are
    all equal, which would let a test pass with weights copied to the wrong place or
    with an attention that receives a zero gradient.
    """
    g = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            if module.track_running_stats:
                module.running_mean.copy_(torch.randn(module.num_features, generator=g) * 0.1)
                module.running_var.copy_(torch.rand(module.num_features, generator=g) + 0.5)
            if module.affine:
                module.weight.copy_(torch.rand(module.num_features, generator=g) + 0.5)
                module.bias.copy_(torch.randn(module.num_features, generator=g) * 0.1)
        elif isinstance(module, SeparableNormBase):
            module.weight.copy_(torch.rand(module.weight.shape, generator=g) + 0.5)
            module.bias.copy_(torch.randn(module.bias.shape, generator=g) * 0.1)
    return model


@pytest.fixture
def randomize() -> Callable[..., nn.Module]:
    return randomize_norms

"""Attention health: entropy, set usage and input dependence of π, by hand and streamed."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from sepbn.nn import AttentionRecorder, SepBatchNorm2d, SimpleSepBatchNorm2d, collapsed_layers
from sepbn.nn.attention_health import AttentionHealth, attention_health


def test_statistics_by_hand() -> None:
    pi = torch.tensor([[[0.5, 0.5]], [[1.0, 0.0]]])  # (N=2, G=1, K=2)
    h = attention_health(pi)
    # Entropies log 2 and 0, normalized by log 2: mean 0.5.
    assert h.entropy == pytest.approx(0.5)
    np.testing.assert_allclose(h.usage, [0.75, 0.25])
    # Per set, the two samples' weights are 0.5 +- 0.25: population std 0.25.
    assert h.dependence == pytest.approx(0.25)
    assert h.num_samples == 2 and not h.collapsed


def test_collapse_needs_one_hot_and_input_independent_weights() -> None:
    one_hot = torch.tensor([[0.0, 1.0, 0.0]]).repeat(8, 1)
    assert attention_health(one_hot).collapsed
    # One-hot but a different set for different faces: input dependent, alive.
    switching = torch.eye(3)[torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])]
    assert not attention_health(switching).collapsed
    # The same for every face but soft: a fixed mixture, not one set.
    uniform = torch.full((8, 3), 1 / 3)
    h = attention_health(uniform)
    assert h.entropy == pytest.approx(1.0) and h.dependence == pytest.approx(0.0, abs=1e-12)
    assert not h.collapsed


@pytest.mark.parametrize("layer_cls", [SepBatchNorm2d, SimpleSepBatchNorm2d])
def test_recorder_streams_the_same_numbers_as_one_batch(layer_cls) -> None:
    torch.manual_seed(0)
    layer = layer_cls(8, num_sets=3).eval()
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), layer)
    x = torch.randn(10, 3, 12, 12)
    with torch.no_grad():
        pi = layer.attention(model[0](x)) if hasattr(layer, "attention") else None
        with AttentionRecorder(model) as recorder:
            model(x[:4])
            model(x[4:])
    health = recorder.health()
    assert list(health) == ["1"]
    if pi is not None:
        expected = attention_health(pi)
        assert health["1"].entropy == pytest.approx(expected.entropy, rel=1e-6)
        assert health["1"].dependence == pytest.approx(expected.dependence, rel=1e-5)
        np.testing.assert_allclose(health["1"].usage, expected.usage, rtol=1e-6)
    assert health["1"].num_samples == 10
    assert not layer.keep_attention and layer.last_attention is None  # restored
    assert sum(health["1"].usage) == pytest.approx(1.0)
    assert 0 <= health["1"].entropy <= 1


def test_recorder_without_any_forward_reports_nothing() -> None:
    with AttentionRecorder(nn.Sequential(SepBatchNorm2d(4))) as recorder:
        pass
    assert recorder.health() == {}


def test_collapsed_layers_and_row_keys() -> None:
    alive = AttentionHealth(0.6, np.array([0.5, 0.3, 0.2]), 0.1, 10)
    dead = AttentionHealth(0.01, np.array([1.0, 0.0, 0.0]), 0.001, 10)
    assert collapsed_layers({"a": alive, "b": dead}) == ["b"]
    row = dead.as_row("attn/b")
    assert row == {
        "attn/b/entropy": 0.01,
        "attn/b/dependence": 0.001,
        "attn/b/usage_0": 1.0,
        "attn/b/usage_1": 0.0,
        "attn/b/usage_2": 0.0,
    }
    assert math.isclose(sum(v for k, v in row.items() if "usage" in k), 1.0)


def test_recorder_in_training_steps_keeps_no_graph_and_the_same_numbers() -> None:
    """Recording train-mode forwards (no validation set): π of each step, detached."""
    torch.manual_seed(0)
    layer = SepBatchNorm2d(8, num_sets=3, num_groups=2)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), layer).train()
    x = torch.randn(10, 3, 12, 12)
    kept = []
    with AttentionRecorder(model) as recorder:
        for batch in (x[:6], x[6:]):
            model(batch).square().mean().backward()
            kept.append(layer.last_attention)
    sums = recorder._sums["1"]
    assert isinstance(sums.entropy, torch.Tensor) and sums.entropy.grad_fn is None
    expected = attention_health(torch.cat(kept))  # (10, G, K)
    health = recorder.health()["1"]
    assert health.num_samples == 10
    assert health.entropy == pytest.approx(expected.entropy, rel=1e-9)
    assert health.dependence == pytest.approx(expected.dependence, rel=1e-9)

"""Parameter groups of a training stage: the attention's own weight decay, frozen statistics."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sepbn.config import OptimConfig
from sepbn.engine.optim import (
    attention_parameters,
    build_optimizer,
    freeze_norm_statistics,
    split_attention_groups,
)
from sepbn.nn import SepBatchNorm2d, SimpleSepBatchNorm2d


def _net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3), SepBatchNorm2d(8, 3, 2, 2), nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8)
    )


def test_attention_parameters_are_the_reduction_and_the_mlp() -> None:
    net = _net()
    sep = net[1]
    expected = {id(p) for m in (sep.reduce, sep.fc1, sep.fc2) for p in m.parameters()}
    assert {id(p) for p in attention_parameters(net)} == expected
    simple = SimpleSepBatchNorm2d(8, 3)
    ids = {id(q) for q in attention_parameters(simple)}
    names = {n for n, p in simple.named_parameters() if id(p) in ids}
    assert names and not names & {"weight", "bias"}
    assert not any(n.startswith("norm.") for n in names)


def test_attention_groups_get_their_own_weight_decay() -> None:
    net = _net()
    groups = [{"params": list(net.parameters()), "lr": 0.1, "name": "all"}]
    split = split_attention_groups(net, groups, weight_decay=0.05)
    assert [g["name"] for g in split] == ["all", "all_attention"]
    assert {id(p) for p in split[1]["params"]} == {id(p) for p in attention_parameters(net)}
    assert len(split[0]["params"]) + len(split[1]["params"]) == len(list(net.parameters()))
    opt = build_optimizer(OptimConfig(name="sgd", weight_decay=5e-4), split)
    assert [g["weight_decay"] for g in opt.param_groups] == [5e-4, 0.05]
    assert all(g["lr"] == 0.1 for g in opt.param_groups)
    # A model without SepBN keeps its groups as they were.
    plain = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    same = split_attention_groups(plain, [{"params": list(plain.parameters()), "lr": 1.0}], 0.1)
    assert len(same) == 1 and "weight_decay" not in same[0]


def test_frozen_statistics_do_not_move_while_the_rest_trains() -> None:
    net = _net().train()
    freeze_norm_statistics(net)
    assert net.training and not net[1].training and not net[3].training
    before = [net[1].norm.running_mean.clone(), net[3].running_mean.clone()]
    net(torch.randn(4, 3, 6, 6)).sum().backward()
    assert torch.equal(net[1].norm.running_mean, before[0])
    assert torch.equal(net[3].running_mean, before[1])
    assert net[0].weight.grad is not None


@pytest.mark.parametrize("value", [-1.0])
def test_negative_attention_weight_decay_is_refused(value: float) -> None:
    with pytest.raises(ValueError, match="attention_weight_decay"):
        OptimConfig(attention_weight_decay=value)

"""convert_batchnorm: swap BatchNorm2d layers of any model, starting from the old ones."""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch
from torch import nn
from torchvision.models import resnext50_32x4d

from helpers import randomize_norms
from sepbn.nn import (
    DomainBatchNorm2d,
    SepBatchNorm2d,
    SimpleSepBatchNorm2d,
    convert_batchnorm,
    domain_routing,
)


def net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8, eps=1e-3, momentum=0.2),
        nn.ReLU(),
        nn.Sequential(nn.Conv2d(8, 4, 1), nn.BatchNorm2d(4)),
    )


def test_resnext50_bn3_conversion_keeps_eval_output() -> None:
    torch.manual_seed(0)
    model = randomize_norms(resnext50_32x4d()).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
    names = []

    def bn3(name: str, module: nn.Module) -> bool:
        names.append(name)
        return name.endswith(".bn3")

    out = convert_batchnorm(model, lambda c: SepBatchNorm2d(c, 3, 2, 3, temperature=30.0), bn3)
    assert out is model
    converted = [n for n, m in model.named_modules() if isinstance(m, SepBatchNorm2d)]
    assert len(converted) == 16 and all(n.endswith(".bn3") for n in converted)
    assert "layer1.0.bn1" in names and "layer4.2.bn3" in names and "bn1" in names
    assert isinstance(model.layer1[0].bn1, nn.BatchNorm2d)
    assert not model.layer2[0].bn3.training  # eval mode carried over
    with torch.no_grad():
        after = model(x)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)
    # the copy is what keeps the output: perturbing one set changes it
    with torch.no_grad():
        model.layer4[2].bn3.bias[1] += 1.0
        assert not torch.allclose(model(x), before, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize(
    "factory",
    [
        lambda c: SepBatchNorm2d(c, num_sets=3, num_groups=2),
        lambda c: SepBatchNorm2d(c, num_sets=2, num_groups=1, aggregation="hard"),
        lambda c: SimpleSepBatchNorm2d(c, num_sets=3, reduction=2),
        lambda c: DomainBatchNorm2d(c, num_domains=3),
        lambda c: nn.BatchNorm2d(c, momentum=0.5),
    ],
)
@pytest.mark.parametrize("training", [True, False])
def test_every_factory_starts_from_the_old_batchnorm(factory, training: bool) -> None:
    model = randomize_norms(net()).train(training)
    reference = randomize_norms(net())
    reference.load_state_dict(model.state_dict())
    reference.train(training)
    originals = [model[1], model[3][1]]
    convert_batchnorm(model, factory)
    assert model[1] is not originals[0] and model[3][1] is not originals[1]
    first = model[1]
    assert first.training == training
    is_domain = isinstance(first, DomainBatchNorm2d)
    x = torch.randn(4, 3, 5, 5)
    for domain in range(3 if is_domain else 1):
        labels = torch.full((4,), domain)
        with domain_routing(model, labels) if is_domain else nullcontext():
            torch.testing.assert_close(model(x), reference(x), rtol=1e-5, atol=1e-5)


def test_statistics_affine_and_hyper_parameters_are_copied() -> None:
    model = randomize_norms(net())
    old = model[1]
    convert_batchnorm(model, lambda c: SepBatchNorm2d(c, num_sets=3))
    new = model[1]
    assert new.eps == 1e-3 and new.momentum == 0.2
    for k in range(3):
        assert torch.equal(new.weight[k], old.weight) and torch.equal(new.bias[k], old.bias)
    assert torch.equal(new.norm.running_mean, old.running_mean)
    assert torch.equal(new.norm.running_var, old.running_var)
    domain = convert_batchnorm(randomize_norms(nn.BatchNorm2d(6)), DomainBatchNorm2d)
    assert isinstance(domain, DomainBatchNorm2d)  # the model itself was a batch norm


def test_include_receives_qualified_names() -> None:
    model = net()
    seen = []
    convert_batchnorm(model, SepBatchNorm2d, lambda name, m: seen.append(name) or name == "3.1")
    assert seen == ["1", "3.1"]
    assert isinstance(model[1], nn.BatchNorm2d) and isinstance(model[3][1], SepBatchNorm2d)


def test_converting_twice_leaves_inner_norms_alone() -> None:
    model = convert_batchnorm(net(), lambda c: SepBatchNorm2d(c, num_groups=1))
    convert_batchnorm(model, DomainBatchNorm2d)
    assert isinstance(model[1], SepBatchNorm2d) and type(model[1].norm) is nn.BatchNorm2d


def test_dtype_device_and_other_modules_are_kept() -> None:
    model = net().double()
    convert_batchnorm(model, SimpleSepBatchNorm2d)
    assert model[1].weight.dtype == torch.float64 and model[1].tau.dtype == torch.float64
    model = convert_batchnorm(net(), lambda c: nn.GroupNorm(2, c))
    assert isinstance(model[1], nn.GroupNorm) and isinstance(model[0], nn.Conv2d)


def test_factory_must_return_a_module() -> None:
    with pytest.raises(TypeError, match=r"factory\(8\) for 1 must return an nn.Module, got int"):
        convert_batchnorm(net(), lambda c: c)

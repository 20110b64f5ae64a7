"""build_model: every architecture x norm trains (forward, backward, all gradients)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import pytest
import torch
from torch import nn

from sepbn.models import (
    ARCHS,
    NORM_LAYERS,
    CrossProtocolModel,
    LandmarkRegressor,
    PooledBranch,
    VanillaBranch,
    VanillaCNN,
    build_model,
    make_norm_layer,
)
from sepbn.nn import DomainBatchNorm2d, SepBatchNorm2d, SimpleSepBatchNorm2d, domain_routing

TINY = {
    "vanilla_cnn": dict(width_mult=0.125, input_size=64),
    "resnext50": dict(width_mult=0.25, input_size=32),
    "mobilenet_v2": dict(width_mult=0.25, input_size=32),
}
NORM_TYPES = {
    "bn": nn.BatchNorm2d,
    "sepbn": SepBatchNorm2d,
    "simple_sepbn": SimpleSepBatchNorm2d,
    "domain_bn": DomainBatchNorm2d,
}
BATCH = 6
DOMAINS = torch.arange(BATCH) % 3  # every domain present, two samples each


def _routing(model: nn.Module, norm: str) -> contextlib.AbstractContextManager:
    return domain_routing(model, DOMAINS) if norm == "domain_bn" else contextlib.nullcontext()


def _assert_all_gradients(model: nn.Module) -> None:
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing[:5]}"
    zero = [n for n, p in model.named_parameters() if not p.grad.abs().sum() > 0]
    assert not zero, f"zero gradient for {zero[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("norm", list(NORM_TYPES))
@pytest.mark.parametrize("arch", ARCHS)
def test_every_arch_and_norm_trains(arch: str, norm: str, randomize: Callable) -> None:
    # At tiny widths SimpleSepBN's default reduction 16 leaves one or two squeeze units
    # whose ReLU can be dead for the whole batch (a true zero gradient).
    norm_kwargs = {"reduction": 1} if norm == "simple_sepbn" else None
    model = build_model(arch, num_points=5, norm=norm, norm_kwargs=norm_kwargs, **TINY[arch])
    assert isinstance(model, LandmarkRegressor)
    if norm != "bn":
        assert any(type(m) is NORM_TYPES[norm] for m in model.modules())
    # Distinct SepBN sets, so that the attention gets a non-zero gradient.
    randomize(model)
    size = TINY[arch]["input_size"]
    with _routing(model, norm):
        out = model(torch.rand(BATCH, 3, size, size))
    assert out.shape == (BATCH, 5, 2)
    out.square().sum().backward()
    _assert_all_gradients(model)


@pytest.mark.parametrize("arch", ARCHS)
def test_every_arch_as_cross_protocol_model(arch: str, randomize: Callable) -> None:
    heads = {"cofw": 29, "aflw": 19}
    model = build_model(arch, heads=heads, norm="sepbn", **TINY[arch])
    assert isinstance(model, CrossProtocolModel)
    assert model.protocols == ["cofw", "aflw"]
    branch_type = VanillaBranch if arch == "vanilla_cnn" else PooledBranch
    assert all(isinstance(b, branch_type) for b in model.branches.values())
    assert all(b.norm is None for b in model.branches.values())  # Fig. 5: the conv alone
    randomize(model)
    size = TINY[arch]["input_size"]
    out = model(torch.rand(BATCH, 3, size, size), torch.tensor([0, 1, 1, 0, 1, 0]))
    assert out["cofw"].shape == (3, 29, 2) and out["aflw"].shape == (3, 19, 2)
    (out["cofw"].square().sum() + out["aflw"].square().sum()).backward()
    _assert_all_gradients(model)


@pytest.mark.parametrize("arch", ARCHS)
def test_legacy_branch_norm_builds_the_old_branch(arch: str) -> None:
    model = build_model(arch, heads={"cofw": 29}, norm="sepbn", branch_norm=True, **TINY[arch])
    branch = model.branches["cofw"]
    assert isinstance(branch.norm, SepBatchNorm2d) and branch.conv.bias is None


def test_options_reach_the_model() -> None:
    model = build_model(
        "vanilla_cnn",
        num_points=7,
        norm="sepbn",
        norm_kwargs={"num_sets": 4, "num_groups": 8, "pool_size": 2},
        sepbn_blocks=[5],
        **TINY["vanilla_cnn"],
    )
    assert isinstance(model, VanillaCNN)
    layers = [m for m in model.modules() if isinstance(m, SepBatchNorm2d)]
    assert len(layers) == 1 and layers[0] is model.backbone.blocks[5].norm
    assert (layers[0].num_sets, layers[0].num_groups) == (4, 8)
    cnt = build_model("resnext50", heads={"wflw": 98}, branch_conv_kernel=3, **TINY["resnext50"])
    assert cnt.branches["wflw"].conv.kernel_size == (3, 3)
    positions = build_model(
        "mobilenet_v2",
        num_points=3,
        norm="simple_sepbn",
        sepbn_positions={"bn2"},
        **TINY["mobilenet_v2"],
    )
    assert sum(isinstance(m, SimpleSepBatchNorm2d) for m in positions.modules()) == 17


ERROR_CASES = [
    (dict(arch="vgg16"), r"unknown arch 'vgg16'; valid: \['vanilla_cnn', 'resnext50'"),
    (dict(norm="gn"), r"unknown norm 'gn'; valid: \['bn', 'sepbn', 'simple_sepbn'"),
    (dict(num_points=None), "exactly one of num_points"),
    (dict(heads={"cofw": 29}), "exactly one of num_points"),
    (dict(norm="sepbn", norm_kwargs={"groups": 2}), r"\['groups'\] do not fit SepBatchNorm2d"),
    (dict(pretrained=True), "vanilla_cnn has no ImageNet weights"),
    (dict(sepbn_positions={"bn3"}), "use sepbn_blocks"),
    (dict(arch="resnext50", sepbn_blocks=[1]), "use sepbn_positions"),
]


@pytest.mark.parametrize(("kwargs", "match"), ERROR_CASES)
def test_errors_name_the_valid_choices(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_model(**{"arch": "vanilla_cnn", "num_points": 5, **kwargs})


def test_make_norm_layer() -> None:
    assert make_norm_layer("bn") is nn.BatchNorm2d
    layer = make_norm_layer("domain_bn", {"num_domains": 2})(16)
    assert isinstance(layer, DomainBatchNorm2d) and layer.num_domains == 2
    assert set(NORM_LAYERS) == set(NORM_TYPES)

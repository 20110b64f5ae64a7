"""Cross-protocol model (Fig. 5): routing, single-protocol extraction, branch dropping."""

from __future__ import annotations

import copy
from collections.abc import Callable
from functools import partial

import pytest
import torch
from torch import nn

from sepbn.models import (
    CrossProtocolModel,
    LandmarkRegressor,
    PooledBranch,
    VanillaBranch,
    VanillaCNN,
    build_model,
    mobilenet_v2,
)
from sepbn.models.cross_protocol import branch_norm
from sepbn.nn import DomainBatchNorm2d, SepBatchNorm2d, domain_routing

HEADS = {"wflw": 98, "300w": 68, "cofw": 29, "aflw": 19}


def vanilla_cnt(norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d) -> CrossProtocolModel:
    base = VanillaCNN(1, norm_layer, width_mult=0.125, input_size=64)
    branch = partial(VanillaBranch, kernel_size=3, norm_layer=norm_layer, hidden_features=32)
    return CrossProtocolModel(
        base.backbone, base.feature_channels, base.feature_size, HEADS, branch
    )


def mobilenet_cnt() -> CrossProtocolModel:
    base = mobilenet_v2(1, SepBatchNorm2d, width_mult=0.25, input_size=64)
    branch = partial(PooledBranch, norm_layer=SepBatchNorm2d, activation=nn.ReLU6)
    return CrossProtocolModel(
        base.backbone, base.feature_channels, base.feature_size, HEADS, branch
    )


IDS = torch.tensor([2, 0, 0, 3, 2, 0, 3, 2])  # no "300w" sample in this batch


@pytest.mark.parametrize("build", [vanilla_cnt, mobilenet_cnt], ids=["vanilla", "mobilenet"])
def test_routing_equals_each_branch_on_its_rows(
    build: Callable[[], CrossProtocolModel], randomize: Callable
) -> None:
    model = randomize(build()).eval()
    x = torch.rand(len(IDS), 3, 64, 64)
    with torch.no_grad():
        out = model(x, IDS)
        # Slow reference: every sample alone through the backbone and its own branch.
        expected = {
            name: torch.cat(
                [
                    model.branches[name](model.backbone(x[i : i + 1]))
                    for i in range(len(IDS))
                    if model.protocols[IDS[i]] == name
                ]
            )
            for name in model.protocols
            if (model.protocols.index(name) == IDS).any()
        }
    assert list(out) == ["wflw", "cofw", "aflw"]  # protocol order, absent "300w" left out
    for name, pred in out.items():
        assert pred.shape == (int((model.protocols.index(name) == IDS).sum()), HEADS[name], 2)
        assert torch.allclose(pred, expected[name], atol=1e-5), name


def test_training_mode_backbone_once_and_branch_on_its_rows(randomize: Callable) -> None:
    model = randomize(vanilla_cnt(SepBatchNorm2d)).train()
    reference = copy.deepcopy(model)
    x = torch.rand(len(IDS), 3, 64, 64)
    calls = []
    model.backbone.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    out = model(x, IDS)
    # The backbone sees the whole batch once, so its batch statistics cover all protocols.
    assert calls == [len(IDS)]
    features = reference.backbone(x)
    for name, pred in out.items():
        rows = (reference.protocols.index(name) == IDS).nonzero().squeeze(1)
        assert torch.allclose(pred, reference.branches[name](features[rows]), atol=1e-5)
    for a, b in zip(model.buffers(), reference.buffers()):
        assert torch.allclose(a, b)  # same running-statistics updates


def test_single_protocol_batch_and_gradients_reach_only_used_branches() -> None:
    model = vanilla_cnt()
    ids = torch.full((4,), model.protocols.index("cofw"))
    out = model(torch.rand(4, 3, 64, 64), ids)
    assert list(out) == ["cofw"] and out["cofw"].shape == (4, 29, 2)
    out["cofw"].sum().backward()
    assert all(p.grad is not None for p in model.backbone.parameters())
    assert all(p.grad is not None for p in model.branches["cofw"].parameters())
    assert all(p.grad is None for p in model.branches["wflw"].parameters())


def test_single_protocol_model_equals_cross_output(randomize: Callable) -> None:
    model = randomize(vanilla_cnt(SepBatchNorm2d)).eval()
    x = torch.rand(len(IDS), 3, 64, 64)
    single = model.single_protocol("aflw").eval()
    assert isinstance(single, LandmarkRegressor)
    assert single.num_points == 19
    rows = (model.protocols.index("aflw") == IDS).nonzero().squeeze(1)
    with torch.no_grad():
        assert torch.allclose(single(x[rows]), model(x, IDS)["aflw"], atol=1e-5)
    # Shares the modules: the backbone parameters are the same tensors.
    assert single.backbone is model.backbone
    with pytest.raises(KeyError, match="unknown protocol 'wider5'"):
        model.single_protocol("wider5")


def test_keep_branches_drops_and_renumbers() -> None:
    model = vanilla_cnt()
    kept_branch = model.branches["aflw"]
    model.keep_branches(["aflw", "wflw"])
    assert model.protocols == ["wflw", "aflw"]
    assert model.branches["aflw"] is kept_branch
    assert not any(k.startswith("branches.cofw") for k in model.state_dict())
    out = model(torch.rand(5, 3, 64, 64), torch.tensor([1, 0, 1, 0, 1]))
    assert out["aflw"].shape == (3, 19, 2) and out["wflw"].shape == (2, 98, 2)
    with pytest.raises(KeyError, match="unknown protocol 'cofw'"):
        model.keep_branches(["cofw"])
    with pytest.raises(ValueError, match="at least one"):
        model.keep_branches([])


def test_parameter_split_covers_everything_once() -> None:
    model = vanilla_cnt()
    backbone = {id(p) for p in model.backbone_parameters()}
    heads = {id(p) for p in model.head_parameters()}
    assert backbone and heads and not backbone & heads
    assert backbone | heads == {id(p) for p in model.parameters()}
    single = model.single_protocol("wflw")
    assert {id(p) for p in single.backbone_parameters()} == backbone
    assert {id(p) for p in single.head_parameters()} == {
        id(p) for p in model.branches["wflw"].parameters()
    }


def test_protocol_id_errors() -> None:
    model = vanilla_cnt()
    x = torch.rand(3, 3, 64, 64)
    with pytest.raises(ValueError, match=r"protocol id 4 out of range; valid ids 0\.\.3"):
        model(x, torch.tensor([0, 4, 1]))
    with pytest.raises(ValueError, match="protocol id -1"):
        model(x, torch.tensor([0, -1, 1]))
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        model(x, torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="integers"):
        model(x, torch.tensor([0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="heads is empty"):
        CrossProtocolModel(model.backbone, 8, 1, {}, VanillaBranch)
    with pytest.raises(ValueError, match=r"heads\['cofw'\]"):
        CrossProtocolModel(model.backbone, 8, 1, {"cofw": 0}, VanillaBranch)


def test_domain_labels_follow_the_rows_into_branches() -> None:
    model = vanilla_cnt(partial(DomainBatchNorm2d, num_domains=2)).eval()
    for layer in model.modules():
        if isinstance(layer, DomainBatchNorm2d):  # make the two domains disagree
            with torch.no_grad():
                layer.branches[1].weight.mul_(3.0)
    x = torch.rand(len(IDS), 3, 64, 64)
    domains = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1])
    with torch.no_grad(), domain_routing(model, domains):
        out = model(x, IDS)
        for name, pred in out.items():
            rows = (model.protocols.index(name) == IDS).nonzero().squeeze(1)
            single = model.single_protocol(name)
            with domain_routing(single, domains[rows]):
                assert torch.allclose(pred, single(x[rows]), atol=1e-5)


@pytest.mark.parametrize("norm_layer", [nn.BatchNorm2d, SepBatchNorm2d])
def test_single_face_branch_on_1x1_map_uses_running_statistics(norm_layer) -> None:
    # 64 px input -> 1x1 shared map: the one "cofw" face has no batch statistics.
    model = vanilla_cnt(norm_layer).train()
    ids = torch.tensor([0, 0, 0, 2])
    norm = model.branches["cofw"].norm
    inner = norm if isinstance(norm, nn.BatchNorm2d) else norm.norm
    before = inner.running_mean.clone()
    out = model(torch.rand(4, 3, 64, 64), ids)
    assert out["cofw"].shape == (1, 29, 2)
    assert torch.isfinite(out["cofw"]).all()
    assert norm.training  # restored after the eval-path call
    assert torch.equal(inner.running_mean, before)  # the single face did not update them
    # The branch of the three-face protocol still trains on batch statistics.
    wflw_inner = model.branches["wflw"].norm
    wflw_inner = wflw_inner if isinstance(wflw_inner, nn.BatchNorm2d) else wflw_inner.norm
    assert wflw_inner.num_batches_tracked.item() == 1


class _Failing(nn.BatchNorm2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            raise RuntimeError("boom")
        return super().forward(x)


def test_branch_norm_restores_train_mode_when_the_layer_raises() -> None:
    norm = _Failing(4).train()
    with pytest.raises(RuntimeError, match="boom"):
        branch_norm(norm, torch.rand(1, 4, 1, 1))
    assert norm.training


def test_branch_norm_of_a_single_value_equals_the_eval_path() -> None:
    norm = SepBatchNorm2d(4, num_sets=3, num_groups=2, pool_size=1).train()
    with torch.no_grad():
        norm.norm.running_mean.uniform_(-1, 1)
        norm.norm.running_var.uniform_(0.5, 2)
    x = torch.rand(1, 4, 1, 1)
    out = branch_norm(norm, x)
    norm.eval()
    assert torch.equal(out, norm(x))


def test_branch_treats_every_face_alone_in_training() -> None:
    # A face's branch output must not depend on which faces of its protocol share the batch:
    # the legacy branch's norm normalized them together (and one face alone differently).
    torch.manual_seed(0)
    x = torch.randn(6, 16, 1, 1)
    branch = VanillaBranch(16, 1, 5, hidden_features=8).train()
    with torch.no_grad():
        branch.conv.weight.normal_()  # trained away from the identity
    alone = torch.cat([branch(x[i : i + 1]) for i in range(6)])
    assert torch.allclose(branch(x), alone, atol=1e-6)
    legacy = VanillaBranch(16, 1, 5, norm_layer=nn.BatchNorm2d, hidden_features=8).train()
    legacy_alone = torch.cat([legacy(x[i : i + 1]) for i in range(6)])
    assert not torch.allclose(legacy(x), legacy_alone, atol=1e-3)


def test_branch_convolution_starts_as_the_identity() -> None:
    branch = VanillaBranch(8, 2, 5, kernel_size=3, hidden_features=4)
    x = torch.randn(3, 8, 2, 2)
    assert torch.allclose(branch.conv(x), x, atol=1e-6)


def test_one_branch_cnt_model_starts_as_the_plain_model() -> None:
    # MobileNetV2's features are ReLU6 outputs, so act(identity(features)) == features: the
    # freshly built one-branch CNT model computes the plain model's output exactly.
    torch.manual_seed(0)
    cnt = build_model("mobilenet_v2", heads={"300w": 68}, width_mult=0.25, input_size=64)
    plain = LandmarkRegressor(
        cnt.backbone, cnt.branches["300w"].head, 68, cnt.feature_channels, cnt.feature_size
    )
    cnt.eval()
    x = torch.rand(4, 3, 64, 64)
    out = cnt(x, torch.zeros(4, dtype=torch.long))["300w"]
    assert torch.allclose(out, plain(x), atol=1e-6)

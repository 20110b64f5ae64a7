"""DomainBatchNorm2d (brute-force SepBN, Section III-A), domain routing and Table II's helper."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from helpers import randomize
from sepbn.nn import DomainBatchNorm2d, best_of_domains, domain_routing, find_domain_batchnorms

DTYPE = torch.float64


def randomized(num_features: int = 4, num_domains: int = 3, **kwargs) -> DomainBatchNorm2d:
    return randomize(DomainBatchNorm2d(num_features, num_domains, **kwargs).to(DTYPE))


@pytest.mark.parametrize("affine", [True, False])
def test_train_each_domain_is_its_own_batchnorm(affine: bool) -> None:
    layer = randomized(affine=affine)
    reference = [copy.deepcopy(b) for b in layer.branches]
    x = torch.randn(7, 4, 3, 5, dtype=DTYPE)
    domains = torch.tensor([2, 0, 2, 2, 0, 0, 2])  # domain 1 absent
    y = layer(x, domains)
    for k in (0, 2):
        rows = domains == k
        torch.testing.assert_close(y[rows], reference[k](x[rows]))
        torch.testing.assert_close(layer.branches[k].running_var, reference[k].running_var)
    untouched = layer.branches[1]
    assert int(untouched.num_batches_tracked) == 0  # an absent domain keeps its statistics
    torch.testing.assert_close(untouched.running_mean, reference[1].running_mean)


def test_eval_uses_each_samples_branch() -> None:
    layer = randomized().eval()
    x = torch.randn(5, 4, 3, 3, dtype=DTYPE, requires_grad=True)
    domains = torch.tensor([1, 0, 2, 1, 2])
    y = layer(x, domains)
    for i, d in enumerate(domains.tolist()):
        torch.testing.assert_close(y[i : i + 1], layer.branches[d](x[i : i + 1]))
    y.sum().backward()  # the vectorized eval path is differentiable
    assert x.grad is not None and layer.branches[0].weight.grad is not None


def test_gradients_reach_only_the_used_branches() -> None:
    layer = randomized()
    x = torch.randn(6, 4, 3, 3, dtype=DTYPE, requires_grad=True)
    (
        layer(x, torch.tensor([0, 0, 0, 2, 2, 2])) * torch.randn(6, 4, 3, 3, dtype=DTYPE)
    ).sum().backward()
    assert layer.branches[0].weight.grad.abs().sum() > 0
    assert layer.branches[2].weight.grad.abs().sum() > 0
    assert layer.branches[1].weight.grad is None
    assert x.grad.abs().sum() > 0


def test_routing_context_sets_and_restores_labels() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 1), DomainBatchNorm2d(4), nn.ReLU(), DomainBatchNorm2d(4))
    names = [name for name, _ in find_domain_batchnorms(net)]
    assert names == ["1", "3"]
    x = torch.randn(4, 3, 5, 5)
    outer, inner = torch.tensor([0, 1, 2, 0]), torch.tensor([2, 2, 1, 1])
    with domain_routing(net, outer):
        y_outer = net(x)
        with domain_routing(net, inner):
            assert all(torch.equal(m.routed_domains, inner) for _, m in find_domain_batchnorms(net))
        assert all(torch.equal(m.routed_domains, outer) for _, m in find_domain_batchnorms(net))
        torch.testing.assert_close(net(x), y_outer)  # the same routing, the same output
    assert all(m.routed_domains is None for _, m in find_domain_batchnorms(net))
    with pytest.raises(RuntimeError, match="domain_routing"):
        net(x)


def test_routing_restores_labels_after_an_exception() -> None:
    net = nn.Sequential(DomainBatchNorm2d(4))
    with pytest.raises(KeyError), domain_routing(net, torch.tensor([0, 1])):
        raise KeyError("boom")
    assert net[0].routed_domains is None


@pytest.mark.parametrize(
    ("domains", "match"),
    [
        (torch.tensor([0, 3]), r"domain label 3 is out of range: valid labels are 0\.\.2"),
        (torch.tensor([-1, 0]), r"domain label -1 is out of range"),
        (torch.tensor([[0, 1]]), r"1-D integer tensor"),
        (torch.tensor([0.0, 1.0]), r"integer tensor, got dtype torch.float32"),
    ],
)
def test_invalid_labels(domains: torch.Tensor, match: str) -> None:
    net = nn.Sequential(DomainBatchNorm2d(4))
    with pytest.raises(ValueError, match=match), domain_routing(net, domains):
        pass
    with pytest.raises(ValueError, match=match):
        net[0](torch.randn(2, 4, 3, 3), domains)


def test_label_count_must_match_batch_and_model_needs_layers() -> None:
    layer = DomainBatchNorm2d(4)
    with pytest.raises(ValueError, match="got 3 domain labels for a batch of 2"):
        layer(torch.randn(2, 4, 3, 3), torch.tensor([0, 1, 2]))
    net = nn.Sequential(layer)
    with domain_routing(net, torch.tensor([0, 1, 2])):
        with_three_labels = pytest.raises(ValueError, match="set 3 labels, but the batch")
        with with_three_labels:
            net(torch.randn(2, 4, 3, 3))
    no_layers = pytest.raises(ValueError, match="ReLU has no DomainBatchNorm2d")
    with no_layers, domain_routing(nn.ReLU(), torch.tensor([0])):
        pass


def test_best_of_domains_keeps_lowest_error_per_sample() -> None:
    net = nn.Sequential(DomainBatchNorm2d(2, num_domains=3), nn.Flatten()).eval()
    with torch.no_grad():
        for k, branch in enumerate(net[0].branches):
            branch.bias.fill_(float(k))  # domain k shifts every value by k
    images = torch.zeros(3, 2, 1, 1)
    target = torch.tensor([[2.0, 2.0], [0.0, 0.0], [1.1, 0.9]])

    def error_fn(pred: torch.Tensor) -> torch.Tensor:
        return (pred - target).abs().mean(dim=1)

    best, domain = best_of_domains(net, images, 3, error_fn)
    assert domain.tolist() == [2, 0, 1]
    torch.testing.assert_close(best, torch.tensor([[2.0, 2.0], [0.0, 0.0], [1.0, 1.0]]))
    # ties keep the lower domain index
    _, tie = best_of_domains(net, images, 3, lambda pred: torch.zeros(3))
    assert tie.tolist() == [0, 0, 0]


def test_best_of_domains_validates_error_fn_and_output() -> None:
    net = nn.Sequential(DomainBatchNorm2d(2)).eval()
    images = torch.randn(3, 2, 2, 2)
    with pytest.raises(ValueError, match=r"shape \(3,\), got \(3, 1\)"):
        best_of_domains(net, images, 2, lambda pred: torch.zeros(3, 1))
    with pytest.raises(ValueError, match="num_domains"):
        best_of_domains(net, images, 0, lambda pred: torch.zeros(3))


def test_init_from_batchnorm_copies_into_every_branch() -> None:
    bn = nn.BatchNorm2d(4, eps=1e-3, momentum=0.3)
    with torch.no_grad():
        bn.weight.normal_()
        bn.bias.normal_()
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2)
    layer = DomainBatchNorm2d(4)
    layer.init_from_batchnorm(bn)
    bn.eval()
    layer.eval()
    x = torch.randn(3, 4, 2, 2)
    for d in range(3):
        torch.testing.assert_close(layer(x, torch.full((3,), d)), bn(x))
        assert layer.branches[d].momentum == 0.3
    with pytest.raises(ValueError, match="channel counts differ"):
        layer.init_from_batchnorm(nn.BatchNorm2d(5))

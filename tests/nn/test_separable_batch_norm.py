"""SepBatchNorm2d against the paper's equations (Section III-B, Eqs. 5-7), on both paths.

Every identity runs on the plain modules (``sepbn_path("plain")``) and on the C++ op
(``sepbn_path("native")``, which raises if the op cannot be built); ``PATHS`` parametrizes
them.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from helpers import randomize
from sepbn.nn import SepBatchNorm2d, sepbn_path
from sepbn.nn.dispatch import use_native

DTYPE = torch.float64
PATHS = ["plain", "native"]


def reference(layer: SepBatchNorm2d, x: Tensor) -> tuple[Tensor, Tensor]:
    """Slow SepBN written straight from Section III-B: returns (y, π).

    Attention: adaptive max pooling to T×T, 1×1 convolution C → G, flatten (position-major,
    as documented), MLP, temperature softmax over k (Eq. 5) or arg-max one-hot (Table III).
    Mapping: one loop per sample and channel group (Eqs. 6-7).
    """
    n, c = x.shape[:2]
    g, k = layer.num_groups, layer.num_sets
    pooled = F.adaptive_max_pool2d(x, layer.pool_size)
    reduced = F.conv2d(pooled, layer.reduce.weight, layer.reduce.bias)  # (N, G, T, T)
    flat = reduced.permute(0, 2, 3, 1).reshape(n, -1)
    logits = layer.fc2(torch.relu(layer.fc1(flat))).view(n, g, k)
    if layer.aggregation == "soft":
        e = torch.exp(logits / layer.temperature)
        pi = e / e.sum(dim=-1, keepdim=True)
    else:
        pi = F.one_hot(logits.argmax(dim=-1), k).to(x.dtype)
    norm = layer.norm
    if norm.training:
        mean = x.mean(dim=(0, 2, 3))
        var = x.var(dim=(0, 2, 3), unbiased=False)
    else:
        mean, var = norm.running_mean, norm.running_var
    x_hat = (x - mean[:, None, None]) / torch.sqrt(var[:, None, None] + norm.eps)  # Eq. 1
    y = torch.empty_like(x)
    m = c // g
    for i in range(n):
        for j in range(g):
            ch = slice(j * m, (j + 1) * m)
            gamma = sum(pi[i, j, s] * layer.weight[s, ch] for s in range(k))  # Eq. 6
            beta = sum(pi[i, j, s] * layer.bias[s, ch] for s in range(k))
            y[i, ch] = gamma[:, None, None] * x_hat[i, ch] + beta[:, None, None]  # Eq. 7
    return y, pi


CONFIGS = [
    # (C, K, G, T, aggregation, H, W)
    (6, 3, 2, 3, "soft", 5, 7),
    (8, 2, 4, 2, "soft", 4, 4),
    (4, 1, 1, 1, "soft", 3, 5),
    (6, 3, 3, 4, "hard", 6, 5),
    (12, 4, 2, 3, "soft", 16, 16),
]


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("path", PATHS)
def test_forward_matches_loop_reference(config, training: bool, path: str) -> None:
    c, k, g, t, aggregation, h, w = config
    layer = SepBatchNorm2d(c, k, g, t, temperature=1.7, aggregation=aggregation).to(DTYPE)
    randomize(layer)
    layer.train(training)
    ref_layer = copy.deepcopy(layer)
    x = torch.randn(5, c, h, w, dtype=DTYPE) * 2 + 0.5
    layer.keep_attention = True
    with torch.no_grad(), sepbn_path(path):
        assert use_native(layer, x) == (path == "native")
        y = layer(x)
    y_ref, pi_ref = reference(ref_layer, x)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(layer.last_attention, pi_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.attention(x), pi_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("path", PATHS)
def test_running_stats_follow_batchnorm(path: str) -> None:
    for momentum in (0.1, None):
        layer = randomize(SepBatchNorm2d(6, momentum=momentum), stats=False)
        bn = nn.BatchNorm2d(6, momentum=momentum)
        for _ in range(3):
            x = torch.randn(4, 6, 5, 5) * 3 + 1
            with sepbn_path(path):
                layer(x)
            bn(x)
        torch.testing.assert_close(layer.norm.running_mean, bn.running_mean)
        torch.testing.assert_close(layer.norm.running_var, bn.running_var)
        assert int(layer.norm.num_batches_tracked) == int(bn.num_batches_tracked) == 3


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("num_sets", [1, 3])
def test_equal_sets_equal_batchnorm(path: str, num_sets: int) -> None:
    """K = 1, or all K sets equal to a BN's affine: output, input gradient and statistics
    equal nn.BatchNorm2d's in training, output in eval."""
    bn = nn.BatchNorm2d(8).to(DTYPE)
    with torch.no_grad():
        bn.weight.normal_()
        bn.bias.normal_()
    layer = randomize(SepBatchNorm2d(8, num_sets=num_sets, num_groups=4), stats=False).to(DTYPE)
    with torch.no_grad():
        layer.weight.copy_(bn.weight.expand(num_sets, -1))
        layer.bias.copy_(bn.bias.expand(num_sets, -1))
    for _ in range(2):  # train mode: batch statistics, running statistics updated
        x = (torch.randn(3, 8, 4, 6, dtype=DTYPE) * 2 - 1).requires_grad_()
        with sepbn_path(path):
            assert use_native(layer, x) == (path == "native")
            y = layer(x)
        y_bn = bn(x)
        torch.testing.assert_close(y, y_bn, rtol=1e-12, atol=1e-12)
        grad = torch.randn_like(y)
        (gx,) = torch.autograd.grad(y, x, grad)
        (gx_bn,) = torch.autograd.grad(y_bn, x, grad)
        torch.testing.assert_close(gx, gx_bn, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(layer.norm.running_mean, bn.running_mean)
    torch.testing.assert_close(layer.norm.running_var, bn.running_var)
    layer.eval()
    bn.eval()
    x = torch.randn(3, 8, 4, 6, dtype=DTYPE)
    with torch.no_grad(), sepbn_path(path):
        assert use_native(layer, x) == (path == "native")
        torch.testing.assert_close(layer(x), bn(x), rtol=1e-12, atol=1e-12)


def test_fresh_layer_is_batchnorm() -> None:
    layer = SepBatchNorm2d(6)
    bn = nn.BatchNorm2d(6)
    x = torch.randn(4, 6, 5, 5)
    torch.testing.assert_close(layer(x), bn(x))
    assert torch.equal(layer.weight, torch.ones(3, 6)) and torch.equal(
        layer.bias, torch.zeros(3, 6)
    )


def test_attention_rows_sum_to_one_and_temperature_limits() -> None:
    layer = randomize(SepBatchNorm2d(8, num_sets=4, num_groups=2))
    x = torch.randn(6, 8, 7, 7)
    pi = layer.attention(x)
    assert pi.shape == (6, 2, 4)
    torch.testing.assert_close(pi.sum(dim=-1), torch.ones(6, 2))
    assert (pi.max(dim=-1).values - pi.min(dim=-1).values).max() > 0.05  # not trivially uniform
    layer.temperature = 1e6
    torch.testing.assert_close(layer.attention(x), torch.full((6, 2, 4), 0.25), atol=1e-4, rtol=0)
    layer.aggregation = "hard"
    hard = layer.attention(x)
    assert set(hard.unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(hard.sum(dim=-1), torch.ones(6, 2))
    # the one-hot picks the soft arg-max at any temperature
    layer.aggregation = "soft"
    layer.temperature = 1.0
    assert torch.equal(hard.argmax(-1), layer.attention(x).argmax(-1))


def test_attention_reads_the_input_not_the_normalized_tensor() -> None:
    """Adding a per-channel constant leaves x̂ unchanged but changes the attention input."""
    layer = randomize(SepBatchNorm2d(6)).to(DTYPE)
    x = torch.randn(4, 6, 5, 5, dtype=DTYPE)
    shifted = x + torch.linspace(-3, 3, 6, dtype=DTYPE)[:, None, None]
    assert not torch.allclose(layer.attention(x), layer.attention(shifted))


def test_eval_sample_independent_of_batch() -> None:
    layer = randomize(SepBatchNorm2d(6)).eval()
    a = torch.randn(1, 6, 5, 5)
    y1 = layer(torch.cat([a, torch.randn(3, 6, 5, 5)]))[:1]
    y2 = layer(torch.cat([a, 10 * torch.randn(5, 6, 5, 5)]))[:1]
    torch.testing.assert_close(y1, y2)
    torch.testing.assert_close(y1, layer(a))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("training", [True, False])
def test_every_parameter_gets_a_gradient(path: str, training: bool) -> None:
    layer = randomize(SepBatchNorm2d(8, num_groups=2)).train(training)
    x = torch.randn(4, 8, 6, 6, requires_grad=True)
    with sepbn_path(path):
        # eval with a gradient wanted: plain on both paths (the eval op has no backward)
        assert use_native(layer, x) == (path == "native" and training)
        (layer(x) * torch.randn(4, 8, 6, 6)).sum().backward()
    for name, p in [("x", x), *layer.named_parameters()]:
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name


def _attention_parameters(layer: SepBatchNorm2d) -> list[nn.Parameter]:
    return [*layer.reduce.parameters(), *layer.fc1.parameters(), *layer.fc2.parameters()]


@pytest.mark.parametrize("path", PATHS)
def test_hard_aggregation_is_one_hot_and_trains_no_attention(path: str) -> None:
    """π is one-hot, and the arg-max passes no gradient to the attention, as the paper
    reports (Table III)."""
    layer = randomize(SepBatchNorm2d(6, aggregation="hard"))
    layer.keep_attention = True
    x = torch.randn(4, 6, 5, 5, requires_grad=True)
    with sepbn_path(path):
        assert use_native(layer, x) == (path == "native")
        (layer(x) * torch.randn(4, 6, 5, 5)).sum().backward()
    pi = layer.last_attention
    assert set(pi.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(pi.sum(dim=-1), torch.ones(4, 2))
    assert torch.equal(pi.argmax(-1), layer.attention_logits(x).argmax(-1))
    assert layer.weight.grad.abs().sum() > 0 and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in _attention_parameters(layer))


@pytest.mark.parametrize("temperature", [1.0, 30.0])
@pytest.mark.parametrize("path", PATHS)
def test_symmetry_breaks_in_training(temperature: float, path: str) -> None:
    """Equal initial sets become different and the attention starts to learn."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), SepBatchNorm2d(8, temperature=temperature))
    layer = net[1]
    attention = _attention_parameters(layer)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
    x, target = torch.randn(8, 3, 6, 6), torch.randn(8, 8, 6, 6)
    attention_grads = []
    for _ in range(3):
        optimizer.zero_grad()
        with sepbn_path(path):
            F.mse_loss(net(x), target).backward()
        attention_grads.append(sum(float(p.grad.abs().sum()) for p in attention))
        optimizer.step()
    # Equal sets: ∂L/∂π is the same for every k, so the softmax passes (rounding) zero.
    assert attention_grads[0] < 1e-5
    assert attention_grads[-1] > max(1e3 * attention_grads[0], 1e-6)
    for k in range(1, 3):
        assert (layer.weight[k] - layer.weight[0]).abs().max() > 1e-6
        assert (layer.bias[k] - layer.bias[0]).abs().max() > 1e-6


def test_track_running_stats_false_uses_batch_statistics() -> None:
    layer = randomize(SepBatchNorm2d(6, track_running_stats=False), stats=False).to(DTYPE)
    assert layer.norm.running_mean is None
    x = torch.randn(4, 6, 5, 5, dtype=DTYPE)
    for training in (True, False):
        layer.train(training)
        ref = copy.deepcopy(layer).train()  # the reference normalizes with batch statistics
        torch.testing.assert_close(layer(x), reference(ref, x)[0])


def test_one_value_per_channel_raises_like_batchnorm() -> None:
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        SepBatchNorm2d(4)(torch.randn(1, 4, 1, 1))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_features": 6, "num_groups": 4}, "num_groups=4 must divide num_features=6"),
        ({"num_features": 6, "num_sets": 0}, "num_sets"),
        ({"num_features": 6, "pool_size": 0}, "pool_size"),
        ({"num_features": 6, "temperature": 0.0}, "temperature must be > 0"),
        ({"num_features": 6, "temperature": -1.0}, "temperature must be > 0"),
        ({"num_features": 6, "aggregation": "mean"}, "aggregation must be one of"),
        ({"num_features": 0}, "num_features"),
        ({"num_features": 6, "hidden_features": 0}, "hidden_features"),
    ],
)
def test_invalid_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SepBatchNorm2d(**kwargs)


def test_wrong_input_shape_names_it() -> None:
    layer = SepBatchNorm2d(6)
    with pytest.raises(ValueError, match=r"\(N, 6, H, W\), got \(2, 5, 3, 3\)"):
        layer(torch.randn(2, 5, 3, 3))
    with pytest.raises(ValueError, match=r"got \(2, 6, 3\)"):
        layer(torch.randn(2, 6, 3))


def test_temperature_is_a_saved_buffer_and_validated() -> None:
    layer = SepBatchNorm2d(6, temperature=30.0)
    assert layer.temperature == 30.0
    layer.temperature = 2.5
    assert layer.temperature == 2.5 and layer.state_dict()["tau"].item() == 2.5
    with pytest.raises(ValueError, match="temperature must be > 0"):
        layer.temperature = 0.0
    assert layer.temperature == 2.5


def test_extra_repr_and_parameter_shapes() -> None:
    layer = SepBatchNorm2d(64, num_sets=3, num_groups=2, pool_size=3, temperature=30.0)
    text = repr(layer)
    for part in ("64", "num_sets=3", "num_groups=2", "pool_size=3", "temperature=30", "'soft'"):
        assert part in text
    assert layer.weight.shape == layer.bias.shape == (3, 64)
    assert isinstance(layer.norm, nn.BatchNorm2d) and not layer.norm.affine
    assert layer.fc1.in_features == 2 * 3 * 3 and layer.fc2.out_features == 2 * 3
    assert layer.fc1.out_features == layer.fc2.in_features == 32 and "hidden_features=32" in text
    assert not hasattr(layer, "mlp")


@pytest.mark.parametrize("inside_a_model", [False, True])
def test_old_state_dict_with_mlp_keys_loads(inside_a_model: bool) -> None:
    """Checkpoints from before issue 21 name the attention MLP ``mlp.0`` / ``mlp.2``: they
    load strictly into ``fc1`` / ``fc2`` (also inside a model), and give the same output."""
    source = randomize(SepBatchNorm2d(6, hidden_features=7))
    source.temperature = 3.0
    target_layer = SepBatchNorm2d(6, hidden_features=7)
    model, target = source, target_layer
    if inside_a_model:
        model, target = nn.Sequential(nn.Identity(), source), nn.Sequential(nn.Identity(), target)
    prefix = "1." if inside_a_model else ""
    old = {}
    for key, value in model.state_dict().items():
        for new_name, old_name in (("fc1.", "mlp.0."), ("fc2.", "mlp.2.")):
            if key.startswith(prefix + new_name):
                key = prefix + old_name + key.removeprefix(prefix + new_name)
        old[key] = value.clone()
    expected_old = {f"{prefix}mlp.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")}
    assert {k for k in old if "mlp." in k} == expected_old and not any("fc" in k for k in old)
    target.load_state_dict(old)  # strict: no key missing or left over
    for key, value in model.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
    x = torch.randn(3, 6, 5, 5)
    for training in (True, False):
        source.train(training)
        target_layer.train(training)
        with torch.no_grad():
            torch.testing.assert_close(target(x), model(x))

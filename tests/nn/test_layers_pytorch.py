"""The SepBN layers work the way PyTorch users expect: serialization, compile, autocast,
memory formats, SyncBatchNorm, ONNX and torch.func (gradcheck of both paths, plain and
native: test_native.py)."""

from __future__ import annotations

import copy
import warnings
from contextlib import nullcontext

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from helpers import randomize
from sepbn.nn import (
    DomainBatchNorm2d,
    SepBatchNorm2d,
    SimpleSepBatchNorm2d,
    domain_routing,
    functional,
    sepbn_path,
)
from sepbn.nn.functional import mix_sets

DTYPE = torch.float64


def small_net(norm: nn.Module, channels: int = 6) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, channels, 3, padding=1), norm, nn.ReLU(), nn.Conv2d(channels, 2, 1)
    )


LAYERS = {
    "sep": lambda: SepBatchNorm2d(6, num_sets=3, num_groups=2, pool_size=3),
    "sep-hard": lambda: SepBatchNorm2d(6, aggregation="hard"),
    "simple": lambda: SimpleSepBatchNorm2d(6, num_sets=3, reduction=2),
}


@pytest.mark.parametrize("kind", [*LAYERS, "domain"])
def test_state_dict_round_trip(kind: str, tmp_path) -> None:
    make = (lambda: DomainBatchNorm2d(6)) if kind == "domain" else LAYERS[kind]
    source = randomize(small_net(make()))
    if kind != "domain":
        source[1].temperature = 7.0
        source[1].norm.num_batches_tracked.fill_(5)
    torch.save(source.state_dict(), tmp_path / "weights.pt")
    target = small_net(make())
    target.load_state_dict(torch.load(tmp_path / "weights.pt", weights_only=True))
    assert source.state_dict().keys() == target.state_dict().keys()
    for key, value in source.state_dict().items():
        assert torch.equal(value, target.state_dict()[key]), key
    if kind != "domain":
        assert target[1].temperature == 7.0
    x = torch.randn(4, 3, 6, 6)
    source.eval()
    target.eval()
    domains = torch.tensor([0, 2, 1, 0])
    with domain_routing(source, domains) if kind == "domain" else nullcontext():
        y_source = source(x)
    with domain_routing(target, domains) if kind == "domain" else nullcontext():
        torch.testing.assert_close(target(x), y_source)


def test_is_exporting_is_true_under_torch_export_only() -> None:
    """Eager and ``torch.compile``: False; ``torch.export``: True (torch 2.11's dynamo folds
    ``torch.compiler.is_exporting()`` to True under a plain compile; the dispatch must not)."""
    seen: list[bool] = []

    class Probe(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(functional.is_exporting())
            return x + 1

    x = torch.randn(3)
    Probe()(x)
    torch._dynamo.reset()
    torch.compile(Probe(), backend="eager", fullgraph=True)(x)
    torch.export.export(Probe(), (x,))
    assert seen[:2] == [False, False] and seen[-1] is True


@pytest.mark.parametrize("path", ["auto", "plain"])
@pytest.mark.parametrize("kind", LAYERS)
def test_torch_compile_traces_whole_layer(kind: str, path: str) -> None:
    """fullgraph=True: dynamo traces the layer with no graph break, train and eval, on the
    C++ op ("auto" on the CPU) and on the plain path; both equal the eager plain path."""
    torch._dynamo.reset()
    eager = randomize(small_net(LAYERS[kind]()))
    compiled_net = copy.deepcopy(eager)
    compiled = torch.compile(compiled_net, backend="aot_eager", fullgraph=True)
    x = torch.randn(4, 3, 7, 7)
    with sepbn_path("plain"):
        y_eager = eager(x)
    with sepbn_path(path):  # type: ignore[arg-type]
        y_compiled = compiled(x)
    torch.testing.assert_close(y_compiled, y_eager)
    y_eager.square().sum().backward()
    y_compiled.square().sum().backward()
    for (name, p_eager), p_compiled in zip(eager.named_parameters(), compiled_net.parameters()):
        if p_eager.grad is None:
            assert p_compiled.grad is None, name
        else:
            # float32, summed in different orders by the two paths: agreement to 1e-5 of
            # the gradient's largest entry (the convolution's bias, which feeds a batch
            # norm, has a true gradient of 0 and a value that is rounding noise).
            atol = 1e-5 * (1.0 + float(p_eager.grad.abs().max()))
            torch.testing.assert_close(
                p_compiled.grad, p_eager.grad, rtol=1e-5, atol=atol, msg=name
            )
    torch.testing.assert_close(compiled_net[1].norm.running_var, eager[1].norm.running_var)
    eager.eval()
    compiled.eval()
    with torch.no_grad():
        with sepbn_path(path):  # type: ignore[arg-type]
            y_compiled = compiled(x)
        with sepbn_path("plain"):
            torch.testing.assert_close(y_compiled, eager(x))


def _mapping_float64(layer: nn.Module, x: torch.Tensor, pi: torch.Tensor):
    """The layer's normalization and mapping (Eqs. 1, 6, 7) in float64, with given weights π.

    Returns the output and the magnitude M of the terms the layer adds up: |γ̂ x̂| + |β̂| in
    training, and |a x| + |b| in eval, where the running statistics are folded into
    y = a x + b (a = γ̂ / σ, b = β̂ - a μ may be large and cancel).
    """
    x = x.double()
    scale, shift = mix_sets(pi.double(), layer.weight.double(), layer.bias.double())  # (N, C)
    if layer.training:
        mean, var = x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3), unbiased=False)
    else:
        mean, var = layer.norm.running_mean.double(), layer.norm.running_var.double()
    a = scale / torch.sqrt(var + layer.eps)  # (N, C)
    b = shift - a * mean
    a, b, shift = a[..., None, None], b[..., None, None], shift[..., None, None]
    if layer.training:
        mapped = (a * (x - mean[:, None, None])).abs()  # |γ̂ x̂|
        return a * x + b, mapped + shift.abs()
    return a * x + b, (a * x).abs() + b.abs()


@pytest.mark.parametrize("kind", LAYERS)
@pytest.mark.parametrize("training", [True, False])
def test_cpu_autocast_bfloat16(kind: str, training: bool) -> None:
    """Under autocast the layer computes in bf16 only what bf16 precision explains.

    bfloat16 keeps 8 significant bits: each rounding of a value v errs by at most
    u·|v|, u = 2^-8. The attention MLP runs in bf16 (autocast's choice), so the weights π
    differ from float32's (and a hard arg-max may flip); the references below use the π the
    layer used. The layer then rounds at most 4 times (x̂, γ̂, β̂ and the output in training;
    a, b and the output in eval), so |error| <= 4 u M with M the magnitude of its terms.
    The next convolution rounds its weights and output, and sums in float32.
    """
    u = 2.0**-8
    net = randomize(small_net(LAYERS[kind]())).train(training)
    layer = net[1]
    layer.keep_attention = True
    x = torch.randn(4, 3, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hidden = net[0](x)
        normalized = layer(hidden)
        y = net[3](net[2](normalized))
    assert hidden.dtype == normalized.dtype == torch.bfloat16  # the layer keeps the input dtype
    expected, magnitude = _mapping_float64(layer, hidden, layer.last_attention)
    error = (normalized.double() - expected).abs()
    assert (error <= 4 * u * magnitude).all(), float((error / magnitude).max() / u)
    conv = net[3]
    w, b = conv.weight.double(), conv.bias.double()
    z = F.relu(expected)
    y_expected = F.conv2d(z, w, b)
    bound = F.conv2d(4 * u * magnitude, w.abs())  # the layer's error, through the conv
    bound += u * (2 * F.conv2d(z, w.abs(), b.abs()) + y_expected.abs())  # the conv's own
    assert ((y.double() - y_expected).abs() <= bound).all()
    y.float().square().mean().backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in net.parameters())
    # A float32 input straight into the layer under autocast: only the attention runs in
    # bf16, the normalization and mapping keep float32 (the C++ op steps aside).
    direct = torch.randn(4, 6, 5, 5, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(direct)
    assert out.dtype == torch.float32
    out.square().mean().backward()
    assert torch.isfinite(direct.grad).all()
    expected, _ = _mapping_float64(layer, direct.detach(), layer.last_attention)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("path", ["plain", "native"])
@pytest.mark.parametrize("kind", LAYERS)
@pytest.mark.parametrize("training", [True, False])
def test_channels_last_input(kind: str, training: bool, path: str) -> None:
    """A channels-last input gives a channels-last output with NCHW's values and gradient."""
    layer = randomize(LAYERS[kind]()).to(DTYPE).train(training)
    plain = copy.deepcopy(layer)
    x = torch.randn(4, 6, 7, 5, dtype=DTYPE)
    x_cl = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    x = x.requires_grad_()
    with sepbn_path("plain"):
        y = plain(x)
    with sepbn_path(path):  # type: ignore[arg-type]
        y_cl = layer(x_cl)
    assert y_cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y_cl, y)
    grad = torch.randn_like(y)
    y.backward(grad)
    y_cl.backward(grad)
    torch.testing.assert_close(x_cl.grad, x.grad)


@pytest.mark.parametrize("kind", LAYERS)
def test_sync_batchnorm_conversion_leaves_a_working_model(kind: str) -> None:
    net = randomize(small_net(LAYERS[kind]()))
    reference = copy.deepcopy(net)
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    assert isinstance(synced[1], type(reference[1]))
    assert isinstance(synced[1].norm, nn.SyncBatchNorm)
    x = torch.randn(4, 3, 6, 6)
    y, y_ref = synced(x), reference(x)  # one process: SyncBatchNorm needs no communication
    torch.testing.assert_close(y, y_ref)
    y.sum().backward()
    assert synced[1].weight.grad is not None
    torch.testing.assert_close(synced[1].norm.running_mean, reference[1].norm.running_mean)
    synced.eval()
    reference.eval()
    torch.testing.assert_close(synced(x), reference(x))


@pytest.mark.parametrize("kind", ["sep", "simple"])
def test_onnx_export_matches_pytorch(kind: str, tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    net = randomize(small_net(LAYERS[kind]())).eval()
    x = torch.randn(2, 3, 9, 9)
    path = tmp_path / "net.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (x,), str(path), input_names=["x"], output_names=["y"], dynamo=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (y_onnx,) = session.run(None, {"x": x.numpy()})
    with torch.no_grad():
        expected = net(x).numpy()
    assert abs(y_onnx - expected).max() < 1e-4


@pytest.mark.parametrize("kind", ["sep", "simple"])
@pytest.mark.parametrize("training", [True, False])
def test_torch_func_grad_matches_autograd(kind: str, training: bool) -> None:
    """Buffers are passed in explicitly, as torch.func requires for any batch norm in training."""
    layer = randomize(LAYERS[kind]()).to(DTYPE).train(training)
    reference = copy.deepcopy(layer)
    params = {n: p.detach() for n, p in layer.named_parameters()}
    buffers = {n: b.clone() for n, b in layer.named_buffers()}
    x = torch.randn(3, 6, 4, 4, dtype=DTYPE)
    target = torch.randn(3, 6, 4, 4, dtype=DTYPE)

    def loss(p: dict, b: dict, inp: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(functional_call(layer, {**p, **b}, (inp,)), target)

    grads = torch.func.grad(loss, argnums=(0, 2))(params, buffers, x)
    params_only = torch.func.grad(loss)(params, {n: b.clone() for n, b in buffers.items()}, x)
    x_ref = x.clone().requires_grad_()
    F.mse_loss(reference(x_ref), target).backward()
    torch.testing.assert_close(grads[1], x_ref.grad)
    for name, p in reference.named_parameters():
        torch.testing.assert_close(grads[0][name], p.grad, msg=name)
        torch.testing.assert_close(params_only[name], p.grad, msg=name)
    if not training:  # a per-sample Jacobian in eval mode
        jac = torch.func.jacrev(lambda inp: functional_call(layer, params, (inp,)))(x[:1])
        assert jac.shape == (1, 6, 4, 4, 1, 6, 4, 4)


@pytest.mark.parametrize("layer_type", [SepBatchNorm2d, SimpleSepBatchNorm2d])
def test_output_can_be_modified_in_place_like_batchnorm(layer_type) -> None:
    # torchvision's bottleneck does `out = bn3(...); out += identity`.
    layer = layer_type(8).train()
    x = torch.randn(4, 8, 6, 6, requires_grad=True)
    identity = torch.randn(4, 8, 6, 6)
    out = layer(x)
    out += identity
    (out**2).sum().backward()
    expected_grad = x.grad.clone()
    x.grad = None
    ((layer(x) + identity) ** 2).sum().backward()
    torch.testing.assert_close(x.grad, expected_grad)

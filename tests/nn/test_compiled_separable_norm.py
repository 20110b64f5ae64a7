"""The compiled path of ``SepBatchNorm2d`` against the plain path, on CPU and on CUDA.

The compiled path (:mod:`sepbn.nn.compiled_separable_norm`) is forced with
``sepbn_path("compiled")``. The same test bodies run on CPU in CI, with the ``aot_eager``
backend (the graph inductor would get, executed by ATen), and on a GPU with inductor:
the device is a parameter, and the CUDA cases are marked ``cuda`` (skipped without one).
The input layouts are those of the fused-path tests, built on the device.

Tolerances: float64 1e-12 and float32 1e-5 elementwise against the plain path; bfloat16
and float16 run under autocast (float32 parameters, half activations, as in AMP
training), where both paths are compared with a float64 plain reference by relative
norm, 3e-2 (bfloat16) and 5e-3 (float16): a few units of the format's rounding.
"""

from __future__ import annotations

import copy
import os
import warnings
from contextlib import nullcontext

import pytest
import torch
from test_fused_separable_norm import KINDS, make_input
from torch import Tensor, nn

from helpers import assert_backward_matches, randomize
from sepbn.nn import SepBatchNorm2d, SimpleSepBatchNorm2d, native
from sepbn.nn import compiled_separable_norm as compiled
from sepbn.nn.dispatch import sepbn_path

CUDA = pytest.mark.cuda
HALF = (torch.bfloat16, torch.float16)
REL_TOL = {torch.bfloat16: 3e-2, torch.float16: 5e-3}


def _backend(device: str) -> str:
    return "inductor" if device == "cuda" else "aot_eager"


# (kind, device, dtype, layout): CPU covers every layout; CUDA every dtype on the layouts
# that change the generated kernels (inductor compiles each case, ~10 s).
CPU_LAYOUTS = ("small", "large", "channels_last", "strided", "wide", "batch1")
CASES = [
    *(("sep", "cpu", torch.float64, layout) for layout in CPU_LAYOUTS),
    *(("sep-hard", "cpu", torch.float64, layout) for layout in ("large", "channels_last")),
    *(("sep", "cpu", torch.float32, layout) for layout in ("large", "channels_last")),
    *(
        pytest.param("sep", "cuda", dtype, layout, marks=CUDA)
        for dtype in (torch.float32, *HALF)
        for layout in ("large", "channels_last", "strided", "batch1")
    ),
    pytest.param("sep-hard", "cuda", torch.float32, "large", marks=CUDA),
]


def _pair(kind: str, device: str, dtype: torch.dtype) -> tuple[nn.Module, nn.Module]:
    """The same random layer twice in training mode; float32 parameters for half inputs."""
    layer = randomize(KINDS[kind](6)).to(device, torch.float32 if dtype in HALF else dtype)
    return layer.train(), copy.deepcopy(layer)


def _input(layout: str, device: str, dtype: torch.dtype) -> Tensor:
    with torch.device(device):
        return make_input(layout, 6, dtype)


def _run(layer: nn.Module, x: Tensor, path: str, device: str, dtype: torch.dtype):
    """Output and the gradients of x and every parameter for a fixed output gradient."""
    amp = torch.autocast(device, dtype=dtype) if dtype in HALF else nullcontext()
    with sepbn_path(path, backend=_backend(device)), amp:
        y = layer(x)
    grad = torch.linspace(-1, 1, y.numel(), device=device).view(y.shape).to(y.dtype)
    grads = torch.autograd.grad(y, [x, *layer.parameters()], grad, allow_unused=True)
    return y, grads


def _rel_err(a: Tensor, b: Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


@pytest.mark.parametrize(("kind", "device", "dtype", "layout"), CASES)
def test_compiled_equals_plain(kind: str, device: str, dtype: torch.dtype, layout: str) -> None:
    """Values, every gradient, running statistics and memory format, in training mode."""
    compiled.clear_cache()
    layer, plain = _pair(kind, device, dtype)
    initial = copy.deepcopy(layer)
    x = _input(layout, device, dtype).requires_grad_()
    y, grads = _run(layer, x, "compiled", device, dtype)
    y_plain, grads_plain = _run(plain, x, "plain", device, dtype)
    assert compiled.cache_size() == 1  # the compiled path ran
    assert y.dtype == y_plain.dtype
    for memory_format in (torch.contiguous_format, torch.channels_last):
        if x.is_contiguous(memory_format=memory_format):
            assert y.is_contiguous(memory_format=memory_format)
    names = ["x", *(n for n, _ in layer.named_parameters())]
    if dtype in HALF:
        reference = initial.cpu().double()
        x64 = x.detach().cpu().double().requires_grad_()
        y64, grads64 = _run(reference, x64, "plain", "cpu", torch.float64)
        tol = REL_TOL[dtype]
        for out, out_grads in ((y, grads), (y_plain, grads_plain)):
            assert _rel_err(out, y64) < tol
            for name, g, g64 in zip(names, out_grads, grads64):
                if g64 is None:
                    assert g is None, name
                elif g64.abs().max() > 0:
                    assert _rel_err(g, g64) < tol, name
    else:
        tol = (
            {"rtol": 1e-12, "atol": 1e-12}
            if dtype == torch.float64
            else {"rtol": 1e-5, "atol": 1e-5}
        )
        torch.testing.assert_close(y, y_plain, **tol)
        for name, g, g_plain in zip(names, grads, grads_plain):
            if g_plain is None:
                assert g is None, name
            else:
                torch.testing.assert_close(g, g_plain, **tol, msg=name)
    stats_tol = {"rtol": 1e-5, "atol": 1e-6} if dtype != torch.float64 else {}
    torch.testing.assert_close(layer.norm.running_mean, plain.norm.running_mean, **stats_tol)
    torch.testing.assert_close(layer.norm.running_var, plain.norm.running_var, **stats_tol)
    assert int(layer.norm.num_batches_tracked) == int(plain.norm.num_batches_tracked) == 1


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_running_statistics_equal_batchnorm2d(device: str, momentum: float | None) -> None:
    """Three steps of the compiled path move the statistics exactly as nn.BatchNorm2d."""
    compiled.clear_cache()
    layer = randomize(SepBatchNorm2d(6, momentum=momentum), stats=False).to(device)
    bn = nn.BatchNorm2d(6, momentum=momentum).to(device)
    for _ in range(3):
        x = torch.randn(4, 6, 5, 5, device=device) * 3 + 1
        with sepbn_path("compiled", backend=_backend(device)):
            layer(x)
        bn(x)
    torch.testing.assert_close(layer.norm.running_mean, bn.running_mean)
    torch.testing.assert_close(layer.norm.running_var, bn.running_var)
    assert int(layer.norm.num_batches_tracked) == int(bn.num_batches_tracked) == 3


def test_gradcheck_float64_through_compiled_path() -> None:
    """Input gradient by finite differences (the parameters' are compared above)."""
    compiled.clear_cache()
    layer = randomize(KINDS["sep"](6)).double().train()
    x = make_input("large", 6).requires_grad_()
    with sepbn_path("compiled", backend="aot_eager"):
        assert torch.autograd.gradcheck(layer, (x,), eps=1e-6, atol=1e-6)
    assert compiled.cache_size() == 1


def test_dispatch_picks_and_forces_paths(monkeypatch) -> None:
    """auto: native (C++) on CPU float32, plain under CPU autocast; forced paths run.

    Forcing "compiled" sends eval to the folded plain path (only auto and native run the
    C++ eval layer).
    """
    seen: list[str] = []
    original = SepBatchNorm2d._choose_path

    def spy(self, x):
        seen.append(original(self, x))
        return seen[-1]

    monkeypatch.setattr(SepBatchNorm2d, "_choose_path", spy)
    layer = randomize(SepBatchNorm2d(6))
    x = torch.randn(4, 6, 5, 5)
    layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        layer(x)
    with sepbn_path("compiled", backend="aot_eager"):
        layer(x)
        layer.eval()
        layer(x)  # eval: folded plain path
        layer.train()
    with sepbn_path("plain"):
        layer(x)
    layer.use_fused = False
    with sepbn_path("compiled"):
        layer(x)
    expected_auto = "native" if native.available() else "fused"
    assert seen == [expected_auto, "plain", "compiled", "plain", "plain", "plain"]
    simple = SimpleSepBatchNorm2d(6)
    with sepbn_path("compiled"):
        assert simple._choose_path(x) == "plain"  # no compiled form
    with pytest.raises(ValueError, match="unknown SepBN path 'fast'; valid: 'auto'"):
        sepbn_path("fast").__enter__()  # type: ignore[arg-type]


@pytest.mark.cuda
def test_cuda_tensors_take_the_compiled_path_by_default() -> None:
    compiled.clear_cache()
    layer = randomize(SepBatchNorm2d(6)).cuda()
    x = torch.randn(4, 6, 5, 5, device="cuda")
    assert layer._choose_path(x) == "compiled"
    layer(x)
    assert compiled.cache_size() == 1
    with torch.autocast("cuda", dtype=torch.bfloat16):
        assert layer._choose_path(x.bfloat16()) == "compiled"
    layer.norm.momentum = None  # the cumulative average's factor changes every step
    assert layer._choose_path(x) == "plain"


def test_compile_failure_falls_back_to_plain_with_one_warning() -> None:
    compiled.clear_cache()
    layer = randomize(SepBatchNorm2d(6))
    plain = copy.deepcopy(layer)
    x = torch.randn(4, 6, 5, 5)
    with (
        sepbn_path("compiled", backend="no_such_backend"),
        warnings.catch_warnings(record=True) as w,
    ):
        warnings.simplefilter("always")
        y1, y2 = layer(x), layer(x)
    with sepbn_path("plain"):
        expected = plain(x), plain(x)
    torch.testing.assert_close(y1, expected[0])
    torch.testing.assert_close(y2, expected[1])
    messages = [str(m.message) for m in w if "torch.compile" in str(m.message)]
    assert len(messages) == 1 and "no_such_backend" in messages[0]
    assert int(layer.norm.num_batches_tracked) == 2
    compiled.clear_cache()


def test_one_compiled_callable_per_shape_class() -> None:
    compiled.clear_cache()
    layer = randomize(SepBatchNorm2d(6))
    with sepbn_path("compiled", backend="aot_eager"):
        layer(torch.randn(4, 6, 5, 5))
        layer(torch.randn(4, 6, 5, 5))
        assert compiled.cache_size() == 1
        layer(torch.randn(2, 6, 5, 5))
        assert compiled.cache_size() == 2


@pytest.mark.parametrize("kind", ["sep", "simple"])
def test_torch_compile_of_layer_equals_eager(kind: str) -> None:
    """``torch.compile(layer)`` (§1's compiled column) equals the eager layer, fwd and bwd.

    Backend ``aot_eager`` in CI, ``inductor`` with ``SEPBN_TEST_INDUCTOR=1`` (slow: a cold
    C++ compile). Tolerance 1e-5 (float32): the compiled graph reorders float32 sums.
    """
    backend = "inductor" if os.environ.get("SEPBN_TEST_INDUCTOR") == "1" else "aot_eager"
    torch._dynamo.reset()
    factory = {"sep": lambda: SepBatchNorm2d(16), "simple": lambda: SimpleSepBatchNorm2d(16)}
    eager = randomize(factory[kind]()).train()
    compiled_layer = copy.deepcopy(eager)
    fn = torch.compile(compiled_layer, backend=backend, dynamic=False)
    x = torch.randn(4, 16, 12, 12)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_eager, y_compiled = eager(x1), fn(x2)
    torch.testing.assert_close(y_compiled, y_eager, rtol=1e-5, atol=1e-5)
    assert_backward_matches(compiled_layer, eager, x2, x1, y_compiled, y_eager, 1e-5, 1e-5)
    torch.testing.assert_close(compiled_layer.norm.running_var, eager.norm.running_var)


def test_compiled_output_can_be_modified_in_place() -> None:
    """A ResNet bottleneck's ``out += identity`` right after the layer, then backward."""
    compiled.clear_cache()
    layer = randomize(SepBatchNorm2d(6))
    x = torch.randn(4, 6, 5, 5, requires_grad=True)
    with sepbn_path("compiled", backend="aot_eager"):
        y = layer(x)
    y += 1
    y.relu_().sum().backward()
    assert compiled.cache_size() == 1 and x.grad is not None and x.grad.abs().sum() > 0

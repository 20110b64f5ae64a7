"""The C++ CPU kernels (``sepbn.nn.native``) against ATen and against the plain path.

The plain path (``use_fused = False``: ``BatchNorm2d(x)`` then ``γ̂ x̂ + β̂`` from modules)
is itself tested against a loop reference written from Eqs. 1, 5-7 in
``test_separable_batch_norm.py``. Here every output the C++ path produces (values, every
gradient, the running statistics, the pooling's arg-max) is compared with it, in float64
tightly and in float32 within a few ulps, on every branch of the kernels: narrow planes
(window table) and wide ones (row vectors), overlapping and empty-free bands, ties, NaN
and infinite values, batch 1, hard aggregation, no input gradient, eval mode.

The build itself is tested in subprocesses with their own cache folder: the first one
compiles, the second loads the cached library, a missing compiler gives one warning and
the fused path, ``SEPBN_NATIVE=1`` turns that into an error and ``SEPBN_NATIVE=0`` never
compiles.
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch._inductor.utils import run_and_get_code
from torch.func import functional_call

from helpers import assert_backward_matches, assert_train_step_matches, randomize
from sepbn.nn import SepBatchNorm2d, SimpleSepBatchNorm2d, native
from sepbn.nn.dispatch import sepbn_path
from sepbn.nn.fused_separable_norm import adaptive_max_pool2d

DTYPE = torch.float64
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", autouse=True)
def _kernels() -> None:
    """The kernels must build on a machine with a C++ compiler (CI has one)."""
    if not native.available():
        pytest.fail(f"the C++ kernels did not build here: {native.failure()}")


KINDS: dict[str, Callable[[int], nn.Module]] = {
    "sep": lambda c: SepBatchNorm2d(c, num_sets=3, num_groups=2, hidden_features=5),
    "sep-hard": lambda c: SepBatchNorm2d(c, aggregation="hard", hidden_features=5),
    "sep-g3t2": lambda c: SepBatchNorm2d(c, num_sets=4, num_groups=3, pool_size=2),
    "simple": lambda c: SimpleSepBatchNorm2d(c, num_sets=3, reduction=2),
}

# NCHW inputs: (N, H, W). Narrow (W < 8): the window table; wide: row vectors. 2×2 with
# T = 3 has windows larger than a third of the map; 17×33 has overlapping bands.
SHAPES = {
    "narrow": (3, 4, 3),
    "tiny": (4, 2, 2),
    "square8": (2, 8, 8),
    "wide": (2, 17, 33),
    "batch1": (1, 16, 16),
}


def _pair(kind: str, channels: int, dtype: torch.dtype) -> tuple[nn.Module, nn.Module]:
    layer = randomize(KINDS[kind](channels)).to(dtype).train()
    plain = copy.deepcopy(layer)
    plain.use_fused = False
    return layer, plain


def _train_forward_op(x: Tensor, pool_size: int) -> list[Tensor]:
    layer = randomize(SepBatchNorm2d(x.shape[1], num_groups=1, pool_size=pool_size))
    layer = layer.to(x.dtype)
    return torch.ops.sepbn_cpu.sepbn_train_forward(
        x, layer.weight, layer.bias, *layer._attention_tensors(), 1e-5, pool_size, False
    )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("pool_size", [1, 2, 3, 5])
@pytest.mark.parametrize(
    "shape",
    [
        (2, 3, 5, 7), (1, 4, 2, 2), (3, 2, 17, 33), (2, 2, 40, 3), (2, 3, 64, 64), (2, 3, 8, 8),
        (2, 3, 11, 29),  # row blocks of two registers, of one, then a scalar tail
        (2, 19, 8, 8), (2, 19, 3, 4),  # channel blocks (8 float32, 4 float64) and a remainder
    ],
)  # fmt: skip
def test_pooling_and_argmax_equal_aten_with_ties(shape, pool_size: int, dtype) -> None:
    """Values and arg-max indices, also with many ties (rounded values, zeros of both signs)."""
    x = torch.randn(shape, dtype=dtype)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    signed_zeros = torch.where(x > 0, 0.0, -0.0).to(dtype)
    # The order of the extremes: the largest finite values, subnormals of both signs.
    info = torch.finfo(dtype)
    extremes = torch.where(x.abs() > 1.5, info.max * x.sign(), x * info.tiny / 4)
    for values in (x, x.round(), torch.zeros_like(x), signed_zeros, extremes):
        expected, expected_index = F.adaptive_max_pool2d(values, pool_size, return_indices=True)
        with torch.no_grad():
            assert torch.equal(adaptive_max_pool2d(values, pool_size), expected)
        out = _train_forward_op(values, pool_size)
        positions, index = out[3], out[2]
        n, c = values.shape[:2]
        pooled = positions.view(n, pool_size, pool_size, c).permute(0, 3, 1, 2)
        assert torch.equal(pooled, expected)
        assert torch.equal(pooled.signbit(), expected.signbit())  # ATen's first zero wins
        assert torch.equal(index.view(n, c, pool_size, pool_size).long(), expected_index)
        # The NHWC kernels: the same values, indices and statistics from channels-last memory
        # (the extremes' statistics overflow: their pooling only).
        out_cl = _train_forward_op(values.contiguous(memory_format=torch.channels_last), pool_size)
        compared = (("positions", 3), ("index", 2), ("mean", 7), ("variance", 9))
        for name, i in compared[:2] if values is extremes else compared:
            if out_cl[i].is_floating_point():
                torch.testing.assert_close(out_cl[i], out[i], rtol=tol, atol=tol, msg=name)
            else:
                assert torch.equal(out_cl[i], out[i]), name
        if values is extremes:
            continue
        # The batch statistics come from the same pass (per-plane moments, combined).
        var, mean = torch.var_mean(values, dim=(0, 2, 3), correction=1)
        torch.testing.assert_close(out[7], mean, rtol=tol, atol=tol)
        torch.testing.assert_close(out[9], var, rtol=tol, atol=tol)


@pytest.mark.parametrize("shape", [(2, 3, 4, 4), (2, 3, 20, 20)])
def test_nan_and_infinity_propagate_like_aten(shape) -> None:
    x = torch.randn(shape)
    x[0, 1, 1, 2] = float("nan")
    x[1, 2, 0, 0] = float("inf")
    x[1, 0, 3, 3] = float("-inf")
    expected, expected_index = F.adaptive_max_pool2d(x, 3, return_indices=True)
    with torch.no_grad():
        pooled = adaptive_max_pool2d(x, 3)
    torch.testing.assert_close(pooled, expected, equal_nan=True, rtol=0, atol=0)
    out = _train_forward_op(x, 3)
    index = out[2].view(*shape[:2], 3, 3).long()
    assert torch.equal(index, expected_index)  # the exact scan runs for these planes
    out_cl = _train_forward_op(x.contiguous(memory_format=torch.channels_last), 3)
    assert torch.equal(out_cl[2].view(*shape[:2], 3, 3).long(), expected_index)  # NHWC scan
    pooled_cl = out_cl[3].view(shape[0], 3, 3, shape[1]).permute(0, 3, 1, 2)
    torch.testing.assert_close(pooled_cl, expected, equal_nan=True, rtol=0, atol=0)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("input_grad", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", KINDS)
def test_native_train_equals_plain(
    kind: str, shape: str, input_grad: bool, dtype, layout: str
) -> None:
    """Output, every gradient, running statistics and batch count, in training mode; a
    channels-last input runs the NHWC kernels and gives a channels-last output."""
    # float64 proves the arithmetic (1e-11). float32: the paths sum in different orders, and
    # the attention's gradients (sums over the map pushed through three matmuls) of the
    # plain, NCHW and NHWC paths each land within ~1e-4 of a float64 run of the same
    # layer, so two of them may differ by twice that.
    tol = {"rtol": 1e-11, "atol": 1e-11} if dtype == DTYPE else {"rtol": 2e-4, "atol": 2e-4}
    channels = 6
    layer, plain = _pair(kind, channels, dtype)
    x = torch.randn(SHAPES[shape][0], channels, *SHAPES[shape][1:], dtype=dtype) * 2 + 0.5
    memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = x.contiguous(memory_format=memory_format).requires_grad_(input_grad)
    assert layer._choose_path(x) == "native"
    y, y_plain = layer(x), plain(x)
    assert y.is_contiguous(memory_format=memory_format) and y.dtype == dtype
    torch.testing.assert_close(y, y_plain, **tol)
    # float32: atol scaled by each gradient's size.
    assert_train_step_matches(layer, plain, x, y, y_plain, input_grad, dtype != DTYPE, **tol)


def test_attention_frozen_still_sends_the_pooling_gradient_to_x() -> None:
    """With the attention's parameters frozen, ∂L/∂x still includes the pooling path."""
    layer, plain = _pair("sep", 6, DTYPE)
    for module in (layer, plain):
        for p in [*module.reduce.parameters(), *module.mlp.parameters()]:
            p.requires_grad_(False)
    x = torch.randn(3, 6, 7, 7, dtype=DTYPE, requires_grad=True)
    (gx,) = torch.autograd.grad(layer(x).square().sum(), x)
    (gx_plain,) = torch.autograd.grad(plain(x).square().sum(), x)
    torch.testing.assert_close(gx, gx_plain, rtol=1e-11, atol=1e-11)


def test_running_average_options() -> None:
    """momentum None (cumulative average) and no running statistics at all."""
    for kwargs in ({"momentum": None}, {"track_running_stats": False}):
        layer = randomize(SepBatchNorm2d(6, **kwargs), stats=False).to(DTYPE)
        plain = copy.deepcopy(layer)
        plain.use_fused = False
        for _ in range(3):
            x = torch.randn(4, 6, 5, 5, dtype=DTYPE) * 3 + 1
            torch.testing.assert_close(layer(x), plain(x), rtol=1e-12, atol=1e-12)
        if layer.norm.track_running_stats:
            torch.testing.assert_close(layer.norm.running_mean, plain.norm.running_mean)
            torch.testing.assert_close(layer.norm.running_var, plain.norm.running_var)
            assert int(layer.norm.num_batches_tracked) == 3


def _functional(layer: nn.Module, names: list[str]) -> Callable[..., Tensor]:
    def f(x: Tensor, *params: Tensor) -> Tensor:
        with sepbn_path("native"):
            return functional_call(layer, dict(zip(names, params)), (x,))

    return f


@pytest.mark.parametrize("shape", [(2, 6, 4, 3), (2, 6, 9, 8), (1, 6, 5, 4)])
@pytest.mark.parametrize("kind", ["sep", "sep-hard", "simple"])
def test_gradcheck_float64(kind: str, shape) -> None:
    """Numerical against analytical gradients of the C++ backward."""
    layer = randomize(KINDS[kind](shape[1])).to(DTYPE).train()
    trainable = dict(layer.named_parameters())
    if kind == "sep-hard":  # no gradient crosses the arg-max; check the rest
        trainable = {n: p for n, p in trainable.items() if n in ("weight", "bias")}
    names = list(trainable)
    params = [p.detach().clone().requires_grad_() for p in trainable.values()]
    x = torch.randn(shape, dtype=DTYPE, requires_grad=True)
    f = _functional(layer, names)
    calls: list[str] = []
    original = type(layer)._forward_native

    def spy(self, inp):
        calls.append("native")
        return original(self, inp)

    type(layer)._forward_native = spy  # type: ignore[method-assign]
    try:
        assert torch.autograd.gradcheck(f, (x, *params), eps=1e-6, atol=1e-6)
    finally:
        type(layer)._forward_native = original  # type: ignore[method-assign]
    assert calls, "the C++ path did not run"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("aggregation", ["soft", "hard"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("shape", [(1, 8, 16, 16), (4, 8, 3, 5), (1, 8, 2, 2)])
def test_native_eval_equals_plain(shape, aggregation: str, dtype, layout: str) -> None:
    """Eval with running statistics, without a gradient: one op call, same values and π."""
    layer = randomize(SepBatchNorm2d(8, aggregation=aggregation)).to(dtype).eval()
    layer.keep_attention = True
    plain = copy.deepcopy(layer)
    plain.use_fused = False
    x = torch.randn(shape, dtype=dtype) * 2 + 0.5
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    tol = {"rtol": 1e-12, "atol": 1e-12} if dtype == DTYPE else {"rtol": 1e-5, "atol": 1e-5}
    with torch.no_grad():
        assert layer._choose_path(x) == "native"
        torch.testing.assert_close(layer(x), plain(x), **tol)
    torch.testing.assert_close(layer.last_attention, plain.last_attention, **tol)
    # With a gradient wanted, eval runs the differentiable plain path.
    assert layer._choose_path(x) == "plain"
    y = layer(x.requires_grad_())
    assert y.grad_fn is not None


@pytest.fixture
def two_threads():
    """Two intra-op threads, so that maps above the grain split across an op's one region."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("kind", ["sep", "simple"])
def test_maps_above_the_grain_split_across_threads_equal_plain(kind: str, two_threads) -> None:
    """Train step and eval on maps large enough for a two-thread region (first pass, the
    attention on one thread, last pass): same values, gradients and running statistics."""
    layer, plain = _pair(kind, 32, DTYPE)
    x = (torch.randn(4, 32, 32, 32, dtype=DTYPE) * 2 + 0.5).requires_grad_()  # 2^17 values
    assert layer._choose_path(x) == "native"
    y, y_plain = layer(x), plain(x)
    torch.testing.assert_close(y, y_plain, rtol=1e-11, atol=1e-11)
    assert_train_step_matches(layer, plain, x, y, y_plain, True, rtol=1e-11, atol=1e-11)
    if kind == "sep":
        layer.eval()
        plain.eval()
        image = torch.randn(1, 32, 96, 96, dtype=DTYPE)  # above the inference grain too
        with torch.no_grad():
            torch.testing.assert_close(layer(image), plain(image), rtol=1e-12, atol=1e-12)


def test_an_error_in_the_serial_middle_of_a_threaded_op_is_raised(two_threads) -> None:
    """The attention runs inside the op's parallel region: its failure must surface as an
    ordinary error after the region (not terminate the process or hang the other thread)."""
    layer = randomize(SepBatchNorm2d(32, num_groups=1)).to(DTYPE)
    x = torch.randn(4, 32, 32, 32, dtype=DTYPE)
    tensors = list(layer._attention_tensors())
    tensors[2] = tensors[2][:, :-1]  # hidden weight one input short of the pooled features
    with pytest.raises(RuntimeError, match="small_matmul: sizes differ"):
        torch.ops.sepbn_cpu.sepbn_train_forward(
            x, layer.weight, layer.bias, *tensors, 1e-5, layer.pool_size, False
        )


def test_dispatch_outside_the_native_conditions() -> None:
    layer = randomize(SepBatchNorm2d(6))
    x = torch.randn(2, 6, 8, 8)
    assert layer._choose_path(x) == "native"
    assert layer._choose_path(x.to(memory_format=torch.channels_last)) == "native"
    strided = torch.randn(2, 6, 9, 8)[:, :, ::2]
    assert layer._choose_path(strided) == "fused"
    with native.disabled():
        assert layer._choose_path(x) == "fused"
    with sepbn_path("native"):
        assert layer._choose_path(strided) == "plain"
    with sepbn_path("fused"):
        assert layer._choose_path(x) == "fused"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer._choose_path(x) == "plain"
    simple = randomize(SimpleSepBatchNorm2d(6)).eval()
    with torch.no_grad():
        assert simple._choose_path(x) == "plain"  # no C++ eval form: folded plain path


def _python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(REPO / "src"), **env}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=full_env, timeout=600
    )


_PROBE = (
    "import warnings, torch; from sepbn.nn import SepBatchNorm2d, native;"
    "warnings.simplefilter('always');"
    "layer = SepBatchNorm2d(4); x = torch.randn(2, 4, 6, 6);"
    "print('path', layer._choose_path(x)); layer(x).sum().backward()"
)


def test_build_once_then_load_from_the_cache(tmp_path: Path) -> None:
    env = {"SEPBN_EXTENSIONS_DIR": str(tmp_path)}
    first = _python(_PROBE, env)
    assert first.returncode == 0, first.stderr
    assert "building the C++ CPU kernels" in first.stderr and "path native" in first.stdout
    built = sorted(tmp_path.glob("sepbn_cpu-*.so"))
    assert len(built) == 1 and built[0] == Path(
        _python("from sepbn.nn import native; print(native.library_path())", env).stdout.strip()
    )
    second = _python(_PROBE, env)
    assert second.returncode == 0, second.stderr
    assert "building" not in second.stderr and "path native" in second.stdout


def test_missing_compiler_falls_back_with_one_warning(tmp_path: Path) -> None:
    env = {"SEPBN_EXTENSIONS_DIR": str(tmp_path), "CXX": "/no/such/g++"}
    result = _python(_PROBE + "; layer(x)", env)
    assert result.returncode == 0, result.stderr
    assert "path fused" in result.stdout
    assert result.stderr.count("C++ CPU kernels unavailable") == 1
    assert "no C++ compiler '/no/such/g++'" in result.stderr
    strict = _python(_PROBE, {**env, "SEPBN_NATIVE": "1"})
    assert strict.returncode != 0 and "SEPBN_NATIVE=1 but the C++ kernels failed" in strict.stderr
    never = _python(_PROBE, {"SEPBN_EXTENSIONS_DIR": str(tmp_path / "never"), "SEPBN_NATIVE": "0"})
    assert never.returncode == 0 and "path fused" in never.stdout
    assert not (tmp_path / "never").exists() and "unavailable" not in never.stderr


def test_failing_compiler_reports_its_output(tmp_path: Path) -> None:
    fake = tmp_path / "fake-g++"
    fake.write_text("#!/bin/sh\necho 'fake.cpp:1: error: no such thing' >&2\nexit 3\n")
    fake.chmod(0o755)
    result = _python(_PROBE, {"SEPBN_EXTENSIONS_DIR": str(tmp_path / "c"), "CXX": str(fake)})
    assert result.returncode == 0 and "path fused" in result.stdout
    assert "failed (exit 3)" in result.stderr and "no such thing" in result.stderr
    assert not list((tmp_path / "c").glob("*.so"))  # nothing half-built under the final name


def _recording_backend(codes: list[str]):
    """A ``torch.compile`` backend that keeps the code of every graph (and its subgraphs)."""
    from torch._dynamo.backends.registry import lookup_backend

    aot_eager = lookup_backend("aot_eager")

    def backend(gm: torch.fx.GraphModule, example_inputs):
        codes.extend(m.code for m in gm.modules() if isinstance(m, torch.fx.GraphModule))
        return aot_eager(gm, example_inputs)

    return backend


@pytest.mark.parametrize(
    "kind, layout", [("sep", "nchw"), ("sep-hard", "nchw"), ("simple", "nchw"), ("sep", "cl")]
)
def test_compiled_layer_puts_the_native_ops_in_the_graph(kind: str, layout: str) -> None:
    """Under ``torch.compile(fullgraph=True)`` the train step is the C++ op call, and equals eager.

    The same arithmetic runs in both, so values, gradients and running statistics agree to
    float64 rounding; the graph holds the autograd Function and the running update op.
    """
    torch._dynamo.reset()
    layer, plain = _pair(kind, 6, DTYPE)
    codes: list[str] = []
    compiled = torch.compile(layer, backend=_recording_backend(codes), fullgraph=True)
    x = torch.randn(3, 6, 9, 7, dtype=DTYPE)
    if layout == "cl":
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    y, y_plain = compiled(x), plain(x)
    graph = "\n".join(codes)
    assert "running_update" in graph and "sepbn_cpu" in graph, graph
    if kind.startswith("sep"):  # the folded node: the C++ op, then the multiply-add in ATen
        assert "sepbn_train_forward" in graph and "addcmul" in graph, graph
    torch.testing.assert_close(y, y_plain, rtol=1e-12, atol=1e-12)
    assert_train_step_matches(layer, plain, x, y, y_plain, True, rtol=1e-10, atol=1e-10)


def test_compiled_eval_without_gradient_is_one_native_call() -> None:
    torch._dynamo.reset()
    layer = randomize(SepBatchNorm2d(8, num_groups=2)).eval()
    plain = copy.deepcopy(layer)
    plain.use_fused = False
    codes: list[str] = []
    compiled = torch.compile(layer, backend=_recording_backend(codes), fullgraph=True)
    x = torch.randn(1, 8, 12, 12)
    with torch.no_grad():
        y = compiled(x)
        torch.testing.assert_close(y, plain(x), rtol=1e-5, atol=1e-5)
    assert "sepbn_cpu" in "\n".join(codes)
    # With a gradient wanted the compiled eval layer traces the differentiable plain path.
    codes.clear()
    torch._dynamo.reset()
    compiled = torch.compile(layer, backend=_recording_backend(codes), fullgraph=True)
    y = compiled(x.requires_grad_())
    assert y.grad_fn is not None and "sepbn_cpu" not in "\n".join(codes)


def test_compiled_outside_the_native_conditions_traces_plain() -> None:
    """momentum=None (cumulative average) and strided inputs compile the plain path.

    ``nn.BatchNorm2d(momentum=None)`` itself breaks the graph (its factor is
    ``1 / num_batches_tracked``, read as a Python float), so that case is not fullgraph.
    """
    for make, x, fullgraph in [
        (lambda: SepBatchNorm2d(6, momentum=None), torch.randn(2, 6, 8, 8), False),
        (lambda: SepBatchNorm2d(6), torch.randn(2, 6, 9, 8)[:, :, ::2], True),
    ]:
        torch._dynamo.reset()
        layer = randomize(make())
        plain = copy.deepcopy(layer)
        plain.use_fused = False
        codes: list[str] = []
        backend = _recording_backend(codes)
        y = torch.compile(layer, backend=backend, fullgraph=fullgraph)(x)
        assert "sepbn_cpu" not in "\n".join(codes)
        torch.testing.assert_close(y, plain(x), rtol=1e-5, atol=1e-5)


def test_export_traces_the_plain_path() -> None:
    """``torch.export`` (ONNX, AOT) gets standard ATen ops, never the machine-local C++ ops."""
    layer = randomize(SepBatchNorm2d(6)).eval()
    program = torch.export.export(layer, (torch.randn(1, 6, 8, 8),))
    assert "sepbn_cpu" not in str(program.graph)


def test_inductor_compiled_train_step_equals_eager() -> None:
    """With inductor (the default backend) the compiled step equals eager in float32."""
    torch._dynamo.reset()
    layer, plain = _pair("sep", 8, torch.float32)
    compiled = torch.compile(layer, fullgraph=True)
    x = torch.randn(4, 8, 10, 10, requires_grad=True)
    y, y_plain = compiled(x), plain(x)
    # float32 in both; the C++ and ATen reductions sum in different orders.
    torch.testing.assert_close(y, y_plain, rtol=1e-5, atol=1e-5)
    assert_train_step_matches(layer, plain, x, y, y_plain, True, rtol=1e-4, atol=1e-4)


@pytest.mark.filterwarnings("ignore:dynamo_pgo force disabled")
def test_inductor_hands_the_ops_its_channels_last_maps() -> None:
    """Convolutions around SepBN under inductor (whose CPU layout optimization makes their
    outputs channels-last; the ops are tagged flexible_layout): the compiled train step
    equals eager, input gradient and every parameter's included."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), SepBatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 8, 3)
    )
    randomize(model[1])
    eager = copy.deepcopy(model)
    x = torch.randn(4, 3, 12, 12)
    x_compiled, x_eager = x.clone().requires_grad_(), x.clone().requires_grad_()
    # Caches off: a cached graph would not show what the op's tags make inductor do now.
    with torch._inductor.config.patch(force_disable_caches=True):
        y, codes = run_and_get_code(torch.compile(model, fullgraph=True), x_compiled)
    # The convolution's output, checked by inductor's own metadata assert, has channels-last
    # (4, 16, 12, 12) strides, and the op takes that buffer itself: no layout copy between.
    code = codes[0]  # the forward graph
    cl_map = torch.empty(4, 16, 12, 12).to(memory_format=torch.channels_last)
    conv = re.search(r"(buf\d+) = extern_kernels\.convolution\(", code)
    assert conv is not None, code
    # (assert_size_stride before torch 2.14, assert_tensor_metadata since)
    metadata = re.escape(f"({conv[1]}, (4, 16, 12, 12), {tuple(cl_map.stride())}")
    assert re.search(rf"assert_(tensor_metadata|size_stride){metadata}", code), code
    assert re.search(rf"sepbn_train_forward\.default\({conv[1]},", code), code
    y_eager = eager(x_eager)
    torch.testing.assert_close(y, y_eager, rtol=1e-4, atol=1e-4)
    assert_backward_matches(model, eager, x_compiled, x_eager, y, y_eager, 1e-4, 1e-4, True)
    torch.testing.assert_close(model[1].norm.running_var, eager[1].norm.running_var)


@pytest.mark.filterwarnings("ignore:dynamo_pgo force disabled")
def test_inductor_fuses_the_folded_map_pass_with_the_activation_and_pooling() -> None:
    """The Vanilla CNN's block (conv, SepBN, LeakyReLU, 2×2 max pooling) under inductor: the
    SepBN multiply-add, the activation and the pooling are one generated kernel forward
    (and recomputed in one backward kernel), as for a BatchNorm; values and gradients equal
    eager."""
    from sepbn.models.vanilla_cnn import conv_block

    torch._dynamo.reset()
    torch.manual_seed(0)
    model = conv_block(3, 16, lambda c: randomize(SepBatchNorm2d(c)))
    eager = copy.deepcopy(model)
    x = torch.randn(4, 3, 16, 16)
    x_compiled, x_eager = x.clone().requires_grad_(), x.clone().requires_grad_()
    with torch._inductor.config.patch(force_disable_caches=True):
        y, codes = run_and_get_code(torch.compile(model, fullgraph=True), x_compiled)
    kernels = [line for line in "\n".join(codes).splitlines() if "cpp_fused" in line]
    fused = [k for k in kernels if all(op in k for op in ("addcmul", "leaky_relu", "max_pool2d"))]
    assert fused, "\n".join(kernels)
    y_eager = eager(x_eager)
    torch.testing.assert_close(y, y_eager, rtol=1e-4, atol=1e-4)
    assert_backward_matches(model, eager, x_compiled, x_eager, y, y_eager, 1e-4, 1e-4, True)


@pytest.mark.parametrize("layout", ["nchw", "cl"])
def test_folded_node_equals_the_one_op_node(layout: str) -> None:
    """The compiled path's node (the C++ op without the map pass, then an ATen multiply-add)
    run eagerly: output (in the input's layout), π, statistics and every gradient equal the
    one-op node's in float64."""
    from sepbn.nn import native_ops

    torch.manual_seed(0)
    layer = randomize(SepBatchNorm2d(8, num_groups=2)).to(DTYPE)
    x = torch.randn(3, 8, 9, 11, dtype=DTYPE)
    if layout == "cl":
        x = x.contiguous(memory_format=torch.channels_last)
    params = [layer.weight, layer.bias, *layer._attention_tensors()]
    options = (1e-5, layer.pool_size, False)
    results = []
    for fold in (False, True):
        xi = x.detach().clone().requires_grad_()
        y, pi, mean, unbiased = native_ops._NativeSepBatchNormTrain.apply(
            xi, *params, *options, fold
        )
        grad = torch.randn(y.shape, dtype=DTYPE, generator=torch.Generator().manual_seed(1))
        grads = torch.autograd.grad(y, [xi, *(p for p in params if p.requires_grad)], grad)
        results.append((y, pi, mean, unbiased, *grads))
    assert results[1][0].is_contiguous(memory_format=torch.channels_last) == (layout == "cl")
    for one_op, folded in zip(*results, strict=True):
        torch.testing.assert_close(folded, one_op, rtol=1e-12, atol=1e-12)

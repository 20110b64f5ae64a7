"""The C++ CPU op (``sepbn.nn.native``) against ATen and against the plain path.

The plain path (``sepbn_path("plain")``: ``BatchNorm2d(x)`` then ``γ̂ x̂ + β̂`` from
modules) is itself tested against a loop reference written from Eqs. 1, 5-7 in
``test_separable_batch_norm.py``. Here every output the C++ op produces (values, every
gradient, the running statistics, the pooling's arg-max) is compared with it, in float64
tightly and in float32 within a few ulps, on every branch of the kernels: narrow planes
(window table) and wide ones (row vectors), NCHW, channels-last (NHWC kernels) and other
strides (copied), overlapping bands, ties, NaN and infinite values, batch 1, hard
aggregation, no input gradient, eval mode, and an attention MLP of another width.

The build itself is tested in subprocesses with their own ``TORCH_EXTENSIONS_DIR``: one
builds from scratch and a second loads the cached library; a missing compiler gives one
warning and the plain path, ``SEPBN_PATH=native`` turns that into an error and
``SEPBN_PATH=plain`` never builds.
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
from sepbn.nn.dispatch import sepbn_path, use_native

DTYPE = torch.float64
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", autouse=True)
def _kernels() -> None:
    """The kernels must build on a machine with a C++ compiler (CI has one)."""
    try:
        native.available(required=True)
    except native.NativeBuildError as error:
        pytest.fail(f"the C++ kernels did not build here: {error}")


KINDS: dict[str, Callable[[int], nn.Module]] = {
    "sep": lambda c: SepBatchNorm2d(c, num_sets=3, num_groups=2, hidden_features=5),
    "sep-hard": lambda c: SepBatchNorm2d(c, aggregation="hard", hidden_features=5),
    "sep-g3t2": lambda c: SepBatchNorm2d(c, num_sets=4, num_groups=3, pool_size=2),
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

MEMORY_FORMATS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}


def _pair(kind: str, channels: int, dtype: torch.dtype) -> tuple[nn.Module, nn.Module]:
    """The same random layer twice, in training mode: one for the C++ op, one for plain."""
    layer = randomize(KINDS[kind](channels)).to(dtype).train()
    return layer, copy.deepcopy(layer)


def _plain(layer: nn.Module, x: Tensor) -> Tensor:
    with sepbn_path("plain"):
        return layer(x)


def _layout(x: Tensor, layout: str) -> Tensor:
    """``x`` NCHW, channels-last, or strided (neither: the op copies it to NCHW)."""
    if layout == "strided":
        wide = torch.cat([x, torch.zeros_like(x)], dim=3)
        return wide[..., : x.shape[3]]
    return x.contiguous(memory_format=MEMORY_FORMATS[layout])


def _train_forward_op(x: Tensor, pool_size: int) -> list[Tensor]:
    """``train_forward``'s ten outputs for a random layer: (y, π, mean, var_unbiased, index,
    positions, flat, hidden, scale, rstd)."""
    layer = randomize(SepBatchNorm2d(x.shape[1], num_groups=1, pool_size=pool_size))
    layer = layer.to(x.dtype)
    with torch.no_grad():
        return torch.ops.sepbn_cpu.train_forward(
            x, layer.weight, layer.bias, *layer._attention_tensors(), 1e-5, pool_size, False
        )


def _pooled(out: list[Tensor], n: int, c: int, t: int) -> tuple[Tensor, Tensor]:
    """The pooled map (N, C, T, T) from ``positions`` and the arg-max (int64) from ``index``."""
    pooled = out[5].view(n, t, t, c).permute(0, 3, 1, 2)
    return pooled, out[4].view(n, c, t, t).long()


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
    n, c = shape[:2]
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    signed_zeros = torch.where(x > 0, 0.0, -0.0).to(dtype)
    # The order of the extremes: the largest finite values, subnormals of both signs.
    info = torch.finfo(dtype)
    extremes = torch.where(x.abs() > 1.5, info.max * x.sign(), x * info.tiny / 4)
    for values in (x, x.round(), torch.zeros_like(x), signed_zeros, extremes):
        expected, expected_index = F.adaptive_max_pool2d(values, pool_size, return_indices=True)
        out = _train_forward_op(values, pool_size)
        assert out[4].dtype == torch.int32 and out[4].shape == (n, c, pool_size * pool_size)
        pooled, index = _pooled(out, n, c, pool_size)
        assert torch.equal(pooled, expected)
        assert torch.equal(pooled.signbit(), expected.signbit())  # ATen's first zero wins
        assert torch.equal(index, expected_index)
        # The NHWC kernels: the same values, indices and statistics from channels-last memory
        # (the extremes' statistics overflow: their pooling only).
        out_cl = _train_forward_op(values.contiguous(memory_format=torch.channels_last), pool_size)
        compared = (("positions", 5), ("index", 4), ("mean", 2), ("var_unbiased", 3))
        for name, i in compared[:2] if values is extremes else compared:
            if out_cl[i].is_floating_point():
                torch.testing.assert_close(out_cl[i], out[i], rtol=tol, atol=tol, msg=name)
            else:
                assert torch.equal(out_cl[i], out[i]), name
        if values is extremes:
            continue
        # The batch statistics come from the same pass (per-plane moments, combined).
        var, mean = torch.var_mean(values, dim=(0, 2, 3), correction=1)
        torch.testing.assert_close(out[2], mean, rtol=tol, atol=tol)
        torch.testing.assert_close(out[3], var, rtol=tol, atol=tol)


@pytest.mark.parametrize("shape", [(2, 3, 4, 4), (2, 3, 20, 20)])
def test_nan_and_infinity_propagate_like_aten(shape) -> None:
    x = torch.randn(shape)
    x[0, 1, 1, 2] = float("nan")
    x[1, 2, 0, 0] = float("inf")
    x[1, 0, 3, 3] = float("-inf")
    n, c = shape[:2]
    expected, expected_index = F.adaptive_max_pool2d(x, 3, return_indices=True)
    for memory_format in MEMORY_FORMATS.values():  # the NCHW and the NHWC scans
        out = _train_forward_op(x.contiguous(memory_format=memory_format), 3)
        pooled, index = _pooled(out, n, c, 3)
        assert torch.equal(index, expected_index)  # the exact scan runs for these planes
        torch.testing.assert_close(pooled, expected, equal_nan=True, rtol=0, atol=0)


def test_saved_tensors_are_the_plain_modules_intermediates() -> None:
    """``flat`` (fc1's input), ``hidden`` (after the ReLU), ``scale`` (γ̂), ``rstd`` and π of
    ``train_forward`` are what the plain module computes on the way."""
    layer = randomize(SepBatchNorm2d(6, num_sets=3, num_groups=2, hidden_features=7)).to(DTYPE)
    x = torch.randn(3, 6, 7, 5, dtype=DTYPE) * 2 + 0.5
    with torch.no_grad():
        out = torch.ops.sepbn_cpu.train_forward(
            x, layer.weight, layer.bias, *layer._attention_tensors(), 1e-5, 3, False
        )
        y, pi, mean, var_unbiased, _, positions, flat, hidden, scale, rstd, a, b = out
        pooled = F.adaptive_max_pool2d(x, 3).permute(0, 2, 3, 1).reshape(-1, 6)
        reduced = F.linear(pooled, layer.reduce.weight.view(2, 6), layer.reduce.bias)
        expected_flat = reduced.view(3, -1)  # position-major: (t_row, t_col, g)
        expected_hidden = F.relu(layer.fc1(expected_flat))
        expected_pi = layer.attention(x)
        var = x.var(dim=(0, 2, 3), unbiased=False)
    tol = {"rtol": 1e-12, "atol": 1e-12}
    torch.testing.assert_close(positions, pooled, rtol=0, atol=0)
    torch.testing.assert_close(flat, expected_flat, **tol)
    torch.testing.assert_close(hidden, expected_hidden, **tol)
    torch.testing.assert_close(pi, expected_pi, **tol)
    gamma = torch.einsum("ngk,kgm->ngm", pi, layer.weight.view(3, 2, 3)).reshape(3, 6)
    torch.testing.assert_close(scale, gamma, **tol)  # Eq. 6's γ̂
    torch.testing.assert_close(rstd, torch.rsqrt(var + 1e-5), **tol)
    torch.testing.assert_close(mean, x.mean(dim=(0, 2, 3)), **tol)
    torch.testing.assert_close(var_unbiased, x.var(dim=(0, 2, 3), unbiased=True), **tol)
    with sepbn_path("plain"), torch.no_grad():
        torch.testing.assert_close(y, layer(x), **tol)
    # The folded mapping y = a x + b (a = γ̂ r, b = β̂ - a μ); without `apply` the op stops there.
    torch.testing.assert_close(a[..., None, None] * x + b[..., None, None], y, **tol)
    with torch.no_grad():
        folded = torch.ops.sepbn_cpu.train_forward(
            x, layer.weight, layer.bias, *layer._attention_tensors(), 1e-5, 3, False, False
        )
    assert folded[0].numel() == 0
    for got, want in zip(folded[1:], out[1:]):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("layout", ["nchw", "channels_last", "strided"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("input_grad", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", KINDS)
def test_native_train_equals_plain(
    kind: str, shape: str, input_grad: bool, dtype, layout: str
) -> None:
    """Output, every gradient, running statistics and batch count, in training mode; a
    channels-last input runs the NHWC kernels and gives a channels-last output, any other
    strides an NCHW one."""
    # float64 proves the arithmetic (1e-11). float32: the paths sum in different orders, and
    # the attention's gradients (sums over the map pushed through three matmuls) of the
    # plain, NCHW and NHWC paths each land within ~1e-4 of a float64 run of the same
    # layer, so two of them may differ by twice that.
    tol = {"rtol": 1e-11, "atol": 1e-11} if dtype == DTYPE else {"rtol": 2e-4, "atol": 2e-4}
    channels = 6
    layer, plain = _pair(kind, channels, dtype)
    x = torch.randn(SHAPES[shape][0], channels, *SHAPES[shape][1:], dtype=dtype) * 2 + 0.5
    x = _layout(x, layout).requires_grad_(input_grad)
    assert use_native(layer, x)
    y, y_plain = layer(x), _plain(plain, x)
    out_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    assert y.is_contiguous(memory_format=out_format) and y.dtype == dtype
    torch.testing.assert_close(y, y_plain, **tol)
    # float32: atol scaled by each gradient's size.
    assert_train_step_matches(layer, plain, x, y, y_plain, input_grad, dtype != DTYPE, **tol)


@pytest.mark.parametrize("hidden_features", [1, 7, 40])
def test_another_mlp_width_agrees_on_both_paths(hidden_features: int) -> None:
    """Issue 21: a change to the attention MLP touches the plain module and the C++ kernel
    only. Another hidden width: forward, every gradient, running statistics and eval agree."""
    layer = randomize(SepBatchNorm2d(8, num_sets=3, num_groups=2, hidden_features=hidden_features))
    layer = layer.to(DTYPE).train()
    assert layer.fc1.out_features == layer.fc2.in_features == hidden_features
    plain = copy.deepcopy(layer)
    layer.keep_attention = plain.keep_attention = True
    tol = {"rtol": 1e-11, "atol": 1e-11}
    x = (torch.randn(4, 8, 9, 6, dtype=DTYPE) * 2 + 0.5).requires_grad_()
    assert use_native(layer, x)
    y, y_plain = layer(x), _plain(plain, x)
    torch.testing.assert_close(y, y_plain, **tol)
    torch.testing.assert_close(layer.last_attention, plain.last_attention, **tol)
    assert_train_step_matches(layer, plain, x, y, y_plain, True, **tol)
    grads = [p.grad for p in (*layer.fc1.parameters(), *layer.fc2.parameters())]
    assert all(g is None for g in grads)  # autograd.grad above, nothing accumulated
    layer.eval()
    plain.eval()
    image = torch.randn(2, 8, 11, 10, dtype=DTYPE)
    with torch.no_grad():
        assert use_native(layer, image)
        torch.testing.assert_close(layer(image), _plain(plain, image), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.last_attention, plain.last_attention, rtol=1e-12, atol=1e-12)


def test_frozen_attention_still_sends_the_pooling_gradient_to_x() -> None:
    """With the attention's parameters frozen, ∂L/∂x still includes the pooling path; with x
    fixed too, γ and β still get theirs (the attention's backward is skipped)."""
    layer, plain = _pair("sep", 6, DTYPE)
    for module in (layer, plain):
        for p in [*module.reduce.parameters(), *module.fc1.parameters(), *module.fc2.parameters()]:
            p.requires_grad_(False)
    x = torch.randn(3, 6, 7, 7, dtype=DTYPE, requires_grad=True)
    (gx,) = torch.autograd.grad(layer(x).square().sum(), x)
    (gx_plain,) = torch.autograd.grad(_plain(plain, x).square().sum(), x)
    torch.testing.assert_close(gx, gx_plain, rtol=1e-11, atol=1e-11)
    x = x.detach()
    grads = torch.autograd.grad(layer(x).square().sum(), [layer.weight, layer.bias])
    expected = torch.autograd.grad(_plain(plain, x).square().sum(), [plain.weight, plain.bias])
    for g, g_plain in zip(grads, expected):
        torch.testing.assert_close(g, g_plain, rtol=1e-11, atol=1e-11)


def test_running_average_options() -> None:
    """momentum None (cumulative average) and no running statistics at all."""
    for kwargs in ({"momentum": None}, {"track_running_stats": False}):
        layer = randomize(SepBatchNorm2d(6, **kwargs), stats=False).to(DTYPE)
        plain = copy.deepcopy(layer)
        for _ in range(3):
            x = torch.randn(4, 6, 5, 5, dtype=DTYPE) * 3 + 1
            assert use_native(layer, x)
            torch.testing.assert_close(layer(x), _plain(plain, x), rtol=1e-12, atol=1e-12)
        if layer.norm.track_running_stats:
            torch.testing.assert_close(layer.norm.running_mean, plain.norm.running_mean)
            torch.testing.assert_close(layer.norm.running_var, plain.norm.running_var)
            assert int(layer.norm.num_batches_tracked) == 3


def test_running_update_op_is_batchnorms_update() -> None:
    """``running_update``: r ← (1 - f) r + f s, as ``nn.BatchNorm2d``; absent buffers skipped."""
    mean, var = torch.randn(5, dtype=DTYPE), torch.rand(5, dtype=DTYPE) + 0.5
    running_mean, running_var = torch.randn(5, dtype=DTYPE), torch.rand(5, dtype=DTYPE) + 0.5
    expected = (0.7 * running_mean + 0.3 * mean, 0.7 * running_var + 0.3 * var)
    torch.ops.sepbn_cpu.running_update(running_mean, running_var, mean, var, 0.3)
    torch.testing.assert_close(running_mean, expected[0], rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(running_var, expected[1], rtol=1e-14, atol=1e-14)
    torch.ops.sepbn_cpu.running_update(None, None, mean, var, 0.3)  # no buffers: nothing


def _functional(layer: nn.Module, names: list[str], path: str) -> Callable[..., Tensor]:
    def f(x: Tensor, *params: Tensor) -> Tensor:
        with sepbn_path(path):  # type: ignore[arg-type]
            return functional_call(layer, dict(zip(names, params)), (x,))

    return f


GRADCHECKS = [
    # (kind, (N, C, H, W), layout, training)
    ("sep", (2, 6, 4, 3), "nchw", True),
    ("sep", (2, 6, 9, 8), "channels_last", True),
    ("sep", (2, 6, 5, 4), "strided", True),
    ("sep", (1, 6, 5, 4), "nchw", True),  # batch 1: statistics over H·W only
    ("sep-hard", (2, 6, 4, 3), "nchw", True),
    ("sep-g3t2", (2, 6, 5, 5), "nchw", True),
    ("sep", (2, 6, 4, 3), "nchw", False),  # eval with a gradient wanted: plain on both paths
]


@pytest.mark.parametrize("path", ["plain", "native"])
@pytest.mark.parametrize(("kind", "shape", "layout", "training"), GRADCHECKS)
def test_gradcheck_float64(kind: str, shape, layout: str, training: bool, path: str) -> None:
    """Numerical against analytical gradients of each path (the C++ backward for native)."""
    layer = randomize(KINDS[kind](shape[1])).to(DTYPE).train(training)
    trainable = dict(layer.named_parameters())
    if kind == "sep-hard":  # no gradient crosses the arg-max; check the rest
        trainable = {n: p for n, p in trainable.items() if n in ("weight", "bias")}
    names = list(trainable)
    params = [p.detach().clone().requires_grad_() for p in trainable.values()]
    x = _layout(torch.randn(shape, dtype=DTYPE), layout).requires_grad_()
    f = _functional(layer, names, path)
    calls: list[bool] = []
    original = type(layer)._forward_native

    def spy(self, inp):
        calls.append(True)
        return original(self, inp)

    type(layer)._forward_native = spy  # type: ignore[method-assign]
    try:
        assert torch.autograd.gradcheck(f, (x, *params), eps=1e-6, atol=1e-6)
        if training and layout == "nchw":  # and with no gradient asked for the input
            x_fixed = x.detach()
            assert torch.autograd.gradcheck(
                lambda *p: f(x_fixed, *p), tuple(params), eps=1e-6, atol=1e-6
            )
    finally:
        type(layer)._forward_native = original  # type: ignore[method-assign]
    assert bool(calls) == (path == "native" and training), "the wrong path ran"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("aggregation", ["soft", "hard"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "strided"])
@pytest.mark.parametrize("shape", [(1, 8, 16, 16), (4, 8, 3, 5), (1, 8, 2, 2)])
def test_native_eval_equals_plain(shape, aggregation: str, dtype, layout: str) -> None:
    """Eval with running statistics, without a gradient: one op call, same values and π."""
    layer = randomize(SepBatchNorm2d(8, aggregation=aggregation)).to(dtype).eval()
    layer.keep_attention = True
    plain = copy.deepcopy(layer)
    x = _layout(torch.randn(shape, dtype=dtype) * 2 + 0.5, layout)
    tol = {"rtol": 1e-12, "atol": 1e-12} if dtype == DTYPE else {"rtol": 1e-5, "atol": 1e-5}
    with torch.no_grad():
        assert use_native(layer, x)
        y = layer(x)
        torch.testing.assert_close(y, _plain(plain, x), **tol)
    out_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    assert y.is_contiguous(memory_format=out_format)
    torch.testing.assert_close(layer.last_attention, plain.last_attention, **tol)
    # With a gradient wanted, eval runs the differentiable plain path.
    assert not use_native(layer, x)
    y = layer(x.requires_grad_())
    assert y.grad_fn is not None


@pytest.fixture
def two_threads():
    """Two intra-op threads, so that maps above the grain split across an op's one region."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_maps_above_the_grain_split_across_threads_equal_plain(two_threads) -> None:
    """Train step and eval on maps large enough for a two-thread region (first pass, the
    attention on one thread, last pass): same values, gradients and running statistics."""
    layer, plain = _pair("sep", 32, DTYPE)
    x = (torch.randn(4, 32, 32, 32, dtype=DTYPE) * 2 + 0.5).requires_grad_()  # 2^17 values
    assert use_native(layer, x)
    y, y_plain = layer(x), _plain(plain, x)
    torch.testing.assert_close(y, y_plain, rtol=1e-11, atol=1e-11)
    assert_train_step_matches(layer, plain, x, y, y_plain, True, rtol=1e-11, atol=1e-11)
    layer.eval()
    plain.eval()
    image = torch.randn(1, 32, 96, 96, dtype=DTYPE)  # above the inference grain too
    with torch.no_grad():
        torch.testing.assert_close(layer(image), _plain(plain, image), rtol=1e-12, atol=1e-12)


def test_an_error_in_the_serial_middle_of_a_threaded_op_is_raised(two_threads) -> None:
    """The attention runs inside the op's parallel region: its failure must surface as an
    ordinary error after the region (not terminate the process or hang the other thread)."""
    layer = randomize(SepBatchNorm2d(32, num_groups=1)).to(DTYPE)
    x = torch.randn(4, 32, 32, 32, dtype=DTYPE)
    attention = layer._attention_tensors()
    # fc1 one input short of the pooled features
    attention = attention._replace(fc1_weight=attention.fc1_weight[:, :-1])
    with pytest.raises(RuntimeError, match="small_matmul: sizes differ"):
        torch.ops.sepbn_cpu.train_forward(
            x, layer.weight, layer.bias, *attention, 1e-5, layer.pool_size, False
        )


def test_dispatch_rule() -> None:
    """The C++ op for CPU float32/float64 inputs of the layer's dtype (any strides), a plain
    BatchNorm2d with more than one value per channel in training, running statistics and
    no gradient in eval; the plain path otherwise or when forced."""
    layer = randomize(SepBatchNorm2d(6))
    x = torch.randn(2, 6, 8, 8)
    assert use_native(layer, x)
    assert use_native(layer, x.to(memory_format=torch.channels_last))
    assert use_native(layer, torch.randn(2, 6, 9, 8)[:, :, ::2])  # copied to NCHW by the op
    assert use_native(layer, torch.randn(1, 6, 1, 2))  # two values per channel
    assert not use_native(layer, torch.randn(1, 6, 1, 1))  # BatchNorm2d's error, from plain
    assert not use_native(layer, x.double())  # not the parameters' dtype
    assert not use_native(layer, x.bfloat16())
    assert not use_native(layer, x.to("meta"))
    with sepbn_path("plain"):
        assert not use_native(layer, x)
    with sepbn_path("native"):
        assert use_native(layer, x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not use_native(layer, x)
    with pytest.raises(ValueError, match="unknown SepBN path 'fused'; valid: 'auto'"):
        sepbn_path("fused").__enter__()  # type: ignore[arg-type]
    layer.eval()
    with torch.no_grad():
        assert use_native(layer, x)
        assert use_native(layer, torch.randn(1, 6, 1, 1))  # running statistics: any size
    assert not use_native(layer, x)  # the parameters want a gradient: plain
    no_stats = SepBatchNorm2d(6, track_running_stats=False).eval()
    with torch.no_grad():
        assert not use_native(no_stats, x.detach())  # batch statistics in eval: plain
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(randomize(SepBatchNorm2d(6)))
    assert not use_native(synced, x.detach())  # all-reduced statistics: plain
    assert not use_native(randomize(SimpleSepBatchNorm2d(6)), x.detach())  # no C++ form


def test_torch_func_transforms_run_the_plain_path() -> None:
    """``torch.func.grad`` and ``vmap`` wrap their tensors, which the ops have no rule for."""
    layer = randomize(SepBatchNorm2d(6)).to(DTYPE)
    reference = copy.deepcopy(layer)
    seen: list[bool] = []

    def loss(x: Tensor, buffers: dict[str, Tensor]) -> Tensor:  # buffers: BN's update
        seen.append(use_native(layer, x))
        return functional_call(layer, buffers, (x,)).square().sum()

    x = torch.randn(2, 6, 5, 5, dtype=DTYPE)
    assert use_native(layer, x)
    gx = torch.func.grad(loss)(x, {n: b.clone() for n, b in layer.named_buffers()})
    x_ref = x.clone().requires_grad_()
    _plain(reference, x_ref).square().sum().backward()
    torch.testing.assert_close(gx, x_ref.grad)
    layer.eval()
    with torch.no_grad():
        assert use_native(layer, x)
        torch.func.vmap(loss, in_dims=(0, None))(x.unsqueeze(1), dict(layer.named_buffers()))
    assert seen == [False, False]


def _python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("SEPBN_PATH", "CXX")}
    full_env = {**base, "PYTHONPATH": str(REPO / "src"), **env}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=full_env, timeout=900
    )


_PROBE = (
    "import warnings, torch; from sepbn.nn import SepBatchNorm2d;"
    "from sepbn.nn.dispatch import use_native; warnings.simplefilter('always');"
    "layer = SepBatchNorm2d(4); x = torch.randn(2, 4, 6, 6);"
    "print('native', use_native(layer, x)); layer(x).sum().backward(); layer(x);"
    "print('grad', bool(layer.weight.grad.abs().sum() > 0))"
)

_WARNING = "RuntimeWarning: sepbn: C++ CPU kernels unavailable"


def test_build_once_then_load_from_the_cache(tmp_path: Path) -> None:
    """The one test that builds from scratch (about a minute): the first process builds into
    ``TORCH_EXTENSIONS_DIR`` and says so, the second loads the library without a word."""
    env = {"TORCH_EXTENSIONS_DIR": str(tmp_path)}
    first = _python(_PROBE, env)
    assert first.returncode == 0, first.stderr
    assert "building the C++ CPU kernels" in first.stderr and "native True" in first.stdout
    assert "unavailable" not in first.stderr
    built = list(tmp_path.rglob("sepbn_cpu_*.so"))
    assert len(built) == 1, built
    modified = built[0].stat().st_mtime_ns
    second = _python(_PROBE, env)
    assert second.returncode == 0, second.stderr
    assert "building" not in second.stderr and "native True" in second.stdout
    assert "grad True" in second.stdout
    assert built[0].stat().st_mtime_ns == modified  # loaded, not rebuilt


def test_missing_compiler_falls_back_to_plain_with_one_warning(tmp_path: Path) -> None:
    env = {"TORCH_EXTENSIONS_DIR": str(tmp_path), "CXX": "/nonexistent/g++"}
    result = _python(_PROBE, env)
    assert result.returncode == 0, result.stderr
    assert "native False" in result.stdout and "grad True" in result.stdout
    assert result.stderr.count(_WARNING) == 1  # two forward calls, one warning
    assert "/nonexistent/g++" in result.stderr  # the reason is named
    assert not list(tmp_path.rglob("*.so"))
    never = _python(
        _PROBE, {"TORCH_EXTENSIONS_DIR": str(tmp_path / "never"), "SEPBN_PATH": "plain"}
    )
    assert never.returncode == 0, never.stderr
    assert "native False" in never.stdout and "grad True" in never.stdout
    assert not (tmp_path / "never").exists() and "unavailable" not in never.stderr
    assert "building" not in never.stderr
    bad = _python("import sepbn.nn", {"SEPBN_PATH": "fused"})
    assert bad.returncode != 0 and "SEPBN_PATH='fused'; valid: 'auto'" in bad.stderr


def test_missing_compiler_with_sepbn_path_native_is_a_one_line_error(tmp_path: Path) -> None:
    env = {"TORCH_EXTENSIONS_DIR": str(tmp_path), "CXX": "/nonexistent/g++", "SEPBN_PATH": "native"}
    result = _python(_PROBE, env)
    assert result.returncode != 0 and "native " not in result.stdout
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("sepbn.nn.native.NativeBuildError: building "), last
    assert "/nonexistent/g++: not found" in last  # the reason, on the error's one line
    assert "RuntimeWarning" not in result.stderr  # an error, not also a warning


def _recording_backend(codes: list[str]):
    """A ``torch.compile`` backend that keeps the code of every graph (and its subgraphs)."""
    from torch._dynamo.backends.registry import lookup_backend

    aot_eager = lookup_backend("aot_eager")

    def backend(gm: torch.fx.GraphModule, example_inputs):
        codes.extend(m.code for m in gm.modules() if isinstance(m, torch.fx.GraphModule))
        return aot_eager(gm, example_inputs)

    return backend


@pytest.mark.parametrize(
    "kind, layout", [("sep", "nchw"), ("sep-hard", "nchw"), ("sep", "channels_last")]
)
def test_compiled_layer_puts_the_native_ops_in_the_graph(kind: str, layout: str) -> None:
    """Under ``torch.compile(fullgraph=True)`` the train step is the C++ op call, and equals
    the plain path: values, gradients and running statistics agree to float64 rounding."""
    torch._dynamo.reset()
    layer, plain = _pair(kind, 6, DTYPE)
    codes: list[str] = []
    compiled = torch.compile(layer, backend=_recording_backend(codes), fullgraph=True)
    x = _layout(torch.randn(3, 6, 9, 7, dtype=DTYPE), layout).requires_grad_()
    y, y_plain = compiled(x), _plain(plain, x)
    graph = "\n".join(codes)
    assert "sepbn_cpu.train_forward" in graph and "sepbn_cpu.running_update" in graph, graph
    torch.testing.assert_close(y, y_plain, rtol=1e-12, atol=1e-12)
    assert_train_step_matches(layer, plain, x, y, y_plain, True, rtol=1e-10, atol=1e-10)


def test_compiled_eval_without_gradient_is_one_native_call() -> None:
    torch._dynamo.reset()
    layer = randomize(SepBatchNorm2d(8, num_groups=2)).eval()
    plain = copy.deepcopy(layer)
    codes: list[str] = []
    compiled = torch.compile(layer, backend=_recording_backend(codes), fullgraph=True)
    x = torch.randn(1, 8, 12, 12)
    with torch.no_grad():
        y = compiled(x)
        torch.testing.assert_close(y, _plain(plain, x), rtol=1e-5, atol=1e-5)
    assert "sepbn_cpu.eval_forward" in "\n".join(codes)
    # With a gradient wanted the compiled eval layer traces the differentiable plain path.
    codes.clear()
    torch._dynamo.reset()
    compiled = torch.compile(layer, backend=_recording_backend(codes), fullgraph=True)
    y = compiled(x.requires_grad_())
    assert y.grad_fn is not None and "sepbn_cpu" not in "\n".join(codes)


def test_compiled_plain_path_has_no_native_op() -> None:
    """``sepbn_path("plain")`` and ``momentum=None`` (whose factor is a Python float read
    from the batch count: not fullgraph) compile to values equal to eager's."""
    cases = [
        (lambda: SepBatchNorm2d(6), "plain", True),
        (lambda: SepBatchNorm2d(6, momentum=None), "auto", False),
    ]
    for make, path, fullgraph in cases:
        torch._dynamo.reset()
        layer = randomize(make())
        eager = copy.deepcopy(layer)
        codes: list[str] = []
        backend = _recording_backend(codes)
        for _ in range(2):  # the cumulative average's factor changes at the second step
            x = torch.randn(2, 6, 8, 8)
            with sepbn_path(path):  # type: ignore[arg-type]
                y = torch.compile(layer, backend=backend, fullgraph=fullgraph)(x)
            assert ("sepbn_cpu" in "\n".join(codes)) == (path != "plain")
            torch.testing.assert_close(y, _plain(eager, x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(layer.norm.running_var, eager.norm.running_var)
        assert int(layer.norm.num_batches_tracked) == 2


@pytest.mark.parametrize("training", [True, False])
def test_export_traces_the_plain_path(training: bool) -> None:
    """``torch.export`` (ONNX, AOT) gets standard ATen ops, never the machine-local C++ ops."""
    layer = randomize(SepBatchNorm2d(6)).train(training)
    x = torch.randn(2, 6, 8, 8)
    program = torch.export.export(copy.deepcopy(layer), (x,))
    assert "sepbn_cpu" not in str(program.graph)
    assert "adaptive_max_pool2d" not in str(program.graph)  # band maxima, which ONNX has
    torch.testing.assert_close(program.module()(x), _plain(layer, x))


def test_inductor_compiled_train_step_equals_eager() -> None:
    """With inductor (the default backend) the compiled step equals eager in float32."""
    torch._dynamo.reset()
    layer, plain = _pair("sep", 8, torch.float32)
    compiled = torch.compile(layer, fullgraph=True)
    x = torch.randn(4, 8, 10, 10, requires_grad=True)
    y, y_plain = compiled(x), _plain(plain, x)
    # float32 in both; the C++ and ATen reductions sum in different orders.
    torch.testing.assert_close(y, y_plain, rtol=1e-5, atol=1e-5)
    assert_train_step_matches(layer, plain, x, y, y_plain, True, rtol=1e-4, atol=1e-4)


@pytest.mark.filterwarnings("ignore:dynamo_pgo force disabled")
def test_inductor_fuses_the_folded_map_pass_with_the_activation_and_pooling() -> None:
    """The Vanilla CNN's block (conv, SepBN, LeakyReLU, 2×2 max pooling) under inductor: the
    op stops before its pass over the map, and the SepBN multiply-add, the activation and
    the pooling are one generated kernel, as for a BatchNorm; values and gradients equal
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
    torch.testing.assert_close(model[1].norm.running_var, eager[1].norm.running_var)


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
    assert re.search(rf"sepbn_cpu\.train_forward\.default\({conv[1]},", code), code
    y_eager = eager(x_eager)
    torch.testing.assert_close(y, y_eager, rtol=1e-4, atol=1e-4)
    assert_backward_matches(model, eager, x_compiled, x_eager, y, y_eager, 1e-4, 1e-4, True)
    torch.testing.assert_close(model[1].norm.running_var, eager[1].norm.running_var)


def test_the_op_is_differentiable_on_its_own_as_a_custom_op() -> None:
    """Called directly, ``train_forward`` differentiates through its ``register_autograd``
    formula to the same gradients the layer's Function gives, and ``torch.library.opcheck``
    (schema, fake function, autograd registration) accepts it."""
    torch.manual_seed(0)
    layer = randomize(SepBatchNorm2d(6, num_sets=3, num_groups=2, hidden_features=5)).double()
    x = torch.randn(3, 6, 7, 5, dtype=torch.float64, requires_grad=True)
    g = torch.randn(3, 6, 7, 5, dtype=torch.float64)
    params = [layer.weight, layer.bias, *layer._attention_tensors()[:6]]
    args = (x, layer.weight, layer.bias, *layer._attention_tensors(), 1e-5, 3, False)
    y = torch.ops.sepbn_cpu.train_forward(*args)[0]
    direct = torch.autograd.grad(y, [x, *params], g)
    y_layer = layer(x)  # train mode: the layer's own route (one more batch counted)
    via_layer = torch.autograd.grad(y_layer, [x, *params], g)
    torch.testing.assert_close(y, y_layer, rtol=1e-12, atol=1e-12)
    for got, want in zip(direct, via_layer):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.library.opcheck(torch.ops.sepbn_cpu.train_forward.default, args)

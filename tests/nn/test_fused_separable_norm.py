"""The fused CPU kernels of ``sepbn.nn.fused_separable_norm`` against the plain path.

Every test here runs with the C++ kernels of ``sepbn.nn.native`` switched off (they would
otherwise take the NCHW inputs), so that "auto" means "fused"; ``test_native.py`` tests
the C++ kernels against the same plain path.

The plain path is ``BatchNorm2d(x)`` then ``γ̂ x̂ + β̂`` from differentiable modules
(``use_fused = False``). Each input layout below takes a different branch of the fused
kernels; :func:`make_input` checks that it still does against the module's size
thresholds, should those change.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from helpers import assert_train_step_matches, randomize
from sepbn.nn import SepBatchNorm2d, SimpleSepBatchNorm2d, native
from sepbn.nn import fused_separable_norm as fused
from sepbn.nn.fused_separable_norm import _band_max_pool2d, adaptive_max_pool2d

DTYPE = torch.float64


@pytest.fixture(autouse=True)
def _without_native_kernels():
    with native.disabled():
        yield


# Small layers (a narrow MLP keeps the numerical Jacobians cheap); C = 6 unless given.
KINDS: dict[str, Callable[[int], nn.Module]] = {
    "sep": lambda c: SepBatchNorm2d(c, num_sets=3, num_groups=2, hidden_features=5),
    "sep-hard": lambda c: SepBatchNorm2d(c, aggregation="hard", hidden_features=5),
    "simple": lambda c: SimpleSepBatchNorm2d(c, num_sets=3, reduction=2),
}

# Input layouts: C, dtype -> an (N, C, H, W) input, and the branch each one takes. Made in
# the final dtype: a conversion or arithmetic would turn the strided one contiguous.
LAYOUTS: dict[str, Callable[[int, torch.dtype], Tensor]] = {
    # H·W < _FUSED_SUMS_MIN_PIXELS: the backward's per-(n, c) sums by two plain reductions
    "small": lambda c, dtype: torch.randn(3, c, 4, 3, dtype=dtype),
    # H·W >= _FUSED_SUMS_MIN_PIXELS: the sums from ATen's batch-norm backward kernel
    "large": lambda c, dtype: torch.randn(2, c, 4, 4, dtype=dtype),
    # not NCHW-contiguous: folded forward, plain sums, pooling gradient added densely
    "channels_last": lambda c, dtype: torch.randn(2, c, 4, 4, dtype=dtype).to(
        memory_format=torch.channels_last
    ),
    "strided": lambda c, dtype: torch.randn(2, c, 9, 5, dtype=dtype)[:, :, ::2],
    # H·W > _CHANNELS_LAST_POOL_MAX_PIXELS: the attention pools with ATen's NCHW kernel
    "wide": lambda c, dtype: torch.randn(1, c, 17, 16, dtype=dtype),
    # one sample: the batch statistics run over H·W only
    "batch1": lambda c, dtype: torch.randn(1, c, 5, 4, dtype=dtype),
}


def make_input(layout: str, channels: int, dtype: torch.dtype = DTYPE) -> Tensor:
    """An input of ``layout``, checked to take the branch the layout is named for.

    The thresholds are the module's own, so a change to them that moves a layout to the
    other side of its branch fails here instead of leaving the branch untested.
    """
    x = LAYOUTS[layout](channels, dtype)
    pixels = x.shape[2] * x.shape[3]
    nchw, channels_last = x.is_contiguous(), x.is_contiguous(memory_format=torch.channels_last)
    expected = {
        "small": nchw and pixels < fused._FUSED_SUMS_MIN_PIXELS,
        "large": nchw and pixels >= fused._FUSED_SUMS_MIN_PIXELS,
        "channels_last": channels_last and not nchw,
        "strided": not nchw and not channels_last,
        "wide": nchw and pixels > fused._CHANNELS_LAST_POOL_MAX_PIXELS,
        "batch1": nchw and x.shape[0] == 1 and pixels >= fused._FUSED_SUMS_MIN_PIXELS,
    }
    assert expected[layout], f"{layout} input {tuple(x.shape)} strides {x.stride()}"
    return x


def _pair(kind: str, channels: int, dtype: torch.dtype) -> tuple[nn.Module, nn.Module]:
    """The same random layer twice, in training mode: fused (default) and plain."""
    layer = randomize(KINDS[kind](channels)).to(dtype).train()
    plain = copy.deepcopy(layer)
    plain.use_fused = False
    return layer, plain


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("input_grad", [True, False])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("kind", KINDS)
def test_fused_equals_plain(kind: str, layout: str, input_grad: bool, dtype: torch.dtype) -> None:
    """Values, every gradient, running statistics and memory format, in training mode."""
    # float32: the paths round differently (one pass vs. x̂ then the affine), by a few ulps
    tol = {"rtol": 1e-12, "atol": 1e-12} if dtype == DTYPE else {"rtol": 1e-5, "atol": 1e-5}
    layer, plain = _pair(kind, 6, dtype)
    x = make_input(layout, 6, dtype).requires_grad_(input_grad)
    y, y_plain = layer(x), plain(x)
    torch.testing.assert_close(y, y_plain, **tol)
    for memory_format in (torch.contiguous_format, torch.channels_last):
        if x.is_contiguous(memory_format=memory_format):
            assert y.is_contiguous(memory_format=memory_format)
    assert_train_step_matches(layer, plain, x, y, y_plain, input_grad, **tol)


@pytest.mark.parametrize("kind", ["sep", "simple"])
def test_non_contiguous_output_gradient(kind: str, monkeypatch) -> None:
    """A contiguous input whose output gradient is not: the backward's plain sums."""
    seen = []

    def norm_backward(grad_y: Tensor, *args):
        seen.append(grad_y.is_contiguous())
        return original(grad_y, *args)

    original = fused._norm_backward
    monkeypatch.setattr(fused, "_norm_backward", norm_backward)
    layer, plain = _pair(kind, 6, DTYPE)
    x1 = make_input("large", 6).requires_grad_()
    x2 = x1.detach().clone().requires_grad_()
    grad = torch.randn(2, 6, 4, 4, dtype=DTYPE).transpose(2, 3)  # square maps: same shape
    layer(x1).backward(grad)
    plain(x2).backward(grad)
    assert seen == [False]  # the fused backward ran, and saw the gradient as it was given
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-12, atol=1e-12)
    for (name, p1), p2 in zip(layer.named_parameters(), plain.parameters()):
        torch.testing.assert_close(p1.grad, p2.grad, rtol=1e-12, atol=1e-12, msg=name)


def test_momentum_none_and_no_running_statistics() -> None:
    for kwargs in ({"momentum": None}, {"track_running_stats": False}):
        layer = randomize(SepBatchNorm2d(6, **kwargs), stats=False).to(DTYPE)
        plain = copy.deepcopy(layer)
        plain.use_fused = False
        for _ in range(3):  # the cumulative average weighs every batch equally
            x = torch.randn(4, 6, 5, 5, dtype=DTYPE) * 3 + 1
            torch.testing.assert_close(layer(x), plain(x), rtol=1e-12, atol=1e-12)
        if layer.norm.track_running_stats:
            torch.testing.assert_close(layer.norm.running_var, plain.norm.running_var)
            assert int(layer.norm.num_batches_tracked) == 3


class _Calls:
    """Counts the calls of a wrapped function."""

    def __init__(self, fn: Callable) -> None:
        self.fn, self.count = fn, 0

    def __call__(self, *args, **kwargs):
        self.count += 1
        return self.fn(*args, **kwargs)


@pytest.mark.parametrize("kind", ["sep", "simple"])
def test_fused_kernel_is_the_eager_training_default(kind: str, monkeypatch) -> None:
    """Eager training runs the fused kernel; use_fused=False, eval mode and autocast do not."""
    import sepbn.nn.separable_batch_norm as sep_module
    import sepbn.nn.separable_norm_base as base_module

    module, name = (
        (sep_module, "sep_batch_norm_train")
        if kind == "sep"
        else (base_module, "separable_norm_train")
    )
    calls = _Calls(getattr(module, name))
    monkeypatch.setattr(module, name, calls)
    layer = randomize(KINDS[kind](6))
    x = torch.randn(4, 6, 5, 5, requires_grad=True)
    layer(x).sum().backward()
    assert calls.count == 1
    layer.use_fused = False
    layer(x)
    layer.use_fused = True
    layer.eval()
    layer(x)
    layer.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        layer(x)
    assert calls.count == 1


def _functional(layer: nn.Module, names: list[str]) -> Callable[..., Tensor]:
    def f(x: Tensor, *params: Tensor) -> Tensor:
        return functional_call(layer, dict(zip(names, params)), (x,))

    return f


GRADCHECKS = [
    *((kind, layout, True) for kind in KINDS for layout in LAYOUTS if layout != "wide"),
    ("sep", "wide", True),  # the only kind that pools
    *((kind, "large", False) for kind in KINDS),  # eval: running statistics, folded
]


@pytest.mark.parametrize(("kind", "layout", "training"), GRADCHECKS)
def test_gradcheck_float64(kind: str, layout: str, training: bool) -> None:
    """Numerical against analytical gradients on every dispatch branch of the layer."""
    channels = 2 if layout == "wide" else 6  # the wide map has many pixels to perturb
    layer = randomize(KINDS[kind](channels)).to(DTYPE).train(training)
    trainable = dict(layer.named_parameters())
    if kind == "sep-hard":  # no gradient crosses the arg-max; check the rest
        trainable = {n: p for n, p in trainable.items() if n in ("weight", "bias")}
    names = list(trainable)
    params = [p.detach().clone().requires_grad_() for p in trainable.values()]
    x = make_input(layout, channels).requires_grad_()
    f = _functional(layer, names)
    assert torch.autograd.gradcheck(f, (x, *params), eps=1e-6, atol=1e-6)
    if training and layout == "large":  # and with no gradient asked for the input
        x_fixed = x.detach()
        assert torch.autograd.gradcheck(
            lambda *p: f(x_fixed, *p), tuple(params), eps=1e-6, atol=1e-6
        )


@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 4, 2, 2), (3, 2, 17, 33), (2, 2, 40, 3)])
@pytest.mark.parametrize("pool_size", [1, 2, 3, 5])
def test_band_max_pool_equals_aten_with_overlapping_bands_and_ties(shape, pool_size):
    x = torch.randn(shape, dtype=torch.float64)
    for values in (x, x.round()):  # rounded: many ties inside windows
        expected = F.adaptive_max_pool2d(values, pool_size)
        assert torch.equal(_band_max_pool2d(values, pool_size), expected)


def test_adaptive_max_pool2d_takes_band_route_for_large_maps_and_keeps_nan():
    x = torch.randn(1, 64, 64, 64)
    assert x.numel() >= fused._BAND_POOL_MIN_NUMEL
    x[0, 3, 5, 5] = float("nan")
    with torch.no_grad():
        pooled = adaptive_max_pool2d(x, 3)
    expected = F.adaptive_max_pool2d(x, 3)
    assert torch.equal(pooled.isnan(), expected.isnan()) and int(pooled.isnan().sum()) == 1
    finite = ~expected.isnan()
    assert torch.equal(pooled[finite], expected[finite])


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("size", [(5, 7), (17, 16)])
def test_adaptive_max_pool2d_indices_equal_aten(memory_format, size) -> None:
    """The channels-last route (small maps) returns ATen's values and arg-max indices."""
    x = torch.randn(2, 3, *size).round().contiguous(memory_format=memory_format)  # with ties
    pooled, index = adaptive_max_pool2d(x, 3, return_indices=True)
    expected, expected_index = F.adaptive_max_pool2d(x.contiguous(), 3, return_indices=True)
    assert torch.equal(pooled, expected) and torch.equal(index, expected_index)

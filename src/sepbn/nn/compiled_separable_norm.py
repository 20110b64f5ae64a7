"""The compiled train-mode path of ``SepBatchNorm2d``: one function that inductor fuses.

:func:`sep_batch_norm_step` is the whole train-mode layer (Eqs. 1, 5-7) written as one
pure function of tensors: adaptive max pooling, the 1×1 convolution and MLP, the
temperature softmax, the mixing of the sets, the batch statistics, the running-statistics
update and the normalize-and-map. ``torch.compile`` turns it into a handful of kernels (on
CUDA: one pooling, one Welford reduction, two or three tiny matmuls with their epilogues
and one pointwise pass over the map in forward; the backward likewise), which is what the
fused CPU autograd node of :mod:`sepbn.nn.fused_separable_norm` does by hand.

Precision: whatever the input's dtype (float16/bfloat16 under autocast or in a half
model), statistics, attention and the folded affine are computed in float32 (float64
for float64 parameters) and only the
pass over the map reads and writes the input's dtype, as cuDNN's batch norm does. The
function runs with autocast disabled, so its graph does not depend on the ambient
autocast state.

Compilation is lazy: :func:`compiled_step` compiles once per *shape class* (device,
dtype, shape, memory format, parameter dtype, the layer's static hyper-parameters and
the grad mode) and caches the callable. Every class gets its own copy of the function's
code object, so dynamo's per-code recompile limit (8) never silently sends the 50-odd
SepBN shapes of a ResNeXt-50 back to eager. A class whose compilation raises is
remembered as failed and returns None (the caller then takes the plain path), with one
warning per process.
"""

from __future__ import annotations

import types
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

CompiledStep = Callable[..., tuple[Tensor, Tensor]]

_CACHE: dict[tuple[Any, ...], CompiledStep | None] = {}
_warned = False


def sep_batch_norm_step(
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    reduce_weight: Tensor,
    reduce_bias: Tensor,
    hidden_weight: Tensor,
    hidden_bias: Tensor,
    out_weight: Tensor,
    out_bias: Tensor,
    tau: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    factor: float,
    eps: float,
    pool_size: int,
    hard: bool,
) -> tuple[Tensor, Tensor]:
    """Train-mode ``SepBatchNorm2d`` as one pure function; returns ``(y, π)``.

    Arguments follow :func:`sepbn.nn.fused_separable_norm.sep_batch_norm_train`. Updates
    ``running_mean``/``running_var`` in place like ``nn.BatchNorm2d`` (momentum ``factor``,
    unbiased variance). Runs eagerly too; :func:`compiled_step` compiles it.

    Shape:
        - x: (N, C, H, W), any float dtype and memory format
        - Output: (N, C, H, W) in the dtype and memory format of ``x``, π (N, G, K) in float32
          (float64 for float64 parameters)
    """
    n, c, h, w = x.shape
    k, g = weight.shape[0], reduce_weight.shape[0]
    f32 = torch.promote_types(weight.dtype, torch.float32)  # float64 stays float64
    # Attention (Fig. 1): pool, 1×1 convolution, MLP, softmax with temperature (Eq. 5).
    pooled = F.adaptive_max_pool2d(x, pool_size).to(f32)  # (N, C, T, T)
    positions = pooled.permute(0, 2, 3, 1).reshape(-1, c)  # (N·T·T, C)
    reduced = F.linear(positions, reduce_weight.to(f32), reduce_bias.to(f32))  # (N·T·T, G)
    hidden = F.relu(F.linear(reduced.reshape(n, -1), hidden_weight.to(f32), hidden_bias.to(f32)))
    logits = F.linear(hidden, out_weight.to(f32), out_bias.to(f32)).view(n, g, k)  # (N, G, K)
    if hard:
        index = logits.argmax(dim=-1, keepdim=True)  # (N, G, 1)
        pi = torch.zeros_like(logits).scatter_(-1, index, 1.0)
    else:
        pi = F.softmax(logits / tau.to(f32), dim=-1)
    # Eq. 6: one scale and shift per (sample, channel).
    sets = torch.stack((weight, bias)).to(f32).view(2, 1, k, g, c // g).transpose(2, 3)
    mixed = (pi.view(1, n, g, k, 1) * sets).sum(dim=3).reshape(2, n, c)  # (2, N, C)
    # Batch statistics (Eq. 1), in float32.
    var, mean = torch.var_mean(x.to(f32), dim=(0, 2, 3), correction=0)  # (C,)
    if running_mean is not None and running_var is not None:
        count = n * h * w
        with torch.no_grad():
            unbiased = var * (count / max(count - 1, 1))
            running_mean.copy_(running_mean * (1 - factor) + mean.to(running_mean.dtype) * factor)
            running_var.copy_(running_var * (1 - factor) + unbiased.to(running_var.dtype) * factor)
    # Eq. 7 folded into one multiply-add over the map: y = a x + b.
    a = mixed[0] * torch.rsqrt(var + eps)  # (N, C)
    b = mixed[1] - a * mean  # (N, C)
    y = (x.to(f32) * a[..., None, None] + b[..., None, None]).to(x.dtype)
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        y = y.contiguous(memory_format=torch.channels_last)  # a no-op unless inductor chose NCHW
    return y, pi


def shape_class(x: Tensor, weight: Tensor, static: tuple[Any, ...]) -> tuple[Any, ...]:
    """The key one compiled callable serves: everything ``dynamic=False`` specializes on."""
    layout: str | tuple[int, ...]
    if x.is_contiguous():
        layout = "nchw"
    elif x.is_contiguous(memory_format=torch.channels_last):
        layout = "nhwc"
    else:
        layout = tuple(x.stride())
    return (
        x.device,
        x.dtype,
        tuple(x.shape),
        layout,
        weight.dtype,
        torch.is_grad_enabled(),
        x.requires_grad,
        static,
    )


def has_failed(key: tuple[Any, ...], backend: str) -> bool:
    """Whether this shape class failed to compile with ``backend`` before."""
    full_key = (*key, backend)
    return full_key in _CACHE and _CACHE[full_key] is None


def compiled_step(key: tuple[Any, ...], backend: str) -> CompiledStep:
    """The compiled :func:`sep_batch_norm_step` for one shape class, wrapped on first use.

    ``torch.compile`` compiles at the first call of the returned callable; the caller
    catches failures there and calls :func:`mark_failed`.

    Args:
        key: From :func:`shape_class`, plus anything else that must not share a graph.
        backend: ``torch.compile`` backend (``"inductor"``; ``"aot_eager"`` in CI).
    """
    full_key = (*key, backend)
    if _CACHE.get(full_key) is None:
        # A fresh code object: dynamo's cache and recompile limit are per code object.
        fn = types.FunctionType(
            sep_batch_norm_step.__code__.replace(),
            sep_batch_norm_step.__globals__,
            "sep_batch_norm_step",
        )
        _CACHE[full_key] = torch.compile(fn, backend=backend, dynamic=False, fullgraph=True)
    step = _CACHE[full_key]
    assert step is not None
    return step


def mark_failed(key: tuple[Any, ...], backend: str, error: BaseException) -> None:
    """Remember that a shape class does not compile, and warn once per process."""
    global _warned
    full_key = (*key, backend)
    _CACHE[full_key] = None
    if not _warned:
        _warned = True
        warnings.warn(
            f"SepBatchNorm2d: torch.compile(backend={backend!r}) failed "
            f"({type(error).__name__}: {error}); this shape runs the plain path from now on",
            RuntimeWarning,
            stacklevel=3,
        )


def clear_cache() -> None:
    """Forget every compiled callable and failure (tests; after changing backends)."""
    global _warned
    _CACHE.clear()
    _warned = False


def cache_size() -> int:
    """Number of shape classes compiled (or failed) so far."""
    return len(_CACHE)

"""Autograd nodes over the C++ CPU kernels of :mod:`sepbn.nn.native` (the ``"native"`` path).

The ops in ``torch.ops.sepbn_cpu`` compute; these :class:`torch.autograd.Function` wrappers
save what the backward op needs and map its outputs to the inputs' gradients. The
formulas are those of :mod:`sepbn.nn.fused_separable_norm` (which derives them); tests
compare both, and the plain path, on the same inputs.

Call :func:`sepbn.nn.native.available` first: it builds and loads the library.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

_registered = {"done": False}


def register() -> None:
    """Check that the library's ops are present (called by :func:`sepbn.nn.native.available`)."""
    if _registered["done"]:
        return
    namespace = torch.ops.sepbn_cpu
    for name in (
        "sepbn_train_forward", "sepbn_train_backward", "sepbn_eval_forward",
        "adaptive_max_pool", "norm_train_forward", "norm_train_backward", "running_update",
    ):  # fmt: skip
        getattr(namespace, name)  # raises if the library lacks the op
    _register_fakes()
    _registered["done"] = True


def _map_like(x: Tensor) -> Tensor:
    """The C++ ops' output maps: channels-last for a channels-last ``x``, NCHW otherwise.

    The ops are tagged ``flexible_layout`` (inductor hands them the layout it has), so the
    fake functions must state the strides the kernels really return (``map_like`` in C++).
    """
    channels_last = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=layout)


def _register_fakes() -> None:
    """Shape functions, so that ``torch.compile`` can trace the ops (as opaque calls)."""
    lib = "sepbn_cpu::"

    @torch.library.register_fake(lib + "sepbn_train_forward")
    def _train_forward(
        x: Tensor, weight: Tensor, bias: Tensor, reduce_w: Tensor, reduce_b: Tensor,
        hidden_w: Tensor, *rest: Any,
    ) -> list[Tensor]:  # fmt: skip
        # rest: hidden_b, out_w, out_b, tau, eps, pool_size, hard[, apply]
        pool_size, apply = int(rest[5]), bool(rest[7]) if len(rest) > 7 else True
        n, c = x.shape[:2]
        k, g, tt = weight.shape[0], reduce_w.shape[0], pool_size * pool_size
        return [
            _map_like(x) if apply else x.new_empty(0), x.new_empty(n, g, k),
            x.new_empty(n, c, tt, dtype=torch.int32), x.new_empty(n * tt, c),
            x.new_empty(n, tt * g), x.new_empty(n, hidden_w.shape[0]), x.new_empty(n, c),
            x.new_empty(c), x.new_empty(c), x.new_empty(c), x.new_empty(n, c), x.new_empty(n, c),
        ]  # fmt: skip

    @torch.library.register_fake(lib + "sepbn_train_backward")
    def _train_backward(
        grad_y: Tensor, x: Tensor, weight: Tensor, bias: Tensor, reduce_w: Tensor,
        hidden_w: Tensor, out_w: Tensor, *rest: Any,
    ) -> list[Tensor]:  # fmt: skip
        need_input, need_attention = rest[-2], rest[-1]

        def maybe(*shape: int, wanted: bool) -> Tensor:
            return x.new_empty(*shape) if wanted else x.new_empty(0)

        g, hidden, gk = reduce_w.shape[0], hidden_w.shape[0], out_w.shape[0]
        grad_x = _map_like(x) if need_input else x.new_empty(0)
        return [
            grad_x, torch.empty_like(weight), torch.empty_like(bias),
            maybe(*reduce_w.shape, wanted=need_attention), maybe(g, wanted=need_attention),
            maybe(*hidden_w.shape, wanted=need_attention), maybe(hidden, wanted=need_attention),
            maybe(*out_w.shape, wanted=need_attention), maybe(gk, wanted=need_attention),
        ]  # fmt: skip

    @torch.library.register_fake(lib + "sepbn_eval_forward")
    def _eval_forward(
        x: Tensor, weight: Tensor, bias: Tensor, reduce_w: Tensor, *rest: Any
    ) -> list[Tensor]:
        return [_map_like(x), x.new_empty(x.shape[0], reduce_w.shape[0], weight.shape[0])]

    @torch.library.register_fake(lib + "adaptive_max_pool")
    def _pool(x: Tensor, pool_size: int) -> Tensor:
        n, c = x.shape[:2]
        return x.new_empty(n, pool_size, pool_size, c).permute(0, 3, 1, 2)

    @torch.library.register_fake(lib + "norm_train_forward")
    def _norm_forward(x: Tensor, scale: Tensor, shift: Tensor, eps: float) -> list[Tensor]:
        c = x.shape[1]
        return [_map_like(x), x.new_empty(c), x.new_empty(c), x.new_empty(c)]

    @torch.library.register_fake(lib + "norm_train_backward")
    def _norm_backward(
        grad_y: Tensor, x: Tensor, scale: Tensor, mean: Tensor, rstd: Tensor, need_input: bool
    ) -> list[Tensor]:
        grad_x = _map_like(x) if need_input else x.new_empty(0)
        return [grad_x, torch.empty_like(scale), torch.empty_like(scale)]

    @torch.library.register_fake(lib + "running_update")
    def _running_update(*args: Any) -> None:
        return None


def _grad_or_none(grad: Tensor, needed: bool) -> Tensor | None:
    return grad if needed else None


class _NativeSepBatchNormTrain(torch.autograd.Function):
    """Train-mode ``SepBatchNorm2d`` (Eqs. 1, 5-7) as two C++ op calls, forward and backward.

    Returns ``(y, π, batch mean, unbiased batch variance)``; the last three carry no
    gradient. The running statistics are updated outside the node, so that ``torch.compile``
    can trace it (a node's forward must not mutate module buffers).

    With ``fold`` (a user's ``torch.compile``) the forward op stops short of the pass over
    the map and returns the folded mapping ``y = a x + b`` (a, b per sample and channel);
    the multiply-add is then ATen code in the graph, which inductor fuses with the ops
    after the layer (in the Vanilla CNN a LeakyReLU and a 2×2 max pooling), as it fuses a
    BatchNorm's. The backward is the same C++ op either way.
    """

    @staticmethod
    def forward(
        ctx: Any,
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
        eps: float,
        pool_size: int,
        hard: bool,
        fold: bool = False,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        y, pi, index, positions, flat, hidden, scale, mean, rstd, unbiased, a, b = (
            torch.ops.sepbn_cpu.sepbn_train_forward(
                x, weight, bias, reduce_weight, reduce_bias, hidden_weight, hidden_bias,
                out_weight, out_bias, tau, eps, pool_size, hard, not fold,
            )
        )  # fmt: skip
        if fold:
            y = torch.addcmul(b[..., None, None], x, a[..., None, None])
        ctx.mark_non_differentiable(pi, mean, unbiased)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(
            x, weight, bias, reduce_weight, hidden_weight, out_weight, tau,
            pi, positions, index, flat, hidden, scale, mean, rstd,
        )  # fmt: skip
        ctx.hard = hard
        return y, pi, mean, unbiased

    @staticmethod
    def backward(
        ctx: Any, grad_y: Tensor | None, *_unused: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        if grad_y is None:  # y did not reach the loss
            return (None,) * 14
        saved = ctx.saved_tensors
        needs = ctx.needs_input_grad
        # No gradient crosses a hard arg-max; otherwise the attention's backward runs when
        # x or any attention parameter needs a gradient (x's includes the pooling path).
        attention = not ctx.hard and any(needs[:1] + needs[3:9])
        grads = torch.ops.sepbn_cpu.sepbn_train_backward(grad_y, *saved, bool(needs[0]), attention)
        out: list[Tensor | None] = [_grad_or_none(grads[0], needs[0])]
        out += [_grad_or_none(grads[i], needs[i]) for i in (1, 2)]
        out += [_grad_or_none(grads[i], attention and needs[i]) for i in range(3, 9)]
        return (*out, None, None, None, None, None)


def _update_running(
    running_mean: Tensor | None,
    running_var: Tensor | None,
    mean: Tensor,
    unbiased: Tensor,
    factor: float,
) -> None:
    """``running = (1 - factor) running + factor batch``, as ``nn.BatchNorm2d`` updates them."""
    if running_mean is not None or running_var is not None:
        torch.ops.sepbn_cpu.running_update(running_mean, running_var, mean, unbiased, factor)


def sep_batch_norm_train(*args: Any) -> tuple[Tensor, Tensor]:
    """:func:`sepbn.nn.fused_separable_norm.sep_batch_norm_train` through the C++ kernels.

    Same 16 arguments: x, the sets, the attention's tensors and τ (10 tensors), running
    mean and variance, factor, then eps, pool size, hard; ``x`` float32/float64 on the CPU,
    NCHW- or channels-last-contiguous (the output keeps that layout; other strides are
    copied to NCHW). Works eagerly (one op call per direction) and under
    ``torch.compile``, where the ops are opaque calls in the graph and the pass over the
    map is an ATen multiply-add that inductor fuses with the ops after the layer
    (``fold`` of :class:`_NativeSepBatchNormTrain`).

    Shape:
        - Output: (N, C, H, W) and π (N, G, K)
    """
    tensors, (running_mean, running_var, factor), options = args[:10], args[10:13], args[13:]
    fold = torch.compiler.is_compiling()
    y, pi, mean, unbiased = _NativeSepBatchNormTrain.apply(*tensors, *options, fold)
    _update_running(running_mean, running_var, mean, unbiased, factor)
    return y, pi


def sep_batch_norm_eval(*args: Any) -> tuple[Tensor, Tensor]:
    """Eval-mode ``SepBatchNorm2d`` with running statistics in one op call; no autograd.

    Arguments: x, the sets, the attention's tensors and τ, running mean and variance, eps,
    pool size, hard (the op ``sepbn_cpu::sepbn_eval_forward``).

    Shape:
        - Output: (N, C, H, W) and π (N, G, K)
    """
    y, pi = torch.ops.sepbn_cpu.sepbn_eval_forward(*args)
    return y, pi


def adaptive_max_pool2d(x: Tensor, pool_size: int) -> Tensor:
    """``F.adaptive_max_pool2d(x, pool_size)`` values (no indices, no autograd).

    Shape:
        - x: (N, C, H, W), float32/float64 on the CPU
        - Output: (N, C, T, T), a channels-last-strided view
    """
    return torch.ops.sepbn_cpu.adaptive_max_pool(x, pool_size)


class _NativeSeparableNormTrain(torch.autograd.Function):
    """``y = scale_nc (x - μ) r + shift_nc`` with batch statistics, in C++ (Eqs. 1, 7).

    Returns ``(y, batch mean, unbiased batch variance)``; the running statistics are
    updated outside the node (see :class:`_NativeSepBatchNormTrain`).
    """

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, scale: Tensor, shift: Tensor, eps: float
    ) -> tuple[Tensor, Tensor, Tensor]:
        y, mean, rstd, unbiased = torch.ops.sepbn_cpu.norm_train_forward(x, scale, shift, eps)
        ctx.mark_non_differentiable(mean, unbiased)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, scale, mean, rstd)
        return y, mean, unbiased

    @staticmethod
    def backward(
        ctx: Any, grad_y: Tensor | None, *_unused: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        if grad_y is None:
            return (None,) * 4
        x, scale, mean, rstd = ctx.saved_tensors
        needs = ctx.needs_input_grad
        grad_x, grad_scale, grad_shift = torch.ops.sepbn_cpu.norm_train_backward(
            grad_y, x, scale, mean, rstd, bool(needs[0])
        )
        return (
            _grad_or_none(grad_x, needs[0]),
            _grad_or_none(grad_scale, needs[1]),
            _grad_or_none(grad_shift, needs[2]),
            None,
        )


def separable_norm_train(*args: Any) -> Tensor:
    """:func:`sepbn.nn.fused_separable_norm.separable_norm_train` through the C++ kernels.

    Same arguments: x, scale, shift, running mean and variance, factor, eps; ``x`` must be
    float32/float64 on the CPU (NCHW or channels-last), ``scale``/``shift`` (N, C) of its
    dtype.

    Shape:
        - Output: (N, C, H, W)
    """
    x, scale, shift, running_mean, running_var, factor, eps = args
    y, mean, unbiased = _NativeSeparableNormTrain.apply(x, scale, shift, eps)
    _update_running(running_mean, running_var, mean, unbiased, factor)
    return y

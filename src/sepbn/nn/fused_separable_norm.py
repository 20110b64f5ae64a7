"""Fused train-mode kernels for SepBN-type layers, built from existing ATen ops.

The plain train-mode path (``x̂ = BN(x)``, then ``y = γ̂ x̂ + β̂``) writes ``x̂`` and
costs autograd three more full passes in backward. The fused path never materializes
``x̂``: after the statistics pass the forward is one pass, and the backward is one
reduction pass and two elementwise passes (derivation in :class:`_SeparableNormTrain`).

For ``SepBatchNorm2d`` the attention joins the same autograd node
(:class:`_SepBatchNormTrain`): its adaptive max pooling would otherwise add a
full-size, mostly zero gradient, and its thirty small autograd nodes cost more than the
arithmetic at small feature maps.

Both are used only in eager mode, on CPU, for float32/float64 tensors with a plain inner
``nn.BatchNorm2d``; ``tests/nn`` compares them against the plain path.
"""

from __future__ import annotations

from typing import Any, Literal, overload

import torch
import torch.nn.functional as F
from torch import Tensor

from sepbn.nn import dispatch, native, native_ops
from sepbn.nn._folding import fold_batch_norm

# Below this many pixels per map, ATen's batch-norm backward kernel spends more on each
# of the N·C "channels" than two plain reductions cost.
_FUSED_SUMS_MIN_PIXELS = 16


# ATen's NCHW adaptive max pooling is a scalar loop, slow for small maps; its
# channels-last kernel is vectorized over channels but needs a layout copy, which for
# large maps costs more than it saves (the copy is a fresh full-size allocation).
_CHANNELS_LAST_POOL_MAX_PIXELS = 256


# Below this many elements ATen's pooling costs less than the band-wise one's dozen calls
# (whose column stage reduces rows of only about W/3 elements).
_BAND_POOL_MIN_NUMEL = 1 << 17

# Up to this many rows per map, a band's maximum is a chain of elementwise maxima over
# its rows (fast for short rows); taller maps reduce each band in one call.
_ROW_CHAIN_MAX_HEIGHT = 16


@overload
def adaptive_max_pool2d(
    x: Tensor, pool_size: int, return_indices: Literal[False] = False
) -> Tensor: ...


@overload
def adaptive_max_pool2d(
    x: Tensor, pool_size: int, return_indices: Literal[True]
) -> tuple[Tensor, Tensor]: ...


def adaptive_max_pool2d(
    x: Tensor, pool_size: int, return_indices: bool = False
) -> Tensor | tuple[Tensor, Tensor]:
    """``F.adaptive_max_pool2d``, computed by the fastest CPU route for the case.

    ATen's NCHW kernel is a scalar loop (a third of a batch-norm step at 64×64). Outside
    autograd and without indices, a contiguous CPU float32/float64 input is pooled by the
    C++ kernel of :mod:`sepbn.nn.native` when it is built; otherwise an input of at least
    131072 elements is pooled band-wise (:func:`_band_max_pool2d`, the same maxima at about
    half the cost). Otherwise ATen's kernel runs, in channels-last layout (vectorized over
    channels) for maps of at most 256 pixels: same values, indices and gradient. When ``x``
    requires a gradient ATen's kernel runs, so the plain path differentiates exactly
    ``F.adaptive_max_pool2d``; but while an exporter traces, the band route always runs
    (ONNX has no adaptive max pooling; slices and maxima it has).

    Shape:
        - x: (N, C, H, W)
        - Output: (N, C, T, T), and int64 indices (flat positions in H·W) if requested
    """
    if not return_indices and _is_exporting():  # whatever x's layout and gradient
        return _band_max_pool2d(x, pool_size)
    if (
        not return_indices
        and x.is_contiguous()
        and not (x.requires_grad and torch.is_grad_enabled())
    ):
        if _native_pool_applies(x):
            return native_ops.adaptive_max_pool2d(x, pool_size)
        if x.numel() >= _BAND_POOL_MIN_NUMEL:
            return _band_max_pool2d(x, pool_size)
    if x.shape[-2] * x.shape[-1] <= _CHANNELS_LAST_POOL_MAX_PIXELS:
        x = x.contiguous(memory_format=torch.channels_last)
    if return_indices:
        return F.adaptive_max_pool2d(x, pool_size, return_indices=True)
    return F.adaptive_max_pool2d(x, pool_size)


def _native_pool_applies(x: Tensor) -> bool:
    """Whether the C++ pooling takes ``x`` (CPU float32/64, not traced, library built)."""
    return (
        x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.float64)
        and x.dim() == 4
        and not torch.compiler.is_compiling()
        and not torch.jit.is_tracing()
        and native.available()
    )


def _is_exporting() -> bool:
    """Whether an exporter traces the call; ONNX has no adaptive max pooling, slices it has."""
    return dispatch.is_exporting() or torch.onnx.is_in_onnx_export()


def _adaptive_bands(size: int, pool_size: int) -> list[tuple[int, int]]:
    """Adaptive pooling's windows along one axis: ``[floor(i·S/T), ceil((i+1)·S/T))``."""
    return [(i * size // pool_size, -(-(i + 1) * size // pool_size)) for i in range(pool_size)]


def _band_max_pool2d(x: Tensor, pool_size: int) -> Tensor:
    """Adaptive max pooling as row-band maxima, then column-band maxima of that small map.

    The only full-size pass reduces each of the T (possibly overlapping) row bands,
    vectorized along the rows; the column bands then reduce a (N·C, T, W) map. A max is
    exact, so the values equal ``F.adaptive_max_pool2d``'s (NaN propagates likewise).

    Shape:
        - x: (N, C, H, W), any layout (a non-contiguous one is copied)
        - Output: (N, C, T, T)
    """
    n, c, h, w = x.shape
    maps = x.reshape(n * c, h, w)
    row_max = torch.stack(
        [_rows_max(maps, start, end) for start, end in _adaptive_bands(h, pool_size)], dim=1
    )  # (N·C, T, W)
    pooled = torch.stack(
        [row_max[:, :, a:b].amax(dim=2) for a, b in _adaptive_bands(w, pool_size)], dim=2
    )
    return pooled.view(n, c, pool_size, pool_size)


def _rows_max(maps: Tensor, start: int, end: int) -> Tensor:
    """Column-wise maximum of ``maps[:, start:end, :]``; shape (N·C, W)."""
    differentiable = maps.requires_grad and torch.is_grad_enabled()  # an exporter's trace
    if maps.shape[1] > _ROW_CHAIN_MAX_HEIGHT or differentiable:
        return maps[:, start:end].amax(dim=1)
    out = maps[:, start].clone()
    for row in range(start + 1, end):
        torch.maximum(out, maps[:, row], out=out)
    return out


class _SeparableNormTrain(torch.autograd.Function):
    """Batch-statistics normalization and per-(n, c) mapping in one pass (Eqs. 1, 7).

    Forward, with μ and r = (σ² + eps)^(-1/2) the batch mean and inverse standard
    deviation per channel: ``y = γ̂ (x - μ) r + β̂``. Backward, with ``g = ∂L/∂y``,
    ``M = N·H·W`` and the per-(n, c) sums ``S1 = Σ_hw g`` and ``S2 = Σ_hw g x̂``:

    - ``∂L/∂β̂ = S1``, ``∂L/∂γ̂ = S2``;
    - ``∂L/∂x = r (γ̂ g - c1 - x̂ c2)`` (the batch-norm backward applied to ``γ̂ g``) with
      ``c1 = Σ_n γ̂ S1 / M`` and ``c2 = Σ_n γ̂ S2 / M`` per channel, computed as
      ``γ̂ r g + q (x - μ) - r c1`` with ``q = -r² c2``.

    The running statistics are updated by the ATen kernel ``nn.BatchNorm2d`` uses.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        scale: Tensor,
        shift: Tensor,
        running_mean: Tensor | None,
        running_var: Tensor | None,
        factor: float,
        eps: float,
    ) -> Tensor:
        mean, var = torch.batch_norm_update_stats(x, running_mean, running_var, factor)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, scale, mean, var)
        ctx.eps = eps
        # detach(): a view returned from a Function may not be modified in place (the
        # `out += identity` of a ResNet bottleneck); a detached alias may, at no cost.
        return normalize_per_sample(x, mean, var, scale, shift, eps).detach()

    @staticmethod
    def backward(ctx: Any, grad_y: Tensor | None) -> tuple[Tensor | None, ...]:
        if grad_y is None:
            return None, None, None, None, None, None, None
        x, scale, mean, var = ctx.saved_tensors
        s1, s2, grad_x = _norm_backward(
            grad_y, x, scale, mean, var, ctx.eps, ctx.needs_input_grad[0]
        )
        grad_scale = s2 if ctx.needs_input_grad[1] else None
        grad_shift = s1 if ctx.needs_input_grad[2] else None
        return grad_x, grad_scale, grad_shift, None, None, None, None


def _norm_backward(
    grad_y: Tensor,
    x: Tensor,
    scale: Tensor,
    mean: Tensor,
    var: Tensor,
    eps: float,
    need_grad_x: bool,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Backward of ``y = scale_nc (x - μ_c) r_c + shift_nc`` with batch statistics μ, r.

    Returns ``(S1, S2, ∂L/∂x)``: ``S1 = Σ_hw g = ∂L/∂shift``, ``S2 = Σ_hw g x̂ = ∂L/∂scale``
    and the input gradient (None unless ``need_grad_x``); see :class:`_SeparableNormTrain`.

    Shape:
        - grad_y, x: (N, C, H, W)
        - scale: (N, C); mean, var: (C,)
        - Output: (N, C), (N, C), (N, C, H, W)
    """
    n, c, h, w = x.shape
    rstd = torch.rsqrt(var + eps)  # (C,)
    if x.is_contiguous() and grad_y.is_contiguous() and h * w >= _FUSED_SUMS_MIN_PIXELS:
        # The batch-norm backward kernel on the (1, N·C, H, W) view returns exactly the
        # per-(n, c) sums Σ g x̂ and Σ g, in one fused reduction pass.
        _, s2, s1 = torch.ops.aten.native_batch_norm_backward(
            grad_y.view(1, n * c, h, w),
            x.view(1, n * c, h, w),
            None,
            None,
            None,
            mean.repeat(n),
            rstd.repeat(n),
            True,
            eps,
            [False, True, True],
        )
        s1, s2 = s1.view(n, c), s2.view(n, c)
    else:
        s1 = grad_y.sum(dim=(2, 3))  # (N, C)
        s2 = ((grad_y * x).sum(dim=(2, 3)) - mean * s1) * rstd  # (N, C)
    if not need_grad_x:
        return s1, s2, None
    sums = (scale * torch.stack((s1, s2))).sum(dim=1)  # (2, C): M·c1, M·c2
    sums *= rstd * (-1.0 / (n * h * w))  # (2, C): -r c1, -r c2
    # -r c1 + q (x - μ) with q = -r² c2, as an inference-mode batch norm: one pass.
    # torch.batch_norm, not F.batch_norm, whose Python check refuses eps = 0 on torch 2.11.
    ones = torch.ones_like(var)
    grad_x = torch.batch_norm(x, sums[1] * rstd, sums[0], mean, ones, False, 0.0, 0.0, False)
    grad_x.addcmul_(grad_y, (scale * rstd).view(n, c, 1, 1))
    return s1, s2, grad_x


def normalize_per_sample(
    x: Tensor, mean: Tensor, var: Tensor, scale: Tensor, shift: Tensor, eps: float
) -> Tensor:
    """``(x - mean_c) / sqrt(var_c + eps) * scale_nc + shift_nc``, one pass over ``x``.

    For an NCHW-contiguous ``x`` this is an inference-mode batch norm on the
    (1, N·C, H, W) view, whose per-channel statistics are repeated and whose affine is
    given per (sample, channel): ATen's vectorized kernel, differentiable in every
    argument, which also takes a bfloat16 ``x`` with float32 statistics under autocast.
    Other layouts fold the statistics into one multiply-add.

    Shape:
        - x: (N, C, H, W)
        - mean, var: (C,)
        - scale, shift: (N, C)
        - Output: (N, C, H, W), dtype and memory format of ``x``
    """
    n, c, h, w = x.shape
    if x.is_contiguous():
        flat = (n * c,)
        mean, var = mean.repeat(n), var.repeat(n)  # (N·C,)
        y = F.batch_norm(
            x.view(1, n * c, h, w), mean, var, scale.reshape(flat), shift.reshape(flat), eps=eps
        )
        return y.view(n, c, h, w)
    return fold_batch_norm(x, mean, var, eps, scale, shift)


def separable_norm_train(
    x: Tensor,
    scale: Tensor,
    shift: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    factor: float,
    eps: float,
) -> Tensor:
    """``γ̂ (x - μ_B) / sqrt(σ²_B + eps) + β̂`` with batch statistics, fused (Eqs. 1, 7).

    Updates ``running_mean``/``running_var`` (when given) exactly like
    ``F.batch_norm(training=True, momentum=factor)``.

    Shape:
        - x: (N, C, H, W)
        - scale, shift: (N, C), same dtype as x
        - Output: (N, C, H, W)
    """
    return _SeparableNormTrain.apply(x, scale, shift, running_mean, running_var, factor, eps)


class _SepBatchNormTrain(torch.autograd.Function):
    """The whole train-mode ``SepBatchNorm2d`` forward as one autograd node.

    Attention (pooling, 1×1 convolution, MLP, softmax), mixing (Eq. 6) and the fused
    normalization and mapping (Eqs. 1, 7), with a hand-written backward: one autograd
    node instead of about thirty saves most of the per-call overhead, and the pooling
    gradient is scattered straight into the input gradient (N·C·T·T elements) instead of
    a full-size, mostly zero tensor.

    Inputs after ``x`` follow :class:`sepbn.nn.SepBatchNorm2d`: the sets (K, C), the
    1×1 convolution as a (G, C) matrix and (G,) bias, the MLP's two linear layers, and
    τ. The outputs are ``y`` and the (non-differentiable) weights π.
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
        running_mean: Tensor | None,
        running_var: Tensor | None,
        factor: float,
        eps: float,
        pool_size: int,
        hard: bool,
    ) -> tuple[Tensor, Tensor]:
        n, c = x.shape[:2]
        k, g = weight.shape[0], reduce_weight.shape[0]
        pooled, index = adaptive_max_pool2d(x, pool_size, return_indices=True)
        positions = pooled.permute(0, 2, 3, 1).reshape(-1, c)  # (N·T·T, C)
        reduced = torch.addmm(reduce_bias, positions, reduce_weight.t())  # (N·T·T, G)
        flat = reduced.view(n, -1)  # (N, T·T·G), position-major as in the plain path
        hidden = torch.addmm(hidden_bias, flat, hidden_weight.t()).relu_()  # (N, hidden)
        logits = torch.addmm(out_bias, hidden, out_weight.t()).view(n, g, k)  # (N, G, K)
        if hard:
            pi = torch.zeros_like(logits).scatter_(-1, logits.argmax(-1, keepdim=True), 1.0)
        else:
            pi = F.softmax(logits / tau, dim=-1)  # Eq. 5
        scale, shift = mix_sets(pi, weight, bias)  # Eq. 6, (N, C) each
        mean, var = torch.batch_norm_update_stats(x, running_mean, running_var, factor)
        ctx.mark_non_differentiable(pi)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(
            x, weight, bias, reduce_weight, hidden_weight, out_weight, tau,
            pi, positions, index, flat, hidden, scale, mean, var,
        )  # fmt: skip
        ctx.eps, ctx.hard = eps, hard
        # detach(): see _SeparableNormTrain.forward (in-place use of the output).
        return normalize_per_sample(x, mean, var, scale, shift, eps).detach(), pi  # Eqs. 1, 7

    @staticmethod
    def backward(ctx: Any, grad_y: Tensor | None, _grad_pi: None) -> tuple[Tensor | None, ...]:
        none = (None,) * 16
        if grad_y is None:
            return none
        (
            x, weight, bias, reduce_weight, hidden_weight, out_weight, tau,
            pi, positions, index, flat, hidden, scale, mean, var,
        ) = ctx.saved_tensors  # fmt: skip
        needs = ctx.needs_input_grad
        n, c, h, w = x.shape
        k, g = weight.shape[0], reduce_weight.shape[0]
        m = c // g
        s1, s2, grad_x = _norm_backward(grad_y, x, scale, mean, var, ctx.eps, needs[0])
        sums = torch.stack((s2, s1)).view(2, n, g, 1, m)  # ∂L/∂γ̂, ∂L/∂β̂
        # Eq. 6 backward to the sets: Σ_n π_{n,g,k} ∂L/∂γ̂_{n,g,m}, (2, G, K, M)
        grad_sets = (pi.view(1, n, g, k, 1) * sums).sum(dim=1)
        grad_sets = grad_sets.transpose(1, 2).reshape(2, k, c)  # (2, K, C)
        grads: list[Tensor | None] = [grad_x, grad_sets[0], grad_sets[1], *([None] * 13)]
        if ctx.hard or not any(needs[:1] + needs[3:9]):
            return tuple(grads)  # no gradient crosses the arg-max
        sets = torch.stack((weight, bias)).view(2, 1, k, g, m).transpose(2, 3)  # (2,1,G,K,M)
        grad_pi = (sums * sets).sum(dim=(0, 4))  # (N, G, K)
        # Softmax with temperature (Eq. 5) backward
        grad_logits = pi * (grad_pi - (pi * grad_pi).sum(dim=-1, keepdim=True)) / tau
        grad_logits = grad_logits.view(n, g * k)
        grads[7] = grad_logits.t().mm(hidden)  # out layer
        grads[8] = grad_logits.sum(dim=0)
        grad_hidden = grad_logits.mm(out_weight).mul_(hidden > 0)  # ReLU
        grads[5] = grad_hidden.t().mm(flat)  # hidden layer
        grads[6] = grad_hidden.sum(dim=0)
        grad_reduced = grad_hidden.mm(hidden_weight).view(-1, g)  # (N·T·T, G)
        grads[3] = grad_reduced.t().mm(positions)  # 1×1 convolution
        grads[4] = grad_reduced.sum(dim=0)
        if grad_x is not None:
            grad_pooled = grad_reduced.mm(reduce_weight).view(n, -1, c)  # (N, T·T, C)
            # Scatter into the input gradient, at the arg-max of every pooling window.
            flat_index = index.permute(0, 2, 3, 1).reshape(n, -1, c)  # (N, T·T, C)
            flat_index, grad_pooled = flat_index.transpose(1, 2), grad_pooled.transpose(1, 2)
            if grad_x.is_contiguous():
                grad_x.view(n, c, h * w).scatter_add_(2, flat_index, grad_pooled)
            else:  # channels-last: no (N, C, H·W) view
                dense = grad_x.new_zeros(n, c, h * w).scatter_add_(2, flat_index, grad_pooled)
                grad_x = grads[0] = grad_x + dense.view(n, c, h, w)
        return tuple(grads)


def mix_sets(pi: Tensor, weight: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
    """``γ̂ = Σ_k π_{n,g,k} γ_k`` and ``β̂`` likewise, per (sample, channel) (Eq. 6).

    Shape:
        - pi: (N, G, K)
        - weight, bias: (K, C)
        - Output: two contiguous (N, C) tensors
    """
    n, g, k = pi.shape
    c = weight.shape[1]
    sets = torch.stack((weight, bias)).view(2, 1, k, g, c // g).transpose(2, 3)  # (2,1,G,K,M)
    mixed = (pi.view(1, n, g, k, 1) * sets).sum(dim=3)  # (2, N, G, M)
    mixed = mixed.view(2, n, c)
    return mixed[0], mixed[1]


def sep_batch_norm_train(
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
    """Train-mode ``SepBatchNorm2d`` in one autograd node; returns ``(y, π)``.

    Updates ``running_mean``/``running_var`` (when given) like ``nn.BatchNorm2d``.

    Shape:
        - x: (N, C, H, W)
        - weight, bias: (K, C); reduce_weight: (G, C); reduce_bias: (G,)
        - hidden_weight: (hidden, T·T·G); out_weight: (G·K, hidden)
        - Output: (N, C, H, W) and π (N, G, K)
    """
    return _SepBatchNormTrain.apply(
        x, weight, bias, reduce_weight, reduce_bias, hidden_weight, hidden_bias,
        out_weight, out_bias, tau, running_mean, running_var, factor, eps, pool_size, hard,
    )  # fmt: skip

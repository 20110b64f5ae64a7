"""The pieces of the SepBN math that every layer and both implementations share.

- :func:`adaptive_max_pool2d`: the attention's T×T max pooling (Fig. 1), exportable.
- :func:`set_weights`: the temperature softmax of Eq. 5 (or the hard arg-max of Table III).
- :func:`mix_sets`: Eq. 6, the K sets collapsed into one scale and shift per (n, c).
- :func:`fold_batch_norm`: statistics and a per-sample affine as one multiply-add (eval).
- :func:`running_stats` and :func:`copy_running_stats`: a batch norm's running buffers.

The plain modules (:mod:`sepbn.nn.separable_batch_norm` and its siblings) are written from
these; the C++ kernels (:mod:`sepbn.nn.native`) compute the same quantities, and the tests
compare the two.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.modules.batchnorm import _NormBase


def is_exporting() -> bool:
    """Whether ``torch.export``, the ONNX exporter or TorchScript tracing records the call.

    Reads the flag behind ``torch.compiler.is_exporting()``: dynamo up to at least torch
    2.11 folds that call to True inside a plain ``torch.compile`` too, which would send
    compiled CPU models to the plain path; under dynamo the flag is traced as its value.
    """
    flag = getattr(torch.compiler, "_is_exporting_flag", None)
    return (
        (torch.compiler.is_exporting() if flag is None else bool(flag))
        or torch.onnx.is_in_onnx_export()
        or torch.jit.is_tracing()
        or torch.jit.is_scripting()
    )


def adaptive_max_pool2d(x: Tensor, pool_size: int) -> Tensor:
    """``F.adaptive_max_pool2d(x, pool_size)``; while an exporter records, as band maxima.

    ONNX has no adaptive max pooling, but slices and maxima it has: the row bands
    ``[floor(i·H/T), ceil((i+1)·H/T))`` are reduced first, then the column bands of that
    small map. A maximum is exact, so both routes give the same values.

    Shape:
        - x: (N, C, H, W)
        - Output: (N, C, T, T)
    """
    if not is_exporting():
        return F.adaptive_max_pool2d(x, pool_size)
    h, w = x.shape[-2:]
    rows = torch.stack([x[:, :, a:b].amax(dim=2) for a, b in _bands(h, pool_size)], dim=2)
    return torch.stack([rows[..., a:b].amax(dim=3) for a, b in _bands(w, pool_size)], dim=3)


def _bands(size: int, pool_size: int) -> list[tuple[int, int]]:
    """Adaptive pooling's windows along one axis: ``[floor(i·S/T), ceil((i+1)·S/T))``."""
    return [(i * size // pool_size, -(-(i + 1) * size // pool_size)) for i in range(pool_size)]


def set_weights(logits: Tensor, tau: Tensor, hard: bool = False) -> Tensor:
    """Weights π over the K sets: ``softmax(logits / τ)`` over K (Eq. 5), or its one-hot arg-max.

    The arg-max of the softmax is the arg-max of the logits for any τ > 0; no gradient
    crosses it, which is why the hard variant does not train its attention (Table III).

    Shape:
        - logits: (N, G, K)
        - Output: (N, G, K), every row summing to 1
    """
    if hard:
        index = logits.argmax(dim=-1, keepdim=True)  # (N, G, 1)
        return torch.zeros_like(logits).scatter_(-1, index, 1.0)
    return F.softmax(logits / tau.to(logits.dtype), dim=-1)


def mix_sets(pi: Tensor, weight: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
    """``γ̂ = Σ_k π_{n,g,k} γ_k`` and ``β̂`` likewise, per (sample, channel) (Eq. 6).

    Channel ``c`` belongs to group ``c // (C / G)``.

    Shape:
        - pi: (N, G, K)
        - weight, bias: (K, C)
        - Output: two contiguous (N, C) tensors
    """
    n, g, k = pi.shape
    c = weight.shape[1]
    # A product and a sum, not a matmul: autocast would run a matmul in bfloat16.
    sets = torch.stack((weight, bias)).view(2, 1, k, g, c // g).transpose(2, 3)  # (2,1,G,K,M)
    mixed = (pi.view(1, n, g, k, 1) * sets).sum(dim=3)  # (2, N, G, M)
    mixed = mixed.view(2, n, c)
    return mixed[0], mixed[1]


def fold_batch_norm(
    x: Tensor, mean: Tensor, var: Tensor, eps: float | Tensor, scale: Tensor, shift: Tensor
) -> Tensor:
    """``scale (x - mean) / sqrt(var + eps) + shift``, per sample and channel, as ``a x + b``.

    ``a = scale / sqrt(var + eps)`` and ``b = shift - a mean`` are computed on the small
    (N, C) tensors, in the dtype of the statistics and affine (float32 under autocast), and
    cast to the dtype of ``x`` before the one pass over ``x``.

    Args:
        x: The feature map.
        mean: Per-channel mean μ, shared by the batch (C,) or one per sample (N, C).
        var: Per-channel variance σ², shaped like ``mean``.
        eps: Added to the variance; a float, or a tensor broadcasting against ``var``
            (e.g. (N, 1), one value per sample).
        scale: γ per sample and channel.
        shift: β per sample and channel.

    Shape:
        - x: (N, C, H, W)
        - mean, var: (C,) or (N, C)
        - scale, shift: (N, C)
        - Output: (N, C, H, W), dtype and memory format of ``x``
    """
    a = scale * torch.rsqrt(var + eps)  # (N, C)
    b = torch.addcmul(shift, a, mean, value=-1)  # (N, C)
    return torch.addcmul(b.to(x.dtype)[..., None, None], x, a.to(x.dtype)[..., None, None])


def running_stats(bn: _NormBase) -> tuple[Tensor, Tensor]:
    """``(running_mean, running_var)`` of a batch norm that keeps them.

    Shape:
        - Output: (C,) each
    """
    # Callers check running_var is not None first; the mean is registered with it.
    assert bn.running_mean is not None and bn.running_var is not None
    return bn.running_mean, bn.running_var


def copy_running_stats(src: _NormBase, dst: _NormBase) -> None:
    """Copy running mean, variance and batch count, when both batch norms track them."""
    if not (src.track_running_stats and dst.track_running_stats):
        return
    pairs = (
        (src.running_mean, dst.running_mean),
        (src.running_var, dst.running_var),
        (src.num_batches_tracked, dst.num_batches_tracked),
    )
    for source, target in pairs:
        assert source is not None and target is not None  # track_running_stats registers them
        target.copy_(source)

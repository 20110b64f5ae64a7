"""Batch-norm statistics and a per-sample affine folded into one multiply-add.

Every normalization layer here ends in ``γ (x - μ) / sqrt(σ² + eps) + β`` with known
statistics somewhere: SepBN and the brute-force SepBN in eval mode (running statistics),
and the fused train-mode kernel for inputs that are not NCHW-contiguous (batch
statistics). With ``a = γ / sqrt(σ² + eps)`` and ``b = β - a μ`` computed on the small
(N, C) tensors first, the pass over the feature map is a single ``y = a x + b``.
The two helpers at the end read and copy a batch norm's running statistics, whose
buffers are typed optional because ``track_running_stats=False`` registers them as None.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.modules.batchnorm import _NormBase


def fold_batch_norm(
    x: Tensor, mean: Tensor, var: Tensor, eps: float | Tensor, scale: Tensor, shift: Tensor
) -> Tensor:
    """``scale (x - mean) / sqrt(var + eps) + shift``, per sample and channel, as ``a x + b``.

    ``a`` and ``b`` are computed in the dtype of the statistics and affine (float32 under
    autocast) and cast to the dtype of ``x`` before the one pass over ``x``.

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

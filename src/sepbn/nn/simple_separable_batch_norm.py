"""``SimpleSepBatchNorm2d``: the squeeze-and-excitation SepBN of Eqs. 3-4 (no channel groups)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sepbn.nn.separable_norm_base import SeparableNormBase, _check_positive_int


class SimpleSepBatchNorm2d(SeparableNormBase):
    """Batch normalization with K sets of mapping parameters weighted per sample.

    The weights come from a squeeze-and-excitation block on the layer's input (Eq. 3):
    global average pooling, Linear C → C/r, ReLU, Linear C/r → K, sigmoid, and then the
    temperature softmax of Eq. 5 over K. One weight vector per sample acts on every
    channel (``γ̂_n = Σ_k λ_{n,k} γ_k``, Eq. 4). Because the sigmoid bounds the softmax
    input to [0, 1], at τ = 1 the weights can be at most e ≈ 2.7 times apart; this is the
    paper's formulation, kept as is.

    Symmetry breaking works as in :class:`SepBatchNorm2d`: equal sets, random excitation
    layers, so the sets separate at the first optimizer step.

    Args:
        num_features: Number of channels C.
        num_sets: Number of mapping-parameter sets K.
        reduction: Reduction rate r of the squeeze layer; its width is ``max(1, C // r)``.
        temperature: Softmax temperature τ > 0.
        eps: As in ``nn.BatchNorm2d``.
        momentum: As in ``nn.BatchNorm2d``.
        track_running_stats: As in ``nn.BatchNorm2d``.

    Shape:
        - Input: (N, C, H, W)
        - Output: (N, C, H, W), same dtype and memory format as the input.
    """

    def __init__(
        self,
        num_features: int,
        num_sets: int = 3,
        reduction: int = 16,
        temperature: float = 1.0,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        track_running_stats: bool = True,
    ) -> None:
        super().__init__(
            num_features,
            num_sets,
            num_groups=1,
            temperature=temperature,
            eps=eps,
            momentum=momentum,
            track_running_stats=track_running_stats,
        )
        _check_positive_int("reduction", reduction)
        self.reduction = reduction
        hidden = max(1, num_features // reduction)
        self.squeeze = nn.Linear(num_features, hidden)  # F_sq after global average pooling
        self.excite = nn.Linear(hidden, num_sets)  # F_ex before the sigmoid
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Equal sets (see :meth:`SeparableNormBase.reset_parameters`), random excitation."""
        super().reset_parameters()
        self.squeeze.reset_parameters()
        self.excite.reset_parameters()

    def attention(self, x: Tensor) -> Tensor:
        """Weights λ over the K sets for every sample (Eqs. 3 and 5).

        Shape:
            - x: (N, C, H, W)
            - Output: (N, K), in the dtype of :attr:`weight`; every row sums to 1.
        """
        squeezed = F.relu(self.squeeze(x.mean(dim=(2, 3))))  # (N, C/r)
        excited = torch.sigmoid(self.excite(squeezed)).to(self.weight.dtype)  # (N, K)
        return F.softmax(excited / self.tau.to(excited.dtype), dim=-1)  # Eq. 5

    def _mixing_weights(self, x: Tensor) -> Tensor:
        return self.attention(x).unsqueeze(1)  # (N, 1, K): one group

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, reduction={self.reduction}"

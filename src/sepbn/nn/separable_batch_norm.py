"""``SepBatchNorm2d``: the paper's Separable Batch Normalization with grouped attention (Fig. 1)."""

from __future__ import annotations

from typing import Any, Literal, cast

import torch.nn.functional as F
from torch import Tensor, nn

from sepbn.nn import native
from sepbn.nn.functional import adaptive_max_pool2d, set_weights
from sepbn.nn.separable_norm_base import SeparableNormBase, _check_positive_int

Aggregation = Literal["soft", "hard"]
AGGREGATIONS: tuple[str, ...] = ("soft", "hard")


class SepBatchNorm2d(SeparableNormBase):
    """Batch normalization with K sets of mapping parameters chosen per sample and channel group.

    One shared batch normalization without affine computes ``x̂`` (batch statistics in
    training, running statistics in eval). An attention branch reads the layer's input X
    (Section III-B, Fig. 1): adaptive max pooling to T×T, a 1×1 convolution C → G, flatten
    to G·T·T, an MLP (Linear → ReLU → Linear) to logits of shape (N, G, K) and a softmax
    over K with temperature τ (Eq. 5; the paper's sum index is a typo for k). Every
    (sample n, group g) then uses ``γ̂ = Σ_k π_{n,g,k} γ_k`` and ``β̂ = Σ_k π_{n,g,k} β_k``
    (Eq. 6) and ``y = γ̂ x̂ + β̂`` (Eq. 7), computed as one scale and shift per (n, c)
    in a single pass. Channel ``c`` belongs to group ``c // (C / G)``.

    With ``aggregation="hard"`` (Table III ablation) each (n, g) uses only its arg-max set;
    no gradient flows through the arg-max, so the attention is not trained, which is what
    the paper reports for that variant.

    Symmetry breaking: all K sets start equal (γ = 1, β = 0, or a converted batch norm's
    affine), so the layer starts as an exact ``nn.BatchNorm2d``. The attention's MLP is
    randomly initialized, so π differs across k for every sample; the gradient reaching
    set k is ``Σ_n π_{n,g,k} ∂L/∂γ̂_{n,g}``, which therefore differs per k and the sets
    separate at the first optimizer step. The attention's own gradient is proportional to
    the differences between sets, so it is zero before that first step and non-zero from
    the second one on.

    Args:
        num_features: Number of channels C.
        num_sets: Number of mapping-parameter sets K (paper: 3).
        num_groups: Number of channel groups G; must divide C (paper: 2).
        pool_size: Adaptive max-pooling output size T (paper: 3).
        temperature: Softmax temperature τ > 0 (paper: annealed 30 → 1, see
            :class:`sepbn.nn.TemperatureSchedule`).
        aggregation: ``"soft"`` (Eq. 6) or ``"hard"`` (arg-max set).
        eps: As in ``nn.BatchNorm2d``.
        momentum: As in ``nn.BatchNorm2d``.
        track_running_stats: As in ``nn.BatchNorm2d``.
        hidden_features: Hidden width of the attention MLP (G·T·T → hidden → G·K). The
            default 32 is wider than the MLP's input for the paper's G = 2, T = 3 (18);
            the MLP then holds 32·(G·T·T + 1) + G·K·33 = 806 parameters, negligible next
            to the layer's convolution.

    Attributes:
        reduce: The 1×1 convolution C → G (``nn.Conv2d``), applied as a matmul.
        fc1: ``Linear(G·T·T, hidden)``, followed by a ReLU; its input is the reduced map
            flattened position-major, (t_row, t_col, g), a fixed permutation of the
            paper's (g, t_row, t_col) order that needs no copy.
        fc2: ``Linear(hidden, G·K)``, the logits.

    A change to the attention (another MLP, another pooling) is made here, in
    :meth:`attention_logits`, and in the C++ kernel (``attention`` and its backward in
    ``csrc/sepbn_cpu.cpp``); ``tests/nn/test_native.py`` checks that the two agree.

    Shape:
        - Input: (N, C, H, W)
        - Output: (N, C, H, W), same dtype and memory format as the input.

    Example:
        >>> layer = SepBatchNorm2d(64, num_sets=3, num_groups=2, pool_size=3)
        >>> layer(torch.randn(8, 64, 16, 16)).shape
        torch.Size([8, 64, 16, 16])
    """

    def __init__(
        self,
        num_features: int,
        num_sets: int = 3,
        num_groups: int = 2,
        pool_size: int = 3,
        temperature: float = 1.0,
        aggregation: Aggregation = "soft",
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        track_running_stats: bool = True,
        hidden_features: int = 32,
    ) -> None:
        super().__init__(
            num_features, num_sets, num_groups, temperature, eps, momentum, track_running_stats
        )
        _check_positive_int("pool_size", pool_size)
        _check_positive_int("hidden_features", hidden_features)
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
        self.pool_size = pool_size
        self.aggregation = aggregation
        self.hidden_features = hidden_features
        self.reduce = nn.Conv2d(num_features, num_groups, kernel_size=1)
        self.fc1 = nn.Linear(num_groups * pool_size * pool_size, hidden_features)
        self.fc2 = nn.Linear(hidden_features, num_groups * num_sets)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Equal sets (see :meth:`SeparableNormBase.reset_parameters`), random attention."""
        super().reset_parameters()
        self.reduce.reset_parameters()
        self.fc1.reset_parameters()
        self.fc2.reset_parameters()

    def attention_logits(self, x: Tensor) -> Tensor:
        """Attention logits ``X_ex`` before the temperature softmax (Fig. 1).

        Shape:
            - x: (N, C, H, W)
            - Output: (N, G, K), in the dtype of :attr:`weight`.
        """
        pooled = adaptive_max_pool2d(x, self.pool_size)  # (N, C, T, T)
        n, c = pooled.shape[:2]
        # The 1×1 convolution as one matmul over the T·T positions: on CPU, oneDNN's
        # convolution backward costs milliseconds for these tiny maps, a matmul microseconds.
        positions = pooled.permute(0, 2, 3, 1).reshape(-1, c)  # (N·T·T, C)
        reduced = F.linear(positions, self.reduce.weight.view(self.num_groups, c), self.reduce.bias)
        hidden = F.relu(self.fc1(reduced.view(n, -1)))  # (N, hidden), from (N, T·T·G)
        logits = self.fc2(hidden)  # (N, G·K)
        # Under autocast the MLP returns bfloat16; the softmax runs in full precision.
        return logits.to(self.weight.dtype).view(n, self.num_groups, self.num_sets)

    def attention(self, x: Tensor) -> Tensor:
        """Weights π over the K sets per sample and channel group (Eq. 5; one-hot if hard).

        Shape:
            - x: (N, C, H, W)
            - Output: (N, G, K); every row sums to 1.
        """
        return set_weights(self.attention_logits(x), self.tau, self.aggregation == "hard")

    def _mixing_weights(self, x: Tensor) -> Tensor:
        return self.attention(x)

    has_native = True

    def _forward_native(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The whole layer in one C++ op call per direction (:mod:`sepbn.nn.native`)."""
        training = self.norm.training
        return native.sep_batch_norm(
            x, self.weight, self.bias, self._attention_tensors(), self.norm,
            factor=self._next_average_factor() if training else 0.0,
            pool_size=self.pool_size, hard=self.aggregation == "hard",
        )  # fmt: skip

    def _attention_tensors(self) -> native.Attention:
        """The attention's parameters and τ, as the C++ ops take them."""
        # Read from the module dictionaries: this runs at every call, and each nn.Module
        # attribute look-up costs about half a microsecond (a batch-1 BN costs 12-20).
        modules = self._modules
        reduce, fc1, fc2 = (
            cast("dict[str, Tensor]", cast(nn.Module, modules[k])._parameters)
            for k in ("reduce", "fc1", "fc2")
        )
        return native.Attention(
            reduce["weight"], reduce["bias"], fc1["weight"], fc1["bias"], fc2["weight"],
            fc2["bias"], cast(Tensor, self._buffers["tau"]),
        )  # fmt: skip

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # Checkpoints from before 2026-12-08 name the MLP ``mlp.0`` / ``mlp.2``.
        for old, new in (("mlp.0.", "fc1."), ("mlp.2.", "fc2.")):
            for name in ("weight", "bias"):
                if prefix + old + name in state_dict:
                    state_dict[prefix + new + name] = state_dict.pop(prefix + old + name)
        super()._load_from_state_dict(state_dict, prefix, *args)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, pool_size={self.pool_size}, "
            f"aggregation={self.aggregation!r}, hidden_features={self.hidden_features}"
        )

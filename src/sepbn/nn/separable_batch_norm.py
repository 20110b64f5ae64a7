"""``SepBatchNorm2d``: the paper's Separable Batch Normalization with grouped attention (Fig. 1)."""

from __future__ import annotations

from typing import Literal, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sepbn.nn import compiled_separable_norm as compiled
from sepbn.nn import dispatch, native_ops
from sepbn.nn._folding import running_stats
from sepbn.nn.fused_separable_norm import adaptive_max_pool2d, sep_batch_norm_train
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
        mlp: ``Linear(G·T·T, hidden) → ReLU → Linear(hidden, G·K)``; its input is the
            reduced map flattened position-major, (t_row, t_col, g), a fixed permutation
            of the paper's (g, t_row, t_col) order that needs no copy.

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
        self.mlp = nn.Sequential(
            nn.Linear(num_groups * pool_size * pool_size, hidden_features),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_features, num_groups * num_sets),
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Equal sets (see :meth:`SeparableNormBase.reset_parameters`), random attention."""
        super().reset_parameters()
        self.reduce.reset_parameters()
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                layer.reset_parameters()

    def attention_logits(self, x: Tensor) -> Tensor:
        """Attention logits ``X_ex`` before the temperature softmax.

        Shape:
            - x: (N, C, H, W)
            - Output: (N, G, K), in the dtype of :attr:`weight`.
        """
        return self._logits_from_pooled(adaptive_max_pool2d(x, self.pool_size))

    def attention(self, x: Tensor) -> Tensor:
        """Weights π over the K sets per sample and channel group (Eq. 5; one-hot if hard).

        Shape:
            - x: (N, C, H, W)
            - Output: (N, G, K); every row sums to 1.
        """
        return self._weights_from_logits(self.attention_logits(x))

    def _logits_from_pooled(self, pooled: Tensor) -> Tensor:
        n, c = pooled.shape[:2]
        # The 1×1 convolution as one matmul over the T·T positions: on CPU, oneDNN's
        # convolution backward costs milliseconds for these tiny maps, a matmul microseconds.
        positions = pooled.permute(0, 2, 3, 1).reshape(-1, c)  # (N·T·T, C)
        reduced = F.linear(positions, self.reduce.weight.view(self.num_groups, c), self.reduce.bias)
        # Flattened position-major, (N, T·T·G): a fixed permutation of the paper's order
        # that the first MLP layer absorbs, and needs no copy.
        logits = self.mlp(reduced.view(n, -1))  # (N, G·K)
        # Under autocast the MLP returns bfloat16; the softmax runs in full precision.
        return logits.to(self.weight.dtype).view(n, self.num_groups, self.num_sets)

    def _weights_from_logits(self, logits: Tensor) -> Tensor:
        if self.aggregation == "hard":
            # The arg-max of the softmax is the arg-max of the logits for any τ > 0.
            index = logits.argmax(dim=-1, keepdim=True)  # (N, G, 1)
            return torch.zeros_like(logits).scatter_(-1, index, 1.0)
        return F.softmax(logits / self.tau.to(logits.dtype), dim=-1)  # Eq. 5, sum over k

    def _set_weights(self, x: Tensor) -> Tensor:
        return self.attention(x)

    def _attention_tensors(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """The attention's parameters and τ, in the order the fused and compiled steps take them.

        Returns:
            ``(reduce_weight (G, C), reduce_bias, hidden_weight, hidden_bias, out_weight,
            out_bias, tau)``.
        """
        # Read straight from the module dictionaries: this runs at every call, and each
        # nn.Module attribute lookup costs about a microsecond (a tenth of a small layer).
        reduce = self._modules["reduce"]
        mlp = self._modules["mlp"]
        assert reduce is not None and mlp is not None  # built in __init__
        hidden, out = mlp._modules["0"], mlp._modules["2"]
        assert isinstance(hidden, nn.Linear) and isinstance(out, nn.Linear)
        reduce_p, hidden_p, out_p = reduce._parameters, hidden._parameters, out._parameters
        return cast(
            "tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]",
            (
                cast(Tensor, reduce_p["weight"]).view(self.num_groups, self.num_features),
                reduce_p["bias"], hidden_p["weight"], hidden_p["bias"],
                out_p["weight"], out_p["bias"], self._buffers["tau"],
            ),
        )  # fmt: skip

    def _forward_fused(self, x: Tensor, factor: float) -> tuple[Tensor, Tensor]:
        return sep_batch_norm_train(
            x,
            self.weight,
            self.bias,
            *self._attention_tensors(),
            self.norm.running_mean,
            self.norm.running_var,
            factor,
            self.norm.eps,
            self.pool_size,
            self.aggregation == "hard",
        )

    _supports_native_eval = True

    def _forward_native(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The whole layer in one C++ op call per direction (:mod:`sepbn.nn.native`).

        Train mode: batch statistics, running-statistics update, autograd. Eval mode (only
        without a gradient): the running statistics folded into the mixed affine.
        """
        norm = cast(nn.BatchNorm2d, self._modules["norm"])  # direct: runs at every call
        hard = self.aggregation == "hard"
        if not norm.training:
            mean, var = running_stats(norm)
            return native_ops.sep_batch_norm_eval(
                x, self.weight, self.bias, *self._attention_tensors(),
                mean, var, norm.eps, self.pool_size, hard,
            )  # fmt: skip
        return native_ops.sep_batch_norm_train(
            x, self.weight, self.bias, *self._attention_tensors(),
            norm.running_mean, norm.running_var, self._count_batch(), norm.eps,
            self.pool_size, hard,
        )  # fmt: skip

    _supports_compiled = True

    def _forward_compiled(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Train mode through the cached ``torch.compile`` of one pure function.

        See :mod:`sepbn.nn.compiled_separable_norm`; falls back to the plain path (one
        warning) for a shape class that does not compile.
        """
        static = (self.pool_size, self.aggregation, self.eps, self.norm.momentum)
        key = compiled.shape_class(x, self.weight, static)
        backend = dispatch.compile_backend()
        if compiled.has_failed(key, backend):
            return self._forward_plain(x)
        args = (
            x, self.weight, self.bias, *self._attention_tensors(),
            self.norm.running_mean, self.norm.running_var,
        )  # fmt: skip
        factor = self._count_batch()
        flags = (factor, self.norm.eps, self.pool_size, self.aggregation == "hard")
        try:
            step = compiled.compiled_step(key, backend)
            # Autocast off: the function picks its own precisions (float32 statistics).
            with torch.autocast(x.device.type, enabled=False):
                return step(*args, *flags)
        except Exception as error:  # a compiler failure, not a property of the input
            compiled.mark_failed(key, backend, error)
            if self.norm.num_batches_tracked is not None:
                self.norm.num_batches_tracked.sub_(1)  # the plain path counts it again
            return self._forward_plain(x)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, pool_size={self.pool_size}, "
            f"aggregation={self.aggregation!r}, hidden_features={self.hidden_features}"
        )

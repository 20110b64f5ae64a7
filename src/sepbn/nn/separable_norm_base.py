"""The part every SepBN-type layer shares: one normalization, K mixed sets of mapping parameters.

Section III-B of the paper merges the K normalizations of the brute-force SepBN into one
shared batch normalization (its *tracking* parameters) and keeps K separate sets of
*mapping* parameters ``γ, β ∈ R^{K×C}``. A subclass only decides how the per-sample,
per-group weights ``π ∈ R^{N×G×K}`` over the K sets are computed (Eq. 3 for the simple
variant, Fig. 1 for the grouped attention); normalizing and mapping live here.

The mapping is never applied K times: the weights first collapse the K sets into one
scale and one shift per (sample, channel) (Eq. 6), which then act in the same single
pass over the feature map as the normalization; in eval mode the running statistics fold
into them, so the layer is one multiply-add over the map. This is the plain
implementation; ``SepBatchNorm2d`` also has a C++ one, chosen by
:func:`sepbn.nn.dispatch.use_native`.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import Tensor, nn

from sepbn.nn.dispatch import use_native
from sepbn.nn.functional import copy_running_stats, fold_batch_norm, mix_sets, running_stats


class SeparableNormBase(nn.Module):
    """Shared normalization with K sets of mapping parameters mixed per sample and group.

    Subclasses implement :meth:`_mixing_weights`. Every SepBN-type layer is an instance of
    this class, which is how :func:`sepbn.nn.set_temperature` finds them.

    Args:
        num_features: Number of channels C.
        num_sets: Number of mapping-parameter sets K.
        num_groups: Number of channel groups G; channel ``c`` belongs to group ``c // (C / G)``.
        temperature: Softmax temperature τ (Eq. 5), > 0.
        eps: Added to the variance for numerical stability, as in ``nn.BatchNorm2d``.
        momentum: Running-statistics momentum, as in ``nn.BatchNorm2d`` (``None``: cumulative
            average).
        track_running_stats: As in ``nn.BatchNorm2d``.

    Attributes:
        weight: Scales γ, shape (K, C).
        bias: Shifts β, shape (K, C).
        norm: The shared ``nn.BatchNorm2d(affine=False)``; ``SyncBatchNorm`` conversion
            replaces it like any other batch norm.
        tau: Buffer holding τ, saved in the ``state_dict`` because it changes the output.
        keep_attention: When True, every forward stores the weights it used in
            ``last_attention`` (detached), for analysis.

    Shape:
        - Input: (N, C, H, W)
        - Output: (N, C, H, W), same dtype and memory format as the input.
    """

    tau: Tensor  # () buffer, τ

    def __init__(
        self,
        num_features: int,
        num_sets: int,
        num_groups: int,
        temperature: float,
        eps: float,
        momentum: float | None,
        track_running_stats: bool,
    ) -> None:
        super().__init__()
        _check_positive_int("num_features", num_features)
        _check_positive_int("num_sets", num_sets)
        _check_positive_int("num_groups", num_groups)
        if num_features % num_groups != 0:
            raise ValueError(
                f"num_groups={num_groups} must divide num_features={num_features} "
                f"(each group holds num_features / num_groups channels)"
            )
        _check_temperature(temperature)
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps!r}")
        self.num_features = num_features
        self.num_sets = num_sets
        self.num_groups = num_groups
        self.keep_attention = False
        self.last_attention: Tensor | None = None
        self.norm = nn.BatchNorm2d(
            num_features,
            eps=eps,
            momentum=momentum,
            affine=False,
            track_running_stats=track_running_stats,
        )
        self.weight = nn.Parameter(torch.empty(num_sets, num_features))
        self.bias = nn.Parameter(torch.empty(num_sets, num_features))
        self.register_buffer("tau", torch.tensor(float(temperature)))

    @property
    def eps(self) -> float:
        """Variance epsilon, held by (and shared with) the inner :attr:`norm`."""
        return self.norm.eps

    @eps.setter
    def eps(self, value: float) -> None:
        self.norm.eps = value

    @property
    def momentum(self) -> float | None:
        """Running-statistics momentum, held by the inner :attr:`norm`."""
        return self.norm.momentum

    @momentum.setter
    def momentum(self, value: float | None) -> None:
        self.norm.momentum = value

    @property
    def track_running_stats(self) -> bool:
        """Whether the inner :attr:`norm` keeps running statistics."""
        return self.norm.track_running_stats

    @property
    def temperature(self) -> float:
        """The softmax temperature τ of Eq. 5 (> 0)."""
        return float(self.tau)

    @temperature.setter
    def temperature(self, value: float) -> None:
        _check_temperature(value)
        with torch.no_grad():
            self.tau.fill_(float(value))

    def reset_parameters(self) -> None:
        """Start every set as the identity mapping of a fresh BatchNorm2d (γ = 1, β = 0).

        The K sets start equal on purpose: the layer then equals ``nn.BatchNorm2d`` at
        initialization, and a converted pretrained BN keeps its output exactly. Symmetry
        is broken by the attention instead (see the subclass docstrings).
        """
        self.norm.reset_running_stats()
        nn.init.ones_(self.weight)
        nn.init.zeros_(self.bias)

    @torch.no_grad()
    def init_from_batchnorm(self, bn: nn.modules.batchnorm._NormBase) -> None:
        """Start from a trained batch norm: statistics, eps, momentum, and its affine in every set.

        Args:
            bn: A batch norm with the same number of channels (``nn.BatchNorm2d`` or
                ``nn.SyncBatchNorm``).

        Raises:
            ValueError: If the channel counts differ.
        """
        if bn.num_features != self.num_features:
            raise ValueError(
                f"cannot start a {type(self).__name__}({self.num_features}) from "
                f"{type(bn).__name__}({bn.num_features}): channel counts differ"
            )
        self.eps = bn.eps
        self.momentum = bn.momentum
        copy_running_stats(bn, self.norm)
        if bn.affine:
            self.weight.copy_(bn.weight.expand_as(self.weight))
            self.bias.copy_(bn.bias.expand_as(self.bias))
        else:
            self.weight.fill_(1.0)
            self.bias.fill_(0.0)

    def _mixing_weights(self, x: Tensor) -> Tensor:
        """Weights π over the K sets for every sample and group, rows summing to 1.

        Shape:
            - x: (N, C, H, W)
            - Output: (N, G, K), in the dtype of :attr:`weight`.
        """
        raise NotImplementedError

    # Whether the layer has a C++ implementation (:meth:`_forward_native`).
    has_native = False

    def forward(self, x: Tensor) -> Tensor:
        """Normalize with the shared statistics, then map with the mixed sets (Eqs. 6-7).

        Shape:
            - x: (N, C, H, W)
            - Output: (N, C, H, W)
        """
        if x.dim() != 4 or x.shape[1] != self.num_features:
            raise ValueError(
                f"{type(self).__name__} expects input of shape (N, {self.num_features}, H, W), "
                f"got {tuple(x.shape)}"
            )
        if use_native(self, x):
            y, pi = self._forward_native(x)
        else:
            y, pi = self._forward_plain(x)
        if self.keep_attention:
            self.last_attention = pi.detach()
        return y

    def _forward_plain(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The reference, from differentiable modules; returns ``(y, π)``."""
        pi = self._mixing_weights(x)  # (N, G, K)
        scale, shift = mix_sets(pi, self.weight, self.bias)  # Eq. 6, (N, C) each
        norm = self.norm
        if not norm.training and norm.running_var is not None:
            # Eval: the running statistics fold into the mixed affine, so the layer is one
            # multiply-add over x (a few tiny ops on (N, C) beside it).
            mean, var = running_stats(norm)
            return fold_batch_norm(x, mean, var, norm.eps, scale, shift), pi
        x_hat = norm(x)  # Eq. 1 with batch statistics; updates the running ones
        scale, shift = scale.to(x_hat.dtype), shift.to(x_hat.dtype)
        return torch.addcmul(shift[..., None, None], x_hat, scale[..., None, None]), pi  # Eq. 7

    def _forward_native(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The C++ implementation (:mod:`sepbn.nn.native`); returns ``(y, π)``."""
        raise NotImplementedError

    def _next_average_factor(self) -> float:
        """Count this batch, as ``nn.BatchNorm2d`` does, and return its running-average factor.

        The factor is the momentum, or ``1 / batches counted`` for ``momentum=None``
        (the cumulative average).
        """
        norm = cast(nn.BatchNorm2d, self._modules["norm"])  # direct: runs at every call
        factor = 0.0 if norm.momentum is None else norm.momentum
        if norm.track_running_stats and norm.num_batches_tracked is not None:
            norm.num_batches_tracked.add_(1)
            if norm.momentum is None:  # cumulative moving average
                factor = 1.0 / float(norm.num_batches_tracked)
        return factor

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, num_sets={self.num_sets}, num_groups={self.num_groups}, "
            f"temperature={self.temperature:g}, eps={self.eps}, momentum={self.momentum}, "
            f"track_running_stats={self.track_running_stats}"
        )


def _check_positive_int(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def _check_temperature(value: float) -> None:
    if not value > 0:
        raise ValueError(f"temperature must be > 0, got {value!r}")

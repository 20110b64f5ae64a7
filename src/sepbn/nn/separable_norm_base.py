"""The part every SepBN-type layer shares: one normalization, K mixed sets of mapping parameters.

Section III-B of the paper merges the K normalizations of the brute-force SepBN into one
shared batch normalization (its *tracking* parameters) and keeps K separate sets of
*mapping* parameters ``γ, β ∈ R^{K×C}``. A subclass only decides how the per-sample,
per-group weights ``π ∈ R^{N×G×K}`` over the K sets are computed (Eq. 3 for the simple
variant, Fig. 1 for the grouped attention); normalizing and mapping live here.

The mapping is never applied K times: the weights first collapse the K sets into one
scale and one shift per (sample, channel) (Eq. 6), which then act in the same single
pass over the feature map as the normalization: in eval mode the whole layer is one
inference-mode batch norm over the (1, N·C, H, W) view, and eager train mode runs the
C++ kernels of :mod:`sepbn.nn.native` on CPU (or, without them, the fused ATen kernels of
:mod:`sepbn.nn.fused_separable_norm`) or the compiled function of
:mod:`sepbn.nn.compiled_separable_norm` on CUDA; inside a user's ``torch.compile`` on CPU
the C++ ops go into the graph as opaque calls. Which path runs for which device, dtype,
mode and compile state, and how to force one, is in :mod:`sepbn.nn.dispatch`
(:meth:`SeparableNormBase._choose_path` implements it).
"""

from __future__ import annotations

from typing import cast

import torch
from torch import Tensor, nn

from sepbn.nn import dispatch, native, native_ops
from sepbn.nn._folding import copy_running_stats, fold_batch_norm, running_stats
from sepbn.nn.fused_separable_norm import mix_sets, separable_norm_train


class SeparableNormBase(nn.Module):
    """Shared normalization with K sets of mapping parameters mixed per sample and group.

    Subclasses implement :meth:`_set_weights`. Every SepBN-type layer is an instance of
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
        use_fused: When True (default), eager train-mode calls take the fast path for
            their device (:mod:`sepbn.nn.dispatch`); False forces the plain path
            ``BatchNorm2d(x)`` then ``γ̂ x̂ + β̂`` for this layer. All paths give the same
            values and gradients.

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
        self.use_fused = True
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

    def _set_weights(self, x: Tensor) -> Tensor:
        """Weights π over the K sets for every sample and group, rows summing to 1.

        Shape:
            - x: (N, C, H, W)
            - Output: (N, G, K), in the dtype of :attr:`weight`.
        """
        raise NotImplementedError

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
        path = self._choose_path(x)
        if path == "native":
            y, pi = self._forward_native(x)
        elif path == "fused":
            y, pi = self._forward_fused(x, self._count_batch())
        elif path == "compiled":
            y, pi = self._forward_compiled(x)
        else:
            y, pi = self._forward_plain(x)
        if self.keep_attention:
            self.last_attention = pi.detach()
        return y

    def _forward_plain(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Reference path from differentiable modules; returns ``(y, π)``."""
        pi = self._set_weights(x)  # (N, G, K)
        scale, shift = mix_sets(pi, self.weight, self.bias)  # Eq. 6, (N, C) each
        norm = self.norm
        if not norm.training and norm.running_var is not None:
            # Eval: the running statistics fold into the mixed affine, so the layer is one
            # multiply-add over x (a few tiny ops on (N, C) beside it).
            mean, var = running_stats(norm)
            y = fold_batch_norm(x, mean, var, norm.eps, scale, shift)
            return y, pi
        x_hat = norm(x)  # Eq. 1 with batch statistics; updates the running ones
        scale, shift = scale.to(x_hat.dtype), shift.to(x_hat.dtype)
        return torch.addcmul(shift[..., None, None], x_hat, scale[..., None, None]), pi  # Eq. 7

    def _forward_fused(self, x: Tensor, factor: float) -> tuple[Tensor, Tensor]:
        """Train-mode path through the fused kernels; returns ``(y, π)``."""
        pi = self._set_weights(x)  # (N, G, K)
        scale, shift = mix_sets(pi, self.weight, self.bias)  # Eq. 6
        norm = self.norm
        y = separable_norm_train(
            x, scale, shift, norm.running_mean, norm.running_var, factor, norm.eps
        )
        return y, pi

    def _forward_native(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Train mode through the C++ CPU kernels (:mod:`sepbn.nn.native`); returns ``(y, π)``."""
        pi = self._set_weights(x)  # (N, G, K)
        scale, shift = mix_sets(pi, self.weight, self.bias)  # Eq. 6
        norm = self.norm
        factor = self._count_batch()
        y = native_ops.separable_norm_train(
            x, scale, shift, norm.running_mean, norm.running_var, factor, norm.eps
        )
        return y, pi

    # Whether :meth:`_forward_native` also implements eval mode (``SepBatchNorm2d``).
    _supports_native_eval = False

    def _choose_path(self, x: Tensor) -> str:
        """``"plain"``, ``"native"``, ``"fused"`` or ``"compiled"`` (table in :mod:`.dispatch`)."""
        forced = dispatch.current_path()
        if forced == "plain" or not self.use_fused:
            return "plain"
        if torch.compiler.is_compiling():
            native_ok = forced in ("auto", "native") and self._can_compile_native(x)
            return "native" if native_ok else "plain"
        if not self._modules["norm"].training:  # type: ignore[union-attr]
            native_eval = forced in ("auto", "native") and self._can_run_native_eval(x)
            return "native" if native_eval else "plain"
        if not self._can_take_fast_path(x):
            return "plain"
        if forced == "native":  # where its conditions hold
            return "native" if self._can_run_native(x) else "plain"
        if forced == "fused":  # on any device, where its dtype conditions hold
            return "fused" if self._can_fuse(x) else "plain"
        if forced == "compiled":  # on any device and float dtype
            return "compiled" if self._supports_compiled else "plain"
        if x.device.type == "cpu" and self._can_fuse(x):
            return "native" if self._can_run_native(x) else "fused"
        if x.device.type == "cuda" and self._supports_compiled and self.norm.momentum is not None:
            return "compiled"
        return "plain"

    def _can_take_fast_path(self, x: Tensor) -> bool:
        """Whether any path other than the plain one applies (eager, train, plain inner BN).

        Tracing compilers (``torch.compile`` is decided by :meth:`_can_compile_native`
        before this), ``torch.func`` transforms and ``SyncBatchNorm`` (whose statistics
        are all-reduced) take the plain path; so does a batch with one value
        per channel, for BatchNorm2d's error message.
        """
        return self._trains_plain_batch_norm(x) and self._runs_eagerly(x)

    def _trains_plain_batch_norm(self, x: Tensor) -> bool:
        """Train mode, a plain inner ``nn.BatchNorm2d``, float input, > 1 value per channel."""
        norm = self._modules["norm"]  # direct: runs at every call
        return (
            norm is not None
            and norm.training
            and type(norm) is nn.BatchNorm2d
            and x.is_floating_point()
            and x.numel() > x.shape[1]
        )

    def _runs_eagerly(self, x: Tensor) -> bool:
        """No tracing compiler (dynamo, TorchScript) and no ``torch.func`` transform is at work."""
        return (
            not torch.compiler.is_compiling()
            and not torch.jit.is_tracing()
            and not torch.jit.is_scripting()
            and not _is_functorch_tensor(x)
            and not _is_functorch_tensor(self.weight)
        )

    def _can_compile_native(self, x: Tensor) -> bool:
        """Inside ``torch.compile`` (not ``torch.export``): whether the C++ ops go in the graph.

        They do, as opaque calls with shape functions, for a train-mode call with a plain
        inner ``nn.BatchNorm2d`` and a constant momentum, and for an eval-mode
        ``SepBatchNorm2d`` call that wants no gradient, on the CPU conditions of
        :meth:`_can_run_native`. Everything else is traced through the plain path.
        """
        if dispatch.is_exporting():
            return False
        norm = self.norm
        if norm.training:
            mode_ok = self._trains_plain_batch_norm(x) and norm.momentum is not None
        else:
            mode_ok = self._native_eval_applies(x)
        return mode_ok and self._can_run_native(x)

    def _can_run_native(self, x: Tensor) -> bool:
        """Whether the C++ kernels take ``x``: CPU, NCHW- or channels-last-contiguous, fused
        dtypes, library built."""
        return (
            x.device.type == "cpu"
            and (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last))
            and self._can_fuse(x)
            and _native_loaded()
        )

    def _native_eval_applies(self, x: Tensor) -> bool:
        """Eval with running statistics and no gradient wanted: the one-call C++ layer's case."""
        norm = self._modules["norm"]  # direct: runs at every inference call
        assert norm is not None  # built in __init__
        return (
            self._supports_native_eval
            and norm._buffers.get("running_var") is not None
            and not (torch.is_grad_enabled() and self._wants_grad(x))
        )

    def _can_run_native_eval(self, x: Tensor) -> bool:
        """:meth:`_native_eval_applies`, not traced or exported, on the C++ kernels' inputs."""
        return (
            self._native_eval_applies(x)
            and self._runs_eagerly(x)
            and not torch.onnx.is_in_onnx_export()
            and self._can_run_native(x)
        )

    def _wants_grad(self, x: Tensor) -> bool:
        return x.requires_grad or any(p.requires_grad for p in self.parameters())

    def _can_fuse(self, x: Tensor) -> bool:
        """Whether the fused kernels' dtype conditions hold: float32/64, no autocast."""
        return (
            x.dtype in (torch.float32, torch.float64)
            and x.dtype == self._parameters["weight"].dtype  # type: ignore[union-attr]
            and not torch.is_autocast_enabled(x.device.type)
        )

    # Whether :meth:`_forward_compiled` exists (``SepBatchNorm2d``).
    _supports_compiled = False

    def _forward_compiled(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Train-mode path through ``torch.compile``; returns ``(y, π)``."""
        raise NotImplementedError

    def _count_batch(self) -> float:
        """Count the batch and return the running-average factor, as ``nn.BatchNorm2d`` does."""
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


@torch.compiler.assume_constant_result
def _native_loaded() -> bool:
    """:func:`sepbn.nn.native.available`; under ``torch.compile`` read once at trace time."""
    return native.available()


def _is_functorch_tensor(x: Tensor) -> bool:
    """Whether ``x`` is wrapped by a ``torch.func`` transform (grad, vmap, jacrev...)."""
    is_wrapped = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", None)
    return bool(is_wrapped(x)) if is_wrapped is not None else False

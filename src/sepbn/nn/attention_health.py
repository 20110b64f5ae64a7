"""Is SepBN's attention alive? Three numbers per layer, measured on the faces a model sees.

SepBN (Eqs. 5-7) helps only when its weights π differ between samples: if π is one-hot and
the same for every face, the layer is a BatchNorm with one chosen set. For every SepBN-type
layer (:class:`~sepbn.nn.SeparableNormBase`), over all samples n and groups g:

- **entropy**: the mean of ``H(π_{n,g}) / log K``, in [0, 1]; 1 is uniform, 0 one-hot;
- **usage**: the mean weight of each set, ``mean_{n,g} π_{n,g,k}``, a (K,) vector summing to 1;
- **input dependence**: the mean over (g, k) of the standard deviation of π_{n,g,k} across
  samples n; 0 means every face gets the same weights.

A layer is **collapsed** when its entropy is below :data:`COLLAPSE_ENTROPY` (0.1: the
largest weight is then about 0.98 or more for K = 3) and its input dependence below
:data:`COLLAPSE_DEPENDENCE` (0.01: the weights move by about 1% between faces). The trainer
logs the three numbers at every validation (without a validation set: from the training
batches of the epochs it would have validated) and warns at the end of a stage when a layer
has collapsed; every evaluation reports them for its test faces.

:class:`AttentionRecorder` gathers them while a model runs, with bounded memory (running
sums, not the weights themselves) and without making the host wait for the device: the sums
stay where π is until :meth:`AttentionRecorder.health` reads them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from sepbn.nn.separable_norm_base import SeparableNormBase

__all__ = [
    "COLLAPSE_DEPENDENCE",
    "COLLAPSE_ENTROPY",
    "AttentionHealth",
    "AttentionRecorder",
    "attention_health",
    "collapse_warning",
    "collapsed_layers",
]

COLLAPSE_ENTROPY = 0.1
COLLAPSE_DEPENDENCE = 0.01


@dataclass(frozen=True)
class AttentionHealth:
    """The attention statistics of one layer (see the module docstring).

    Attributes:
        entropy: Mean normalized entropy of π, in [0, 1].
        usage: ``(K,)`` mean weight of each set.
        dependence: Mean across-sample standard deviation of π.
        num_samples: Samples the statistics were measured on.
    """

    entropy: float
    usage: np.ndarray
    dependence: float
    num_samples: int

    @property
    def collapsed(self) -> bool:
        """Nearly one-hot and nearly the same for every sample."""
        return self.entropy < COLLAPSE_ENTROPY and self.dependence < COLLAPSE_DEPENDENCE

    def as_row(self, prefix: str) -> dict[str, float]:
        """Flat metric keys: ``<prefix>/entropy``, ``/dependence``, ``/usage_<k>``."""
        row = {f"{prefix}/entropy": self.entropy, f"{prefix}/dependence": self.dependence}
        row.update({f"{prefix}/usage_{k}": float(u) for k, u in enumerate(self.usage)})
        return row


def attention_health(pi: Tensor | np.ndarray) -> AttentionHealth:
    """The statistics of a batch of weights, straight from their definition.

    Args:
        pi: ``(N, G, K)`` (or ``(N, K)``) attention weights, rows summing to 1.
    """
    p = torch.as_tensor(pi, dtype=torch.float64)
    p = p.reshape(p.shape[0], -1, p.shape[-1])  # (N, G, K)
    stats = _Sums(p.shape[-1])
    stats.add(p)
    return stats.health()


class _Sums:
    """Running sums over samples of one layer's π, per (g, k)."""

    def __init__(self, num_sets: int) -> None:
        self.num_sets = num_sets
        self.count = 0
        self.entropy: Tensor | None = None  # Σ_n mean_g H(π_{n,g}), ()
        self.first: Tensor | None = None  # Σ_n π, (G, K)
        self.second: Tensor | None = None  # Σ_n π², (G, K)

    def add(self, pi: Tensor) -> None:
        p = pi.detach().to(torch.float64).reshape(pi.shape[0], -1, pi.shape[-1])  # (N, G, K)
        h = -(p * torch.log(p.clamp_min(1e-300))).sum(-1)  # (N, G)
        entropy = h.mean(dim=1).sum()  # a tensor: float() here would wait for the device
        self.entropy = entropy if self.entropy is None else self.entropy + entropy
        first, second = p.sum(0), (p * p).sum(0)
        self.first = first if self.first is None else self.first + first
        self.second = second if self.second is None else self.second + second
        self.count += p.shape[0]

    def health(self) -> AttentionHealth:
        if self.first is None or self.second is None or self.entropy is None or self.count == 0:
            raise ValueError("no attention weights were recorded")
        n = self.count
        mean = self.first / n  # (G, K)
        var = (self.second / n - mean * mean).clamp_min(0.0)
        norm = math.log(self.num_sets) if self.num_sets > 1 else 1.0
        return AttentionHealth(
            entropy=float(self.entropy) / n / norm,
            usage=mean.mean(0).cpu().numpy(),
            dependence=float(var.sqrt().mean()),
            num_samples=n,
        )


class AttentionRecorder:
    """Gathers :class:`AttentionHealth` of every SepBN-type layer of ``model`` while it runs.

    Use as a context manager around any forward passes (a validation run, training steps)::

        with AttentionRecorder(model) as recorder:
            evaluate(model, loader, ...)
        health = recorder.health()  # {layer name: AttentionHealth}

    Each layer's ``keep_attention`` is switched on inside the block and restored after it.
    """

    def __init__(self, model: nn.Module) -> None:
        self.layers = {
            name: m for name, m in model.named_modules() if isinstance(m, SeparableNormBase)
        }
        self._sums = {name: _Sums(m.num_sets) for name, m in self.layers.items()}
        self._handles: list[Any] = []
        self._kept: dict[str, bool] = {}

    def __enter__(self) -> AttentionRecorder:
        for name, layer in self.layers.items():
            self._kept[name] = layer.keep_attention
            layer.keep_attention = True
            self._handles.append(layer.register_forward_hook(self._hook(name)))
        return self

    def _hook(self, name: str) -> Any:
        def record(module: nn.Module, args: Any, output: Any) -> None:
            pi = getattr(module, "last_attention", None)
            if pi is not None:
                self._sums[name].add(pi)

        return record

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for name, layer in self.layers.items():
            layer.keep_attention = self._kept.get(name, False)
            if not layer.keep_attention:
                layer.last_attention = None

    def health(self) -> dict[str, AttentionHealth]:
        """Layer name -> its statistics, for the layers that ran at least once."""
        return {name: s.health() for name, s in self._sums.items() if s.count}


def collapsed_layers(health: dict[str, AttentionHealth]) -> list[str]:
    """The names of the collapsed layers (see the module docstring), in model order."""
    return [name for name, h in health.items() if h.collapsed]


def collapse_warning(health: dict[str, AttentionHealth], where: str) -> str | None:
    """The one warning line for ``health``'s collapsed layers, or ``None`` when none is.

    Args:
        health: Layer name -> its statistics (of a validation, the training batches or a
            test set).
        where: What the statistics are of, starting the line (``"stage1"``,
            ``"stage1 on 300w_common"``).
    """
    collapsed = collapsed_layers(health)
    if not collapsed:
        return None
    return (
        f"{where}: SepBN attention collapsed in {len(collapsed)} of {len(health)} layers "
        f"({', '.join(collapsed)}): nearly one-hot (entropy < {COLLAPSE_ENTROPY:g}) and the "
        f"same for every face (input dependence < {COLLAPSE_DEPENDENCE:g}), so these layers "
        "act as BN with one chosen set; see docs/analysis.md"
    )

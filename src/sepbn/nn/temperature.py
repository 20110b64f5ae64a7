"""Setting and annealing the softmax temperature τ of every SepBN-type layer (Eq. 5)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from sepbn.nn.separable_norm_base import SeparableNormBase, _check_temperature


def set_temperature(model: nn.Module, tau: float) -> int:
    """Set τ in every SepBN-type layer of ``model``.

    Args:
        model: Any module; ``SepBatchNorm2d`` and ``SimpleSepBatchNorm2d`` layers inside
            it (or the module itself) are changed.
        tau: The new temperature, > 0.

    Returns:
        How many layers were changed (0 for a model without SepBN-type layers).

    Raises:
        ValueError: If ``tau`` is not > 0.
    """
    _check_temperature(tau)
    count = 0
    for module in model.modules():
        if isinstance(module, SeparableNormBase):
            module.temperature = tau
            count += 1
    return count


@dataclass(frozen=True)
class TemperatureSchedule:
    """τ linear from ``start`` to ``end`` over the first ``epochs`` epochs, then constant.

    The paper starts at τ = 30 and reaches τ = 1 after 30 epochs (Section V-A, Table IV).
    Epochs are 0-based and may be fractional, for per-iteration annealing:
    ``schedule(epoch + step / steps_per_epoch)``.

    Args:
        start: τ at epoch 0, > 0.
        end: τ from epoch ``epochs`` on, > 0.
        epochs: Length E of the annealing; 0 means ``end`` from the start.

    Example:
        >>> schedule = TemperatureSchedule(30.0, 1.0, 30)
        >>> schedule(0), schedule(15), schedule(30), schedule(100)
        (30.0, 15.5, 1.0, 1.0)
    """

    start: float = 30.0
    end: float = 1.0
    epochs: int = 30

    def __post_init__(self) -> None:
        for name in ("start", "end"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(
                    f"TemperatureSchedule.{name} must be finite and > 0, got {value!r}"
                )
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 0:
            raise ValueError(
                f"TemperatureSchedule.epochs must be an integer >= 0, got {self.epochs!r}"
            )

    def __call__(self, epoch: float) -> float:
        """τ at ``epoch`` (0-based, may be fractional).

        Raises:
            ValueError: If ``epoch`` is negative.
        """
        if not epoch >= 0:
            raise ValueError(f"epoch must be >= 0, got {epoch!r}")
        if self.epochs == 0 or epoch >= self.epochs:
            return float(self.end)
        return float(self.start + (self.end - self.start) * epoch / self.epochs)

    def apply(self, model: nn.Module, epoch: float) -> float:
        """Set every SepBN-type layer of ``model`` to τ at ``epoch`` and return that τ."""
        tau = self(epoch)
        set_temperature(model, tau)
        return tau

"""Optimizers, parameter groups and mixed precision of a training stage.

- :func:`build_optimizer`: SGD (the paper's, Sec. V-A), Adam or AdamW over parameter groups.
- :func:`finetune_param_groups`: CNT stage 2's constant-rate backbone and scheduled branch.
- :func:`resolve_amp`: ``train.amp`` to an autocast dtype on a device.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from sepbn.config import OptimConfig

__all__ = ["build_optimizer", "constant_schedule", "finetune_param_groups", "resolve_amp"]


def build_optimizer(
    config: OptimConfig, param_groups: Sequence[dict[str, Any]]
) -> torch.optim.Optimizer:
    """The optimizer of ``config`` over ``param_groups`` (each with its own ``lr``).

    Raises:
        ValueError: Unknown optimizer name.
    """
    groups = [dict(g) for g in param_groups]
    if config.name == "sgd":
        return torch.optim.SGD(
            groups,
            lr=config.lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
            nesterov=config.nesterov,
        )
    if config.name == "adam":
        return torch.optim.Adam(groups, lr=config.lr, weight_decay=config.weight_decay)
    if config.name == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    raise ValueError(f"unknown optimizer {config.name!r}; valid: 'sgd', 'adam', 'adamw'")


def resolve_amp(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``train.amp`` on ``device``, or ``None`` for full precision.

    ``"auto"`` is bf16 on a CUDA device that supports it, fp16 on other CUDA devices (the
    trainer then adds a gradient scaler) and off elsewhere.

    Raises:
        ValueError: An unknown mode.
    """
    if mode == "off":
        return None
    if mode == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if mode == "bf16":
        return torch.bfloat16
    if mode == "fp16":
        return torch.float16
    raise ValueError(f"unknown train.amp {mode!r}; valid: 'auto', 'off', 'bf16', 'fp16'")


@runtime_checkable
class _SplitModel(Protocol):
    """A model that splits its parameters into a shared backbone and a head."""

    def backbone_parameters(self) -> Iterator[nn.Parameter]: ...
    def head_parameters(self) -> Iterator[nn.Parameter]: ...


def finetune_param_groups(
    backbone_lr: float, head_lr: float
) -> Callable[[nn.Module], list[dict[str, Any]]]:
    """CNT stage 2's parameter groups (paper Sec. IV): the shared backbone at the constant
    ``backbone_lr``, the branch at ``head_lr`` on the stage's schedule.

    Returns:
        ``fn(model) -> groups`` for :class:`sepbn.engine.trainer.Trainer`'s ``param_groups``;
        the model must split its parameters with ``backbone_parameters()`` and
        ``head_parameters()`` (a :class:`~sepbn.models.CrossProtocolModel` does), and the
        function raises ``ValueError`` when a trainable parameter is in neither.
    """

    def groups(model: nn.Module) -> list[dict[str, Any]]:
        if not isinstance(model, _SplitModel):
            raise TypeError(
                f"{type(model).__name__} has no backbone_parameters() and head_parameters()"
            )
        backbone = [p for p in model.backbone_parameters() if p.requires_grad]
        head = [p for p in model.head_parameters() if p.requires_grad]
        covered = {id(p) for p in backbone + head}
        missing = [
            n for n, p in model.named_parameters() if p.requires_grad and id(p) not in covered
        ]
        if missing:
            raise ValueError(
                f"parameters in neither backbone_parameters() nor head_parameters(): {missing[:5]}"
            )
        return [
            {"params": backbone, "lr": backbone_lr, "scheduled": False, "name": "backbone"},
            {"params": head, "lr": head_lr, "scheduled": True, "name": "head"},
        ]

    return groups


def constant_schedule(value: float) -> Callable[[float], float]:
    """``fn(epoch) -> value`` for every epoch (τ in CNT stage 2)."""

    def schedule(epoch: float) -> float:
        del epoch
        return value

    return schedule

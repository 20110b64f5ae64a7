"""Optimizers, parameter groups and mixed precision of a training stage.

- :func:`build_optimizer`: SGD (the paper's, Sec. V-A), Adam or AdamW over parameter groups.
- :func:`finetune_param_groups`: CNT stage 2's constant-rate backbone and scheduled branch.
- :func:`split_attention_groups`: the SepBN attention blocks in groups of their own weight decay.
- :func:`freeze_norm_statistics`: a submodule's norms in eval mode (CNT stage 2).
- :func:`resolve_amp`: ``train.amp`` to an autocast dtype on a device.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from sepbn.config import OptimConfig
from sepbn.nn import SeparableNormBase

__all__ = [
    "build_optimizer",
    "constant_schedule",
    "finetune_param_groups",
    "freeze_norm_statistics",
    "resolve_amp",
    "split_attention_groups",
]


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


def attention_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters of every SepBN attention block (the 1x1 reduction and the MLP of Eqs.
    5-6, or the simple SepBN's squeeze-and-excitation of Eq. 3): everything of a
    :class:`~sepbn.nn.SeparableNormBase` but its K sets of mapping parameters and its norm."""
    out: list[nn.Parameter] = []
    for layer in model.modules():
        if isinstance(layer, SeparableNormBase):
            for name, p in layer.named_parameters():
                if name not in ("weight", "bias") and not name.startswith("norm."):
                    out.append(p)
    return out


def split_attention_groups(
    model: nn.Module, groups: Sequence[dict[str, Any]], weight_decay: float
) -> list[dict[str, Any]]:
    """``groups`` with the SepBN attention parameters moved to groups of their own, with
    ``weight_decay`` (``optim.attention_weight_decay``); each such group keeps the rest of
    its source group's settings and is named ``<name>_attention``. Empty groups are dropped.
    """
    attention = {id(p) for p in attention_parameters(model)}
    out: list[dict[str, Any]] = []
    for group in groups:
        params = list(group["params"])
        rest = [p for p in params if id(p) not in attention]
        mine = [p for p in params if id(p) in attention]
        if rest:
            out.append({**group, "params": rest})
        if mine:
            name = group.get("name", f"group{len(out)}")
            out.append(
                {**group, "params": mine, "weight_decay": weight_decay, "name": f"{name}_attention"}
            )
    return out


def freeze_norm_statistics(module: nn.Module) -> None:
    """Put every normalization layer of ``module`` in eval mode: its running statistics stay
    fixed and it normalizes with them, as at inference (CNT stage 2's backbone). Call after
    ``model.train()``, which would switch them back."""
    for layer in module.modules():
        if isinstance(layer, (nn.modules.batchnorm._NormBase, SeparableNormBase)):
            layer.eval()

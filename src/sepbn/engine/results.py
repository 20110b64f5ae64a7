"""What training returns: per-epoch callback events and each stage's outcome."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from sepbn.nn.attention_health import AttentionHealth

__all__ = ["Callback", "EpochEnd", "StageResult"]


@dataclass
class EpochEnd:
    """What a callback sees after each epoch (on every rank, after the checkpoint).

    Attributes:
        stage: ``"stage1"`` or ``"finetune_<protocol>"``.
        epoch: Completed epochs (1-based index of the epoch that just ended).
        epochs: Epochs of the stage.
        metrics: The epoch's row of ``metrics.jsonl``.
        model: The plain (unwrapped) model.
        checkpoint: ``last.pt`` when it was written at this epoch, else ``None``.
    """

    stage: str
    epoch: int
    epochs: int
    metrics: dict[str, Any]
    model: nn.Module
    checkpoint: Path | None


Callback = Callable[[EpochEnd], None]


@dataclass
class StageResult:
    """The outcome of one training stage.

    Attributes:
        name: ``"stage1"`` or ``"finetune_<protocol>"``.
        stage_dir: Its folder in the run directory.
        epochs: Epochs trained in total (resumed ones included).
        last_checkpoint: ``last.pt``.
        best_checkpoint: ``best.pt``, or ``None`` without validation.
        best_metric: Lowest validation NME (fraction of d), or ``None``.
        best_epoch: The epoch of ``best_metric``.
        history: The rows of ``metrics.jsonl``.
        attention_health: SepBN layer name -> its attention statistics at the last
            validation, or without a validation set on the training batches of the last
            epoch (:mod:`sepbn.nn.attention_health`); empty for a model without SepBN layers.
    """

    name: str
    stage_dir: Path
    epochs: int
    last_checkpoint: Path
    best_checkpoint: Path | None = None
    best_metric: float | None = None
    best_epoch: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    attention_health: dict[str, AttentionHealth] = field(default_factory=dict)

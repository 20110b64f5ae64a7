"""Where a training stage's numbers go: ``metrics.jsonl``, ``metrics.csv``, TensorBoard.

One row per epoch; the CSV has the :data:`METRIC_COLUMNS` first and any further keys
(per-group learning rates, ...) after them, in sorted order. A resumed run keeps the rows of
the epochs it does not repeat.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

__all__ = ["METRIC_COLUMNS", "MetricsLog"]

logger = logging.getLogger(__name__)

METRIC_COLUMNS = (
    "stage",
    "epoch",
    "global_step",
    "train_loss",
    "lr",
    "tau",
    "val_nme",
    "val_failure_rate",
    "val_auc",
    "epoch_time_s",
    "images_per_s",
)


class MetricsLog:
    """Per-epoch rows to ``metrics.jsonl`` / ``metrics.csv`` and TensorBoard (rank 0 only).

    Args:
        stage_dir: The stage's folder; the files go there.
        enabled: False on ranks other than 0: every call is then a no-op.
        tensorboard: Also write TensorBoard scalars (when ``tensorboard`` is installed).
    """

    def __init__(self, stage_dir: Path, enabled: bool, tensorboard: bool) -> None:
        self.enabled = enabled
        self.jsonl = stage_dir / "metrics.jsonl"
        self.csv = stage_dir / "metrics.csv"
        self.rows: list[dict[str, Any]] = []
        self.writer: Any = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                logger.info("tensorboard is not installed; no TensorBoard scalars")
            else:
                self.writer = SummaryWriter(str(stage_dir / "tensorboard"))

    def restore(self, completed_epochs: int) -> None:
        """Keep the rows of the epochs a resumed run does not repeat."""
        if not self.enabled or not self.jsonl.is_file():
            return
        rows = [json.loads(line) for line in self.jsonl.read_text().splitlines() if line.strip()]
        self.rows = [r for r in rows if int(r.get("epoch", 0)) <= completed_epochs]
        self.jsonl.write_text("".join(json.dumps(r) + "\n" for r in self.rows))
        self._write_csv()

    def append(self, row: dict[str, Any]) -> None:
        """Write one epoch's row (``stage`` and ``epoch`` keys, the rest scalars)."""
        if not self.enabled:
            return
        self.rows.append(row)
        with self.jsonl.open("a") as f:
            f.write(json.dumps(row) + "\n")
        self._write_csv()
        if self.writer is not None:
            for key, value in row.items():
                if key not in ("stage", "epoch") and isinstance(value, (int, float)):
                    self.writer.add_scalar(f"epoch/{key}", value, row["epoch"])
            self.writer.flush()

    def scalar(self, key: str, value: float, step: int) -> None:
        """One TensorBoard scalar at a global step (training loss and rate)."""
        if self.writer is not None:
            self.writer.add_scalar(key, value, step)

    def _write_csv(self) -> None:
        extra = sorted({k for r in self.rows for k in r} - set(METRIC_COLUMNS))
        columns = [*METRIC_COLUMNS, *extra]
        with self.csv.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, restval="")
            writer.writeheader()
            writer.writerows(self.rows)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

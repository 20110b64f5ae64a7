"""Training: one library call runs a whole experiment, CNT stage 1 and stage 2 included.

:func:`train` is what ``sepbn train CONFIG`` calls. It reads the data of the config
(:func:`sepbn.engine.data_builder.build_data`), builds the model, and runs:

1. **Stage 1** on every training set at once. With several landmark protocols the model is
   the cross-protocol network of paper Fig. 5 (one branch per protocol, faces sampled in
   proportion to the dataset sizes, L1 loss per branch); with one protocol and no
   ``finetune`` section it is a plain single-protocol model.
2. **Stage 2** (when ``finetune`` is set), for each target protocol: start from the stage-1
   weights, keep only that branch (``keep_branches``), and fine-tune on that protocol's
   training sets with the backbone at the constant ``finetune.backbone_lr`` (1e-7) and the
   branch on the stage-1 warm-up + cosine schedule (paper Sec. IV and V-A). τ stays at
   ``temperature.end`` in this stage (it was annealed in stage 1).
3. **Evaluation** of each stage's final model on the test sets of its protocols.

Run directory layout::

    run_dir/
      config.yaml                 the resolved config (also inside every checkpoint)
      stage1/
        last.pt                   every train.checkpoint_every epochs and after the last one
        best.pt                   lowest validation NME so far (when data.val is set)
        metrics.jsonl, metrics.csv  one row per epoch: loss, lr, tau, val NME/FR/AUC, speed
        tensorboard/              TensorBoard scalars (when tensorboard is installed)
      finetune_<protocol>/        the same files for each CNT stage-2 target
      eval/
        <stage>_<dataset>_summary.json, _per_image.csv, _ced.png
        summary.json              every stage x test set: NME, FR, AUC

Conventions: epochs and steps in messages, logs and checkpoints count from 1 (a
checkpoint's ``epoch`` is the number of completed epochs). The learning rate follows
:mod:`sepbn.engine.schedules` and is updated every step (a metrics row shows the rate of the
epoch's first step); τ is set at the start of every epoch (``temperature.per_step`` for every
step). NMEs are fractions of the normalizer d (x100 for the paper's percent). The data order
of epoch ``e`` depends only on ``(seed, e)`` and augmentation only on ``(seed, e, index)``, so
``resume=True`` continues a killed run to the same final weights as an uninterrupted one.

Devices: ``train.device="auto"`` takes the GPU when there is one, with bf16 autocast (fp16 and
a gradient scaler where bf16 is unsupported) and ``channels_last``; ``train.compile`` adds
``torch.compile``. On CPU these stay off unless asked for. Under ``torchrun`` every process
runs this same code, with DDP and a :class:`~torch.utils.data.DistributedSampler`; only rank 0
writes files (see :mod:`sepbn.engine.distributed`).
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from sepbn.config import ExperimentConfig, ModelConfig, OptimConfig, save_config, to_dict
from sepbn.data.datasets import collate_landmarks, worker_init_fn
from sepbn.engine.checkpoint import (
    CheckpointError,
    capture_rng_state,
    load_checkpoint,
    load_model_state,
    restore_rng_state,
    save_checkpoint,
)
from sepbn.engine.data_builder import build_data, make_eval_set, make_train_set
from sepbn.engine.distributed import (
    DistributedContext,
    all_reduce_sum,
    barrier,
    broadcast_buffers,
    build_sampler,
    cleanup_distributed,
    init_distributed,
    resolve_device,
    unwrap_model,
    wrap_model,
)
from sepbn.engine.evaluator import evaluate, evaluate_best_of_domains
from sepbn.engine.losses import landmark_loss
from sepbn.engine.schedules import build_lr_scheduler
from sepbn.errors import ConfigError, SepbnError
from sepbn.models import build_model
from sepbn.nn import (
    TemperatureSchedule,
    domain_routing,
    find_domain_batchnorms,
    set_temperature,
)

logger = logging.getLogger(__name__)

__all__ = [
    "EpochEnd",
    "StageResult",
    "TrainResult",
    "Trainer",
    "TrainingError",
    "build_model_from_config",
    "build_optimizer",
    "make_loader",
    "seed_everything",
    "train",
]

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


class TrainingError(SepbnError, RuntimeError):
    """Training cannot go on (a non-finite loss, a run directory in the way, ...)."""


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
    """

    name: str
    stage_dir: Path
    epochs: int
    last_checkpoint: Path
    best_checkpoint: Path | None = None
    best_metric: float | None = None
    best_epoch: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class TrainResult:
    """The outcome of :func:`train`.

    Attributes:
        run_dir: The run directory.
        config: The resolved config.
        stages: Stage name to its result, in training order.
        evaluation: ``"<stage>/<test set>"`` to its metrics (``nme``, ``failure_rate``,
            ``auc``, ``num_images``, ``threshold``); empty on ranks other than 0.
    """

    run_dir: Path
    config: ExperimentConfig
    stages: dict[str, StageResult]
    evaluation: dict[str, dict[str, float]] = field(default_factory=dict)


# --------------------------------------------------------------------------- building blocks


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_model_from_config(
    config: ModelConfig,
    *,
    num_points: int | None = None,
    heads: Mapping[str, int] | None = None,
    pretrained: bool = True,
) -> nn.Module:
    """:func:`sepbn.models.build_model` from a :class:`ModelConfig`.

    The norm layer gets :meth:`ModelConfig.norm_layer_kwargs`: the fields of its
    :data:`sepbn.config.NORM_FIELDS` entry, then ``norm_kwargs``.

    Args:
        config: The model section.
        num_points: L of a single-protocol model; give this or ``heads``.
        heads: Protocol name to L of a cross-protocol model (the order fixes the ids).
        pretrained: Load ``config.pretrained``; False when weights come from a checkpoint.

    Raises:
        ConfigError: ``branch_conv_kernel`` set for a single-protocol model.
    """
    if num_points is not None and config.branch_conv_kernel != 1:
        raise ConfigError(
            f"model.branch_conv_kernel={config.branch_conv_kernel} does not apply to a "
            "single-protocol model (it is the kernel of each CNT branch); remove it (default: 1)",
            key="model.branch_conv_kernel",
        )
    return build_model(
        config.arch,
        num_points=num_points,
        heads=dict(heads) if heads is not None else None,
        norm=config.norm,
        norm_kwargs=config.norm_layer_kwargs(),
        sepbn_blocks=config.sepbn_blocks,
        sepbn_positions=config.sepbn_positions,
        width_mult=config.width_mult,
        input_size=config.input_size,
        pretrained=config.pretrained if pretrained and config.pretrained else None,
        branch_conv_kernel=config.branch_conv_kernel,
    )


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


def _resolve_amp(mode: str, device: torch.device) -> torch.dtype | None:
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


def _model_info(model: nn.Module) -> dict[str, Any]:
    """How :func:`load_model_from_checkpoint` rebuilds ``model``."""
    if isinstance(getattr(model, "protocols", None), (list, tuple)):
        heads = getattr(model, "heads", None)
        if not isinstance(heads, Mapping):
            heads = getattr(model, "num_points", None)
        if not isinstance(heads, Mapping):
            raise TypeError(
                "a cross-protocol model needs a 'heads' mapping (protocol name -> L) to be saved"
            )
        return {"kind": "cross", "heads": {str(k): int(v) for k, v in heads.items()}}
    num_points = getattr(model, "num_points", None)
    if not isinstance(num_points, int):
        raise TypeError("a single-protocol model needs an int 'num_points' (L) to be saved")
    return {"kind": "single", "num_points": num_points}


def _domain_layers(model: nn.Module) -> int:
    """K of the brute-force SepBN layers of ``model`` (0 when it has none)."""
    layers = find_domain_batchnorms(model)
    return max((layer.num_domains for _, layer in layers), default=0)


def make_loader(
    dataset: Dataset[Any],
    batch_size: int,
    num_workers: int,
    collate_fn: Callable[[list[Any]], Any],
    *,
    sampler: Any = None,
    train: bool = False,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader in the order of ``sampler`` (or the dataset's order).

    Training loaders drop a last partial batch (a batch of one face breaks batch
    statistics) unless the epoch holds less than one batch.
    """
    num = len(sampler) if sampler is not None else len(dataset)  # type: ignore[arg-type]
    worker_init = None
    if num_workers:
        worker_init = worker_init_fn
        # Idle OpenMP threads of the workers must not spin on the training cores.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_fn,
        pin_memory=pin_memory,
        drop_last=train and num >= batch_size,
        worker_init_fn=worker_init,
        # New workers each epoch pick up the dataset's set_epoch (augmentation draws).
        persistent_workers=False,
    )


class _MetricsLog:
    """Per-epoch rows to ``metrics.jsonl`` / ``metrics.csv`` and TensorBoard (rank 0 only)."""

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


# --------------------------------------------------------------------------- one stage


@dataclass
class _Loop:
    """The moving parts of one stage's training loop."""

    model: nn.Module  # what is called: possibly DDP- and compile-wrapped
    sampler: Any
    loader: DataLoader
    steps: int  # optimizer steps per epoch
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    log: _MetricsLog
    tau: float
    epoch: int = 0  # completed epochs
    global_step: int = 0
    best: float | None = None
    best_epoch: int | None = None
    last_saved: int | None = None  # epoch of the last last.pt


class Trainer:
    """Trains one stage: epochs, validation, checkpoints, logs.

    Args:
        config: The experiment config (optimizer, schedule, τ, devices, logging).
        stage_dir: The stage's folder (``run_dir/stage1``, ...).
        model: A single-protocol (``model(x) -> (N, L, 2)``) or cross-protocol
            (``model(x, protocol_ids) -> {p: (n_p, L_p, 2)}``) model on any device.
        train_set: Yields sample dicts of the :mod:`sepbn.data.datasets` contract; may have
            ``set_epoch(epoch)`` for per-epoch augmentation.
        stage: The stage name written into checkpoints and logs.
        val_set: Validation set for the best checkpoint, or ``None``.
        val_protocol: The protocol of ``val_set`` (for a cross-protocol model's branch).
        epochs: Epochs of this stage; ``None`` = ``config.optim.epochs``.
        warmup_epochs: Warm-up epochs; ``None`` = ``config.optim.warmup_epochs``.
        param_groups: ``fn(model) -> [{"params": ..., "lr": ..., "scheduled": bool,
            "name": str}, ...]``; ``None`` = one group at ``config.optim.lr``.
        temperature: ``fn(epoch) -> τ`` (epoch 0-based, fractional with
            ``temperature.per_step``); ``None`` = the config's linear anneal.
        ctx: The distributed context; ``None`` = single process on ``config.train.device``.
        callbacks: Called with an :class:`EpochEnd` after every epoch.
        collate_fn: Batches samples; ``None`` = :func:`sepbn.data.datasets.collate_landmarks`.
    """

    def __init__(
        self,
        config: ExperimentConfig,
        stage_dir: str | Path,
        model: nn.Module,
        train_set: Dataset[Any],
        *,
        stage: str = "stage1",
        val_set: Dataset[Any] | None = None,
        val_protocol: str | None = None,
        epochs: int | None = None,
        warmup_epochs: int | None = None,
        param_groups: Callable[[nn.Module], list[dict[str, Any]]] | None = None,
        temperature: Callable[[float], float] | None = None,
        ctx: DistributedContext | None = None,
        callbacks: Sequence[Callback] = (),
        collate_fn: Callable[[list[Any]], Any] | None = None,
    ) -> None:
        self.config = config
        self.stage_dir = Path(stage_dir)
        self.model = model
        self.train_set = train_set
        self.stage = stage
        self.val_set = val_set
        self.val_protocol = val_protocol
        self.epochs = int(epochs if epochs is not None else config.optim.epochs)
        warmup = config.optim.warmup_epochs if warmup_epochs is None else warmup_epochs
        self.warmup_epochs = min(int(warmup), self.epochs)
        if self.epochs < 1:
            raise ValueError(f"{stage}: epochs must be >= 1, got {self.epochs}")
        self.param_groups = param_groups
        if temperature is None:
            t = config.temperature
            temperature = TemperatureSchedule(t.start, t.end, t.epochs)
        self.temperature = temperature
        self.ctx = ctx or DistributedContext(device=resolve_device(config.train.device))
        self.callbacks = list(callbacks)
        if collate_fn is None:
            collate_fn = collate_landmarks
        self.collate_fn = collate_fn
        self.last_path = self.stage_dir / "last.pt"
        self.best_path = self.stage_dir / "best.pt"

    # ------------------------------------------------------------------ setup

    def _groups(self, model: nn.Module) -> list[dict[str, Any]]:
        if self.param_groups is not None:
            return self.param_groups(model)
        params = [p for p in model.parameters() if p.requires_grad]
        return [{"params": params, "lr": self.config.optim.lr, "name": "all"}]

    def _loader(
        self, dataset: Dataset[Any], sampler: Any, batch_size: int, train: bool
    ) -> DataLoader:
        return make_loader(
            dataset,
            batch_size,
            self.config.data.num_workers,
            self.collate_fn,
            sampler=sampler,
            train=train,
            pin_memory=self.ctx.device.type == "cuda",
        )

    # ------------------------------------------------------------------ the loop

    def fit(self, resume: bool = False) -> StageResult:
        """Train the stage (or continue it from ``last.pt`` with ``resume``).

        Raises:
            TrainingError: A non-finite loss (naming epoch and step; ``last.pt`` is left as
                it was), or ``last.pt`` exists and ``resume`` is False.
            CheckpointError: ``last.pt`` cannot be read or does not fit.
        """
        if self.last_path.exists() and not resume:
            raise TrainingError(
                f"{self.last_path} exists: pass resume=True (--resume) to continue that run, "
                "or choose another run directory"
            )
        if self.ctx.is_main:
            self.stage_dir.mkdir(parents=True, exist_ok=True)
        if self.config.train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        run = self._setup()
        if resume and self.last_path.exists():
            self._resume(run)
        else:
            run.log.restore(0)  # drop rows a run killed before its first checkpoint wrote
        try:
            for epoch in range(run.epoch, self.epochs):
                self._epoch(run, epoch)
        finally:
            run.log.close()
        return StageResult(
            name=self.stage,
            stage_dir=self.stage_dir,
            epochs=self.epochs,
            last_checkpoint=self.last_path,
            best_checkpoint=self.best_path if self.best_path.exists() else None,
            best_metric=run.best,
            best_epoch=run.best_epoch,
            history=list(run.log.rows),
        )

    def _setup(self) -> _Loop:
        """Device, wrappers, optimizer, data loader, schedule, scaler, logs."""
        cfg = self.config
        ctx = self.ctx
        amp_dtype = _resolve_amp(cfg.train.amp, ctx.device)
        channels_last = cfg.train.channels_last
        if channels_last is None:
            channels_last = ctx.device.type == "cuda"
        self._memory_format = torch.channels_last if channels_last else torch.contiguous_format
        raw = self.model.to(device=ctx.device, memory_format=self._memory_format)
        self._cross = isinstance(getattr(raw, "protocols", None), (list, tuple))
        self._domains = _domain_layers(raw)
        find_unused = cfg.train.find_unused_parameters
        if find_unused is None:
            # Branches of protocols (or domains) absent from a batch get no gradient.
            find_unused = self._cross or self._domains > 0 or cfg.model.aggregation == "hard"
        model = wrap_model(raw, ctx, sync_bn=cfg.train.sync_bn, find_unused_parameters=find_unused)
        self.model = raw = unwrap_model(model)  # SyncBN conversion may have replaced layers
        if cfg.train.compile:
            model = torch.compile(model)  # type: ignore[assignment]

        optimizer = build_optimizer(cfg.optim, self._groups(raw))
        sampler = build_sampler(self.train_set, ctx, cfg.seed)
        loader = self._loader(self.train_set, sampler, cfg.optim.batch_size, train=True)
        steps = len(loader)
        if cfg.train.max_steps_per_epoch is not None:
            steps = min(steps, cfg.train.max_steps_per_epoch)
        if steps == 0:
            raise TrainingError(f"{self.stage}: the training set gives no batch")
        scheduler = build_lr_scheduler(
            optimizer,
            epochs=self.epochs,
            warmup_epochs=self.warmup_epochs,
            steps_per_epoch=steps,
            min_lr=cfg.optim.min_lr,
            warmup_start_lr=cfg.optim.warmup_start_lr,
            per_epoch=cfg.optim.schedule_unit == "epoch",
            schedule=cfg.optim.schedule,
        )
        return _Loop(
            model=model,
            sampler=sampler,
            loader=loader,
            steps=steps,
            optimizer=optimizer,
            scheduler=scheduler,
            scaler=torch.amp.GradScaler(ctx.device.type, enabled=amp_dtype == torch.float16),
            amp_dtype=amp_dtype,
            log=_MetricsLog(self.stage_dir, ctx.is_main, cfg.train.tensorboard),
            tau=float(self.temperature(0)),
        )

    def _resume(self, run: _Loop) -> None:
        state = load_checkpoint(self.last_path, map_location=self.ctx.device)
        if state.get("stage") != self.stage:
            raise CheckpointError(
                f"{self.last_path}: written by stage {state.get('stage')!r}, not {self.stage!r}"
            )
        load_model_state(self.model, state["model"], str(self.last_path))
        try:
            run.optimizer.load_state_dict(state["optimizer"])
            run.scheduler.load_state_dict(state["scheduler"])
        except (ValueError, KeyError) as exc:
            raise CheckpointError(f"{self.last_path}: optimizer state does not fit: {exc}") from exc
        if state.get("scaler") is not None and run.scaler.is_enabled():
            run.scaler.load_state_dict(state["scaler"])
        run.epoch, run.global_step = int(state["epoch"]), int(state["global_step"])
        run.best, run.best_epoch = state.get("best_metric"), state.get("best_epoch")
        run.last_saved = run.epoch
        run.tau = float(state["temperature"]["tau"])
        restore_rng_state(state["rng"])
        run.log.restore(run.epoch)
        logger.info("%s: resumed from %s after epoch %d", self.stage, self.last_path, run.epoch)

    def _epoch(self, run: _Loop, epoch: int) -> None:
        """One epoch: train, validate, checkpoint, log, callbacks."""
        cfg = self.config
        ctx = self.ctx
        run.sampler.set_epoch(epoch)
        if hasattr(self.train_set, "set_epoch"):
            self.train_set.set_epoch(epoch)
        run.model.train()
        run.tau = self._set_temperature(epoch, 0, run.steps)
        # The rates of the epoch's first step (the scheduler moves them after every step).
        lrs = {
            g.get("name", f"group{i}"): g["lr"] for i, g in enumerate(run.optimizer.param_groups)
        }
        lr = self._lr(run.optimizer)
        t0 = time.perf_counter()
        loss_sum, images_seen = self._train_epoch(run, epoch)
        broadcast_buffers(self.model, ctx)
        epoch_time = time.perf_counter() - t0
        run.epoch = done = epoch + 1
        totals = all_reduce_sum(torch.stack([loss_sum, images_seen]), ctx).cpu()
        row: dict[str, Any] = {
            "stage": self.stage,
            "epoch": done,
            "global_step": run.global_step,
            "train_loss": float(totals[0]) / (run.steps * ctx.world_size),
            "lr": lr,
            "tau": run.tau,
            "epoch_time_s": round(epoch_time, 3),
            "images_per_s": round(float(totals[1]) / max(epoch_time, 1e-9), 1),
        }
        if len(lrs) > 1:
            row.update({f"lr_{name}": value for name, value in lrs.items()})
        last = done == self.epochs
        improved = False
        if self.val_set is not None and (done % cfg.train.val_every == 0 or last):
            if ctx.is_main:  # other ranks wait at the barrier
                metrics = self.validate(run.amp_dtype)
                row.update({f"val_{k}": v for k, v in metrics.items()})
                if run.best is None or metrics["nme"] < run.best:
                    run.best, run.best_epoch, improved = metrics["nme"], done, True
            barrier(ctx)
        checkpoint = None
        due = done % cfg.train.checkpoint_every == 0 or last
        if ctx.is_main and (due or improved):
            state = self._state(run)
            if due:
                checkpoint = save_checkpoint(self.last_path, state)
            if improved:
                save_checkpoint(self.best_path, state)
        if due:
            run.last_saved = done
        barrier(ctx)
        run.log.append(row)
        logger.info(
            "%s epoch %d/%d: loss %.5f, lr %.3g, tau %.3g%s, %.1f img/s",
            self.stage,
            done,
            self.epochs,
            row["train_loss"],
            row["lr"],
            run.tau,
            f", val NME {100 * row['val_nme']:.3f}%" if "val_nme" in row else "",
            row["images_per_s"],
        )
        info = EpochEnd(self.stage, done, self.epochs, row, self.model, checkpoint)
        for callback in self.callbacks:
            callback(info)

    def _set_temperature(self, epoch: int, step: int, steps: int) -> float:
        per_step = self.config.temperature.per_step
        tau = float(self.temperature(epoch + step / steps if per_step else epoch))
        set_temperature(self.model, tau)
        return tau

    @staticmethod
    def _lr(optimizer: torch.optim.Optimizer) -> float:
        # The scheduled group's rate is the informative one (stage 2's backbone is constant).
        for group in optimizer.param_groups:
            if group.get("scheduled", True):
                return float(group["lr"])
        return float(optimizer.param_groups[0]["lr"])

    def _images(self, batch: Mapping[str, Any]) -> Tensor:
        images = batch["image"].to(self.ctx.device, non_blocking=True)
        images = images.float().div_(255.0)  # uint8 -> [0, 1]; the model normalizes itself
        return images.contiguous(memory_format=self._memory_format)

    def _forward(self, model: nn.Module, images: Tensor, batch: Mapping[str, Any]) -> Any:
        routing: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        if self._domains:
            routing = domain_routing(self.model, batch["domain"].to(self.ctx.device))
        with routing:
            if self._cross:
                return model(images, batch["protocol_id"].to(self.ctx.device, non_blocking=True))
            return model(images)

    def _train_epoch(self, run: _Loop, epoch: int) -> tuple[Tensor, Tensor]:
        """The optimizer steps of one epoch; returns the summed loss and the image count."""
        cfg = self.config
        device = self.ctx.device
        optimizer = run.optimizer
        loss_sum = torch.zeros((), device=device)
        images_seen = torch.zeros((), device=device)
        window: list[Tensor] = []
        window_start = 0
        params = [p for g in optimizer.param_groups for p in g["params"]]
        bar = tqdm(
            total=run.steps,
            desc=f"{self.stage} {epoch + 1}/{self.epochs}",
            unit="batch",
            leave=False,
            dynamic_ncols=True,
            # None: tqdm shows the bar on a terminal only.
            disable=None if (cfg.train.progress and self.ctx.is_main) else True,
        )
        autocast = torch.autocast(
            device.type, dtype=run.amp_dtype, enabled=run.amp_dtype is not None
        )
        try:
            for step, batch in enumerate(run.loader):
                if step >= run.steps:
                    break
                if cfg.temperature.per_step and step > 0:
                    run.tau = self._set_temperature(epoch, step, run.steps)
                images = self._images(batch)
                with autocast:
                    preds = self._forward(run.model, images, batch)
                loss = landmark_loss(preds, batch["targets"], images.shape[-1])
                optimizer.zero_grad(set_to_none=True)
                run.scaler.scale(loss).backward()
                if cfg.optim.grad_clip is not None:
                    run.scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
                run.scaler.step(optimizer)
                run.scaler.update()
                run.scheduler.step()
                run.global_step += 1
                detached = loss.detach().float()
                window.append(detached)
                loss_sum += detached
                images_seen += images.shape[0]
                bar.update(1)
                if len(window) == cfg.train.log_every or step == run.steps - 1:
                    # Checked in windows, not every step, so that the device never waits
                    # for the host; the first bad step is still found exactly.
                    mean = self._check_losses(window, epoch, window_start, run.last_saved)
                    lr = self._lr(optimizer)
                    bar.set_postfix(loss=f"{mean:.4f}", lr=f"{lr:.2e}", tau=f"{run.tau:.3g}")
                    run.log.scalar("train/loss", mean, run.global_step)
                    run.log.scalar("train/lr", lr, run.global_step)
                    window, window_start = [], step + 1
        finally:
            bar.close()
        return loss_sum, images_seen

    def _check_losses(
        self, window: list[Tensor], epoch: int, first_step: int, last_saved: int | None
    ) -> float:
        """Mean loss of the window over all ranks; raise at the first non-finite one."""
        # Summed over ranks, so every rank sees the same NaN and stops at the same step.
        losses = all_reduce_sum(torch.stack(window), self.ctx).cpu() / self.ctx.world_size
        bad = (~torch.isfinite(losses)).nonzero()
        if len(bad):
            i = int(bad[0])
            kept = (
                f"the last good checkpoint is {self.last_path} (epoch {last_saved})"
                if last_saved
                else "no checkpoint had been written yet"
            )
            raise TrainingError(
                f"non-finite loss ({float(losses[i])}) at epoch {epoch + 1}, step "
                f"{first_step + i + 1} of stage {self.stage}; training stopped and {kept}. "
                "Lower optim.lr, set optim.grad_clip, or check the data."
            )
        return float(losses.mean())

    @torch.no_grad()
    def validate(self, amp_dtype: torch.dtype | None = None) -> dict[str, float]:
        """NME, failure rate and AUC of the current model on ``val_set`` (fractions of d)."""
        if self.val_set is None:
            raise ValueError(f"{self.stage}: no validation set")
        loader = self._loader(self.val_set, None, self.config.optim.batch_size * 4, train=False)
        kwargs = {"device": self.ctx.device, "amp": amp_dtype is not None, "progress": False}
        if self._domains:
            result = evaluate_best_of_domains(
                self.model, loader, self.val_protocol, self._domains, **kwargs
            )
        else:
            result = evaluate(self.model, loader, self.val_protocol, **kwargs)
        self.model.train()
        m = result.metrics
        return {"nme": float(m.nme), "failure_rate": float(m.failure_rate), "auc": float(m.auc)}

    def _state(self, run: _Loop) -> dict[str, Any]:
        """The checkpoint contents after ``run.epoch`` completed epochs."""
        t = self.config.temperature
        return {
            "stage": self.stage,
            "model": self.model.state_dict(),
            "model_info": _model_info(self.model),
            "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(),
            "scaler": run.scaler.state_dict() if run.scaler.is_enabled() else None,
            "temperature": {"start": t.start, "end": t.end, "epochs": t.epochs, "tau": run.tau},
            "epoch": run.epoch,
            "epochs": self.epochs,
            "global_step": run.global_step,
            "rng": capture_rng_state(),
            "config": to_dict(self.config),
            "best_metric": run.best,
            "best_epoch": run.best_epoch,
        }


# --------------------------------------------------------------------------- the experiment


def _param_groups_finetune(
    backbone_lr: float, head_lr: float
) -> Callable[[nn.Module], list[dict[str, Any]]]:
    """CNT stage 2: constant backbone rate, scheduled branch rate (paper Sec. IV)."""

    def groups(model: nn.Module) -> list[dict[str, Any]]:
        backbone = [p for p in model.backbone_parameters() if p.requires_grad]  # type: ignore[operator]
        head = [p for p in model.head_parameters() if p.requires_grad]  # type: ignore[operator]
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


def _constant(value: float) -> Callable[[float], float]:
    def schedule(epoch: float) -> float:
        del epoch
        return value

    return schedule


def _config_differences(
    old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = ""
) -> list[str]:
    diffs = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        path = f"{prefix}{key}"
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            diffs += _config_differences(a, b, f"{path}.")
        elif a != b:
            diffs.append(f"{path}: {a!r} -> {b!r}")
    return diffs


def _write_run_config(config: ExperimentConfig, run_dir: Path, resume: bool) -> None:
    path = run_dir / "config.yaml"
    if resume and path.is_file():
        import yaml

        old = yaml.safe_load(path.read_text()) or {}
        diffs = _config_differences(old, to_dict(config))
        if diffs:
            logger.warning("resuming with a changed config: %s", "; ".join(diffs))
    save_config(config, path)


def _evaluate_stage(
    config: ExperimentConfig,
    stage: StageResult,
    protocols: Sequence[str],
    tests: Sequence[Any],
    ctx: DistributedContext,
    out_dir: Path,
) -> dict[str, dict[str, float]]:
    """Evaluate a stage's final (or best) weights on the test sets of its protocols."""
    chosen = [t for t in tests if t.protocol.name in protocols]
    if not chosen:
        return {}
    path = stage.last_checkpoint
    if config.train.eval_weights == "best" and stage.best_checkpoint is not None:
        path = stage.best_checkpoint
    state = load_checkpoint(path, map_location="cpu")
    info = state["model_info"]
    if info["kind"] == "cross":
        model = build_model_from_config(config.model, heads=info["heads"], pretrained=False)
    else:
        model = build_model_from_config(
            config.model, num_points=int(info["num_points"]), pretrained=False
        )
    load_model_state(model, state["model"], str(path))
    model.to(ctx.device).eval()
    amp = _resolve_amp(config.train.amp, ctx.device) is not None
    domains = _domain_layers(model)
    results = {}
    for test in chosen:
        name = test.protocol.name
        ids = list(info["heads"]) if info["kind"] == "cross" else [name]
        dataset = make_eval_set(test, config, protocol_id=ids.index(name))
        loader = make_loader(
            dataset,
            config.optim.batch_size * 4,
            config.data.num_workers,
            collate_landmarks,
            pin_memory=ctx.device.type == "cuda",
        )
        kwargs = {"device": ctx.device, "amp": amp, "progress": config.train.progress}
        if domains:
            result = evaluate_best_of_domains(model, loader, name, domains, **kwargs)
        else:
            result = evaluate(model, loader, name, **kwargs)
        label = f"{stage.name}_{test.name}"
        result.save(out_dir, label)
        m = result.metrics
        results[f"{stage.name}/{test.name}"] = {
            "nme": float(m.nme),
            "failure_rate": float(m.failure_rate),
            "auc": float(m.auc),
            "num_images": int(m.num_images),
            "threshold": float(m.threshold),
        }
        logger.info("%s on %s: %s", stage.name, test.name, m.format())
    return results


def train(
    config: ExperimentConfig,
    run_dir: str | Path,
    resume: bool = False,
    *,
    callbacks: Sequence[Callback] = (),
) -> TrainResult:
    """Run the experiment of ``config``: data, model, stage 1, stage 2, evaluation.

    Works unchanged under ``torchrun`` (one process per GPU); see the module docstring for
    the stages and the run directory layout.

    Args:
        config: The resolved experiment config.
        run_dir: Output folder (created).
        resume: Continue from the stages' ``last.pt``; finished stages are not retrained.
        callbacks: Called after every epoch of every stage.

    Returns:
        The stages' results and the test metrics.

    Raises:
        TrainingError: A non-finite loss, or checkpoints in ``run_dir`` without ``resume``.
        ValueError: A config that does not fit the data (e.g. a fine-tuning target or a
            validation protocol without a training set).
        CheckpointError, DatasetError: Unreadable checkpoints or data.
    """
    run_dir = Path(run_dir)
    owns_group = not dist.is_initialized()
    ctx = init_distributed(config.train.device)
    try:
        if ctx.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            _write_run_config(config, run_dir, resume)
        seed_everything(config.seed)
        data = build_data(config)
        protocols = data.protocols
        cross = len(protocols) > 1 or config.finetune is not None
        val_protocol = data.val.protocol.name if data.val is not None else None
        if val_protocol is not None and val_protocol not in protocols:
            raise ConfigError(
                f"data.val has protocol {val_protocol!r}, which no training set has; "
                f"training protocols: {protocols}"
            )
        if config.finetune is not None:
            unknown = [t for t in config.finetune.targets if t not in protocols]
            if unknown:
                raise ConfigError(
                    f"finetune.targets {unknown} have no training set; valid: {protocols}"
                )
            if config.finetune.init == "best" and data.val is None:
                raise ConfigError("finetune.init='best' needs data.val (the best stage-1 NME)")

        def datasets(sets: Sequence[Any], val_id: int) -> tuple[Any, Any]:
            # Rank 0 prepares caches first; the other ranks then only open them.
            made: tuple[Any, Any] = (None, None)
            for turn in (True, False):
                if ctx.is_main == turn:
                    train_set = make_train_set(sets, config, is_main=turn)
                    val_set = None
                    if data.val is not None and data.val.protocol.name in {
                        s.protocol.name for s in sets
                    }:
                        val_set = make_eval_set(data.val, config, val_id, is_main=turn)
                    made = (train_set, val_set)
                barrier(ctx)
            return made

        if cross:
            model = build_model_from_config(config.model, heads=data.heads)
        else:
            model = build_model_from_config(config.model, num_points=data.heads[protocols[0]])
        val_id = protocols.index(val_protocol) if val_protocol is not None else 0
        train_set, val_set = datasets(data.train, val_id)
        stages: dict[str, StageResult] = {}
        stages["stage1"] = Trainer(
            config,
            run_dir / "stage1",
            model,
            train_set,
            stage="stage1",
            val_set=val_set,
            val_protocol=val_protocol,
            ctx=ctx,
            callbacks=callbacks,
            collate_fn=collate_landmarks,
        ).fit(resume=resume)
        stage_protocols = {"stage1": protocols}

        ft = config.finetune
        if ft is not None:
            stage1 = stages["stage1"]
            init = stage1.last_checkpoint
            if ft.init == "best" and stage1.best_checkpoint is not None:
                init = stage1.best_checkpoint
            epochs = ft.epochs or config.optim.epochs
            warmup = ft.warmup_epochs
            if warmup is None:  # scale the stage-1 warm-up to the fine-tuning length
                warmup = config.optim.warmup_epochs * epochs // config.optim.epochs
            for i, target in enumerate(ft.targets or protocols):
                name = f"finetune_{target}"
                # Each stage starts from its own seed, whatever ran (or was resumed) before.
                seed_everything(config.seed + 1 + i)
                model = build_model_from_config(config.model, heads=data.heads, pretrained=False)
                load_model_state(model, load_checkpoint(init)["model"], str(init))
                model.keep_branches([target])  # type: ignore[operator]
                sets = [s for s in data.train if s.protocol.name == target]
                train_set, val_set = datasets(sets, 0)
                stages[name] = Trainer(
                    config,
                    run_dir / name,
                    model,
                    train_set,
                    stage=name,
                    val_set=val_set,
                    val_protocol=val_protocol if val_set is not None else None,
                    epochs=epochs,
                    warmup_epochs=warmup,
                    param_groups=_param_groups_finetune(
                        ft.backbone_lr, ft.head_lr or config.optim.lr
                    ),
                    temperature=_constant(config.temperature.end),
                    ctx=ctx,
                    callbacks=callbacks,
                    collate_fn=collate_landmarks,
                ).fit(resume=resume)
                stage_protocols[name] = [target]

        evaluation: dict[str, dict[str, float]] = {}
        if ctx.is_main and data.test:
            out_dir = run_dir / "eval"
            for name, stage in stages.items():
                evaluation.update(
                    _evaluate_stage(config, stage, stage_protocols[name], data.test, ctx, out_dir)
                )
            if evaluation:
                (out_dir / "summary.json").write_text(json.dumps(evaluation, indent=2) + "\n")
        barrier(ctx)
        return TrainResult(run_dir, config, stages, evaluation)
    finally:
        if owns_group:
            cleanup_distributed(ctx)

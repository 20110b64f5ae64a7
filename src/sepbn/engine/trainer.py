"""One training stage: epochs, validation, checkpoints, logs (:class:`Trainer`).

Why this file is long (~590 lines): it is one class whose methods share one stage's moving
parts (:class:`_Loop`: the wrapped model, optimizer, schedule, scaler, log); setup, the step
loop, validation, checkpointing and resuming read and write the same state, so they stay
together. Everything around the loop lives beside it: results (:mod:`.results`), metric files
(:mod:`.run_log`), optimizer and AMP (:mod:`.optim`), resume rules (:mod:`.run_config`).

:func:`sepbn.engine.experiment.train` runs a whole experiment (CNT stage 1, stage 2, the
final evaluation) with one :class:`Trainer` per stage; a Trainer can also train any model of
the batch contract on any dataset by itself.

Conventions: epochs and steps in messages, logs and checkpoints count from 1 (a
checkpoint's ``epoch`` is the number of completed epochs). The learning rate follows
:mod:`sepbn.engine.schedules` and is updated every step (a metrics row shows the rate of the
epoch's first step); τ is set at the start of every epoch (``temperature.per_step`` for every
step). NMEs are fractions of the normalizer d (x100 for the paper's percent). The data order
of epoch ``e`` depends only on ``(seed, e)`` and augmentation only on ``(seed, e, index)``, so
``fit(resume=True)`` continues a killed stage to the same final weights as an uninterrupted
one.

Devices: ``train.device="auto"`` takes the GPU when there is one, with bf16 autocast (fp16 and
a gradient scaler where bf16 is unsupported) and ``channels_last``; ``train.compile`` adds
``torch.compile``. On CPU these stay off unless asked for. ``train.deterministic`` asks
PyTorch for deterministic kernels for the duration of :meth:`Trainer.fit` only. Under
``torchrun`` the model is wrapped in DDP and the data split by a
:class:`~torch.utils.data.DistributedSampler`; only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from sepbn.config import ExperimentConfig, to_dict
from sepbn.data.datasets import collate_landmarks
from sepbn.engine.checkpoint import (
    CheckpointError,
    capture_rng_state,
    load_checkpoint,
    load_model_state,
    restore_rng_state,
    save_checkpoint,
)
from sepbn.engine.data_builder import make_loader
from sepbn.engine.distributed import (
    DistributedContext,
    all_reduce_sum,
    barrier,
    broadcast_buffers,
    build_train_sampler,
    resolve_device,
    unwrap_model,
    wrap_model,
)
from sepbn.engine.evaluator import evaluate_model
from sepbn.engine.losses import landmark_loss
from sepbn.engine.model_builder import model_info
from sepbn.engine.optim import (
    build_optimizer,
    freeze_norm_statistics,
    resolve_amp,
    split_attention_groups,
)
from sepbn.engine.results import Callback, EpochEnd, StageResult
from sepbn.engine.run_config import check_resume_config
from sepbn.engine.run_log import MetricsLog
from sepbn.engine.schedules import build_lr_scheduler
from sepbn.errors import SepbnError
from sepbn.models import is_cross_protocol, to_model_input
from sepbn.nn import TemperatureSchedule, domain_routing, num_model_domains, set_temperature
from sepbn.nn.attention_health import AttentionHealth, AttentionRecorder, collapse_warning

logger = logging.getLogger(__name__)

__all__ = [
    "Callback",
    "EpochEnd",
    "StageResult",
    "Trainer",
    "TrainingError",
    "deterministic_algorithms",
]


class TrainingError(SepbnError, RuntimeError):
    """Training cannot go on (a non-finite loss, a run directory in the way, ...)."""


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool) -> Iterator[None]:
    """``torch.use_deterministic_algorithms(True, warn_only=True)`` inside the block only.

    The previous global setting is restored on exit, also when the block raises; with
    ``enabled=False`` nothing is changed.
    """
    if not enabled:
        yield
        return
    previous = torch.are_deterministic_algorithms_enabled()
    previous_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=previous_warn)


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
    log: MetricsLog
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
        frozen_stats: Submodule (by attribute name, e.g. ``"backbone"``) whose normalization
            layers stay in eval mode while the rest trains (CNT stage 2,
            ``finetune.freeze_backbone_stats``); ``None`` = none.
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
        frozen_stats: str | None = None,
    ) -> None:
        self.config = config
        self.frozen_stats = frozen_stats
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
        # What the model needs per batch: known from the model alone, so that validate()
        # works before fit() (and after it, once wrappers have replaced layers).
        self._cross = is_cross_protocol(model)
        self._domains = num_model_domains(model)
        # Layer name -> attention statistics of the last validation, or without a validation
        # set of the last recorded training epoch (SepBN layers only).
        self.attention_health: dict[str, AttentionHealth] = {}
        channels_last = config.train.channels_last
        if channels_last is None:
            channels_last = self.ctx.device.type == "cuda"
        self._memory_format = torch.channels_last if channels_last else torch.contiguous_format

    # ------------------------------------------------------------------ setup

    def _groups(self, model: nn.Module) -> list[dict[str, Any]]:
        if self.param_groups is not None:
            groups = self.param_groups(model)
        else:
            params = [p for p in model.parameters() if p.requires_grad]
            groups = [{"params": params, "lr": self.config.optim.lr, "name": "all"}]
        decay = self.config.optim.attention_weight_decay
        return groups if decay is None else split_attention_groups(model, groups, decay)

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
        with deterministic_algorithms(self.config.train.deterministic):
            run = self._setup()
            if resume and self.last_path.exists():
                self._resume(run)
            else:
                if resume:
                    logger.info(
                        "%s: no %s to resume from; starting this stage from scratch",
                        self.stage,
                        self.last_path,
                    )
                run.log.restore(0)  # drop rows a run killed before its first checkpoint wrote
            try:
                for epoch in range(run.epoch, self.epochs):
                    self._epoch(run, epoch)
            finally:
                run.log.close()
        self._warn_if_collapsed()
        return StageResult(
            name=self.stage,
            stage_dir=self.stage_dir,
            epochs=self.epochs,
            last_checkpoint=self.last_path,
            best_checkpoint=self.best_path if self.best_path.exists() else None,
            best_metric=run.best,
            best_epoch=run.best_epoch,
            history=list(run.log.rows),
            attention_health=dict(self.attention_health),
        )

    def _warn_if_collapsed(self) -> None:
        warning = collapse_warning(self.attention_health, self.stage)
        if warning is not None:
            logger.warning("%s", warning)

    def _health_due(self, done: int) -> bool:
        """Whether the epoch that completes ``done`` epochs validates or, without a
        validation set, records the attention health of its training batches."""
        return done % self.config.train.val_every == 0 or done == self.epochs

    def _health_row(self, source: str) -> dict[str, Any]:
        """The metric columns of :attr:`attention_health`; ``attn_source`` says which faces
        (``"val"``, or ``"train"``: the training batches, in train mode)."""
        if not self.attention_health:
            return {}
        row: dict[str, Any] = {"attn_source": source}
        for name, health in self.attention_health.items():
            row.update(health.as_row(f"attn/{name}"))
        return row

    def _setup(self) -> _Loop:
        """Device, wrappers, optimizer, data loader, schedule, scaler, logs."""
        cfg = self.config
        ctx = self.ctx
        amp_dtype = resolve_amp(cfg.train.amp, ctx.device)
        raw = self.model.to(ctx.device).to(memory_format=self._memory_format)
        find_unused = cfg.train.find_unused_parameters
        if find_unused is None:
            # Branches of protocols (or domains) absent from a batch get no gradient.
            find_unused = self._cross or self._domains > 0 or cfg.model.aggregation == "hard"
        model = wrap_model(raw, ctx, sync_bn=cfg.train.sync_bn, find_unused_parameters=find_unused)
        self.model = raw = unwrap_model(model)  # SyncBN conversion may have replaced layers
        if cfg.train.compile:
            model = torch.compile(model)  # type: ignore[assignment]  # an OptimizedModule, typed as a callable

        optimizer = build_optimizer(cfg.optim, self._groups(raw))
        sampler = build_train_sampler(
            self.train_set,
            ctx,
            cfg.seed,
            sampling=cfg.data.sampling,
            num_samples=(
                None
                if cfg.train.steps_per_epoch is None
                else cfg.train.steps_per_epoch * cfg.optim.batch_size
            ),
        )
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
            log=MetricsLog(self.stage_dir, ctx.is_main, cfg.train.tensorboard),
            tau=float(self.temperature(0)),
        )

    def _resume(self, run: _Loop) -> None:
        state = load_checkpoint(self.last_path, map_location=self.ctx.device)
        if state.get("stage") != self.stage:
            raise CheckpointError(
                f"{self.last_path}: written by stage {state.get('stage')!r}, not {self.stage!r}"
            )
        check_resume_config(state["config"], self.config, self.last_path)
        load_model_state(self.model, state["model"], str(self.last_path))
        try:
            run.optimizer.load_state_dict(state["optimizer"])
            run.scheduler.load_state_dict(state["scheduler"])
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
            raise CheckpointError(f"{self.last_path}: optimizer state does not fit: {exc}") from exc
        # The rest of the resume state: any wrong type in a hand-made or edited file is one
        # line naming it, not a traceback from deep inside torch.
        try:
            if state.get("scaler") is not None and run.scaler.is_enabled():
                run.scaler.load_state_dict(state["scaler"])
            run.epoch, run.global_step = int(state["epoch"]), int(state["global_step"])
            run.best, run.best_epoch = state.get("best_metric"), state.get("best_epoch")
            run.last_saved = run.epoch
            run.tau = float(state["temperature"]["tau"])
            restore_rng_state(state["rng"])
        except (ValueError, KeyError, TypeError, IndexError, AttributeError, RuntimeError) as exc:
            raise CheckpointError(
                f"{self.last_path}: the resume state (epoch, scaler, temperature or random "
                f"generators) is damaged or hand-made: {type(exc).__name__}: {exc}"
            ) from exc
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
        if self.frozen_stats is not None:
            freeze_norm_statistics(getattr(self.model, self.frozen_stats))
        run.tau = self._set_temperature(epoch, 0, run.steps)
        # The rates of the epoch's first step (the scheduler moves them after every step).
        lrs = {
            g.get("name", f"group{i}"): g["lr"] for i, g in enumerate(run.optimizer.param_groups)
        }
        lr = self._lr(run.optimizer)
        # Without a validation set the attention health comes from the training batches of
        # the epochs that would have been validated (rank 0's share under DDP).
        recorder = None
        if self.val_set is None and ctx.is_main and self._health_due(epoch + 1):
            recorder = AttentionRecorder(self.model)
        t0 = time.perf_counter()
        with recorder or contextlib.nullcontext():
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
        if recorder is not None:
            self.attention_health = recorder.health()
            row.update(self._health_row("train"))
        if self.val_set is not None and self._health_due(done):
            if ctx.is_main:  # other ranks wait at the barrier
                metrics = self.validate(run.amp_dtype)
                row.update({f"val_{k}": v for k, v in metrics.items()})
                row.update(self._health_row("val"))
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
        images = to_model_input(batch["image"], self.ctx.device)
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
                loss = landmark_loss(
                    preds, batch["targets"], images.shape[-1], cfg.optim.protocol_weighting
                )
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
        """NME, failure rate and AUC of the current model on ``val_set`` (fractions of d).

        Works before, during and after :meth:`fit`; the model is moved to the trainer's
        device and left in the mode it was in. The attention statistics of every SepBN
        layer on the same faces go to :attr:`attention_health`
        (:mod:`sepbn.nn.attention_health`).

        Args:
            amp_dtype: Autocast dtype; ``None`` = full precision.
        """
        if self.val_set is None:
            raise ValueError(f"{self.stage}: no validation set")
        self.model.to(self.ctx.device)
        loader = self._loader(self.val_set, None, self.config.optim.batch_size * 4, train=False)
        result = evaluate_model(
            self.model,
            loader,
            self.val_protocol,
            device=self.ctx.device,
            amp=amp_dtype is not None,
            progress=False,
        )
        self.attention_health = result.attention_health
        m = result.metrics
        return {"nme": float(m.nme), "failure_rate": float(m.failure_rate), "auc": float(m.auc)}

    def _state(self, run: _Loop) -> dict[str, Any]:
        """The checkpoint contents after ``run.epoch`` completed epochs."""
        t = self.config.temperature
        return {
            "stage": self.stage,
            "model": self.model.state_dict(),
            "model_info": model_info(self.model),
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

"""One experiment from its config: data, model, CNT stage 1, stage 2, final evaluation.

:func:`train` is what ``sepbn train CONFIG`` calls. It reads the data of the config
(:func:`sepbn.engine.data_builder.build_data`), builds the model
(:func:`sepbn.engine.model_builder.build_model_from_config`), and runs, each stage with a
:class:`~sepbn.engine.trainer.Trainer`:

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
      skipped.csv                 every record a dataset skipped (file, line, reason)
      stage1/
        last.pt                   every train.checkpoint_every epochs and after the last one
        best.pt                   lowest validation NME so far (when data.val is set)
        metrics.jsonl, metrics.csv  one row per epoch: loss, lr, tau, val NME/FR/AUC, speed
        tensorboard/              TensorBoard scalars (when tensorboard is installed)
      finetune_<protocol>/        the same files for each CNT stage-2 target
      eval/
        <stage>_<dataset>_summary.json, _per_image.csv, _ced.png
        summary.json              every stage x test set: NME, FR, AUC, NME per head-pose
                                  bin, SepBN attention health

``resume=True`` continues a killed run to the same final weights as an uninterrupted one
(see :mod:`sepbn.engine.trainer`). It refuses a config that differs from the run's in a field
that changes the training (:mod:`sepbn.engine.run_config` lists the fields that may change:
paths, devices, workers, logging), and it says so when there is nothing to resume.

Under ``torchrun`` every process runs this same code, with DDP and a
:class:`~torch.utils.data.DistributedSampler`; only rank 0 writes files (see
:mod:`sepbn.engine.distributed`).
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from sepbn.analysis.pose_bins import format_pose_bins
from sepbn.config import ExperimentConfig, FinetuneConfig
from sepbn.data.datasets import collate_landmarks
from sepbn.engine.data_builder import (
    ExperimentData,
    LoadedSet,
    build_data,
    make_eval_set,
    make_loader,
    make_train_set,
    write_skip_list,
)
from sepbn.engine.distributed import (
    DistributedContext,
    barrier,
    cleanup_distributed,
    init_distributed,
)
from sepbn.engine.evaluator import evaluate_model
from sepbn.engine.model_builder import build_model_from_config, load_model_from_checkpoint
from sepbn.engine.optim import constant_schedule, finetune_param_groups, resolve_amp
from sepbn.engine.run_config import write_run_config
from sepbn.engine.trainer import (
    Callback,
    StageResult,
    Trainer,
)
from sepbn.errors import ConfigError
from sepbn.models import is_cross_protocol
from sepbn.nn.attention_health import collapse_warning

logger = logging.getLogger(__name__)

__all__ = ["TrainResult", "seed_everything", "train"]


@dataclass
class TrainResult:
    """The outcome of :func:`train`.

    Attributes:
        run_dir: The run directory.
        config: The resolved config.
        stages: Stage name to its result, in training order.
        evaluation: ``"<stage>/<test set>"`` to its metrics (``nme``, ``failure_rate``,
            ``auc``, ``num_images``, ``threshold``, the head-pose bins ``nme_pose_<bin>`` and
            ``count_pose_<bin>``, and ``attn/<layer>/...`` per SepBN layer: see
            :meth:`sepbn.engine.evaluator.EvalResult.summary`); empty on ranks other than 0.
    """

    run_dir: Path
    config: ExperimentConfig
    stages: dict[str, StageResult]
    evaluation: dict[str, dict[str, float]] = field(default_factory=dict)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass(frozen=True)
class _Run:
    """What every step of :func:`train` reads: the config, its data, where and how it runs."""

    config: ExperimentConfig
    data: ExperimentData
    run_dir: Path
    ctx: DistributedContext
    resume: bool
    callbacks: Sequence[Callback]

    @property
    def val_protocol(self) -> str | None:
        """The validation set's protocol, or ``None`` without one."""
        return self.data.val.protocol.name if self.data.val is not None else None


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
        _start_run_dir(config, run_dir, resume, ctx)
        seed_everything(config.seed)
        data = build_data(config)
        _check_config_fits_data(config, data)
        stage1_init = _stage1_checkpoint(config)
        run = _Run(config, data, run_dir, ctx, resume, callbacks)
        # Built (and their caches prepared, their skipped records listed) even when stage 1
        # comes from another run's checkpoint.
        model = _stage1_model(run)
        train_set, val_set = _stage_datasets(run, data.train)
        _report_skipped_records(run)

        stages: dict[str, StageResult] = {}
        stage_protocols: dict[str, list[str]] = {}
        if stage1_init is None:
            stages["stage1"] = _fit_stage1(run, model, train_set, val_set)
            stage_protocols["stage1"] = data.protocols
        if config.finetune is not None:
            init = stage1_init or _finetune_init(config.finetune, stages["stage1"])
            for i, target in enumerate(config.finetune.targets or data.protocols):
                name = f"finetune_{target}"
                stages[name] = _fit_finetune_stage(run, name, target, init, seed_offset=1 + i)
                stage_protocols[name] = [target]

        evaluation = _evaluate_stages(run, stages, stage_protocols) if ctx.is_main else {}
        barrier(ctx)
        return TrainResult(run_dir, config, stages, evaluation)
    finally:
        if owns_group:
            cleanup_distributed(ctx)


def _start_run_dir(
    config: ExperimentConfig, run_dir: Path, resume: bool, ctx: DistributedContext
) -> None:
    """Create ``run_dir`` and write the run's config (rank 0), refusing a changed resume."""
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_run_config(config, run_dir, resume)
    barrier(ctx)  # a refused resume stops every rank here, not at the first collective


def _check_config_fits_data(config: ExperimentConfig, data: ExperimentData) -> None:
    """Refuse a validation protocol or fine-tuning targets that no training set has.

    Raises:
        ConfigError: The offending values and the training protocols.
    """
    protocols = data.protocols
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


def _stage1_checkpoint(config: ExperimentConfig) -> Path | None:
    """The stage-1 checkpoint named by ``finetune.init``, or ``None`` for this run's own.

    Raises:
        ConfigError: The path is not a file.
    """
    ft = config.finetune
    if ft is None or ft.init in ("last", "best"):
        return None
    path = Path(os.path.expandvars(ft.init)).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"finetune.init={ft.init!r}: no such checkpoint file ({path}); give 'last', "
            "'best' or the path of a stage-1 checkpoint",
            key="finetune.init",
        )
    return path


def _stage1_model(run: _Run) -> nn.Module:
    """The stage-1 network: cross-protocol (one branch per protocol) or single-protocol."""
    protocols = run.data.protocols
    # CNT (a finetune section) keeps the branch structure even with one protocol.
    if len(protocols) > 1 or run.config.finetune is not None:
        return build_model_from_config(run.config.model, heads=run.data.heads)
    return build_model_from_config(run.config.model, num_points=run.data.heads[protocols[0]])


def _stage_datasets(run: _Run, sets: Sequence[LoadedSet]) -> tuple[Any, Any]:
    """The training set over ``sets`` and the validation set, when its protocol is among them.

    Rank 0 prepares the caches first; the other ranks then only open them.
    """
    protocols = list(dict.fromkeys(s.protocol.name for s in sets))  # the model's branches
    val = run.data.val
    if val is not None and val.protocol.name not in protocols:
        val = None
    made: tuple[Any, Any] = (None, None)
    for turn in (True, False):
        if run.ctx.is_main == turn:
            train_set = make_train_set(sets, run.config, is_main=turn)
            val_set = None
            if val is not None:
                val_id = protocols.index(val.protocol.name)  # the validated branch
                val_set = make_eval_set(val, run.config, val_id, is_main=turn)
            made = (train_set, val_set)
        barrier(run.ctx)
    return made


def _report_skipped_records(run: _Run) -> None:
    """Write ``skipped.csv`` (rank 0) and warn when any record was skipped."""
    if not run.ctx.is_main:
        return
    skipped = write_skip_list(run.data, run.run_dir)
    if skipped.get("total"):
        logger.warning(
            "%d record(s) skipped while reading and preparing the data; each one is listed in %s",
            skipped["total"],
            run.run_dir / str(skipped["file"]),
        )


def _fit_stage1(run: _Run, model: nn.Module, train_set: Any, val_set: Any) -> StageResult:
    """CNT stage 1 (or the whole training of a single-protocol model) on every training set."""
    return Trainer(
        run.config,
        run.run_dir / "stage1",
        model,
        train_set,
        stage="stage1",
        val_set=val_set,
        val_protocol=run.val_protocol,
        ctx=run.ctx,
        callbacks=run.callbacks,
        collate_fn=collate_landmarks,
    ).fit(resume=run.resume)


def _finetune_init(ft: FinetuneConfig, stage1: StageResult) -> Path:
    """This run's stage-1 checkpoint that ``finetune.init`` (``"last"`` or ``"best"``) names."""
    if ft.init == "best" and stage1.best_checkpoint is not None:
        return stage1.best_checkpoint
    return stage1.last_checkpoint


def _finetune_epochs(config: ExperimentConfig) -> tuple[int, int]:
    """Stage 2's ``(epochs, warmup_epochs)``; an unset warm-up is stage 1's, scaled to the length.

    E.g. ``optim.epochs=10, optim.warmup_epochs=2`` and ``finetune.epochs=5`` give ``(5, 1)``.
    """
    ft = config.finetune
    assert ft is not None
    epochs = ft.epochs or config.optim.epochs
    warmup = ft.warmup_epochs
    if warmup is None:
        warmup = config.optim.warmup_epochs * epochs // config.optim.epochs
    return epochs, warmup


def _finetune_head_lr(config: ExperimentConfig) -> float:
    """Stage 2's peak branch rate: ``finetune.head_lr``, else ``optim.lr * head_lr_scale``
    (not below ``optim.min_lr``)."""
    ft = config.finetune
    assert ft is not None
    if ft.head_lr is not None:
        return ft.head_lr
    return max(config.optim.lr * ft.head_lr_scale, config.optim.min_lr)


def _fit_finetune_stage(
    run: _Run, name: str, target: str, init: Path, seed_offset: int
) -> StageResult:
    """CNT stage 2 for ``target``: the stage-1 weights of ``init`` with only that branch,
    fine-tuned on that protocol's training sets (backbone at ``finetune.backbone_lr``)."""
    config, ft = run.config, run.config.finetune
    assert ft is not None
    # Each stage starts from its own seed, whatever ran (or was resumed) before.
    seed_everything(config.seed + seed_offset)
    model, _ = load_model_from_checkpoint(init, config=config)
    assert is_cross_protocol(model)  # a config with finetune builds a CNT model
    model.train()
    model.keep_branches([target])
    train_set, val_set = _stage_datasets(
        run, [s for s in run.data.train if s.protocol.name == target]
    )
    epochs, warmup = _finetune_epochs(config)
    return Trainer(
        config,
        run.run_dir / name,
        model,
        train_set,
        stage=name,
        val_set=val_set,
        val_protocol=run.val_protocol if val_set is not None else None,
        epochs=epochs,
        warmup_epochs=warmup,
        param_groups=finetune_param_groups(ft.backbone_lr, _finetune_head_lr(config)),
        temperature=constant_schedule(config.temperature.end),
        ctx=run.ctx,
        callbacks=run.callbacks,
        collate_fn=collate_landmarks,
        frozen_stats="backbone" if ft.freeze_backbone_stats else None,
    ).fit(resume=run.resume)


def _evaluate_stages(
    run: _Run, stages: dict[str, StageResult], stage_protocols: dict[str, list[str]]
) -> dict[str, dict[str, float]]:
    """Every stage on the test sets of its protocols; ``eval/summary.json`` when any ran."""
    evaluation: dict[str, dict[str, float]] = {}
    if not run.data.test:
        return evaluation
    out_dir = run.run_dir / "eval"
    for name, stage in stages.items():
        evaluation.update(_evaluate_stage(run, stage, stage_protocols[name], out_dir))
    if evaluation:
        (out_dir / "summary.json").write_text(json.dumps(evaluation, indent=2) + "\n")
    return evaluation


def _evaluate_stage(
    run: _Run, stage: StageResult, protocols: Sequence[str], out_dir: Path
) -> dict[str, dict[str, float]]:
    """Evaluate a stage's final (or best) weights on the test sets of its protocols.

    Returns:
        ``"<stage>/<test set>"`` -> :meth:`~sepbn.engine.evaluator.EvalResult.summary`.
    """
    config, ctx = run.config, run.ctx
    chosen = [t for t in run.data.test if t.protocol.name in protocols]
    if not chosen:
        return {}
    path = stage.last_checkpoint
    if config.train.eval_weights == "best" and stage.best_checkpoint is not None:
        path = stage.best_checkpoint
    model, _ = load_model_from_checkpoint(path, map_location=ctx.device, config=config)
    amp = resolve_amp(config.train.amp, ctx.device) is not None
    ids = list(model.protocols) if is_cross_protocol(model) else None
    results = {}
    for test in chosen:
        name = test.protocol.name
        dataset = make_eval_set(test, config, protocol_id=ids.index(name) if ids else 0)
        loader = make_loader(
            dataset,
            config.optim.batch_size * 4,
            config.data.num_workers,
            collate_landmarks,
            pin_memory=ctx.device.type == "cuda",
        )
        result = evaluate_model(
            model, loader, name, device=ctx.device, amp=amp, progress=config.train.progress
        )
        label = f"{stage.name}_{test.name}"
        result.save(out_dir, label)
        results[f"{stage.name}/{test.name}"] = result.summary()
        logger.info("%s on %s: %s", stage.name, test.name, result.metrics.format())
        logger.info("%s", format_pose_bins(result.pose))
        warning = collapse_warning(result.attention_health, f"{stage.name} on {test.name}")
        if warning is not None:
            logger.warning("%s", warning)
    return results

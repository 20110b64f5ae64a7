"""Training and evaluation: the experiment, the trainer, checkpoints, distributed helpers.

- :func:`train` (:mod:`~sepbn.engine.experiment`): one call from an
  :class:`~sepbn.config.ExperimentConfig` to a trained, evaluated run directory (CNT stage 1
  and 2 included); :class:`Trainer` (:mod:`~sepbn.engine.trainer`) runs one stage.
- :mod:`~sepbn.engine.data_builder` and :mod:`~sepbn.engine.model_builder`: config -> data,
  config -> model; :func:`load_model_from_checkpoint` rebuilds a trained network.
- :mod:`~sepbn.engine.optim` (optimizer, CNT stage-2 parameter groups, AMP),
  :mod:`~sepbn.engine.schedules` (warm-up + cosine), :mod:`~sepbn.engine.losses` (masked L1),
  :mod:`~sepbn.engine.run_log` (metrics files), :mod:`~sepbn.engine.run_config` (what a
  resume may change).
- :func:`save_checkpoint`, :func:`load_checkpoint` (:mod:`~sepbn.engine.checkpoint`: files).
- :func:`init_distributed` and friends: DDP under ``torchrun``.
- :func:`evaluate`, :func:`evaluate_model`, :func:`evaluate_checkpoint`, :func:`predict`:
  NME / FR / AUC in original image pixels.

Imports flow one way: checkpoint, run_log, run_config, optim, schedules, losses, distributed
-> data_builder, model_builder -> evaluator -> trainer -> experiment.
"""

from sepbn.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from sepbn.engine.distributed import DistributedContext, init_distributed, wrap_model
from sepbn.engine.evaluator import (
    EvalResult,
    evaluate,
    evaluate_best_of_domains,
    evaluate_model,
    predict,
)
from sepbn.engine.experiment import TrainResult, train
from sepbn.engine.losses import cross_protocol_l1_loss, landmark_loss, masked_l1_loss
from sepbn.engine.model_builder import build_model_from_config, load_model_from_checkpoint
from sepbn.engine.run_config import ResumeError
from sepbn.engine.schedules import build_lr_scheduler, warmup_cosine_lr
from sepbn.engine.trainer import EpochEnd, StageResult, Trainer, TrainingError

__all__ = [
    "CheckpointError",
    "DistributedContext",
    "EpochEnd",
    "EvalResult",
    "ResumeError",
    "StageResult",
    "TrainResult",
    "Trainer",
    "TrainingError",
    "build_lr_scheduler",
    "build_model_from_config",
    "cross_protocol_l1_loss",
    "evaluate",
    "evaluate_best_of_domains",
    "evaluate_model",
    "init_distributed",
    "landmark_loss",
    "load_checkpoint",
    "load_model_from_checkpoint",
    "masked_l1_loss",
    "predict",
    "save_checkpoint",
    "train",
    "warmup_cosine_lr",
    "wrap_model",
]

"""Training and evaluation: the trainer, checkpoints, distributed helpers, schedules, losses.

- :func:`train`: one call from an :class:`~sepbn.config.ExperimentConfig` to a trained,
  evaluated run directory (CNT stage 1 and 2 included); :class:`Trainer` runs one stage.
- :func:`save_checkpoint`, :func:`load_checkpoint`, :func:`load_model_from_checkpoint`.
- :func:`init_distributed` and friends: DDP under ``torchrun``.
- :func:`build_lr_scheduler`: warm-up + cosine; :func:`landmark_loss`: masked L1.
- :func:`evaluate`, :func:`predict`: NME / FR / AUC in original image pixels.
"""

from sepbn.engine.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_model_from_checkpoint,
    save_checkpoint,
)
from sepbn.engine.distributed import DistributedContext, init_distributed, wrap_model
from sepbn.engine.evaluator import EvalResult, evaluate, predict
from sepbn.engine.losses import cross_protocol_l1_loss, landmark_loss, masked_l1_loss
from sepbn.engine.schedules import build_lr_scheduler, warmup_cosine_lr
from sepbn.engine.trainer import (
    EpochEnd,
    StageResult,
    Trainer,
    TrainingError,
    TrainResult,
    build_model_from_config,
    train,
)

__all__ = [
    "CheckpointError",
    "DistributedContext",
    "EpochEnd",
    "EvalResult",
    "StageResult",
    "TrainResult",
    "Trainer",
    "TrainingError",
    "build_lr_scheduler",
    "build_model_from_config",
    "cross_protocol_l1_loss",
    "evaluate",
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

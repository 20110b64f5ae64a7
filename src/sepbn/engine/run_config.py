"""The config of a run on disk, and what a resumed run may change in it.

A resumed run continues the one it was started as, to the same final weights. Changing a
field that shapes the training (the learning rate, the schedule, the model, the data order,
even ``train.val_every``, since every validation pass draws from torch's generator) would
silently break that promise, so such a resume is refused. :data:`RESUMABLE_CHANGES` lists the
fields that may change: where the data and outputs are, the device and workers, logging.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sepbn.config import ExperimentConfig, save_config, to_dict
from sepbn.config.yaml_reader import read_yaml_file
from sepbn.errors import SepbnError

__all__ = [
    "RESUMABLE_CHANGES",
    "ResumeError",
    "check_resume_config",
    "config_differences",
    "write_run_config",
]

logger = logging.getLogger(__name__)


class ResumeError(SepbnError, RuntimeError):
    """A resumed run's config changes the training."""


# Config fields (fnmatch patterns of dotted paths) that a resumed run may change: where the
# data and outputs are, which device and how many workers, and what is logged. Any other
# change would make the resumed run differ from the one it continues.
RESUMABLE_CHANGES = (
    "name",
    "data.train.*.path",
    "data.val.path",
    "data.test*",
    "data.cache_dir",
    "data.num_workers",
    "train.device",
    "train.progress",
    "train.tensorboard",
    "train.log_every",
    "train.checkpoint_every",
    "train.eval_weights",
)


def config_differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """``"path: old -> new"`` for every leaf that differs between two config dicts.

    Mappings and lists of equal length are compared item by item (``data.train.0.path``).
    """
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        diffs = []
        for key in sorted(set(old) | set(new)):
            diffs += config_differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return diffs
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        diffs = []
        for i, (a, b) in enumerate(zip(old, new)):
            diffs += config_differences(a, b, f"{prefix}{i}.")
        return diffs
    return [f"{prefix.rstrip('.')}: {old!r} -> {new!r}"] if old != new else []


def check_resume_config(old: Mapping[str, Any], new: ExperimentConfig, source: str | Path) -> None:
    """Refuse to resume under a config that would change the training.

    Args:
        old: The config the run was started with, as a dict.
        new: The config of the resumed run.
        source: Where ``old`` comes from, for the messages.

    Raises:
        ResumeError: A field outside :data:`RESUMABLE_CHANGES` differs.
    """
    diffs = config_differences(old, to_dict(new))
    refused = [
        d
        for d in diffs
        if not any(fnmatch.fnmatchcase(d.split(":")[0], p) for p in RESUMABLE_CHANGES)
    ]
    if refused:
        raise ResumeError(
            f"cannot resume with a config that changes the training (against {source}): "
            + "; ".join(refused)
            + ". A resumed run continues the one it was started as; revert these fields, "
            "or start a new run directory"
        )
    if diffs:
        logger.info("resuming with changed settings: %s", "; ".join(diffs))


def write_run_config(config: ExperimentConfig, run_dir: Path, resume: bool) -> None:
    """Write ``run_dir/config.yaml``; on ``resume``, first check it against the old one.

    Raises:
        ResumeError: ``resume`` under a config that changes the training.
    """
    path = run_dir / "config.yaml"
    if resume:
        if path.is_file():
            check_resume_config(read_yaml_file(path)[0] or {}, config, path)
        elif not any(run_dir.glob("*/last.pt")):
            logger.warning("--resume: %s holds no run to resume; starting from scratch", run_dir)
    save_config(config, path)

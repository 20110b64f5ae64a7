"""Checkpoints: atomic writes, clear errors on bad files, the config that made them.

A checkpoint is one ``torch.save`` file holding a plain dict:

=================  ==============================================================
``format``         ``"sepbn-checkpoint"``, and ``format_version`` (an int)
``sepbn_version``  the package version that wrote it
``stage``          ``"stage1"`` or ``"finetune_<protocol>"``
``model``          the model's ``state_dict`` (never the DDP / compile wrapper's)
``model_info``     what to rebuild: ``{"kind": "single", "num_points": L}`` or
                   ``{"kind": "cross", "heads": {protocol: L_p}}``
``optimizer``      ``optimizer.state_dict()``
``scheduler``      the learning-rate scheduler's ``state_dict()``
``scaler``         the AMP gradient scaler's ``state_dict()`` (or ``None``)
``temperature``    the τ schedule: ``start``, ``end``, ``epochs`` and the current ``tau``
``epoch``          completed epochs; ``global_step``: completed optimizer steps
``rng``            Python, NumPy, torch (and CUDA) generator states
``config``         the resolved experiment config as a plain dict
``best_metric``    best validation NME so far (``None`` without validation), ``best_epoch``
=================  ==============================================================

Everything in it is a tensor or a plain Python value, so it loads with
``torch.load(weights_only=True)``: opening a checkpoint never runs pickled code.

This module reads and writes the files only; rebuilding the network a checkpoint describes
is :func:`sepbn.engine.model_builder.load_model_from_checkpoint`.
"""

from __future__ import annotations

import os
import random
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from sepbn import __version__
from sepbn.errors import SepbnError

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "CheckpointError",
    "capture_rng_state",
    "load_checkpoint",
    "load_model_state",
    "restore_rng_state",
    "save_checkpoint",
]

CHECKPOINT_FORMAT = "sepbn-checkpoint"
CHECKPOINT_VERSION = 1


class CheckpointError(SepbnError, RuntimeError):
    """A checkpoint is missing, unreadable, or does not fit the code or model loading it."""


def save_checkpoint(path: str | Path, state: Mapping[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically.

    The file is written to a temporary file in the same folder, flushed to disk, then renamed
    over ``path`` (``os.replace``), so a crash leaves either the old or the new checkpoint,
    never a truncated one.

    Args:
        path: Destination; its folder is created if needed.
        state: The checkpoint contents (see the module docstring); ``format``,
            ``format_version`` and ``sepbn_version`` are added.

    Returns:
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "sepbn_version": __version__,
        **state,
    }
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a checkpoint is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not possible on every platform, hence best effort.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Args:
        path: The checkpoint file.
        map_location: Where tensors go (as for ``torch.load``).

    Returns:
        The checkpoint dict.

    Raises:
        CheckpointError: The file is missing, truncated or corrupt, is not a sepbn checkpoint,
            or was written by a newer format version.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"{path}: cannot read the checkpoint (truncated or corrupt file?): "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path}: not a sepbn checkpoint (no format={CHECKPOINT_FORMAT!r} entry); "
            "a bare state_dict can be loaded with model.load_state_dict(torch.load(...))"
        )
    version = state.get("format_version")
    if not isinstance(version, int) or version > CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {version!r} is newer than this sepbn "
            f"({__version__}) reads (up to {CHECKPOINT_VERSION}); upgrade sepbn"
        )
    missing = [k for k in ("model", "model_info", "config") if k not in state]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {missing}")
    return state


def capture_rng_state() -> dict[str, Any]:
    """The state of every random generator a training run uses."""
    mt_name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        # As a tensor, so the checkpoint stays loadable with weights_only=True.
        "numpy": (mt_name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`capture_rng_state` returned."""
    random.setstate(_as_tuple(state["python"]))
    mt_name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((mt_name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


def _as_tuple(value: Any) -> Any:
    # random.setstate wants nested tuples; a round trip may have produced lists.
    if isinstance(value, (list, tuple)):
        return tuple(_as_tuple(v) for v in value)
    return value


def load_model_state(model: nn.Module, state_dict: Mapping[str, Any], source: str) -> None:
    """``model.load_state_dict`` with a :class:`CheckpointError` naming what does not fit."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    mismatched = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or mismatched:
        parts = []
        for label, items in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("shape mismatch", mismatched),
        ):
            if items:
                more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
                parts.append(f"{label}: {', '.join(items[:5])}{more}")
        raise CheckpointError(f"{source}: weights do not fit the model; " + "; ".join(parts))
    model.load_state_dict(state_dict)

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
import pickle
import random
import re
import reprlib
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from sepbn import __version__
from sepbn.engine.distributed import check_device
from sepbn.errors import SepbnError, os_error_reason

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

# How torch.save files begin: a zip archive, or (before PyTorch 1.6, and with
# _use_new_zipfile_serialization=False) a pickled magic number.
_ZIP_MAGIC = b"PK\x03\x04"
_LEGACY_MAGIC = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19."


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

    Raises:
        CheckpointError: The file cannot be written (a full disk, no permission); nothing
            is left behind but the previous checkpoint, if any.
    """
    path = Path(path)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "sepbn_version": __version__,
        **state,
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise CheckpointError(
            f"{path}: cannot write the checkpoint: {os_error_reason(exc)}"
        ) from exc
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a checkpoint is an ordinary file
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        failed = _os_error_in(exc)
        if failed is not None:  # a full disk: one line, the old checkpoint kept
            kept = "; the previous one is kept" if path.exists() else ""
            raise CheckpointError(
                f"{path}: cannot write the checkpoint: {os_error_reason(failed)}{kept}"
            ) from exc
        raise
    _fsync_dir(path.parent)
    return path


def _os_error_in(exc: BaseException) -> OSError | None:
    """The OSError behind ``exc``: ``exc`` itself, or the one that torch's C++ writer turned
    into a RuntimeError ("unexpected pos ...") when a write into the file failed."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


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
        CheckpointError: The file is missing, empty, truncated or damaged, not a PyTorch
            file, holds pickled code (refused: loading it could run that code), is not a
            sepbn checkpoint, was written by a newer format version, or its ``model``,
            ``model_info`` or ``config`` entry has the wrong type.
        ValueError: ``map_location`` is a device this machine lacks (checked before loading).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if isinstance(map_location, (str, torch.device)):
        check_device(map_location)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: {_load_failure(path, exc)}") from exc
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
    for key in ("model", "model_info", "config"):
        if not isinstance(state[key], Mapping):
            raise CheckpointError(
                f"{path}: {key!r} must be a mapping, got {type(state[key]).__name__} "
                "(a hand-made or edited checkpoint?)"
            )
    for name, value in state["model"].items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"{path}: 'model' must map parameter names to tensors, got "
                f"{reprlib.repr(name)}: {type(value).__name__} (a hand-made or edited checkpoint?)"
            )
    return state


def is_torchscript(path: str | Path) -> bool:
    """Whether ``path`` is a TorchScript archive (``torch.jit.save``), not a ``torch.save`` file.

    Both are zip archives; only TorchScript's hold the compiled ``code/`` and ``constants.pkl``.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile, ValueError):
        return False
    return any("/code/" in name or name.endswith("/constants.pkl") for name in names)


def _load_failure(path: Path, exc: Exception) -> str:
    """Why ``torch.load(path, weights_only=True)`` raised ``exc``, in plain words."""
    with path.open("rb") as f:
        head = f.read(len(_LEGACY_MAGIC))
    # torch's weights-only unpickler names the global it refused: "GLOBAL posix.system".
    refused = re.search(r"GLOBAL ([\w.]+)", str(exc))
    if not head:
        return "cannot read the checkpoint: the file is empty (0 bytes)"
    if (
        isinstance(exc, pickle.UnpicklingError)
        and refused
        and head.startswith((_ZIP_MAGIC, _LEGACY_MAGIC))
    ):
        return (
            f"refused for safety: the file holds pickled Python code ({refused.group(1)}), "
            "which loading would run. sepbn checkpoints hold only tensors and plain values; "
            "load only files written by sepbn, or re-create this one from its source"
        )
    if head.startswith(_ZIP_MAGIC) and is_torchscript(path):
        return (
            "a TorchScript file (sepbn export --format torchscript), not a training "
            "checkpoint: `sepbn predict` runs it; eval, export, resume and the analyses need "
            "the .pt checkpoint that training wrote"
        )
    if head.startswith(_ZIP_MAGIC):
        if not zipfile.is_zipfile(path):
            return (
                "cannot read the checkpoint: the file is truncated or damaged (its zip archive "
                "is incomplete; an interrupted copy or download?)"
            )
        return f"cannot read the checkpoint: damaged zip archive ({_first_line(exc)})"
    if head == _LEGACY_MAGIC:
        return (
            "cannot read the checkpoint: the file is truncated or damaged (the legacy "
            f"torch.save data ends early or is malformed: {_first_line(exc)})"
        )
    return (
        "cannot read the checkpoint: not a PyTorch file (neither the zip layout of torch.save "
        "nor its legacy layout)"
    )


def _first_line(exc: Exception) -> str:
    if isinstance(exc, pickle.UnpicklingError):  # torch's text would advise weights_only=False
        return "malformed pickle data"
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def capture_rng_state() -> dict[str, Any]:
    """The state of every random generator a training run uses."""
    legacy = np.random.get_state(legacy=True)
    if isinstance(legacy, dict):  # only under a bit generator other than numpy's MT19937
        raise TypeError(f"np.random holds a {legacy['bit_generator']} generator, not MT19937")
    mt_name, keys, pos, has_gauss, cached = legacy
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

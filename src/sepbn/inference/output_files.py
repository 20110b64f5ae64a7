"""Result files that stay valid whatever stops the run: a kill, Ctrl-C, a full disk.

Two ways of writing, one per kind of file:

- :class:`LineFile`, for a file that grows with each result (``landmarks.jsonl``,
  ``landmarks.csv``): each result is one ``write(2)`` of whole lines, straight to the kernel
  (no Python buffer), so a killed process leaves every result it finished on disk. A write
  that fails (``ENOSPC``) is cut back to the last whole result before the error is raised.
- :func:`write_atomic`, for a file written whole (``summary.json``, a drawing, a ``.pts``):
  a temporary file in the same folder renamed over the target (``os.replace``), so the
  target is either the old file or the new one, never half of one.

A failed write raises :class:`~sepbn.inference.errors.OutputError` (one line, the file and
the reason), with the temporary file removed. :func:`prepare_out_dir` checks the output
folder before anything is written into it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from sepbn.errors import os_error_reason
from sepbn.inference.errors import InferenceError, OutputError

__all__ = ["LineFile", "prepare_out_dir", "write_atomic"]


def _reason(exc: OSError) -> str:
    return os_error_reason(exc)  # one wording of a full disk for every command


def write_atomic(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file renamed over it.

    Raises:
        OutputError: The folder cannot be made, or the disk is full, or not writable.
    """
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; results are ordinary files
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise OutputError(path, _reason(exc)) from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    return path


class LineFile:
    """A text file appended to in whole results, each one ``write(2)`` (module docstring).

    Args:
        path: The file; created, or emptied if it exists.

    Attributes:
        path: The file.
        size: Bytes of whole results written so far.

    Raises:
        OutputError: The file cannot be created.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = 0
        try:
            self._fd: int | None = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        except OSError as exc:
            raise OutputError(path, _reason(exc)) from None

    def append(self, text: str) -> None:
        """Append ``text`` (whole lines, ending in a newline), or nothing of it.

        File names that are not UTF-8 stay the bytes they are on disk (``surrogateescape``).

        Raises:
            OutputError: The disk is full or the file not writable; the file is cut back to
                the results before this one.
        """
        if self._fd is None:
            raise ValueError(f"{self.path} is closed")
        encoded = text.encode("utf-8", "surrogateescape")
        data = memoryview(encoded)
        try:
            while data:
                data = data[os.write(self._fd, data) :]
        except BaseException as exc:  # also Ctrl-C between two partial writes
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self.size)
            if isinstance(exc, OSError):
                raise OutputError(self.path, _reason(exc)) from None
            raise
        self.size += len(encoded)

    def close(self) -> None:
        """Close the file; safe to call twice, never raises."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


def _inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` lies in ``folder``, as written or with symbolic links followed."""
    return any(
        Path(norm(path)).is_relative_to(norm(folder))
        for norm in (os.path.abspath, os.path.realpath)
    )


def prepare_out_dir(out: Path, inputs: Sequence[Path], overwrite: bool = False) -> list[Path]:
    """Check and create the output folder of a run.

    A run writes into a new or empty folder; ``overwrite`` allows a folder with files (those
    this run writes again are replaced, the others stay). Never allowed: a folder that holds
    one of the inputs, as results beside the inputs would replace files such as the ``.pts``
    annotations next to the photos, and be read as inputs by the next run.

    Args:
        out: The output folder.
        inputs: The input files (they must not lie in ``out``).
        overwrite: Write into a folder that already holds files.

    Returns:
        The files ``out`` held before (empty unless ``overwrite``).

    Raises:
        InferenceError: ``out`` or a folder above it is a file; ``out`` holds an input, or
            holds files and ``overwrite`` is off; ``out`` cannot be created.
    """
    for folder in (out, *out.parents):
        if os.path.lexists(folder) and not folder.is_dir():
            where = "is an existing file" if folder == out else f"is under {folder}, a file"
            raise InferenceError(f"--out {out} {where}; give a folder for the results")
    if out.is_dir():
        for path in inputs:
            if _inside(path, out):
                raise InferenceError(
                    f"--out {out} holds the input {path}: results written there could replace "
                    "files beside the inputs (a photo's .pts annotation); give a folder of its own"
                )
        before = sorted(p for p in out.rglob("*") if not p.is_dir())
        if before and not overwrite:
            shown = ", ".join(str(p.relative_to(out)) for p in before[:3])
            more = f" and {len(before) - 3} more" if len(before) > 3 else ""
            raise InferenceError(
                f"--out {out} already holds {len(before)} file(s) ({shown}{more}), perhaps "
                "of an earlier run; give a new or empty folder, or --overwrite to write over them"
            )
    else:
        before = []
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InferenceError(f"--out {out}: cannot create the folder: {_reason(exc)}") from None
    return before

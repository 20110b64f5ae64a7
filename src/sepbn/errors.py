"""The project's own exceptions: mistakes a user can fix, reported in one line by the CLI.

Every error that a bad config, bad data, a bad checkpoint or a diverged run raises derives from
:class:`SepbnError`, and also from the builtin it refines (``ValueError`` or ``RuntimeError``),
so ``except ValueError`` in code that predates this module keeps working. The ``sepbn`` command
prints a :class:`SepbnError` as ``sepbn CMD: error: ...`` and exits with status 1; anything
else is a bug and keeps its traceback (``sepbn --debug`` shows the traceback of both).

- :class:`ConfigError` (here): a config file, a ``--set`` override or a command-line option.
- :class:`sepbn.data.errors.DatasetError`: a dataset file or record.
- :class:`sepbn.engine.checkpoint.CheckpointError`: a checkpoint file.
- :class:`sepbn.engine.trainer.TrainingError`: a run that cannot go on.
"""

from __future__ import annotations

import errno

__all__ = ["ConfigError", "SepbnError", "os_error_reason"]


class SepbnError(Exception):
    """Base of the errors caused by what the user asked for, not by a bug in ``sepbn``."""


class ConfigError(SepbnError, ValueError):
    """A config value, override or command-line option that cannot describe a run.

    The message names the file (and line, when known), the key path and the valid choices.

    Attributes:
        key: The key path of the offending value (``"model.num_groups"``), or ``""``.
        source: Where the value came from (``"exp.yaml:4"``, ``"--set model.norm=bn"``), or
            ``""``.
        reason: The message without ``source``.
    """

    def __init__(self, reason: str, *, key: str = "", source: str = "") -> None:
        super().__init__(f"{source}: {reason}" if source else reason)
        self.reason = reason
        self.key = key
        self.source = source


def os_error_reason(exc: OSError) -> str:
    """Why a file could not be written, in words: ``"no space left on device (the disk is
    full)"``, ``"disk quota exceeded"``, or the system's own message."""
    if exc.errno == errno.ENOSPC:
        return "no space left on device (the disk is full)"
    if exc.errno == errno.EDQUOT:
        return "disk quota exceeded"
    return exc.strerror or str(exc) or type(exc).__name__

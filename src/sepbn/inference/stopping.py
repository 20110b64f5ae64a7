"""Ctrl-C and ``kill`` during ``sepbn predict``: finish the photos in hand, then stop cleanly.

While a :class:`StopSignals` is active, the first SIGINT or SIGTERM only sets
:attr:`StopSignals.signal_name`; the run checks it between photos, finishes the batch it
holds, writes its summary and returns. A second signal stops at once by raising
:class:`Interrupted` (a ``KeyboardInterrupt``), but never inside a :meth:`StopSignals.deferred`
block, where a result and its count are written together: it is raised as the block ends.
Without this, SIGTERM ends Python without running any ``finally``.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

__all__ = ["Interrupted", "StopSignals"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A second stop signal, raised at once.

    Attributes:
        signum: The signal's number (the shell's exit status is ``128 + signum``).
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopSignals:
    """Handle SIGINT and SIGTERM as a request to stop (module docstring).

    Used as a context manager; the previous handlers come back on exit. Outside the main
    thread (where Python cannot set handlers) it does nothing.

    Attributes:
        signum: The first stop signal received, or ``None``.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._saved: dict[int, Any] = {}
        self._deferring = 0
        self._raise_later: int | None = None

    @property
    def signal_name(self) -> str | None:
        """``"SIGINT"`` or ``"SIGTERM"`` once one was received."""
        return None if self.signum is None else signal.Signals(self.signum).name

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in _SIGNALS:
                self._saved[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._saved.items():
            signal.signal(signum, handler)
        self._saved.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum
        elif self._deferring:
            self._raise_later = signum
        else:
            raise Interrupted(signum)

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """A block that a second signal does not cut in two."""
        self._deferring += 1
        try:
            yield
        finally:
            self._deferring -= 1
        if not self._deferring and self._raise_later is not None:
            signum, self._raise_later = self._raise_later, None
            raise Interrupted(signum)

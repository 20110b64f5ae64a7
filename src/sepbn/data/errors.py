"""Errors raised for bad landmark data, and the report of skipped records."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

from sepbn.errors import SepbnError

OnError = Literal["raise", "skip"]


class DatasetError(SepbnError, ValueError):
    """A dataset file or record is malformed, missing or unreadable.

    The message always names the file, the line or record, and the reason.
    """

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


@dataclass
class SkipReport:
    """Collects the records skipped under ``on_error="skip"`` so none is lost silently."""

    skipped: list[DatasetError] = field(default_factory=list)

    def handle(self, error: DatasetError, on_error: OnError) -> None:
        """Raise ``error`` or record it, following ``on_error``."""
        if on_error == "raise":
            raise error
        if on_error != "skip":
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.skipped.append(error)

    def __len__(self) -> int:
        return len(self.skipped)

    def summary(self) -> str:
        """One line per distinct reason, with counts and the first offending record."""
        if not self.skipped:
            return "no records skipped"
        counts = Counter(e.reason for e in self.skipped)
        first = {}
        for e in self.skipped:
            first.setdefault(e.reason, e.source)
        lines = [f"skipped {len(self.skipped)} record(s):"]
        lines += [
            f"  {n} x {reason} (first: {first[reason]})" for reason, n in counts.most_common()
        ]
        return "\n".join(lines)

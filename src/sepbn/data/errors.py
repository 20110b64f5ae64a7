"""Errors raised for bad landmark data, and the report of skipped records."""

from __future__ import annotations

import csv
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from sepbn.errors import SepbnError

OnError = Literal["raise", "skip"]

# "list.txt:12 (img.jpg)", "faces.json[annotation 3]", "face.pts": file, line or record, image.
_SOURCE = re.compile(
    r"(?P<file>.*?)(?::(?P<line>\d+)|\[(?P<record>[^\]]*)\])?(?: \((?P<image>.*)\))?"
)
SKIP_COLUMNS = ("dataset", "file", "line", "image", "category", "reason")


class DatasetError(SepbnError, ValueError):
    """A dataset file or record is malformed, missing or unreadable.

    The message always names the file, the line or record, and the reason.

    Attributes:
        source: ``"file:line"``, ``"file[record i]"``, optionally followed by ``" (image)"``.
        reason: The full reason, with the offending values.
        category: The kind of problem without values (``"degenerate box"``), by which
            :class:`SkipReport` counts; the reason itself where that holds no values.
    """

    def __init__(self, source: str, reason: str, category: str | None = None) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason
        self.category = category or reason

    def __reduce__(self) -> tuple[type[DatasetError], tuple[str, str, str]]:
        # Keeps the three fields through pickling (worker processes).
        return type(self), (self.source, self.reason, self.category)


def split_source(source: str) -> dict[str, str]:
    """The parts of a record source such as ``"list.txt:12 (img.jpg)"``.

    Returns:
        ``file``; ``line``, a line number or a record such as ``"annotation 3"`` (``""``
        when the source names neither); ``image`` (``""`` when not named).
    """
    m = _SOURCE.fullmatch(source)
    if m is None:  # a source over several lines
        return {"file": source, "line": "", "image": ""}
    return {
        "file": m["file"],
        "line": m["line"] or m["record"] or "",
        "image": m["image"] or "",
    }


@dataclass
class SkipReport:
    """Collects the records skipped under ``on_error="skip"`` so none is lost silently.

    It also holds what is reported but never fatal (a missing 300-W sub-folder with
    ``allow_missing``, an image without an annotation file).
    """

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

    def extend(self, errors: Iterable[DatasetError]) -> None:
        """Add the entries of another report (or any errors)."""
        self.skipped.extend(errors)

    def counts(self) -> dict[str, int]:
        """Category -> number of entries, most frequent first."""
        return dict(Counter(e.category for e in self.skipped).most_common())

    def summary(self) -> str:
        """One line per category, with its count and the first offending record."""
        if not self.skipped:
            return "no records skipped"
        first: dict[str, DatasetError] = {}
        for e in self.skipped:
            first.setdefault(e.category, e)
        lines = [f"skipped {len(self.skipped)} record(s):"]
        for category, n in self.counts().items():
            e = first[category]
            detail = "" if e.reason == category else f": {e.reason}"
            lines.append(f"  {n} x {category} (first: {e.source}{detail})")
        return "\n".join(lines)

    def rows(self, dataset: str = "") -> list[dict[str, str]]:
        """One dict of :data:`SKIP_COLUMNS` per entry, in the order they were found."""
        return [
            {
                "dataset": dataset,
                **split_source(e.source),
                "category": e.category,
                "reason": e.reason,
            }
            for e in self.skipped
        ]

    def write_csv(self, path: str | Path, dataset: str = "") -> Path:
        """Write every entry as CSV (see :func:`write_skip_csv`); returns ``path``."""
        return write_skip_csv(path, {dataset: self})

    def to_json(self) -> list[list[str]]:
        """``[source, reason, category]`` per entry, for JSON metadata."""
        return [[e.source, e.reason, e.category] for e in self.skipped]

    @classmethod
    def from_json(cls, entries: Iterable[list[str]]) -> SkipReport:
        """Read back :meth:`to_json` (entries without a category count by their reason)."""
        return cls([DatasetError(*entry) for entry in entries])

    def summary_counts(self) -> dict[str, object]:
        """``{"total": n, "by_category": {...}}`` for a summary JSON."""
        return {"total": len(self), "by_category": self.counts()}


def write_skip_csv(path: str | Path, reports: Mapping[str, SkipReport]) -> Path:
    """Write the entries of several reports, keyed by dataset name, as one CSV.

    Columns :data:`SKIP_COLUMNS`: dataset, file, line (line number or record, where known),
    image, category, reason. A header-only file means nothing was skipped.

    Returns:
        ``path``; missing parent folders are created.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=SKIP_COLUMNS)
        writer.writeheader()
        for dataset, report in reports.items():
            writer.writerows(report.rows(dataset))
    return out

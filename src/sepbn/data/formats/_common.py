"""Helpers shared by the format readers: error policy, number parsing, image lookup."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sepbn.data.errors import DatasetError, OnError, SkipReport
from sepbn.data.image_io import image_file_problem
from sepbn.data.records import FaceRecord
from sepbn.data.validation import validate_record
from sepbn.errors import ConfigError

ON_ERROR_CHOICES: tuple[OnError, ...] = ("raise", "skip")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
# The category of every reason number_problem gives.
NOT_A_NUMBER = "not a finite number"


class DatasetWarning(UserWarning):
    """Records were skipped (``on_error="skip"``) or sub-folders were missing while reading."""


@dataclass
class ErrorPolicy:
    """Applies ``on_error`` to one reading pass and reports what it skipped at the end.

    Attributes:
        on_error: ``"raise"`` (first bad record raises) or ``"skip"`` (collect and go on).
        report: Where skipped records are collected; shared with the caller.
        what: Names the data being read in the final warning, e.g. the list file.
    """

    on_error: OnError
    report: SkipReport
    what: str
    start: int = 0
    _image_problems: dict[Path, tuple[str, str] | None] = field(
        default_factory=dict, init=False, repr=False
    )

    @classmethod
    def create(cls, on_error: str, report: SkipReport | None, what: str | Path) -> ErrorPolicy:
        """Check ``on_error`` early and remember where this pass starts in ``report``."""
        if on_error not in ON_ERROR_CHOICES:
            raise ValueError(f"on_error must be one of {list(ON_ERROR_CHOICES)}, got {on_error!r}")
        report = SkipReport() if report is None else report
        return cls(on_error, report, str(what), len(report))

    def fail(self, source: str, reason: str, category: str | None = None) -> None:
        """Raise or record a problem with one record (``category``: see DatasetError)."""
        self.report.handle(DatasetError(source, reason, category), self.on_error)

    def note(self, error: DatasetError) -> None:
        """Record a problem that is reported but never fatal (e.g. ``allow_missing`` folders)."""
        self.report.skipped.append(error)

    def accept(self, record: FaceRecord, image_shape: tuple[int, ...] | None = None) -> bool:
        """Validate ``record``; True when it should be kept."""
        try:
            validate_record(record, image_shape)
        except DatasetError as e:
            self.report.handle(e, self.on_error)
            return False
        return True

    def check_image(self, path: Path, source: str) -> bool:
        """Cheap check of a referenced image: it exists, is not empty, not cut short.

        Decoding is the data cache's job (:func:`~sepbn.data.image_io.load_image`); this
        reads a few bytes once per image, however many faces it holds.
        """
        if path not in self._image_problems:
            self._image_problems[path] = image_file_problem(path)
        problem = self._image_problems[path]
        if problem is None:
            return True
        category, reason = problem
        self.fail(f"{source} ({path})", reason, category)
        return False

    def finish(self, records: list[FaceRecord]) -> list[FaceRecord]:
        """Warn with the summary when this pass skipped anything, then return ``records``."""
        skipped = self.report.skipped[self.start :]
        if skipped:
            summary = SkipReport(list(skipped)).summary()
            warnings.warn(
                f"{self.what}: kept {len(records)} record(s); {summary}",
                DatasetWarning,
                stacklevel=3,
            )
        return records


def read_lines(path: Path) -> list[str]:
    """The lines of a text annotation file, with a :class:`DatasetError` for I/O problems."""
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DatasetError(str(path), "annotation file not found") from None
    except IsADirectoryError:
        raise DatasetError(str(path), "expected an annotation file, found a directory") from None
    except UnicodeDecodeError as e:
        raise DatasetError(
            str(path), f"not a UTF-8 text file ({e.reason})", "not a UTF-8 text file"
        ) from None
    except OSError as e:
        raise DatasetError(
            str(path),
            f"annotation file unreadable: {e.strerror or e}",
            "annotation file unreadable",
        ) from None


def number_problem(tokens: Sequence[str]) -> str | None:
    """Why ``tokens`` are not all finite numbers (1-based token position), or None.

    The reason's category is :data:`NOT_A_NUMBER`.
    """
    for i, tok in enumerate(tokens, start=1):
        try:
            v = float(tok)
        except ValueError:
            return f"token {i} {tok!r} is not a number"
        if not np.isfinite(v):
            return f"token {i} is {tok!r} (not finite)"
    return None


def parse_rows(rows: Sequence[Sequence[str]]) -> tuple[np.ndarray, list[str | None]]:
    """Parse equal-length rows of numeric tokens at once; find the bad rows only on failure.

    Returns:
        ``(values, problems)``: ``(R, T)`` float64 values (rows with a problem hold NaN) and
        per row None or the reason it is bad (non-number or non-finite token).
    """
    width = len(rows[0]) if rows else 0
    try:
        # One numpy call for the whole file; NaN/inf parse fine and are found below.
        values = np.array(rows, dtype=np.float64).reshape(len(rows), width)
    except ValueError:
        values = np.full((len(rows), width), np.nan)
        for r, row in enumerate(rows):
            if number_problem(row) is None:
                values[r] = np.array(row, dtype=np.float64)
    problems: list[str | None] = [None] * len(rows)
    for r in np.flatnonzero(~np.all(np.isfinite(values), axis=1)).tolist():
        problems[r] = number_problem(rows[r]) or "not a finite number"
    return values, problems


def check_split(kind: str, split: str | None, valid: Sequence[str | None]) -> None:
    """Raise ValueError naming the valid splits of ``kind``."""
    if split not in valid:
        names = [s for s in valid if s is not None]
        hint = f"one of {names}" if names else "None"
        if None in valid and names:
            hint += " or None"
        raise ConfigError(f"{kind}: unknown split {split!r}; valid: {hint}")


def images_by_stem(folder: Path) -> dict[str, Path]:
    """Map file stem -> image path for the image files directly inside ``folder``.

    When several images share a stem the first by suffix preference wins (jpg before png).
    """
    found: dict[str, Path] = {}
    rank = {s: i for i, s in enumerate(IMAGE_SUFFIXES)}
    for p in sorted(folder.iterdir(), key=lambda q: rank.get(q.suffix.lower(), 99)):
        if p.suffix.lower() in rank and p.is_file():
            found.setdefault(p.stem, p)
    return found

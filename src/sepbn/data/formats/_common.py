"""Helpers shared by the format readers: error policy, field checks, number parsing, images.

Every value a reader takes from a file passes one of the ``*_field`` checks (or
:func:`parse_rows` for text columns) before it is used, so a value of the wrong type gives
one :class:`DatasetError` naming the file, the record and the field, never a traceback from
deep inside numpy or ``int()``; under ``on_error="skip"`` that record is skipped and reported.
"""

from __future__ import annotations

import math
import reprlib
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


def _short_repr() -> reprlib.Repr:
    r = reprlib.Repr()
    r.maxlevel, r.maxlist, r.maxtuple, r.maxdict = 2, 4, 4, 3
    r.maxstring = r.maxother = r.maxlong = 40
    return r


_SHORT_REPR = _short_repr()


def show(value: object) -> str:
    """A value as a short one-line repr for messages, however long or deep it is."""
    try:
        return _SHORT_REPR.repr(value)
    except RecursionError:  # a self-referencing container, or one nested beyond reprlib
        return f"<deeply nested {type(value).__name__}>"


def _bad(source: str, name: str, expected: str, value: object) -> DatasetError:
    return DatasetError(source, f"{name} must be {expected}, got {show(value)}", f"bad {name}")


def _is_real(value: object) -> bool:
    """An int or float of Python or numpy; bool is not a number here."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)
    )


def int_field(
    value: object, source: str, name: str, *, low: int | None = None, high: int | None = None
) -> int:
    """An integer field of a record: an int, or a float holding one (as some writers store it).

    Args:
        value: The value read from the file.
        source: The record, for the error (``"file[annotation 3]"``).
        name: The field, for the error and the category (``"bad <name>"``).
        low: Smallest valid value, if any.
        high: Largest valid value, if any.

    Raises:
        DatasetError: A bool, string, null, non-integer or out-of-range value.
    """
    if low is not None and high is not None:
        expected = f"an integer in {low}..{high}"
    elif low is not None:
        expected = f"an integer >= {low}"
    else:
        expected = "an integer"
    integral = isinstance(value, (int, np.integer)) or (
        isinstance(value, (float, np.floating)) and math.isfinite(value) and value == int(value)
    )
    if not integral or isinstance(value, (bool, np.bool_)):
        raise _bad(source, name, expected, value)
    result = int(value)  # type: ignore[call-overload]  # integral: an int or a whole float
    if (low is not None and result < low) or (high is not None and result > high):
        raise _bad(source, name, expected, value)
    return result


def number_field(value: object, source: str, name: str) -> float:
    """A finite real number (int or float, not bool or string).

    Raises:
        DatasetError: Naming ``source`` and ``name``.
    """
    if _is_real(value):
        try:
            number = float(value)  # type: ignore[arg-type]  # _is_real: int or float
        except OverflowError:  # an int beyond float range
            number = math.inf
        if math.isfinite(number):
            return number
    raise _bad(source, name, "a finite number", value)


def numbers_field(value: object, source: str, name: str, length: int | None = None) -> np.ndarray:
    """A list of finite real numbers, e.g. a JSON array of coordinates.

    Args:
        value: The value read from the file.
        source: The record, for the error.
        name: The field; a bad element is named ``name[i]`` (0-based).
        length: The required number of elements, if fixed.

    Returns:
        ``(length,)`` float64.

    Raises:
        DatasetError: Not a list (or tuple), the wrong length, or an element that is not a
            finite number.
    """
    expected = "a list of numbers" if length is None else f"a list of {length} numbers"
    if not isinstance(value, (list, tuple)) or (length is not None and len(value) != length):
        raise _bad(source, name, expected, value)
    if all(type(v) is float or type(v) is int for v in value):
        try:
            out = np.array(value, dtype=np.float64)
        except OverflowError:  # an int beyond float range: found below
            out = None
        if out is not None and np.isfinite(out).all():
            return out
    for i, v in enumerate(value):
        number_field(v, source, f"{name}[{i}]")
    raise AssertionError("unreachable: some element failed number_field")  # pragma: no cover


def text_field(value: object, source: str, name: str) -> str:
    """A non-empty string without NUL characters (e.g. an image file name).

    Raises:
        DatasetError: Naming ``source`` and ``name``.
    """
    if not isinstance(value, str) or not value or "\x00" in value:
        raise _bad(source, name, "a non-empty string without NUL characters", value)
    return value


def flag_field(value: object, source: str, name: str) -> bool:
    """A yes/no field: a bool, or the number 0 or 1.

    Raises:
        DatasetError: Naming ``source`` and ``name``.
    """
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if _is_real(value) and value in (0, 1):
        return bool(value)
    raise _bad(source, name, "true, false, 0 or 1", value)


def is_key(value: object) -> bool:
    """Whether ``value`` can be a record id: an int, a finite float or a string."""
    if isinstance(value, (str, int, np.integer)):
        return not isinstance(value, (bool, np.bool_))
    return isinstance(value, (float, np.floating)) and math.isfinite(value)


def read_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 text annotation file, with a :class:`DatasetError` for I/O problems.

    A leading byte-order mark (as Windows editors write) is dropped.
    """
    try:
        return path.read_text(encoding="utf-8-sig").splitlines()
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

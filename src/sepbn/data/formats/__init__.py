"""Readers for the official landmark dataset formats, and one entry point for all of them.

Every reader returns a list of :class:`~sepbn.data.records.FaceRecord` with landmarks in
0-based pixels, checks each record with :func:`~sepbn.data.validation.validate_record` and
that each referenced image file exists, and follows ``on_error``: ``"raise"`` stops at the
first bad line or record with a :class:`~sepbn.data.errors.DatasetError` naming the file and
line (or record); ``"skip"`` drops it, collects it in ``report`` (a
:class:`~sepbn.data.errors.SkipReport`, pass your own to keep it) and warns with the summary
at the end. Nothing is dropped silently. A field of the wrong type (text where a number
belongs, a MATLAB cell where an array belongs) is a bad record like any other; a problem
shared by every record of a file (not JSON, an array of the wrong class) raises under both
policies, since no record is left to keep.

Example:
    >>> report = SkipReport()
    >>> records = read_records("300w", "data/300W", split="common", on_error="skip",
    ...                        report=report)  # doctest: +SKIP
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path

from sepbn.data.formats._common import DatasetWarning
from sepbn.data.formats.aflw import read_aflw, read_aflw2000
from sepbn.data.formats.coco import read_coco, write_coco
from sepbn.data.formats.cofw import read_cofw, read_cofw68
from sepbn.data.formats.ibug300w import read_300w, read_box_file, read_pts, read_pts_folder
from sepbn.data.formats.mtfl import face_box_from_five, read_mtfl
from sepbn.data.formats.wflw import read_wflw, read_wflw_attr, read_wflw_list
from sepbn.data.formats.wider import read_wider5
from sepbn.data.records import FaceRecord
from sepbn.errors import ConfigError

Reader = Callable[..., list[FaceRecord]]

READERS: dict[str, Reader] = {
    "wflw": read_wflw,
    "wflw_attr": read_wflw_attr,
    "300w": read_300w,
    "pts_folder": read_pts_folder,
    "cofw": read_cofw,
    "cofw68": read_cofw68,
    "aflw": read_aflw,
    "aflw2000": read_aflw2000,
    "wider5": read_wider5,
    "mtfl": read_mtfl,
    "coco": read_coco,
}


def reader_options(kind: str) -> list[str]:
    """The keyword options the reader of ``kind`` accepts, sorted.

    Raises:
        ConfigError: Unknown ``kind``, naming the valid ones.
    """
    try:
        reader = READERS[kind]
    except KeyError:
        raise ConfigError(f"unknown dataset kind {kind!r}; valid: {sorted(READERS)}") from None
    params = inspect.signature(reader).parameters
    return sorted(p for p in params if params[p].kind is inspect.Parameter.KEYWORD_ONLY)


def read_records(
    kind: str,
    path: str | Path,
    split: str | None = None,
    on_error: str = "raise",
    **options: object,
) -> list[FaceRecord]:
    """Read a dataset of any supported format.

    Args:
        kind: One of :data:`READERS`: ``"wflw"``, ``"wflw_attr"``, ``"300w"``,
            ``"pts_folder"``, ``"cofw"``, ``"cofw68"``, ``"aflw"``, ``"aflw2000"``,
            ``"wider5"``, ``"mtfl"``, ``"coco"``.
        path: The annotation file or folder the reader expects.
        split: The reader's split name (e.g. ``"train"``, ``"common"``, ``"frontal"``).
        on_error: ``"raise"`` or ``"skip"``.
        **options: Reader-specific keywords (``image_root``, ``report``, ``allow_missing``,
            ``protocol``, ...).

    Raises:
        ValueError: Unknown ``kind`` or option, naming the valid ones.
        DatasetError: Bad data (with ``on_error="raise"``), naming file and line or record.
    """
    valid = reader_options(kind)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ConfigError(f"unknown option(s) {unknown} for dataset kind {kind!r}; valid: {valid}")
    return READERS[kind](path, split, on_error=on_error, **options)


__all__ = [
    "READERS",
    "DatasetWarning",
    "face_box_from_five",
    "read_300w",
    "read_aflw",
    "read_aflw2000",
    "read_box_file",
    "read_coco",
    "read_cofw",
    "read_cofw68",
    "read_mtfl",
    "read_pts",
    "read_pts_folder",
    "read_records",
    "read_wflw",
    "read_wflw_attr",
    "read_wflw_list",
    "read_wider5",
    "reader_options",
    "write_coco",
]

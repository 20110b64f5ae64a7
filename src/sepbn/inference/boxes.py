"""The face boxes a user gives ``sepbn predict``: ``--box`` text and the ``--boxes`` JSON file.

Each box is ``x_min, y_min, x_max, y_max`` in display pixels: four finite numbers with
``x_min < x_max`` and ``y_min < y_max``; whether it overlaps a photo is checked per photo
(:func:`check_boxes`). ``--boxes`` maps a photo (its path as given
on the command line or found in a folder, or its file name) to a list of boxes; a key that
matches no input is reported, not silently ignored.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sepbn.inference.errors import InferenceError

__all__ = ["NUMBERS_ARGUMENT", "BoxTable", "check_boxes", "parse_boxes", "read_boxes_file"]

_FORM = "x_min,y_min,x_max,y_max"

#: A command-line word of numbers such as ``-5,3,120,140``: a value, not an option. (argparse
#: takes every word that starts with ``-`` for an option unless it is one negative number;
#: the ``predict`` parser matches values with this pattern instead.)
NUMBERS_ARGUMENT = re.compile(r"^-\.?\d[\d.,eE+-]*$")


def _box_problem(values: Sequence[Any]) -> str | None:
    """Why ``values`` is not one box, or None."""
    if len(values) != 4:
        return f"{len(values)} number(s), not 4"
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values):
        return "not all numbers"
    if not all(math.isfinite(v) for v in values):
        return "not all finite"
    x0, y0, x1, y1 = values
    if x1 <= x0 or y1 <= y0:
        return "empty (need x_min < x_max and y_min < y_max)"
    return None


def parse_boxes(texts: Iterable[str]) -> np.ndarray:
    """``(F, 4)`` boxes from ``--box`` values such as ``"-5,3,120,140"``.

    Raises:
        InferenceError: A value that is not four finite numbers of a non-empty box.
    """
    boxes = []
    for text in texts:
        try:
            values = [float(v) for v in text.split(",")]
        except ValueError:
            values = []
        problem = _box_problem(values) if values else "not numbers"
        if problem:
            raise InferenceError(f"--box expects {_FORM}, got {text!r}: {problem}")
        boxes.append(values)
    return np.array(boxes, dtype=np.float64).reshape(-1, 4)


def read_boxes_file(path: str | Path) -> dict[str, np.ndarray]:
    """The ``--boxes`` file: ``{photo: [x0, y0, x1, y1] or [[x0, y0, x1, y1], ...]}``.

    Returns:
        Per key, its ``(F, 4)`` boxes (``F >= 1``).

    Raises:
        InferenceError: An unreadable file, not a JSON object, or an entry that is not one
            box or a non-empty list of boxes (naming the file, the key and the value).
    """
    where = f"--boxes {path}"
    try:
        table = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise InferenceError(f"{where}: cannot read the file: {exc}") from None
    except RecursionError:
        raise InferenceError(f"{where}: JSON nested too deep to be a table of boxes") from None
    except ValueError as exc:
        raise InferenceError(f"{where}: not valid JSON: {exc}") from None
    if not isinstance(table, dict):
        raise InferenceError(
            f"{where}: expected an object {{image: [[{_FORM}], ...]}}, got {type(table).__name__}"
        )
    boxes = {}
    for key, value in table.items():
        if isinstance(value, list) and value and all(isinstance(v, list) for v in value):
            rows = value
        else:
            rows = [value]
        for row in rows:
            problem = _box_problem(row) if isinstance(row, list) else "not a list"
            if problem:
                shown = json.dumps(value)
                shown = shown if len(shown) <= 80 else shown[:77] + "..."
                raise InferenceError(
                    f"{where}: entry {key!r} = {shown}: {problem}; expected [{_FORM}] or a "
                    f"list of them"
                )
        boxes[key] = np.array(rows, dtype=np.float64).reshape(-1, 4)
    return boxes


class BoxTable:
    """Per-photo boxes, looked up by the photo's path or file name.

    Args:
        boxes: From :func:`read_boxes_file` (or any mapping of key to ``(F, 4)`` boxes).
    """

    def __init__(self, boxes: Mapping[str, np.ndarray]) -> None:
        self._boxes = dict(boxes)
        self._by_path = {os.path.abspath(key): key for key in self._boxes}

    def _key(self, path: Path) -> str | None:
        for candidate in (str(path), os.path.abspath(path), path.name):
            if candidate in self._boxes:
                return candidate
            if candidate in self._by_path:
                return self._by_path[candidate]
        return None

    def get(self, path: Path) -> np.ndarray | None:
        """The boxes of the photo (or video) ``path``, or None."""
        key = self._key(path)
        return None if key is None else self._boxes[key]

    def unmatched(self, paths: Iterable[Path]) -> list[str]:
        """The keys that match none of ``paths``."""
        used = {self._key(path) for path in paths}
        return [key for key in self._boxes if key not in used]


def check_boxes(
    boxes: np.ndarray | Sequence[Sequence[float]], shape: tuple[int, ...]
) -> np.ndarray:
    """``(F, 4)`` float64 boxes, each finite, non-empty and overlapping the image.

    Args:
        boxes: ``x_min, y_min, x_max, y_max`` per face.
        shape: The image's shape, ``(H, W, ...)``.

    Raises:
        InferenceError: A box that is not 4 numbers, is empty, or lies wholly outside.
    """
    array = np.asarray(boxes, dtype=np.float64)
    if array.size % 4 or (array.ndim > 1 and array.shape[-1] != 4):
        raise InferenceError(f"boxes must be x_min,y_min,x_max,y_max each, got {array.tolist()}")
    array = array.reshape(-1, 4)
    height, width = shape[:2]
    for box in array:
        text = ",".join(f"{v:g}" for v in box)
        if not np.isfinite(box).all() or box[2] <= box[0] or box[3] <= box[1]:
            raise InferenceError(
                f"box {text} is empty or not finite (need x_min<x_max, y_min<y_max)"
            )
        if box[2] <= 0 or box[3] <= 0 or box[0] >= width or box[1] >= height:
            raise InferenceError(f"box {text} lies wholly outside the {width}x{height} image")
    return array

"""Types of the ``sepbn`` command's arguments: each value checked as the command line is parsed.

A count of 0, a negative worker count, a seed beyond 64 bits, an output path under an existing
file or an image name that no encoder knows would otherwise fail deep inside torch, OpenCV or
``mkdir``, after minutes of loading. As an argparse ``type`` they fail at once, in argparse's
own words: ``sepbn eval: error: argument --batch-size: expected an integer >= 1, got '0'``.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Iterable
from pathlib import Path

__all__ = [
    "IMAGE_SUFFIXES",
    "figure_file",
    "image_file",
    "non_negative_int",
    "onnx_opset",
    "output_dir",
    "output_file",
    "output_path_problem",
    "positive_float",
    "positive_int",
    "seed",
]

#: What :func:`sepbn.data.visualize.write_png` (OpenCV) can encode, by file name suffix.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def _int(text: str, low: int, high: int | None = None) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < low or (high is not None and value > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise argparse.ArgumentTypeError(f"expected an integer {bound}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (a count, a size)."""
    return _int(text, 1)


def non_negative_int(text: str) -> int:
    """An integer >= 0 (a worker count)."""
    return _int(text, 0)


def seed(text: str) -> int:
    """A seed: an integer in ``[0, 2**63 - 1]``, as the config's ``seed``."""
    from sepbn.config.schema import MAX_SEED

    return _int(text, 0, MAX_SEED)


def positive_float(text: str) -> float:
    """A finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def output_path_problem(path: str | Path, kind: str) -> str | None:
    """Why ``path`` cannot be written as a ``kind`` (``"folder"`` or ``"file"``), or None.

    Refused: an empty path, a path under an existing file (no folder can be made there),
    an existing file given as a folder, an existing folder given as a file.
    """
    if not str(path):
        return f"an empty path; give the {kind} to write"
    path = Path(path)
    # os.path's tests, unlike Path's, answer False where a folder cannot be searched.
    for above in path.parents:
        if os.path.lexists(above) and not os.path.isdir(above):
            return f"{path} cannot be created: {above} is a file, not a folder"
    if kind == "folder" and os.path.lexists(path) and not os.path.isdir(path):
        return f"{path} is an existing file, not a folder; give a folder to write into"
    if kind == "file" and os.path.isdir(path):
        return f"{path} is a folder; give the file to write"
    return None


def output_dir(text: str) -> str:
    """A folder to write into: it exists as a folder, or can be created."""
    problem = output_path_problem(text, "folder")
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text


def output_file(text: str) -> str:
    """A file to write: not a folder, and not under an existing file."""
    problem = output_path_problem(text, "file")
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text


def _with_suffix(text: str, suffixes: Iterable[str], what: str) -> str:
    text = output_file(text)
    valid = sorted(suffixes)
    if Path(text).suffix.lower() not in valid:
        raise argparse.ArgumentTypeError(
            f"{text}: cannot write {what} with suffix {Path(text).suffix or '(none)'!r}; "
            f"valid: {', '.join(valid)}"
        )
    return text


def image_file(text: str) -> str:
    """An image file :data:`IMAGE_SUFFIXES` names the format of."""
    return _with_suffix(text, IMAGE_SUFFIXES, "an image")


def figure_file(text: str) -> str:
    """A file a Matplotlib figure can be saved as (``.png``, ``.pdf``, ``.svg``, ...)."""
    from matplotlib.backend_bases import FigureCanvasBase

    suffixes = ["." + s for s in FigureCanvasBase.get_supported_filetypes()]
    return _with_suffix(text, suffixes, "a figure")


def onnx_opset(text: str) -> int:
    """An ONNX opset the exporter writes (:func:`sepbn.inference.export.onnx_opsets`)."""
    from sepbn.inference.errors import InferenceError
    from sepbn.inference.export import MIN_OPSET, onnx_opsets

    try:
        opsets = onnx_opsets()
    except InferenceError:  # no onnx: the export says what to install
        return _int(text, MIN_OPSET)
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value not in opsets:
        raise argparse.ArgumentTypeError(
            f"ONNX opset {text!r} is not supported; valid: {opsets[0]} to {opsets[-1]}"
        )
    return value

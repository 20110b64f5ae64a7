"""WIDER FACE with 5 landmarks: the ``label.txt`` released with RetinaFace.

Layout: a ``# <image path>`` line, then one line per face of 20 tokens::

    x y w h  x1 y1 f1  x2 y2 f2  x3 y3 f3  x4 y4 f4  x5 y5 f5  score

with the box as top-left corner and size, the five points (left eye, right eye, nose tip,
left and right mouth corner, as seen in the image) with a flag (0 visible, 1 occluded) and a
blur score. Faces without landmarks have ``-1`` in all 15 landmark tokens. Coordinates are
0-based pixels.

Following the paper (Sec. V-A, CNT), only faces whose box is larger than 80 x 80 pixels are
kept; faces without landmarks are dropped too. Both filters are counted in a log line; they
are selections, not errors.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from sepbn.data.errors import SkipReport
from sepbn.data.formats._common import (
    NOT_A_NUMBER,
    ErrorPolicy,
    check_split,
    parse_rows,
    read_lines,
)
from sepbn.data.records import FaceRecord

logger = logging.getLogger(__name__)

NUM_POINTS = 5
_TOKENS = 4 + 3 * NUM_POINTS + 1  # 20


def read_wider5(
    path: str | Path,
    split: str | None = None,
    *,
    image_root: str | Path | None = None,
    min_size: float = 80.0,
    on_error: str = "raise",
    report: SkipReport | None = None,
    check_images: bool = True,
) -> list[FaceRecord]:
    """Read a RetinaFace ``label.txt`` as 5-point records (protocol ``"wider5"``).

    Args:
        path: The ``label.txt``, or a folder holding it (``<folder>/<split>/label.txt`` when
            ``split`` is given, as in ``retinaface_gt_v1.1``).
        split: None, ``"train"`` or ``"val"``; only used to find the file in a folder.
        image_root: Folder the ``#`` paths are relative to; default: ``images/`` next to the
            label file.
        min_size: Keep faces whose box width and height both exceed this (paper: 80).
        on_error: ``"raise"`` or ``"skip"`` bad lines and missing images.
        report: Collects skipped records.
        check_images: Check that every referenced image file exists.

    Returns:
        One record per kept face; ``occluded`` from the flags; ``source`` ``"file:line"``.
    """
    check_split("wider5", split, (None, "train", "val"))
    path = Path(path)
    if path.is_dir():
        path = path / split / "label.txt" if split else path / "label.txt"
    lines = read_lines(path)
    root = Path(image_root) if image_root is not None else path.parent / "images"
    policy = ErrorPolicy.create(on_error, report, path)
    faces: list[tuple[int, Path, list[str]]] = []
    image: Path | None = None
    for lineno, line in enumerate(lines, start=1):
        text = line.strip()
        if not text:
            continue
        if text.startswith("#"):
            # labelv2 files append "W H" after the path; the path itself has no spaces.
            parts = text[1:].split()
            name = parts[0] if parts else ""
            if not name:
                policy.fail(f"{path}:{lineno}", "'#' line without an image path")
            image = root / name if name else None
            continue
        if image is None:
            policy.fail(f"{path}:{lineno}", "face line before any '# <image path>' line")
            continue
        tokens = text.split()
        if len(tokens) != _TOKENS:
            hint = " (a box-only label file has no landmarks)" if len(tokens) == 4 else ""
            policy.fail(
                f"{path}:{lineno}",
                f"expected {_TOKENS} tokens (x y w h, 5 x (x y flag), score), "
                f"got {len(tokens)}{hint}",
                "wrong number of tokens",
            )
            continue
        faces.append((lineno, image, tokens))
    if not faces:
        return policy.finish([])
    values, problems = parse_rows([t for _, _, t in faces])  # (F, 20)
    boxes = values[:, :4]
    marks = values[:, 4:19].reshape(-1, NUM_POINTS, 3)  # (F, 5, 3) x y flag
    large = (boxes[:, 2] > min_size) & (boxes[:, 3] > min_size)
    has_marks = ~np.all(marks[:, :, :2] < 0, axis=(1, 2))
    records = []
    n_small = n_unmarked = 0
    for f, (lineno, image, _) in enumerate(faces):
        source = f"{path}:{lineno}"
        problem = problems[f]
        if problem is not None:
            policy.fail(source, problem, NOT_A_NUMBER)
            continue
        if not large[f]:
            n_small += 1
            continue
        if not has_marks[f]:
            n_unmarked += 1
            continue
        if check_images and not policy.check_image(image, source):
            continue
        pts = marks[f, :, :2]
        missing = np.all(pts < 0, axis=1)
        x, y, w, h = boxes[f]
        record = FaceRecord(
            image_path=image,
            landmarks=np.where(missing[:, None], 0.0, pts),
            box=np.array([x, y, x + w, y + h]),
            protocol="wider5",
            valid=~missing,
            occluded=marks[f, :, 2] > 0.5,
            source=source,
        )
        if policy.accept(record):
            records.append(record)
    logger.info(
        "%s: %d of %d faces kept; dropped %d with a box not larger than %gx%g px and %d "
        "without landmarks",
        path,
        len(records),
        len(faces),
        n_small,
        min_size,
        min_size,
        n_unmarked,
    )
    return policy.finish(records)

"""WFLW (98 points): the official ``list_98pt_*`` annotation lists.

Two line layouts exist (one face per line, space separated):

* ``list_98pt_rect_attr_{train,test}.txt``: 207 tokens, ``x0 y0 ... x97 y97`` (196),
  ``x_min y_min x_max y_max`` of the detection rectangle, six 0/1 attribute flags
  (pose, expression, illumination, make-up, occlusion, blur) and the image path relative to
  ``WFLW_images/``.
* ``list_98pt_test.txt`` and the six per-attribute test lists ``list_98pt_test_<attr>.txt``:
  197 tokens, coordinates and image path only. The box then comes from the landmarks, and
  membership of a per-attribute list means that attribute is 1.

Coordinates are 0-based pixels already and are used as they are.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from sepbn.data.errors import DatasetError, SkipReport
from sepbn.data.formats._common import (
    NOT_A_NUMBER,
    DatasetWarning,
    ErrorPolicy,
    check_split,
    parse_rows,
    read_lines,
)
from sepbn.data.records import FaceRecord, box_from_landmarks

NUM_POINTS = 98
WFLW_ATTRIBUTES = ("pose", "expression", "illumination", "makeup", "occlusion", "blur")
# The per-attribute test lists are named after these words, in WFLW_ATTRIBUTES order.
ATTRIBUTE_LIST_NAMES = ("largepose", "expression", "illumination", "makeup", "occlusion", "blur")
WFLW_SPLITS = ("train", "test", *ATTRIBUTE_LIST_NAMES)

_RECT_ATTR_TOKENS = 2 * NUM_POINTS + 4 + 6 + 1  # 207
_PLAIN_TOKENS = 2 * NUM_POINTS + 1  # 197
# (source, landmarks (98, 2), box (4,) or None, flags (6,) or None, image name)
_Line = tuple[str, np.ndarray, np.ndarray | None, np.ndarray | None, str]


def find_wflw_images(list_file: Path) -> Path | None:
    """The ``WFLW_images`` folder next to one of the list file's parent folders."""
    for parent in list_file.resolve().parents:
        if (parent / "WFLW_images").is_dir():
            return parent / "WFLW_images"
    return None


def _expected_tokens(path: Path, lines: list[str]) -> int:
    """207 for rect_attr lists, 197 for the test lists; from the first line otherwise."""
    if "rect_attr" in path.name:
        return _RECT_ATTR_TOKENS
    if path.name.startswith("list_98pt_test"):
        return _PLAIN_TOKENS
    for line in lines:
        n = len(line.split())
        if n:
            return n if n in (_RECT_ATTR_TOKENS, _PLAIN_TOKENS) else _RECT_ATTR_TOKENS
    return _RECT_ATTR_TOKENS


def _resolve_image_root(path: Path, image_root: str | Path | None, check_images: bool) -> Path:
    if image_root is not None:
        return Path(image_root)
    found = find_wflw_images(path)
    if found is None:
        if check_images:
            raise DatasetError(
                str(path),
                "no WFLW_images folder found next to this list or its parent folders; "
                "pass image_root=",
            )
        return path.parent
    return found


def _parse_list(path: Path, policy: ErrorPolicy) -> Iterator[_Line]:
    """Parse one list file into ``(source, landmarks, box, flags, image_name)`` per line.

    Bad lines go through ``policy`` and the good ones are yielded, both in file order, so
    with ``on_error="raise"`` the first bad line of the file is the one named.
    """
    lines = read_lines(path)
    expected = _expected_tokens(path, lines)
    split = [(lineno, line.split()) for lineno, line in enumerate(lines, start=1)]
    split = [(lineno, tokens) for lineno, tokens in split if tokens]
    # One bulk number conversion for the well-formed lines; per-line work only on failure.
    good = [k for k, (_, tokens) in enumerate(split) if len(tokens) == expected]
    values, problems = parse_rows([split[k][1][:-1] for k in good])  # (R, T)
    parsed = dict(zip(good, range(len(good))))
    flags_ok = np.ones(len(good), dtype=bool)  # (R,)
    if expected == _RECT_ATTR_TOKENS:
        flags_ok = np.all(np.isin(values[:, 2 * NUM_POINTS + 4 :], (0.0, 1.0)), axis=1)
    layout = (
        "196 coordinates, 4 box values, 6 attribute flags and the image path"
        if expected == _RECT_ATTR_TOKENS
        else "196 coordinates and the image path"
    )
    for k, (lineno, tokens) in enumerate(split):
        source = f"{path}:{lineno}"
        if k not in parsed:
            reason = f"expected {expected} tokens ({layout}), got {len(tokens)}"
            policy.fail(source, reason, "wrong number of tokens")
            continue
        r = parsed[k]
        problem = problems[r]
        if problem is not None:
            policy.fail(source, problem, NOT_A_NUMBER)
            continue
        row = values[r]
        pts = row[: 2 * NUM_POINTS].reshape(NUM_POINTS, 2)  # (L, 2) from interleaved x y
        box = flags = None
        if expected == _RECT_ATTR_TOKENS:
            box = row[2 * NUM_POINTS : 2 * NUM_POINTS + 4]
            flags = row[2 * NUM_POINTS + 4 : 2 * NUM_POINTS + 10]
            if not flags_ok[r]:
                reason = f"attribute flags must be 0 or 1, got {flags.tolist()}"
                policy.fail(source, reason, "attribute flags not 0 or 1")
                continue
        yield source, pts, box, flags, tokens[-1]


def read_wflw_list(
    path: str | Path,
    *,
    image_root: str | Path | None = None,
    on_error: str = "raise",
    report: SkipReport | None = None,
    check_images: bool = True,
) -> list[FaceRecord]:
    """Read one WFLW list file (207-token rect_attr or 197-token test list).

    Args:
        path: The list file.
        image_root: Folder the image paths are relative to; default: the ``WFLW_images``
            folder found next to the list file or one of its parents.
        on_error: ``"raise"`` or ``"skip"`` bad lines (reported at the end).
        report: Collects skipped lines; a new one when None.
        check_images: Check that every referenced image file exists.

    Returns:
        One record per line, protocol ``"wflw"``. 197-token lines get the landmark box and,
        for a per-attribute list, that attribute set to True (the others False).
    """
    path = Path(path)
    policy = ErrorPolicy.create(on_error, report, path)
    root = _resolve_image_root(path, image_root, check_images)
    list_attr = None
    for attr, name in zip(WFLW_ATTRIBUTES, ATTRIBUTE_LIST_NAMES):
        if path.stem == f"list_98pt_test_{name}":
            list_attr = attr
    records = []
    for source, pts, box, flags, name in _parse_list(path, policy):
        if flags is not None:
            attributes = {a: bool(f) for a, f in zip(WFLW_ATTRIBUTES, flags)}
        elif list_attr is not None:
            attributes = {a: a == list_attr for a in WFLW_ATTRIBUTES}
        else:
            attributes = {}
        image = root / name
        record = FaceRecord(
            image_path=image,
            landmarks=pts,
            box=box if box is not None else box_from_landmarks(pts),
            protocol="wflw",
            attributes=attributes,
            source=source,
        )
        if check_images and not policy.check_image(image, source):
            continue
        if policy.accept(record):
            records.append(record)
    return policy.finish(records)


def _find_file(root: Path, name: str) -> Path | None:
    if (root / name).is_file():
        return root / name
    return next(iter(sorted(root.rglob(name))), None)


def read_wflw_attr(
    path: str | Path,
    split: str | None = None,
    *,
    image_root: str | Path | None = None,
    on_error: str = "raise",
    report: SkipReport | None = None,
    check_images: bool = True,
) -> list[FaceRecord]:
    """Merge the six per-attribute WFLW test lists into one record per distinct face.

    A face is identified by its image path and its exact coordinate tokens; its attributes are
    set from list membership. Record order: first appearance over the lists in the order
    largepose, expression, illumination, makeup, occlusion, blur. The box comes from the
    landmarks (these lists have no rectangle).

    Args:
        path: A folder holding ``list_98pt_test_<attr>.txt`` (searched recursively).
        split: None for all faces, or one list name (``"largepose"``, ...) to keep only its
            faces (still with all six attributes).
        image_root: As for :func:`read_wflw_list`.
        on_error: ``"raise"`` or ``"skip"``.
        report: Collects skipped records.
        check_images: Check that every referenced image file exists.

    Raises:
        DatasetError: A list is missing (named) or, with ``on_error="raise"``, a line is bad.
    """
    check_split("wflw_attr", split, (None, *ATTRIBUTE_LIST_NAMES))
    path = Path(path)
    if not path.is_dir():
        raise DatasetError(str(path), "expected the folder of the six per-attribute WFLW lists")
    found = {name: _find_file(path, f"list_98pt_test_{name}.txt") for name in ATTRIBUTE_LIST_NAMES}
    missing = [f"list_98pt_test_{n}.txt" for n, f in found.items() if f is None]
    if missing:
        raise DatasetError(str(path), f"missing per-attribute WFLW list(s): {missing}")
    files = [f for f in found.values() if f is not None]
    policy = ErrorPolicy.create(on_error, report, path)
    root = _resolve_image_root(files[0], image_root, check_images)
    faces: dict[tuple[str, bytes], tuple[str, np.ndarray, set[str]]] = {}
    for attr, file in zip(WFLW_ATTRIBUTES, files):
        for source, pts, _, _, image_name in _parse_list(file, policy):
            key = (image_name, pts.tobytes())
            entry = faces.setdefault(key, (source, pts, set()))
            entry[2].add(attr)
    wanted = None if split is None else WFLW_ATTRIBUTES[ATTRIBUTE_LIST_NAMES.index(split)]
    records = []
    for (image_name, _), (source, pts, attrs) in faces.items():
        if wanted is not None and wanted not in attrs:
            continue
        image = root / image_name
        record = FaceRecord(
            image_path=image,
            landmarks=pts,
            box=box_from_landmarks(pts),
            protocol="wflw",
            attributes={a: a in attrs for a in WFLW_ATTRIBUTES},
            source=source,
        )
        if check_images and not policy.check_image(image, source):
            continue
        if policy.accept(record):
            records.append(record)
    return policy.finish(records)


def read_wflw(
    path: str | Path,
    split: str | None = None,
    *,
    image_root: str | Path | None = None,
    on_error: str = "raise",
    report: SkipReport | None = None,
    check_images: bool = True,
) -> list[FaceRecord]:
    """Read WFLW from a list file or from the ``WFLW_annotations`` folder.

    With a folder, ``split`` picks the list: ``"train"``/``"test"`` read
    ``list_98pt_rect_attr_{split}.txt``; a test subset (``"largepose"``, ``"expression"``,
    ``"illumination"``, ``"makeup"``, ``"occlusion"``, ``"blur"``) keeps the test faces with
    that attribute flag. When the rect_attr test list is absent, the 197-token lists are used
    instead (boxes from landmarks): ``list_98pt_test.txt`` for ``"test"`` when present, else
    the six per-attribute lists merged (fewer faces: a warning says so), and
    ``list_98pt_test_<subset>.txt`` for a subset. With a file, ``split`` may be None,
    ``"train"``/``"test"`` (whole file) or a subset name (filter by flag).

    Args:
        path: A list file or a folder searched recursively for the lists.
        split: See above; required for a folder.
        image_root: Folder of the images; default: the ``WFLW_images`` folder found next to
            the list or its parents.
        on_error: ``"raise"`` or ``"skip"`` bad lines, missing images, failed checks.
        report: Collects skipped records.
        check_images: Check that every referenced image file exists.
    """
    path = Path(path)
    kw: dict[str, Any] = {
        "image_root": image_root,
        "on_error": on_error,
        "report": report,
        "check_images": check_images,
    }
    if path.is_file():
        check_split("wflw", split, (None, *WFLW_SPLITS))
        records = read_wflw_list(path, **kw)
        return _filter_subset(records, split)
    if not path.is_dir():
        raise DatasetError(str(path), "WFLW list file or annotation folder not found")
    check_split("wflw", split, WFLW_SPLITS)
    rect = _find_file(path, f"list_98pt_rect_attr_{'train' if split == 'train' else 'test'}.txt")
    if rect is not None:
        return _filter_subset(read_wflw_list(rect, **kw), split)
    if split == "train":
        raise DatasetError(str(path), "list_98pt_rect_attr_train.txt not found under this folder")
    if split in ATTRIBUTE_LIST_NAMES:
        sub = _find_file(path, f"list_98pt_test_{split}.txt")
        if sub is None:
            raise DatasetError(
                str(path),
                f"neither list_98pt_rect_attr_test.txt nor list_98pt_test_{split}.txt found",
            )
        return read_wflw_list(sub, **kw)
    full = _find_file(path, "list_98pt_test.txt")
    if full is not None:
        return read_wflw_list(full, **kw)
    warnings.warn(
        f"{path}: list_98pt_rect_attr_test.txt and list_98pt_test.txt not found; merging the "
        "six per-attribute test lists instead (their union is only part of the 2500-face test "
        "set, boxes come from the landmarks)",
        DatasetWarning,
        stacklevel=2,
    )
    return read_wflw_attr(path, **kw)


def _filter_subset(records: list[FaceRecord], split: str | None) -> list[FaceRecord]:
    if split not in ATTRIBUTE_LIST_NAMES:
        return records
    attr = WFLW_ATTRIBUTES[ATTRIBUTE_LIST_NAMES.index(split)]
    if records and attr not in records[0].attributes:
        raise DatasetError(
            records[0].source, f"this list has no attribute flags to select subset {split!r}"
        )
    return [r for r in records if r.attributes.get(attr, False)]

"""300-W (68 points, iBUG markup): ``.pts`` files and the standard split layout.

A ``.pts`` file is either the official headed form::

    version: 1
    n_points:  68
    {
    157.404624 295.066474
    ...
    }

or just the ``x y`` lines (some redistributions drop the header). The coordinates follow the
MATLAB convention (the centre of the top-left pixel is ``(1, 1)``) and are shifted to 0-based.

The 300-W split layout under one root folder::

    train     = afw + helen/trainset + lfpw/trainset   (3148 faces)
    common    = helen/testset + lfpw/testset           (554)
    challenge = ibug                                   (135)
    full      = common + challenge                     (689)
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from sepbn.data.errors import DatasetError, SkipReport
from sepbn.data.formats._common import (
    IMAGE_SUFFIXES,
    NOT_A_NUMBER,
    ErrorPolicy,
    check_split,
    images_by_stem,
    number_problem,
    read_lines,
)
from sepbn.data.formats._matlab import load_v5
from sepbn.data.protocols import get_protocol
from sepbn.data.records import FaceRecord, box_from_landmarks
from sepbn.errors import ConfigError

SPLITS_300W: dict[str, tuple[str, ...]] = {
    "train": ("afw", "helen/trainset", "lfpw/trainset"),
    "common": ("helen/testset", "lfpw/testset"),
    "challenge": ("ibug",),
    "full": ("helen/testset", "lfpw/testset", "ibug"),
}
BOX_KINDS = ("detector", "ground_truth")


def read_pts(path: str | Path) -> np.ndarray:
    """Read the points of a ``.pts`` file, headed or headless, exactly as written.

    Args:
        path: The ``.pts`` file.

    Returns:
        ``(L, 2)`` float64 ``x, y`` as in the file (still 1-based for 300-W files).

    Raises:
        DatasetError: Naming the file and line: bad header, a line that is not two finite
            numbers, or a point count that differs from ``n_points``.
    """
    path = Path(path)
    lines = read_lines(path)
    body = [(i, ln.strip()) for i, ln in enumerate(lines, start=1) if ln.strip()]
    if not body:
        raise DatasetError(str(path), "empty .pts file")
    declared = None
    if body[0][1].lower().startswith("version"):
        header = {}
        k = 1
        while k < len(body) and ":" in body[k][1]:
            key, _, value = body[k][1].partition(":")
            header[key.strip().lower()] = (body[k][0], value.strip())
            k += 1
        if k >= len(body) or body[k][1] != "{":
            where = body[min(k, len(body) - 1)][0]
            raise DatasetError(f"{path}:{where}", "expected '{' after the .pts header")
        if body[-1][1] != "}":
            raise DatasetError(f"{path}:{body[-1][0]}", "expected '}' at the end of a headed .pts")
        if "n_points" in header:
            lineno, value = header["n_points"]
            try:
                declared = int(value)
            except ValueError:
                raise DatasetError(
                    f"{path}:{lineno}", f"n_points {value!r} is not an integer", "bad .pts header"
                ) from None
        body = body[k + 1 : -1]
    pts = np.empty((len(body), 2))
    for row, (lineno, text) in enumerate(body):
        tokens = text.split()
        if len(tokens) != 2:
            reason = f"expected 2 tokens 'x y', got {len(tokens)}"
            raise DatasetError(f"{path}:{lineno}", reason, "wrong number of tokens")
        problem = number_problem(tokens)
        if problem is not None:
            raise DatasetError(f"{path}:{lineno}", problem, NOT_A_NUMBER)
        pts[row] = float(tokens[0]), float(tokens[1])
    if declared is not None and declared != len(pts):
        reason = f"header says n_points: {declared}, found {len(pts)} points"
        raise DatasetError(str(path), reason, "point count differs from n_points")
    return pts


def read_box_file(path: str | Path, kind: str = "detector") -> dict[str, np.ndarray]:
    """Read face boxes keyed by image file name, 0-based ``x_min, y_min, x_max, y_max``.

    Two layouts: the iBUG ``bounding_boxes_*.mat`` (a cell of structs with ``imgName``,
    ``bb_detector`` and ``bb_ground_truth``, 1-based; shifted to 0-based), or a text file
    with one ``image_name x_min y_min x_max y_max`` line per face (0-based, used as is).

    Args:
        path: The box file.
        kind: For the iBUG file, ``"detector"`` or ``"ground_truth"`` boxes.

    Raises:
        DatasetError: The file is malformed (naming the line or record).
    """
    if kind not in BOX_KINDS:
        raise ConfigError(f"box kind must be one of {list(BOX_KINDS)}, got {kind!r}")
    path = Path(path)
    boxes: dict[str, np.ndarray] = {}
    if path.suffix.lower() == ".mat":
        try:
            mat = load_v5(path, squeeze_me=True, struct_as_record=False)
        except Exception as e:  # scipy raises many types for corrupt files
            reason = " ".join(f"not a readable .mat file ({type(e).__name__}: {e})".split())
            raise DatasetError(str(path), reason, "not a readable .mat file") from None
        if "bounding_boxes" not in mat:
            raise DatasetError(str(path), "no 'bounding_boxes' variable (iBUG box file layout)")
        field = "bb_detector" if kind == "detector" else "bb_ground_truth"
        for i, entry in enumerate(np.atleast_1d(mat["bounding_boxes"]), start=1):
            try:
                name = str(entry.imgName)
                box = np.asarray(getattr(entry, field), dtype=np.float64).reshape(4)
            except (AttributeError, ValueError, TypeError) as e:
                reason = " ".join(f"not an iBUG box entry ({e})".split())
                raise DatasetError(f"{path}[record {i}]", reason, "not an iBUG box entry") from None
            boxes[name] = box - 1.0  # MATLAB 1-based pixel centres
        return boxes
    for lineno, line in enumerate(read_lines(path), start=1):
        tokens = line.split()
        if not tokens:
            continue
        if len(tokens) != 5:
            raise DatasetError(
                f"{path}:{lineno}",
                f"expected 5 tokens 'image_name x_min y_min x_max y_max', got {len(tokens)}",
            )
        problem = number_problem(tokens[1:])
        if problem is not None:
            raise DatasetError(f"{path}:{lineno}", problem)
        boxes[tokens[0]] = np.array([float(t) for t in tokens[1:]])
    return boxes


def _pts_records(
    folder: Path,
    policy: ErrorPolicy,
    *,
    protocol: str,
    one_based: bool,
    boxes: Mapping[str, np.ndarray] | None,
    box_source: str,
    check_images: bool,
) -> list[FaceRecord]:
    pts_files = sorted(folder.rglob("*.pts"))
    if not pts_files:
        raise DatasetError(str(folder), "no .pts files found")
    images: dict[Path, dict[str, Path]] = {}
    records = []
    for pts_file in pts_files:
        source = str(pts_file)
        try:
            pts = read_pts(pts_file)
        except DatasetError as e:
            policy.report.handle(e, policy.on_error)
            continue
        if one_based:
            pts = pts - 1.0
        stems = images.get(pts_file.parent)
        if stems is None:
            stems = images[pts_file.parent] = images_by_stem(pts_file.parent)
        image = stems.get(pts_file.stem)
        if image is None:
            if check_images:
                suffixes = ", ".join(IMAGE_SUFFIXES)
                policy.fail(source, f"no image next to the .pts file (looked for {suffixes})")
                continue
            image = pts_file.with_suffix(".jpg")
        elif check_images and not policy.check_image(image, source):
            continue
        if boxes is not None:
            box = boxes.get(image.name)
            if box is None:
                reason = f"image not in the box file {box_source}"
                policy.fail(f"{source} ({image.name})", reason, "image not in the box file")
                continue
        elif len(pts):
            box = box_from_landmarks(pts)
        else:  # a headed file without points: validate_record names the point count
            box = np.full(4, np.nan)
        record = FaceRecord(
            image_path=image, landmarks=pts, box=box, protocol=protocol, source=source
        )
        if policy.accept(record):
            records.append(record)
    annotated = {(p.parent, p.stem) for p in pts_files}
    for image in sorted(folder.rglob("*")):
        if image.suffix.lower() in IMAGE_SUFFIXES and (image.parent, image.stem) not in annotated:
            # Never fatal: a folder may hold other pictures, but none goes unmentioned.
            policy.note(DatasetError(str(image), "image without a .pts file next to it"))
    return records


def read_pts_folder(
    path: str | Path,
    split: str | None = None,
    *,
    protocol: str = "300w",
    one_based: bool = True,
    box_file: str | Path | None = None,
    box_kind: str = "detector",
    on_error: str = "raise",
    report: SkipReport | None = None,
    check_images: bool = True,
) -> list[FaceRecord]:
    """Read every ``.pts`` file under a folder (recursively) with the image of the same name.

    Args:
        path: The folder, e.g. ``300W_train_crops`` or ``300W/lfpw/testset``.
        split: Must be None (a plain folder has no splits).
        protocol: Protocol key of the points (``"300w"``); files with another point count
            are errors.
        one_based: The files use MATLAB 1-based pixel coordinates (300-W does); subtract 1.
        box_file: Optional boxes by image name (see :func:`read_box_file`); default: the
            tight box of the landmarks.
        box_kind: ``"detector"`` or ``"ground_truth"`` for an iBUG box file.
        on_error: ``"raise"`` or ``"skip"`` bad files, missing images, failed checks.
        report: Collects skipped records.
        check_images: Require an image next to each ``.pts``; when False a missing image is
            assumed to be ``<stem>.jpg``.

    Returns:
        Records sorted by ``.pts`` path; ``source`` is the ``.pts`` file.
    """
    check_split("pts_folder", split, (None,))
    get_protocol(protocol)
    folder = Path(path)
    if not folder.is_dir():
        raise DatasetError(str(folder), "folder of .pts files not found")
    policy = ErrorPolicy.create(on_error, report, folder)
    boxes = read_box_file(box_file, box_kind) if box_file is not None else None
    records = _pts_records(
        folder,
        policy,
        protocol=protocol,
        one_based=one_based,
        boxes=boxes,
        box_source=str(box_file),
        check_images=check_images,
    )
    return policy.finish(records)


def read_300w(
    path: str | Path,
    split: str | None = None,
    *,
    allow_missing: bool = False,
    box_dir: str | Path | None = None,
    box_kind: str = "detector",
    on_error: str = "raise",
    report: SkipReport | None = None,
    check_images: bool = True,
) -> list[FaceRecord]:
    """Read a 300-W split from the standard folder layout (see the module docstring).

    Args:
        path: The 300-W root holding ``afw/``, ``helen/``, ``lfpw/``, ``ibug/``.
        split: ``"train"``, ``"common"``, ``"challenge"`` or ``"full"``.
        allow_missing: Read the sub-folders that exist and report the missing ones (in the
            warning and ``report``) instead of raising.
        box_dir: Folder of the iBUG ``bounding_boxes_<subset>.mat`` files (e.g.
            ``bounding_boxes_helen_trainset.mat``); default: boxes from the landmarks.
        box_kind: ``"detector"`` or ``"ground_truth"`` boxes from those files.
        on_error: ``"raise"`` or ``"skip"`` bad files, missing images, failed checks.
        report: Collects skipped records and missing sub-folders.
        check_images: Require an image next to each ``.pts``.

    Raises:
        ValueError: Unknown split.
        DatasetError: Missing sub-folders (named) without ``allow_missing``, or bad data.
    """
    check_split("300w", split, tuple(SPLITS_300W))
    root = Path(path)
    if not root.is_dir():
        raise DatasetError(str(root), "300-W root folder not found")
    assert split is not None  # check_split accepts the keys of SPLITS_300W only
    subsets = SPLITS_300W[split]
    missing = [s for s in subsets if not (root / s).is_dir()]
    if missing and (not allow_missing or len(missing) == len(subsets)):
        hint = "" if allow_missing else "; pass allow_missing=True to read the others"
        raise DatasetError(
            str(root), f"300-W split {split!r} is missing sub-folder(s) {missing}{hint}"
        )
    policy = ErrorPolicy.create(on_error, report, f"{root} (300-W {split})")
    for s in missing:
        reason = f"300-W sub-folder {s!r} missing (allow_missing=True)"
        policy.note(DatasetError(str(root), reason, "300-W sub-folder missing"))
    records: list[FaceRecord] = []
    for subset in subsets:
        if subset in missing:
            continue
        boxes = None
        box_source = ""
        if box_dir is not None:
            box_path = Path(box_dir) / f"bounding_boxes_{subset.replace('/', '_')}.mat"
            boxes = read_box_file(box_path, box_kind)
            box_source = str(box_path)
        records += _pts_records(
            root / subset,
            policy,
            protocol="300w",
            one_based=True,
            boxes=boxes,
            box_source=box_source,
            check_images=check_images,
        )
    return policy.finish(records)

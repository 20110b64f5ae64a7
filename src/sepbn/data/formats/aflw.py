"""AFLW with the 19-point protocol: ``AFLWinfo_release.mat`` and AFLW2000-3D samples.

``AFLWinfo_release.mat`` (Zhu et al., CVPR 2016; used by SAN, HRNet, mmpose) holds for all
24 386 faces:

* ``bbox`` ``N x 4``: ``left, right, top, bottom``;
* ``data`` ``N x 38``: 19 x then 19 y;
* ``mask_new`` ``N x 19``: 1 where the point is visible;
* ``nameList`` ``N x 1`` cell: image paths relative to the AFLW image folder;
* ``ra`` ``1 x N``: a 1-based permutation; its first 20 000 entries are the training faces
  and the remaining 4 386 the test faces (AFLW-Full). AFLW-Frontal is the test faces whose 19
  points are all visible (1 314 faces).

All 19 coordinates are annotated (invisible ones estimated), so every point is ``valid`` and
``mask_new == 0`` becomes ``occluded``.

AFLW2000-3D ``imageNNNNN.mat`` files have ``pt2d`` (2 x 21): the original 21 AFLW points,
``-1`` where a point is missing. Dropping the two ear points (0-based indices 12 and 16)
gives the 19-point protocol: brows 0-5, eyes 6-11, nose 12-14, mouth 15-17, chin 18.

Both files come from MATLAB; their coordinates are shifted from 1-based to 0-based
(``one_based=True``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sepbn.data.errors import DatasetError, SkipReport
from sepbn.data.formats._common import ErrorPolicy, check_split, text_field
from sepbn.data.formats._matlab import MatFile, cell_string
from sepbn.data.records import FaceRecord, box_from_landmarks

NUM_POINTS = 19
AFLW_SPLITS = ("train", "test", "frontal")
# The 21 AFLW points without the left (12) and right (16) ear, 0-based.
AFLW21_TO_19 = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 17, 18, 19, 20)


def read_aflw(
    path: str | Path,
    split: str | None = None,
    *,
    image_root: str | Path | None = None,
    num_train: int = 20000,
    one_based: bool = True,
    on_error: str = "raise",
    report: SkipReport | None = None,
    check_images: bool = True,
) -> list[FaceRecord]:
    """Read one AFLW-19 split from ``AFLWinfo_release.mat``.

    Args:
        path: The ``AFLWinfo_release.mat`` file.
        split: ``"train"`` (first ``num_train`` of ``ra``), ``"test"`` (AFLW-Full: the rest)
            or ``"frontal"`` (test faces with all 19 points visible).
        image_root: Folder the ``nameList`` paths are relative to; default: the ``.mat``'s
            folder.
        num_train: Size of the training part of ``ra`` (20 000 in the release).
        one_based: Shift the MATLAB 1-based coordinates and boxes to 0-based.
        on_error: ``"raise"`` or ``"skip"`` bad records and missing images.
        report: Collects skipped records.
        check_images: Check that every referenced image file exists.

    Returns:
        Records in ``ra`` order, protocol ``"aflw"``; ``source`` is ``"file[record i]"`` with
        the 1-based row of the face in the ``.mat``.
    """
    check_split("aflw", split, AFLW_SPLITS)
    path = Path(path)
    with MatFile(path) as mat:
        bbox = mat.numbers("bbox")
        data = mat.numbers("data")
        mask = mat.numbers("mask_new")
        names = mat.cell("nameList")  # checked per record: one bad name costs one face
        ra = mat.numbers("ra").reshape(-1)
    n = len(names)
    for key, arr, cols in (
        ("bbox", bbox, 4),
        ("data", data, 2 * NUM_POINTS),
        ("mask_new", mask, 19),
    ):
        if arr.shape != (n, cols):
            raise DatasetError(
                f"{path}[{key}]", f"expected shape ({n}, {cols}) for {n} faces, got {arr.shape}"
            )
    if (
        not np.all((ra >= 1) & (ra <= n))  # also False for NaN
        or not np.all(ra == np.round(ra))
        or sorted(ra.astype(np.int64).tolist()) != list(range(1, n + 1))
    ):
        raise DatasetError(f"{path}[ra]", f"not a 1-based permutation of 1..{n}")
    if not 0 < num_train < n:
        raise DatasetError(
            f"{path}[ra]", f"num_train={num_train} must be in 1..{n - 1} for {n} faces"
        )
    order = ra.astype(np.int64) - 1
    rows = order[:num_train] if split == "train" else order[num_train:]
    visible = mask > 0.5  # (N, 19)
    if split == "frontal":
        rows = rows[visible[rows].all(axis=1)]
    shift = 1.0 if one_based else 0.0
    pts = np.stack([data[:, :NUM_POINTS], data[:, NUM_POINTS:]], axis=-1) - shift  # (N, 19, 2)
    boxes = bbox[:, [0, 2, 1, 3]] - shift  # left right top bottom -> x_min y_min x_max y_max
    root = Path(image_root) if image_root is not None else path.parent
    policy = ErrorPolicy.create(on_error, report, f"{path} (AFLW {split})")
    records = []
    for i in rows.tolist():
        source = f"{path}[record {i + 1}]"
        try:
            image = root / text_field(cell_string(names[i], source, "nameList"), source, "nameList")
        except DatasetError as e:
            policy.report.handle(e, policy.on_error)
            continue
        if check_images and not policy.check_image(image, source):
            continue
        record = FaceRecord(
            image_path=image,
            landmarks=pts[i],
            box=boxes[i],
            protocol="aflw",
            occluded=~visible[i],
            source=source,
        )
        if policy.accept(record):
            records.append(record)
    return policy.finish(records)


def aflw21_to_19(pt2d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map AFLW2000-3D ``pt2d`` (21 points) to the 19-point protocol.

    Args:
        pt2d: ``(2, 21)`` as stored (x row, y row), negative (``-1``) where missing.

    Returns:
        ``(landmarks, valid)``: ``(19, 2)`` float64 (0.0 at missing points) and ``(19,)`` bool.
    """
    pts = np.asarray(pt2d, dtype=np.float64).T[list(AFLW21_TO_19)]  # (19, 2)
    valid = (pts >= 0).all(axis=1)
    return np.where(valid[:, None], pts, 0.0), valid


def read_aflw2000(
    path: str | Path,
    split: str | None = None,
    *,
    one_based: bool = True,
    on_error: str = "raise",
    report: SkipReport | None = None,
    check_images: bool = True,
) -> list[FaceRecord]:
    """Read a folder of AFLW2000-3D ``imageNNNNN.mat`` + ``imageNNNNN.jpg`` as AFLW-19.

    Args:
        path: The folder (e.g. ``AFLW2000``).
        split: Must be None.
        one_based: Shift the MATLAB 1-based coordinates to 0-based.
        on_error: ``"raise"`` or ``"skip"`` bad files and missing images.
        report: Collects skipped records.
        check_images: Check that each ``.jpg`` exists.

    Returns:
        Records sorted by file name, protocol ``"aflw"``; missing points are ``valid=False``;
        the box is the tight box of the valid points.
    """
    check_split("aflw2000", split, (None,))
    folder = Path(path)
    if not folder.is_dir():
        raise DatasetError(str(folder), "AFLW2000-3D folder not found")
    files = sorted(folder.glob("*.mat"))
    if not files:
        raise DatasetError(str(folder), "no .mat files found")
    shift = 1.0 if one_based else 0.0
    policy = ErrorPolicy.create(on_error, report, folder)
    records = []
    for f in files:
        source = str(f)
        image = f.with_suffix(".jpg")
        try:
            with MatFile(f) as mat:
                pt2d = mat.numbers("pt2d")
            if pt2d.shape != (2, 21):
                reason = f"pt2d must be 2 x 21, got {pt2d.shape}"
                raise DatasetError(source, reason, "pt2d of wrong shape")
            if not np.isfinite(pt2d).all():
                raise DatasetError(source, "pt2d holds non-finite values")
        except DatasetError as e:
            policy.report.handle(e, policy.on_error)
            continue
        if check_images and not policy.check_image(image, source):
            continue
        pts, valid = aflw21_to_19(pt2d)
        pts = np.where(valid[:, None], pts - shift, 0.0)
        if valid.sum() < 2:
            reason = f"only {int(valid.sum())} of 19 points annotated"
            policy.fail(source, reason, "fewer than 2 points annotated")
            continue
        record = FaceRecord(
            image_path=image,
            landmarks=pts,
            box=box_from_landmarks(pts, valid),
            protocol="aflw",
            valid=valid,
            source=source,
        )
        if policy.accept(record):
            records.append(record)
    return policy.finish(records)

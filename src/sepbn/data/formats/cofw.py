"""COFW (29 points) from Caltech's MATLAB files, and the COFW68 68-point re-annotation.

``COFW_{train,test}_color.mat`` hold, for the train (``Tr``) or test (``T``) part:

* ``IsTr`` / ``IsT``: a cell of images, ``H x W x 3`` or ``H x W`` (grayscale) uint8;
* ``phisTr`` / ``phisT``: ``N x 87`` = 29 x, 29 y, 29 occlusion flags (1 = occluded);
* ``bboxesTr`` / ``bboxesT``: ``N x 4`` face boxes ``x, y, w, h``.

The images live only inside the ``.mat``, so these records carry their pixels in
``FaceRecord.image`` and have ``image_path=None``. Coordinates are MATLAB 1-based and are
shifted to 0-based (``one_based=True``).

COFW68 (Ghiasi & Fowlkes) re-annotates the 507 COFW test faces with the 68-point iBUG markup:
``test_annotations/<i>_points.mat`` (``Points`` 68 x 2, ``Occ`` 1 x 68) for the 1-based test
index ``i``, and ``cofw68_test_bboxes.mat`` (``bboxes`` 507 x 4, ``x y w h``).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from sepbn.data.errors import DatasetError, SkipReport
from sepbn.data.formats._common import ErrorPolicy, check_split
from sepbn.data.formats._matlab import MatFile
from sepbn.data.records import FaceRecord

NUM_POINTS = 29
_KEYS = {
    "train": ("IsTr", "phisTr", "bboxesTr"),
    "test": ("IsT", "phisT", "bboxesT"),
}


def to_rgb(image: np.ndarray, source: str) -> np.ndarray:
    """A MATLAB image as ``(H, W, 3)`` uint8 RGB; grayscale is repeated over 3 channels.

    Raises:
        DatasetError: The array is not a 2-D or 3-channel image of 8-bit values.
    """
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] != 3 or min(img.shape[:2]) < 2:
        reason = f"image must be H x W or H x W x 3, got shape {img.shape}"
        raise DatasetError(source, reason, "image array of wrong shape")
    if img.dtype != np.uint8:
        if img.dtype.kind not in "ui" or img.min() < 0 or img.max() > 255:
            reason = f"image must hold 8-bit values, got dtype {img.dtype}"
            raise DatasetError(source, reason, "image array not 8-bit")
        img = img.astype(np.uint8)
    return np.ascontiguousarray(img)


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """``(N, 4)`` ``x, y, w, h`` boxes as ``x_min, y_min, x_max, y_max``."""
    b = np.asarray(boxes, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):  # validate_record reports non-finite boxes
        return np.concatenate([b[:, :2], b[:, :2] + b[:, 2:4]], axis=1)


def _split_of(mat: MatFile, split: str | None) -> str:
    present = [s for s, keys in _KEYS.items() if all(k in mat for k in keys)]
    if split is None:
        if len(present) != 1:
            raise DatasetError(
                str(mat.path),
                f"holds {'both' if present else 'neither'} COFW parts (variables {mat.keys()}); "
                "pass split='train' or split='test'",
            )
        return present[0]
    if split not in present:
        raise DatasetError(
            str(mat.path),
            f"no COFW {split} part: needs variables {list(_KEYS[split])}, found {mat.keys()}",
        )
    return split


def cofw_images(mat: MatFile, split: str) -> list[np.ndarray]:
    """The raw image cell of one COFW part (``IsTr`` or ``IsT``), in file order."""
    return mat.cell(_KEYS[split][0])


def read_cofw(
    path: str | Path,
    split: str | None = None,
    *,
    one_based: bool = True,
    on_error: str = "raise",
    report: SkipReport | None = None,
) -> list[FaceRecord]:
    """Read ``COFW_train_color.mat`` or ``COFW_test_color.mat`` (v7.3 HDF5 or older v5).

    Args:
        path: The ``.mat`` file.
        split: ``"train"`` or ``"test"``; None takes the one part the file holds.
        one_based: Shift the MATLAB 1-based coordinates and boxes to 0-based.
        on_error: ``"raise"`` or ``"skip"`` bad records.
        report: Collects skipped records.

    Returns:
        Records with protocol ``"cofw"``, in-memory ``image`` (RGB), ``occluded`` flags and
        ``source`` ``"file[record i]"`` (1-based, as MATLAB indexes the cell).
    """
    check_split("cofw", split, (None, "train", "test"))
    path = Path(path)
    with MatFile(path) as mat:
        part = _split_of(mat, split)
        img_key, phis_key, box_key = _KEYS[part]
        phis = mat.numbers(phis_key)
        boxes = mat.numbers(box_key)
        images = mat.cell(img_key)
    n = len(images)
    if phis.shape != (n, 3 * NUM_POINTS):
        raise DatasetError(
            f"{path}[{phis_key}]", f"expected shape ({n}, {3 * NUM_POINTS}), got {phis.shape}"
        )
    if boxes.shape != (n, 4):
        raise DatasetError(f"{path}[{box_key}]", f"expected shape ({n}, 4), got {boxes.shape}")
    shift = 1.0 if one_based else 0.0
    pts = np.stack([phis[:, :NUM_POINTS], phis[:, NUM_POINTS : 2 * NUM_POINTS]], axis=-1) - shift
    occluded = phis[:, 2 * NUM_POINTS :] > 0.5  # (N, 29)
    xyxy = xywh_to_xyxy(boxes) - shift
    policy = ErrorPolicy.create(on_error, report, path)
    records = []
    for i in range(n):
        source = f"{path}[record {i + 1}]"
        try:
            image = to_rgb(images[i], source)
        except DatasetError as e:
            policy.report.handle(e, policy.on_error)
            continue
        record = FaceRecord(
            image_path=None,
            landmarks=pts[i],
            box=xyxy[i],
            protocol="cofw",
            occluded=occluded[i],
            source=source,
            image=image,
        )
        if policy.accept(record, image.shape):
            records.append(record)
    return policy.finish(records)


def _find(root: Path, name: str) -> Path | None:
    for candidate in (root / name, root.parent / name):
        if candidate.exists():
            return candidate
    return next(iter(sorted(root.rglob(name))), None)


def read_cofw68(
    path: str | Path,
    split: str | None = None,
    *,
    cofw_mat: str | Path | None = None,
    one_based: bool = True,
    on_error: str = "raise",
    report: SkipReport | None = None,
) -> list[FaceRecord]:
    """Read the COFW68 test annotations (68 points, protocol ``"300w"``).

    Images: COFW68 ships annotations only; the pixels come from Caltech's
    ``COFW_test_color.mat``. Pass it as ``cofw_mat`` to get records with in-memory images;
    without it every record has ``image_path=None`` and ``image=None`` (usable for
    annotation statistics, not for training).

    Args:
        path: The ``COFW68_Data`` folder (holding ``test_annotations/`` and
            ``cofw68_test_bboxes.mat``) or the ``test_annotations`` folder itself.
        split: None or ``"test"`` (COFW68 covers the test set only).
        cofw_mat: Optional ``COFW_test_color.mat`` with the images.
        one_based: Shift the MATLAB 1-based points and boxes to 0-based.
        on_error: ``"raise"`` or ``"skip"`` bad records.
        report: Collects skipped records.

    Returns:
        Records ordered by test index ``i``; ``occluded`` from ``Occ``; ``source`` is the
        ``<i>_points.mat`` file.
    """
    check_split("cofw68", split, (None, "test"))
    root = Path(path)
    ann_dir = root if root.name == "test_annotations" else _find(root, "test_annotations")
    if ann_dir is None or not ann_dir.is_dir():
        raise DatasetError(str(root), "no test_annotations folder (COFW68 layout) found")
    box_file = _find(ann_dir.parent, "cofw68_test_bboxes.mat")
    if box_file is None:
        raise DatasetError(str(root), "cofw68_test_bboxes.mat not found")
    files: dict[int, Path] = {}
    for f in ann_dir.iterdir():
        m = re.fullmatch(r"(\d+)_points\.mat", f.name)
        if m:
            files[int(m.group(1))] = f
    if not files:
        raise DatasetError(str(ann_dir), "no <i>_points.mat files found")
    with MatFile(box_file) as mat:
        boxes = mat.numbers("bboxes")
    if boxes.ndim != 2 or boxes.shape[1] != 4 or len(boxes) < max(files):
        raise DatasetError(
            f"{box_file}[bboxes]",
            f"expected shape (>= {max(files)}, 4) for the highest test index, got {boxes.shape}",
        )
    shift = 1.0 if one_based else 0.0
    xyxy = xywh_to_xyxy(boxes) - shift
    images: list[np.ndarray] | None = None
    if cofw_mat is not None:
        with MatFile(cofw_mat) as cm:
            images = cofw_images(cm, _split_of(cm, "test"))
        if len(images) < max(files):
            raise DatasetError(
                str(cofw_mat), f"has {len(images)} test images, COFW68 indexes up to {max(files)}"
            )
    policy = ErrorPolicy.create(on_error, report, ann_dir)
    records = []
    for i in sorted(files):
        source = str(files[i])
        try:
            if i == 0:
                reason = "test indices start at 1 (MATLAB), this file says 0"
                raise DatasetError(source, reason, "test index 0")
            x, y, w, h = boxes[i - 1].tolist()
            if not (np.isfinite([x, y]).all() and 1 < w < np.inf and 1 < h < np.inf):
                reason = f"box must be finite x y w h with w, h > 1, got {[x, y, w, h]}"
                raise DatasetError(f"{box_file}[bboxes row {i}]", reason, "bad box")
            with MatFile(files[i]) as mat:
                pts = mat.numbers("Points")
                occ = mat.numbers("Occ").reshape(-1) > 0
            if pts.shape != (68, 2) or occ.shape != (68,):
                raise DatasetError(
                    source,
                    f"expected Points 68 x 2 and Occ 1 x 68, got {pts.shape}, {occ.shape}",
                    "Points or Occ of wrong shape",
                )
            image = to_rgb(images[i - 1], f"{cofw_mat}[record {i}]") if images else None
        except DatasetError as e:
            policy.report.handle(e, policy.on_error)
            continue
        record = FaceRecord(
            image_path=None,
            landmarks=pts - shift,
            box=xyxy[i - 1],
            protocol="300w",
            occluded=occ,
            source=source,
            image=image,
        )
        if policy.accept(record, None if image is None else image.shape):
            records.append(record)
    return policy.finish(records)

"""Pre-cropped face cache: decode every photo once, train from small crops.

``prepare_cache`` crops a square around each face box, big enough for every
augmented crop window (see :func:`sepbn.data.transforms.required_margin`), resizes it to
``crop_size`` and stores all crops in one uint8 memory-mapped file. An index holds the
per-face landmarks in cache-crop pixels, the original -> cache matrix and everything
needed to map predictions back to the original photo, so training never decodes a
full-size photo again and evaluation still scores in original pixels.

Files in ``out_dir``:
    images.u8   ``(N, C, C, 3)`` uint8 RGB crops, raw C-order bytes (np.memmap).
    index.npz   per-face arrays (landmarks, valid, matrix, boxes, ...).
    skipped.csv every record skipped while reading the annotations and while preparing
                (see :func:`sepbn.data.errors.write_skip_csv`); header only when none.
    meta.json   protocol, geometry, count, fingerprint, the skipped records; written
                last, so a cache without it is incomplete and is rebuilt.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from sepbn.data.errors import DatasetError, OnError, SkipReport
from sepbn.data.protocols import LandmarkProtocol, get_protocol
from sepbn.data.records import FaceRecord
from sepbn.data.transforms import (
    apply_affine,
    compose_affine,
    crop_matrix,
    invert_affine,
)
from sepbn.data.validation import checked_image
from sepbn.errors import os_error_reason

logger = logging.getLogger(__name__)

CACHE_VERSION = 1
# Cache window side in base-box sides: just above required_margin(AugmentConfig(), 1.25)
# = 2.68, so no default augmented crop reaches past the cached pixels.
CACHE_MARGIN = 2.7
# 280 px for 2.7 box sides puts the 1.25-box evaluation window at 130 px, so 128 px
# network inputs are never upsampled from the cache; 235 KB per face.
CACHE_SIZE = 280


def cache_crop_size(input_size: int) -> int:
    """The cached crop side for a network input of ``input_size`` px.

    :data:`CACHE_SIZE` up to 128 px inputs, then in proportion, so that evaluation
    windows are never upsampled from the cache.
    """
    return max(CACHE_SIZE, -(-CACHE_SIZE * int(input_size) // 128))  # ceil division


_IMAGES, _INDEX, _META, _SKIPPED = "images.u8", "index.npz", "meta.json", "skipped.csv"


def _file_signature(record: FaceRecord) -> list[Any]:
    """What identifies the pixels of a record without decoding them."""
    if record.image is not None:
        img = np.ascontiguousarray(record.image)
        return [
            "array",
            list(img.shape),
            hashlib.blake2b(img.tobytes(), digest_size=16).hexdigest(),
        ]
    if record.image_path is None:
        return ["none"]
    path = Path(record.image_path)
    try:
        st = path.stat()
    except OSError:
        return [str(path), None, None]
    return [str(path.resolve()), st.st_size, st.st_mtime_ns]


def cache_fingerprint(
    records: Sequence[FaceRecord],
    protocol: LandmarkProtocol,
    crop_size: int,
    margin: float,
    skipped: SkipReport | None = None,
) -> str:
    """SHA-256 over the settings, every record's annotation and image identity, and the
    records skipped before (so the cache's list of skipped records stays true).

    Image files are identified by path, size and modification time (cheap; an edited
    photo changes its mtime); in-memory images by a hash of their pixels.
    """
    h = hashlib.sha256()
    settings = {
        "version": CACHE_VERSION,
        "protocol": protocol.to_dict(),
        "crop_size": int(crop_size),
        "margin": float(margin),
    }
    h.update(json.dumps(settings, sort_keys=True).encode())
    if skipped:  # only then: fingerprints of caches without skipped records stay as they were
        h.update(json.dumps(skipped.to_json()).encode())
    for r in records:
        meta = [r.protocol, r.source, r.domain, sorted(r.attributes.items()), _file_signature(r)]
        h.update(json.dumps(meta, default=str).encode())
        for arr in (r.landmarks, r.box, r.valid):
            h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


# The type of each meta.json entry (``skipped`` may be absent).
_META_TYPES: dict[str, type | tuple[type, ...]] = {
    "version": int,
    "protocol": dict,
    "crop_size": int,
    "margin": (int, float),
    "count": int,
    "fingerprint": str,
    "skipped": list,
}


def _read_meta(root: Path) -> dict[str, Any] | None:
    """``meta.json`` of ``root``, None when absent; its entries checked when its version is
    this one's (another version is refused by the caller, naming the version)."""
    path = root / _META
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise DatasetError(str(path), f"unreadable cache metadata: {e}") from None
    if not isinstance(meta, dict):
        raise DatasetError(
            str(path),
            f"cache metadata must be a JSON object, got {type(meta).__name__}; delete the "
            "folder or run prepare into another one",
        )
    if meta.get("version") != CACHE_VERSION:
        return meta
    for key, types in _META_TYPES.items():
        value = meta.get(key)
        if key == "skipped" and value is None:
            continue
        if not isinstance(value, types) or isinstance(value, bool):
            raise DatasetError(
                str(path),
                f"cache metadata {key!r} has the wrong type ({type(value).__name__}); "
                "delete the folder or run prepare into another one",
            )
    return meta


def crop_for_cache(image: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """Warp ``image`` with a scale-and-shift ``matrix`` to ``(size, size, 3)``, antialiased.

    When the crop shrinks the photo by more than 1.5x, the covered region is first
    area-averaged to about the target scale (bilinear warping alone would alias), and
    the remaining warp uses the exactly composed matrix, so the crop still matches
    ``matrix`` to sub-pixel accuracy.

    Shape:
        - image: ``(H, W, 3)``
        - matrix: ``(2, 3)``
        - output: ``(size, size, 3)``
    """
    scale = math.sqrt(abs(matrix[0, 0] * matrix[1, 1] - matrix[0, 1] * matrix[1, 0]))
    if scale < 1 / 1.5:
        inv = invert_affine(matrix)
        corners = apply_affine(inv, np.array([[-0.5, -0.5], [size - 0.5, size - 0.5]]))
        h, w = image.shape[:2]
        x_lo, y_lo = (int(max(0, math.floor(v) - 1)) for v in corners.min(axis=0))
        x_hi = int(min(w, math.ceil(corners[:, 0].max()) + 2))
        y_hi = int(min(h, math.ceil(corners[:, 1].max()) + 2))
        if x_hi <= x_lo or y_hi <= y_lo:
            return np.zeros((size, size, 3), dtype=np.uint8)
        region = image[y_lo:y_hi, x_lo:x_hi]
        rh, rw = region.shape[:2]
        dw, dh = max(1, round(rw * scale)), max(1, round(rh * scale))
        small = cv2.resize(region, (dw, dh), interpolation=cv2.INTER_AREA)
        # cv2.resize maps region pixel x to (x + 0.5) * dw / rw - 0.5.
        sx, sy = dw / rw, dh / rh
        pre = np.array(
            [[sx, 0.0, (0.5 - x_lo) * sx - 0.5], [0.0, sy, (0.5 - y_lo) * sy - 0.5]],
            dtype=np.float64,
        )
        image, matrix = small, compose_affine(matrix, invert_affine(pre))
    return cv2.warpAffine(
        image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
    )


class FaceCache:
    """A prepared cache opened read-only. Build one with :func:`prepare_cache`.

    Attributes:
        root: The cache folder.
        protocol: The landmark protocol of every face in it.
        crop_size: C, the side of the cached crops.
        margin: Cached window side in base-box sides (``max(w, h)`` of the face box).
        fingerprint: Hash of the inputs and settings it was built from.
        landmarks: ``(N, L, 2)`` float64 landmarks in cache-crop pixels.
        valid: ``(N, L)`` bool.
        matrix: ``(N, 2, 3)`` float64 original -> cache-crop matrices.
        orig_landmarks: ``(N, L, 2)`` float64 ground truth in original pixels.
        boxes: ``(N, 4)`` float64 face boxes in original pixels.
        domain: ``(N,)`` int64 record domain, -1 where the record had none.
        record_index: ``(N,)`` int64 position of each face in the prepared records
            (differs from the cache position when records were skipped).
        sources: Per-face ``"file:line"`` strings.
        image_paths: Per-face original image path (``""`` for in-memory images).
        attribute_names: Names of the attribute columns.
        attributes: ``(N, A)`` int8: 1 / 0, or -1 where the record lacks the attribute.
        skipped: ``[source, reason, category]`` of every record skipped while reading the
            annotations and while preparing; :meth:`skip_report` gives them as a
            :class:`~sepbn.data.errors.SkipReport`, ``skipped.csv`` in ``root`` as a table.
    """

    def __init__(self, root: Path, meta: dict[str, Any]) -> None:
        self.root = root
        self.meta = meta
        self.protocol = LandmarkProtocol.from_dict(meta["protocol"])
        self.crop_size = int(meta["crop_size"])
        self.margin = float(meta["margin"])
        self.fingerprint = str(meta["fingerprint"])
        self.skipped: list[list[str]] = meta.get("skipped", [])
        with np.load(root / _INDEX) as z:
            self.landmarks = z["landmarks"]
            self.valid = z["valid"]
            self.matrix = z["matrix"]
            self.orig_landmarks = z["orig_landmarks"]
            self.boxes = z["boxes"]
            self.domain = z["domain"]
            self.record_index = z["record_index"]
            self.sources = z["sources"].tolist()
            self.image_paths = z["image_paths"].tolist()
            self.attribute_names = z["attribute_names"].tolist()
            self.attributes = z["attributes"]
        self._images: np.ndarray | None = None

    @classmethod
    def open(cls, root: str | Path, protocol: LandmarkProtocol | str | None = None) -> FaceCache:
        """Open a prepared cache.

        Args:
            root: The folder ``prepare_cache`` wrote.
            protocol: When given, refuse a cache prepared for another protocol.

        Raises:
            DatasetError: No complete cache in ``root``, a different format version, a
                protocol mismatch, or an images file of the wrong size.
        """
        root = Path(root)
        meta = _read_meta(root)
        if meta is None:
            raise DatasetError(str(root), "no prepared face cache here (missing meta.json)")
        if meta.get("version") != CACHE_VERSION:
            raise DatasetError(
                str(root / _META),
                f"cache format version {meta.get('version')!r}, expected {CACHE_VERSION}; "
                "run prepare again",
            )
        try:
            cache = cls(root, meta)
        except (OSError, KeyError, TypeError, ValueError, zipfile.BadZipFile) as e:
            # A hand-edited protocol, or an index.npz that is missing or damaged.
            raise DatasetError(
                str(root), f"damaged or incomplete cache ({e}); run prepare again"
            ) from None
        if protocol is not None:
            want = get_protocol(protocol) if isinstance(protocol, str) else protocol
            if want != cache.protocol:
                raise DatasetError(
                    str(root),
                    f"cache was prepared for protocol {cache.protocol.name!r}, not {want.name!r}",
                )
        expected = len(cache) * cache.crop_size**2 * 3
        size = (root / _IMAGES).stat().st_size if (root / _IMAGES).exists() else -1
        if size != expected:
            raise DatasetError(
                str(root / _IMAGES), f"{size} bytes, expected {expected}; run prepare again"
            )
        return cache

    @property
    def images(self) -> np.ndarray:
        """``(N, C, C, 3)`` uint8 crops, memory-mapped on first use in each process."""
        if self._images is None:
            c = self.crop_size
            if len(self) == 0:  # an empty file cannot be memory-mapped
                return np.zeros((0, c, c, 3), dtype=np.uint8)
            self._images = np.memmap(
                self.root / _IMAGES, dtype=np.uint8, mode="r", shape=(len(self), c, c, 3)
            )
        return self._images

    def crop_boxes(self) -> np.ndarray:
        """``(N, 4)`` face boxes in cache-crop pixels (the cache matrix is scale + shift)."""
        corners = self.boxes.reshape(-1, 2, 2)  # (N, 2 corners, xy)
        return apply_affine(self.matrix, corners).reshape(-1, 4)

    def skip_report(self) -> SkipReport:
        """The skipped records (:attr:`skipped`) as a report."""
        return SkipReport.from_json(self.skipped)

    def attributes_of(self, i: int) -> dict[str, bool]:
        """The attribute dict of face ``i`` (attributes its record lacked are left out)."""
        row = self.attributes[i]
        return {n: bool(v) for n, v in zip(self.attribute_names, row) if v >= 0}

    def __len__(self) -> int:
        return int(self.meta["count"])

    def __getstate__(self) -> dict[str, Any]:
        # Worker processes re-map the file instead of pickling the pixels.
        state = self.__dict__.copy()
        state["_images"] = None
        return state

    def __repr__(self) -> str:
        return (
            f"FaceCache({str(self.root)!r}, protocol={self.protocol.name!r}, faces={len(self)}, "
            f"crop_size={self.crop_size}, margin={self.margin})"
        )


def prepare_cache(
    records: Sequence[FaceRecord],
    out_dir: str | Path,
    protocol: LandmarkProtocol | str,
    crop_size: int = CACHE_SIZE,
    margin: float = CACHE_MARGIN,
    on_error: OnError = "raise",
    progress: bool = True,
    skipped: SkipReport | None = None,
) -> FaceCache:
    """Crop every face once into a memory-mapped cache, or reuse an up-to-date one.

    Each image is decoded once and the record checked against it with
    :func:`~sepbn.data.validation.checked_image` (the rule a dataset without a cache
    applies too), and a square window of side ``margin * max(w, h)`` around the box
    centre is resized to ``crop_size``.

    Args:
        records: Faces, all of ``protocol``.
        out_dir: Cache folder (created).
        protocol: Landmark protocol of the records.
        crop_size: C, cached crop side in pixels (see :data:`CACHE_SIZE`).
        margin: Cached window side in base-box sides (see :data:`CACHE_MARGIN`); must be
            at least the training transform's :func:`required_margin`.
        on_error: ``"raise"`` on the first bad record, or ``"skip"`` it and list it in
            ``FaceCache.skipped``.
        progress: Show a tqdm progress bar.
        skipped: Records skipped while reading ``records`` (the reader's report); they are
            listed first in ``FaceCache.skipped`` and ``skipped.csv``.

    Returns:
        The opened cache.

    Raises:
        DatasetError: A bad record under ``on_error="raise"``, ``out_dir`` holds a
            cache prepared for a different protocol, or a file cannot be written (a full
            disk). Whatever stops a build, its temporary files are removed.
    """
    try:
        return _prepare_cache(
            records, out_dir, protocol, crop_size, margin, on_error, progress, skipped
        )
    except BaseException as exc:
        root = Path(out_dir)
        for name in (_IMAGES + ".tmp", _META + ".tmp"):
            with contextlib.suppress(OSError):
                (root / name).unlink(missing_ok=True)
        if isinstance(exc, OSError):  # without meta.json the folder reads as no cache
            raise DatasetError(
                str(root), f"cannot write the cache: {os_error_reason(exc)}"
            ) from exc
        raise


def _prepare_cache(
    records: Sequence[FaceRecord],
    out_dir: str | Path,
    protocol: LandmarkProtocol | str,
    crop_size: int,
    margin: float,
    on_error: OnError,
    progress: bool,
    skipped: SkipReport | None,
) -> FaceCache:
    """:func:`prepare_cache`, which removes the temporary files when this fails."""
    protocol = get_protocol(protocol) if isinstance(protocol, str) else protocol
    _check_settings(on_error, crop_size, margin)
    root = Path(out_dir)
    crop_size, margin = int(crop_size), float(margin)

    old = _read_meta(root)
    _check_same_protocol(root, old, protocol)
    fingerprint = cache_fingerprint(records, protocol, crop_size, margin, skipped)
    current = _open_if_current(root, old, fingerprint, protocol)
    if current is not None:
        return current

    root.mkdir(parents=True, exist_ok=True)
    (root / _META).unlink(missing_ok=True)  # an interrupted rebuild must not look complete
    report = SkipReport(list(skipped.skipped) if skipped is not None else [])
    tmp_images = root / (_IMAGES + ".tmp")
    kept, matrices = _write_crops(
        records, tmp_images, protocol, crop_size, margin, report, on_error, progress
    )
    _write_index(root / _INDEX, records, kept, matrices, protocol)
    os.replace(tmp_images, root / _IMAGES)
    meta = {
        "version": CACHE_VERSION,
        "protocol": protocol.to_dict(),
        "crop_size": crop_size,
        "margin": margin,
        "count": len(kept),
        "fingerprint": fingerprint,
        "skipped": report.to_json(),
    }
    report.write_csv(root / _SKIPPED)
    tmp_meta = root / (_META + ".tmp")  # meta.json last, in one rename: the cache is complete
    tmp_meta.write_text(json.dumps(meta, indent=1))
    os.replace(tmp_meta, root / _META)
    return FaceCache.open(root, protocol)


def _check_settings(on_error: OnError, crop_size: int, margin: float) -> None:
    """Refuse an unknown ``on_error``, a crop under 16 px or a window under one box side."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if int(crop_size) < 16:
        raise ValueError(f"crop_size must be >= 16, got {crop_size!r}")
    if not float(margin) >= 1.0:
        raise ValueError(f"margin must be >= 1 box side, got {margin!r}")


def _check_same_protocol(
    root: Path, old: dict[str, Any] | None, protocol: LandmarkProtocol
) -> None:
    """Refuse to overwrite a cache of another protocol (``old``: its meta.json, if any)."""
    old_protocol = old.get("protocol") if old is not None else None
    old_name = old_protocol.get("name") if isinstance(old_protocol, dict) else None
    if old is not None and old_name != protocol.name:
        raise DatasetError(
            str(root),
            f"holds a cache for protocol {old_name!r}, not "
            f"{protocol.name!r}; delete it or choose another folder",
        )


def _open_if_current(
    root: Path, old: dict[str, Any] | None, fingerprint: str, protocol: LandmarkProtocol
) -> FaceCache | None:
    """The cache in ``root`` if built from the same inputs and it opens; else None (rebuild)."""
    if old is None:
        return None
    if old.get("fingerprint") != fingerprint:
        logger.info("face cache %s is stale (inputs or settings changed); rebuilding", root)
        return None
    try:
        return FaceCache.open(root, protocol)
    except DatasetError as e:
        logger.info("rebuilding face cache %s: %s", root, e)
        return None


def _write_crops(
    records: Sequence[FaceRecord],
    path: Path,
    protocol: LandmarkProtocol,
    crop_size: int,
    margin: float,
    report: SkipReport,
    on_error: OnError,
    progress: bool,
) -> tuple[list[int], list[np.ndarray]]:
    """Decode, check and crop every record into the raw images file ``path``; a bad record
    raises or goes to ``report`` (``on_error``). Returns the positions of the records written
    and each one's original -> crop matrix."""
    read_skips = len(report)
    kept: list[int] = []
    matrices: list[np.ndarray] = []
    with (
        open(path, "wb") as out,
        tqdm(
            total=len(records),
            desc=f"prepare {protocol.name} cache",
            unit="face",
            disable=not progress,
        ) as bar,
    ):
        for i, rec in enumerate(records):
            bar.update(1)
            try:
                if rec.protocol != protocol.name:
                    raise DatasetError(
                        rec.source or f"record {i}",
                        f"protocol {rec.protocol!r}, but the cache is for {protocol.name!r}",
                    )
                image = checked_image(rec)
            except DatasetError as e:
                report.handle(e, on_error)
                continue
            matrix = crop_matrix(rec.box, crop_size, box_scale=margin)
            out.write(np.ascontiguousarray(crop_for_cache(image, matrix, crop_size)).tobytes())
            kept.append(i)
            matrices.append(matrix)
    if len(report) > read_skips:  # the reader already warned about its own
        logger.warning("%s", SkipReport(report.skipped[read_skips:]).summary())
    return kept, matrices


def _write_index(
    path: Path,
    records: Sequence[FaceRecord],
    kept: Sequence[int],
    matrices: Sequence[np.ndarray],
    protocol: LandmarkProtocol,
) -> None:
    """Write ``index.npz``: the per-face arrays of :class:`FaceCache`, of the kept records."""
    kept_recs = [records[i] for i in kept]
    num_points = protocol.num_points
    matrix_arr = np.stack(matrices) if matrices else np.zeros((0, 2, 3))
    orig = np.stack([r.landmarks for r in kept_recs]) if kept_recs else np.zeros((0, num_points, 2))
    names = sorted({k for r in kept_recs for k in r.attributes})
    attributes = np.full((len(kept_recs), len(names)), -1, dtype=np.int8)
    for row, r in enumerate(kept_recs):
        for col, n in enumerate(names):
            if n in r.attributes:
                attributes[row, col] = int(bool(r.attributes[n]))
    valid = np.stack([r.valid for r in kept_recs]) if kept_recs else np.zeros((0, num_points), bool)
    landmarks = apply_affine(matrix_arr, orig)
    landmarks[~valid] = 0.0  # unannotated points carry no position
    np.savez(
        path,
        landmarks=landmarks,
        valid=valid,
        matrix=matrix_arr,
        orig_landmarks=orig,
        boxes=np.stack([r.box for r in kept_recs]) if kept_recs else np.zeros((0, 4)),
        domain=np.array([-1 if r.domain is None else r.domain for r in kept_recs], np.int64),
        record_index=np.asarray(kept, dtype=np.int64),
        sources=np.array([r.source for r in kept_recs], dtype=str),
        image_paths=np.array([str(r.image_path or "") for r in kept_recs], dtype=str),
        attribute_names=np.array(names, dtype=str),
        attributes=attributes,
    )

"""Sanity checks on one face record, shared by every format reader and the data cache.

A record that fails a check raises :class:`~sepbn.data.errors.DatasetError` naming the
record's source (``"file:line"`` or ``"file[record i]"``) and the reason, so a bad line in a
10 000-face list gives one clear message instead of a NaN loss many epochs later.

Tolerances (documented defaults, both relative to the face box size ``max(w, h)``):

* ``box_tolerance=1.0``: a valid landmark may lie at most one box size outside the face box.
  This catches swapped ``x``/``y`` columns or boxes given as ``x, y, w, h`` where
  ``x_min, y_min, x_max, y_max`` was expected, while real annotations (ears, chins and
  profile faces outside a detector box) stay well within it.
* ``border_tolerance=0.5``: with a known image shape, a valid landmark may lie at most half a
  box size beyond the image border, and never more than half the image's larger side (so a
  huge box cannot stretch the allowance). Faces cut by the border legitimately have points a
  little outside the image (WFLW, AFLW); points further out mean the annotation belongs to
  another image or another coordinate frame. For the same reason the box must overlap the
  image and be at most :data:`BOX_IMAGE_RATIO` times the image's larger side.

:func:`checked_image` is the one rule between records and crops: the face cache
(:func:`~sepbn.data.cache.prepare_cache`) and a dataset that decodes photos on the fly
(:class:`~sepbn.data.datasets.LandmarkDataset`) both decode each image with it and check the
record against the decoded shape, so cached and uncached runs skip the same records.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sepbn.data.errors import DatasetError, OnError, SkipReport
from sepbn.data.image_io import load_image
from sepbn.data.protocols import PROTOCOLS
from sepbn.data.records import FaceRecord

BOX_TOLERANCE = 1.0
BORDER_TOLERANCE = 0.5
# A face box may be at most this many times the image's larger side.
BOX_IMAGE_RATIO = 2.0
# Domain labels: -1 (unknown) or an index of a domain BN branch (paper Sec. III-A).
MAX_DOMAIN = 2**31 - 1


def _indices(idx: np.ndarray, limit: int = 8) -> str:
    """``[3, 7, 12]`` (0-based point indices), shortened after ``limit`` entries."""
    idx = np.asarray(idx).tolist()
    more = f" and {len(idx) - limit} more" if len(idx) > limit else ""
    return f"{idx[:limit]}{more}"


def validate_record(
    record: FaceRecord,
    image_shape: tuple[int, ...] | None = None,
    *,
    box_tolerance: float = BOX_TOLERANCE,
    border_tolerance: float = BORDER_TOLERANCE,
) -> None:
    """Check that a record is usable for training and evaluation.

    Checks, in order: the protocol is known and the point count matches it; array shapes;
    the domain label is None or an integer from -1 to :data:`MAX_DOMAIN`; all landmark
    coordinates are finite (readers store 0.0 at points that are not annotated, never NaN);
    at least one point is valid; the box is finite with width and height above 1 px; valid
    points lie within ``box_tolerance`` box sizes of the box; and, when ``image_shape`` is
    given, the box overlaps the image and is at most :data:`BOX_IMAGE_RATIO` times its
    larger side, and valid points lie within ``border_tolerance`` box sizes (at most half
    the image's larger side) of the image border.

    Args:
        record: The face record.
        image_shape: ``(H, W)`` or ``(H, W, C)`` of the decoded image, when known.
        box_tolerance: Allowed distance of a valid landmark outside the box, in box sizes.
        border_tolerance: Allowed distance of a valid landmark beyond the image border, in box
            sizes.

    Shape:
        - record.landmarks: ``(L, 2)`` with ``L = protocol.num_points``.
        - record.valid, record.occluded: ``(L,)``.
        - record.box: ``(4,)`` as ``x_min, y_min, x_max, y_max``.

    Raises:
        DatasetError: The record fails a check; the message names ``record.source``.
    """
    src = record.source or "<record>"
    protocol = PROTOCOLS.get(record.protocol)
    if protocol is None:
        raise DatasetError(
            src,
            f"unknown landmark protocol {record.protocol!r}; valid: {sorted(PROTOCOLS)}",
            "unknown landmark protocol",
        )
    pts = record.landmarks
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise DatasetError(
            src, f"landmarks must have shape (L, 2), got {pts.shape}", "landmarks of wrong shape"
        )
    n = pts.shape[0]
    if n != protocol.num_points:
        raise DatasetError(
            src,
            f"{n} landmarks, but protocol {protocol.name!r} has {protocol.num_points}",
            "wrong number of landmarks",
        )
    valid = record.valid
    if valid is None or valid.shape != (n,):
        raise DatasetError(
            src,
            f"valid must have shape ({n},), got {None if valid is None else valid.shape}",
            "valid flags of wrong shape",
        )
    if record.occluded is not None and np.shape(record.occluded) != (n,):
        raise DatasetError(
            src,
            f"occluded must have shape ({n},), got {record.occluded.shape}",
            "occlusion flags of wrong shape",
        )
    domain = record.domain
    if domain is not None and (
        isinstance(domain, (bool, np.bool_))
        or not isinstance(domain, (int, np.integer))
        or not -1 <= domain <= MAX_DOMAIN
    ):
        raise DatasetError(
            src,
            f"domain must be None or an integer in -1..{MAX_DOMAIN}, got {domain!r}",
            "bad domain",
        )
    bad = ~np.isfinite(pts).all(axis=1)
    if bad.any():
        raise DatasetError(
            src,
            f"non-finite landmark coordinates at point(s) {_indices(np.flatnonzero(bad))}",
            "non-finite landmark coordinates",
        )
    if not valid.any():
        raise DatasetError(src, "no valid (annotated) landmarks")
    box = record.box
    if box.shape != (4,) or not np.isfinite(box).all():
        raise DatasetError(
            src,
            f"box must be 4 finite numbers x_min y_min x_max y_max, got {box}",
            "box not 4 finite numbers",
        )
    w, h = float(box[2] - box[0]), float(box[3] - box[1])
    if not (w > 1.0 and h > 1.0):
        raise DatasetError(
            src,
            f"degenerate box {box.tolist()} (width {w:g}, height {h:g}; both must exceed 1 px)",
            "degenerate box",
        )
    size = max(w, h)
    vp = pts[valid]
    tol = box_tolerance * size
    far = (
        (vp[:, 0] < box[0] - tol)
        | (vp[:, 0] > box[2] + tol)
        | (vp[:, 1] < box[1] - tol)
        | (vp[:, 1] > box[3] + tol)
    )
    if far.any():
        raise DatasetError(
            src,
            f"landmark(s) {_indices(np.flatnonzero(valid)[far])} lie more than "
            f"{box_tolerance:g} x the box size outside the face box {np.round(box, 1).tolist()}",
            "landmarks far outside the face box",
        )
    if image_shape is not None:
        if len(image_shape) < 2:
            raise ValueError(f"image_shape must be (H, W) or (H, W, C), got {image_shape}")
        img_h, img_w = int(image_shape[0]), int(image_shape[1])
        longest = max(img_h, img_w)
        tol = border_tolerance * min(size, longest)
        out = (
            (vp[:, 0] < -tol)
            | (vp[:, 0] > img_w - 1 + tol)
            | (vp[:, 1] < -tol)
            | (vp[:, 1] > img_h - 1 + tol)
        )
        if out.any():
            basis = "the box size" if size <= longest else "the image's larger side"
            raise DatasetError(
                src,
                f"landmark(s) {_indices(np.flatnonzero(valid)[out])} lie more than "
                f"{border_tolerance:g} x {basis} ({tol:.1f} px) outside the "
                f"{img_w}x{img_h} image",
                "landmarks far outside the image",
            )
        if size > BOX_IMAGE_RATIO * longest or not (
            box[0] < img_w and box[2] > 0 and box[1] < img_h and box[3] > 0
        ):
            raise DatasetError(
                src,
                f"face box {np.round(box, 1).tolist()} lies outside the {img_w}x{img_h} image "
                f"or is more than {BOX_IMAGE_RATIO:g} x its larger side",
                "box far outside the image",
            )


def checked_image(record: FaceRecord) -> np.ndarray:
    """The pixels of ``record``, once the record has passed every check against them.

    The image is decoded with :func:`~sepbn.data.image_io.load_image` (a JPEG that libjpeg
    calls corrupt is refused) unless the record holds its pixels, and the record is checked
    with :func:`validate_record` against the decoded shape.

    Returns:
        ``(H, W, 3)`` uint8 RGB.

    Raises:
        DatasetError: No image, an unreadable or undecodable one, or a record that fails
            :func:`validate_record`; the message names ``record.source``.
    """
    src = record.source or "<record>"
    if record.image is not None:
        image = record.image
        if not (
            isinstance(image, np.ndarray)
            and image.dtype == np.uint8
            and image.ndim == 3
            and image.shape[2] == 3
        ):
            shape = getattr(image, "shape", None)
            reason = f"in-memory image must be an (H, W, 3) uint8 array, got {shape}"
            raise DatasetError(src, reason, "in-memory image of wrong type")
    elif record.image_path is not None:
        image = load_image(record.image_path, record.source)
    else:
        raise DatasetError(src, "no image_path and no image")
    validate_record(record, image.shape)
    return image


def check_records(
    records: Sequence[FaceRecord], on_error: OnError, report: SkipReport | None = None
) -> list[int]:
    """Apply :func:`checked_image` to every record (each image is decoded once).

    Args:
        records: The faces.
        on_error: ``"raise"`` at the first bad record, or ``"skip"`` it into ``report``.
        report: Collects the skipped records.

    Returns:
        The positions of the records that passed, ascending.

    Raises:
        DatasetError: A bad record under ``on_error="raise"``.
    """
    report = SkipReport() if report is None else report
    kept = []
    for i, record in enumerate(records):
        try:
            checked_image(record)
        except DatasetError as e:
            report.handle(e, on_error)
            continue
        kept.append(i)
    return kept

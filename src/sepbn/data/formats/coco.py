"""COCO-style keypoint JSON as used by mmpose's face datasets (read and write).

Layout::

    {"images": [{"id", "file_name", "width", "height"}, ...],
     "annotations": [{"id", "image_id", "keypoints": [x, y, v] * L, "num_keypoints",
                      "bbox": [x, y, w, h], ...}, ...],
     "categories": [...]}

Keypoint coordinates are 0-based pixels and are used as they are. ``v = 0`` marks a point
that is not annotated (``valid=False``). For ``v > 0`` the meaning of 1 depends on the file:
in COCO proper 1 is "labelled but occluded" and 2 "visible", while mmpose's 300-W, WFLW and
AFLW files use 1 for every labelled point. So ``occluded`` is set from ``v == 1`` only when
the file uses ``v = 2`` somewhere (or was written by :func:`write_coco`); otherwise it is None.

Files written by :func:`write_coco` add ``info.sepbn_protocol`` and, per annotation,
``attributes`` and ``domain``, so any dataset round-trips through this format.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from sepbn.data.errors import DatasetError, SkipReport
from sepbn.data.formats._common import ErrorPolicy, check_split
from sepbn.data.protocols import get_protocol, protocol_for_num_points
from sepbn.data.records import FaceRecord, box_from_landmarks


def _load_json(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DatasetError(str(path), "annotation file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(str(path), f"annotation file unreadable: {e}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}:{e.lineno}", f"invalid JSON: {e.msg}") from None
    if not isinstance(data, dict) or not all(k in data for k in ("images", "annotations")):
        raise DatasetError(str(path), "not a COCO keypoint file: needs 'images' and 'annotations'")
    return data


def read_coco(
    path: str | Path,
    split: str | None = None,
    *,
    protocol: str | None = None,
    image_root: str | Path | None = None,
    on_error: str = "raise",
    report: SkipReport | None = None,
    check_images: bool = True,
) -> list[FaceRecord]:
    """Read a COCO/mmpose keypoint JSON into face records.

    Args:
        path: The ``.json`` file.
        split: Must be None (one file is one split).
        protocol: Protocol key of the keypoints; default: ``info.sepbn_protocol`` of files
            written by :func:`write_coco`, else inferred from the point count
            (68 -> 300w, 98 -> wflw, 29 -> cofw, 19 -> aflw, 5 -> wider5).
        image_root: Folder ``file_name`` is relative to; default: the JSON's folder.
        on_error: ``"raise"`` or ``"skip"`` bad annotations and missing images.
        report: Collects skipped records.
        check_images: Check that every referenced image file exists.

    Returns:
        One record per annotation, in file order; the box is ``bbox`` (or the landmark box
        when absent); ``source`` is ``"file[annotation i]"`` (1-based).
    """
    check_split("coco", split, (None,))
    path = Path(path)
    data = _load_json(path)
    info = data.get("info")
    if not isinstance(info, dict):
        info = {}
    ours = info.get("sepbn_protocol") is not None
    anns = data["annotations"]
    if protocol is None and ours:
        protocol = str(info["sepbn_protocol"])
    if protocol is None:
        counts = {len(a.get("keypoints", [])) // 3 for a in anns if isinstance(a, dict)}
        if len(counts) > 1:
            raise DatasetError(
                str(path),
                f"annotations have different point counts {sorted(counts)}; "
                "pass protocol= (--protocol on the command line)",
            )
        try:
            protocol = protocol_for_num_points(counts.pop()) if counts else "300w"
        except ValueError as e:
            raise DatasetError(str(path), str(e)) from None
    proto = get_protocol(protocol)
    root = Path(image_root) if image_root is not None else path.parent
    images: dict[Any, dict[str, Any]] = {}
    for i, img in enumerate(data["images"], start=1):
        if not isinstance(img, dict) or "id" not in img or "file_name" not in img:
            raise DatasetError(f"{path}[image {i}]", "image entry needs 'id' and 'file_name'")
        images[img["id"]] = img
    coco_visibility = ours or any(
        2 in a.get("keypoints", [])[2::3] for a in anns if isinstance(a, dict)
    )
    policy = ErrorPolicy.create(on_error, report, path)
    records = []
    for i, ann in enumerate(anns, start=1):
        source = f"{path}[annotation {i}]"
        try:
            record, shape = _parse_annotation(ann, images, root, proto.num_points, source)
        except DatasetError as e:
            policy.report.handle(e, policy.on_error)
            continue
        record.protocol = protocol
        if not coco_visibility:
            record.occluded = None
        image = record.image_path  # set from the annotation's file_name
        if check_images and image is not None and not policy.check_image(image, source):
            continue
        if policy.accept(record, shape):
            records.append(record)
    return policy.finish(records)


def _parse_annotation(
    ann: Any, images: dict[Any, dict[str, Any]], root: Path, num_points: int, source: str
) -> tuple[FaceRecord, tuple[int, int] | None]:
    if not isinstance(ann, dict):
        raise DatasetError(source, "annotation is not an object")
    img = images.get(ann.get("image_id"))
    if img is None:
        raise DatasetError(
            source, f"image_id {ann.get('image_id')!r} is not in 'images'", "unknown image_id"
        )
    kps = ann.get("keypoints")
    if not isinstance(kps, list) or len(kps) != 3 * num_points:
        got = len(kps) if isinstance(kps, list) else type(kps).__name__
        raise DatasetError(
            source,
            f"expected {3 * num_points} keypoint values (x, y, v), got {got}",
            "wrong number of keypoints",
        )
    try:
        kp = np.array(kps, dtype=np.float64).reshape(num_points, 3)
    except (TypeError, ValueError):
        raise DatasetError(source, "keypoints must all be numbers") from None
    if not np.isfinite(kp).all():
        raise DatasetError(source, "keypoints hold non-finite values")
    valid = kp[:, 2] > 0
    pts = np.where(valid[:, None], kp[:, :2], 0.0)
    bbox = ann.get("bbox")
    if bbox is not None:
        try:
            x, y, w, h = (float(v) for v in bbox)
        except (TypeError, ValueError):
            raise DatasetError(
                source, f"bbox must be 4 numbers [x, y, w, h], got {bbox!r}", "bad bbox"
            ) from None
        box = np.array([x, y, x + w, y + h])
    elif valid.any():
        box = box_from_landmarks(pts, valid)
    else:
        box = np.zeros(4)
    attributes = ann.get("attributes", {})
    if not isinstance(attributes, dict):
        raise DatasetError(
            source, f"attributes must be an object, got {attributes!r}", "bad attributes"
        )
    domain = ann.get("domain")
    record = FaceRecord(
        image_path=root / str(img["file_name"]),
        landmarks=pts,
        box=box,
        protocol="",
        valid=valid,
        occluded=valid & (kp[:, 2] == 1),
        attributes={str(k): bool(v) for k, v in attributes.items()},
        source=source,
        domain=None if domain is None else int(domain),
    )
    shape = None
    if "height" in img and "width" in img:
        shape = (int(img["height"]), int(img["width"]))
    return record, shape


def image_size(path: Path) -> tuple[int, int]:
    """``(height, width)`` of a PNG or JPEG from its header, else by decoding.

    Raises:
        DatasetError: The file is missing or not an image.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(64 * 1024)
    except OSError as e:
        raise DatasetError(str(path), f"image file unreadable: {e.strerror or e}") from None
    if head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) >= 24:
        w, h = struct.unpack(">II", head[16:24])
        return int(h), int(w)
    if head[:2] == b"\xff\xd8":
        i = 2
        while i + 9 < len(head):
            if head[i] != 0xFF:
                i += 1
                continue
            marker = head[i + 1]
            # SOF0..SOF15 hold the frame size; C4 (DHT), C8 (JPG), CC (DAC) do not.
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                h, w = struct.unpack(">HH", head[i + 5 : i + 9])
                return int(h), int(w)
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
                i += 2
                continue
            i += 2 + struct.unpack(">H", head[i + 2 : i + 4])[0]
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise DatasetError(str(path), "not a decodable image")
    return int(img.shape[0]), int(img.shape[1])


def write_coco(
    records: Sequence[FaceRecord],
    path: str | Path,
    image_root: str | Path | None = None,
) -> Path:
    """Write records of one protocol as a COCO/mmpose keypoint JSON.

    ``file_name`` is written relative to ``image_root`` (default: the JSON's folder), so
    :func:`read_coco` with the same ``image_root`` finds the images again. Records that hold
    their pixels in memory (COFW) get them saved as ``image_root/sepbn_<n>.png``; this needs
    ``image_root``. Visibility: ``v = 0`` not annotated, ``1`` occluded, ``2`` visible.

    Args:
        records: The faces; all must share one protocol.
        path: The ``.json`` to write.
        image_root: Folder the image names are relative to and in-memory images go to.

    Returns:
        ``path``.

    Raises:
        ValueError: Records of several protocols, or in-memory images without ``image_root``.
        DatasetError: A record has neither an image path nor pixels, or an image is unreadable.
    """
    path = Path(path)
    protocols = sorted({r.protocol for r in records})
    if len(protocols) > 1:
        raise ValueError(f"write_coco needs records of one protocol, got {protocols}")
    root = Path(image_root) if image_root is not None else path.parent
    images: list[dict[str, Any]] = []
    image_ids: dict[Path, int] = {}
    annotations = []
    for n, rec in enumerate(records, start=1):
        if rec.image_path is None:
            if rec.image is None:
                raise DatasetError(rec.source, "record has neither image_path nor image pixels")
            if image_root is None:
                raise ValueError("records with in-memory images need image_root to save them to")
            file = root / f"sepbn_{n:06d}.png"
            root.mkdir(parents=True, exist_ok=True)
            if not cv2.imwrite(str(file), cv2.cvtColor(rec.image, cv2.COLOR_RGB2BGR)):
                raise DatasetError(str(file), "could not write image")
            size: tuple[int, ...] | None = rec.image.shape[:2]
        else:
            file = Path(rec.image_path)
            size = rec.image.shape[:2] if rec.image is not None else None
        if file not in image_ids:
            h, w = size if size is not None else image_size(file)
            image_ids[file] = len(images) + 1
            name = Path(os.path.relpath(file, root)).as_posix()
            images.append({"id": image_ids[file], "file_name": name, "height": h, "width": w})
        occluded = rec.occluded if rec.occluded is not None else np.zeros(rec.num_points, bool)
        v = np.where(rec.valid, np.where(occluded, 1, 2), 0)
        kps = []
        for (x, y), vis in zip(rec.landmarks.tolist(), v.tolist()):
            kps += [x, y, vis] if vis else [0.0, 0.0, 0]
        x0, y0, x1, y1 = rec.box.tolist()
        ann: dict[str, Any] = {
            "id": n,
            "image_id": image_ids[file],
            "category_id": 1,
            "keypoints": kps,
            "num_keypoints": int(rec.valid.sum()),
            "bbox": [x0, y0, x1 - x0, y1 - y0],
            "area": (x1 - x0) * (y1 - y0),
            "iscrowd": 0,
        }
        if rec.attributes:
            ann["attributes"] = dict(rec.attributes)
        if rec.domain is not None:
            ann["domain"] = int(rec.domain)
        annotations.append(ann)
    protocol = protocols[0] if protocols else None
    num_points = get_protocol(protocol).num_points if protocol else 0
    data = {
        "info": {
            "description": "written by sepbn.data.formats.write_coco",
            "sepbn_protocol": protocol,
        },
        "images": images,
        "categories": [
            {
                "id": 1,
                "name": "face",
                "supercategory": "face",
                "keypoints": [str(i) for i in range(num_points)],
                "skeleton": [],
            }
        ],
        "annotations": annotations,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path

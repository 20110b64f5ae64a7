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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from sepbn.data.errors import DatasetError, SkipReport
from sepbn.data.formats._common import (
    ErrorPolicy,
    check_split,
    flag_field,
    int_field,
    is_key,
    numbers_field,
    show,
    text_field,
)
from sepbn.data.protocols import get_protocol, protocol_for_num_points
from sepbn.data.records import FaceRecord, box_from_landmarks


def _load_json(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DatasetError(str(path), "annotation file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        reason = f"annotation file unreadable: {' '.join(str(e).split())}"
        raise DatasetError(str(path), reason, "annotation file unreadable") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}:{e.lineno}", f"invalid JSON: {e.msg}", "invalid JSON") from None
    except RecursionError:
        raise DatasetError(str(path), "invalid JSON: nested too deeply", "invalid JSON") from None
    except ValueError as e:  # e.g. an integer of more digits than Python converts
        raise DatasetError(str(path), f"invalid JSON: {e}", "invalid JSON") from None
    if not isinstance(data, dict) or not all(k in data for k in ("images", "annotations")):
        raise DatasetError(str(path), "not a COCO keypoint file: needs 'images' and 'annotations'")
    for key in ("images", "annotations"):
        if not isinstance(data[key], list):
            reason = f"'{key}' must be a list, got {show(data[key])}"
            raise DatasetError(str(path), reason, "not a COCO keypoint file")
    return data


@dataclass(frozen=True)
class _Image:
    """An entry of ``images``: the file and, when the entry gives it, ``(H, W)``."""

    file_name: str
    shape: tuple[int, int] | None


def _parse_image(img: Any, source: str) -> tuple[Any, _Image]:
    """``(id, entry)`` of one ``images`` element, every field checked."""
    if not isinstance(img, dict) or "id" not in img or "file_name" not in img:
        raise DatasetError(source, "image entry needs 'id' and 'file_name'", "bad image entry")
    if not is_key(img["id"]):
        raise DatasetError(
            source, f"id must be an integer or a string, got {show(img['id'])}", "bad id"
        )
    name = text_field(img["file_name"], source, "file_name")
    size = {k: int_field(img[k], source, k, low=1) for k in ("height", "width") if k in img}
    shape = (size["height"], size["width"]) if len(size) == 2 else None
    return img["id"], _Image(name, shape)


def _read_images(
    entries: list[Any], path: Path, policy: ErrorPolicy
) -> dict[Any, _Image | DatasetError]:
    """``images`` by id. A bad entry is reported where it stands under ``on_error="raise"``;
    under ``"skip"`` it is kept as its error, so that each face on it is skipped with it
    (an entry without a usable id, which no face can refer to, is reported on its own).
    """
    images: dict[Any, _Image | DatasetError] = {}
    for i, img in enumerate(entries, start=1):
        source = f"{path}[image {i}]"
        try:
            image_id, entry = _parse_image(img, source)
        except DatasetError as e:
            image_id = img.get("id") if isinstance(img, dict) else None
            if policy.on_error == "raise" or not is_key(image_id):
                policy.report.handle(e, policy.on_error)
            if is_key(image_id):
                images[image_id] = e
            continue
        images[image_id] = entry
    return images


def _file_protocol(info: dict[str, Any], path: Path) -> str:
    """The protocol written by :func:`write_coco` into ``info.sepbn_protocol``."""
    name = text_field(info["sepbn_protocol"], f"{path}[info]", "sepbn_protocol")
    try:
        return get_protocol(name).name
    except ValueError as e:
        raise DatasetError(f"{path}[info]", str(e), "unknown landmark protocol") from None


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
        on_error: ``"raise"`` or ``"skip"`` bad annotations, bad image entries and missing
            images.
        report: Collects skipped records.
        check_images: Check that every referenced image file exists.

    Returns:
        One record per annotation, in file order; the box is ``bbox`` (or the landmark box
        when absent); ``source`` is ``"file[annotation i]"`` (1-based).

    Raises:
        DatasetError: The file is not a COCO keypoint JSON, or (with ``on_error="raise"``)
            a field of an annotation or image entry has the wrong type or value, naming
            ``file[annotation i]`` or ``file[image i]`` and the field.
    """
    check_split("coco", split, (None,))
    path = Path(path)
    data = _load_json(path)
    info = data.get("info")
    if not isinstance(info, dict):
        info = {}
    ours = info.get("sepbn_protocol") is not None
    anns = data["annotations"]
    keypoint_lists = [
        a["keypoints"] for a in anns if isinstance(a, dict) and isinstance(a.get("keypoints"), list)
    ]
    if protocol is None and ours:
        protocol = _file_protocol(info, path)
    if protocol is None:
        counts = {len(kps) // 3 for kps in keypoint_lists}
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
    coco_visibility = ours or any(2 in kps[2::3] for kps in keypoint_lists)
    policy = ErrorPolicy.create(on_error, report, path)
    images = _read_images(data["images"], path, policy)
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
    ann: Any, images: dict[Any, _Image | DatasetError], root: Path, num_points: int, source: str
) -> tuple[FaceRecord, tuple[int, int] | None]:
    """One ``annotations`` element as a record, every field checked (see :func:`read_coco`)."""
    if not isinstance(ann, dict):
        raise DatasetError(
            source, f"annotation must be an object, got {show(ann)}", "bad annotation"
        )
    image_id = ann.get("image_id")
    if not is_key(image_id):
        reason = f"image_id must be an integer or a string, got {show(image_id)}"
        raise DatasetError(source, reason, "bad image_id")
    img = images.get(image_id)
    if img is None:
        raise DatasetError(
            source, f"image_id {show(image_id)} is not in 'images'", "unknown image_id"
        )
    if isinstance(img, DatasetError):  # the face is lost with its bad image entry
        raise DatasetError(source, f"its image entry {img.source}: {img.reason}", img.category)
    kps = ann.get("keypoints")
    if not isinstance(kps, list) or len(kps) != 3 * num_points:
        got = len(kps) if isinstance(kps, list) else show(kps)
        raise DatasetError(
            source,
            f"expected {3 * num_points} keypoint values (x, y, v) in a list, got {got}",
            "wrong number of keypoints",
        )
    kp = numbers_field(kps, source, "keypoints").reshape(num_points, 3)
    valid = kp[:, 2] > 0
    pts = np.where(valid[:, None], kp[:, :2], 0.0)
    bbox = ann.get("bbox")
    if bbox is not None:
        x, y, w, h = numbers_field(bbox, source, "bbox", 4).tolist()
        box = np.array([x, y, x + w, y + h])
    elif valid.any():
        box = box_from_landmarks(pts, valid)
    else:
        box = np.zeros(4)
    attributes = ann.get("attributes", {})
    if not isinstance(attributes, dict):
        raise DatasetError(
            source, f"attributes must be an object, got {show(attributes)}", "bad attributes"
        )
    domain = ann.get("domain")
    record = FaceRecord(
        image_path=root / img.file_name,
        landmarks=pts,
        box=box,
        protocol="",
        valid=valid,
        occluded=valid & (kp[:, 2] == 1),
        attributes={
            str(k): flag_field(v, source, f"attributes.{k}") for k, v in attributes.items()
        },
        source=source,
        domain=None if domain is None else int_field(domain, source, "domain", low=-1),
    )
    return record, img.shape


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

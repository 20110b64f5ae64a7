"""Fit the MTFL face-box rule on 300-W faces; optionally check MTFL's coordinates.

    SEPBN_DATA=../shared/data python scripts/mtfl_box_rule.py           # the box rule
    SEPBN_DATA=../shared/data python scripts/mtfl_box_rule.py --mirror --mtcnn  # and labels

The box rule (``sepbn.data.formats.mtfl.face_box_from_five``): MTFL's 80 x 80 crops are
loose, so its readers derive the face box from the five points. The target is the box
300-W faces get, the tight box of their 68 points made square (side ``max(w, h)``, as the
transforms do). On the 1675 300-W training crops the five ``wider5`` points are derived
from the 68 (eye centres = means of points 37-42 and 43-48, nose tip = 31, mouth corners =
49 and 55, 1-based), and least squares fits

    side   = a |m - e| + b |right eye - left eye|
    centre = (e + m) / 2 + c (m - e) + d n_perp

with ``e``, ``m`` the midpoints of the eyes and of the mouth corners and ``n_perp`` the
nose tip's offset from ``(e + m) / 2`` across the eye-mouth axis. The script prints the
fitted constants and the IoU of the fitted square with the target square on the training
crops and on the held-out 300-W test faces, for the fit, for the constants hard-coded in
mtfl.py (whose squares also grow to hold all five points, which changes nothing here), and
for a baseline (side from ``|m - e|`` alone, no nose term).

``--mirror``: are MTFL's coordinates 0-based pixels? For each near-frontal face (small roll
and yaw), the column about which the face strip (eyebrows to below the mouth) best matches
its mirror image is found in the pixels, and compared with the mean x of the two eye centres
and mouth corners. Printed per MTFL part, for the 300-W training crops read as the project
reads them, and for synthetic faces with exact 0-based labels (the method's own bias).

``--mtcnn`` (needs ``sepbn[mtcnn]``, about 2 minutes on one core): per MTFL part, the five
points of MTCNN's O-Net, a detector trained on other data, against the published labels:
the median error in eye distances, the share of faces off by more than half an eye
distance, and the median shift in x and y. It finds the AFLW part's 1 px offset in both
axes and the ``net_7876/_*`` rows labelled 28 px above their face.

The findings and the choices made from them are in the docstring of
``sepbn/data/formats/mtfl.py``.
"""

from __future__ import annotations

import argparse
import os
import warnings
from pathlib import Path

import cv2
import numpy as np

from sepbn.data.formats import mtfl as mtfl_format
from sepbn.data.formats import read_mtfl, read_records
from sepbn.data.image_io import load_image
from sepbn.data.records import FaceRecord, box_from_landmarks
from sepbn.inference.face_detection.base import FaceDetectorError
from sepbn.inference.face_detection.mtcnn import MTCNNFaceDetector


def five_from_68(landmarks: np.ndarray) -> np.ndarray:
    """``(N, 68, 2)`` 300-W points -> ``(N, 5, 2)`` wider5 points."""
    return np.stack(
        [
            landmarks[:, 36:42].mean(axis=1),
            landmarks[:, 42:48].mean(axis=1),
            landmarks[:, 30],
            landmarks[:, 48],
            landmarks[:, 54],
        ],
        axis=1,
    )


def square_box(landmarks: np.ndarray) -> np.ndarray:
    """The square training box of ``(68, 2)`` points: side ``max(w, h)``, same centre."""
    x0, y0, x1, y1 = box_from_landmarks(landmarks)
    cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0) / 2
    return np.array([cx - half, cy - half, cx + half, cy + half])


def read_300w(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Five points ``(N, 5, 2)`` and target squares ``(N, 4)`` of every face under ``folder``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # images without .pts next to them are only noted
        records = read_records("pts_folder", folder, on_error="skip")
    landmarks = np.stack([r.landmarks for r in records])  # (N, 68, 2)
    return five_from_68(landmarks), np.stack([square_box(p) for p in landmarks])


def geometry(points: np.ndarray) -> dict[str, np.ndarray]:
    """What the rule is made of, per face: |m - e|, the eye distance, m - e, its unit
    vector, (e + m) / 2 and the nose tip's offset across the eye-mouth axis."""
    eyes = (points[:, 0] + points[:, 1]) / 2
    mouth = (points[:, 3] + points[:, 4]) / 2
    down = mouth - eyes  # (N, 2)
    eye_mouth = np.linalg.norm(down, axis=1)
    axis = down / eye_mouth[:, None]
    mid = (eyes + mouth) / 2
    nose = points[:, 2] - mid
    across = nose - np.sum(nose * axis, axis=1, keepdims=True) * axis
    return {
        "eye_mouth": eye_mouth,
        "eyes": np.linalg.norm(points[:, 1] - points[:, 0], axis=1),
        "down": down,
        "axis": axis,
        "mid": mid,
        "across": across,
    }


def fit_rule(points: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """Least-squares constants of the rule (see the module docstring)."""
    g = geometry(points)
    side = targets[:, 2] - targets[:, 0]
    offset = (targets[:, :2] + targets[:, 2:]) / 2 - g["mid"]  # (N, 2)
    (a, b), *_ = np.linalg.lstsq(np.stack([g["eye_mouth"], g["eyes"]], axis=1), side, rcond=None)
    # Along the axis: offset . axis = c |m - e|. Across: offset_perp = d n_perp.
    along = np.sum(offset * g["axis"], axis=1)
    c = np.sum(along * g["eye_mouth"]) / np.sum(g["eye_mouth"] ** 2)
    perp = offset - along[:, None] * g["axis"]
    d = np.sum(perp * g["across"]) / np.sum(g["across"] ** 2)
    return {"side_eye_mouth": a, "side_eyes": b, "shift_down": c, "shift_nose": d}


def rule_boxes(points: np.ndarray, k: dict[str, float]) -> np.ndarray:
    g = geometry(points)
    centre = g["mid"] + k["shift_down"] * g["down"] + k["shift_nose"] * g["across"]
    half = (k["side_eye_mouth"] * g["eye_mouth"] + k["side_eyes"] * g["eyes"])[:, None] / 2
    return np.concatenate([centre - half, centre + half], axis=1)


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lo, hi = np.maximum(a[:, :2], b[:, :2]), np.minimum(a[:, 2:], b[:, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=1)
    area = np.prod(a[:, 2:] - a[:, :2], axis=1) + np.prod(b[:, 2:] - b[:, :2], axis=1)
    return inter / (area - inter)


def iou_line(name: str, boxes: np.ndarray, targets: np.ndarray) -> str:
    v = iou(boxes, targets)
    return f"  {name:34s} mean {v.mean():.4f}  5th pct {np.percentile(v, 5):.4f}  min {v.min():.4f}"


def box_rule(data: Path) -> None:
    train_points, train_targets = read_300w(data / "300W_train_crops")
    sets = {f"300-W training crops ({len(train_points)})": (train_points, train_targets)}
    if (data / "300W").is_dir():
        test_points, test_targets = read_300w(data / "300W")
        sets[f"300-W test faces, held out ({len(test_points)})"] = (test_points, test_targets)
    fitted = fit_rule(train_points, train_targets)
    print("fitted on the 300-W training crops:")
    for key, value in fitted.items():
        print(f"  {key:15s} {value:+.4f}")
    ratio = np.median(
        (train_targets[:, 2] - train_targets[:, 0]) / geometry(train_points)["eye_mouth"]
    )
    baseline = {"side_eye_mouth": ratio, "side_eyes": 0.0, "shift_down": fitted["shift_down"]}
    baseline["shift_nose"] = 0.0
    for name, (points, targets) in sets.items():
        print(f"IoU with the square 68-point box, {name}:")
        print(iou_line("fitted constants", rule_boxes(points, fitted), targets))
        hard_coded = mtfl_format.face_box_from_five(points)
        print(iou_line("mtfl.py constants", hard_coded, targets))
        print(
            iou_line(
                f"baseline ({ratio:.2f} |m - e|, no nose)", rule_boxes(points, baseline), targets
            )
        )


def mirror_offset(gray: np.ndarray, points: np.ndarray) -> float | None:
    """Label axis minus pixel mirror axis (px) of a near-frontal face; None for other faces."""
    x, y = points[:, 0], points[:, 1]
    eyes = x[1] - x[0]
    if eyes < 8 or abs(y[1] - y[0]) > 0.05 * eyes:  # small, or rolled
        return None
    axis = (x[0] + x[1] + x[3] + x[4]) / 4
    if abs(x[2] - axis) > 0.08 * eyes or abs((x[0] + x[1] - x[3] - x[4]) / 2) > 0.08 * eyes:
        return None  # turned
    eye_mouth = (y[3] + y[4] - y[0] - y[1]) / 2
    strip = cv2.GaussianBlur(gray, (0, 0), 0.8)
    top = int(max(0, np.floor(min(y[0], y[1]) - 0.4 * eye_mouth)))
    bottom = int(min(gray.shape[0], np.ceil(max(y[3], y[4]) + 0.2 * eye_mouth)))
    strip = strip[top:bottom]  # (h, W)
    width = strip.shape[1]
    t = np.arange(0.5, 0.75 * eyes, 0.5)  # distances from the candidate axis
    candidates = axis + np.arange(-3.0, 3.0001, 0.05)
    if candidates[0] - t[-1] < 0 or candidates[-1] + t[-1] > width - 1:
        return None

    def sample(pos: np.ndarray) -> np.ndarray:  # linear interpolation along x
        i = np.floor(pos).astype(int)
        frac = pos - i
        return strip[:, i] * (1 - frac) + strip[:, np.minimum(i + 1, width - 1)] * frac

    right = sample(candidates[:, None] + t)  # (h, C, T)
    left = sample(candidates[:, None] - t)
    ssd = ((right - left) ** 2).mean(axis=(0, 2))  # (C,)
    k = int(np.argmin(ssd))
    if k in (0, len(candidates) - 1):
        return None
    # Parabola through the three best candidates.
    step = 0.5 * (ssd[k - 1] - ssd[k + 1]) / (ssd[k - 1] - 2 * ssd[k] + ssd[k + 1])
    return float(axis - (candidates[k] + 0.05 * step))


def mirror_line(name: str, faces: list[tuple[np.ndarray, np.ndarray]]) -> str:
    found = [(mirror_offset(g, p), p[1, 0] - p[0, 0]) for g, p in faces]
    v = np.array([(o, e) for o, e in found if o is not None])  # (n, 2) offset, eye distance
    n = len(v)
    se = v[:, 0].std() / np.sqrt(n)
    rel = 100 * np.mean(v[:, 0] / v[:, 1])
    mean = f"{v[:, 0].mean():+.3f} +- {se:.3f} px"
    return f"  {name:28s} {n:5d} faces  {mean}  ({rel:+.2f}% of the eye distance)"


def gray(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float64)


def mtfl_parts(data: Path) -> dict[str, list[FaceRecord]]:
    """MTFL's faces with their published coordinates, by part (image folder)."""
    parts: dict[str, list[FaceRecord]] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the warning that lists the misregistered rows
        for split in ("train", "test"):
            for r in read_mtfl(
                data / "MTFL", split, aflw_one_based=False, drop_misregistered=False
            ):
                assert r.image_path is not None
                part = r.image_path.parent.name
                if r.image_path.name.startswith("_"):
                    part += "/_*"
                parts.setdefault(part, []).append(r)
    return parts


def mirror_check(data: Path) -> None:
    print("label axis - pixel mirror axis, near-frontal faces (mean +- standard error):")
    for part, records in mtfl_parts(data).items():
        if part.endswith("_*"):
            continue  # misregistered: see --mtcnn
        faces = [(gray(load_image(r.image_path)), r.landmarks) for r in records if r.image_path]
        print(mirror_line(f"MTFL {part}, published", faces))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        crops = read_records("pts_folder", data / "300W_train_crops", on_error="skip")
    faces = [
        (gray(load_image(r.image_path)), five_from_68(r.landmarks[None])[0])
        for r in crops
        if r.image_path
    ]
    print(mirror_line("300-W training crops", faces))

    from sepbn.data.synthetic import SyntheticFaceConfig, make_synthetic_records

    frontal = SyntheticFaceConfig(
        image_size=80,
        domain_probs=(1.0, 0.0, 0.0),
        frontal_yaw=3.0,
        pitch=5.0,
        roll=2.0,
        occlusion_prob=0.0,
        blur_prob=0.0,
        light=0.0,
    )
    synthetic = make_synthetic_records(1500, protocol="wider5", seed=7, config=frontal)
    faces = [(gray(r.image), r.landmarks) for r in synthetic if r.image is not None]
    print(mirror_line("synthetic, exact 0-based", faces))


def mtcnn_points(detector: MTCNNFaceDetector, rgb: np.ndarray) -> np.ndarray | None:
    """O-Net's five points ``(5, 2)`` of the most likely face, or None when none is found.

    The 80 x 80 crop is doubled first so that P-Net's 12-pixel window fits its faces.
    """
    import torch

    # The detector keeps O-Net's points to itself; run its stages here to get them.
    from sepbn.inference.face_detection.mtcnn import _square, roi_align

    big = cv2.resize(rgb, None, fx=2.0, fy=2.0, interpolation=cv2.INTER_LINEAR)
    with torch.inference_mode():
        image = (torch.from_numpy(big).permute(2, 0, 1)[None].float() - 127.5) / 128.0
        boxes = detector._proposals(image)
        if len(boxes):
            boxes = detector._refine(image, boxes, 1)
        if not len(boxes):
            return None
        # O-Net's points are fractions of the square R-Net box it was given.
        squares = _square(boxes[:, :4])
        rois = torch.cat([squares.new_zeros(len(squares), 1), squares], dim=1)
        prob, _, points = detector.onet(roi_align(image, rois, 48, sampling_ratio=2, aligned=True))
        k = int(prob[:, 1].argmax())
        if prob[k, 1] < 0.5:
            return None
        x0, y0, x1, y1 = squares[k].tolist()
        xs = x0 + (x1 - x0) * points[k, :5].numpy()
        ys = y0 + (y1 - y0) * points[k, 5:].numpy()
    return (np.stack([xs, ys], axis=1) + 0.5) / 2.0 - 0.5  # back to the 80 x 80 pixels


def mtcnn_check(data: Path) -> None:
    """Each part's labels against MTCNN's five points (an independent 5-point detector)."""
    try:
        detector = MTCNNFaceDetector(min_face=24, max_side=0)
    except FaceDetectorError as error:
        print(f"--mtcnn skipped: {error}")
        return
    print("MTCNN's points - published labels, per part (error in eye distances):")
    for part, records in mtfl_parts(data).items():
        errors, shifts = [], []
        for r in records:
            assert r.image_path is not None
            found = mtcnn_points(detector, load_image(r.image_path))
            if found is None:
                continue
            eyes = np.linalg.norm(r.landmarks[1] - r.landmarks[0])
            errors.append(np.linalg.norm(found - r.landmarks, axis=1).mean() / eyes)
            shifts.append((found - r.landmarks).mean(axis=0))
        e, d = np.array(errors), np.median(np.array(shifts), axis=0)
        print(
            f"  {part:14s} {len(e):5d} of {len(records):5d} found  median error {np.median(e):.3f}"
            f"  error > 0.5: {np.mean(e > 0.5):6.1%}  median shift x {d[0]:+.2f} y {d[1]:+.2f} px"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, default=Path(os.environ.get("SEPBN_DATA", "../shared/data"))
    )
    parser.add_argument("--mirror", action="store_true", help="also check MTFL's pixel convention")
    parser.add_argument("--mtcnn", action="store_true", help="also check MTFL's labels with MTCNN")
    args = parser.parse_args()
    box_rule(args.data)
    if args.mirror:
        mirror_check(args.data)
    if args.mtcnn:
        mtcnn_check(args.data)


if __name__ == "__main__":
    main()

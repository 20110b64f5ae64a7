"""Fitting each detector's :class:`BoxCorrection`, and the fitted numbers shipped with sepbn.

The landmark network crops around the training box: the tight box of the ground-truth
landmarks, made square (side ``max(w, h)``, :func:`training_box`). A detector's raw box
of centre ``c`` and side ``s = sqrt(w h)`` is mapped to that convention by
``side' = scale * s`` and ``centre' = c + offset * s``. Dividing both by the target side
``t`` makes the fit independent of the face size: with ``r = s / t`` and
``d = (target centre - c) / t``, least squares gives

    scale    = sum(r) / sum(r^2)
    offset_x = sum(r d_x) / sum(r^2),   offset_y = sum(r d_y) / sum(r^2)

(residuals ``scale r - 1`` and ``d - offset r``, in target sides). It is fitted once per
detector on the 1675 300-W training crops (``benchmarks/fit_box_corrections.py``), never on
test photos, and stored in ``box_corrections.json``, which
:func:`~sepbn.inference.face_detection.base.fitted_box_correction` reads by detector name.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np

from sepbn.data.records import box_from_landmarks
from sepbn.inference.face_detection.base import BoxCorrection, FaceDetector

__all__ = [
    "BoxCorrectionFit",
    "fit_box_correction",
    "fit_box_correction_to_boxes",
    "match_detection",
    "training_box",
]


@dataclass(frozen=True)
class BoxCorrectionFit:
    """A fitted correction and how well it fits.

    Attributes:
        correction: The least-squares :class:`BoxCorrection`.
        num_faces: Faces given to the fit.
        num_found: Faces the detector found (the fit uses these only).
        side_rms: RMS of the corrected side's error, in target sides.
        centre_rms: RMS of the corrected centre's distance to the target's, in target sides.
        mean_iou: Mean IoU of the corrected boxes with the target boxes.
    """

    correction: BoxCorrection
    num_faces: int
    num_found: int
    side_rms: float
    centre_rms: float
    mean_iou: float

    def to_dict(self) -> dict[str, float | int]:
        """The JSON entry: the three correction numbers first, then the statistics."""
        out: dict[str, float | int] = {k: round(v, 5) for k, v in asdict(self.correction).items()}
        out.update(num_faces=self.num_faces, num_found=self.num_found)
        out.update(
            side_rms=round(self.side_rms, 5),
            centre_rms=round(self.centre_rms, 5),
            mean_iou=round(self.mean_iou, 5),
        )
        return out


def training_box(landmarks: np.ndarray) -> np.ndarray:
    """The square training box of ``(L, 2)`` landmarks: side ``max(w, h)``, same centre."""
    x0, y0, x1, y1 = box_from_landmarks(landmarks)
    cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0) / 2
    return np.array([cx - half, cy - half, cx + half, cy + half])


def match_detection(boxes: np.ndarray, target: np.ndarray) -> int | None:
    """Index of the box whose centre is nearest the target's centre and inside the target.

    Returns ``None`` when no box centre lies inside ``target``.
    """
    if len(boxes) == 0:
        return None
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2  # (F, 2)
    inside = np.all((centres >= target[:2]) & (centres <= target[2:]), axis=1)
    if not inside.any():
        return None
    dist = np.linalg.norm(centres - (target[:2] + target[2:]) / 2, axis=1)
    dist[~inside] = np.inf
    return int(np.argmin(dist))


def _centres_sides(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    wh = boxes[:, 2:] - boxes[:, :2]
    return (boxes[:, :2] + boxes[:, 2:]) / 2, np.sqrt(np.clip(wh[:, 0] * wh[:, 1], 0, None))


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lo, hi = np.maximum(a[:, :2], b[:, :2]), np.minimum(a[:, 2:], b[:, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=1)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    return inter / (area_a + area_b - inter)


def fit_box_correction_to_boxes(
    raw_boxes: np.ndarray, target_boxes: np.ndarray, num_faces: int | None = None
) -> BoxCorrectionFit:
    """Least-squares :class:`BoxCorrection` mapping ``raw_boxes`` onto ``target_boxes``.

    Args:
        raw_boxes: ``(N, 4)`` detector boxes ``x_min, y_min, x_max, y_max``.
        target_boxes: ``(N, 4)`` square training boxes of the same faces.
        num_faces: Faces tried, when some had no detection (default ``N``).

    Raises:
        ValueError: Fewer than 3 box pairs or mismatched shapes.
    """
    raw = np.asarray(raw_boxes, dtype=np.float64).reshape(-1, 4)
    target = np.asarray(target_boxes, dtype=np.float64).reshape(-1, 4)
    if raw.shape != target.shape:
        raise ValueError(f"raw boxes {raw.shape} and target boxes {target.shape} differ")
    if len(raw) < 3:
        raise ValueError(f"need at least 3 detected faces to fit a box correction, got {len(raw)}")
    c, s = _centres_sides(raw)
    tc = (target[:, :2] + target[:, 2:]) / 2
    t = target[:, 2] - target[:, 0]
    r = s / t  # (N,)
    d = (tc - c) / t[:, None]  # (N, 2)
    rr = np.sum(r * r)
    correction = BoxCorrection(
        scale=float(np.sum(r) / rr),
        offset_x=float(np.sum(r * d[:, 0]) / rr),
        offset_y=float(np.sum(r * d[:, 1]) / rr),
    )
    corrected = correction(raw)
    cc, cs = _centres_sides(corrected)
    return BoxCorrectionFit(
        correction=correction,
        num_faces=len(raw) if num_faces is None else int(num_faces),
        num_found=len(raw),
        side_rms=float(np.sqrt(np.mean((cs / t - 1) ** 2))),
        centre_rms=float(np.sqrt(np.mean(np.sum(((cc - tc) / t[:, None]) ** 2, axis=1)))),
        mean_iou=float(np.mean(_iou(corrected, target))),
    )


def fit_box_correction(
    detector: FaceDetector,
    images: Iterable[np.ndarray],
    target_boxes: Iterable[np.ndarray],
) -> BoxCorrectionFit:
    """Run ``detector.detect_raw`` on each image and fit its correction to the target boxes.

    A face counts as found when a raw box's centre lies inside its target box (the nearest
    such box is used); the others are left out of the fit and counted in ``num_found``.

    Args:
        detector: The detector; its raw boxes are fitted.
        images: ``(H, W, 3)`` uint8 RGB images, one face each (training crops).
        target_boxes: The square training box of each image's face (:func:`training_box`).
    """
    raws, targets, tried = [], [], 0
    for image, target in zip(images, target_boxes, strict=True):
        tried += 1
        boxes, _ = detector.detect_raw(image)
        target = np.asarray(target, dtype=np.float64)
        i = match_detection(boxes, target)
        if i is not None:
            raws.append(boxes[i])
            targets.append(target)
    return fit_box_correction_to_boxes(np.array(raws), np.array(targets), num_faces=tried)

"""Landmarks on photo files: what ``sepbn predict`` runs.

:func:`predict_photos` reads each photo, finds its faces (OpenCV's Haar cascade, or the
boxes given), predicts their landmarks with a :class:`~sepbn.inference.LandmarkDetector`,
draws them on a copy of the photo (``<stem>_landmarks.png``) and writes every result to
``landmarks.json`` in the output folder.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sepbn.data.image_io import load_image
from sepbn.data.visualize import draw_landmarks, write_png
from sepbn.inference.detector import LandmarkDetector
from sepbn.inference.face_detection import HaarFaceDetector

__all__ = ["predict_photos"]

logger = logging.getLogger(__name__)

FaceFinder = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def predict_photos(
    detector: LandmarkDetector,
    images: Sequence[str | Path],
    out_dir: str | Path,
    boxes: np.ndarray | None = None,
    face_detector: FaceFinder | None = None,
) -> dict[str, dict[str, Any]]:
    """Predict, draw and save the landmarks of every face in ``images``.

    Args:
        detector: The landmark network.
        images: Photo files.
        out_dir: Output folder (created): the drawings and ``landmarks.json``.
        boxes: ``(F, 4)`` face boxes ``x_min, y_min, x_max, y_max`` used for every photo;
            ``None`` finds the faces with ``face_detector``.
        face_detector: ``fn(rgb) -> ((F, 4) boxes, (F,) scores)``; ``None`` =
            :class:`HaarFaceDetector`.

    Returns:
        Photo path to ``{"protocol", "boxes", "landmarks"}``; photos without a face are
        reported in the log and left out.
    """
    out = Path(out_dir)
    if boxes is None and face_detector is None:
        face_detector = HaarFaceDetector()
    results: dict[str, dict[str, Any]] = {}
    for image_path in images:
        image = load_image(image_path)
        found = boxes if boxes is not None else face_detector(image)[0]  # type: ignore[misc]
        if len(found) == 0:
            logger.warning("%s: no face found (pass --box x_min,y_min,x_max,y_max)", image_path)
            continue
        landmarks = detector.predict(image, found)
        drawn = image
        radius = max(1.5, image.shape[1] / 400)
        for pts in landmarks:
            drawn = draw_landmarks(drawn, pts, radius=radius)
        png = write_png(out / f"{Path(image_path).stem}_landmarks.png", drawn)
        results[str(image_path)] = {
            "protocol": detector.protocol.name,
            "boxes": np.asarray(found).tolist(),
            "landmarks": landmarks.round(3).tolist(),
        }
        logger.info("%s: %d face(s) -> %s", image_path, len(landmarks), png)
    json_path = out / "landmarks.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=1))
    logger.info("wrote %s", json_path)
    return results

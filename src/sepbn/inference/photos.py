"""Landmarks on photo files, folders and videos: what ``sepbn predict`` runs.

:func:`predict_photos` reads each input (:mod:`sepbn.inference.inputs`), finds its faces
(the detector's face detector, or the boxes given), predicts their landmarks several photos
at a time (one network batch for all their faces) and writes each result as it comes
(:mod:`sepbn.inference.writers`). A photo that cannot be read, or whose box is wrong, is one
warning line and an ``error`` record; a photo without a face is one line and a ``no_face``
record. ``summary.json`` in the output folder counts them all, and is written on any exit.
With ``draw``, ``<name>_landmarks.jpg`` shows the faces (JPEG: a full-size PNG per photo
costs more than the landmarks).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from sepbn.data.visualize import draw_landmarks, write_jpeg
from sepbn.inference.detector import LandmarkDetector, check_boxes
from sepbn.inference.errors import InferenceError
from sepbn.inference.inputs import Frame, collect_inputs, count_frames, frames
from sepbn.inference.writers import PhotoResult, ResultWriter, open_writer

__all__ = ["PredictSummary", "predict_photos"]

logger = logging.getLogger(__name__)

#: Photos whose faces go through the network together (one batch).
BATCH_PHOTOS = 8

NO_FACE = "no face found (pass --box x_min,y_min,x_max,y_max, or try another --detector)"


@dataclass
class PredictSummary:
    """What a :func:`predict_photos` run did.

    Attributes:
        records: Photos and video frames seen.
        faces: Faces predicted.
        no_face: ``(input, reason)`` of the photos without a face.
        failed: ``(input, reason)`` of the inputs that could not be used.
        paths: The files written.
    """

    records: int = 0
    faces: int = 0
    no_face: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)
    out_dir: Path | None = None

    @property
    def ok(self) -> bool:
        """No input failed, and at least one face was found."""
        return not self.failed and self.faces > 0

    def format(self) -> str:
        """One line: counts, and the main output file."""
        text = f"{self.records} photo(s)/frame(s), {self.faces} face(s)"
        if self.no_face:
            text += f"; {len(self.no_face)} without a face"
        if self.failed:
            text += f"; {len(self.failed)} failed"
        return text + (f" -> {self.out_dir}" if self.out_dir else "")

    def to_dict(self) -> dict[str, object]:
        return {
            "records": self.records,
            "faces": self.faces,
            "no_face": [{"input": i, "reason": r} for i, r in self.no_face],
            "failed": [{"input": i, "reason": r} for i, r in self.failed],
        }


def predict_photos(
    detector: LandmarkDetector,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    boxes: np.ndarray | Mapping[str, np.ndarray] | None = None,
    fmt: str = "json",
    draw: bool = False,
    every: int = 1,
    progress: bool = False,
    batch_photos: int | None = None,
    report: Callable[[str], None] | None = None,
) -> PredictSummary:
    """Predict and save the landmarks of every face in ``inputs``.

    Args:
        detector: The landmark network and its face detector.
        inputs: Photo files, folders (searched recursively for images) and videos.
        out_dir: Output folder (created); must not be an existing file.
        boxes: ``(F, 4)`` face boxes ``x_min, y_min, x_max, y_max`` (display pixels) used
            for every photo, or per photo: a mapping from its path (as given, or its file
            name) to its boxes. A photo without boxes gets the detector's face detector.
        fmt: ``"json"``, ``"csv"`` or ``"pts"`` (see :mod:`sepbn.inference.writers`).
        draw: Also write ``<name>_landmarks.jpg`` per photo.
        every: Use every ``every``-th frame of a video.
        progress: Show a progress bar (on stderr).
        batch_photos: Photos whose faces go through the network together (default
            :data:`BATCH_PHOTOS`).
        report: Called with one line per input that failed or has no face; default: a
            warning on this module's logger.

    Returns:
        The counts; :attr:`PredictSummary.ok` is False when an input failed or no photo
        had a face.

    Raises:
        InferenceError: ``out_dir`` is a file, no input was given, a folder has no image.
    """
    out = Path(out_dir)
    batch_photos = batch_photos or BATCH_PHOTOS
    report = report or _warn
    if out.exists() and not out.is_dir():
        raise InferenceError(f"--out {out} is an existing file; give a folder for the results")
    paths = collect_inputs(inputs)
    out.mkdir(parents=True, exist_ok=True)
    summary = PredictSummary(out_dir=out)
    names = _OutputNames(paths)
    protocol = detector.protocol
    pending: list[tuple[PhotoResult, np.ndarray | None, np.ndarray, np.ndarray]] = []

    def flush(writer: ResultWriter) -> None:
        todo = [(r, img, b, s) for r, img, b, s in pending if r.status == "ok"]
        if todo:
            faces = detector.predict_many(
                [img for _, img, _, _ in todo], [b for *_, b, _ in todo], [s for *_, s in todo]
            )
            for (result, image, _, _), found in zip(todo, faces):
                result.faces = found
                summary.faces += len(found)
                if draw:
                    assert image is not None  # status "ok": the frame was read
                    drawn = write_jpeg(out / f"{result.name}_landmarks.jpg", _drawing(image, found))
                    summary.paths.append(drawn)
        for result, *_ in pending:
            writer.write(result)
        pending.clear()

    writer = open_writer(fmt, out, protocol.name, protocol.num_points)
    summary.paths.extend(writer.paths)
    try:
        total = count_frames(paths, every)
        with (
            logging_redirect_tqdm(),
            tqdm(total=total, disable=not progress, unit="img", dynamic_ncols=True) as bar,
        ):
            for frame in frames(paths, every):
                bar.update(1)
                summary.records += 1
                result, found, scores = _prepare(detector, frame, boxes, names)
                if result.status == "error":
                    summary.failed.append((_where(frame), str(result.reason)))
                    report(f"{_where(frame)}: {result.reason}")
                elif result.status == "no_face":
                    summary.no_face.append((_where(frame), str(result.reason)))
                    report(f"{_where(frame)}: {result.reason}")
                pending.append((result, frame.image, found, scores))
                faces_waiting = sum(len(p[2]) for p in pending)
                if len(pending) >= batch_photos or faces_waiting >= detector.batch_size:
                    flush(writer)
            flush(writer)
    finally:
        writer.close()
        if fmt == "pts":
            summary.paths.extend(p for p in writer.paths if p not in summary.paths)
        summary_path = out / "summary.json"
        summary_path.write_text(json.dumps(summary.to_dict(), indent=1) + "\n")
        summary.paths.append(summary_path)
    return summary


def _prepare(
    detector: LandmarkDetector,
    frame: Frame,
    boxes: np.ndarray | Mapping[str, np.ndarray] | None,
    names: _OutputNames,
) -> tuple[PhotoResult, np.ndarray, np.ndarray]:
    """The frame's pending result and its face boxes and scores (empty unless ``ok``)."""
    result = PhotoResult(str(frame.source), frame.frame, "ok", names(frame.source, frame.frame))
    empty = np.zeros((0, 4)), np.zeros(0)
    if frame.image is None:
        result.status, result.reason = "error", frame.error
        return result, *empty
    result.size = (frame.image.shape[1], frame.image.shape[0])
    if isinstance(boxes, Mapping):
        boxes = boxes.get(str(frame.source), boxes.get(frame.source.name))
    if boxes is not None:
        try:
            found = check_boxes(boxes, frame.image.shape)
        except InferenceError as exc:
            result.status, result.reason = "error", str(exc)
            return result, *empty
        return result, found, np.ones(len(found))
    found, scores = detector.detect_faces(frame.image)
    if len(found) == 0:
        result.status, result.reason = "no_face", NO_FACE
        return result, *empty
    return result, found, scores


def _warn(line: str) -> None:
    logger.warning("%s", line)


def _where(frame: Frame) -> str:
    return str(frame.source) if frame.frame is None else f"{frame.source} frame {frame.frame}"


def _drawing(image: np.ndarray, faces: Sequence) -> np.ndarray:
    """The photo with each face's landmarks and box drawn."""
    height, width = image.shape[:2]
    radius = max(1.5, width / 400)
    drawn = image
    for face in faces:
        drawn = draw_landmarks(drawn, face.landmarks, radius=radius)
        x0, y0, x1, y1 = np.clip(face.box, -1, [width, height, width, height]).round().astype(int)
        cv2.rectangle(drawn, (x0, y0), (x1, y1), (255, 200, 0), max(1, round(radius / 2)))
    return drawn


class _OutputNames:
    """A unique output name per input: its path below the inputs' common folder."""

    def __init__(self, paths: Sequence[Path]) -> None:
        parents = [str(p.resolve().parent) for p in paths]
        self.root = Path(os.path.commonpath(parents)) if parents else Path.cwd()
        self.used: set[str] = set()

    def __call__(self, path: Path, frame: int | None) -> str:
        stem = path.resolve().relative_to(self.root).with_suffix("").as_posix()
        if frame is not None:
            stem += f"_f{frame:06d}"
        name, n = stem, 1
        if name in self.used and path.suffix:
            name = f"{stem}_{path.suffix.lstrip('.').lower()}"  # photo.jpg beside photo.png
        while name in self.used:
            n += 1
            name = f"{stem}_{n}"
        self.used.add(name)
        return name

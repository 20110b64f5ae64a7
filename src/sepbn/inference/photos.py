"""Landmarks on photo files, folders and videos: what ``sepbn predict`` runs.

:func:`predict_photos` reads each input (:mod:`sepbn.inference.inputs`), finds its faces
(the detector's face detector, or the boxes given), predicts their landmarks several photos
at a time (one network batch for all their faces) and writes each result as it comes
(:mod:`sepbn.inference.writers`). A video without given boxes is followed frame by frame
instead (:class:`~sepbn.inference.tracking.FaceTracker`: the face detector every
``detect_every`` frames, a ``track_id`` per face, One Euro smoothing unless ``smooth`` is
off).

**One input never costs the others.** Whatever fails on one photo or frame (reading it,
finding its faces, its box, the network's answer for it, drawing it) becomes that photo's
``error`` record with the reason, and one warning line; a batch that fails is run again one
photo at a time, so that only the photo at fault fails. A photo without a face is a
``no_face`` record. Only a result file that cannot be written (a full disk) stops the run.

**Nothing computed is lost.** Each record is on disk as soon as it is written
(:mod:`sepbn.inference.output_files`). ``summary.json`` holds counts equal to the records
written, the photos without a face and the failed inputs with their reasons, ``complete``
and ``stopped_by``; it is replaced whole (never half written) at the start, every
:data:`SUMMARY_EVERY_S` seconds, and at the end, however the run ends: done, a full disk,
Ctrl-C or SIGTERM (with ``signals``, the first of those finishes the photos in hand first).
Only ``kill -9`` leaves it behind the records (``complete`` is then false).

**Inputs are never overwritten.** Results go to a new or empty folder, or with ``overwrite``
one that holds files, but never to one that holds an input
(:func:`~sepbn.inference.output_files.prepare_out_dir`). With ``draw``,
``<name>_landmarks.jpg`` shows the faces (JPEG: a full-size PNG per photo costs more than the
landmarks), the points coloured by confidence (red 0, yellow 0.5, green 1).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from sepbn.data.visualize import draw_landmarks
from sepbn.inference.boxes import BoxTable
from sepbn.inference.detector import LandmarkDetector, check_boxes
from sepbn.inference.errors import InferenceError, OutputError, error_reason
from sepbn.inference.face import Face
from sepbn.inference.inputs import Frame, collect_inputs, count_frames, frames
from sepbn.inference.output_files import prepare_out_dir, write_atomic
from sepbn.inference.stopping import Interrupted, StopSignals
from sepbn.inference.tracking import DETECT_EVERY, MIN_QUALITY, FaceTracker
from sepbn.inference.writers import FORMAT_ALIASES, FORMATS, PhotoResult, open_writer

__all__ = ["PredictSummary", "confidence_colours", "predict_photos"]

logger = logging.getLogger(__name__)

#: Photos whose faces go through the network together (one batch).
BATCH_PHOTOS = 8
#: Seconds between two rewrites of ``summary.json`` during a run.
SUMMARY_EVERY_S = 5.0
SUMMARY_FORMAT = "sepbn-predict-summary"

NO_FACE = "no face found (pass --box x_min,y_min,x_max,y_max, or try another --detector)"


@dataclass
class PredictSummary:
    """What a :func:`predict_photos` run did; its counts are those of the records written.

    Attributes:
        records: Photos and video frames written.
        faces: Faces written.
        no_face: ``(input, reason)`` of the photos without a face.
        failed: ``(input, reason)`` of the inputs that could not be used.
        unmatched_boxes: ``--boxes`` keys that match no input.
        paths: The files written.
        out_dir: The output folder.
        landmarks_file: ``landmarks.jsonl`` or ``landmarks.csv`` (``None`` for ``pts``).
        complete: Every input was seen.
        stopped_by: What ended the run early: ``"SIGINT"``, ``"SIGTERM"`` or an error.
    """

    records: int = 0
    faces: int = 0
    no_face: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    unmatched_boxes: list[str] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)
    out_dir: Path | None = None
    landmarks_file: Path | None = None
    complete: bool = False
    stopped_by: str | None = None

    @property
    def ok(self) -> bool:
        """Every input seen and none failed, every ``--boxes`` key used, a face found."""
        return self.complete and not self.failed and not self.unmatched_boxes and self.faces > 0

    def count(self, result: PhotoResult) -> None:
        """Add a record that was written."""
        self.records += 1
        self.faces += len(result.faces)
        if result.status == "no_face":
            self.no_face.append((_where(result), str(result.reason)))
        elif result.status == "error":
            self.failed.append((_where(result), str(result.reason)))

    def format(self) -> str:
        """One line: counts, and the output folder."""
        text = f"{self.records} photo(s)/frame(s), {self.faces} face(s)"
        if self.no_face:
            text += f"; {len(self.no_face)} without a face"
        if self.failed:
            text += f"; {len(self.failed)} failed"
        if self.unmatched_boxes:
            text += f"; {len(self.unmatched_boxes)} --boxes key(s) matched no input"
        return text + (f" -> {self.out_dir}" if self.out_dir else "")

    def to_dict(self) -> dict[str, object]:
        """``summary.json``."""
        errors, missing = len(self.failed), len(self.no_face)
        return {
            "format": SUMMARY_FORMAT,
            "complete": self.complete,
            "stopped_by": self.stopped_by,
            "records": self.records,
            "faces": self.faces,
            "status_counts": {
                "ok": self.records - errors - missing,
                "no_face": missing,
                "error": errors,
            },
            "no_face": [{"input": i, "reason": r} for i, r in self.no_face],
            "failed": [{"input": i, "reason": r} for i, r in self.failed],
            "unmatched_boxes": self.unmatched_boxes,
            "landmarks_file": self.landmarks_file.name if self.landmarks_file else None,
        }


def predict_photos(
    detector: LandmarkDetector,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    boxes: np.ndarray | Mapping[str, np.ndarray] | None = None,
    fmt: str = "jsonl",
    draw: bool = False,
    every: int = 1,
    progress: bool = False,
    batch_photos: int | None = None,
    report: Callable[[str], None] | None = None,
    overwrite: bool = False,
    signals: bool = False,
    detect_every: int = DETECT_EVERY,
    smooth: bool = True,
    min_quality: float = MIN_QUALITY,
) -> PredictSummary:
    """Predict and save the landmarks of every face in ``inputs``.

    Args:
        detector: The landmark network and its face detector.
        inputs: Photo files, folders (searched recursively for images) and videos.
        out_dir: Output folder (created): new or empty, unless ``overwrite``.
        boxes: ``(F, 4)`` face boxes ``x_min, y_min, x_max, y_max`` (display pixels) used
            for every photo, or per photo: a mapping from its path (as given, or its file
            name) to its boxes. A photo without boxes gets the detector's face detector.
        fmt: ``"jsonl"`` (or ``"json"``), ``"csv"`` or ``"pts"``
            (see :mod:`sepbn.inference.writers`).
        draw: Also write ``<name>_landmarks.jpg`` per photo.
        every: Use every ``every``-th frame of a video.
        progress: Show a progress bar (on stderr).
        batch_photos: Photos whose faces go through the network together (default
            :data:`BATCH_PHOTOS`).
        report: Called with one line per input that failed or has no face, and per
            ``--boxes`` key that matches no input; default: a warning on this module's logger.
        overwrite: Write into a folder that already holds files.
        signals: Handle SIGINT and SIGTERM (main thread only): the first finishes the photos
            in hand and returns, with :attr:`PredictSummary.stopped_by` set.
        detect_every: On a video without given boxes, the faces are followed from frame to
            frame (:class:`~sepbn.inference.tracking.FaceTracker`, ``track_id`` in the
            records) and the face detector runs every ``detect_every`` frames (and when a
            face's quality drops); 1 detects on every frame.
        smooth: One Euro filter on the followed faces' points (videos only).
        min_quality: A followed face whose quality falls below it sends its frame back to
            the face detector.

    Returns:
        The counts; :attr:`PredictSummary.ok` is False when an input failed, a ``--boxes``
        key matched nothing, the run was stopped, or no photo had a face.

    Raises:
        InferenceError: A bad argument, or an output folder that cannot be used (before
            anything is written); no input, a folder without images.
        OutputError: A result could not be written (a full disk); what was written stays,
            and the summary says so when it can still be written.
        KeyboardInterrupt: Ctrl-C (or a second signal); the summary is written first.
    """
    out = Path(out_dir)
    report = report or _warn
    if every < 1:
        raise InferenceError(f"--every must be >= 1, got {every}")
    if FORMAT_ALIASES.get(fmt, fmt) not in FORMATS:
        raise InferenceError(f"unknown output format {fmt!r}; valid: {[*FORMATS, *FORMAT_ALIASES]}")
    table = BoxTable(boxes) if isinstance(boxes, Mapping) else None
    given = None if boxes is None or table is not None else np.asarray(boxes, np.float64)
    paths = collect_inputs(inputs, exclude=out)
    if given is None and (table is None or any(table.get(p) is None for p in paths)):
        _ = detector.face_detector  # built now: a missing package is one error, not one a photo
    stop = StopSignals()
    with contextlib.ExitStack() as stack:
        if signals:
            stack.enter_context(stop)
        before = prepare_out_dir(out, paths, overwrite)
        if before:
            report(
                f"--out {out} held {len(before)} file(s) before this run; it writes over those "
                "it writes again, and leaves the others"
            )
        summary = PredictSummary(out_dir=out)
        if table is not None:
            summary.unmatched_boxes = table.unmatched(paths)
            for key in summary.unmatched_boxes:
                report(f"--boxes: {key!r} matches no input (use a photo's path or file name)")
        run = _Run(detector, out, fmt, draw, summary, stop, report)
        FaceTracker(detector, detect_every, min_quality, smooth)  # bad options fail now
        run.tracking = {"detect_every": detect_every, "smooth": smooth, "min_quality": min_quality}
        run.run(paths, table if table is not None else given, every, progress, batch_photos)
    return summary


@dataclass
class _Pending:
    """A prepared photo waiting for its batch: its result, photo, boxes and scores."""

    result: PhotoResult
    image: np.ndarray | None
    boxes: np.ndarray
    scores: np.ndarray


class _Run:
    """One :func:`predict_photos` run: the batch in hand, the writer and the summary."""

    def __init__(
        self,
        detector: LandmarkDetector,
        out: Path,
        fmt: str,
        draw: bool,
        summary: PredictSummary,
        stop: StopSignals,
        report: Callable[[str], None],
    ) -> None:
        self.detector, self.out, self.draw = detector, out, draw
        self.summary, self.stop, self.report = summary, stop, report
        protocol = detector.protocol
        schemes = (
            {}
            if detector.protocols == [protocol.name]
            else {name: detector.heads[name] for name in detector.protocols}
        )
        self.writer = open_writer(fmt, out, protocol.name, protocol.num_points, schemes)
        summary.landmarks_file = self.writer.path
        self.summary_path = out / "summary.json"
        summary.paths.extend([*self.writer.paths, self.summary_path])
        self.pending: list[_Pending] = []
        self.summary_written = 0.0
        self.tracking: dict[str, Any] = {"detect_every": DETECT_EVERY, "smooth": True}
        self._tracker: tuple[Path, FaceTracker] | None = None

    def run(
        self,
        paths: Sequence[Path],
        boxes: BoxTable | np.ndarray | None,
        every: int,
        progress: bool,
        batch_photos: int | None,
    ) -> None:
        """Every frame of ``paths``; the summary is written however this ends."""
        summary = self.summary
        failure: OutputError | None = None
        try:
            self._write_summary()
            self._loop(paths, boxes, every, progress, batch_photos or BATCH_PHOTOS)
            summary.complete = self.stop.signum is None
            summary.stopped_by = self.stop.signal_name
        except KeyboardInterrupt as exc:
            signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
            summary.stopped_by = signal.Signals(signum).name
            raise
        except OutputError as exc:
            failure = exc
            summary.stopped_by = f"error: {exc}"
        except Exception as exc:  # a bug: its traceback follows, after the summary
            summary.stopped_by = f"error: {type(exc).__name__}: {exc}"
            raise
        finally:
            self.writer.close()
            known = set(summary.paths)
            summary.paths.extend(p for p in self.writer.paths if p not in known)
            try:
                self._write_summary()
                summary_note = ""
            except OutputError as exc:
                summary_note = f"; {self.summary_path.name} not updated ({exc.reason})"
        if failure is not None:
            kept = self.writer.path or self.out
            raise OutputError(
                failure.path,
                f"{failure.reason}; the {summary.records} record(s) before it are whole in "
                f"{kept}{summary_note}",
            )

    def _loop(
        self,
        paths: Sequence[Path],
        boxes: BoxTable | np.ndarray | None,
        every: int,
        progress: bool,
        batch_photos: int,
    ) -> None:
        names = _OutputNames(paths)
        total = count_frames(paths, every)
        with (
            logging_redirect_tqdm(),
            tqdm(total=total, disable=not progress, unit="img", dynamic_ncols=True) as bar,
        ):
            for frame in frames(paths, every):
                if self.stop.signum is not None:
                    break
                bar.update(1)
                given = boxes.get(frame.source) if isinstance(boxes, BoxTable) else boxes
                if frame.time is not None and frame.image is not None and given is None:
                    self._flush()  # the photos before it first: records stay in input order
                    self._track(frame, names(frame.source, frame.frame))
                    continue
                result, found, scores = _prepare(self.detector, frame, boxes, names)
                self.pending.append(_Pending(result, frame.image, found, scores))
                faces_waiting = sum(len(p.boxes) for p in self.pending)
                if len(self.pending) >= batch_photos or faces_waiting >= self.detector.batch_size:
                    self._flush()
            self._flush()

    def _flush(self) -> None:
        """Predict the batch in hand, draw it, and write its records."""
        todo = [p for p in self.pending if p.result.status == "ok"]
        for item, outcome in zip(todo, self._predict(todo)):
            if isinstance(outcome, str):
                item.result.status, item.result.reason = "error", outcome
                continue
            item.result.faces = outcome
            if self.draw:
                self._draw(item)
        for item in self.pending:
            self._write(item.result)
        self.pending.clear()
        if time.monotonic() - self.summary_written > SUMMARY_EVERY_S:
            self._write_summary()

    def _track(self, frame: Frame, name: str) -> None:
        """A video frame: its faces followed from the previous frame's, written at once."""
        assert frame.image is not None and frame.time is not None
        result = PhotoResult(str(frame.source), frame.frame, "ok", name)
        result.size = (frame.image.shape[1], frame.image.shape[0])
        if self._tracker is None or self._tracker[0] != frame.source:  # a new video
            self._tracker = (frame.source, FaceTracker(self.detector, **self.tracking))
        try:
            faces = self._tracker[1](frame.image, frame.time)
        except Exception as exc:  # this frame's, not the run's; the next starts afresh
            result.status, result.reason = "error", error_reason(exc)
            self._tracker = None
        else:
            bad = _non_finite(faces)
            if bad:
                result.status, result.reason = "error", bad
            elif not faces:
                result.status, result.reason = "no_face", NO_FACE
            else:
                result.faces = faces
                if self.draw:
                    self._draw(_Pending(result, frame.image, np.zeros((0, 4)), np.zeros(0)))
        self._write(result)

    def _predict(self, todo: Sequence[_Pending]) -> list[list[Face] | str]:
        """Per photo, its faces or why they cannot be had; one failing photo fails alone."""
        if not todo:
            return []
        try:
            found = self.detector.predict_many(
                [p.image for p in todo], [p.boxes for p in todo], [p.scores for p in todo]
            )
        except Exception as exc:  # whose? run the photos one at a time to know
            if len(todo) == 1:
                return [error_reason(exc)]
            return [outcome for item in todo for outcome in self._predict([item])]
        return [_non_finite(faces) or faces for faces in found]

    def _draw(self, item: _Pending) -> None:
        assert item.image is not None  # status "ok": the frame was read
        try:
            data = _jpeg(_drawing(item.image, item.result.faces))
        except Exception as exc:  # this photo's drawing, not the run
            item.result.status = "error"
            item.result.reason = f"the drawing failed: {error_reason(exc)}"
            return
        path = self.out / f"{item.result.name}_landmarks.jpg"
        self.summary.paths.append(write_atomic(path, data))

    def _write(self, result: PhotoResult) -> None:
        with self.stop.deferred():  # the record and its count, or neither
            self.writer.write(result)
            self.summary.count(result)
        if result.status != "ok":
            self.report(f"{_where(result)}: {result.reason}")

    def _write_summary(self) -> None:
        with self.stop.deferred():
            text = json.dumps(self.summary.to_dict(), indent=1) + "\n"
            write_atomic(self.summary_path, text.encode())
        self.summary_written = time.monotonic()


def _prepare(
    detector: LandmarkDetector,
    frame: Frame,
    boxes: BoxTable | np.ndarray | None,
    names: _OutputNames,
) -> tuple[PhotoResult, np.ndarray, np.ndarray]:
    """The frame's pending result and its face boxes and scores (empty unless ``ok``)."""
    result = PhotoResult(str(frame.source), frame.frame, "ok", names(frame.source, frame.frame))
    empty = np.zeros((0, 4)), np.zeros(0)
    if frame.image is None:
        result.status, result.reason = "error", frame.error
        return result, *empty
    result.size = (frame.image.shape[1], frame.image.shape[0])
    try:
        given = boxes.get(frame.source) if isinstance(boxes, BoxTable) else boxes
        if given is not None:
            found = check_boxes(given, frame.image.shape)
            return result, found, np.ones(len(found))
        found, scores = detector.detect_faces(frame.image)
    except Exception as exc:  # this photo's box or detection, not the run
        result.status, result.reason = "error", error_reason(exc)
        return result, *empty
    if len(found) == 0:
        result.status, result.reason = "no_face", NO_FACE
        return result, *empty
    return result, found, scores


def _non_finite(faces: Sequence[Face]) -> str | None:
    """Why faces cannot be written as numbers (NaN or inf in them), or None."""
    for face in faces:
        values = (face.landmarks, face.box, face.score, face.quality)
        if not all(np.isfinite(v).all() for v in values):
            return "the prediction holds NaN or inf (the network's output, or the face detector's)"
    return None


def _warn(line: str) -> None:
    logger.warning("%s", line)


def _where(result: PhotoResult) -> str:
    return result.image if result.frame is None else f"{result.image} frame {result.frame}"


def _jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    """An RGB photo encoded as JPEG, for a Python file write (OpenCV's ``imwrite`` crashes on
    file names that are not UTF-8)."""
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise InferenceError(f"OpenCV could not encode a {image.shape[1]}x{image.shape[0]} JPEG")
    return data.tobytes()


def confidence_colours(confidence: np.ndarray) -> np.ndarray:
    """``(L, 3)`` uint8 RGB per point: red at confidence 0, yellow at 0.5, green at 1."""
    c = np.clip(np.nan_to_num(np.asarray(confidence, np.float64), nan=0.0), 0.0, 1.0)
    red = np.clip(2.0 * (1.0 - c), 0.0, 1.0)
    green = np.clip(2.0 * c, 0.0, 1.0)
    return np.round(255 * np.stack([red, green, np.zeros_like(c)], axis=1)).astype(np.uint8)


def _drawing(image: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
    """The photo with each face's box and landmarks drawn, each point coloured by its
    confidence (:func:`confidence_colours`; green without one)."""
    height, width = image.shape[:2]
    radius = max(1.5, width / 400)
    drawn = image
    for face in faces:
        if face.confidence is None:
            drawn = draw_landmarks(drawn, face.landmarks, radius=radius)
        else:
            colours = confidence_colours(face.confidence)
            for colour in np.unique(colours, axis=0):
                same = (colours == colour).all(axis=1)
                rgb = (int(colour[0]), int(colour[1]), int(colour[2]))
                drawn = draw_landmarks(drawn, face.landmarks, rgb, radius=radius, valid=same)
        x0, y0, x1, y1 = np.clip(face.box, -1, [width, height, width, height]).round().astype(int)
        cv2.rectangle(drawn, (x0, y0), (x1, y1), (255, 200, 0), max(1, round(radius / 2)))
    return drawn


class _OutputNames:
    """A unique output name per input: its path below the inputs' common folder.

    Paths are made absolute without following symbolic links (a link loop has no target).
    """

    def __init__(self, paths: Sequence[Path]) -> None:
        parents = [os.path.dirname(os.path.abspath(p)) for p in paths]
        self.root = Path(os.path.commonpath(parents)) if parents else Path.cwd()
        self.used: set[str] = set()

    def __call__(self, path: Path, frame: int | None) -> str:
        absolute = Path(os.path.abspath(path))
        stem = absolute.relative_to(self.root).with_suffix("").as_posix()
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

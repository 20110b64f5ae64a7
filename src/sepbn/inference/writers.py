"""``sepbn predict``'s output files, written as results come (a crash keeps what is done).

Every writer gets one :class:`PhotoResult` at a time and flushes it to disk at once:

- ``json``: ``landmarks.json``, ``{"format": "sepbn-landmarks", "protocol", "num_points",
  "records": [...]}`` with one record per photo or video frame: ``image``, ``frame``
  (``null`` for a photo), ``status`` (``ok``, ``no_face`` or ``error``), ``reason``,
  ``width``, ``height`` and ``faces``, a list of ``{"box", "score", "quality",
  "landmarks"}`` (0-based pixels of the photo as displayed). The closing brackets are
  written on any exit, exceptions and Ctrl-C included.
- ``csv``: ``landmarks.csv``, one row per face (``image, frame, status, reason, face,
  score, quality, box_x0..box_y1, x0, y0, ..., x{L-1}, y{L-1}``), one row with empty face
  columns for a photo without a face or that failed.
- ``pts``: one 300-W ``.pts`` file per face (``version: 1``, ``n_points: L``, 1-based
  coordinates, as the 300-W scorers read), named after the photo (``<name>.pts`` for its
  first face, ``<name>_2.pts``, ... for the others).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from sepbn.inference.detector import Face
from sepbn.inference.errors import InferenceError

__all__ = ["FORMATS", "PhotoResult", "ResultWriter", "open_writer", "pts_text"]

FORMATS = ("json", "csv", "pts")


@dataclass
class PhotoResult:
    """The outcome for one photo or video frame.

    Attributes:
        image: The input file.
        frame: Video frame index, ``None`` for a photo.
        status: ``"ok"``, ``"no_face"`` or ``"error"``.
        name: Unique output name (drawings, ``.pts`` files), without suffix.
        faces: The faces found.
        reason: Why there is no face, or what failed.
        size: ``(width, height)`` of the decoded photo, when it was decoded.
    """

    image: str
    frame: int | None
    status: str
    name: str
    faces: list[Face] = field(default_factory=list)
    reason: str | None = None
    size: tuple[int, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        width, height = self.size if self.size else (None, None)
        return {
            "image": self.image,
            "frame": self.frame,
            "status": self.status,
            "reason": self.reason,
            "width": width,
            "height": height,
            "faces": [face.to_dict() for face in self.faces],
        }


class ResultWriter:
    """Base writer: ``write(result)`` per photo, ``close()`` once (also as a context manager)."""

    def __init__(self, out_dir: Path, protocol: str, num_points: int) -> None:
        self.out_dir = out_dir
        self.protocol = protocol
        self.num_points = num_points
        self.paths: list[Path] = []

    def write(self, result: PhotoResult) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Finish the files; safe to call twice."""

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class JsonWriter(ResultWriter):
    """``landmarks.json``, one record appended (and flushed) per photo."""

    def __init__(self, out_dir: Path, protocol: str, num_points: int) -> None:
        super().__init__(out_dir, protocol, num_points)
        path = out_dir / "landmarks.json"
        self.paths.append(path)
        self._file: IO[str] | None = path.open("w")
        head = {"format": "sepbn-landmarks", "protocol": protocol, "num_points": num_points}
        self._file.write(json.dumps(head)[:-1] + ', "records": [')
        self._count = 0

    def write(self, result: PhotoResult) -> None:
        assert self._file is not None, "write after close"
        self._file.write(("," if self._count else "") + "\n" + json.dumps(result.to_dict()))
        self._file.flush()
        self._count += 1

    def close(self) -> None:
        if self._file is not None:
            self._file.write("\n]}\n")
            self._file.close()
            self._file = None


class CsvWriter(ResultWriter):
    """``landmarks.csv``, one row per face (or per photo without one)."""

    def __init__(self, out_dir: Path, protocol: str, num_points: int) -> None:
        super().__init__(out_dir, protocol, num_points)
        path = out_dir / "landmarks.csv"
        self.paths.append(path)
        self._file: IO[str] | None = path.open("w", newline="")
        self._csv = csv.writer(self._file)
        points = [f"{axis}{i}" for i in range(num_points) for axis in ("x", "y")]
        self._csv.writerow(
            ["image", "frame", "status", "reason", "face", "score", "quality"]
            + ["box_x0", "box_y0", "box_x1", "box_y1", *points]
        )

    def write(self, result: PhotoResult) -> None:
        assert self._file is not None, "write after close"
        head = [result.image, "" if result.frame is None else result.frame, result.status]
        head.append(result.reason or "")
        if not result.faces:
            self._csv.writerow([*head, "", "", "", *[""] * (4 + 2 * self.num_points)])
        for i, face in enumerate(result.faces):
            numbers = [f"{v:.2f}" for v in (*face.box, *face.landmarks.reshape(-1))]
            self._csv.writerow([*head, i, f"{face.score:.4f}", f"{face.quality:.4f}", *numbers])
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class PtsWriter(ResultWriter):
    """One 300-W ``.pts`` file per face."""

    def write(self, result: PhotoResult) -> None:
        for i, face in enumerate(result.faces):
            suffix = "" if i == 0 else f"_{i + 1}"
            path = self.out_dir / f"{result.name}{suffix}.pts"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(pts_text(face.landmarks))
            self.paths.append(path)


def pts_text(landmarks: np.ndarray) -> str:
    """The 300-W ``.pts`` text of ``(L, 2)`` 0-based landmarks (written 1-based)."""
    rows = "".join(f"{x + 1:.3f} {y + 1:.3f}\n" for x, y in np.asarray(landmarks, np.float64))
    return f"version: 1\nn_points:  {len(landmarks)}\n{{\n{rows}}}\n"


def open_writer(fmt: str, out_dir: Path, protocol: str, num_points: int) -> ResultWriter:
    """The writer of ``fmt`` (one of :data:`FORMATS`) into ``out_dir``."""
    writers = {"json": JsonWriter, "csv": CsvWriter, "pts": PtsWriter}
    if fmt not in writers:
        raise InferenceError(f"unknown output format {fmt!r}; valid: {list(FORMATS)}")
    return writers[fmt](out_dir, protocol, num_points)

"""``sepbn predict``'s output files, written as results come, and the reader of the landmarks.

Every writer gets one :class:`PhotoResult` at a time and puts it on disk at once, in a way a
kill cannot cut (:mod:`sepbn.inference.output_files`):

- ``jsonl`` (the default; ``json`` is the same): ``landmarks.jsonl``, JSON Lines. The first
  line is ``{"format": "sepbn-landmarks", "version": 2, "protocol", "num_points"}``, then one
  line per photo or video frame: ``image``, ``frame`` (``null`` for a photo), ``status``
  (``ok``, ``no_face`` or ``error``), ``reason``, ``width``, ``height`` and ``faces``, a list
  of ``{"box", "score", "quality", "landmarks"}`` (0-based pixels of the photo as
  displayed). Each line is one write: a run stopped any way (Ctrl-C, ``kill``, a full disk)
  leaves every line it finished, and at most a cut last line, which :func:`read_landmarks`
  leaves out and says so. (Earlier versions wrote one JSON document, ``landmarks.json``,
  which a kill left unreadable; :func:`read_landmarks` reads both.)
- ``csv``: ``landmarks.csv``, one row per face (``image, frame, status, reason, face,
  score, quality, box_x0..box_y1, x0, y0, ..., x{L-1}, y{L-1}``), one row with empty face
  columns for a photo without a face or that failed; each photo's rows are one write.
- ``pts``: one 300-W ``.pts`` file per face (``version: 1``, ``n_points: L``, 1-based
  coordinates, as the 300-W scorers read), named after the photo (``<name>.pts`` for its
  first face, ``<name>_2.pts``, ... for the others), each written whole or not at all.
"""

from __future__ import annotations

import csv
import io
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sepbn.inference.detector import Face
from sepbn.inference.errors import InferenceError
from sepbn.inference.output_files import LineFile, write_atomic

__all__ = [
    "FORMATS",
    "FORMAT_ALIASES",
    "LandmarksFile",
    "PhotoResult",
    "ResultWriter",
    "open_writer",
    "pts_text",
    "read_landmarks",
]

FORMATS = ("jsonl", "csv", "pts")
#: Other names of a format: ``json`` is what ``landmarks.json`` was written with.
FORMAT_ALIASES = {"json": "jsonl"}
LANDMARKS_FORMAT = "sepbn-landmarks"
LANDMARKS_VERSION = 2


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
    """Base writer: ``write(result)`` per photo, ``close()`` once (also as a context manager).

    Attributes:
        path: The file holding all results (``None`` for one file per face).
        paths: Every file written.
    """

    def __init__(self, out_dir: Path, protocol: str, num_points: int) -> None:
        self.out_dir = out_dir
        self.protocol = protocol
        self.num_points = num_points
        self.path: Path | None = None
        self.paths: list[Path] = []

    def write(self, result: PhotoResult) -> None:
        """Put ``result`` on disk.

        Raises:
            OutputError: The disk is full or not writable; what was written before stays.
        """
        raise NotImplementedError

    def close(self) -> None:
        """Finish the files; safe to call twice, never raises."""

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class JsonLinesWriter(ResultWriter):
    """``landmarks.jsonl``: a header line, then one line per photo."""

    def __init__(self, out_dir: Path, protocol: str, num_points: int) -> None:
        super().__init__(out_dir, protocol, num_points)
        self.path = out_dir / "landmarks.jsonl"
        self.paths.append(self.path)
        self._file = LineFile(self.path)
        head = {
            "format": LANDMARKS_FORMAT,
            "version": LANDMARKS_VERSION,
            "protocol": protocol,
            "num_points": num_points,
        }
        self._file.append(json.dumps(head) + "\n")

    def write(self, result: PhotoResult) -> None:
        # ensure_ascii (the default) keeps any file name, UTF-8 or not, one ASCII line
        self._file.append(json.dumps(result.to_dict(), allow_nan=False) + "\n")

    def close(self) -> None:
        self._file.close()


class CsvWriter(ResultWriter):
    """``landmarks.csv``, one row per face (or per photo without one)."""

    def __init__(self, out_dir: Path, protocol: str, num_points: int) -> None:
        super().__init__(out_dir, protocol, num_points)
        self.path = out_dir / "landmarks.csv"
        self.paths.append(self.path)
        self._file = LineFile(self.path)
        points = [f"{axis}{i}" for i in range(num_points) for axis in ("x", "y")]
        self._file.append(
            _csv_rows(
                [
                    ["image", "frame", "status", "reason", "face", "score", "quality"]
                    + ["box_x0", "box_y0", "box_x1", "box_y1", *points]
                ]
            )
        )

    def write(self, result: PhotoResult) -> None:
        head = [result.image, "" if result.frame is None else result.frame, result.status]
        head.append(result.reason or "")
        rows: list[list[Any]] = []
        if not result.faces:
            rows.append([*head, "", "", "", *[""] * (4 + 2 * self.num_points)])
        for i, face in enumerate(result.faces):
            numbers = [f"{v:.2f}" for v in (*face.box, *face.landmarks.reshape(-1))]
            rows.append([*head, i, f"{face.score:.4f}", f"{face.quality:.4f}", *numbers])
        self._file.append(_csv_rows(rows))

    def close(self) -> None:
        self._file.close()


def _csv_rows(rows: list[list[Any]]) -> str:
    text = io.StringIO()
    csv.writer(text).writerows(rows)
    return text.getvalue()


class PtsWriter(ResultWriter):
    """One 300-W ``.pts`` file per face."""

    def write(self, result: PhotoResult) -> None:
        for i, face in enumerate(result.faces):
            suffix = "" if i == 0 else f"_{i + 1}"
            path = self.out_dir / f"{result.name}{suffix}.pts"
            self.paths.append(write_atomic(path, pts_text(face.landmarks).encode()))


def pts_text(landmarks: np.ndarray) -> str:
    """The 300-W ``.pts`` text of ``(L, 2)`` 0-based landmarks (written 1-based)."""
    rows = "".join(f"{x + 1:.3f} {y + 1:.3f}\n" for x, y in np.asarray(landmarks, np.float64))
    return f"version: 1\nn_points:  {len(landmarks)}\n{{\n{rows}}}\n"


def open_writer(fmt: str, out_dir: Path, protocol: str, num_points: int) -> ResultWriter:
    """The writer of ``fmt`` (one of :data:`FORMATS` or :data:`FORMAT_ALIASES`) into ``out_dir``.

    Raises:
        InferenceError: An unknown format.
        OutputError: The file cannot be created.
    """
    writers: dict[str, type[ResultWriter]] = {
        "jsonl": JsonLinesWriter,
        "csv": CsvWriter,
        "pts": PtsWriter,
    }
    fmt = FORMAT_ALIASES.get(fmt, fmt)
    if fmt not in writers:
        valid = [*FORMATS, *FORMAT_ALIASES]
        raise InferenceError(f"unknown output format {fmt!r}; valid: {valid}")
    return writers[fmt](out_dir, protocol, num_points)


@dataclass
class LandmarksFile:
    """The content of a ``landmarks.jsonl`` (or an older ``landmarks.json``).

    Attributes:
        path: The file read.
        protocol: The landmark protocol key.
        num_points: L.
        records: One dict per photo or video frame (see the module docstring).
        cut: The last line was cut short (the run was stopped while writing it) and is left
            out.
    """

    path: Path
    protocol: str
    num_points: int
    records: list[dict[str, Any]]
    cut: bool = False


def read_landmarks(path: str | Path) -> LandmarksFile:
    """Read the landmarks a ``sepbn predict`` run wrote, whole or cut short.

    Args:
        path: ``landmarks.jsonl``, an older ``landmarks.json``, or the output folder.

    Returns:
        The header fields and the records. A last line cut short by a kill or a full disk
        is left out, with a warning that says so (``cut`` is then True).

    Raises:
        InferenceError: No such file, or a file that is not sepbn's landmarks (naming the
            line).
    """
    path = Path(path)
    if path.is_dir():
        found = [path / n for n in ("landmarks.jsonl", "landmarks.json") if (path / n).is_file()]
        if not found:
            raise InferenceError(f"{path}: no landmarks.jsonl in this folder")
        path = found[0]
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InferenceError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if path.suffix.lower() == ".json":
        return _read_json_document(path, data)
    lines = data.split(b"\n")
    last = lines.pop()  # b"" after the final newline of a whole file
    cut = False
    if last.strip():
        try:
            json.loads(last)
            lines.append(last)  # whole, only the newline is missing
        except ValueError:
            cut = True
    values = []
    for number, line in enumerate(lines, 1):
        try:
            values.append(json.loads(line))
        except ValueError as exc:
            raise InferenceError(f"{path}:{number}: not a JSON line: {exc}") from None
    if not values or not isinstance(values[0], dict) or values[0].get("format") != LANDMARKS_FORMAT:
        raise InferenceError(f"{path}:1: not a sepbn landmarks file (no {LANDMARKS_FORMAT} header)")
    head, records = values[0], values[1:]
    if cut:
        warnings.warn(
            f"{path}: line {len(lines) + 1} is cut short (the run was stopped while writing "
            f"it) and is left out; the {len(records)} record(s) before it are whole",
            stacklevel=2,
        )
    return _landmarks_file(path, head, records, cut)


def _read_json_document(path: Path, data: bytes) -> LandmarksFile:
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise InferenceError(
            f"{path}: not valid JSON ({exc}); sepbn now writes landmarks.jsonl, which a "
            "stopped run leaves readable"
        ) from None
    if not isinstance(doc, dict) or doc.get("format") != LANDMARKS_FORMAT:
        raise InferenceError(f"{path}: not a sepbn landmarks file")
    return _landmarks_file(path, doc, doc.get("records"), False)


def _landmarks_file(path: Path, head: dict[str, Any], records: Any, cut: bool) -> LandmarksFile:
    protocol, num_points = head.get("protocol"), head.get("num_points")
    if not isinstance(protocol, str) or not isinstance(num_points, int):
        raise InferenceError(f"{path}: the header has no protocol or num_points")
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise InferenceError(f"{path}: the records are not JSON objects")
    return LandmarksFile(path, protocol, num_points, records, cut)

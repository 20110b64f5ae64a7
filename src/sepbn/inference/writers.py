"""``sepbn predict``'s output files, written as results come, and the reader of the landmarks.

Every writer gets one :class:`PhotoResult` at a time and puts it on disk at once, in a way a
kill cannot cut (:mod:`sepbn.inference.output_files`):

- ``jsonl`` (the default; ``json`` is the same): ``landmarks.jsonl``, JSON Lines. The first
  line is ``{"format": "sepbn-landmarks", "version": 2, "protocol", "num_points"}`` (and
  ``"schemes": {name: L}`` when several landmark schemes were asked for), then one
  line per photo or video frame: ``image``, ``frame`` (``null`` for a photo), ``status``
  (``ok``, ``no_face`` or ``error``), ``reason``, ``width``, ``height`` and ``faces``, a list
  of ``{"box", "score", "quality", "landmarks", "confidence"}`` (0-based pixels of the photo
  as displayed; ``confidence``: one number in ``[0, 1]`` per point), with several schemes
  also ``"schemes": {name: {"landmarks", "confidence"}}``. Each line is one write: a run
  stopped any way (Ctrl-C, ``kill``, a full disk)
  leaves every line it finished, and at most a cut last line, which :func:`read_landmarks`
  leaves out and says so. (Earlier versions wrote one JSON document, ``landmarks.json``,
  which a kill left unreadable; :func:`read_landmarks` reads both.)
- ``csv``: ``landmarks.csv``, one row per face (``image, frame, status, reason, face,
  score, quality, box_x0..box_y1, x0, y0, ..., x{L-1}, y{L-1}, c0, ..., c{L-1}``, ``c`` the
  point confidences; each further scheme adds ``<scheme>_x0, <scheme>_y0, ...`` and
  ``<scheme>_c0, ...``), one row with empty face columns for a photo without a face or that
  failed; each photo's rows are one write.
- ``pts``: one 300-W ``.pts`` file per face (``version: 1``, ``n_points: L``, 1-based
  coordinates, as the 300-W scorers read), named after the photo (``<name>.pts`` for its
  first face, ``<name>_2.pts``, ... for the others), each written whole or not at all;
  beside each, ``<name>_confidence.txt`` with one point confidence a line (``.pts`` has no
  room for it). Each further scheme writes ``<name>.<scheme>.pts`` and
  ``<name>.<scheme>_confidence.txt``.
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

from sepbn.inference.errors import InferenceError
from sepbn.inference.face import Face
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

    def __init__(
        self, out_dir: Path, protocol: str, num_points: int, schemes: dict[str, int] | None = None
    ) -> None:
        self.out_dir = out_dir
        self.protocol = protocol
        self.num_points = num_points
        #: Scheme -> L of the further schemes each face carries (not ``protocol``).
        self.schemes = dict(schemes or {})
        self.extra = {n: L for n, L in self.schemes.items() if n != protocol}
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


class _OneFileWriter(ResultWriter):
    """A writer whose results all go, appended as lines, to one file ``out_dir/file_name``."""

    file_name = ""

    def __init__(
        self, out_dir: Path, protocol: str, num_points: int, schemes: dict[str, int] | None = None
    ) -> None:
        super().__init__(out_dir, protocol, num_points, schemes)
        self.path = out_dir / self.file_name
        self.paths.append(self.path)
        self._file = LineFile(self.path)

    def close(self) -> None:
        self._file.close()


class JsonLinesWriter(_OneFileWriter):
    """``landmarks.jsonl``: a header line, then one line per photo."""

    file_name = "landmarks.jsonl"

    def __init__(
        self, out_dir: Path, protocol: str, num_points: int, schemes: dict[str, int] | None = None
    ) -> None:
        super().__init__(out_dir, protocol, num_points, schemes)
        head: dict[str, Any] = {
            "format": LANDMARKS_FORMAT,
            "version": LANDMARKS_VERSION,
            "protocol": protocol,
            "num_points": num_points,
        }
        if self.schemes:
            head["schemes"] = self.schemes
        self._file.append(json.dumps(head) + "\n")

    def write(self, result: PhotoResult) -> None:
        # ensure_ascii (the default) keeps any file name, UTF-8 or not, one ASCII line
        self._file.append(json.dumps(result.to_dict(), allow_nan=False) + "\n")


class CsvWriter(_OneFileWriter):
    """``landmarks.csv``, one row per face (or per photo without one)."""

    file_name = "landmarks.csv"

    def __init__(
        self, out_dir: Path, protocol: str, num_points: int, schemes: dict[str, int] | None = None
    ) -> None:
        super().__init__(out_dir, protocol, num_points, schemes)
        columns = _point_columns("", num_points)
        for name, count in self.extra.items():
            columns += _point_columns(f"{name}_", count)
        self._file.append(
            _csv_rows(
                [
                    ["image", "frame", "status", "reason", "face", "score", "quality"]
                    + ["box_x0", "box_y0", "box_x1", "box_y1", *columns]
                ]
            )
        )
        self._width = 4 + len(columns)

    def write(self, result: PhotoResult) -> None:
        head = [result.image, "" if result.frame is None else result.frame, result.status]
        head.append(result.reason or "")
        rows: list[list[Any]] = []
        if not result.faces:
            rows.append([*head, "", "", "", *[""] * self._width])
        for i, face in enumerate(result.faces):
            numbers = [f"{v:.2f}" for v in face.box]
            numbers += _point_values(face.landmarks, face.confidence)
            for name in self.extra:
                numbers += _point_values(
                    face.schemes[name].landmarks, face.schemes[name].confidence
                )
            rows.append([*head, i, f"{face.score:.4f}", f"{face.quality:.4f}", *numbers])
        self._file.append(_csv_rows(rows))


def _point_columns(prefix: str, num_points: int) -> list[str]:
    """``x0, y0, ..., x{L-1}, y{L-1}, c0, ..., c{L-1}``, each name after ``prefix``."""
    xy = [f"{prefix}{axis}{i}" for i in range(num_points) for axis in ("x", "y")]
    return xy + [f"{prefix}c{i}" for i in range(num_points)]


def _point_values(landmarks: np.ndarray, confidence: np.ndarray | None) -> list[str]:
    """The cells of :func:`_point_columns` (an unknown confidence is an empty cell)."""
    cells = [f"{v:.2f}" for v in landmarks.reshape(-1)]
    if confidence is None:
        return cells + [""] * len(landmarks)
    return cells + [f"{c:.3f}" for c in confidence]


def _csv_rows(rows: list[list[Any]]) -> str:
    text = io.StringIO()
    csv.writer(text).writerows(rows)
    return text.getvalue()


class PtsWriter(ResultWriter):
    """One 300-W ``.pts`` file per face."""

    def write(self, result: PhotoResult) -> None:
        for i, face in enumerate(result.faces):
            stem = result.name + ("" if i == 0 else f"_{i + 1}")
            self._write_points(stem, face.landmarks, face.confidence)
            for name in self.extra:
                points = face.schemes[name]
                self._write_points(f"{stem}.{name}", points.landmarks, points.confidence)

    def _write_points(
        self, stem: str, landmarks: np.ndarray, confidence: np.ndarray | None
    ) -> None:
        self.paths.append(write_atomic(self.out_dir / f"{stem}.pts", pts_text(landmarks).encode()))
        if confidence is not None:
            text = "".join(f"{c:.3f}\n" for c in confidence)
            self.paths.append(write_atomic(self.out_dir / f"{stem}_confidence.txt", text.encode()))


def pts_text(landmarks: np.ndarray) -> str:
    """The 300-W ``.pts`` text of ``(L, 2)`` 0-based landmarks (written 1-based)."""
    rows = "".join(f"{x + 1:.3f} {y + 1:.3f}\n" for x, y in np.asarray(landmarks, np.float64))
    return f"version: 1\nn_points:  {len(landmarks)}\n{{\n{rows}}}\n"


def open_writer(
    fmt: str, out_dir: Path, protocol: str, num_points: int, schemes: dict[str, int] | None = None
) -> ResultWriter:
    """The writer of ``fmt`` (one of :data:`FORMATS` or :data:`FORMAT_ALIASES`) into ``out_dir``.

    ``schemes`` (scheme -> L) are the schemes each face carries in :attr:`Face.schemes`;
    ``None`` or empty when only ``protocol`` was asked for.

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
    return writers[fmt](out_dir, protocol, num_points, schemes)


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

"""``sepbn predict``'s inputs: files, folders (recursive) and videos -> a stream of frames.

Each yielded :class:`Frame` is one photo or one video frame, decoded, or carrying the reason
it could not be (a missing, empty, truncated, corrupt or non-image file), so the caller
reports it in one line and carries on with the rest.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from sepbn.data.errors import DatasetError
from sepbn.inference.errors import InferenceError
from sepbn.inference.image_input import as_rgb

__all__ = ["IMAGE_SUFFIXES", "VIDEO_SUFFIXES", "Frame", "collect_inputs", "count_frames", "frames"]

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"})


@dataclass
class Frame:
    """One photo, or one frame of a video.

    Attributes:
        source: The file it came from.
        frame: The 0-based frame index in a video; ``None`` for a photo.
        image: ``(H, W, 3)`` uint8 RGB, or ``None`` when it could not be read.
        error: Why it could not be read (``None`` when it could).
    """

    source: Path
    frame: int | None
    image: np.ndarray | None
    error: str | None = None


def is_video(path: Path) -> bool:
    """Whether ``path`` is read as a video (by its suffix)."""
    return path.suffix.lower() in VIDEO_SUFFIXES


def collect_inputs(paths: Sequence[str | Path]) -> list[Path]:
    """Files as given, folders expanded to their images (recursively, sorted by path).

    A path that does not exist is kept: reading it yields a frame with that error.

    Raises:
        InferenceError: No input at all, or a folder without any image.
    """
    files: list[Path] = []
    for item in map(Path, paths):
        if item.is_dir():
            found = sorted(
                p for p in item.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
            )
            if not found:
                suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
                raise InferenceError(f"{item}: no image files ({suffixes}) in this folder")
            files.extend(found)
        else:
            files.append(item)
    if not files:
        raise InferenceError("no input photos given")
    return files


def count_frames(paths: Sequence[Path], every: int) -> int:
    """How many frames :func:`frames` yields (for a progress bar); videos by their header."""
    total = 0
    for path in paths:
        if is_video(path):
            capture = cv2.VideoCapture(str(path))
            count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if capture.isOpened() else 0
            capture.release()
            total += max(1, -(-count // every))
        else:
            total += 1
    return total


def frames(paths: Sequence[Path], every: int = 1) -> Iterator[Frame]:
    """Decode every photo and every ``every``-th frame of every video, in order."""
    if every < 1:
        raise InferenceError(f"--every must be >= 1, got {every}")
    for path in paths:
        if is_video(path):
            yield from _video_frames(path, every)
            continue
        try:
            yield Frame(path, None, as_rgb(path))
        except DatasetError as exc:
            yield Frame(path, None, None, exc.reason)


def _video_frames(path: Path, every: int) -> Iterator[Frame]:
    if not path.is_file():
        yield Frame(path, None, None, "video file not found")
        return
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            yield Frame(path, None, None, "not a video OpenCV can open")
            return
        index = 0
        while True:
            if index % every:
                if not capture.grab():  # skipped frames are not decoded
                    break
            else:
                ok, bgr = capture.read()
                if not ok:
                    break
                yield Frame(path, index, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            index += 1
        if index == 0:
            yield Frame(path, None, None, "the video has no readable frame")
    finally:
        capture.release()

"""``sepbn predict``'s inputs: files, folders (recursive) and videos -> a stream of frames.

Each yielded :class:`Frame` is one photo or one video frame, decoded, or carrying the reason
it could not be (a missing, empty, truncated, corrupt or non-image file, an image larger than
OpenCV decodes, a symbolic link loop, a video that ends before the frame count its header
declares), so the caller reports it in one line and carries on with the rest.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from sepbn.inference.errors import InferenceError, error_reason
from sepbn.inference.image_input import as_rgb

__all__ = ["IMAGE_SUFFIXES", "VIDEO_SUFFIXES", "Frame", "collect_inputs", "count_frames", "frames"]

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)
#: Frames per second of a video whose file does not say.
DEFAULT_FPS = 30.0
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"})


@dataclass
class Frame:
    """One photo, or one frame of a video.

    Attributes:
        source: The file it came from.
        frame: The 0-based frame index in a video; ``None`` for a photo.
        image: ``(H, W, 3)`` uint8 RGB, or ``None`` when it could not be read.
        error: Why it could not be read (``None`` when it could).
        time: A video frame's time in seconds (its index / the video's frame rate, 30 when
            the file does not say); ``None`` for a photo.
    """

    source: Path
    frame: int | None
    image: np.ndarray | None
    error: str | None = None
    time: float | None = None


def is_video(path: Path) -> bool:
    """Whether ``path`` is read as a video (by its suffix)."""
    return path.suffix.lower() in VIDEO_SUFFIXES


def collect_inputs(paths: Sequence[str | Path], exclude: Path | None = None) -> list[Path]:
    """Files as given, folders expanded to their images (recursively, sorted by path).

    A path that does not exist is kept: reading it yields a frame with that error.

    Args:
        paths: Files and folders.
        exclude: A folder whose images a folder search skips (the output folder, so that a
            second run does not read the first run's drawings as photos).

    Raises:
        InferenceError: No input at all, or a folder without any image.
    """
    files: list[Path] = []
    for item in map(Path, paths):
        if item.is_dir():
            skip = None
            if exclude is not None and _strictly_inside(exclude, item):
                skip = os.path.abspath(exclude)
            found = sorted(
                p
                for p in item.rglob("*")
                if p.suffix.lower() in IMAGE_SUFFIXES
                and p.is_file()
                and not (skip and Path(os.path.abspath(p)).is_relative_to(skip))
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


def _strictly_inside(path: Path, folder: Path) -> bool:
    inner, outer = Path(os.path.abspath(path)), Path(os.path.abspath(folder))
    return inner != outer and inner.is_relative_to(outer)


def count_frames(paths: Sequence[Path], every: int) -> int:
    """How many frames :func:`frames` yields (for a progress bar); videos by their header."""
    if every < 1:
        raise InferenceError(f"--every must be >= 1, got {every}")
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
            image = as_rgb(path)
        except Exception as exc:  # any failure is this photo's, not the run's
            yield Frame(path, None, None, _link_problem(path) or error_reason(exc))
        else:
            yield Frame(path, None, image)


def _link_problem(path: Path) -> str | None:
    """Why a symbolic link cannot be read (a loop, a missing target), or None."""
    if not path.is_symlink() or path.exists():
        return None
    try:
        path.resolve(strict=True)
    except RuntimeError:  # Python < 3.13 reports a loop so
        return "a symbolic link loop"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a symbolic link loop"
    return f"a symbolic link to {os.readlink(path)}, which does not exist"


def _video_frames(path: Path, every: int) -> Iterator[Frame]:
    if not path.is_file():
        yield Frame(path, None, None, _link_problem(path) or "video file not found")
        return
    capture = cv2.VideoCapture(str(path))
    index = 0
    try:
        if not capture.isOpened():
            yield Frame(path, None, None, "not a video OpenCV can open")
            return
        declared = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        fps = capture.get(cv2.CAP_PROP_FPS)
        fps = fps if np.isfinite(fps) and fps > 0 else DEFAULT_FPS
        while True:
            if index % every:
                if not capture.grab():  # skipped frames are not decoded
                    break
            else:
                ok, bgr = capture.read()
                if not ok:
                    break
                rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                yield Frame(path, index, rgb, time=index / fps)
            index += 1
    except Exception as exc:  # a decoder error ends this video, not the run
        yield Frame(path, index, None, f"frame {index} cannot be read: {error_reason(exc)}")
        return
    finally:
        capture.release()
    if index == 0:
        yield Frame(path, None, None, "the video has no readable frame")
    elif index < declared - max(2, declared // 100):  # counts estimated from the duration err
        yield Frame(
            path,
            None,
            None,
            f"the video ends after {index} of the {declared} frames its header declares "
            "(a cut or damaged file?); the frames before are kept",
        )

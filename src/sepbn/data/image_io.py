"""Image reading that fails with a clear :class:`DatasetError` instead of a deep traceback."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import cv2
import numpy as np

from sepbn.data.errors import DatasetError

# JPEG files end with the EOI marker; a missing marker means a truncated download.
_JPEG_SOI = b"\xff\xd8\xff"
_JPEG_EOI = b"\xff\xd9"
_PNG_IEND = b"IEND"


def _content_problem(head: bytes, tail: bytes) -> tuple[str, str] | None:
    """``(category, reason)`` when the first and last bytes of a file show it is no image."""
    if not head:
        return "image file is empty", "image file is empty"
    if head[:3] == b"\xff\xd8\xff" and _JPEG_EOI not in tail[-64:]:
        return "image file is truncated", "image file is truncated (no JPEG end marker)"
    if head[:8] == b"\x89PNG\r\n\x1a\n" and _PNG_IEND not in tail[-16:]:
        return "image file is truncated", "image file is truncated (no PNG end marker)"
    return None


def image_file_problem(path: str | Path) -> tuple[str, str] | None:
    """Why ``path`` is not a usable image file, from its first and last bytes only.

    A cheap check for the format readers: missing, unreadable, empty, or a JPEG / PNG cut
    short. Decoding (and the errors only it finds) is left to :func:`load_image`.

    Returns:
        ``(category, reason)`` for :class:`DatasetError`, or None when the file looks fine.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            size = f.seek(0, 2)
            f.seek(max(0, size - 64))
            tail = f.read()
    except FileNotFoundError:
        return "image file not found", "image file not found"
    except OSError as e:
        return "image file unreadable", f"image file unreadable: {e.strerror or e}"
    except ValueError as e:  # a NUL character in the path
        return "image file unreadable", f"image file unreadable: {e}"
    return _content_problem(head, tail)


def _decode_capturing_stderr(data: bytes, flags: int) -> tuple[np.ndarray | None, str]:
    """``cv2.imdecode``, with what the C decoder printed on file descriptor 2.

    libjpeg reports a corrupt entropy-coded segment only as a warning on stderr ("Corrupt
    JPEG data: ...") and returns an image whose lower part is grey; OpenCV gives no other
    sign of it, so the warning is the only way to tell such a file from a good one.
    """
    with tempfile.TemporaryFile() as captured:
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        message = captured.read().decode("utf-8", "replace").strip()
    return image, message


def load_image(
    path: str | Path,
    source: str = "",
    *,
    exif_orientation: bool = False,
    strict: bool = True,
) -> np.ndarray:
    """Read an image file as ``(H, W, 3)`` uint8 RGB (grayscale is expanded to 3 channels).

    16-bit images are scaled by 255 / 65535, an alpha channel is dropped.

    Args:
        path: The image file.
        source: Where the reference to the image came from (``"list.txt:12"``), for errors.
        exif_orientation: Turn the pixels as a JPEG's EXIF orientation tag says, so that they
            are what a photo viewer shows (phone photos). Off for datasets, whose
            annotations refer to the stored pixels.
        strict: Treat a JPEG that libjpeg decodes only with a "Corrupt JPEG data" warning
            (its lower part comes out grey) as undecodable. On by default, so that
            ``predict``, ``prepare``, ``train`` and ``eval`` refuse the same files.

    Raises:
        DatasetError: The file is missing, empty, truncated, corrupt, too large for OpenCV
            or not a decodable image.
    """
    path = Path(path)
    where = f"{source} ({path})" if source else str(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DatasetError(where, "image file not found") from None
    except IsADirectoryError:
        raise DatasetError(where, "is a folder, not an image file") from None
    except OSError as e:
        raise DatasetError(
            where, f"image file unreadable: {e.strerror or e}", "image file unreadable"
        ) from None
    except ValueError as e:  # a NUL character in the path
        raise DatasetError(where, f"image file unreadable: {e}", "image file unreadable") from None
    problem = _content_problem(data[:8], data[-64:])
    if problem is not None:
        category, reason = problem
        raise DatasetError(where, reason, category)
    # IMREAD_UNCHANGED ignores the EXIF orientation; ANYCOLOR | ANYDEPTH applies it and
    # still keeps 16 bits and grayscale (it drops alpha, which is dropped below anyway).
    flags = cv2.IMREAD_ANYCOLOR | cv2.IMREAD_ANYDEPTH if exif_orientation else cv2.IMREAD_UNCHANGED
    try:
        if strict and data[:3] == _JPEG_SOI:
            img, warning = _decode_capturing_stderr(data, flags)
            if img is not None and "corrupt" in warning.lower():
                reason = f"corrupt JPEG data ({warning.splitlines()[0]})"
                raise DatasetError(where, reason, "corrupt JPEG data")
        else:
            img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    except cv2.error as e:  # e.g. more pixels than OpenCV's CV_IO_MAX_IMAGE_PIXELS
        detail = " ".join(str(e).split())
        raise DatasetError(
            where, f"not a decodable image ({detail})", "not a decodable image"
        ) from None
    if img is None:
        raise DatasetError(where, "not a decodable image")
    if img.dtype == np.uint16:
        img = cv2.convertScaleAbs(img, alpha=255.0 / 65535.0)
    elif img.dtype != np.uint8:
        img = cv2.convertScaleAbs(img, alpha=255.0 / max(float(img.max()), 1.0))
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)

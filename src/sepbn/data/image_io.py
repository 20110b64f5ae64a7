"""Image reading that fails with a clear :class:`DatasetError` instead of a deep traceback."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from sepbn.data.errors import DatasetError

# JPEG files end with the EOI marker; a missing marker means a truncated download.
_JPEG_EOI = b"\xff\xd9"
_PNG_IEND = b"IEND"


def _looks_truncated(path: Path, data: bytes) -> bool:
    if data[:3] == b"\xff\xd8\xff":
        return _JPEG_EOI not in data[-64:]
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return _PNG_IEND not in data[-16:]
    return False


def load_image(path: str | Path, source: str = "") -> np.ndarray:
    """Read an image file as ``(H, W, 3)`` uint8 RGB (grayscale is expanded to 3 channels).

    Args:
        path: The image file.
        source: Where the reference to the image came from (``"list.txt:12"``), for errors.

    Raises:
        DatasetError: The file is missing, empty, truncated or not a decodable image.
    """
    path = Path(path)
    where = f"{source} ({path})" if source else str(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DatasetError(where, "image file not found") from None
    except OSError as e:
        raise DatasetError(where, f"image file unreadable: {e.strerror or e}") from None
    if not data:
        raise DatasetError(where, "image file is empty")
    if _looks_truncated(path, data):
        raise DatasetError(where, "image file is truncated (no end marker)")
    img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise DatasetError(where, "not a decodable image")
    if img.dtype != np.uint8:
        img = cv2.convertScaleAbs(img, alpha=255.0 / max(float(img.max()), 1.0))
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)

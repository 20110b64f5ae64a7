"""Whatever a user calls a photo -> ``(H, W, 3)`` uint8 RGB, the one form the pipeline uses.

A path is read with :func:`sepbn.data.image_io.load_image` with the EXIF orientation applied
(so pixels, boxes and landmarks are in the coordinates a photo viewer shows) and a strict
JPEG decode (a file libjpeg calls corrupt is refused, not decoded half grey). Arrays may be
RGB ``(H, W, 3)``, RGBA ``(H, W, 4)`` (alpha dropped) or gray ``(H, W)``, in uint8, uint16
(scaled by 255 / 65535) or float in ``[0, 1]``. A PIL image is accepted when PIL is
installed; sepbn itself never imports PIL.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sepbn.data.image_io import load_image
from sepbn.inference.errors import InferenceError

__all__ = ["ImageLike", "as_rgb"]

#: A path, an ``np.ndarray`` or a ``PIL.Image.Image``.
ImageLike = Any  # str | Path | np.ndarray | PIL.Image.Image (PIL is optional)


def as_rgb(image: ImageLike) -> np.ndarray:
    """The photo as a C-contiguous ``(H, W, 3)`` uint8 RGB array.

    Raises:
        DatasetError: A path that is missing, empty, truncated, corrupt or not an image.
        InferenceError: An array of a shape or dtype that is not an image.
    """
    if isinstance(image, (str, Path)):
        return load_image(image, exif_orientation=True, strict=True)
    if type(image).__module__.startswith("PIL."):
        return _from_pil(image)
    if not isinstance(image, np.ndarray):
        raise InferenceError(
            f"expected a path, an np.ndarray or a PIL image, got {type(image).__name__}"
        )
    return _from_array(image)


def _from_pil(image: Any) -> np.ndarray:
    from PIL import ImageOps  # present: the caller passed a PIL image

    return _from_array(np.asarray(ImageOps.exif_transpose(image).convert("RGB")))


def _from_array(array: np.ndarray) -> np.ndarray:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise InferenceError(
            f"an image array must be (H, W) gray, (H, W, 3) RGB or (H, W, 4) RGBA, "
            f"got shape {array.shape}"
        )
    if min(array.shape[:2]) == 0:
        raise InferenceError(f"the image array is empty (shape {array.shape})")
    if array.dtype == np.uint16:
        array = (array.astype(np.float32) * (255.0 / 65535.0)).round().astype(np.uint8)
    elif np.issubdtype(array.dtype, np.floating):
        array = (np.clip(array, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    elif array.dtype != np.uint8:
        raise InferenceError(
            f"image arrays must be uint8, uint16 or float in [0, 1], got {array.dtype}"
        )
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    return np.ascontiguousarray(array[..., :3])

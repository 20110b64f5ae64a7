"""Landmark drawing and image grids: augmentation previews, predicted-vs-true figures.

All images are RGB uint8 in memory; :func:`write_png` converts to BGR for OpenCV.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

Color = tuple[int, int, int]
GREEN: Color = (0, 255, 0)
RED: Color = (255, 0, 0)

_SHIFT = 4  # cv2 drawing with 4 fractional bits places points to 1/16 pixel
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def draw_landmarks(
    image: np.ndarray,
    landmarks: np.ndarray,
    color: Color = GREEN,
    radius: float = 1.5,
    valid: np.ndarray | None = None,
    show_index: bool = False,
) -> np.ndarray:
    """Draw landmarks as filled dots on a copy of ``image``.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        landmarks: ``(L, 2)`` x, y in pixels of ``image`` (0-based pixel centres).
        color: RGB colour.
        radius: Dot radius in pixels.
        valid: ``(L,)`` bool; unannotated points are not drawn.
        show_index: Write each point's index next to it.

    Returns:
        The annotated ``(H, W, 3)`` uint8 copy.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    pts = np.asarray(landmarks, dtype=np.float64).reshape(-1, 2)
    out = np.ascontiguousarray(image).copy()
    keep = np.all(np.isfinite(pts), axis=1)
    # Points far outside would overflow OpenCV's fixed-point coordinates; they are not drawn.
    h, w = image.shape[:2]
    keep &= (np.abs(pts) < 4 * max(h, w) + 4 * radius).all(axis=1)
    if valid is not None:
        keep &= np.asarray(valid, dtype=bool)
    scaled = np.round(np.where(keep[:, None], pts, 0.0) * (1 << _SHIFT)).astype(np.int64)
    r = max(1, round(radius * (1 << _SHIFT)))
    for i in np.flatnonzero(keep):
        x, y = int(scaled[i, 0]), int(scaled[i, 1])
        cv2.circle(out, (x, y), r, color, thickness=-1, lineType=cv2.LINE_AA, shift=_SHIFT)
        if show_index:
            org = (int(pts[i, 0]) + 2, int(pts[i, 1]) - 2)
            cv2.putText(out, str(i), org, _FONT, 0.25, color, 1, cv2.LINE_AA)
    return out


def _title_band(width: int, text: str, height: int, scale: float) -> np.ndarray:
    band = np.full((height, width, 3), 255, dtype=np.uint8)
    (tw, th), _ = cv2.getTextSize(text, _FONT, scale, 1)
    if tw > width - 4:  # shrink long titles to fit instead of cutting them off
        scale *= (width - 4) / tw
        (tw, th), _ = cv2.getTextSize(text, _FONT, scale, 1)
    org = (max(2, (width - tw) // 2), (height + th) // 2)
    cv2.putText(band, text, org, _FONT, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return band


def make_grid(
    images: Sequence[np.ndarray],
    landmarks_list: Sequence[Sequence[tuple[np.ndarray, Color]]] | None = None,
    ncols: int = 4,
    titles: Sequence[str] | None = None,
    pad: int = 2,
    radius: float = 1.5,
    show_index: bool = False,
) -> np.ndarray:
    """Tile equally sized images into one, with point sets drawn on each.

    Args:
        images: ``(H, W, 3)`` uint8 RGB images, all the same size.
        landmarks_list: Per image, a list of ``(points (L, 2), RGB colour)``, e.g.
            ``[(pred, RED), (true, GREEN)]``; None to draw nothing.
        ncols: Tiles per row.
        titles: One caption per image, written in a band above it.
        pad: White pixels between tiles.
        radius: Dot radius.
        show_index: Write point indices.

    Returns:
        ``(rows * (H + band + pad) + pad, ncols * (W + pad) + pad, 3)`` uint8 RGB.
    """
    if not images:
        raise ValueError("make_grid needs at least one image")
    if ncols < 1:
        raise ValueError(f"ncols must be >= 1, got {ncols}")
    h, w = images[0].shape[:2]
    for i, img in enumerate(images):
        if img.shape != (h, w, 3) or img.dtype != np.uint8:
            raise ValueError(
                f"image {i} is {img.shape} {img.dtype}; all must be ({h}, {w}, 3) uint8"
            )
    for name, seq in (("landmarks_list", landmarks_list), ("titles", titles)):
        if seq is not None and len(seq) != len(images):
            raise ValueError(f"{name} has {len(seq)} entries for {len(images)} images")
    scale = max(0.3, w / 400)
    band = int(24 * scale / 0.35) if titles is not None else 0
    ncols = min(ncols, len(images))
    nrows = math.ceil(len(images) / ncols)
    cell_h, cell_w = h + band, w
    grid = np.full((nrows * (cell_h + pad) + pad, ncols * (cell_w + pad) + pad, 3), 255, np.uint8)
    for i, img in enumerate(images):
        tile = img
        for pts, color in landmarks_list[i] if landmarks_list is not None else ():
            tile = draw_landmarks(tile, pts, color, radius=radius, show_index=show_index)
        if titles is not None:
            tile = np.concatenate([_title_band(w, titles[i], band, scale), tile], axis=0)
        r, c = divmod(i, ncols)
        y, x = pad + r * (cell_h + pad), pad + c * (cell_w + pad)
        grid[y : y + cell_h, x : x + cell_w] = tile
    return grid


def add_title(image: np.ndarray, title: str) -> np.ndarray:
    """Put a white band with ``title`` above ``image`` (RGB uint8)."""
    w = image.shape[1]
    scale = max(0.4, min(1.0, w / 900))
    band = _title_band(w, title, int(34 * scale / 0.5), scale)
    return np.concatenate([band, image], axis=0)


def write_png(path: str | Path, image: np.ndarray) -> Path:
    """Write an RGB uint8 image as PNG (creating the folder), returning the path."""
    return _write(Path(path), image, [])


def write_jpeg(path: str | Path, image: np.ndarray, quality: int = 90) -> Path:
    """Write an RGB uint8 image as JPEG (creating the folder), returning the path.

    Several times faster to encode than PNG and a tenth of its size for a photo.
    """
    return _write(Path(path), image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])


def _write(path: Path, image: np.ndarray, params: list[int]) -> Path:
    # Encoded by OpenCV, written by Python: cv2.imwrite crashes on a file name not in UTF-8.
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        ok, data = cv2.imencode(path.suffix, cv2.cvtColor(image, cv2.COLOR_RGB2BGR), params)
    except cv2.error:
        ok = False
    if not ok:
        raise OSError(f"could not write {path}: OpenCV cannot encode {path.suffix!r} images")
    path.write_bytes(data.tobytes())
    return path


def save_augmentation_grid(
    dataset: Any,
    out_path: str | Path,
    num: int = 16,
    seed: int = 0,
    ncols: int = 4,
    show_index: bool = False,
    title: str | None = None,
) -> Path:
    """Write a PNG of ``num`` random augmented samples with their landmarks drawn.

    Args:
        dataset: A :class:`~sepbn.data.datasets.LandmarkDataset` or
            :class:`~sepbn.data.datasets.MultiProtocolDataset` (any dataset of sample
            dicts with ``image``, ``landmarks``, ``valid``, ``protocol``, ``index``).
        out_path: The PNG file.
        num: Number of samples (fewer if the dataset is smaller).
        seed: Chooses which samples are shown.
        ncols: Tiles per row.
        show_index: Write point indices.
        title: Figure title; by default the sample count and protocols.

    Returns:
        ``out_path``.
    """
    n = len(dataset)
    if n == 0:
        raise ValueError("cannot preview an empty dataset")
    picks = np.random.default_rng(seed).choice(n, size=min(num, n), replace=False)
    images, marks, captions = [], [], []
    for i in picks.tolist():
        s = dataset[i]
        pts = s["landmarks"].numpy().astype(np.float64)
        pts[~s["valid"].numpy()] = np.nan  # not drawn
        images.append(s["image"].permute(1, 2, 0).numpy())
        marks.append([(pts, GREEN)])
        captions.append(f"{s['protocol']} #{int(s['index'])}")
    grid = make_grid(images, marks, ncols=ncols, titles=captions, show_index=show_index)
    names = ", ".join(sorted({c.split(" #")[0] for c in captions}))
    default = f"{len(images)} augmented samples ({names}), seed {seed}"
    return write_png(out_path, add_title(grid, title or default))

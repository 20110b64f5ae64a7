"""Landmark drawing, grids and the augmentation preview PNG."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from sepbn.data.datasets import LandmarkDataset
from sepbn.data.records import FaceRecord, box_from_landmarks
from sepbn.data.transforms import AugmentConfig, FaceCropTransform
from sepbn.data.visualize import (
    GREEN,
    RED,
    add_title,
    draw_landmarks,
    make_grid,
    save_augmentation_grid,
)


def test_draw_landmarks_places_dots_at_subpixel_positions():
    image = np.zeros((40, 50, 3), np.uint8)
    pts = np.array([[10.0, 20.0], [30.5, 8.25], [45.0, 35.0], [np.nan, 3.0]])
    valid = np.array([True, True, False, True])
    out = draw_landmarks(image, pts, GREEN, radius=2.0, valid=valid)
    assert image.max() == 0  # a copy is drawn on
    assert (out[..., [0, 2]] == 0).all()
    g = out[..., 1].astype(float)
    assert g[20, 10] == 255 and g[8, 30] > 0
    assert g[30:, 40:].max() == 0  # the invalid point is not drawn
    for x, y in pts[:2]:
        win = g[int(y) - 4 : int(y) + 5, int(x) - 4 : int(x) + 5]
        ys, xs = np.mgrid[int(y) - 4 : int(y) + 5, int(x) - 4 : int(x) + 5]
        centroid = (win * xs).sum() / win.sum(), (win * ys).sum() / win.sum()
        np.testing.assert_allclose(centroid, (x, y), atol=0.2)
    with pytest.raises(ValueError, match="uint8"):
        draw_landmarks(image.astype(float), pts)


def test_make_grid_layout_titles_and_errors():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (32, 40, 3), dtype=np.uint8) for _ in range(5)]
    grid = make_grid(images, ncols=2, pad=3)
    assert grid.shape == (3 * (32 + 3) + 3, 2 * (40 + 3) + 3, 3)
    np.testing.assert_array_equal(grid[3 + 35 : 3 + 35 + 32, 3 + 43 : 3 + 43 + 40], images[3])
    assert (grid[-35:, 46:] == 255).all()  # the unused sixth cell stays white
    marks = [[(np.array([[5.0, 5.0]]), RED), (np.array([[20.0, 20.0]]), GREEN)]] * 5
    titled = make_grid(images, marks, ncols=5, titles=[f"#{i}" for i in range(5)], pad=2)
    band = titled.shape[0] - 2 * 2 - 32
    assert band > 8
    tile = titled[2 + band : 2 + band + 32, 2:42]
    assert tuple(tile[5, 5]) == RED and tuple(tile[20, 20]) == GREEN
    assert (titled[2 : 2 + band, 2:42] < 128).any()  # caption text drawn on the band
    with pytest.raises(ValueError, match=r"image 1 is \(10, 10, 3\)"):
        make_grid([images[0], np.zeros((10, 10, 3), np.uint8)])
    with pytest.raises(ValueError, match="titles has 1 entries for 5 images"):
        make_grid(images, titles=["x"])
    with pytest.raises(ValueError, match="at least one image"):
        make_grid([])


def test_save_augmentation_grid_writes_a_bgr_png(tmp_path):
    rng = np.random.default_rng(0)
    recs = []
    for i in range(6):
        pts = 80 + rng.uniform(-30, 30, (68, 2))
        red = np.zeros((160, 160, 3), np.uint8)
        red[..., 0] = 200
        recs.append(
            FaceRecord(None, pts, box_from_landmarks(pts), "300w", image=red, source=f"r{i}")
        )
    transform = FaceCropTransform("300w", output_size=64, box_scale=3.0, augment=AugmentConfig())
    ds = LandmarkDataset(recs, "300w", transform)
    out = save_augmentation_grid(ds, tmp_path / "sub" / "aug.png", num=4, ncols=2, title="preview")
    assert out == tmp_path / "sub" / "aug.png"
    png = cv2.imread(str(out), cv2.IMREAD_COLOR)
    picks = np.random.default_rng(0).choice(6, size=4, replace=False)
    samples = [ds[int(i)] for i in picks]
    expected = add_title(
        make_grid(
            [s["image"].permute(1, 2, 0).numpy() for s in samples],
            [[(s["landmarks"].numpy(), GREEN)] for s in samples],
            ncols=2,
            titles=[f"300w #{int(i)}" for i in picks],
        ),
        "preview",
    )
    assert png.shape == expected.shape
    np.testing.assert_array_equal(png[..., ::-1], expected)  # file is BGR
    # The red crops land in the file's third (R) channel; anti-aliased dots may hit 200 elsewhere.
    assert (png[..., 2] == 200).sum() > 1000 > 10 * (png[..., 0] == 200).sum()
    with pytest.raises(ValueError, match="empty dataset"):
        save_augmentation_grid([], tmp_path / "x.png")


def test_long_titles_are_shrunk_to_fit_not_cut() -> None:
    image = np.zeros((40, 120, 3), np.uint8)
    titled = add_title(image, "a title much longer than the image is wide, in full")
    band = titled[: titled.shape[0] - 40]
    ink = np.flatnonzero((band < 128).any(axis=(0, 2)))  # columns with dark text
    assert ink.size > 0
    assert ink[0] >= 1 and ink[-1] <= 118  # both ends of the text are inside the band

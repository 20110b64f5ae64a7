"""The preview PNG: a grid of generated faces with their landmarks."""

from __future__ import annotations

from pathlib import Path

import cv2
import pytest

from sepbn.data.synthetic import make_synthetic_records, save_synthetic_preview


def test_preview_is_written_with_landmarks(tmp_path: Path) -> None:
    out = save_synthetic_preview(tmp_path / "sub" / "preview.png", num=4, seed=0)
    img = cv2.imread(str(out))
    # 2 x 2 tiles of 160 px without padding, under a title and one caption band per row
    assert img is not None and img.shape[1] == 2 * 160 and img.shape[0] > 2 * 160
    raw = make_synthetic_records(3, seed=0)[2].image
    tile = cv2.cvtColor(img[-160:, :160], cv2.COLOR_BGR2RGB)  # face 2: row 1, column 0
    drawn = (tile.astype(int) - raw).any(-1)
    assert drawn.mean() > 0.02  # the landmark dots are drawn over the face
    green = (tile[..., 1] > 200) & (tile[..., 0] < 80) & (tile[..., 2] < 80)
    assert green.sum() > 68
    band = img[-170:-160, :160]  # the bottom of face 2's caption band
    assert (band == 255).mean() > 0.5 and (band < 128).any()
    with pytest.raises(ValueError, match="num"):
        save_synthetic_preview(tmp_path / "x.png", num=0)

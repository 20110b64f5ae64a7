"""Image reading errors, and the cheap file check the format readers use."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from sepbn.data.errors import DatasetError
from sepbn.data.image_io import image_file_problem, load_image


def _files(tmp_path: Path) -> dict[str, Path]:
    image = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    files = {}
    for suffix in (".jpg", ".png"):
        ok, data = cv2.imencode(suffix, image)
        assert ok
        files[f"good{suffix}"] = tmp_path / f"good{suffix}"
        files[f"good{suffix}"].write_bytes(data.tobytes())
        files[f"cut{suffix}"] = tmp_path / f"cut{suffix}"
        files[f"cut{suffix}"].write_bytes(data.tobytes()[: len(data) // 2])
    files["empty"] = tmp_path / "empty.jpg"
    files["empty"].write_bytes(b"")
    return files


def test_image_file_problem_from_the_first_and_last_bytes(tmp_path: Path) -> None:
    files = _files(tmp_path)
    assert image_file_problem(files["good.jpg"]) is None
    assert image_file_problem(files["good.png"]) is None
    assert image_file_problem(files["empty"]) == ("image file is empty", "image file is empty")
    category, reason = image_file_problem(files["cut.jpg"])
    assert (category, reason) == ("image file is truncated", reason)
    assert "no JPEG end marker" in reason
    assert "no PNG end marker" in image_file_problem(files["cut.png"])[1]
    assert image_file_problem(tmp_path / "nope.png")[0] == "image file not found"


def test_load_image_gives_the_same_reasons(tmp_path: Path) -> None:
    files = _files(tmp_path)
    assert load_image(files["good.png"]).shape == (20, 30, 3)
    for key in ("empty", "cut.jpg", "cut.png"):
        with pytest.raises(DatasetError) as info:
            load_image(files[key], "list.txt:3")
        assert (info.value.category, info.value.reason) == image_file_problem(files[key])
        assert info.value.source == f"list.txt:3 ({files[key]})"

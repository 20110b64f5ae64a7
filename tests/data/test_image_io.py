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


# Bad input, round two (issue 22): one rule for every command, one line for every file.


def _corrupt_jpeg(path: Path) -> Path:
    """A JPEG whose entropy-coded middle is garbled: libjpeg decodes it with a warning."""
    image = np.random.default_rng(1).integers(0, 256, (200, 160, 3), dtype=np.uint8)
    data = bytearray(cv2.imencode(".jpg", image)[1].tobytes())
    middle = len(data) // 2
    data[middle : middle + 40] = bytes([0xFF, 0x00] * 20)
    path.write_bytes(bytes(data))
    return path


def test_a_corrupt_jpeg_is_refused_by_default(tmp_path: Path) -> None:
    path = _corrupt_jpeg(tmp_path / "grey_lower_half.jpg")
    with pytest.raises(DatasetError, match=r"corrupt JPEG data \(Corrupt JPEG data: ") as info:
        load_image(path, "list.txt:2")
    assert info.value.category == "corrupt JPEG data"
    assert "\n" not in str(info.value)


def test_an_image_beyond_opencvs_pixel_limit_is_one_line(tmp_path: Path) -> None:
    data = bytearray(cv2.imencode(".jpg", np.zeros((16, 16, 3), np.uint8))[1].tobytes())
    frame = data.find(b"\xff\xc0")
    data[frame + 5 : frame + 9] = (65000).to_bytes(2, "big") * 2  # declares 65000 x 65000
    path = tmp_path / "huge.jpg"
    path.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match=r"huge\.jpg\): not a decodable image \(OpenCV") as info:
        load_image(path, "faces.json[annotation 1]")
    assert "\n" not in str(info.value)


def test_a_nul_character_in_an_image_path_is_a_bad_file(tmp_path: Path) -> None:
    path = tmp_path / "a\x00b.jpg"
    category, reason = image_file_problem(path)
    assert category == "image file unreadable" and "null" in reason
    with pytest.raises(DatasetError, match="image file unreadable"):
        load_image(path)

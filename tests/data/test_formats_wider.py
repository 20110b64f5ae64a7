"""RetinaFace WIDER FACE label.txt (5 points): parsing, the 80 px filter, error paths."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from sepbn.data.errors import DatasetError, SkipReport
from sepbn.data.formats import DatasetWarning, read_wflw_attr, read_wider5
from sepbn.data.protocols import get_protocol

FACE_A = (
    "449 330 122 149 488.906 373.643 0.0 542.089 376.442 0.0 515.031 412.83 0.0 "
    "485.174 425.893 1.0 538.357 431.491 0.0 0.82"
)
SMALL = "10 10 50 95 20 30 0.0 40 30 0.0 30 40 0.0 22 50 0.0 38 50 0.0 0.5"
NO_MARKS = "177 218 100 109 " + " ".join(["-1.0"] * 15) + " 0.68"
FACE_B = "100 120 90 100 120 150 0.0 160 150 0.0 140 170 0.0 -1.0 -1.0 -1.0 155 190 0.0 0.3"


def _layout(
    tmp_path: Path, lines: list[str], images: tuple[str, ...] = ("e/a.jpg", "e/b.jpg")
) -> Path:
    for name in images:
        (tmp_path / "train" / "images" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "train" / "images" / name).write_bytes(b"jpg")
    label = tmp_path / "train" / "label.txt"
    label.write_text("\n".join(lines) + "\n")
    return label


def test_parse_filter_and_values(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    label = _layout(tmp_path, ["# e/a.jpg", FACE_A, SMALL, NO_MARKS, "# e/b.jpg 1024 768", FACE_B])
    with caplog.at_level(logging.INFO, logger="sepbn.data.formats.wider"):
        recs = read_wider5(tmp_path, "train")
    assert (
        "2 of 4 faces kept; dropped 1 with a box not larger than 80x80 px and 1 without"
        in caplog.text
    )
    a, b = recs
    np.testing.assert_allclose(a.box, [449, 330, 571, 479])
    np.testing.assert_allclose(a.landmarks[3], [485.174, 425.893])
    np.testing.assert_array_equal(a.occluded, [False, False, False, True, False])
    assert a.valid.all() and a.protocol == "wider5" and a.source == f"{label}:2"
    assert a.image_path == tmp_path / "train" / "images" / "e" / "a.jpg"
    np.testing.assert_array_equal(b.valid, [True, True, True, False, True])
    np.testing.assert_array_equal(b.landmarks[3], [0.0, 0.0])
    assert b.source == f"{label}:6" and b.image_path.name == "b.jpg"
    # The size filter is strict ("greater than 80") and configurable.
    assert len(read_wider5(label, min_size=89.0)) == 2
    assert len(read_wider5(label, min_size=90.0)) == 1
    assert len(read_wider5(label, min_size=40.0)) == 3


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (
            "449 330 122 149",
            r"expected 20 tokens .*got 4 \(a box-only label file has no landmarks\)",
        ),
        (FACE_A.replace("542.089", "nan"), r"token 8 is 'nan' \(not finite\)"),
        (FACE_A.replace("542.089", "x1"), r"token 8 'x1' is not a number"),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path: Path, line: str, reason: str) -> None:
    label = _layout(tmp_path, ["# e/a.jpg", FACE_A, line, FACE_A])
    with pytest.raises(DatasetError, match=rf"label\.txt:3: {reason}"):
        read_wider5(label)
    report = SkipReport()
    with pytest.warns(DatasetWarning, match=r"kept 2 record\(s\); skipped 1"):
        assert len(read_wider5(label, on_error="skip", report=report)) == 2
    assert report.skipped[0].source.endswith("label.txt:3")


def test_structure_and_image_errors(tmp_path: Path) -> None:
    label = _layout(tmp_path, [FACE_A, "# e/a.jpg", FACE_A])
    with pytest.raises(DatasetError, match=r"label\.txt:1: face line before any '# <image path>'"):
        read_wider5(label)
    label = _layout(tmp_path, ["# e/missing.jpg", FACE_A, FACE_A, "# e/a.jpg", FACE_A])
    with pytest.raises(
        DatasetError, match=r"label\.txt:2 \(.*missing\.jpg\): image file not found"
    ):
        read_wider5(label)
    report = SkipReport()
    with pytest.warns(DatasetWarning, match=r"2 x image file not found"):
        assert len(read_wider5(label, on_error="skip", report=report)) == 1
    assert len(read_wider5(label, check_images=False)) == 3
    with pytest.raises(DatasetError, match="annotation file not found"):
        read_wider5(tmp_path / "val" / "label.txt")
    with pytest.raises(ValueError, match=r"unknown split 'test'"):
        read_wider5(tmp_path, "test")


@pytest.mark.realdata
def test_real_faces_in_wider_layout(data_root: Path, tmp_path: Path) -> None:
    """WFLW faces are WIDER FACE images: write their 5 points as a label.txt and read it back."""
    with pytest.warns(DatasetWarning):  # most WFLW faces have no image in the shared data
        wflw = read_wflw_attr(data_root / "WFLW" / "WFLW_annotations", "largepose", on_error="skip")
    img_root = data_root / "WFLW" / "WFLW_images"
    lines = []
    expected = []
    for r in wflw[:40]:
        five = r.landmarks[[96, 97, 54, 76, 82]]  # pupils, nose tip, mouth corners
        x0, y0, x1, y1 = r.box
        # The reader resolves the image root (links included), so compare resolved paths.
        lines.append(f"# {r.image_path.resolve().relative_to(img_root.resolve()).as_posix()}")
        marks = " ".join(f"{x:.3f} {y:.3f} 0.0" for x, y in five)
        lines.append(f"{x0:.3f} {y0:.3f} {x1 - x0:.3f} {y1 - y0:.3f} {marks} 0.5")
        if x1 - x0 > 80 and y1 - y0 > 80:
            expected.append([[float(f"{v:.3f}") for v in p] for p in five])
    label = tmp_path / "label.txt"
    label.write_text("\n".join(lines) + "\n")
    recs = read_wider5(label, image_root=img_root)
    assert len(recs) == len(expected) > 0
    np.testing.assert_allclose(np.stack([r.landmarks for r in recs]), np.stack(expected))
    pts = np.stack([r.landmarks for r in recs])  # (N, 5, 2)
    assert (pts[:, 0, 0] < pts[:, 1, 0]).all()  # image-left eye first
    proto = get_protocol("wider5")
    flipped = proto.flip(pts, 1000.0)
    assert (flipped[:, 0, 0] < flipped[:, 1, 0]).all() and (
        flipped[:, 3, 0] < flipped[:, 4, 0]
    ).all()

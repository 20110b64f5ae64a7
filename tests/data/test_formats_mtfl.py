"""MTFL lists (5 points on 80 x 80 crops): parsing, the face-box rule, error paths, real data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sepbn.config import DatasetConfig
from sepbn.data.errors import DatasetError, SkipReport
from sepbn.data.formats import DatasetWarning, face_box_from_five, read_mtfl, read_records
from sepbn.data.protocols import get_protocol

# An upright face: eyes at (10, 10) and (30, 10), nose tip (20, 20), mouth (12, 30), (28, 30).
FACE = "10 30 20 12 28 10 10 20 30 30"


def _square_68_box(landmarks: np.ndarray) -> np.ndarray:
    """The box 300-W faces are framed by: tight box of the 68 points, made square."""
    lo, hi = landmarks.min(axis=0), landmarks.max(axis=0)
    centre, half = (lo + hi) / 2, (hi - lo).max() / 2
    return np.concatenate([centre - half, centre + half])


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lo, hi = np.maximum(a[:, :2], b[:, :2]), np.minimum(a[:, 2:], b[:, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=1)
    area = np.prod(a[:, 2:] - a[:, :2], axis=1) + np.prod(b[:, 2:] - b[:, :2], axis=1)
    return inter / (area - inter)


def _layout(tmp_path: Path, lines: list[str], images: tuple[str, ...] = ("lfw/a.jpg",)) -> Path:
    for name in images:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"jpg")
    listing = tmp_path / "new_training.txt"
    listing.write_text("\n".join(lines) + "\n")
    return listing


@pytest.fixture
def mtfl_root(data_root: Path) -> Path:
    root = data_root / "MTFL"
    if not root.is_dir():
        pytest.skip(f"MTFL not found at {root}")
    return root


def test_box_rule_on_a_hand_computed_face() -> None:
    points = np.array(FACE.split(), dtype=float).reshape(2, 5).T  # (5, 2)
    # |m - e| = 20, eye distance = 20: side 0.971 * 20 + 1.302 * 20 = 45.46; the centre is
    # (20, 20) moved down by 0.143 * 20 = 2.86; the nose is on the axis.
    np.testing.assert_allclose(
        face_box_from_five(points), [20 - 22.73, 22.86 - 22.73, 20 + 22.73, 22.86 + 22.73]
    )
    # Nose tip 4 px right of the axis: the box moves 1.095 * 4 = 4.38 px left.
    turned = points.copy()
    turned[2, 0] += 4
    np.testing.assert_allclose(face_box_from_five(turned)[[0, 2]], [15.62 - 22.73, 15.62 + 22.73])
    # The rule follows the face: a face turned by 90 degrees gets the turned box.
    rotated = points @ np.array([[0.0, 1.0], [-1.0, 0.0]])  # (x, y) -> (-y, x)
    box = face_box_from_five(rotated)
    np.testing.assert_allclose((box[:2] + box[2:]) / 2, [-22.86, 20.0])
    np.testing.assert_allclose(box[2:] - box[:2], [45.46, 45.46])
    # Batched: (N, 5, 2) -> (N, 4).
    boxes = face_box_from_five(np.stack([points, turned]))
    assert boxes.shape == (2, 4)
    np.testing.assert_allclose(boxes[1], face_box_from_five(turned))


def test_parse_values_attributes_and_paths(tmp_path: Path) -> None:
    # The original MTFL lists: backslashes, a leading space, four attribute codes.
    listing = _layout(
        tmp_path,
        [f"lfw/a.jpg {FACE}", "", f" lfw\\a.jpg {FACE} 1 2 1 3", f"lfw/a.jpg {FACE} 2 1 2 5"],
    )
    a, b, c = read_mtfl(listing)
    assert a.protocol == "wider5" and a.num_points == 5 and a.valid.all()
    np.testing.assert_allclose(a.landmarks, [[10, 10], [30, 10], [20, 20], [12, 30], [28, 30]])
    np.testing.assert_allclose(a.box, face_box_from_five(a.landmarks))
    assert a.image_path == tmp_path / "lfw" / "a.jpg" == b.image_path
    assert a.source == f"{listing}:1" and b.source == f"{listing}:3"
    assert a.attributes == {}
    assert b.attributes["male"] and not b.attributes["smiling"] and b.attributes["glasses"]
    assert b.attributes["pose_frontal"] and not b.attributes["pose"]
    assert c.attributes["pose_right_profile"] and c.attributes["pose"]
    assert not c.attributes["male"] and c.attributes["smiling"] and not c.attributes["glasses"]
    assert sum(k.startswith("pose_") and v for k, v in c.attributes.items()) == 1
    # The folder form picks the list by split; the original name when new_ is absent.
    assert len(read_mtfl(tmp_path, "train")) == 3
    listing.rename(tmp_path / "training.txt")
    assert len(read_mtfl(tmp_path, "train")) == 3
    with pytest.raises(DatasetError, match=r"no MTFL test list: looked for \['new_testing"):
        read_mtfl(tmp_path, "test")
    with pytest.raises(ValueError, match=r"mtfl: unknown split None; valid: one of \['train'"):
        read_mtfl(tmp_path)
    with pytest.raises(ValueError, match=r"unknown split 'val'"):
        read_mtfl(tmp_path, "val")


@pytest.mark.parametrize(
    ("line", "reason", "category"),
    [
        ("lfw/a.jpg 1 2 3", r"expected 11 tokens .* or 15 .*got 4", "wrong number of tokens"),
        (f"lfw/a.jpg {FACE} 1 2", r"expected 11 tokens .*got 13", "wrong number of tokens"),
        (f"lfw/a.jpg {FACE.replace(' 20 30', ' x 30')}", r"token 9 'x' is not a number", None),
        (f"lfw/a.jpg {FACE.replace('30 20', 'inf 20', 1)}", r"token 3 is 'inf' \(not", None),
        (f"lfw/a.jpg {FACE} 1 2 1 nan", r"token 15 is 'nan' \(not finite\)", None),
        (f"lfw/a.jpg {FACE} 1 2 1 7", r"head pose must be 1\.\.5, got 7", "attribute code"),
        (
            f"lfw/a.jpg {FACE} 3 2 1 3",
            r"gender, smile and glasses must be 1 or 2, got 3 2 1",
            "attribute code",
        ),
        ("lfw/a.jpg " + " ".join(["5"] * 10), r"degenerate box", "degenerate box"),
        (f"lfw/missing.jpg {FACE}", r"\(.*missing\.jpg\): image file not found", "image file"),
    ],
)
def test_bad_lines_name_file_and_line(
    tmp_path: Path, line: str, reason: str, category: str | None
) -> None:
    listing = _layout(tmp_path, [f"lfw/a.jpg {FACE}", line, f"lfw/a.jpg {FACE}"])
    with pytest.raises(DatasetError, match=rf"new_training\.txt:2:? {reason}") as raised:
        read_mtfl(listing)
    assert str(raised.value).count("\n") == 0  # one line
    report = SkipReport()
    with pytest.warns(DatasetWarning, match=r"kept 2 record\(s\); skipped 1"):
        assert len(read_mtfl(listing, on_error="skip", report=report)) == 2
    assert len(report) == 1 and report.skipped[0].source.startswith(f"{listing}:2")
    assert report.skipped[0].category.startswith(category or "not a finite number")


def test_skip_counts_every_bad_line(tmp_path: Path) -> None:
    lines = [
        f"lfw/a.jpg {FACE}",
        "lfw/a.jpg 1 2 3",
        f"lfw/a.jpg {FACE.replace('12', 'abc')}",
        f"lfw/missing.jpg {FACE}",
        f"lfw/a.jpg {FACE} 1 1 1 9",
        f"lfw/a.jpg {FACE}",
    ]
    listing = _layout(tmp_path, lines)
    report = SkipReport()
    with pytest.warns(DatasetWarning, match=r"kept 2 record\(s\); skipped 4"):
        recs = read_mtfl(listing, on_error="skip", report=report)
    assert [r.source for r in recs] == [f"{listing}:1", f"{listing}:6"]
    assert report.counts() == {
        "wrong number of tokens": 1,
        "not a finite number": 1,
        "image file not found": 1,
        "attribute code out of range": 1,
    }
    with pytest.warns(DatasetWarning, match=r"kept 3 record\(s\); skipped 3"):
        assert len(read_mtfl(listing, on_error="skip", check_images=False)) == 3


def test_aflw_rows_are_one_based(tmp_path: Path) -> None:
    listing = _layout(
        tmp_path, [f"AFLW/b.jpg {FACE}", f"lfw/a.jpg {FACE}"], ("lfw/a.jpg", "AFLW/b.jpg")
    )
    aflw, lfw = read_mtfl(listing)
    np.testing.assert_allclose(aflw.landmarks, lfw.landmarks - 1.0)
    np.testing.assert_allclose(aflw.box, lfw.box - 1.0)
    published, _ = read_mtfl(listing, aflw_one_based=False)
    np.testing.assert_array_equal(published.landmarks, lfw.landmarks)


def test_point_outside_the_crop_is_kept_and_valid(tmp_path: Path) -> None:
    listing = _layout(tmp_path, ["lfw/a.jpg -2.5 30 20 12 28 10 10 20 30 30"])
    (rec,) = read_mtfl(listing)
    np.testing.assert_array_equal(rec.landmarks[0], [-2.5, 10.0])
    assert rec.valid.all() and rec.box[0] <= -2.5


def test_misregistered_rows_are_reported_not_raised(tmp_path: Path) -> None:
    images = ("lfw/a.jpg", "net_7876/_0_1_0.jpg")
    lines = [f"lfw/a.jpg {FACE}", f"net_7876/_0_1_0.jpg {FACE}", f"lfw/a.jpg {FACE}"]
    listing = _layout(tmp_path, lines, images)
    report = SkipReport()
    with pytest.warns(DatasetWarning, match=r"(?s)kept 2 record\(s\); skipped 1 .*28 px above"):
        recs = read_mtfl(listing, report=report)  # on_error="raise": a selection, no error
    assert [r.source for r in recs] == [f"{listing}:1", f"{listing}:3"]
    assert report.skipped[0].source == f"{listing}:2"
    assert len(read_mtfl(listing, drop_misregistered=False)) == 3
    # Only the 80 x 80 redistribution's lists (new_*.txt) have the problem.
    assert len(read_mtfl(listing.rename(tmp_path / "training.txt"))) == 3


def test_registered_as_kind_mtfl(tmp_path: Path) -> None:
    _layout(tmp_path, [f"lfw/a.jpg {FACE}"])
    recs = read_records("mtfl", tmp_path, "train")
    assert len(recs) == 1 and recs[0].protocol == "wider5"
    assert DatasetConfig(kind="mtfl", path=str(tmp_path), split="train").kind == "mtfl"
    protocol = get_protocol("wider5")
    assert protocol.num_points == 5 and protocol.flip_perm == (1, 0, 2, 4, 3)


@pytest.mark.realdata
def test_real_first_and_last_rows(mtfl_root: Path) -> None:
    # Published values, written from `head -1` / `tail -1` of the lists (x1..x5, y1..y5).
    expected = [
        (
            "new_training.txt:1",
            "lfw_5590/Aaron_Eckhart_0001.jpg",
            [
                [34.32, 34.800000000000004],
                [47.28, 36.24],
                [40.4, 46.0],
                [34.0, 50.800000000000004],
                [45.04, 52.08],
            ],
        ),
        (
            "new_training.txt:10000",
            "net_7876/_60_991_0.jpg",
            [[34.0, 0.5], [50.0, 1.5], [44.5, 13.5], [33.0, 20.5], [45.0, 21.0]],
        ),
        (
            "new_testing.txt:1",
            "AFLW/0001-image20056.jpg",
            [
                [30.190925333333333, 23.0669088],
                [54.04089546666666, 30.9652752],
                [42.425650133333335, 37.3149424],
                [23.37664853333333, 45.98765866666667],
                [49.70453706666666, 55.434724800000005],
            ],
        ),
        (
            "new_testing.txt:2995",
            "AFLW/3000-image49646.jpg",
            [
                [24.460738133333333, 23.5315184],
                [49.5496672, 21.053599466666665],
                [36.540593066666666, 42.7353904],
                [28.17761653333333, 48.62044746666666],
                [47.07174826666667, 46.76200853333333],
            ],
        ),
    ]
    published = {
        split: read_mtfl(mtfl_root, split, aflw_one_based=False, drop_misregistered=False)
        for split in ("train", "test")
    }
    assert len(published["train"]) == 10_000 and len(published["test"]) == 2995
    firsts_lasts = [published["train"][0], published["train"][-1]]
    firsts_lasts += [published["test"][0], published["test"][-1]]
    for rec, (source, image, points) in zip(firsts_lasts, expected):
        np.testing.assert_array_equal(rec.landmarks, points)
        assert rec.source == f"{mtfl_root / source}" and rec.image_path == mtfl_root / image
        assert rec.protocol == "wider5" and rec.attributes == {}
    # By default the AFLW rows are 1-based and the misregistered rows are left out.
    test = read_mtfl(mtfl_root, "test")
    np.testing.assert_allclose(test[-1].landmarks, np.subtract(expected[3][2], 1.0))
    report = SkipReport()
    with pytest.warns(DatasetWarning, match=r"(?s)kept 7650 record\(s\); skipped 2350 .*28 px"):
        train = read_mtfl(mtfl_root, "train", report=report)
    assert train[-1].source.endswith("new_training.txt:7650")
    assert report.skipped[0].source.endswith("new_training.txt:7651")
    # Every point lies in its face's box, a square.
    pts = np.stack([r.landmarks for r in train + test])  # (N, 5, 2)
    boxes = np.stack([r.box for r in train + test])  # (N, 4)
    assert np.all((pts >= boxes[:, None, :2] - 1e-9) & (pts <= boxes[:, None, 2:] + 1e-9))
    np.testing.assert_allclose(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])


@pytest.mark.realdata
def test_real_row_with_points_outside_the_crop(mtfl_root: Path) -> None:
    train = read_mtfl(mtfl_root, "train", drop_misregistered=False)
    rec = next(r for r in train if r.source.endswith("new_training.txt:7703"))
    # "net_7876/_-20_1104_0.jpg 31.0 53.0 37.0 33.0 49.5 -1.5 -1.5 14.0 22.5 23.0": kept,
    # every point valid.
    assert rec.image_path is not None and rec.image_path.name == "_-20_1104_0.jpg"
    np.testing.assert_array_equal(rec.landmarks[:2], [[31.0, -1.5], [53.0, -1.5]])
    assert rec.valid.all()
    outside = [r for r in train if ((r.landmarks < 0) | (r.landmarks > 79)).any()]
    assert len(outside) == 97  # data README: 97 rows have a point just outside the crop
    # ... all of them misregistered rows.
    assert all(r.image_path and r.image_path.name.startswith("_") for r in outside)


@pytest.mark.realdata
def test_box_rule_frames_held_out_300w_faces(data_root: Path) -> None:
    """The rule puts 5-point faces in the box 300-W faces have (fitted on other faces)."""
    recs = read_records("300w", data_root / "300W", "common")
    lm = np.stack([r.landmarks for r in recs])  # (N, 68, 2)
    five = np.stack(
        [lm[:, 36:42].mean(1), lm[:, 42:48].mean(1), lm[:, 30], lm[:, 48], lm[:, 54]], axis=1
    )  # (N, 5, 2)
    iou = _iou(face_box_from_five(five), np.stack([_square_68_box(p) for p in lm]))
    # Measured on these 506 faces: mean 0.853, 5th percentile 0.734.
    assert iou.mean() > 0.83 and np.percentile(iou, 5) > 0.70

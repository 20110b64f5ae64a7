"""WFLW list readers: hand-written files in the official layouts, error paths, real lists."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sepbn.data.errors import DatasetError, SkipReport
from sepbn.data.formats import DatasetWarning, read_wflw, read_wflw_attr, read_wflw_list
from sepbn.data.formats.wflw import ATTRIBUTE_LIST_NAMES, WFLW_ATTRIBUTES
from sepbn.data.protocols import get_protocol

RNG = np.random.default_rng(0)


def _points(offset: float = 0.0) -> np.ndarray:
    return np.round(100.0 + offset + 80.0 * RNG.random((98, 2)), 6)  # (98, 2) inside 100..180


def _coords(pts: np.ndarray) -> list[str]:
    return [f"{v:.6f}" for v in pts.reshape(-1)]  # interleaved x0 y0 x1 y1 ...


def _rect_line(pts: np.ndarray, box: list[float], flags: list[int], image: str) -> str:
    return " ".join(_coords(pts) + [f"{b:g}" for b in box] + [str(f) for f in flags] + [image])


def _layout(tmp_path: Path, images: list[str]) -> tuple[Path, Path]:
    """WFLW/WFLW_annotations/list_98pt_rect_attr_train_test and WFLW/WFLW_images."""
    ann = tmp_path / "WFLW" / "WFLW_annotations"
    (ann / "list_98pt_rect_attr_train_test").mkdir(parents=True)
    img_root = tmp_path / "WFLW" / "WFLW_images"
    for name in images:
        (img_root / name).parent.mkdir(parents=True, exist_ok=True)
        (img_root / name).write_bytes(b"jpeg")  # readers only check that the file exists
    return ann, img_root


def test_rect_attr_lines_are_parsed_exactly(tmp_path: Path) -> None:
    ann, img_root = _layout(tmp_path, ["0--Parade/a.jpg", "1--Handshaking/b.jpg"])
    p1, p2 = _points(), _points(5.0)
    f = ann / "list_98pt_rect_attr_train_test" / "list_98pt_rect_attr_test.txt"
    lines = [
        _rect_line(p1, [90, 95, 190, 185], [1, 0, 0, 1, 0, 1], "0--Parade/a.jpg"),
        "",
        _rect_line(p2, [95, 100, 195, 190], [0, 0, 0, 0, 1, 0], "1--Handshaking/b.jpg"),
    ]
    f.write_text("\n".join(lines) + "\n")
    recs = read_wflw_list(f)
    assert len(recs) == 2
    np.testing.assert_array_equal(recs[0].landmarks, p1)
    np.testing.assert_array_equal(recs[1].landmarks[97], p2[97])
    np.testing.assert_array_equal(recs[0].box, [90, 95, 190, 185])
    assert recs[0].attributes == {
        "pose": True,
        "expression": False,
        "illumination": False,
        "makeup": True,
        "occlusion": False,
        "blur": True,
    }
    assert recs[1].image_path == img_root / "1--Handshaking" / "b.jpg"
    assert recs[1].source == f"{f}:3"
    assert recs[0].protocol == "wflw" and recs[0].valid.all() and recs[0].occluded is None
    # A folder and a split find the same list; a subset name filters by the flag.
    assert len(read_wflw(tmp_path / "WFLW", "test")) == 2
    occl = read_wflw(ann, "occlusion")
    assert [r.source for r in occl] == [f"{f}:3"]


def _bad_file(tmp_path: Path, bad_line: str) -> Path:
    ann, _ = _layout(tmp_path, ["e/a.jpg"])
    f = ann / "list_98pt_rect_attr_train_test" / "list_98pt_rect_attr_train.txt"
    good = _rect_line(_points(), [90, 90, 190, 190], [0] * 6, "e/a.jpg")
    f.write_text("\n".join([good, bad_line, good]) + "\n")
    return f


def test_wrong_token_count_names_file_and_line(tmp_path: Path) -> None:
    short = " ".join(_rect_line(_points(), [90, 90, 190, 190], [0] * 6, "e/a.jpg").split()[2:])
    f = _bad_file(tmp_path, short)
    with pytest.raises(DatasetError, match=rf"{f}:2: expected 207 tokens .*got 205"):
        read_wflw_list(f)


@pytest.mark.parametrize(
    ("token", "reason"),
    [("nan", r"token 17 is 'nan' \(not finite\)"), ("1.2.3", r"token 17 '1.2.3' is not a number")],
)
def test_bad_number_names_token(tmp_path: Path, token: str, reason: str) -> None:
    tokens = _rect_line(_points(), [90, 90, 190, 190], [0] * 6, "e/a.jpg").split()
    tokens[16] = token
    f = _bad_file(tmp_path, " ".join(tokens))
    with pytest.raises(DatasetError, match=rf":2: {reason}"):
        read_wflw_list(f)


def test_skip_reports_count_and_reason(tmp_path: Path) -> None:
    tokens = _rect_line(_points(), [90, 90, 190, 190], [0] * 6, "e/a.jpg").split()
    tokens[3] = "inf"
    f = _bad_file(tmp_path, " ".join(tokens))
    report = SkipReport()
    with pytest.warns(DatasetWarning, match=r"kept 2 record\(s\); skipped 1 record"):
        recs = read_wflw_list(f, on_error="skip", report=report)
    assert len(recs) == 2
    assert len(report) == 1 and report.skipped[0].source == f"{f}:2"
    assert "token 4 is 'inf'" in report.summary()


def test_missing_image_and_bad_flags(tmp_path: Path) -> None:
    ann, _ = _layout(tmp_path, ["e/a.jpg"])
    f = ann / "list_98pt_rect_attr_train_test" / "list_98pt_rect_attr_test.txt"
    f.write_text(
        _rect_line(_points(), [90, 90, 190, 190], [0] * 6, "e/missing.jpg")
        + "\n"
        + _rect_line(_points(), [90, 90, 190, 190], [0, 2, 0, 0, 0, 0], "e/a.jpg")
        + "\n"
    )
    with pytest.raises(DatasetError, match=r":1 \(.*e/missing\.jpg\): image file not found"):
        read_wflw_list(f)
    report = SkipReport()
    with pytest.warns(DatasetWarning):
        assert read_wflw_list(f, on_error="skip", report=report) == []
    reasons = sorted(e.reason for e in report.skipped)
    assert reasons == ["attribute flags must be 0 or 1, got [0.0, 2.0, 0.0, 0.0, 0.0, 0.0]",
                       "image file not found"]  # fmt: skip


def test_degenerate_rect_fails_validation(tmp_path: Path) -> None:
    ann, _ = _layout(tmp_path, ["e/a.jpg"])
    f = ann / "list_98pt_rect_attr_train_test" / "list_98pt_rect_attr_test.txt"
    f.write_text(_rect_line(_points(), [150, 90, 150, 190], [0] * 6, "e/a.jpg") + "\n")
    with pytest.raises(DatasetError, match=rf"{f}:1: degenerate box"):
        read_wflw_list(f)


def test_no_image_folder_asks_for_image_root(tmp_path: Path) -> None:
    f = tmp_path / "list_98pt_rect_attr_test.txt"
    f.write_text(_rect_line(_points(), [90, 90, 190, 190], [0] * 6, "a.jpg") + "\n")
    with pytest.raises(DatasetError, match="pass image_root="):
        read_wflw_list(f)
    assert len(read_wflw_list(f, check_images=False)) == 1
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.jpg").write_bytes(b"x")
    assert read_wflw_list(f, image_root=tmp_path / "imgs")[0].image_path == tmp_path / "imgs/a.jpg"


def _attr_lists(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """Six per-attribute lists: face A in largepose+blur, B in occlusion, C in largepose."""
    ann, _ = _layout(tmp_path, ["e/a.jpg", "e/c.jpg"])
    d = ann / "list_98pt_test"
    d.mkdir()
    faces = {"A": _points(), "B": _points(3.0), "C": _points(6.0)}
    image = {"A": "e/a.jpg", "B": "e/a.jpg", "C": "e/c.jpg"}  # A and B share an image
    members = {"largepose": "AC", "blur": "A", "occlusion": "B"}
    for name in ATTRIBUTE_LIST_NAMES:
        rows = [" ".join([*_coords(faces[k]), image[k]]) for k in members.get(name, "")]
        (d / f"list_98pt_test_{name}.txt").write_text("".join(r + "\n" for r in rows))
    return ann, faces


def test_attribute_lists_merge_into_distinct_faces(tmp_path: Path) -> None:
    ann, faces = _attr_lists(tmp_path)
    recs = read_wflw_attr(ann)
    assert len(recs) == 3
    by_first = {tuple(r.landmarks[0]): r for r in recs}
    a = by_first[tuple(faces["A"][0])]
    assert a.attributes == {k: k in ("pose", "blur") for k in WFLW_ATTRIBUTES}
    np.testing.assert_array_equal(a.box, [*faces["A"].min(0), *faces["A"].max(0)])
    assert a.source.endswith("list_98pt_test_largepose.txt:1")
    b = by_first[tuple(faces["B"][0])]
    assert b.attributes["occlusion"] and not b.attributes["pose"]
    assert [r.attributes["pose"] for r in read_wflw_attr(ann, "largepose")] == [True, True]


def test_folder_without_rect_lists_falls_back_with_warning(tmp_path: Path) -> None:
    ann, _ = _attr_lists(tmp_path)
    with pytest.warns(DatasetWarning, match="merging the six per-attribute test lists"):
        assert len(read_wflw(ann, "test")) == 3
    assert len(read_wflw(ann, "largepose")) == 2  # read from list_98pt_test_largepose.txt
    with pytest.raises(DatasetError, match=r"list_98pt_rect_attr_train\.txt not found"):
        read_wflw(ann, "train")
    with pytest.raises(ValueError, match=r"unknown split 'val'; valid: one of \['train', 'test'"):
        read_wflw(ann, "val")


def test_missing_attribute_list_is_named(tmp_path: Path) -> None:
    ann, _ = _attr_lists(tmp_path)
    (ann / "list_98pt_test" / "list_98pt_test_makeup.txt").unlink()
    with pytest.raises(DatasetError, match=r"list_98pt_test_makeup\.txt"):
        read_wflw_attr(ann)


@pytest.mark.realdata
def test_real_attribute_lists(data_root: Path) -> None:
    ann = data_root / "WFLW" / "WFLW_annotations"
    recs = read_wflw_attr(ann, check_images=False)
    # README: 1966 distinct faces; each list's faces carry its attribute.
    assert len(recs) == 1966
    counts = {a: sum(r.attributes[a] for r in recs) for a in WFLW_ATTRIBUTES}
    assert counts == {
        "pose": 326,
        "expression": 314,
        "illumination": 698,
        "makeup": 206,
        "occlusion": 736,
        "blur": 773,
    }
    pts = np.stack([r.landmarks for r in recs])  # (N, 98, 2)
    # Point 60 is the image-left eye's outer corner, 72 the image-right one.
    assert (pts[:, 60, 0] < pts[:, 72, 0]).all()
    report = SkipReport()
    with pytest.warns(DatasetWarning, match="image file not found"):
        with_images = read_wflw_attr(ann, on_error="skip", report=report)
    # README: 425 of the faces have their image in WFLW_images; the rest are reported.
    assert len(with_images) == 425 and len(report) == 1966 - 425
    assert {e.reason for e in report.skipped} == {"image file not found"}
    assert all(r.image_path.is_file() for r in with_images[:20])
    with pytest.warns(DatasetWarning):
        blur = read_wflw(ann, "blur", on_error="skip")
    assert len(blur) == 146 and all(r.attributes["blur"] for r in blur)


@pytest.mark.realdata
def test_real_flip_permutation_mirrors_faces(data_root: Path) -> None:
    recs = read_wflw_attr(data_root / "WFLW" / "WFLW_annotations", check_images=False)
    proto = get_protocol("wflw")
    pts = np.stack([r.landmarks for r in recs])  # (N, 98, 2)
    scale = np.linalg.norm(pts[:, 60] - pts[:, 72], axis=-1)[:, None]  # inter-ocular

    def residual(perm: list[int]) -> float:
        mirrored = pts[:, perm] * np.array([-1.0, 1.0])
        a = pts - pts.mean(1, keepdims=True)
        b = mirrored - mirrored.mean(1, keepdims=True)
        return float(np.median(np.linalg.norm(a - b, axis=-1).mean(1) / scale[:, 0]))

    good = residual(list(proto.flip_perm))
    assert good < 0.5 * residual(list(range(98)))
    # Swapping only the eyes back breaks the mirror symmetry measurably.
    eyes_unswapped = list(proto.flip_perm)
    eyes_unswapped[60:76] = list(range(60, 76))
    assert good < 0.8 * residual(eyes_unswapped)


def test_a_nul_in_an_image_name_costs_its_line(tmp_path: Path) -> None:
    """Issue 22: Python's open() raises ValueError on such a path; it is a bad line."""
    f = _bad_file(tmp_path, _rect_line(_points(), [90, 90, 190, 190], [0] * 6, "e/a\x00.jpg"))
    with pytest.raises(DatasetError, match=r"train\.txt:2 \(.*\): image file unreadable"):
        read_wflw(f)
    with pytest.warns(DatasetWarning, match=r"kept 2 record\(s\); skipped 1"):
        assert len(read_wflw(f, on_error="skip")) == 2


def test_a_list_starting_with_a_byte_order_mark_is_valid(tmp_path: Path) -> None:
    f = _bad_file(tmp_path, _rect_line(_points(), [90, 90, 190, 190], [0] * 6, "e/a.jpg"))
    f.write_bytes(b"\xef\xbb\xbf" + f.read_bytes())
    assert len(read_wflw(f)) == 3

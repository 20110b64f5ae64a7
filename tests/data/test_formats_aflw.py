"""AFLWinfo_release.mat (written in its layout, v5 and v7.3) and real AFLW2000-3D samples."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io

from helpers import aflw_points_and_boxes
from sepbn.data.errors import DatasetError, SkipReport
from sepbn.data.formats import DatasetWarning, read_aflw, read_aflw2000, read_coco
from sepbn.data.formats.aflw import AFLW21_TO_19
from sepbn.data.protocols import get_protocol
from sepbn.data.records import FaceRecord, box_from_landmarks

RNG = np.random.default_rng(3)
N = 8
NUM_TRAIN = 5


def _aflw_info() -> dict[str, np.ndarray | list[str]]:
    data, bbox = aflw_points_and_boxes(RNG, N)
    mask = np.ones((N, 19))
    mask[[1, 6], 4] = 0  # face 2 (train or test) and face 7 have one invisible point
    ra = np.array([[3, 8, 1, 5, 2, 7, 4, 6]], dtype=np.float64)  # 1-based permutation
    names = [f"{k % 3}/image{k:05d}.jpg" for k in range(N)]
    return {"bbox": bbox, "data": data, "mask_new": mask, "ra": ra, "nameList": names}


def _write_v5(path: Path, info: dict) -> None:
    cell = np.empty((N, 1), dtype=object)
    for k, name in enumerate(info["nameList"]):
        cell[k, 0] = name
    scipy.io.savemat(path, {**{k: v for k, v in info.items() if k != "nameList"}, "nameList": cell})


def _write_v73(path: Path, info: dict) -> None:
    with h5py.File(path, "w", userblock_size=512) as f:
        refs = f.create_group("#refs#")
        cell = np.empty((1, N), dtype=h5py.ref_dtype)
        for k, name in enumerate(info["nameList"]):
            chars = np.array([[ord(c)] for c in name], dtype=np.uint16)  # MATLAB char, (len, 1)
            cell[0, k] = refs.create_dataset(f"n{k}", data=chars).ref
        f.create_dataset("nameList", data=cell)
        for key in ("bbox", "data", "mask_new", "ra"):
            f.create_dataset(key, data=np.asarray(info[key]).T)


def _images(root: Path, names: list[str]) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"jpg")


@pytest.mark.parametrize("writer", [_write_v5, _write_v73])
def test_aflwinfo_splits_and_values(tmp_path: Path, writer: object) -> None:
    info = _aflw_info()
    path = tmp_path / "AFLWinfo_release.mat"
    writer(path, info)  # type: ignore[operator]
    _images(tmp_path, info["nameList"])  # type: ignore[arg-type]
    train = read_aflw(path, "train", num_train=NUM_TRAIN)
    test = read_aflw(path, "test", num_train=NUM_TRAIN)
    rows = [int(r.source.rsplit(" ", 1)[1][:-1]) for r in train + test]
    assert rows == [3, 8, 1, 5, 2, 7, 4, 6]  # ra order, 1-based rows
    rec = train[1]  # row 8 -> index 7
    data, bbox = info["data"], info["bbox"]
    np.testing.assert_allclose(rec.landmarks[:, 0], data[7, :19] - 1)  # type: ignore[index]
    np.testing.assert_allclose(rec.landmarks[:, 1], data[7, 19:] - 1)  # type: ignore[index]
    left, right, top, bottom = bbox[7]  # type: ignore[index]
    np.testing.assert_allclose(rec.box, [left - 1, top - 1, right - 1, bottom - 1])
    assert rec.image_path == tmp_path / "1" / "image00007.jpg"
    assert rec.protocol == "aflw" and rec.valid.all() and not rec.occluded.any()
    np.testing.assert_array_equal(train[4].occluded, np.arange(19) == 4)  # row 2: mask_new 0
    # Frontal = test faces with every point visible: rows 7, 4, 6 minus row 7.
    frontal = read_aflw(path, "frontal", num_train=NUM_TRAIN)
    assert [r.source.rsplit(" ", 1)[1] for r in frontal] == ["4]", "6]"]
    assert not any(r.occluded.any() for r in frontal)


def test_aflwinfo_errors(tmp_path: Path) -> None:
    info = _aflw_info()
    path = tmp_path / "AFLWinfo_release.mat"
    _write_v5(path, info)
    with pytest.raises(DatasetError, match=r"num_train=20000 must be in 1\.\.7 for 8 faces"):
        read_aflw(path, "train")
    with pytest.raises(
        ValueError, match=r"unknown split 'full'; valid: one of \['train', 'test', 'frontal'\]"
    ):
        read_aflw(path, "full")
    with pytest.raises(
        DatasetError, match=r"\[record 3\] \(.*/2/image00002\.jpg\): image file not found"
    ):
        read_aflw(path, "train", num_train=NUM_TRAIN)
    _images(tmp_path, info["nameList"][1:])  # type: ignore[index]
    report = SkipReport()
    with pytest.warns(DatasetWarning, match=r"kept 4 record\(s\); skipped 1"):
        assert (
            len(read_aflw(path, "train", num_train=NUM_TRAIN, on_error="skip", report=report)) == 4
        )
    assert report.skipped[0].reason == "image file not found"
    _write_v5(path, {**info, "ra": np.array([[3, 8, 1, 5, 2, 7, 4, 4]])})
    with pytest.raises(DatasetError, match=r"\[ra\]: not a 1-based permutation of 1\.\.8"):
        read_aflw(path, "test", num_train=NUM_TRAIN)
    _write_v5(path, {**info, "data": info["data"][:, :37]})  # type: ignore[index]
    with pytest.raises(
        DatasetError, match=r"\[data\]: expected shape \(8, 38\) for 8 faces, got \(8, 37\)"
    ):
        read_aflw(path, "test", num_train=NUM_TRAIN)


def test_aflw2000_drops_ears_and_marks_missing(tmp_path: Path) -> None:
    pt2d = np.stack([100 + 100 * RNG.random(21), 100 + 100 * RNG.random(21)])  # (2, 21)
    pt2d[:, 3] = -1.0
    pt2d[0, 18] = -1.0  # real files mark a missing point by x = -1 alone sometimes
    scipy.io.savemat(tmp_path / "image00001.mat", {"pt2d": pt2d, "roi": np.zeros((1, 4))})
    (tmp_path / "image00001.jpg").write_bytes(b"jpg")
    (rec,) = read_aflw2000(tmp_path)
    keep = [i for i in range(21) if i not in (12, 16)]
    assert keep == list(AFLW21_TO_19)
    valid = np.ones(19, bool)
    valid[[3, 16]] = False  # 21-point index 18 is 19-point index 16
    np.testing.assert_array_equal(rec.valid, valid)
    np.testing.assert_allclose(rec.landmarks[valid], pt2d.T[keep][valid] - 1)
    np.testing.assert_array_equal(rec.landmarks[~valid], 0.0)
    np.testing.assert_allclose(rec.box, box_from_landmarks(rec.landmarks, valid))
    scipy.io.savemat(tmp_path / "image00002.mat", {"pt2d": pt2d[:, :19]})
    with pytest.raises(DatasetError, match=r"image00002\.mat: pt2d must be 2 x 21, got \(2, 19\)"):
        read_aflw2000(tmp_path)
    scipy.io.savemat(tmp_path / "image00002.mat", {"pt2d": pt2d})
    with pytest.raises(
        DatasetError, match=r"image00002\.mat \(.*image00002\.jpg\): image file not found"
    ):
        read_aflw2000(tmp_path)


def _mirror_residual(recs: list[FaceRecord], perm: list[int]) -> float:
    out = []
    for r in recs:
        both = r.valid & r.valid[perm]
        m = r.landmarks[perm] * np.array([-1.0, 1.0])
        a = r.landmarks[both] - r.landmarks[both].mean(0)
        b = m[both] - m[both].mean(0)
        out.append(np.linalg.norm(a - b, axis=1).mean() / np.sqrt(np.prod(r.box[2:] - r.box[:2])))
    return float(np.median(out))


@pytest.mark.realdata
def test_real_aflw2000_point_semantics(data_root: Path) -> None:
    folder = data_root / "AFLW2000-3D_samples" / "AFLW2000"
    recs = read_aflw2000(folder)
    assert len(recs) == 16
    assert 0 < int((~np.stack([r.valid for r in recs])).sum()) <= 16 * 9  # README: 0-9 missing
    # The dropped points are the ears: where annotated, outside the eye corners on their side.
    seen = 0
    for f in sorted(folder.glob("*.mat")):
        x = scipy.io.loadmat(f)["pt2d"][0]
        if x[12] >= 0 and x[6] >= 0:
            assert x[12] < x[6]
            seen += 1
        if x[16] >= 0 and x[11] >= 0:
            assert x[16] > x[11]
            seen += 1
    assert seen >= 16
    # The 19-point flip permutation maps left to right: mirrored faces match the originals
    # (left brow onto right brow, ...), much better than without permuting, and better than
    # after dropping the wrong two points (1-based 13 and 17 taken as 0-based).
    perm = list(get_protocol("aflw").flip_perm)
    good = _mirror_residual(recs, perm)
    assert good < 0.5 * _mirror_residual(recs, list(range(19)))
    wrong = []
    for f in sorted(folder.glob("*.mat")):
        pts = scipy.io.loadmat(f)["pt2d"].T[[i for i in range(21) if i not in (13, 17)]]
        valid = (pts >= 0).all(1)
        wrong.append(
            FaceRecord(
                None,
                np.where(valid[:, None], pts, 0),
                box_from_landmarks(pts, valid),
                "aflw",
                valid=valid,
            )
        )
    assert good < 0.75 * _mirror_residual(wrong, perm)
    # Brows in particular: after flipping the image, the points now labelled left brow (0-2)
    # are the mirrored right brow and must land on the left brow, not on the right one.
    near, far = [], []
    for r in recs:
        if not r.valid[:6].all():
            continue
        flipped = get_protocol("aflw").flip(r.landmarks, 450.0)
        both = r.valid & r.valid[perm]
        flipped += (r.landmarks[both] - flipped[both]).mean(0)  # undo the mirror's shift
        near.append(np.linalg.norm(flipped[:3] - r.landmarks[:3], axis=1).mean())
        far.append(np.linalg.norm(flipped[:3] - r.landmarks[3:6][::-1], axis=1).mean())
    assert len(near) >= 5 and np.median(near) < 0.5 * np.median(far)


@pytest.mark.realdata
def test_real_mmpose_aflw_json(data_root: Path) -> None:
    recs = read_coco(data_root / "mmpose_testdata" / "aflw" / "test_aflw.json")
    assert [r.protocol for r in recs] == ["aflw", "aflw"]
    perm = list(get_protocol("aflw").flip_perm)
    assert _mirror_residual(recs, perm) < 0.4 * _mirror_residual(recs, list(range(19)))


# Bad input, round two (issue 22): a variable of the wrong MATLAB class is one line.


def test_aflw_ra_as_a_string_is_one_line(tmp_path: Path) -> None:
    info = _aflw_info()
    path = tmp_path / "AFLWinfo_release.mat"
    _write_v5(path, {**info, "ra": "3 8 1 5 2 7 4 6"})
    for on_error in ("raise", "skip"):
        with pytest.raises(
            DatasetError, match=r"AFLWinfo_release\.mat\[ra\]: must be a numeric array, got a <U"
        ):
            read_aflw(path, "test", num_train=NUM_TRAIN, on_error=on_error)
    _write_v5(path, {**info, "ra": np.array([[3, 8, 1, 5, 2, 7, 4, 1e300]])})
    with pytest.raises(DatasetError, match=r"\[ra\]: not a 1-based permutation"):
        read_aflw(path, "test", num_train=NUM_TRAIN)


def test_an_aflw_file_name_of_the_wrong_class_costs_its_face(tmp_path: Path) -> None:
    info = _aflw_info()
    names = list(info["nameList"])  # type: ignore[arg-type]
    _images(tmp_path, names)
    path = tmp_path / "AFLWinfo_release.mat"
    cell = np.empty((N, 1), dtype=object)
    for k, name in enumerate(names):
        cell[k, 0] = np.array([1.5, 2.5]) if k == 3 else name  # face 4: numbers, not a name
    scipy.io.savemat(path, {**{k: v for k, v in info.items() if k != "nameList"}, "nameList": cell})
    with pytest.raises(
        DatasetError, match=r"\[record 4\]: nameList must be a string, got a float64 array"
    ):
        read_aflw(path, "test", num_train=NUM_TRAIN)  # ra puts face 4 in the test part
    with pytest.warns(DatasetWarning, match=r"kept 2 record\(s\); skipped 1"):
        assert len(read_aflw(path, "test", num_train=NUM_TRAIN, on_error="skip")) == 2


def test_aflw2000_pt2d_of_the_wrong_class_costs_its_file(tmp_path: Path) -> None:
    for k, pt2d in enumerate(["x" * 21, 100 + 100 * RNG.random((2, 21))], start=1):
        scipy.io.savemat(tmp_path / f"image0000{k}.mat", {"pt2d": pt2d})
        (tmp_path / f"image0000{k}.jpg").write_bytes(b"jpg")
    with pytest.raises(DatasetError, match=r"image00001\.mat\[pt2d\]: must be a numeric array"):
        read_aflw2000(tmp_path)
    with pytest.warns(DatasetWarning, match=r"kept 1 record\(s\); skipped 1"):
        assert len(read_aflw2000(tmp_path, on_error="skip")) == 1

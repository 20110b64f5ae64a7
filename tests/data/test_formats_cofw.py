"""COFW .mat files (v7.3 HDF5 and v5) written in the real layouts, and the real COFW68 data."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io

from sepbn.data.errors import DatasetError, SkipReport
from sepbn.data.formats import DatasetWarning, read_coco, read_cofw, read_cofw68
from sepbn.data.protocols import get_protocol

RNG = np.random.default_rng(2)


def _part(n: int = 3) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """``n`` images (the second grayscale), ``phis`` (n, 87) and ``bboxes`` (n, 4) x y w h."""
    images, phis, boxes = [], [], []
    for i in range(n):
        h, w = 60 + 4 * i, 50 + 2 * i
        img = RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)
        images.append(img[:, :, 0] if i == 1 else img)
        xy = 10.0 + 30.0 * RNG.random((2, 29))  # 1-based MATLAB pixels inside the image
        occ = (RNG.random(29) < 0.3).astype(float)
        phis.append(np.concatenate([xy[0], xy[1], occ]))
        boxes.append([8.0, 9.0, 35.0, 34.0])
    return images, np.array(phis), np.array(boxes)


def _write_v73(
    path: Path, parts: dict[str, tuple[list[np.ndarray], np.ndarray, np.ndarray]]
) -> None:
    """MATLAB v7.3 layout: transposed arrays, cells as object references into '#refs#'."""
    suffix = {"train": "Tr", "test": "T"}
    with h5py.File(path, "w", userblock_size=512) as f:
        refs = f.create_group("#refs#")
        for split, (images, phis, boxes) in parts.items():
            s = suffix[split]
            cell = np.empty((1, len(images)), dtype=h5py.ref_dtype)
            for i, img in enumerate(images):
                cell[0, i] = refs.create_dataset(f"{s}{i}", data=img.T).ref  # (3, W, H) / (W, H)
            f.create_dataset(f"Is{s}", data=cell)
            f.create_dataset(f"phis{s}", data=phis.T)  # (87, N)
            f.create_dataset(f"bboxes{s}", data=boxes.T)  # (4, N)


def _write_v5(
    path: Path, split: str, images: list[np.ndarray], phis: np.ndarray, boxes: np.ndarray
) -> None:
    s = {"train": "Tr", "test": "T"}[split]
    cell = np.empty((len(images), 1), dtype=object)
    for i, img in enumerate(images):
        cell[i, 0] = img
    scipy.io.savemat(path, {f"Is{s}": cell, f"phis{s}": phis, f"bboxes{s}": boxes})


def _check(
    recs: list, images: list[np.ndarray], phis: np.ndarray, boxes: np.ndarray, path: Path
) -> None:
    assert len(recs) == len(images)
    for i, (r, img) in enumerate(zip(recs, images)):
        expected = img if img.ndim == 3 else np.repeat(img[:, :, None], 3, axis=2)
        np.testing.assert_array_equal(r.image, expected)
        np.testing.assert_allclose(r.landmarks[:, 0], phis[i, :29] - 1)
        np.testing.assert_allclose(r.landmarks[:, 1], phis[i, 29:58] - 1)
        np.testing.assert_array_equal(r.occluded, phis[i, 58:] == 1)
        np.testing.assert_allclose(r.box, [7, 8, 42, 42])  # x-1, y-1, x-1+w, y-1+h
        assert r.protocol == "cofw" and r.image_path is None and r.valid.all()
        assert r.source == f"{path}[record {i + 1}]"


def test_v73_hdf5_file(tmp_path: Path) -> None:
    train, test = _part(3), _part(2)
    path = tmp_path / "COFW_train_color.mat"
    _write_v73(path, {"train": train})
    _check(read_cofw(path), *train, path)
    both = tmp_path / "both.mat"
    _write_v73(both, {"train": train, "test": test})
    _check(read_cofw(both, "test"), *test, both)
    with pytest.raises(DatasetError, match=r"holds both COFW parts.*pass split="):
        read_cofw(both)


def test_v5_file(tmp_path: Path) -> None:
    test = _part(3)
    path = tmp_path / "COFW_test_color.mat"
    _write_v5(path, "test", *test)
    _check(read_cofw(path), *test, path)
    with pytest.raises(DatasetError, match=r"no COFW train part: needs variables \['IsTr'"):
        read_cofw(path, "train")


def test_bad_files(tmp_path: Path) -> None:
    images, phis, boxes = _part(2)
    path = tmp_path / "c.mat"
    _write_v5(path, "test", images, phis[:, :58], boxes)
    with pytest.raises(
        DatasetError, match=r"c\.mat\[phisT\]: expected shape \(2, 87\), got \(2, 58\)"
    ):
        read_cofw(path)
    (tmp_path / "junk.mat").write_bytes(b"MATLAB 5.0 MAT-file, not really")
    with pytest.raises(DatasetError, match=r"junk\.mat: not a readable MATLAB \.mat file"):
        read_cofw(tmp_path / "junk.mat")
    with pytest.raises(DatasetError, match="MATLAB file not found"):
        read_cofw(tmp_path / "absent.mat")


def test_bad_records_name_record_and_skip(tmp_path: Path) -> None:
    images, phis, boxes = _part(3)
    phis[0, 3] = np.nan
    phis[2, 29 + 5] = 500.0  # y far below the 68-px image and the box
    boxes[2] = [8.0, 9.0, 35.0, 600.0]  # box tall enough that only the image check fires
    path = tmp_path / "COFW_test_color.mat"
    _write_v5(path, "test", images, phis, boxes)
    with pytest.raises(
        DatasetError, match=r"\[record 1\]: non-finite landmark coordinates at point\(s\) \[3\]"
    ):
        read_cofw(path)
    report = SkipReport()
    with pytest.warns(DatasetWarning, match=r"kept 1 record\(s\); skipped 2"):
        recs = read_cofw(path, on_error="skip", report=report)
    assert [r.source for r in recs] == [f"{path}[record 2]"]
    assert "outside the 54x68 image" in report.skipped[1].reason


def _cofw68_layout(root: Path, faces: list[np.ndarray]) -> Path:
    ann = root / "COFW68_Data" / "test_annotations"
    ann.mkdir(parents=True)
    for i, pts in enumerate(faces, start=1):
        occ = np.zeros((1, 68), np.uint8)
        occ[0, :i] = 1
        scipy.io.savemat(ann / f"{i}_points.mat", {"Points": pts, "Occ": occ})
    boxes = np.array([[20, 21, 40, 42]] * len(faces), dtype=np.int16)
    scipy.io.savemat(root / "COFW68_Data" / "cofw68_test_bboxes.mat", {"bboxes": boxes})
    return root / "COFW68_Data"


def test_cofw68_with_and_without_images(tmp_path: Path) -> None:
    faces = [25.0 + 30.0 * RNG.random((68, 2)) for _ in range(3)]
    folder = _cofw68_layout(tmp_path, faces)
    recs = read_cofw68(folder)
    assert len(recs) == 3 and all(r.image is None and r.image_path is None for r in recs)
    np.testing.assert_allclose(recs[1].landmarks, faces[1] - 1)
    np.testing.assert_allclose(recs[1].box, [19, 20, 59, 62])
    assert recs[2].occluded.sum() == 3 and recs[2].protocol == "300w"
    images, phis, boxes = _part(3)
    mat = tmp_path / "COFW_test_color.mat"
    _write_v73(mat, {"test": (images, phis, boxes)})
    with_images = read_cofw68(folder / "test_annotations", cofw_mat=mat)
    np.testing.assert_array_equal(with_images[2].image, images[2])
    assert with_images[1].image.shape == (*images[1].shape, 3)
    scipy.io.savemat(
        folder / "test_annotations" / "2_points.mat", {"Points": faces[1][:60], "Occ": 0}
    )
    with pytest.raises(DatasetError, match=r"2_points\.mat: expected Points 68 x 2 and Occ 1 x 68"):
        read_cofw68(folder)
    _write_v73(mat, {"test": (images[:2], phis[:2], boxes[:2])})
    with pytest.raises(DatasetError, match="has 2 test images, COFW68 indexes up to 3"):
        read_cofw68(folder, cofw_mat=mat)


@pytest.mark.realdata
def test_real_cofw68_matches_real_cofw29(data_root: Path) -> None:
    recs = read_cofw68(data_root / "COFW68" / "COFW68_Data")
    assert len(recs) == 507
    assert [r.source.rsplit("/", 1)[1] for r in recs[:3]] == [f"{i}_points.mat" for i in (1, 2, 3)]
    # mmpose's two COFW test images are test indices 421 and 460 (README); the 29-point and
    # 68-point annotations of the same face must agree on shared points: COFW29 8/10/11/9 are
    # the eye corners left to right (iBUG 36/39/42/45), 22/23 the mouth corners (48/54),
    # 28 the chin (8).
    cofw29 = read_coco(data_root / "mmpose_testdata" / "cofw" / "test_cofw.json")
    assert [r.protocol for r in cofw29] == ["cofw", "cofw"]
    for face in cofw29:
        index = {"001766.jpg": 421, "001805.jpg": 460}[face.image_path.name]
        r68 = recs[index - 1]
        d = np.linalg.norm(
            r68.landmarks[[36, 39, 42, 45, 48, 54, 8]] - face.landmarks[[8, 10, 11, 9, 22, 23, 28]],
            axis=1,
        )
        assert d.max() < 5.0, d
        assert face.occluded.sum() in (6, 9)  # v = 1 marks occluded points in this file
    # COFW29 flip permutation on these real faces.
    proto = get_protocol("cofw")
    for face in cofw29:
        pts = face.landmarks
        mirrored = pts[list(proto.flip_perm)] * np.array([-1.0, 1.0])
        mirrored_id = pts * np.array([-1.0, 1.0])
        err = np.linalg.norm((mirrored - mirrored.mean(0)) - (pts - pts.mean(0)), axis=1).mean()
        err_id = np.linalg.norm(
            (mirrored_id - mirrored_id.mean(0)) - (pts - pts.mean(0)), axis=1
        ).mean()
        assert err < 0.3 * err_id


# Bad input, round two (issue 22): a variable of the wrong MATLAB class is one line.


def _cell(*items: object) -> np.ndarray:
    cell = np.empty((len(items), 1), dtype=object)
    for i, item in enumerate(items):
        cell[i, 0] = item
    return cell


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("phisT", "not numbers", r"\[phisT\]: must be a numeric array, got a <U11 array"),
        ("bboxesT", _cell(1.0, 2.0), r"\[bboxesT\]: must be a numeric array, got a cell array"),
        ("phisT", {"x": 1.0}, r"\[phisT\]: must be a numeric array"),
        ("IsT", np.ones((2, 2)), r"\[IsT\]: unreadable \(TypeError: expected a cell array"),
    ],
)
def test_cofw_variables_of_the_wrong_class(
    tmp_path: Path, key: str, value: object, reason: str
) -> None:
    images, phis, boxes = _part(2)
    path = tmp_path / "COFW_test_color.mat"
    cell = np.empty((2, 1), dtype=object)
    cell[0, 0], cell[1, 0] = images
    scipy.io.savemat(path, {"IsT": cell, "phisT": phis, "bboxesT": boxes, key: value})
    for on_error in ("raise", "skip"):  # the file's arrays are shared by all faces
        with pytest.raises(DatasetError, match=rf"COFW_test_color\.mat{reason}") as info:
            read_cofw(path, on_error=on_error)
        assert "\n" not in str(info.value)


def test_a_cofw_image_of_the_wrong_class_costs_its_face(tmp_path: Path) -> None:
    images, phis, boxes = _part(3)
    path = tmp_path / "COFW_test_color.mat"
    scipy.io.savemat(
        path, {"IsT": _cell(images[0], "pixels?", images[2]), "phisT": phis, "bboxesT": boxes}
    )
    with pytest.raises(DatasetError, match=r"\[record 2\]: image must be H x W or H x W x 3"):
        read_cofw(path)
    with pytest.warns(DatasetWarning, match=r"kept 2 record\(s\); skipped 1"):
        assert len(read_cofw(path, on_error="skip")) == 2


@pytest.mark.parametrize(
    ("variables", "reason"),
    [
        ({"Points": "x", "Occ": np.zeros((1, 68))}, r"\[Points\]: must be a numeric array"),
        ({"Points": np.ones((68, 2)), "Occ": _cell("a")}, r"\[Occ\]: must be a numeric array"),
        ({"Points": np.ones((68, 2)) + 1j, "Occ": 0}, r"\[Points\]: must be a numeric array"),
    ],
)
def test_cofw68_fields_of_the_wrong_class_cost_their_face(
    tmp_path: Path, variables: dict, reason: str
) -> None:
    faces = [25.0 + 30.0 * RNG.random((68, 2)) for _ in range(3)]
    folder = _cofw68_layout(tmp_path, faces)
    scipy.io.savemat(folder / "test_annotations" / "2_points.mat", variables)
    with pytest.raises(DatasetError, match=rf"2_points\.mat{reason}"):
        read_cofw68(folder)
    with pytest.warns(DatasetWarning, match=r"kept 2 record\(s\); skipped 1"):
        assert len(read_cofw68(folder, on_error="skip")) == 2
    scipy.io.savemat(folder / "cofw68_test_bboxes.mat", {"bboxes": "20 21 40 42"})
    with pytest.raises(DatasetError, match=r"bboxes\.mat\[bboxes\]: must be a numeric array"):
        read_cofw68(folder, on_error="skip")


def test_cofw68_index_zero_and_bad_box_rows_are_named(tmp_path: Path) -> None:
    faces = [25.0 + 30.0 * RNG.random((68, 2)) for _ in range(2)]
    folder = _cofw68_layout(tmp_path, faces)
    boxes = np.array([[20, 21, 40, 42], [20, 21, np.nan, 42]])
    scipy.io.savemat(folder / "cofw68_test_bboxes.mat", {"bboxes": boxes})
    scipy.io.savemat(folder / "test_annotations" / "0_points.mat", {"Points": faces[0], "Occ": 0})
    report = SkipReport()
    with pytest.warns(DatasetWarning, match=r"kept 1 record\(s\); skipped 2"):
        assert len(read_cofw68(folder, on_error="skip", report=report)) == 1
    assert report.skipped[0].reason.startswith("test indices start at 1")
    assert report.skipped[1].source.endswith("cofw68_test_bboxes.mat[bboxes row 2]")


def test_a_mat_file_that_would_crash_scipy_is_one_line(tmp_path: Path) -> None:
    """A flipped byte in a data-type code made scipy's v5 reader segfault (scipy#25349)."""
    path = tmp_path / "cofw68_test_bboxes.mat"
    scipy.io.savemat(path, {"bboxes": np.ones((3, 4))})
    data = bytearray(path.read_bytes())
    tag = data.index(b"bboxes") + 8  # the tag of the array data follows the padded name
    assert data[tag] == 9  # miDOUBLE
    data[tag] = 8  # no such data type: scipy looked it up in a table of pointers, found NULL
    path.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match=r"not a readable MATLAB \.mat file .*data type code 8"):
        read_cofw(path)

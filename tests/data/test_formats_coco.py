"""COCO/mmpose keypoint JSON: real mmpose files, write/read round trip, error paths."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from sepbn.data.errors import DatasetError, SkipReport
from sepbn.data.formats import DatasetWarning, read_coco, read_pts_folder, write_coco
from sepbn.data.formats.coco import image_size
from sepbn.data.records import FaceRecord

RNG = np.random.default_rng(4)


def _image(path: Path, h: int = 120, w: int = 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), RNG.integers(0, 256, (h, w, 3), dtype=np.uint8))
    return path


def _record(path: Path | None, n: int = 5, protocol: str = "wider5", **kw: object) -> FaceRecord:
    pts = 30.0 + 40.0 * RNG.random((n, 2))
    fields = {"image_path": path, "landmarks": pts, "box": np.r_[pts.min(0) - 3, pts.max(0) + 3]}
    fields.update(kw)
    return FaceRecord(protocol=protocol, **fields)  # type: ignore[arg-type]


def _json(tmp_path: Path, anns: list[dict], images: list[dict] | None = None) -> Path:
    _image(tmp_path / "a.png")
    images = images or [{"id": 7, "file_name": "a.png", "height": 120, "width": 100}]
    path = tmp_path / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": anns}, indent=1))
    return path


def _kps(n: int = 5, v: int = 1) -> list[float]:
    return [c for x, y in 30.0 + 40.0 * RNG.random((n, 2)) for c in (x, y, v)]


def test_round_trip_keeps_every_field(tmp_path: Path) -> None:
    img = _image(tmp_path / "imgs" / "sub" / "face.jpg")
    valid = np.array([True, True, False, True, True])
    occluded = np.array([False, True, False, False, False])
    records = [
        _record(img, source="x:1"),
        _record(
            img, valid=valid, occluded=occluded, attributes={"pose": True, "blur": False}, domain=2
        ),
        _record(_image(tmp_path / "imgs" / "other.png", 90, 80)),
    ]
    records[1].landmarks[2] = 0.0  # readers store 0.0 at points that are not annotated
    path = write_coco(records, tmp_path / "out" / "ann.json", image_root=tmp_path / "imgs")
    data = json.loads(path.read_text())
    assert [i["file_name"] for i in data["images"]] == ["sub/face.jpg", "other.png"]
    assert data["images"][1]["height"] == 90 and data["images"][1]["width"] == 80
    assert data["annotations"][1]["keypoints"][6:9] == [0.0, 0.0, 0]  # v = 0: not annotated
    assert data["annotations"][1]["keypoints"][5] == 1  # v = 1: occluded
    back = read_coco(path, image_root=tmp_path / "imgs")
    assert len(back) == 3
    for r, b in zip(records, back):
        assert b.image_path == r.image_path and b.protocol == "wider5"
        np.testing.assert_array_equal(b.landmarks, r.landmarks)
        np.testing.assert_allclose(b.box, r.box, rtol=0, atol=1e-12)
        np.testing.assert_array_equal(b.valid, r.valid)
        expected_occ = r.occluded if r.occluded is not None else np.zeros(5, bool)
        np.testing.assert_array_equal(b.occluded, expected_occ)
        assert b.attributes == r.attributes and b.domain == r.domain
    # Without image_root the names are relative to the JSON's folder.
    path2 = write_coco(records, tmp_path / "out2" / "ann.json")
    assert [r.image_path.resolve() for r in read_coco(path2)] == [
        img,
        img,
        tmp_path / "imgs" / "other.png",
    ]


def test_round_trip_in_memory_images(tmp_path: Path) -> None:
    pixels = RNG.integers(0, 256, (64, 48, 3), dtype=np.uint8)
    rec = _record(None, n=29, protocol="cofw", image=pixels, occluded=np.arange(29) < 4)
    with pytest.raises(ValueError, match="need image_root"):
        write_coco([rec], tmp_path / "ann.json")
    path = write_coco([rec], tmp_path / "ann.json", image_root=tmp_path / "images")
    (back,) = read_coco(path, image_root=tmp_path / "images")
    assert back.protocol == "cofw" and back.occluded.sum() == 4
    decoded = cv2.cvtColor(cv2.imread(str(back.image_path)), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(decoded, pixels)  # PNG is lossless
    with pytest.raises(ValueError, match=r"one protocol, got \['cofw', 'wider5'\]"):
        write_coco([rec, _record(None)], tmp_path / "mixed.json", image_root=tmp_path)


def test_protocol_option_and_inference(tmp_path: Path) -> None:
    path = _json(
        tmp_path, [{"id": 1, "image_id": 7, "keypoints": _kps(5), "bbox": [20, 20, 60, 60]}]
    )
    (rec,) = read_coco(path)
    assert rec.protocol == "wider5" and rec.occluded is None  # v = 1 everywhere: mmpose style
    np.testing.assert_array_equal(rec.box, [20, 20, 80, 80])
    path = _json(tmp_path, [{"id": 1, "image_id": 7, "keypoints": _kps(7)}])
    with pytest.raises(
        DatasetError, match=r"cannot infer the protocol of 7-point landmarks.*pass protocol="
    ):
        read_coco(path)
    with pytest.raises(
        DatasetError, match=r"ann\.json\[annotation 1\]: expected 15 keypoint values"
    ):
        read_coco(path, protocol="wider5")
    with pytest.raises(ValueError, match="unknown landmark protocol 'p7'"):
        read_coco(path, protocol="p7")


@pytest.mark.parametrize(
    ("ann", "reason"),
    [
        ({"image_id": 9, "keypoints": _kps()}, r"image_id 9 is not in 'images'"),
        (
            {"image_id": 7, "keypoints": [*_kps()[:-3], "a", 1, 1]},
            r"keypoints\[12\] must be a finite number, got 'a'",
        ),
        (
            {"image_id": 7, "keypoints": [*_kps()[:-3], float("nan"), 1, 1]},
            r"keypoints\[12\] must be a finite number, got nan",
        ),
        (
            {"image_id": 7, "keypoints": _kps(), "bbox": [1, 2, 3]},
            r"bbox must be a list of 4 numbers, got \[1, 2, 3\]",
        ),
        ({"image_id": 7, "keypoints": _kps(), "bbox": [40, 40, 0, 30]}, "degenerate box"),
        ({"image_id": 7, "keypoints": _kps(v=0)}, "no valid"),
        # Issue 22: each of these was a traceback, also under on_error="skip".
        ({"image_id": 7, "keypoints": None}, "expected 15 keypoint values .* got None"),
        ({"image_id": 7, "keypoints": 7}, "expected 15 keypoint values .* got 7"),
        (
            {"image_id": 7, "keypoints": _kps(), "domain": "left"},
            r"domain must be an integer >= -1, got 'left'",
        ),
        ({"image_id": 7, "keypoints": _kps(), "domain": 1.5}, "domain must be an integer"),
        ({"image_id": 7, "keypoints": _kps(), "bbox": "1234"}, "bbox must be a list of 4"),
        ({"image_id": 7, "keypoints": _kps(), "bbox": [1, 2, 10**400, 4]}, r"bbox\[2\] must"),
        ({"image_id": [7], "keypoints": _kps()}, "image_id must be an integer or a string"),
        ({"image_id": 7, "keypoints": _kps(), "attributes": {"pose": "yes"}}, "attributes.pose"),
    ],
)
def test_bad_annotations_are_named(tmp_path: Path, ann: dict, reason: str) -> None:
    good = {"image_id": 7, "keypoints": _kps()}
    path = _json(tmp_path, [good, ann, good])
    with pytest.raises(DatasetError, match=rf"ann\.json\[annotation 2\]: {reason}"):
        read_coco(path, protocol="wider5")
    report = SkipReport()
    with pytest.warns(DatasetWarning, match=r"kept 2 record\(s\); skipped 1"):
        assert len(read_coco(path, protocol="wider5", on_error="skip", report=report)) == 2


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("width", "abc", "width must be an integer >= 1, got 'abc'"),
        ("width", None, "width must be an integer >= 1, got None"),
        ("height", 0, "height must be an integer >= 1, got 0"),
        ("height", 1e400, "height must be an integer >= 1, got inf"),
        ("file_name", 12, "file_name must be a non-empty string"),
        ("file_name", "a\x00.png", "file_name must be a non-empty string without NUL"),
    ],
)
def test_bad_image_entries_cost_their_faces(
    tmp_path: Path, field: str, value: object, reason: str
) -> None:
    images = [
        {"id": 7, "file_name": "a.png", "height": 120, "width": 100},
        {"id": 8, "file_name": "a.png", "height": 120, "width": 100, field: value},
    ]
    good = {"image_id": 7, "keypoints": _kps()}
    path = _json(tmp_path, [good, {"image_id": 8, "keypoints": _kps()}, good], images)
    with pytest.raises(DatasetError, match=rf"ann\.json\[image 2\]: {reason}") as info:
        read_coco(path, protocol="wider5")
    assert "\n" not in str(info.value)
    report = SkipReport()
    with pytest.warns(DatasetWarning, match=r"kept 2 record\(s\); skipped 1"):
        assert len(read_coco(path, protocol="wider5", on_error="skip", report=report)) == 2
    (skipped,) = report.skipped
    assert skipped.source.endswith("ann.json[annotation 2]")
    assert f"its image entry {path}[image 2]: {reason}" in skipped.reason


def test_an_image_entry_without_id_is_reported_once_under_skip(tmp_path: Path) -> None:
    images = [{"id": 7, "file_name": "a.png"}, {"file_name": "b.png"}, ["not", "an", "entry"]]
    path = _json(tmp_path, [{"image_id": 7, "keypoints": _kps()}], images)
    with pytest.raises(DatasetError, match=r"\[image 2\]: image entry needs 'id'"):
        read_coco(path)
    report = SkipReport()
    with pytest.warns(DatasetWarning):
        assert len(read_coco(path, on_error="skip", report=report)) == 1
    assert [e.source.rsplit("[", 1)[1] for e in report.skipped] == ["image 2]", "image 3]"]


def test_json_nested_too_deeply_or_not_coco_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    for on_error in ("raise", "skip"):
        with pytest.raises(DatasetError, match=r"deep\.json: invalid JSON: nested too deeply"):
            read_coco(path, on_error=on_error)
    path.write_text('{"images": {"id": 1}, "annotations": []}')
    with pytest.raises(DatasetError, match=r"'images' must be a list, got \{'id': 1\}"):
        read_coco(path)
    path.write_text('{"images": [], "annotations": [], "info": {"sepbn_protocol": "p9"}}')
    with pytest.raises(DatasetError, match=r"deep\.json\[info\]: unknown landmark protocol 'p9'"):
        read_coco(path)


def test_a_byte_order_mark_is_allowed(tmp_path: Path) -> None:
    path = _json(tmp_path, [{"image_id": 7, "keypoints": _kps()}])
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert len(read_coco(path)) == 1


def test_file_level_errors(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{"images": [],\n "annotations": [\n  {"id": 1,}\n]}')
    with pytest.raises(DatasetError, match=r"bad\.json:3: invalid JSON"):
        read_coco(path)
    path.write_text('{"images": []}')
    with pytest.raises(DatasetError, match="needs 'images' and 'annotations'"):
        read_coco(path)
    # Landmarks far outside the image given by width/height.
    pts = [500.0, 30.0, 1, *_kps(4)]
    path = _json(tmp_path, [{"image_id": 7, "keypoints": pts, "bbox": [20, 20, 480, 60]}])
    with pytest.raises(
        DatasetError, match=r"\[0\] lie more than 0.5 x .* outside the 100x120 image"
    ):
        read_coco(path)
    images = [{"id": 7, "file_name": "gone.png", "height": 120, "width": 100}]
    path = _json(tmp_path, [{"image_id": 7, "keypoints": _kps()}], images)
    with pytest.raises(
        DatasetError, match=r"\[annotation 1\] \(.*gone\.png\): image file not found"
    ):
        read_coco(path)


@pytest.mark.realdata
def test_real_mmpose_files(data_root: Path) -> None:
    root = data_root / "mmpose_testdata"
    expected = {
        "300w/test_300w.json": ("300w", 2, False),
        "wflw/test_wflw.json": ("wflw", 4, False),
        "cofw/test_cofw.json": ("cofw", 2, True),
        "aflw/test_aflw.json": ("aflw", 2, False),
        "300wlp/test_300wlp.json": ("300w", 2, True),
        "300vw/anno_300vw.json": ("300w", 3, False),
    }
    for name, (protocol, count, has_occlusion) in expected.items():
        recs = read_coco(root / name)
        assert [r.protocol for r in recs] == [protocol] * count, name
        assert all((r.occluded is not None) == has_occlusion for r in recs), name
        for r in recs:
            h, w = cv2.imread(str(r.image_path)).shape[:2]
            assert ((r.landmarks >= -1) & (r.landmarks <= [w, h])).all(), name
    wflw = read_coco(root / "wflw" / "test_wflw.json")
    assert all(r.landmarks[60, 0] < r.landmarks[72, 0] for r in wflw)
    # 300-VW has no bbox: the box is the landmarks' box.
    vw = read_coco(root / "300vw" / "anno_300vw.json")[0]
    np.testing.assert_allclose(vw.box, [*vw.landmarks.min(0), *vw.landmarks.max(0)])
    with pytest.raises(DatasetError, match="106-point"):
        read_coco(root / "lapa" / "test_lapa.json")


@pytest.mark.realdata
def test_real_convert_300w_to_coco_and_back(data_root: Path, tmp_path: Path) -> None:
    recs = read_pts_folder(data_root / "300W" / "lfpw" / "testset")[:10]
    path = write_coco(recs, tmp_path / "lfpw.json", image_root=data_root / "300W")
    data = json.loads(path.read_text())
    for img in data["images"]:
        decoded = cv2.imread(str(data_root / "300W" / img["file_name"]))
        assert (img["height"], img["width"]) == decoded.shape[:2]
    back = read_coco(path, image_root=data_root / "300W")
    assert [b.image_path for b in back] == [r.image_path for r in recs]
    np.testing.assert_array_equal(
        np.stack([b.landmarks for b in back]), np.stack([r.landmarks for r in recs])
    )


@pytest.mark.realdata
def test_image_size_header_matches_decoding(data_root: Path) -> None:
    files = sorted((data_root / "mmpose_testdata").rglob("*.jpg")) + sorted(
        (data_root / "mmpose_testdata").rglob("*.png")
    )
    files += sorted((data_root / "WFLW" / "WFLW_images").rglob("*.jpg"))[:10]
    assert len(files) >= 20
    for f in files:
        assert image_size(f) == cv2.imread(str(f)).shape[:2], f

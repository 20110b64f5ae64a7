"""LandmarkMetrics, the per-image CSV, the summary JSON and the WFLW attribute table."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from sepbn.data.records import FaceRecord, box_from_landmarks
from sepbn.metrics import (
    WFLW_ATTRIBUTES,
    LandmarkMetrics,
    attribute_table,
    auc,
    format_attribute_table,
    write_per_image_csv,
    write_summary_json,
)


@dataclass
class Errors:
    indices: np.ndarray
    nmes: np.ndarray


def record(**attributes: bool) -> FaceRecord:
    pts = np.array([[0.0, 0.0], [10.0, 10.0]])
    return FaceRecord(None, pts, box_from_landmarks(pts), "wflw", attributes=attributes)


def test_landmark_metrics_hand_computed() -> None:
    m = LandmarkMetrics.from_errors([0.02, 0.05, 0.2, 0.07])
    assert m.nme == pytest.approx(0.085)
    assert m.failure_rate == pytest.approx(0.25)
    assert m.auc == pytest.approx(auc([0.02, 0.05, 0.2, 0.07]))
    assert m.auc == pytest.approx(0.4, abs=7e-4)  # mean(0.8, 0.5, 0, 0.3)
    assert m.num_images == 4 and m.threshold == 0.1
    assert m.format() == (f"NME 8.50% | FR@10% 25.00% | AUC@10% {m.auc:.4f} | 4 images")
    m8 = LandmarkMetrics.from_errors([0.02, 0.09], threshold=0.08)
    assert m8.failure_rate == 0.5 and "FR@8%" in m8.format()


def test_per_image_csv_round_trips(tmp_path: Path) -> None:
    nmes = np.array([0.1 / 3, 0.25, 1e-9])
    path = write_per_image_csv(
        tmp_path / "a" / "x.csv", [4, 0, 9], nmes, ["f.txt:5", "f.txt:1", "g, h.txt:2"]
    )
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["index"] for r in rows] == ["4", "0", "9"]
    assert rows[2]["source"] == "g, h.txt:2"
    np.testing.assert_array_equal([float(r["nme"]) for r in rows], nmes)
    with pytest.raises(ValueError, match="same length"):
        write_per_image_csv(tmp_path / "y.csv", [1, 2], [0.1], None)


def test_summary_json(tmp_path: Path) -> None:
    m = LandmarkMetrics.from_errors([0.01, 0.2])
    path = write_summary_json(tmp_path / "s.json", m, protocol="cofw", name="run1")
    data = json.loads(path.read_text())
    assert data["protocol"] == "cofw" and data["name"] == "run1"
    assert data["metrics"] == {
        "nme": pytest.approx(0.105),
        "failure_rate": 0.5,
        "auc": pytest.approx(m.auc),
        "num_images": 2,
        "threshold": 0.1,
    }


def test_attribute_table_hand_computed() -> None:
    records = [
        record(pose=True, blur=True),
        record(pose=True),
        record(makeup=True, blur=False),
        record(),
        record(pose=False),  # not evaluated
    ]
    result = Errors(indices=np.array([2, 0, 3, 1]), nmes=np.array([0.04, 0.06, 0.02, 0.10]))
    table = attribute_table(result, records)
    assert set(table) == {"test", "pose", "makeup", "blur"}
    assert table["test"].nme == pytest.approx(0.055)
    assert table["pose"].nme == pytest.approx(0.08)  # records 0 and 1: 0.06, 0.10
    assert table["pose"].num_images == 2
    assert table["makeup"].nme == pytest.approx(0.04)
    assert table["blur"].nme == pytest.approx(0.06)


def test_attribute_table_errors() -> None:
    with pytest.raises(ValueError, match="record index 5 out of range for 2"):
        attribute_table(Errors(np.array([0, 5]), np.array([0.1, 0.1])), [record(), record()])
    with pytest.raises(ValueError, match="no evaluated record carries any WFLW attribute"):
        attribute_table(Errors(np.array([0]), np.array([0.1])), [record()])


def test_format_attribute_table_layout() -> None:
    full = {"test": LandmarkMetrics.from_errors([0.05])}
    for i, name in enumerate(WFLW_ATTRIBUTES):
        full[name] = LandmarkMetrics.from_errors([0.06 + 0.01 * i])
    partial = {"test": LandmarkMetrics.from_errors([0.0526])}
    text = format_attribute_table({"Vanilla CNN (BN)": full, "CNT+SepBN": partial})
    lines = text.splitlines()
    assert lines[0].split() == ["Method", "test", "pose", "expr.", "illu.", "mu.", "occu.", "blur"]
    assert lines[1].split()[-7:] == ["5.00", "6.00", "7.00", "8.00", "9.00", "10.00", "11.00"]
    assert lines[1].startswith("Vanilla CNN (BN)")
    assert lines[2].split() == ["CNT+SepBN", "5.26", "-", "-", "-", "-", "-", "-"]
    assert len({len(line) for line in lines}) == 1  # columns aligned


WFLW_LISTS = {
    "pose": "largepose",
    "expression": "expression",
    "illumination": "illumination",
    "makeup": "makeup",
    "occlusion": "occlusion",
    "blur": "blur",
}
# Official line counts of the six WFLW test attribute lists.
WFLW_COUNTS = {
    "pose": 326,
    "expression": 314,
    "illumination": 698,
    "makeup": 206,
    "occlusion": 736,
    "blur": 773,
}


@pytest.mark.realdata
def test_attribute_table_on_real_wflw_lists(data_root: Path) -> None:
    folder = data_root / "WFLW" / "WFLW_annotations" / "list_98pt_test"
    faces: dict[str, FaceRecord] = {}
    members: dict[str, list[str]] = {}
    for attribute, stem in WFLW_LISTS.items():
        path = folder / f"list_98pt_test_{stem}.txt"
        members[attribute] = []
        for number, line in enumerate(path.read_text().splitlines(), 1):
            tokens = line.split()
            assert len(tokens) == 197, f"{path}:{number}"
            key = line.strip()
            if key not in faces:
                pts = np.array(tokens[:196], dtype=np.float64).reshape(98, 2)
                faces[key] = FaceRecord(
                    None, pts, box_from_landmarks(pts), "wflw", source=f"{path.name}:{number}"
                )
            faces[key].attributes[attribute] = True
            members[attribute].append(key)
    keys = list(faces)
    records = [faces[k] for k in keys]
    assert len(records) == 1966  # distinct faces over the six lists
    rng = np.random.default_rng(0)
    nmes = rng.gamma(2.0, 0.03, len(records))
    order = rng.permutation(len(records))  # evaluation order differs from record order
    table = attribute_table(Errors(order, nmes[order]), records)
    assert table["test"].num_images == 1966
    assert table["test"].nme == pytest.approx(nmes.mean())
    position = {k: i for i, k in enumerate(keys)}
    for attribute, count in WFLW_COUNTS.items():
        assert table[attribute].num_images == count
        expected = nmes[[position[k] for k in members[attribute]]]
        assert table[attribute].nme == pytest.approx(expected.mean())
        assert table[attribute].failure_rate == pytest.approx(np.mean(expected > 0.1))

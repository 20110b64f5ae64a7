"""From a config's data section to datasets: what each set skipped, and where it is listed."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from sepbn.config import config_from_dict
from sepbn.data.formats import DatasetWarning
from sepbn.engine.data_builder import build_data, make_train_set, write_skip_list
from sepbn.errors import ConfigError


def _broken_pts_folder(folder: Path, write_pts_folder) -> Path:
    """Four synthetic faces, three of them broken in different ways, and a stray image."""
    write_pts_folder(folder, 4)
    (folder / "f1.jpg").write_bytes(b"")  # skipped while reading
    (folder / "f2.jpg").write_bytes(b"\x00not a picture")  # passes the cheap check, not decoding
    (folder / "f3.pts").write_text("version: 1\n{\n1 2\n")  # malformed .pts
    (folder / "extra.png").write_bytes(b"png")  # an image without annotation
    return folder


def test_every_skip_of_a_run_is_listed_with_its_dataset(tmp_path: Path, write_pts_folder) -> None:
    folder = _broken_pts_folder(tmp_path / "faces", write_pts_folder)
    spec = {"kind": "pts_folder", "path": str(folder), "name": "faces", "on_error": "skip"}
    config = config_from_dict(
        {
            "name": "skips",
            "data": {"train": [spec], "cache_dir": str(tmp_path / "cache"), "num_workers": 0},
            "train": {"device": "cpu", "progress": False},
        }
    )
    with pytest.warns(DatasetWarning):
        data = build_data(config)
    (faces,) = data.train
    assert len(faces.records) == 2
    assert faces.read_skipped.counts() == {
        "image file is empty": 1,
        "expected '}' at the end of a headed .pts": 1,
        "image without a .pts file next to it": 1,
    }
    assert len(make_train_set(data.train, config)) == 1  # f2.jpg does not decode
    assert [e.category for e in faces.cache_skipped.skipped] == ["not a decodable image"]
    counts = write_skip_list(data, tmp_path / "run")
    assert counts["total"] == 4 and counts["file"] == "skipped.csv"
    with (tmp_path / "run" / "skipped.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["dataset"] for r in rows} == {"train/faces"}
    assert [Path(r["file"]).name for r in rows] == ["f1.pts", "f3.pts", "extra.png", "f2.pts"]
    assert rows[1]["line"] == "3"  # the line of the bad .pts


def test_a_subset_is_the_same_faces_for_every_run_seed(tmp_path: Path, write_pts_folder) -> None:
    from sepbn.engine.data_builder import load_records

    folder = write_pts_folder(tmp_path / "faces", 12)
    spec = {"kind": "pts_folder", "path": str(folder)}

    def sources(subset: int | None, seed: int, subset_seed: int = 3) -> list[str]:
        entry = {**spec, "subset": subset, "subset_seed": subset_seed}
        ds = config_from_dict({"data": {"train": [entry]}}).data.train[0]
        return [str(r.source) for r in load_records(ds, seed=seed).records]

    full = sources(None, 0)
    picked = sources(5, 0)
    assert len(set(picked)) == 5 and set(picked) <= set(full)
    assert picked == sources(5, 7)  # the run seed does not change the faces
    assert picked != sources(5, 0, subset_seed=4)
    positions = [full.index(p) for p in picked]
    assert positions == sorted(positions)  # in the reader's order
    with pytest.raises(ConfigError, match="subset=13 but it has only 12 faces"):
        sources(13, 0)
    with pytest.raises(ConfigError, match="subset"):
        config_from_dict({"data": {"train": [{**spec, "subset": 0}]}})

"""Bad data without a face cache: every command skips (or refuses) what ``prepare`` does.

Issue 22: without ``data.cache_dir``, ``eval``, ``preview`` and ``train`` stopped at an
undecodable image that ``--on-error skip`` should skip, trained on a ``.pts`` with 1e300
coordinates that ``prepare`` rejects (``eval`` crashed on it in the NME), and cached a JPEG
that libjpeg calls corrupt, which ``predict`` refuses.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml

from helpers import break_pts_folder, tiny_sepbn_checkpoint
from sepbn.cli import main

CATEGORIES = ["not a decodable image", "corrupt JPEG data", "landmarks far outside the image"]


@pytest.fixture
def bad_folder(tmp_path: Path, write_pts_folder) -> Path:
    """Five faces: f0 undecodable, f1 a JPEG libjpeg calls corrupt, f2 with a point at 1e300."""
    return break_pts_folder(write_pts_folder(tmp_path / "faces", 5))


def _skipped(path: Path) -> list[tuple[str, str]]:
    with path.open(newline="") as f:
        return [(Path(r["file"]).name, r["category"]) for r in csv.DictReader(f)]


def _args(folder: Path, on_error: str = "skip") -> list[str]:
    return ["--data", "pts_folder", "--path", str(folder), "--on-error", on_error]


EXPECTED = list(zip(["f0.pts", "f1.pts", "f2.pts"], CATEGORIES))


def test_prepare_and_uncached_eval_skip_the_same_records(
    bad_folder: Path, tmp_path: Path, capsys
) -> None:
    assert main(["prepare", *_args(bad_folder), "--out", str(tmp_path / "cache")]) == 0
    assert _skipped(tmp_path / "cache" / "skipped.csv") == EXPECTED
    # The checkpoint's config has no cache_dir: eval decodes the photos itself.
    checkpoint, _ = tiny_sepbn_checkpoint(tmp_path / "tiny.pt", cross=True)
    ev = tmp_path / "eval"
    assert main(["eval", str(checkpoint), *_args(bad_folder), "--out", str(ev)]) == 0
    assert "skipped 3 record(s) in all" in capsys.readouterr().out
    (listing,) = ev.glob("*_skipped.csv")
    assert _skipped(listing) == EXPECTED
    (per_image,) = ev.glob("*_per_image.csv")
    with per_image.open(newline="") as f:
        assert [Path(r["source"]).name for r in csv.DictReader(f)] == ["f3.pts", "f4.pts"]
    # Under raise, the first bad image is one line, as prepare gives it.
    assert main(["eval", str(checkpoint), *_args(bad_folder, "raise"), "--out", str(ev)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "f0.jpg): not a decodable image" in err[0]


def test_uncached_preview_and_train_skip_the_same_records(
    bad_folder: Path, tmp_path: Path, capsys
) -> None:
    grid = tmp_path / "grid.png"
    assert main(["preview", *_args(bad_folder), "--out", str(grid), "--num", "2"]) == 0
    assert grid.is_file()
    config = {
        "name": "bad",
        "model": {"arch": "vanilla_cnn", "norm": "bn", "width_mult": 0.125, "input_size": 64},
        "data": {
            "train": [{"kind": "pts_folder", "path": str(bad_folder), "on_error": "skip"}],
            "num_workers": 0,
        },
        "optim": {"epochs": 1, "batch_size": 2, "warmup_epochs": 0},
        "train": {"device": "cpu", "progress": False, "tensorboard": False},
    }
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    run = tmp_path / "run"
    assert main(["-q", "train", str(path), "--run-dir", str(run)]) == 0
    assert _skipped(run / "skipped.csv") == EXPECTED

"""``sepbn analyze embedding`` (paper Fig. 3): Procrustes alignment, yaw-bin counts, the figure."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from helpers import tiny_sepbn_checkpoint
from sepbn.analysis.embedding import align_shapes
from sepbn.cli import main
from sepbn.data.domains import estimate_yaw
from sepbn.data.protocols import get_protocol
from sepbn.data.synthetic import make_synthetic_records

FACES = ["--data", "synthetic", "--protocol", "wflw", "--option", "num_faces=30"]


def _similar(shape: np.ndarray, angle: float, scale: float, shift: tuple[float, float]):
    c, s = np.cos(angle), np.sin(angle)
    return scale * shape @ np.array([[c, -s], [s, c]]).T + np.array(shift)


def test_align_shapes_removes_translation_scale_and_rotation_but_not_a_mirror() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(size=(10, 2))
    other = base + rng.normal(scale=0.3, size=(10, 2))
    faces = np.stack(
        [base, _similar(base, 0.5, 3.0, (100, 50)), _similar(other, -1.0, 0.2, (-5, 7))]
    )
    aligned = align_shapes(faces)
    np.testing.assert_allclose(aligned[1], aligned[0], atol=1e-9)
    # The mean shape is centred with unit RMS radius; each face lands close to it.
    mean = aligned.mean(0)
    assert np.allclose(mean.mean(0), 0, atol=1e-9)
    assert np.sqrt((mean**2).sum(1).mean()) == pytest.approx(1.0, abs=0.05)
    # A mirrored face (a left profile made right) must not be "aligned" by a reflection.
    mirrored = base * np.array([-1.0, 1.0])
    pair = align_shapes(np.stack([base, mirrored]))
    assert np.abs(pair[0] - pair[1]).max() > 0.1
    # A point that is not annotated takes the mean shape's place; too few points: NaN.
    valid = np.ones((3, 10), bool)
    valid[2, 3] = False
    valid[0, 2:] = False
    partial = align_shapes(faces, valid)
    assert np.isfinite(partial).all()
    assert np.isnan(align_shapes(faces, np.eye(3, 10, dtype=bool))).all()


def _bin_counts(records, edges) -> list[int]:
    landmarks = np.stack([r.landmarks for r in records])
    bins = np.digitize(estimate_yaw(landmarks, get_protocol("wflw")), edges)
    return [int((bins == b).sum()) for b in range(len(edges) + 1)]


def test_embedding_of_shapes_writes_counts_and_figure(tmp_path: Path, capsys) -> None:
    pytest.importorskip("sklearn")
    out = tmp_path / "emb"
    argv = ["analyze", "embedding", *FACES, "--option", "seed=5", "--out", str(out)]
    assert main([*argv, "--yaw-edges=-15,15", "--max-faces", "20"]) == 0
    printed = capsys.readouterr().out
    expected = _bin_counts(make_synthetic_records(30, protocol="wflw", seed=5), [-15.0, 15.0])
    assert len([c for c in expected if c]) >= 2, "the test faces should span several bins"
    with (out / "pose_bins.csv").open() as f:
        counts = {r["yaw_bin"]: int(r["num_faces"]) for r in csv.DictReader(f)}
    assert counts == dict(
        zip(["yaw < -15°", "-15° ≤ yaw < 15°", "yaw ≥ 15°", "unknown"], [*expected, 0])
    )
    for name, count in counts.items():
        assert f"{name:>18}: {count:6d}" in printed
    assert "t-SNE of Procrustes-aligned landmark shapes on 20 faces" in printed
    with (out / "embedding.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 20 and len({r["index"] for r in rows}) == 20
    assert all(np.isfinite([float(r["x"]), float(r["y"])]).all() for r in rows)
    assert (out / "embedding.png").stat().st_size > 10_000
    assert cv2.imread(str(out / "embedding.png")) is not None


def test_embedding_of_backbone_features(tmp_path: Path, capsys) -> None:
    pytest.importorskip("sklearn")
    ckpt, _ = tiny_sepbn_checkpoint(tmp_path / "tiny.pt")
    out = tmp_path / "emb"
    assert main(["analyze", "embedding", *FACES, "--checkpoint", str(ckpt), "--out", str(out)]) == 0
    assert "t-SNE of backbone features on 30 faces" in capsys.readouterr().out
    assert (out / "embedding.png").stat().st_size > 10_000


def test_analyze_similarity_and_its_old_name_are_one_command(tmp_path: Path, capsys) -> None:
    ckpt, _ = tiny_sepbn_checkpoint(tmp_path / "tiny.pt")
    outputs = []
    for argv in (["analyze", "similarity"], ["similarity"]):
        png = tmp_path / f"{argv[0]}.png"
        assert main([*argv, str(ckpt), "--out", str(png)]) == 0
        outputs.append(capsys.readouterr().out.replace(str(png), "PNG"))
        assert png.stat().st_size > 5000
    assert outputs[0] == outputs[1]
    assert "backbone.blocks.5.norm" in outputs[0]

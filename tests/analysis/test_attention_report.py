"""``sepbn analyze attention``: π per layer, group, yaw bin and WFLW flag, against π from hooks."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from helpers import tiny_sepbn_checkpoint
from sepbn.analysis.pose_bins import bin_names, face_yaw, yaw_bins
from sepbn.cli import main
from sepbn.data.datasets import LandmarkDataset
from sepbn.data.domains import estimate_yaw
from sepbn.data.protocols import get_protocol
from sepbn.data.synthetic import make_synthetic_records
from sepbn.data.transforms import FaceCropTransform
from sepbn.nn import SepBatchNorm2d
from sepbn.nn.attention_health import attention_health

FACES = ["--data", "synthetic", "--protocol", "wflw", "--option", "num_faces=24"]


@torch.no_grad()
def per_face_attention(model: torch.nn.Module, records: list) -> dict[str, np.ndarray]:
    """π of every face, from each layer's own attention block on its input (hooks)."""
    protocol = get_protocol("wflw")
    data = LandmarkDataset(records, protocol, FaceCropTransform(protocol, 64, 1.25, None))
    images = torch.stack([data[i]["image"] for i in range(len(data))]).float() / 255
    found: dict[str, list] = {}
    hooks = [
        m.register_forward_hook(
            lambda m, a, out, n=n: found.setdefault(n, []).append(m.attention(a[0]))
        )
        for n, m in model.named_modules()
        if isinstance(m, SepBatchNorm2d)
    ]
    model.eval()(images)
    for h in hooks:
        h.remove()
    return {n: torch.cat(v).numpy() for n, v in found.items()}  # (N, G, K)


def _read(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_analyze_attention_csv_equals_per_bin_means(tmp_path: Path, capsys) -> None:
    ckpt, model = tiny_sepbn_checkpoint(tmp_path / "tiny.pt")
    out = tmp_path / "att"
    argv = ["analyze", "attention", str(ckpt), *FACES, "--option", "seed=3", "--out", str(out)]
    assert main([*argv, "--yaw-edges=-20,0,20"]) == 0  # "=": the value starts with "-"
    printed = capsys.readouterr().out

    records = make_synthetic_records(24, protocol="wflw", seed=3)
    pi = per_face_attention(model, records)
    landmarks = np.stack([r.landmarks for r in records])
    yaw = estimate_yaw(landmarks, get_protocol("wflw"))  # every synthetic point is annotated
    bins = np.digitize(yaw, [-20.0, 0.0, 20.0])
    names = ["yaw < -20°", "-20° ≤ yaw < 0°", "0° ≤ yaw < 20°", "yaw ≥ 20°"]
    assert bin_names([-20, 0, 20]) == names
    assert len(set(bins)) >= 3, "the test faces should span several yaw bins"

    rows = _read(out / "attention.csv")
    layers = [f"backbone.blocks.{i}.norm" for i in range(6)]
    assert len(rows) == len(layers) * 2 * (4 + 2 * 5)  # G=2; yaw bins + yes/no of 5 flags
    for row in (r for r in rows if r["attribute"] == "yaw"):
        faces = pi[row["layer"]][bins == names.index(row["value"]), int(row["group"])]  # (n, K)
        assert int(row["num_faces"]) == len(faces)
        if len(faces):
            for k in range(3):
                assert float(row[f"mean_pi_{k}"]) == pytest.approx(faces[:, k].mean(), abs=2e-6)
                assert float(row[f"std_pi_{k}"]) == pytest.approx(faces[:, k].std(), abs=2e-6)
    spread = [
        float(r["std_pi_0"]) for r in rows if r["attribute"] == "yaw" and int(r["num_faces"]) > 1
    ]
    assert max(spread) > 1e-3  # the check above compares weights that do differ between faces
    # WFLW flags: the "yes" rows are the faces with that flag.
    for row in (r for r in rows if r["attribute"] == "pose" and r["group"] == "1"):
        flag = np.array([r.attributes["pose"] for r in records]) == (row["value"] == "yes")
        assert int(row["num_faces"]) == flag.sum()
        if flag.any():
            expected = pi[row["layer"]][flag, 1, 2].mean()
            assert float(row["mean_pi_2"]) == pytest.approx(expected, abs=2e-6)
    # The three health numbers per layer, as sepbn.nn.attention_health defines them.
    for layer in layers:
        line = next(ln for ln in printed.splitlines() if ln.startswith(layer))
        health = attention_health(pi[layer])
        entropy, dependence, *usage = (float(v) for v in line.split()[1:6])
        assert entropy == pytest.approx(health.entropy, abs=1e-3)
        assert dependence == pytest.approx(health.dependence, abs=1e-4)
        assert usage == pytest.approx(list(health.usage), abs=1e-3)
    counts = ", ".join(f"{n}: {(bins == b).sum()}" for b, n in enumerate(names))
    assert f"faces per yaw bin: {counts}, unknown: 0" in printed
    for png in ("attention_yaw.png", "attention_attributes.png"):
        assert (out / png).stat().st_size > 10_000
        assert cv2.imread(str(out / png)) is not None


def test_analyze_attention_cross_protocol_and_errors(tmp_path: Path, capsys) -> None:
    ckpt, _ = tiny_sepbn_checkpoint(tmp_path / "cross.pt", cross=True)
    out = tmp_path / "att"
    assert main(["analyze", "attention", str(ckpt), *FACES, "--out", str(out)]) == 0
    assert (out / "attention.csv").is_file()
    cofw = ["--data", "synthetic", "--protocol", "cofw", "--option", "num_faces=4"]
    assert main(["analyze", "attention", str(ckpt), *cofw, "--out", str(out)]) == 1
    assert "no branch for protocol 'cofw'" in capsys.readouterr().err
    assert main(["analyze", "attention", str(ckpt), *FACES, "--yaw-edges", "30,-30"]) == 1
    assert "must increase" in capsys.readouterr().err


def test_face_yaw_counts_a_face_without_one_eye_as_a_profile() -> None:
    protocol = get_protocol("aflw")
    (record,) = make_synthetic_records(1, protocol="aflw", seed=0)
    valid = record.valid.copy()
    valid[[9, 10, 11]] = False  # the image-right eye is hidden: the face points right
    record.valid = valid
    assert face_yaw([record], protocol)[0] == -90.0
    assert yaw_bins(np.array([90.0, -90.0, np.nan, 30.0])).tolist() == [2, 0, -1, 2]

"""The ``sepbn`` command line, end to end on synthetic faces (and real photos when present)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from sepbn.cli import main
from sepbn.data.synthetic import make_synthetic_records
from sepbn.data.transforms import apply_affine, crop_matrix
from sepbn.inference import HaarFaceDetector, LandmarkDetector

TINY = {
    "name": "tiny",
    "model": {"arch": "vanilla_cnn", "norm": "sepbn", "width_mult": 0.125, "input_size": 64},
    "data": {
        "train": [{"kind": "synthetic", "protocol": "300w", "options": {"num_faces": 16}}],
        "test": [
            {
                "kind": "synthetic",
                "protocol": "300w",
                "name": "held_out",
                "options": {"num_faces": 4, "start_index": 1000},
            }
        ],
        "num_workers": 0,
    },
    "optim": {"epochs": 2, "batch_size": 8, "warmup_epochs": 1},
    "train": {"device": "cpu", "progress": False, "tensorboard": False},
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    run = root / "run"
    assert main(["-q", "train", str(config), "--run-dir", str(run), "--set", "optim.lr=0.002"]) == 0
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["optim"]["lr"] == 0.002  # the override reached the resolved config
    return run / "stage1" / "last.pt"


def test_train_writes_checkpoint_and_test_metrics(trained: Path) -> None:
    summary = json.loads((trained.parents[1] / "eval" / "summary.json").read_text())
    assert any("held_out" in key for key in json.dumps(summary).split('"'))


def test_train_rejects_a_typo_with_one_line(tmp_path: Path, capsys) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    code = main(["train", str(config), "--set", "optim.lrr=0.1", "--run-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(err) == 1 and "optim.lrr" in err[0] and "did you mean 'lr'" in err[0]


def test_eval_on_synthetic_faces_writes_reports(trained: Path, tmp_path: Path, capsys) -> None:
    args = ["eval", str(trained), "--data", "synthetic", "--protocol", "300w"]
    args += ["--option", "num_faces=5", "--option", "start_index=2000", "--out", str(tmp_path)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "NME" in out
    rows = (tmp_path / "synthetic_per_image.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 5
    assert (tmp_path / "synthetic_ced.png").stat().st_size > 1000


def test_eval_missing_checkpoint_is_one_clear_line(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "nope.pt"
    code = main(["eval", str(missing), "--data", "synthetic", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and str(missing) in err[0]


def test_predict_with_box_writes_json_and_drawing(trained: Path, tmp_path: Path) -> None:
    record = make_synthetic_records(1, seed=3)[0]
    photo = tmp_path / "face.png"
    cv2.imwrite(str(photo), cv2.cvtColor(record.image, cv2.COLOR_RGB2BGR))
    box = ",".join(f"{v:.1f}" for v in record.box)
    out = tmp_path / "pred"
    args = ["predict", str(trained), str(photo), "--box", box, "--out", str(out), "--draw"]
    assert main(args) == 0
    (result,) = json.loads((out / "landmarks.json").read_text())["records"]
    assert result["image"] == str(photo)
    landmarks = np.array([face["landmarks"] for face in result["faces"]])
    assert landmarks.shape == (1, 68, 2) and np.isfinite(landmarks).all()
    assert (out / "face_landmarks.jpg").is_file()


class _Oracle(torch.nn.Module):
    """Returns fixed normalized crop coordinates, whatever the image."""

    num_points = 68

    def __init__(self, coords: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("coords", torch.as_tensor(coords, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.coords.expand(x.shape[0], -1, -1)


def test_detector_maps_crop_predictions_back_to_the_photo() -> None:
    record = make_synthetic_records(1, seed=5)[0]
    size, scale = 64, 1.25
    matrix = crop_matrix(record.box, size, scale)
    crop_truth = apply_affine(matrix, record.landmarks) / size
    detector = LandmarkDetector(_Oracle(crop_truth), "300w", size, scale, refine_steps=0)
    predicted = detector.predict_boxes(record.image, record.box[None])
    np.testing.assert_allclose(predicted[0], record.landmarks, atol=1e-3)


def test_prepare_and_preview_on_synthetic_faces(tmp_path: Path) -> None:
    data = ["--data", "synthetic", "--protocol", "300w", "--option", "num_faces=6"]
    assert main(["prepare", *data, "--out", str(tmp_path / "cache")]) == 0
    assert (tmp_path / "cache" / "meta.json").is_file()
    grid = tmp_path / "grid.png"
    assert main(["preview", *data, "--out", str(grid), "--num", "6", "--photometric"]) == 0
    image = cv2.imread(str(grid))
    assert image is not None and image.shape[0] > 128 and image.shape[1] > 3 * 128


def test_similarity_of_the_trained_sepbn_sets(trained: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "fig4.png"
    assert main(["similarity", str(trained), "--out", str(out)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if ".norm" in line]
    assert len(rows) == 6  # one SepBN layer per Vanilla CNN block
    for row in rows:  # SepBN shares its statistics: only scale and shift are compared
        _name, mean, var, scale, shift = row.split()
        assert mean == var == "-"
        assert -1.0 <= float(scale) <= 1.0 and -1.0 <= float(shift) <= 1.0
    assert cv2.imread(str(out)) is not None


@pytest.mark.realdata
def test_haar_detector_finds_faces_in_300w_photos(data_root: Path) -> None:
    from sepbn.data.formats import read_records
    from sepbn.data.image_io import load_image

    records = read_records("pts_folder", data_root / "300W" / "lfpw" / "testset")[:30]
    found = false = 0
    for record in records:
        boxes, _ = HaarFaceDetector()(load_image(record.image_path))
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        x0, y0, x1, y1 = record.box
        inside = (centres[:, 0] > x0) & (centres[:, 0] < x1)
        inside &= (centres[:, 1] > y0) & (centres[:, 1] < y1)
        found += bool(inside.any())
        false += int((~inside).sum())
    # Measured: 29/30 faces found, 4 false detections (6 without the relative-size filter).
    assert found >= 27
    assert false <= 5


def test_data_warnings_print_as_one_line_each(tmp_path: Path) -> None:
    # A COCO file whose second face points at a missing image: skipped, with a warning.
    record = make_synthetic_records(1, seed=1)[0]
    photo = tmp_path / "face.png"
    cv2.imwrite(str(photo), cv2.cvtColor(record.image, cv2.COLOR_RGB2BGR))
    from sepbn.data.formats import write_coco

    coco = write_coco([record], tmp_path / "faces.json", image_root=tmp_path)
    data = json.loads(coco.read_text())
    ghost = dict(data["images"][0], id=99, file_name="missing.png")
    data["images"].append(ghost)
    data["annotations"].append(dict(data["annotations"][0], id=99, image_id=99))
    coco.write_text(json.dumps(data))
    grid = tmp_path / "grid.png"
    args = ["preview", "--data", "coco", "--path", str(coco), "--on-error", "skip"]
    # A real process: pytest would capture the warnings itself.
    run = subprocess.run(
        [sys.executable, "-m", "sepbn.cli", *args, "--out", str(grid), "--num", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert run.stderr.startswith("warning: ") and "image file not found" in run.stderr
    assert "return reader(" not in run.stderr  # no source line from inside the library

"""The ``sepbn`` command line, end to end on synthetic faces (and real photos when present)."""

from __future__ import annotations

import csv
import errno
import itertools
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

import sepbn.cli
from sepbn.cli import main
from sepbn.data.synthetic import make_synthetic_records
from sepbn.engine.checkpoint import load_checkpoint, save_checkpoint
from sepbn.inference import LandmarkDetector

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
    assert list(summary) == ["stage1/held_out"]
    metrics = summary["stage1/held_out"]
    # The same four held-out faces (run seed 0), cropped as in evaluation, through the saved
    # network; NME by Eq. 8 with the 300-W inter-ocular distance (outer eye corners 36, 45).
    detector = LandmarkDetector.from_checkpoint(trained, refine_steps=0)
    nmes = []
    for face in make_synthetic_records(4, seed=0, start_index=1000):
        predicted = detector.predict_boxes(face.image, face.box[None])[0]
        d = np.linalg.norm(face.landmarks[36] - face.landmarks[45])
        nmes.append(np.linalg.norm(predicted - face.landmarks, axis=1).mean() / d)
    nmes = np.array(nmes)
    assert metrics["num_images"] == 4 and metrics["threshold"] == 0.1
    assert metrics["nme"] == pytest.approx(nmes.mean(), rel=1e-4)
    assert metrics["failure_rate"] == np.mean(nmes > 0.1)
    # The exact area under the step-shaped CED; the reported one is sampled (within 7e-4).
    assert metrics["auc"] == pytest.approx(np.clip(1 - nmes / 0.1, 0, 1).mean(), abs=1e-3)


def test_train_rejects_a_typo_with_one_line(tmp_path: Path, capsys) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    code = main(["train", str(config), "--set", "optim.lrr=0.1", "--run-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(err) == 1 and "optim.lrr" in err[0] and "did you mean 'lr'" in err[0]


def _bad_config(tmp_path: Path, **model: object) -> Path:
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({**TINY, "model": {**TINY["model"], **model}}))
    return config


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ({"norm": "simple_sepbn", "num_groups": 4}, "model.num_groups=4 does not apply to norm"),
        ({"norm": "groupnorm"}, "model.norm: 'groupnorm' is not a valid choice"),
    ],
)
def test_a_bad_model_field_is_one_line_naming_the_file_before_data_is_read(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch, model: dict, expected: str
) -> None:
    import sepbn.engine.trainer

    def read_data(config):
        raise AssertionError("the data was read before the config was checked")

    monkeypatch.setattr(sepbn.engine.experiment, "build_data", read_data)
    config = _bad_config(tmp_path, **model)
    code = main(["train", str(config), "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1
    assert err[0].startswith(f"sepbn train: error: {config}:") and expected in err[0]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--data", "synthetic", "--option", "num_faces"], "--option expects KEY=VALUE"),
        (["--data", "wlfw", "--path", "x"], "unknown dataset kind 'wlfw' (did you mean 'wflw'?)"),
        (["--data", "synthetic", "--protocol", "68pts"], "synthetic faces have no '68pts' layout"),
    ],
)
def test_a_bad_data_option_is_one_line(tmp_path: Path, capsys, args: list, expected: str) -> None:
    code = main(["prepare", *args, "--out", str(tmp_path / "cache")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and expected in err[0]


def test_a_bug_is_not_caught_and_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    import sepbn.cli

    def broken(args) -> int:
        return 1 // 0

    monkeypatch.setattr(sepbn.cli, "_cmd_train", broken)
    with pytest.raises(ZeroDivisionError):
        main(["train", "any.yaml"])


def test_debug_prints_the_traceback_of_a_known_error(tmp_path: Path, capsys) -> None:
    config = _bad_config(tmp_path, norm="bn", pool_size=2)
    assert main(["--debug", "train", str(config), "--run-dir", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "sepbn.errors.ConfigError" in err
    assert err.strip().splitlines()[-1].startswith(f"sepbn train: error: {config}:")


def test_eval_on_synthetic_faces_writes_reports(trained: Path, tmp_path: Path, capsys) -> None:
    args = ["eval", str(trained), "--data", "synthetic", "--protocol", "300w"]
    args += ["--option", "num_faces=5", "--option", "start_index=2000", "--out", str(tmp_path)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "NME" in out
    # The head-pose bins, with their |yaw| edges and face counts (5 faces in all).
    bins = out[out.index("NME by head pose") :].splitlines()[1:5]
    assert [line.split()[0] for line in bins] == ["frontal", "moderate", "profile", "unknown"]
    assert "|yaw| < 15°" in bins[0] and "15° ≤ |yaw| < 30°" in bins[1] and "|yaw| ≥ 30°" in bins[2]
    assert sum(int(line.split()[-2]) for line in bins) == 5
    summary = json.loads((tmp_path / "synthetic_summary.json").read_text())
    assert sum(v for k, v in summary["pose_bins"].items() if k.startswith("count_")) == 5
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
    from sepbn.inference.writers import read_landmarks

    (result,) = read_landmarks(out).records
    assert result["image"] == str(photo)
    landmarks = np.array([face["landmarks"] for face in result["faces"]])
    assert landmarks.shape == (1, 68, 2) and np.isfinite(landmarks).all()
    assert (out / "face_landmarks.jpg").is_file()


def test_prepare_and_preview_on_synthetic_faces(tmp_path: Path) -> None:
    data = ["--data", "synthetic", "--protocol", "300w", "--option", "num_faces=6"]
    assert main(["prepare", *data, "--out", str(tmp_path / "cache")]) == 0
    assert (tmp_path / "cache" / "meta.json").is_file()
    grid = tmp_path / "grid.png"
    assert main(["preview", *data, "--out", str(grid), "--num", "6", "--photometric"]) == 0
    image = cv2.imread(str(grid))
    assert image is not None and image.shape[0] > 128 and image.shape[1] > 3 * 128


def test_similarity_prints_eq2_of_each_layers_sets(trained: Path, tmp_path: Path, capsys) -> None:
    # Two epochs leave the K sets nearly equal (every value prints 1.0000, which a constant
    # would match): move them apart first, then recompute Eq. 2 from the checkpoint here.
    state = load_checkpoint(trained)
    g = torch.Generator().manual_seed(0)
    for key, value in state["model"].items():
        if key.endswith((".norm.weight", ".norm.bias")) and value.dim() == 2:  # (K, C) sets
            value.add_(torch.randn(value.shape, generator=g) * 0.5)
    moved = save_checkpoint(tmp_path / "moved.pt", state)
    out = tmp_path / "fig4.png"
    assert main(["similarity", str(moved), "--out", str(out)]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if ".norm" in line]
    # one SepBN layer per Vanilla CNN block
    assert [row[0] for row in rows] == [f"backbone.blocks.{i}.norm" for i in range(6)]
    for name, mean, var, scale, shift in rows:
        assert mean == var == "-"  # SepBN shares its statistics: only scale and shift compared
        for printed, kind in ((scale, "weight"), (shift, "bias")):
            sets = state["model"][f"{name}.{kind}"].double()  # (K, C)
            pairs = list(itertools.combinations(range(len(sets)), 2))
            cosines = [sets[i] @ sets[j] / (sets[i].norm() * sets[j].norm()) for i, j in pairs]
            assert float(printed) == pytest.approx(float(sum(cosines) / len(pairs)), abs=5e-5)
    assert cv2.imread(str(out)) is not None


def test_data_warnings_print_as_one_line_each(tmp_path: Path) -> None:
    # A COCO file whose second face points at a missing image: skipped, with a warning.
    coco, data = _one_face_coco(tmp_path)
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


def _one_face_coco(tmp_path: Path) -> tuple[Path, dict]:
    """``faces.json`` of one synthetic 68-point face on ``face.png``, and its contents."""
    from sepbn.data.formats import write_coco

    record = make_synthetic_records(1, seed=1)[0]
    photo = tmp_path / "face.png"
    cv2.imwrite(str(photo), cv2.cvtColor(record.image, cv2.COLOR_RGB2BGR))
    coco = write_coco([record], tmp_path / "faces.json", image_root=tmp_path)
    return coco, json.loads(coco.read_text())


def _coco_with_two_point_counts(tmp_path: Path) -> Path:
    """A COCO file of one 68-point face and one 98-point annotation on the same photo."""
    coco, data = _one_face_coco(tmp_path)
    del data["info"]["sepbn_protocol"]  # like a foreign file: the protocol is not recorded
    wide = dict(data["annotations"][0], id=2, keypoints=[10.0, 10.0, 2] * 98)
    data["annotations"].append(wide)
    coco.write_text(json.dumps(data))
    return coco


def test_protocol_option_reaches_the_coco_reader(tmp_path: Path, capsys) -> None:
    coco = _coco_with_two_point_counts(tmp_path)
    data = ["--data", "coco", "--path", str(coco), "--on-error", "skip"]
    assert main(["prepare", *data, "--out", str(tmp_path / "x")]) == 1
    assert "pass protocol= (--protocol on the command line)" in capsys.readouterr().err
    cache = tmp_path / "cache"
    with pytest.warns(UserWarning, match="1 x wrong number of keypoints"):
        assert main(["prepare", *data, "--protocol", "300w", "--out", str(cache)]) == 0
    meta = json.loads((cache / "meta.json").read_text())
    assert meta["count"] == 1 and meta["protocol"]["name"] == "300w"


def test_eval_on_a_missing_gpu_says_so(trained: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = ["eval", str(trained), "--data", "synthetic", "--device", "cuda", "--out", str(tmp_path)]
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'cuda': CUDA is not available" in err[0], err
    assert "available: ['cpu'" in err[0] and "corrupt" not in err[0]


def test_preview_skips_a_zero_byte_image_like_prepare(tmp_path: Path, write_pts_folder) -> None:
    folder = write_pts_folder(tmp_path / "faces", 3)
    (folder / "f0.jpg").write_bytes(b"")
    data = ["--data", "pts_folder", "--path", str(folder), "--on-error", "skip"]
    with pytest.warns(UserWarning, match="1 x image file is empty"):
        assert main(["preview", *data, "--out", str(tmp_path / "grid.png"), "--num", "4"]) == 0
    assert cv2.imread(str(tmp_path / "grid.png")) is not None


def test_prepare_and_eval_list_every_skipped_record(
    trained: Path, tmp_path: Path, capsys, write_pts_folder
) -> None:
    folder = write_pts_folder(tmp_path / "faces", 4)
    (folder / "f0.jpg").write_bytes(b"")
    (folder / "f1.pts").write_text("version: 1\nn_points: 68\n{\n1 x\n}\n")
    (folder / "stray.png").write_bytes(b"png")
    data = ["--data", "pts_folder", "--path", str(folder), "--on-error", "skip"]
    with pytest.warns(UserWarning, match="1 x not a finite number"):
        assert main(["prepare", *data, "--out", str(tmp_path / "cache")]) == 0
    listing = tmp_path / "cache" / "skipped.csv"
    assert f"skipped 3 record(s) in all; each one is listed in {listing}" in capsys.readouterr().out
    meta = json.loads((tmp_path / "cache" / "meta.json").read_text())
    assert meta["count"] == 2 and len(meta["skipped"]) == 3

    ev = tmp_path / "eval"
    with pytest.warns(UserWarning):
        assert main(["eval", str(trained), *data, "--out", str(ev), "--name", "pts"]) == 0
    assert "skipped 3 record(s) in all" in capsys.readouterr().out
    with (ev / "pts_skipped.csv").open(newline="") as f:
        skipped = list(csv.DictReader(f))
    assert [Path(r["file"]).name for r in skipped] == ["f0.pts", "f1.pts", "stray.png"]
    assert skipped[1]["line"] == "4" and skipped[1]["category"] == "not a finite number"
    summary = json.loads((ev / "pts_summary.json").read_text())
    assert summary["skipped"]["total"] == 3 and summary["skipped"]["file"] == "pts_skipped.csv"
    # The per-image errors name their files.
    with (ev / "pts_per_image.csv").open(newline="") as f:
        sources = [r["source"] for r in csv.DictReader(f)]
    assert sources == [str(folder / "f2.pts"), str(folder / "f3.pts")]


# Bad input, round two (issue 22): arguments checked as they are parsed, one line each.


def _parse_error(args: list[str], capsys) -> str:
    """The one error line argparse prints for ``args`` (exit status 2, before any work)."""
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["eval", "c.pt", "--data", "synthetic", "--batch-size", "0"],
            "--batch-size: expected an integer >= 1, got '0'",
        ),
        (
            ["eval", "c.pt", "--data", "synthetic", "--workers", "-1"],
            "--workers: expected an integer >= 0, got '-1'",
        ),
        (["preview", "--data", "synthetic", "--num", "0"], "--num: expected an integer >= 1"),
        (
            ["preview", "--data", "synthetic", "--input-size", "0"],
            "--input-size: expected an integer >= 1",
        ),
        (
            ["prepare", "--data", "synthetic", "--out", "c", "--input-size", "0"],
            "--input-size: expected an integer >= 1",
        ),
        (
            ["predict", "c.pt", "x.jpg", "--batch-size", "0"],
            "--batch-size: expected an integer >= 1",
        ),
        (
            ["analyze", "embedding", "--data", "synthetic", "--max-faces", "0"],
            "--max-faces: expected an integer >= 1",
        ),
        (
            ["analyze", "embedding", "--data", "synthetic", "--perplexity", "nan"],
            "--perplexity: expected a finite number > 0",
        ),
        (
            ["preview", "--data", "synthetic", "--seed", str(2**64)],
            r"--seed: expected an integer in [0, 9223372036854775807]",
        ),
        (["demo", "--seed", "-1"], "--seed: expected an integer in [0,"),
        (["demo", "--epochs", "0"], "--epochs: expected an integer >= 1"),
        (
            ["preview", "--data", "synthetic", "--out", "grid.xyz"],
            "grid.xyz: cannot write an image with suffix '.xyz'; valid: .bmp, .jpeg, .jpg, .png",
        ),
        (
            ["similarity", "c.pt", "--out", "fig.xyz"],
            "cannot write a figure with suffix '.xyz'; valid: ",
        ),
        (
            ["export", "c.pt", "--out", "m.onnx", "--opset", "17"],
            "--opset: ONNX opset '17' is not supported; valid: 18 to ",
        ),
        (
            ["export", "c.pt", "--out", "m.onnx", "--opset", "99"],
            "--opset: ONNX opset '99' is not supported; valid: 18 to ",
        ),
    ],
)
def test_a_value_no_command_can_use_is_refused_as_it_is_parsed(
    args: list[str], expected: str, capsys
) -> None:
    assert expected in _parse_error(args, capsys)


def test_export_help_states_the_opsets_it_accepts(capsys) -> None:
    from sepbn.cli import build_parser
    from sepbn.inference.export import MIN_OPSET, onnx_opsets

    pytest.importorskip("onnx")
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    assert f"ONNX opset, {MIN_OPSET} up to the newest" in " ".join(capsys.readouterr().out.split())
    newest = str(onnx_opsets()[-1])
    parsed = build_parser().parse_args(["export", "c.pt", "--out", "m.onnx", "--opset", newest])
    assert parsed.opset == int(newest)


def _writers(tmp: Path) -> list[list[str]]:
    """Every command that writes, with OUT where its output path goes."""
    data = ["--data", "synthetic"]
    return [
        ["demo", "--out", "OUT"],
        ["train", "c.yaml", "--run-dir", "OUT"],
        ["eval", "c.pt", *data, "--out", "OUT"],
        ["prepare", *data, "--out", "OUT"],
        ["preview", *data, "--out", "OUT.png"],
        ["predict", "c.pt", "x.jpg", "--out", "OUT"],
        ["export", "c.pt", "--out", "OUT.onnx"],
        ["analyze", "similarity", "c.pt", "--out", "OUT.png"],
        ["similarity", "c.pt", "--out", "OUT.png"],
        ["analyze", "attention", "c.pt", *data, "--out", "OUT"],
        ["analyze", "embedding", *data, "--out", "OUT"],
        ["report", str(tmp), "--out", "OUT.md"],
    ]


def test_an_output_path_under_an_existing_file_is_refused_by_every_command(
    tmp_path: Path, capsys
) -> None:
    blocker = tmp_path / "notes.txt"
    blocker.write_text("a file")
    for args in _writers(tmp_path):
        out = str(blocker / "sub" / "result")
        error = _parse_error([a.replace("OUT", out) for a in args], capsys)
        assert f"{blocker / 'sub' / 'result'}" in error and f"{blocker} is a file" in error, args
    for args in _writers(tmp_path):  # the existing file itself, as a folder
        if args[-1] == "OUT":
            error = _parse_error([*args[:-1], str(blocker)], capsys)
            assert f"{blocker} is an existing file, not a folder" in error, args
    error = _parse_error(["export", "c.pt", "--out", str(tmp_path)], capsys)
    assert f"{tmp_path} is a folder; give the file to write" in error


def test_the_default_run_dir_under_a_file_is_one_line(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    (tmp_path / "runs").write_text("not a folder")
    monkeypatch.chdir(tmp_path)
    assert main(["train", "tiny.yaml"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "sepbn train: error: run directory runs/tiny cannot be created: runs is a file, "
        "not a folder"
    ]


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        ("num_faces=abc", "--option: options.num_faces: expected an integer, got 'abc'"),
        ("num_faces=[", "--option num_faces=[: not valid YAML"),
        ("seed=-2", "--option: options.seed must be >= 0, got -2"),
        ("layout=&a [*a]", "refers to the value that holds it"),
    ],
)
def test_a_reader_option_of_the_wrong_type_is_one_line(
    tmp_path: Path, capsys, option: str, expected: str
) -> None:
    args = ["prepare", "--data", "synthetic", "--option", option, "--out", str(tmp_path / "c")]
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0]
    assert not (tmp_path / "c").exists()  # refused before anything was written


def test_a_hostile_config_file_is_one_line(tmp_path: Path, capsys) -> None:
    config = tmp_path / "bomb.yaml"
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    # 9**9 values in 400 bytes; line 6 (a5, 9**6 values) is the first above the limit.
    config.write_text("\n".join(levels) + "\nprotocols: [*a8]\n")
    assert main(["train", str(config), "--run-dir", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"sepbn train: error: {config}:6: aliases")
    assert not (tmp_path / "run").exists()


def test_a_full_disk_while_training_is_one_line_and_leaves_no_temporary(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    def full_disk(obj, f, *args, **kwargs) -> None:
        f.write(b"the first bytes")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({**TINY, "optim": {**TINY["optim"], "epochs": 1}}))
    run = tmp_path / "run"
    assert main(["-q", "train", str(config), "--run-dir", str(run)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    last = run / "stage1" / "last.pt"
    assert err == [
        f"sepbn train: error: {last}: cannot write the checkpoint: no space left on device "
        "(the disk is full)"
    ]
    assert not list(run.rglob("*.tmp")) and not last.exists()


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (OSError(errno.ENOSPC, "No space left on device", "runs/x/config.yaml"), "disk is full"),
        (PermissionError(errno.EACCES, "Permission denied", "out/report.md"), "Permission denied"),
    ],
)
def test_a_file_that_cannot_be_written_is_one_line(
    monkeypatch, capsys, error: OSError, reason: str
) -> None:
    # Whatever write no lower layer caught (run log, summary, export, report --out).
    def fail(args) -> int:
        raise error

    monkeypatch.setattr(sepbn.cli, "_cmd_report", fail)
    assert main(["report", "--all"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"sepbn report: error: {error.filename}: ")
    assert reason in err and "\n" not in err

"""``sepbn predict`` and ``sepbn export`` on bad inputs: one line each, results kept, exit 1."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from sepbn.cli import main
from sepbn.data.synthetic import make_synthetic_records


@pytest.fixture(scope="module")
def checkpoint(tiny_300w_checkpoint: Path) -> Path:
    return tiny_300w_checkpoint


@pytest.fixture(scope="module")
def face(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A synthetic face photo and its face box as a --box value."""
    record = make_synthetic_records(1, seed=3)[0]
    path = tmp_path_factory.mktemp("photos") / "face.png"
    cv2.imwrite(str(path), cv2.cvtColor(record.image, cv2.COLOR_RGB2BGR))
    return path, ",".join(f"{v:.1f}" for v in record.box)


def _records(out: Path) -> list[dict]:
    return json.loads((out / "landmarks.json").read_text())["records"]


def _errors(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_predict_with_a_box_writes_one_record_per_photo(checkpoint, face, tmp_path) -> None:
    photo, box = face
    out = tmp_path / "pred"
    assert (
        main(["-q", "predict", str(checkpoint), str(photo), "--box", box, "--out", str(out)]) == 0
    )
    (record,) = _records(out)
    assert record["image"] == str(photo) and record["status"] == "ok"
    (found,) = record["faces"]
    assert np.array(found["landmarks"]).shape == (68, 2) and 0 < found["quality"] <= 1
    assert not list(out.glob("*.jpg")) and not list(out.glob("*.png"))  # no drawing unless --draw


def test_bad_files_are_one_line_each_and_the_rest_is_kept(
    checkpoint, face, tmp_path, capsys
) -> None:
    photo, box = face
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "notes.png").write_text("not an image")
    missing = tmp_path / "missing.jpg"
    inputs = [str(photo), str(tmp_path / "empty.jpg"), str(tmp_path / "notes.png"), str(missing)]
    out = tmp_path / "out"
    code = main(["-q", "predict", str(checkpoint), *inputs, "--box", box, "--out", str(out)])
    assert code == 1
    lines = _errors(capsys)
    for name, reason in (
        ("empty.jpg", "empty"),
        ("notes.png", "not a decodable"),
        ("missing", "not found"),
    ):
        assert sum(name in line and reason in line for line in lines) == 1, lines
    assert "3 failed" in lines[-1]
    records = {Path(r["image"]).name: r for r in _records(out)}
    assert records["face.png"]["status"] == "ok" and len(records["face.png"]["faces"]) == 1
    assert {records[n]["status"] for n in ("empty.jpg", "notes.png", "missing.jpg")} == {"error"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["faces"] == 1 and len(summary["failed"]) == 3


def test_results_survive_an_interrupted_run(checkpoint, face, tmp_path, monkeypatch) -> None:
    photo, box = face
    from sepbn.inference import photos

    real_prepare, calls = photos._prepare, []

    def prepare_then_interrupt(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_prepare(*args, **kwargs)

    monkeypatch.setattr(photos, "_prepare", prepare_then_interrupt)
    monkeypatch.setattr(photos, "BATCH_PHOTOS", 1)  # each photo is written when done
    out = tmp_path / "out"
    code = main(
        [
            "predict",
            str(checkpoint),
            str(photo),
            str(photo),
            str(photo),
            "--box",
            box,
            "--out",
            str(out),
        ]
    )
    assert code == 130
    records = _records(out)  # still valid JSON, with the two photos done before Ctrl-C
    assert [r["status"] for r in records] == ["ok", "ok"]


def test_photos_without_a_face_are_recorded_and_an_all_no_face_run_fails(
    checkpoint, face, tmp_path, capsys
) -> None:
    blank = tmp_path / "wall.png"
    cv2.imwrite(str(blank), np.full((120, 160, 3), 128, np.uint8))
    out = tmp_path / "out"
    assert main(["-q", "predict", str(checkpoint), str(blank), "--out", str(out)]) == 1
    (record,) = _records(out)
    assert record["status"] == "no_face" and record["faces"] == [] and "no face" in record["reason"]
    assert any("wall.png: no face found" in line for line in _errors(capsys))


def test_same_stems_do_not_overwrite_each_others_drawing(checkpoint, face, tmp_path) -> None:
    photo, box = face
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "face.png").write_bytes(photo.read_bytes())
    (tmp_path / "a" / "face.jpg").write_bytes(
        cv2.imencode(".jpg", cv2.imread(str(photo)))[1].tobytes()
    )
    out = tmp_path / "out"
    args = [
        "-q",
        "predict",
        str(checkpoint),
        str(tmp_path / "a"),
        str(tmp_path / "b"),
        "--box",
        box,
    ]
    assert main([*args, "--out", str(out), "--draw"]) == 0
    drawings = sorted(p.relative_to(out).as_posix() for p in out.rglob("*_landmarks.jpg"))
    assert drawings == ["a/face_landmarks.jpg", "a/face_png_landmarks.jpg", "b/face_landmarks.jpg"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--box", "500,500,600,600"], "wholly outside"),
        (["--protocol", "wflw"], "68-point model; protocol 'wflw' has 98"),
        (["--device", "nonsense"], "unknown device"),
    ],
)
def test_wrong_boxes_protocols_and_devices_are_one_line(
    checkpoint, face, tmp_path, capsys, extra, message
) -> None:
    photo, _ = face
    code = main(
        ["-q", "predict", str(checkpoint), str(photo), "--out", str(tmp_path / "o"), *extra]
    )
    lines = _errors(capsys)
    assert code == 1 and any(message in line for line in lines), lines
    assert not any("Traceback" in line for line in lines)


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the message on a machine without CUDA"
)
def test_cuda_without_cuda_is_one_line(checkpoint, face, tmp_path, capsys) -> None:
    photo, box = face
    args = ["predict", str(checkpoint), str(photo), "--box", box, "--device", "cuda"]
    assert main([*args, "--out", str(tmp_path / "o")]) == 1
    (line,) = _errors(capsys)
    assert "no CUDA" in line and "--device cpu" in line


def test_a_huge_box_draws_without_an_opencv_error(checkpoint, face, tmp_path, capsys) -> None:
    photo, _ = face
    out = tmp_path / "o"
    args = ["-q", "predict", str(checkpoint), str(photo), "--box=-1e9,-1e9,1e9,1e9", "--draw"]
    assert main([*args, "--out", str(out)]) == 0
    assert (out / "face_landmarks.jpg").is_file()


def test_out_naming_an_existing_file_is_one_line(checkpoint, face, tmp_path, capsys) -> None:
    photo, box = face
    existing = tmp_path / "taken.txt"
    existing.write_text("x")
    assert main(["predict", str(checkpoint), str(photo), "--box", box, "--out", str(existing)]) == 1
    (line,) = _errors(capsys)
    assert str(existing) in line and "existing file" in line


def test_a_jpeg_with_a_corrupt_middle_is_a_bad_file(checkpoint, face, tmp_path, capsys) -> None:
    photo, box = face
    data = bytearray(cv2.imencode(".jpg", cv2.imread(str(photo)))[1].tobytes())
    middle = len(data) // 2
    data[middle : middle + 64] = np.random.default_rng(0).integers(0, 256, 64, np.uint8).tobytes()
    assert data[-2:] == b"\xff\xd9"  # the end marker is intact: only the decoder can tell
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(bytes(data))
    out = tmp_path / "o"
    assert (
        main(["-q", "predict", str(checkpoint), str(broken), "--box", box, "--out", str(out)]) == 1
    )
    assert any(str(broken) in line and "corrupt JPEG" in line for line in _errors(capsys))
    assert _records(out)[0]["status"] == "error"


def test_csv_and_pts_formats(checkpoint, face, tmp_path) -> None:
    photo, box = face
    base = ["-q", "predict", str(checkpoint), str(photo), "--box", box]
    assert main([*base, "--format", "csv", "--out", str(tmp_path / "c")]) == 0
    header, row = (tmp_path / "c" / "landmarks.csv").read_text().strip().splitlines()
    assert header.split(",")[:7] == [
        "image",
        "frame",
        "status",
        "reason",
        "face",
        "score",
        "quality",
    ]
    assert len(row.split(",")) == 7 + 4 + 2 * 68
    assert main([*base, "--format", "pts", "--out", str(tmp_path / "p")]) == 0
    lines = (tmp_path / "p" / "face.pts").read_text().splitlines()
    assert lines[:3] == ["version: 1", "n_points:  68", "{"] and lines[-1] == "}"
    pts = np.array([line.split() for line in lines[3:-1]], float)
    json_out = tmp_path / "j"
    assert main([*base, "--out", str(json_out)]) == 0
    landmarks = np.array(_records(json_out)[0]["faces"][0]["landmarks"])
    np.testing.assert_allclose(pts - 1, landmarks, atol=0.01)  # 300-W files are 1-based


def test_video_every_nth_frame_is_one_record_each(checkpoint, face, tmp_path) -> None:
    photo, box = face
    frame = cv2.imread(str(photo))
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, frame.shape[1::-1])
    for _ in range(7):
        writer.write(frame)
    writer.release()
    out = tmp_path / "o"
    args = ["-q", "predict", str(checkpoint), str(video), "--every", "3", "--box", box, "--draw"]
    assert main([*args, "--out", str(out)]) == 0
    assert [r["frame"] for r in _records(out)] == [0, 3, 6]
    assert len(list(out.glob("clip_f*_landmarks.jpg"))) == 3


def test_quiet_really_silences_a_clean_run(checkpoint, face, tmp_path, capsys) -> None:
    photo, box = face
    for flags in (["-q", "predict"], ["predict", "-q"]):
        args = [*flags, str(checkpoint), str(photo), "--box", box, "--out", str(tmp_path / "o")]
        assert main(args) == 0
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err == ""


# ------------------------------------------------------------------ safe checkpoint loading


class _Exploit:
    def __reduce__(self):
        return (Path.write_text, (Path(_Exploit.target), "pwned"))


def _crafted(tmp_path: Path, checkpoint: Path) -> dict[str, Path]:
    good = checkpoint.read_bytes()
    files = {
        "truncated": tmp_path / "truncated.pt",
        "random": tmp_path / "random.pt",
        "pickle": tmp_path / "code.pt",
    }
    files["truncated"].write_bytes(good[: len(good) // 3])
    files["random"].write_bytes(np.random.default_rng(0).integers(0, 256, 4096, np.uint8).tobytes())
    _Exploit.target = str(tmp_path / "pwned.txt")
    torch.save({"format": "sepbn-checkpoint", "model": _Exploit()}, files["pickle"])
    return files


@pytest.mark.parametrize("command", ["eval", "predict", "export", "similarity"])
def test_every_entry_point_refuses_crafted_checkpoints_in_one_line(
    command, checkpoint, face, tmp_path, capsys
) -> None:
    photo, box = face
    for kind, path in _crafted(tmp_path, checkpoint).items():
        args = {
            "eval": ["eval", str(path), "--data", "synthetic", "--out", str(tmp_path / "e")],
            "predict": [
                "predict",
                str(path),
                str(photo),
                "--box",
                box,
                "--out",
                str(tmp_path / "p"),
            ],
            "export": ["export", str(path), "--out", str(tmp_path / "m.onnx")],
            "similarity": ["similarity", str(path), "--out", str(tmp_path / "s.png")],
        }[command]
        assert main(args) == 1, kind
        (line,) = _errors(capsys)
        assert str(path) in line and "checkpoint" in line, (kind, line)
    assert not (tmp_path / "pwned.txt").exists()  # the pickled code never ran


def test_eval_of_a_checkpoint_on_another_protocol_is_one_line(checkpoint, tmp_path, capsys) -> None:
    args = ["eval", str(checkpoint), "--data", "synthetic", "--protocol", "wflw"]
    assert main([*args, "--option", "num_faces=2", "--out", str(tmp_path)]) == 1
    (line,) = _errors(capsys)
    assert "68" in line and "wflw" in line and "98" in line


def test_export_refuses_another_protocol_in_one_line(checkpoint, tmp_path, capsys) -> None:
    args = ["export", str(checkpoint), "--protocol", "wflw", "--out", str(tmp_path / "m.onnx")]
    assert main(args) == 1
    (line,) = _errors(capsys)
    assert "wflw" in line and not (tmp_path / "m.onnx").exists()

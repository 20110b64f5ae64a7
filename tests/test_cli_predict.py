"""``sepbn predict`` and ``sepbn export`` on bad inputs: one line each, results kept, exit 1."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from sepbn.cli import main
from sepbn.data.synthetic import make_synthetic_records
from sepbn.inference.errors import InferenceError
from sepbn.inference.writers import read_landmarks


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
    return read_landmarks(out).records


def _summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


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
    summary = _summary(out)  # written on the way out, counting what was written
    assert summary["records"] == 2 and summary["faces"] == 2
    assert summary["complete"] is False and summary["stopped_by"] == "SIGINT"


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


@pytest.mark.parametrize("under", [False, True])
def test_out_naming_an_existing_file_or_a_path_under_one_is_refused(
    checkpoint, face, tmp_path, capsys, under
) -> None:
    photo, box = face
    existing = tmp_path / "taken.txt"
    existing.write_text("x")
    out = existing / "sub" if under else existing
    with pytest.raises(SystemExit) as stopped:  # argparse refuses it, before the model loads
        main(["predict", str(checkpoint), str(photo), "--box", box, "--out", str(out)])
    assert stopped.value.code == 2
    line = _errors(capsys)[-1]
    assert str(existing) in line and "file" in line
    from sepbn.inference.output_files import prepare_out_dir

    with pytest.raises(InferenceError, match="file"):  # the library refuses it too
        prepare_out_dir(out, [photo])


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
    columns = header.split(",")
    assert columns[-68:] == [f"c{i}" for i in range(68)]  # a confidence per point, last
    assert len(row.split(",")) == len(columns) == 7 + 4 + 3 * 68
    assert main([*base, "--format", "pts", "--out", str(tmp_path / "p")]) == 0
    lines = (tmp_path / "p" / "face.pts").read_text().splitlines()
    assert lines[:3] == ["version: 1", "n_points:  68", "{"] and lines[-1] == "}"
    pts = np.array([line.split() for line in lines[3:-1]], float)
    confidence = np.array((tmp_path / "p" / "face_confidence.txt").read_text().split(), float)
    json_out = tmp_path / "j"
    assert main([*base, "--out", str(json_out)]) == 0
    (found,) = _records(json_out)[0]["faces"]
    np.testing.assert_allclose(pts - 1, found["landmarks"], atol=0.01)  # 300-W: 1-based
    np.testing.assert_allclose(confidence, found["confidence"], atol=1e-3)
    in_csv = np.array(row.split(",")[-68:], float)
    np.testing.assert_allclose(in_csv, found["confidence"], atol=1e-3)


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
    for i, flags in enumerate((["-q", "predict"], ["predict", "-q"])):
        out = tmp_path / f"o{i}"
        args = [*flags, str(checkpoint), str(photo), "--box", box, "--out", str(out)]
        assert main(args) == 0
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err == ""


# ------------------------------------------------------------------ nothing computed is lost

# `sepbn predict` slowed to ~20 photos a second, so that a signal lands mid-run.
_SLOW_PREDICT = """
import sys, time
from sepbn.inference import photos
prepare = photos._prepare
def slow(*args, **kwargs):
    time.sleep(0.05)
    return prepare(*args, **kwargs)
photos._prepare = slow
photos.BATCH_PHOTOS = 1
from sepbn.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigterm_mid_run_leaves_a_valid_summary_and_readable_records(
    checkpoint, face, tmp_path
) -> None:
    photo, box = face
    signum = signal.SIGTERM  # Python's default for it ends the process without any `finally`
    out = tmp_path / "out"
    args = ["predict", str(checkpoint), *[str(photo)] * 400, "--box", box, "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.Popen(
        [sys.executable, "-c", _SLOW_PREDICT, *args, "-q"], stderr=subprocess.PIPE, env=env
    )
    lines = out / "landmarks.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and run.poll() is None:
        if lines.is_file() and lines.read_bytes().count(b"\n") >= 4:  # header + 3 records
            break
        time.sleep(0.02)
    run.send_signal(signum)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 128 + signum, err
    assert b"Traceback" not in err and f"stopped by {signum.name}".encode() in err
    records, summary = _records(out), _summary(out)
    assert 3 <= len(records) < 400 and all(r["status"] == "ok" for r in records)
    assert summary["records"] == summary["faces"] == len(records)
    assert summary["complete"] is False and summary["stopped_by"] == signum.name


def test_a_first_ctrl_c_finishes_the_photo_in_hand_then_stops(
    checkpoint, face, tmp_path, capsys, monkeypatch
) -> None:
    photo, box = face
    from sepbn.inference import photos

    real_prepare, calls = photos._prepare, []

    def prepare_then_signal(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGINT)  # handled by sepbn: this photo is finished
        return real_prepare(*args, **kwargs)

    monkeypatch.setattr(photos, "_prepare", prepare_then_signal)
    monkeypatch.setattr(photos, "BATCH_PHOTOS", 1)
    # Python's default_int_handler, or SIG_IGN when the suite runs in the background of a
    # non-interactive shell: whichever it is, predict must give it back.
    before = signal.getsignal(signal.SIGINT)
    out = tmp_path / "out"
    args = ["-q", "predict", str(checkpoint), *[str(photo)] * 5, "--box", box]
    assert main([*args, "--out", str(out)]) == 130
    assert len(_records(out)) == 3 and _summary(out)["records"] == 3
    assert "stopped by SIGINT: 3 photo(s)/frame(s)" in _errors(capsys)[-1]
    assert signal.getsignal(signal.SIGINT) is before  # given back


def _huge_jpeg(path: Path) -> Path:
    """A small JPEG whose header declares 65000 x 65000 pixels (OpenCV refuses to decode it)."""
    data = bytearray(cv2.imencode(".jpg", np.zeros((16, 16, 3), np.uint8))[1].tobytes())
    sof = data.find(b"\xff\xc0")  # baseline start of frame: length, precision, height, width
    data[sof + 5 : sof + 9] = (65000).to_bytes(2, "big") * 2
    path.write_bytes(bytes(data))
    return path


def test_bad_photos_between_good_ones_cost_only_themselves(
    checkpoint, face, tmp_path, capsys
) -> None:
    photo, box = face
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a.png", "c.png", "d.png"):
        (folder / name).write_bytes(photo.read_bytes())
    _huge_jpeg(folder / "b.jpg")
    good = [float(v) for v in box.split(",")]
    table = {"a.png": good, "b.jpg": good, "c.png": [0, 0, 1e300, 1e300], "d.png": good}
    (tmp_path / "boxes.json").write_text(json.dumps(table))
    out = tmp_path / "out"
    args = ["-q", "predict", str(checkpoint), str(folder), "--boxes", str(tmp_path / "boxes.json")]
    assert main([*args, "--out", str(out)]) == 1
    status = {Path(r["image"]).name: (r["status"], r["reason"] or "") for r in _records(out)}
    assert status["a.png"] == status["d.png"] == ("ok", "")  # one network batch with c.png
    assert status["b.jpg"][0] == "error" and "CV_IO_MAX_IMAGE_PIXELS" in status["b.jpg"][1]
    assert status["c.png"][0] == "error" and "not finite" in status["c.png"][1]
    summary = _summary(out)
    assert summary["records"] == 4 and summary["faces"] == 2 and len(summary["failed"]) == 2
    lines = _errors(capsys)
    assert len(lines) == 3 and "2 failed" in lines[-1] and not any("Traceback" in x for x in lines)


def test_a_failing_detection_or_drawing_costs_only_its_photo(
    checkpoint, face, tmp_path, capsys, monkeypatch
) -> None:
    photo, box = face
    from sepbn.inference import LandmarkDetector, photos

    wide = tmp_path / "wide.png"  # the photo the face detector fails on
    cv2.imwrite(str(wide), np.zeros((40, 300, 3), np.uint8))

    def detect(self, image):
        if image.shape[1] == 300:
            raise cv2.error("OpenCV(4.x) d.cpp:1: error: (-215:Assertion failed) x in function 'f'")
        return np.array([[float(v) for v in box.split(",")]]), np.ones(1)

    real_jpeg = photos._jpeg

    def jpeg(image, *args):
        if image.shape[0] == 999:
            raise MemoryError
        return real_jpeg(image, *args)

    monkeypatch.setattr(LandmarkDetector, "detect_faces", detect)
    monkeypatch.setattr(photos, "_jpeg", jpeg)
    tall = tmp_path / "tall.png"  # the photo whose drawing fails
    cv2.imwrite(str(tall), cv2.resize(cv2.imread(str(photo)), (160, 999)))
    out = tmp_path / "out"
    args = ["-q", "predict", str(checkpoint), str(photo), str(wide), str(tall), "--draw"]
    assert main([*args, "--out", str(out)]) == 1
    status = {Path(r["image"]).name: (r["status"], r["reason"] or "") for r in _records(out)}
    assert status["face.png"] == ("ok", "")
    assert status["wide.png"] == ("error", "OpenCV: assertion failed: x")
    assert status["tall.png"] == ("error", "the drawing failed: MemoryError")
    assert [p.name for p in out.rglob("*.jpg")] == ["face_landmarks.jpg"]
    assert "2 failed" in _errors(capsys)[-1]


def test_a_checkpoint_with_nan_weights_is_refused_in_one_line(
    checkpoint, face, tmp_path, capsys
) -> None:
    photo, box = face
    state = torch.load(checkpoint, weights_only=True)
    name = next(k for k in state["model"] if k.endswith("weight"))
    state["model"][name] = torch.full_like(state["model"][name], float("nan"))
    diverged = tmp_path / "diverged.pt"
    torch.save(state, diverged)
    out = tmp_path / "out"
    args = ["predict", str(diverged), str(photo), "--box", box, "--out", str(out)]
    assert main(args) == 1
    (line,) = _errors(capsys)
    assert str(diverged) in line and "NaN or inf" in line and name in line
    assert not out.exists()


def test_a_torchscript_export_given_as_the_checkpoint_runs(
    checkpoint, face, tmp_path, capsys
) -> None:
    from sepbn.inference.export import export_checkpoint

    photo, box = face
    scripted = export_checkpoint(checkpoint, tmp_path / "net.pt", fmt="torchscript")
    outs = {}
    for name, net in (("eager", checkpoint), ("script", scripted)):
        outs[name] = tmp_path / name
        args = ["-q", "predict", str(net), str(photo), "--box", box, "--device", "cpu"]
        assert main([*args, "--out", str(outs[name])]) == 0
    eager, script = (np.array(_records(outs[n])[0]["faces"][0]["landmarks"]) for n in outs)
    np.testing.assert_allclose(script, eager, atol=0.02)
    assert capsys.readouterr().err == ""


@pytest.mark.skipif(sys.platform != "linux", reason="file names are bytes on Linux only")
def test_a_file_name_that_is_not_utf8_is_drawn_and_written(checkpoint, face, tmp_path) -> None:
    photo, box = face
    folder = tmp_path / "in"
    folder.mkdir()
    name = os.fsdecode(b"caf\xe9.png")  # Latin-1, not UTF-8
    (folder / name).write_bytes(photo.read_bytes())
    for fmt in ("jsonl", "csv"):
        out = tmp_path / fmt
        args = ["-q", "predict", str(checkpoint), str(folder), "--box", box, "--format", fmt]
        assert main([*args, "--draw", "--out", str(out)]) == 0  # imwrite used to crash here
        assert (out / os.fsdecode(b"caf\xe9_landmarks.jpg")).stat().st_size > 0
    (record,) = _records(tmp_path / "jsonl")
    assert record["image"] == str(folder / name)
    assert os.fsencode(str(folder / name)) in (tmp_path / "csv" / "landmarks.csv").read_bytes()


def test_a_full_disk_ends_in_one_line_with_the_records_before_it_whole(
    checkpoint, face, tmp_path, capsys, monkeypatch
) -> None:
    photo, box = face
    from sepbn.inference import photos

    real_write, calls = os.write, []

    def write(fd, data):  # the header and two records fit; the third is cut by ENOSPC
        calls.append(1)
        if len(calls) == 4:
            real_write(fd, bytes(data)[:10])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    monkeypatch.setattr(photos, "BATCH_PHOTOS", 1)
    out = tmp_path / "out"
    args = ["-q", "predict", str(checkpoint), *[str(photo)] * 4, "--box", box]
    assert main([*args, "--out", str(out)]) == 1
    (line,) = _errors(capsys)
    assert "no space left on device" in line and "the 2 record(s) before it are whole" in line
    landmarks = read_landmarks(out)
    assert len(landmarks.records) == 2 and not landmarks.cut  # cut back to whole lines
    summary = _summary(out)
    assert summary["records"] == 2 and summary["stopped_by"].startswith("error: ")


# ------------------------------------------------------------------ never overwrite an input


def test_pts_results_never_replace_the_annotations_beside_the_photos(
    checkpoint, face, tmp_path, capsys
) -> None:
    photo, box = face
    folder = tmp_path / "set"
    folder.mkdir()
    (folder / "face.png").write_bytes(photo.read_bytes())
    (folder / "face.pts").write_text("the ground truth")
    base = ["-q", "predict", str(checkpoint), str(folder), "--box", box, "--format", "pts"]
    for extra in ([], ["--overwrite"]):
        assert main([*base, "--out", str(folder), *extra]) == 1
        (line,) = _errors(capsys)
        assert "holds the input" in line
    assert (folder / "face.pts").read_text() == "the ground truth"
    assert sorted(p.name for p in folder.iterdir()) == ["face.png", "face.pts"]


def test_a_second_run_into_the_same_out_needs_overwrite(checkpoint, face, tmp_path, capsys) -> None:
    photo, box = face
    out = tmp_path / "out"
    args = ["-q", "predict", str(checkpoint), str(photo), "--box", box, "--out", str(out)]
    assert main(args) == 0
    assert main(args) == 1
    (line,) = _errors(capsys)
    assert "already holds 2 file(s)" in line and "--overwrite" in line
    assert main([*args, "--overwrite"]) == 0
    (line,) = _errors(capsys)  # says that files of before may stay
    assert "held 2 file(s) before this run" in line


def test_drawings_in_an_out_folder_inside_the_inputs_are_not_read_as_photos(
    checkpoint, face, tmp_path
) -> None:
    photo, box = face
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "face.png").write_bytes(photo.read_bytes())
    args = ["-q", "predict", str(checkpoint), str(folder), "--box", box, "--draw"]
    out = folder / "pred"
    assert main([*args, "--out", str(out)]) == 0
    assert main([*args, "--out", str(out), "--overwrite"]) == 0
    assert [Path(r["image"]).name for r in _records(out)] == ["face.png"]


# ------------------------------------------------------------------ arguments


def _video(path: Path, photo: Path, num_frames: int) -> Path:
    frame = cv2.imread(str(photo))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5, frame.shape[1::-1])
    for _ in range(num_frames):
        writer.write(frame)
    writer.release()
    return path


def test_every_zero_is_refused_before_anything_runs(checkpoint, face, tmp_path, capsys) -> None:
    from sepbn.inference.inputs import count_frames

    photo, box = face
    video = _video(tmp_path / "clip.avi", photo, 3)
    args = ["predict", str(checkpoint), str(video), "--every", "0", "--box", box]
    with pytest.raises(SystemExit) as stopped:
        main([*args, "--out", str(tmp_path / "o")])
    assert stopped.value.code == 2 and "--every" in _errors(capsys)[-1]
    with pytest.raises(InferenceError, match="--every must be >= 1"):
        count_frames([video], 0)  # used to divide by zero


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"face.png": "abc"}', "entry 'face.png'"),
        ('{"face.png": [[1, 2, 3]]}', "3 number(s), not 4"),
        ('{"face.png": [[10, 10, 5, 5]]}', "empty"),
        ('{"face.png": [1, 2, "x", 4]}', "not all numbers"),
        ('{"face.png": [1, 2, true, 4]}', "not all numbers"),
        ('{"face.png": []}', "0 number(s), not 4"),
        ("[[1, 2, 3, 4]]", "expected an object"),
        ("[" * 100_000 + "]" * 100_000, "nested too deep"),
        ("{", "not valid JSON"),
        (b"\xff\xfe", "cannot read"),
    ],
)
def test_malformed_boxes_files_are_one_line(
    checkpoint, face, tmp_path, capsys, content, message
) -> None:
    photo, _ = face
    boxes = tmp_path / "boxes.json"
    if isinstance(content, bytes):
        boxes.write_bytes(content)
    else:
        boxes.write_text(content)
    args = ["predict", str(checkpoint), str(photo), "--boxes", str(boxes)]
    assert main([*args, "--out", str(tmp_path / "o")]) == 1
    (line,) = _errors(capsys)
    assert str(boxes) in line and message in line, line


def test_a_boxes_key_that_matches_no_photo_is_said(checkpoint, face, tmp_path, capsys) -> None:
    photo, box = face
    good = [float(v) for v in box.split(",")]
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"face.png": good, "fcae.png": good}))
    out = tmp_path / "o"
    args = ["-q", "predict", str(checkpoint), str(photo), "--boxes", str(boxes)]
    assert main([*args, "--out", str(out)]) == 1
    lines = _errors(capsys)
    assert any("'fcae.png' matches no input" in line for line in lines), lines
    assert _records(out)[0]["status"] == "ok" and _summary(out)["unmatched_boxes"] == ["fcae.png"]


def test_negative_box_coordinates_are_values_not_options(checkpoint, face, tmp_path) -> None:
    photo, _ = face
    for i, args in enumerate((["--box", "-5,-8,120,130"], ["--box=-5,-8,120,130"])):
        out = tmp_path / f"o{i}"
        assert main(["-q", "predict", str(checkpoint), str(photo), *args, "--out", str(out)]) == 0
        assert _records(out)[0]["faces"][0]["box"] == [-5, -8, 120, 130]


def test_a_symlink_loop_given_as_an_input_is_one_record(checkpoint, face, tmp_path, capsys) -> None:
    photo, box = face
    (tmp_path / "x.png").symlink_to(tmp_path / "y.png")
    (tmp_path / "y.png").symlink_to(tmp_path / "x.png")
    out = tmp_path / "o"
    args = ["-q", "predict", str(checkpoint), str(photo), str(tmp_path / "x.png"), "--box", box]
    assert main([*args, "--out", str(out)]) == 1
    assert [r["status"] for r in _records(out)] == ["ok", "error"]
    assert any("x.png: a symbolic link loop" in line for line in _errors(capsys))


def test_a_truncated_video_is_said_and_its_frames_kept(checkpoint, face, tmp_path, capsys) -> None:
    photo, box = face
    whole = _video(tmp_path / "whole.avi", photo, 12).read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(whole[: len(whole) // 2])
    out = tmp_path / "o"
    assert main(["-q", "predict", str(checkpoint), str(cut), "--box", box, "--out", str(out)]) == 1
    records = _records(out)
    frames = [r["frame"] for r in records if r["status"] == "ok"]
    assert 0 < len(frames) < 12 and frames == list(range(len(frames)))
    assert (
        records[-1]["frame"] is None
        and "of the 12 frames its header declares" in (records[-1]["reason"])
    )
    assert any("cut.avi: the video ends after" in line for line in _errors(capsys))


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

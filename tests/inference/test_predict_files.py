"""``sepbn predict``'s files: whole results after a kill or a full disk, a reader that recovers a
cut file, an output folder that never holds an input, boxes checked, signals handled."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
from pathlib import Path

import cv2
import numpy as np
import pytest

from sepbn.inference.boxes import NUMBERS_ARGUMENT, BoxTable, parse_boxes
from sepbn.inference.errors import InferenceError, OutputError, error_reason
from sepbn.inference.output_files import LineFile, prepare_out_dir, write_atomic
from sepbn.inference.stopping import Interrupted, StopSignals
from sepbn.inference.writers import read_landmarks

_HEAD = {"format": "sepbn-landmarks", "version": 2, "protocol": "300w", "num_points": 68}


def _full_disk(monkeypatch, after: int) -> None:
    """``os.write`` fails with ENOSPC from call ``after + 1`` on, having written a few bytes."""
    real_write, calls = os.write, []

    def write(fd, data):
        calls.append(1)
        if len(calls) > after:
            real_write(fd, bytes(data)[:3])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)


def test_a_line_file_cut_by_a_full_disk_keeps_its_whole_lines(tmp_path, monkeypatch) -> None:
    path = tmp_path / "landmarks.jsonl"
    lines = LineFile(path)
    lines.append(json.dumps(_HEAD) + "\n")
    lines.append('{"image": "a.png"}\n')
    _full_disk(monkeypatch, after=0)
    with pytest.raises(OutputError, match="no space left on device") as failed:
        lines.append('{"image": "b.png"}\n')
    assert failed.value.__cause__ is None and failed.value.__suppress_context__
    lines.close()
    lines.close()  # twice is fine
    assert path.read_text().splitlines()[1:] == ['{"image": "a.png"}']


def test_write_atomic_on_a_full_disk_keeps_the_old_file_and_no_temporary(
    tmp_path, monkeypatch
) -> None:
    target = tmp_path / "summary.json"
    target.write_text("old")
    real_fdopen = os.fdopen

    class Full:
        def __init__(self, fd, mode):
            self.file = real_fdopen(fd, mode)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fdopen", Full)
    with pytest.raises(OutputError, match=f"cannot write {target}: no space left"):
        write_atomic(target, b"new")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == [target.name]


def test_read_landmarks_leaves_out_a_cut_last_line_and_says_so(tmp_path) -> None:
    path = tmp_path / "landmarks.jsonl"
    whole = json.dumps(_HEAD) + "\n" + '{"image": "a.png"}\n{"image": "b.png"}\n'
    path.write_text(whole + '{"image": "c.p')
    with pytest.warns(UserWarning, match="line 4 is cut short.*the 2 record"):
        cut = read_landmarks(tmp_path)  # the folder finds the file
    assert cut.cut and [r["image"] for r in cut.records] == ["a.png", "b.png"]
    assert cut.protocol == "300w" and cut.num_points == 68
    path.write_text(whole)
    assert not read_landmarks(path).cut and len(read_landmarks(path).records) == 2
    path.write_text(whole.replace("b.png", "b.png\x22 broken"))
    with pytest.raises(InferenceError, match=r"landmarks.jsonl:3: not a JSON line"):
        read_landmarks(path)


def test_read_landmarks_reads_the_former_landmarks_json(tmp_path) -> None:
    path = tmp_path / "landmarks.json"
    path.write_text(json.dumps({**_HEAD, "records": [{"image": "a.png"}]}))
    assert read_landmarks(tmp_path).records == [{"image": "a.png"}]
    path.write_text(json.dumps(_HEAD)[:-1] + ', "records": [\n{"image": "a.png"}')  # killed
    with pytest.raises(InferenceError, match=r"not valid JSON.*landmarks\.jsonl"):
        read_landmarks(path)


def test_the_output_folder_is_new_or_empty_and_never_holds_an_input(tmp_path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    photo = photos / "a.png"
    photo.write_bytes(b"x")
    for out in (photos, tmp_path):  # the inputs' folder, or one above it
        for overwrite in (False, True):
            with pytest.raises(InferenceError, match="holds the input"):
                prepare_out_dir(out, [photo], overwrite)
    linked = tmp_path / "linked"
    linked.symlink_to(photos)
    with pytest.raises(InferenceError, match="holds the input"):  # through a symbolic link
        prepare_out_dir(photos, [linked / "a.png"], True)
    out = tmp_path / "out"
    assert prepare_out_dir(out, [photo]) == [] and out.is_dir()
    assert prepare_out_dir(out, [photo]) == []  # empty: fine
    (out / "summary.json").write_text("{}")
    with pytest.raises(InferenceError, match=r"already holds 1 file.*--overwrite"):
        prepare_out_dir(out, [photo])
    assert prepare_out_dir(out, [photo], overwrite=True) == [out / "summary.json"]
    with pytest.raises(InferenceError, match=r"is under .*a\.png, a file"):
        prepare_out_dir(photo / "sub", [])


@pytest.mark.parametrize(
    ("text", "problem"),
    [("1,2,3", "3 number(s)"), ("a,b,c,d", "not numbers"), ("1,2,nan,4", "not all finite")],
)
def test_box_text_is_four_finite_numbers(text, problem) -> None:
    with pytest.raises(InferenceError, match=re.escape(problem)):
        parse_boxes([text])


def test_negative_boxes_parse_and_look_like_values_to_the_parser() -> None:
    np.testing.assert_array_equal(parse_boxes(["-5,-3.5,1e2,120"]), [[-5, -3.5, 100, 120]])
    for text in ("-5,3,100,120", "-1e9,-1e9,1e9,1e9", "-.5,0,1,1", "-5"):
        assert NUMBERS_ARGUMENT.match(text), text
    for text in ("-q", "--box", "-x1.jpg"):
        assert not NUMBERS_ARGUMENT.match(text), text


def test_box_table_matches_paths_and_names_and_reports_the_rest(tmp_path) -> None:
    box = np.array([[1.0, 2, 3, 4]])
    table = BoxTable({"a.png": box, str(tmp_path / "b.png"): box, "./c.png": box, "d.png": box})
    inputs = [tmp_path / "a.png", tmp_path / "b.png", Path("c.png")]
    assert all(table.get(p) is not None for p in inputs)
    assert table.get(tmp_path / "e.png") is None
    assert table.unmatched(inputs) == ["d.png"]


def test_the_first_signal_asks_to_stop_and_a_second_stops_but_not_mid_record() -> None:
    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signal_name == "SIGTERM"
        written = []
        with pytest.raises(Interrupted) as second, stop.deferred():
            os.kill(os.getpid(), signal.SIGINT)
            written.append("record")  # the block ends before the signal acts
        assert written == ["record"] and second.value.signum == signal.SIGINT
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored


def test_error_reasons_are_one_plain_line() -> None:
    big = cv2.error(
        "OpenCV(4.14.0) loadsave.cpp:79: error: (-215:Assertion failed) pixels <= "
        "CV_IO_MAX_IMAGE_PIXELS in function 'validateInputImageSize'"
    )
    assert "more pixels than OpenCV decodes" in error_reason(big)
    assert error_reason(ValueError("bad\nsecond line")) == "ValueError: bad"
    assert error_reason(MemoryError()) == "MemoryError"
    assert error_reason(InferenceError("its own words")) == "its own words"


def test_frames_say_why_a_photo_cannot_be_read_and_go_on(tmp_path) -> None:
    from sepbn.inference.inputs import frames

    good = tmp_path / "good.png"
    cv2.imwrite(str(good), np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "loop.png").symlink_to(tmp_path / "loop.png")
    (tmp_path / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    paths = [tmp_path / "loop.png", tmp_path / "dangling.png", good]
    found = list(frames(paths))
    assert [f.error for f in found[:2]] == [
        "a symbolic link loop",
        f"a symbolic link to {tmp_path / 'nowhere.png'}, which does not exist",
    ]
    assert found[2].image is not None and found[2].image.shape == (8, 8, 3)

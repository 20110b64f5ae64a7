"""Checkpoints: atomic writes, clear errors, RNG states."""

from __future__ import annotations

import errno
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from sepbn.engine.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    capture_rng_state,
    load_checkpoint,
    load_model_state,
    restore_rng_state,
    save_checkpoint,
)


def _state(value: float = 1.0) -> dict:
    return {
        "model": {"w": torch.full((3,), value)},
        "model_info": {"kind": "single", "num_points": 5},
        "config": {"name": "x"},
        "epoch": 2,
    }


def test_save_load_round_trip_leaves_no_temporary(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "sub" / "last.pt", _state())
    assert path == tmp_path / "sub" / "last.pt"
    state = load_checkpoint(path)
    assert state["format"] == CHECKPOINT_FORMAT and state["epoch"] == 2
    assert torch.equal(state["model"]["w"], torch.ones(3))
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]
    # Only plain values: the file opens with the safe loader.
    torch.load(path, weights_only=True)


def test_crash_while_writing_keeps_the_old_checkpoint(tmp_path: Path, monkeypatch) -> None:
    path = save_checkpoint(tmp_path / "last.pt", _state(1.0))
    real_save = torch.save

    def crash(obj, f, *args, **kwargs) -> None:
        f.write(b"partial bytes")  # half a file, then the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, _state(2.0))
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_missing_truncated_corrupt_foreign_and_newer_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"nothere\.pt: no such checkpoint"):
        load_checkpoint(tmp_path / "nothere.pt")

    good = save_checkpoint(tmp_path / "good.pt", _state())
    data = good.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"truncated\.pt: cannot read the checkpoint"):
        load_checkpoint(truncated)

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match=r"garbage\.pt: cannot read"):
        load_checkpoint(garbage)

    bare = tmp_path / "bare.pt"
    torch.save({"w": torch.ones(3)}, bare)
    with pytest.raises(CheckpointError, match=r"bare\.pt: not a sepbn checkpoint"):
        load_checkpoint(bare)

    newer = save_checkpoint(tmp_path / "newer.pt", {**_state(), "format_version": 99})
    with pytest.raises(CheckpointError, match=r"format version 99 is newer"):
        load_checkpoint(newer)

    incomplete = save_checkpoint(tmp_path / "incomplete.pt", {"epoch": 1})
    with pytest.raises(CheckpointError, match=r"lacks \['model', 'model_info', 'config'\]"):
        load_checkpoint(incomplete)


def test_rng_states_round_trip_through_a_file(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.randn()  # leaves a cached Gaussian in NumPy's state
    path = save_checkpoint(tmp_path / "rng.pt", {**_state(), "rng": capture_rng_state()})
    expected = (random.random(), np.random.randn(3).tolist(), torch.rand(3))
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    restore_rng_state(load_checkpoint(path)["rng"])
    got = (random.random(), np.random.randn(3).tolist(), torch.rand(3))
    assert got[0] == expected[0] and got[1] == expected[1]
    assert torch.equal(got[2], expected[2])


def test_load_model_state_names_what_does_not_fit() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    state = model.state_dict()
    bad = dict(state)
    del bad["1.bias"]
    bad["extra"] = torch.zeros(1)
    bad["0.weight"] = torch.zeros(4, 2)
    with pytest.raises(CheckpointError) as info:
        load_model_state(model, bad, "ckpt.pt")
    msg = str(info.value)
    assert "ckpt.pt" in msg and "missing: 1.bias" in msg and "unexpected: extra" in msg
    assert "0.weight (4, 2) vs (3, 2)" in msg


class _PickledCode:
    """Pickles as a call of ``print``: stands in for code hidden in a checkpoint."""

    def __reduce__(self):
        return (print, ("this must never run",))


@pytest.mark.parametrize("legacy", [False, True])
def test_pickled_code_is_refused_for_safety_without_torch_advice(tmp_path: Path, legacy) -> None:
    path = tmp_path / "code.pt"
    state = {**_state(), "format": CHECKPOINT_FORMAT, "hook": _PickledCode()}
    torch.save(state, path, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert message.startswith(f"{path}: refused for safety: the file holds pickled Python code")
    assert "pickled Python code (print)" in message  # the refused global, as torch names it
    assert "truncated" not in message and "corrupt" not in message
    assert "weights_only" not in message  # never the advice to switch the guard off


def test_truncated_random_and_empty_files_each_get_their_own_message(tmp_path: Path) -> None:
    good = save_checkpoint(tmp_path / "good.pt", _state())
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:-200])
    legacy = tmp_path / "legacy.pt"
    torch.save(_state(), legacy, _use_new_zipfile_serialization=False)
    cut_legacy = tmp_path / "cut_legacy.pt"
    cut_legacy.write_bytes(legacy.read_bytes()[:100])
    noise = tmp_path / "noise.pt"
    noise.write_bytes(np.random.default_rng(0).bytes(3000))
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    expected = {
        cut: "the file is truncated or damaged (its zip archive is incomplete",
        cut_legacy: "the file is truncated or damaged (the legacy torch.save data ends early",
        noise: "not a PyTorch file (neither the zip layout of torch.save nor its legacy layout)",
        empty: "the file is empty (0 bytes)",
    }
    for path, reason in expected.items():
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(path)
        message = str(info.value)
        assert message.startswith(f"{path}: cannot read the checkpoint: {reason}"), message
        assert "weights_only" not in message and "pickled" not in message


def test_cuda_without_cuda_names_the_devices_before_loading(tmp_path: Path, monkeypatch) -> None:
    path = save_checkpoint(tmp_path / "good.pt", _state())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("loaded before the check"))
    with pytest.raises(
        ValueError, match=r"device 'cuda': CUDA is not available.*available: \['cpu"
    ):
        load_checkpoint(path, map_location="cuda")


class _DiskFullAfter:
    """A file that takes ``room`` bytes, then fails as a full disk does (inside torch's C++
    writer, which turns the OSError into a RuntimeError)."""

    def __init__(self, file, room: int) -> None:
        self.file, self.room = file, room

    def write(self, data) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.file.write(data)

    def __getattr__(self, name: str):
        return getattr(self.file, name)

    def __enter__(self) -> _DiskFullAfter:
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()


@pytest.mark.parametrize("where", ["torch.save", "file.write"])
def test_a_full_disk_is_one_line_and_keeps_the_old_checkpoint(
    tmp_path: Path, monkeypatch, where: str
) -> None:
    path = save_checkpoint(tmp_path / "last.pt", _state(1.0))
    if where == "torch.save":

        def full_disk(obj, f, *args, **kwargs) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(torch, "save", full_disk)
    else:
        real_fdopen = os.fdopen
        monkeypatch.setattr(
            os, "fdopen", lambda fd, mode: _DiskFullAfter(real_fdopen(fd, mode), 64)
        )
    with pytest.raises(CheckpointError) as info:
        save_checkpoint(path, _state(2.0))
    monkeypatch.undo()
    assert str(info.value) == (
        f"{path}: cannot write the checkpoint: no space left on device (the disk is full); "
        "the previous one is kept"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(3))


def test_a_folder_that_cannot_be_made_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match=r"file/run/last\.pt: cannot write the checkpoint"):
        save_checkpoint(tmp_path / "file" / "run" / "last.pt", _state())


@pytest.mark.parametrize(
    ("entry", "value", "expected"),
    [
        ("model_info", [1, 2], "'model_info' must be a mapping, got list"),
        ("config", "wflw.yaml", "'config' must be a mapping, got str"),
        ("model", [torch.ones(1)], "'model' must be a mapping, got list"),
        ("model", {"w": 1.0}, "'model' must map parameter names to tensors, got 'w': float"),
    ],
)
def test_a_hand_made_checkpoint_of_the_wrong_shape_is_one_line(
    tmp_path: Path, entry: str, value: object, expected: str
) -> None:
    path = save_checkpoint(tmp_path / "hand.pt", {**_state(), entry: value})
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(info.value).startswith(f"{path}: {expected}")


def test_a_torchscript_file_is_named_as_one(tmp_path: Path) -> None:
    path = tmp_path / "model.torchscript.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    with pytest.raises(CheckpointError, match=r"a TorchScript file .*sepbn predict. runs it"):
        load_checkpoint(path)

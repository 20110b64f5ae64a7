"""Shared fixtures: the real-data root, deterministic seeds, and the ``cuda`` marker's skip."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def data_root_path() -> Path:
    """``SEPBN_DATA`` or ``../shared/data`` next to the checkout."""
    env = os.environ.get("SEPBN_DATA")
    return Path(env) if env else (REPO.parent / "shared" / "data")


def pytest_collection_modifyitems(config, items) -> None:
    """Skip the tests marked ``cuda`` when no GPU is present, saying so."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA: torch.cuda.is_available() is False")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The real face data; tests that need it are skipped, with the reason, when absent."""
    root = data_root_path()
    if not root.is_dir():
        pytest.skip(f"real face data not found at {root} (set SEPBN_DATA to its folder)")
    return root


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture
def write_pts_folder():
    """``write(folder, num_faces)``: synthetic 68-point faces as ``f<i>.jpg`` + ``f<i>.pts``."""
    import cv2

    from sepbn.data.synthetic import make_synthetic_records

    def write(folder: Path, num_faces: int) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        for i, rec in enumerate(make_synthetic_records(num_faces, seed=3)):
            cv2.imwrite(str(folder / f"f{i}.jpg"), cv2.cvtColor(rec.image, cv2.COLOR_RGB2BGR))
            rows = "".join(f"{x + 1} {y + 1}\n" for x, y in rec.landmarks)  # 1-based, as 300-W
            (folder / f"f{i}.pts").write_text(f"version: 1\nn_points: 68\n{{\n{rows}}}\n")
        return folder

    return write


def _train_vanilla_sepbn(root: Path, train_data: dict, optim: dict, **sections) -> Path:
    """Train a Vanilla CNN (width 1/8, S = 64, SepBN) on the CPU; its ``last.pt``."""
    from sepbn.config import config_from_dict
    from sepbn.engine.experiment import train

    config = {
        "name": root.name,
        "model": {"arch": "vanilla_cnn", "norm": "sepbn", "width_mult": 0.125, "input_size": 64},
        "data": {"train": [train_data], "num_workers": 0, "cache_dir": str(root / "cache")},
        "optim": optim,
        "train": {"device": "cpu", "progress": False, "tensorboard": False},
        **sections,
    }
    train(config_from_dict(config), root / "run")
    return root / "run" / "stage1" / "last.pt"


@pytest.fixture(scope="session")
def tiny_300w_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 68-point checkpoint trained for one epoch on 8 synthetic faces (seconds)."""
    data = {"kind": "synthetic", "protocol": "300w", "options": {"num_faces": 8}}
    optim = {"epochs": 1, "batch_size": 8, "warmup_epochs": 0}
    return _train_vanilla_sepbn(tmp_path_factory.mktemp("tiny300w"), data, optim)


@pytest.fixture(scope="session")
def real_300w_checkpoint(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 68-point checkpoint trained for a minute on the real 300-W training crops.

    Good enough to find the landmarks of a real face roughly (about 4% of the box side),
    which the photo and quality tests need; no test photo is used for training.
    """
    data = {"kind": "pts_folder", "path": str(data_root / "300W_train_crops")}
    optim = {
        "name": "adam",
        "lr": 3e-3,
        "min_lr": 1e-5,
        "weight_decay": 0.0,
        "batch_size": 32,
        "epochs": 8,
        "warmup_epochs": 1,
    }
    temperature = {"start": 30.0, "end": 1.0, "epochs": 3}
    return _train_vanilla_sepbn(
        tmp_path_factory.mktemp("real300w"), data, optim, temperature=temperature
    )

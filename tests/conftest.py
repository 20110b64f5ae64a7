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

"""Shared fixtures: the real-data root and deterministic seeds."""

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

"""Fixtures of the model tests (the helpers themselves live in tests/helpers.py)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from torch import nn

from helpers import randomize_norms


@pytest.fixture
def randomize() -> Callable[..., nn.Module]:
    return randomize_norms

"""set_temperature and TemperatureSchedule (Eq. 5, the paper's 30 → 1 annealing)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sepbn.nn import (
    DomainBatchNorm2d,
    SepBatchNorm2d,
    SimpleSepBatchNorm2d,
    TemperatureSchedule,
    set_temperature,
)


def test_set_temperature_changes_and_counts_every_sepbn_type_layer() -> None:
    net = nn.Sequential(
        nn.Conv2d(3, 4, 1),
        SepBatchNorm2d(4, temperature=30.0),
        nn.Sequential(SimpleSepBatchNorm2d(4, temperature=30.0), nn.BatchNorm2d(4)),
        DomainBatchNorm2d(4),
    )
    assert set_temperature(net, 2.5) == 2
    assert net[1].temperature == 2.5 and net[2][0].temperature == 2.5
    assert set_temperature(nn.Sequential(nn.BatchNorm2d(4)), 1.0) == 0
    assert set_temperature(SepBatchNorm2d(4), 3.0) == 1


def test_set_temperature_changes_the_output() -> None:
    layer = SepBatchNorm2d(4)
    with torch.no_grad():
        layer.weight.normal_()
    x = torch.randn(3, 4, 5, 5)
    before = layer.attention(x)
    set_temperature(layer, 1e6)
    assert not torch.allclose(layer.attention(x), before)
    torch.testing.assert_close(layer.attention(x), torch.full((3, 2, 3), 1 / 3), atol=1e-5, rtol=0)


@pytest.mark.parametrize("tau", [0.0, -1.0, float("nan")])
def test_set_temperature_rejects_non_positive(tau: float) -> None:
    layer = SepBatchNorm2d(4, temperature=5.0)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        set_temperature(layer, tau)
    assert layer.temperature == 5.0


def test_schedule_is_linear_then_constant() -> None:
    schedule = TemperatureSchedule(start=30.0, end=1.0, epochs=30)
    assert schedule(0) == 30.0
    assert schedule(1) == pytest.approx(30.0 - 29.0 / 30.0)
    assert schedule(15) == pytest.approx(15.5)
    assert schedule(29.5) == pytest.approx(1.0 + 29.0 / 60.0)
    assert schedule(30) == 1.0
    assert schedule(499) == 1.0
    assert TemperatureSchedule() == schedule  # the paper's setting is the default
    assert TemperatureSchedule(5.0, 10.0, 4)(1) == pytest.approx(6.25)  # increasing works too
    assert TemperatureSchedule(30.0, 1.0, 0)(0) == 1.0


def test_schedule_apply_sets_model() -> None:
    net = nn.Sequential(SepBatchNorm2d(4), SimpleSepBatchNorm2d(4))
    assert TemperatureSchedule(30.0, 1.0, 30).apply(net, 10) == pytest.approx(30.0 - 29.0 / 3)
    assert net[0].temperature == net[1].temperature == pytest.approx(30.0 - 29.0 / 3, rel=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"start": 0.0}, "start must be finite and > 0"),
        ({"end": -1.0}, "end must be finite and > 0"),
        ({"start": float("inf")}, "start must be finite"),
        ({"epochs": -1}, "epochs must be an integer >= 0"),
        ({"epochs": 2.5}, "epochs must be an integer >= 0"),
    ],
)
def test_schedule_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TemperatureSchedule(**kwargs)


def test_schedule_rejects_negative_epoch() -> None:
    with pytest.raises(ValueError, match="epoch must be >= 0, got -1"):
        TemperatureSchedule()(-1)

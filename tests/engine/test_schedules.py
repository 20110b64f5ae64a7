"""Warm-up + cosine learning rate: hand-computed points, LambdaLR stepping, state round trip."""

from __future__ import annotations

import math

import pytest
import torch

from sepbn.engine.schedules import WarmupCosine, build_lr_scheduler, warmup_cosine_lr

PAPER = {"lr": 1e-3, "min_lr": 5e-6, "total_steps": 500, "warmup_steps": 120}


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (0, 5e-6),  # warm-up starts at min_lr
        (60, 5e-6 + 0.5 * (1e-3 - 5e-6)),  # half-way up: 5.025e-4
        (119, 5e-6 + 119 / 120 * (1e-3 - 5e-6)),
        (120, 1e-3),  # the peak, where the cosine starts
        (215, 5e-6 + (1e-3 - 5e-6) * 0.5 * (1 + math.sqrt(0.5))),  # a quarter down: 8.542856e-4
        (310, 5e-6 + 0.5 * (1e-3 - 5e-6)),  # half-way down
        (500, 5e-6),  # the end
        (800, 5e-6),  # and after it
    ],
)
def test_paper_curve_at_hand_computed_points(step: int, expected: float) -> None:
    assert warmup_cosine_lr(step, **PAPER) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_spot_values_in_decimal() -> None:
    # The same points written out as plain numbers, to catch a formula and its test agreeing
    # on a common mistake.
    assert warmup_cosine_lr(60, **PAPER) == pytest.approx(5.025e-4)
    assert warmup_cosine_lr(215, **PAPER) == pytest.approx(8.542856e-4, rel=1e-6)


def test_warmup_start_and_no_warmup() -> None:
    kw = {**PAPER, "warmup_start_lr": 0.0}
    assert warmup_cosine_lr(0, **kw) == 0.0
    assert warmup_cosine_lr(30, **kw) == pytest.approx(0.25e-3)
    no_warmup = {**PAPER, "warmup_steps": 0}
    assert warmup_cosine_lr(0, **no_warmup) == pytest.approx(1e-3)
    assert warmup_cosine_lr(250, **no_warmup) == pytest.approx(5e-6 + 0.5 * (1e-3 - 5e-6))
    all_warmup = {**PAPER, "warmup_steps": 500}
    assert warmup_cosine_lr(500, **all_warmup) == pytest.approx(1e-3)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"total_steps": 0}, "total_steps must be > 0"),
        ({"warmup_steps": 501}, r"warmup_steps must be in \[0, total_steps=500\]"),
    ],
)
def test_bad_arguments(kwargs: dict[str, int], pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        warmup_cosine_lr(0, **{**PAPER, **kwargs})


def _optimizer(*lrs: float, scheduled: tuple[bool, ...] | None = None) -> torch.optim.SGD:
    scheduled = scheduled or (True,) * len(lrs)
    groups = [
        {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr, "scheduled": s}
        for lr, s in zip(lrs, scheduled)
    ]
    return torch.optim.SGD(groups, lr=lrs[0], momentum=0.9)


def _rates(
    optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler, n: int
):
    """The rate of every group at each of ``n`` optimizer steps."""
    out = []
    for _ in range(n):
        out.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return out


def test_scheduler_steps_every_iteration_and_keeps_constant_groups() -> None:
    # 4 epochs x 3 steps, 1 warm-up epoch; group 1 is a constant CNT stage-2 backbone rate.
    opt = _optimizer(1e-3, 1e-7, scheduled=(True, False))
    sched = build_lr_scheduler(opt, epochs=4, warmup_epochs=1, steps_per_epoch=3, min_lr=5e-6)
    rates = _rates(opt, sched, 12)
    expected = [
        warmup_cosine_lr(t, lr=1e-3, min_lr=5e-6, total_steps=12, warmup_steps=3) for t in range(12)
    ]
    assert [r[0] for r in rates] == pytest.approx(expected, rel=1e-12)
    assert all(r[1] == pytest.approx(1e-7, rel=1e-12) for r in rates)
    assert rates[3][0] == pytest.approx(1e-3)  # first step after the warm-up epoch


def test_per_epoch_holds_the_rate_within_an_epoch() -> None:
    opt = _optimizer(1e-3)
    sched = build_lr_scheduler(
        opt, epochs=4, warmup_epochs=1, steps_per_epoch=3, min_lr=5e-6, per_epoch=True
    )
    rates = [r[0] for r in _rates(opt, sched, 12)]
    for epoch in range(4):
        expected = warmup_cosine_lr(3 * epoch, lr=1e-3, min_lr=5e-6, total_steps=12, warmup_steps=3)
        assert rates[3 * epoch : 3 * epoch + 3] == pytest.approx([expected] * 3, rel=1e-12)


def test_constant_schedule() -> None:
    opt = _optimizer(0.01)
    sched = build_lr_scheduler(
        opt, epochs=2, warmup_epochs=1, steps_per_epoch=2, min_lr=0.0, schedule="constant"
    )
    assert [r[0] for r in _rates(opt, sched, 4)] == pytest.approx([0.01] * 4)
    with pytest.raises(ValueError, match="unknown schedule 'step'; valid: 'cosine', 'constant'"):
        build_lr_scheduler(
            opt, epochs=2, warmup_epochs=1, steps_per_epoch=2, min_lr=0, schedule="step"
        )


def test_state_dict_round_trip_continues_the_curve() -> None:
    opt = _optimizer(1e-3)
    sched = build_lr_scheduler(opt, epochs=5, warmup_epochs=2, steps_per_epoch=2, min_lr=5e-6)
    _rates(opt, sched, 4)
    state_opt, state_sched = opt.state_dict(), sched.state_dict()
    tail = _rates(opt, sched, 6)

    opt2 = _optimizer(1e-3)
    sched2 = build_lr_scheduler(opt2, epochs=5, warmup_epochs=2, steps_per_epoch=2, min_lr=5e-6)
    opt2.load_state_dict(state_opt)
    sched2.load_state_dict(state_sched)
    assert _rates(opt2, sched2, 6) == tail


def test_factor_is_relative_to_the_group_rate() -> None:
    f = WarmupCosine(2e-3, min_lr=0.0, total_steps=10, warmup_steps=0)
    assert f(0) == 1.0 and f(5) == pytest.approx(0.5) and f(10) == 0.0
    with pytest.raises(ValueError, match="lr must be > 0"):
        WarmupCosine(0.0, min_lr=0.0, total_steps=10, warmup_steps=0)

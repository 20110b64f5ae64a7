"""Learning-rate schedule: linear warm-up, then cosine annealing (paper Sec. V-A).

"Cosine annealing ... maximum and minimum learning rate 1e-3 and 5e-6, with 120 warm-up
epochs": with ``t`` the optimizer step (0-based), ``W`` the warm-up steps and ``T`` the total
steps, the rate used by step ``t`` is

* warm-up, ``t < W``: ``lr_0 + (lr - lr_0) * t / W``, rising linearly from ``lr_0``
  (``warmup_start_lr``, by default ``min_lr``, so the rate never leaves ``[min_lr, lr]``);
* cosine, ``t >= W``: ``min_lr + (lr - min_lr) * (1 + cos(pi * (t - W) / (T - W))) / 2``,
  which is ``lr`` at ``t = W`` and reaches ``min_lr`` at ``t = T``.

With ``per_epoch=True`` the step is rounded down to the start of its epoch, so the rate changes
once per epoch (the classic epoch-wise scheduler) while the scheduler is still stepped every
iteration. The schedule is a :class:`torch.optim.lr_scheduler.LambdaLR`, so its
``state_dict`` goes into checkpoints. Parameter groups with ``"scheduled": False`` keep their
learning rate constant (CNT stage 2 backbone, paper Sec. IV).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["WarmupCosine", "build_lr_scheduler", "warmup_cosine_lr"]


def warmup_cosine_lr(
    step: float,
    *,
    lr: float,
    min_lr: float,
    total_steps: int,
    warmup_steps: int,
    warmup_start_lr: float | None = None,
) -> float:
    """The learning rate used by optimizer step ``step`` (0-based).

    Args:
        step: The step; values past ``total_steps`` stay at ``min_lr``.
        lr: Peak rate, reached at the end of the warm-up.
        min_lr: Final rate of the cosine.
        total_steps: T, the steps of the whole schedule.
        warmup_steps: W, the steps of the linear warm-up (0 = none).
        warmup_start_lr: Rate of step 0 of the warm-up; ``None`` = ``min_lr``.

    Returns:
        The learning rate.
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be > 0, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(
            f"warmup_steps must be in [0, total_steps={total_steps}], got {warmup_steps}"
        )
    start = min_lr if warmup_start_lr is None else warmup_start_lr
    if step < warmup_steps:
        return start + (lr - start) * step / warmup_steps
    if total_steps == warmup_steps:
        return lr
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


class WarmupCosine:
    """The multiplicative factor of :class:`LambdaLR` for one parameter group.

    A class rather than a closure so that ``LambdaLR.state_dict`` can store it.

    Args:
        lr: The group's peak rate (its ``initial_lr``); the factor is relative to it.
        min_lr: Final rate of the cosine.
        total_steps: T, the steps of the whole schedule.
        warmup_steps: W, the warm-up steps.
        warmup_start_lr: First warm-up rate; ``None`` = ``min_lr``.
        steps_per_epoch: Used with ``per_epoch``.
        per_epoch: Hold the rate constant within an epoch.
        constant: Ignore the schedule and return 1 (a fixed learning rate).
    """

    def __init__(
        self,
        lr: float,
        min_lr: float,
        total_steps: int,
        warmup_steps: int,
        warmup_start_lr: float | None = None,
        steps_per_epoch: int = 1,
        per_epoch: bool = False,
        constant: bool = False,
    ) -> None:
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if steps_per_epoch <= 0:
            raise ValueError(f"steps_per_epoch must be > 0, got {steps_per_epoch}")
        self.lr = lr
        self.min_lr = min_lr
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps
        self.warmup_start_lr = warmup_start_lr
        self.steps_per_epoch = steps_per_epoch
        self.per_epoch = per_epoch
        self.constant = constant
        # Validate the arguments once, up front.
        self._curve(0)

    def _curve(self, step: int) -> float:
        return warmup_cosine_lr(
            step,
            lr=self.lr,
            min_lr=self.min_lr,
            total_steps=self.total_steps,
            warmup_steps=self.warmup_steps,
            warmup_start_lr=self.warmup_start_lr,
        )

    def __call__(self, step: int) -> float:
        if self.constant:
            return 1.0
        if self.per_epoch:
            step = (step // self.steps_per_epoch) * self.steps_per_epoch
        return self._curve(step) / self.lr


def build_lr_scheduler(
    optimizer: Optimizer,
    *,
    epochs: int,
    warmup_epochs: int,
    steps_per_epoch: int,
    min_lr: float,
    warmup_start_lr: float | None = None,
    per_epoch: bool = False,
    schedule: str = "cosine",
) -> LambdaLR:
    """Warm-up + cosine for every parameter group, to be stepped after every optimizer step.

    Each group follows the curve between its own ``lr`` and the common ``min_lr``; groups with
    ``"scheduled": False`` (and every group when ``schedule="constant"``) keep their rate.

    Args:
        optimizer: The optimizer; each group's ``lr`` is its peak rate.
        epochs: Length of the schedule in epochs.
        warmup_epochs: Warm-up length in epochs.
        steps_per_epoch: Optimizer steps per epoch.
        min_lr: Final rate.
        warmup_start_lr: First warm-up rate; ``None`` = ``min_lr``.
        per_epoch: Change the rate once per epoch instead of every step.
        schedule: ``"cosine"`` or ``"constant"``.

    Returns:
        The scheduler.
    """
    if schedule not in ("cosine", "constant"):
        raise ValueError(f"unknown schedule {schedule!r}; valid: 'cosine', 'constant'")
    factors: list[Callable[[int], float]] = [
        WarmupCosine(
            group.get("initial_lr", group["lr"]),
            min_lr=min(min_lr, group.get("initial_lr", group["lr"])),
            total_steps=epochs * steps_per_epoch,
            warmup_steps=warmup_epochs * steps_per_epoch,
            warmup_start_lr=warmup_start_lr,
            steps_per_epoch=steps_per_epoch,
            per_epoch=per_epoch,
            constant=schedule == "constant" or not group.get("scheduled", True),
        )
        for group in optimizer.param_groups
    ]
    return LambdaLR(optimizer, lr_lambda=factors)

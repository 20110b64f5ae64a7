"""BN vs SepBN cost in whole networks: training throughput and eval latency.

Measures, side by side in one run, the Table I Vanilla CNN (SepBN in all six blocks)
and MobileNetV2 (SepBN at BN3 of every block, Table X) at a 128 x 128 input:

- train step (forward + backward + SGD step) at batch 8 and 64, images/s;
- eval latency at batch 1 (``torch.no_grad``).

BN and SepBN steps alternate iteration by iteration, so that load from other
processes hits both alike, and the medians are compared. Targets: SepBN train step
time <= 1.10 x BN's, eval latency <= 1.20 x BN's. Figures, not assertions.

Usage::

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/bench_models.py
    .venv/bin/python benchmarks/bench_models.py --archs mobilenet_v2 --iters 10
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

# Before importing torch: the OpenMP runtime reads it once.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch
from torch import nn

from sepbn.models import build_model

TRAIN_TARGET = 1.10
EVAL_TARGET = 1.20
NUM_POINTS = 98  # WFLW
INPUT_SIZE = 128


def make_models(arch: str) -> dict[str, nn.Module]:
    """The BN and SepBN variants of one architecture, with identical initial weights."""
    torch.manual_seed(0)
    return {
        norm: build_model(arch, num_points=NUM_POINTS, norm=norm, input_size=INPUT_SIZE)
        for norm in ("bn", "sepbn")
    }


def train_step_fn(model: nn.Module, batch: int) -> Callable[[], None]:
    """One SGD step on a fixed random batch (L1 loss, as in the paper)."""
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    x = torch.rand(batch, 3, INPUT_SIZE, INPUT_SIZE)
    target = torch.rand(batch, NUM_POINTS, 2)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.l1_loss(model(x), target)
        loss.backward()
        optimizer.step()

    return step


def eval_step_fn(model: nn.Module) -> Callable[[], None]:
    """One batch-1 inference."""
    model.eval()
    x = torch.rand(1, 3, INPUT_SIZE, INPUT_SIZE)

    def step() -> None:
        with torch.no_grad():
            model(x)

    return step


def interleaved(
    steps: dict[str, Callable[[], None]], warmup: int, iters: int
) -> dict[str, list[float]]:
    """Seconds per call of each step, the steps alternating every iteration."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for i in range(iters):
        # Alternate which variant goes first so neither always follows the other.
        order = list(steps) if i % 2 == 0 else list(reversed(steps))
        for name in order:
            start = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--archs", nargs="+", default=["vanilla_cnn", "mobilenet_v2"])
    parser.add_argument("--batches", nargs="+", type=int, default=[8, 64])
    parser.add_argument("--iters", type=int, default=6, help="timed train steps per variant")
    parser.add_argument(
        "--iters-large", type=int, default=3, help="timed train steps at batch >= 32"
    )
    parser.add_argument("--eval-iters", type=int, default=30, help="timed batch-1 inferences")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, input {INPUT_SIZE}x{INPUT_SIZE}, L={NUM_POINTS}"
    )
    rows = []
    for arch in args.archs:
        models = make_models(arch)
        for batch in args.batches:
            iters = args.iters_large if batch >= 32 else args.iters
            steps = {norm: train_step_fn(m, batch) for norm, m in models.items()}
            t = interleaved(steps, args.warmup, iters)
            rows.append((arch, f"train b{batch}", t, batch, TRAIN_TARGET))
            print(f"  {arch} train batch {batch}: done", flush=True)
        steps = {norm: eval_step_fn(m) for norm, m in models.items()}
        t = interleaved(steps, args.warmup + 2, args.eval_iters)
        rows.append((arch, "eval b1", t, 1, EVAL_TARGET))
        print(f"  {arch} eval batch 1: done", flush=True)
        del models

    print()
    print("Medians over the timed iterations; the last column compares the fastest ones,")
    print("which load from other processes disturbs least.")
    print()
    print("| model | measure | BN | SepBN | SepBN / BN time | target | min / min |")
    print("|---|---|---|---|---|---|---|")
    for arch, measure, times, batch, target in rows:
        bn, sep = statistics.median(times["bn"]), statistics.median(times["sepbn"])
        ratio = sep / bn
        if measure.startswith("train"):
            bn_s, sep_s = f"{batch / bn:.1f} img/s", f"{batch / sep:.1f} img/s"
        else:
            bn_s, sep_s = f"{bn * 1e3:.2f} ms", f"{sep * 1e3:.2f} ms"
        verdict = f"<= {target:.2f} {'ok' if ratio <= target else 'over'}"
        best = min(times["sepbn"]) / min(times["bn"])
        print(f"| {arch} | {measure} | {bn_s} | {sep_s} | {ratio:.3f} | {verdict} | {best:.3f} |")


if __name__ == "__main__":
    main()

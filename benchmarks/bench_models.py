"""BN vs SepBN cost in whole networks: training throughput and eval latency.

Measures, side by side in one run, the Table I Vanilla CNN (SepBN in all six blocks),
MobileNetV2 and ResNeXt-50 (SepBN at BN3 of every block, Table X) at a 128 x 128 input:

- train step (forward + backward + SGD step) at batch 8 and 64, images/s;
- eval latency at batch 1 (``torch.no_grad``);
- with ``--compiled``: the train step of ``torch.compile`` (inductor) of both models.

BN and SepBN steps alternate iteration by iteration, so that load from other
processes hits both alike, and the medians are compared. Targets (issue 9): SepBN train
step time <= 1.05 x BN's for the Vanilla CNN and <= 1.10 x for MobileNetV2 and ResNeXt-50,
eval latency <= 1.10 x (Vanilla) and <= 1.20 x (the others). Figures, not assertions.

Usage::

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/bench_models.py
    .venv/bin/python benchmarks/bench_models.py --archs mobilenet_v2 --iters 10
    .venv/bin/python benchmarks/bench_models.py --archs vanilla_cnn --compiled
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

# Issue 9 §2: SepBN / BN time, per architecture.
TRAIN_TARGETS = {"vanilla_cnn": 1.05, "mobilenet_v2": 1.10, "resnext50": 1.10}
EVAL_TARGETS = {"vanilla_cnn": 1.10, "mobilenet_v2": 1.20, "resnext50": 1.20}
NUM_POINTS = 98  # WFLW
INPUT_SIZE = 128


def make_models(arch: str) -> dict[str, nn.Module]:
    """The BN and SepBN variants of one architecture, with identical initial weights."""
    torch.manual_seed(0)
    return {
        norm: build_model(arch, num_points=NUM_POINTS, norm=norm, input_size=INPUT_SIZE)
        for norm in ("bn", "sepbn")
    }


def train_step_fn(
    model: nn.Module, batch: int, compiled: bool = False, backend: str = "inductor"
) -> Callable[[], None]:
    """One SGD step on a fixed random batch (L1 loss, as in the paper).

    ``compiled``: the forward runs ``torch.compile(model, backend=backend)`` (static
    shapes); the first call of the step compiles it (the warm-up).
    """
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    x = torch.rand(batch, 3, INPUT_SIZE, INPUT_SIZE)
    target = torch.rand(batch, NUM_POINTS, 2)
    forward = torch.compile(model, backend=backend, dynamic=False) if compiled else model

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.l1_loss(forward(x), target)
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
    parser.add_argument(
        "--archs", nargs="+", default=list(TRAIN_TARGETS), choices=list(TRAIN_TARGETS)
    )
    parser.add_argument("--batches", nargs="+", type=int, default=[8, 64])
    parser.add_argument("--iters", type=int, default=6, help="timed train steps per variant")
    parser.add_argument(
        "--iters-large", type=int, default=3, help="timed train steps at batch >= 32"
    )
    parser.add_argument("--eval-iters", type=int, default=30, help="timed batch-1 inferences")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument(
        "--compiled",
        action="store_true",
        help="also time the train step of torch.compile (inductor) of both models",
    )
    parser.add_argument("--backend", default="inductor", help="torch.compile backend of --compiled")
    parser.add_argument(
        "--nchw",
        action="store_true",
        help="compile with inductor's layout optimization off (maps stay NCHW; see docs)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.nchw:
        # Inductor otherwise turns conv outputs channels-last on CPU, and the C++ SepBN ops,
        # which take NCHW, then cost two layout copies each way per layer.
        torch._inductor.config.layout_optimization = False

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
            rows.append((arch, f"train b{batch}", t, batch, TRAIN_TARGETS[arch]))
            print(f"  {arch} train batch {batch}: done", flush=True)
            if args.compiled:
                torch._dynamo.reset()
                steps = {
                    norm: train_step_fn(m, batch, True, args.backend) for norm, m in models.items()
                }
                t = interleaved(steps, max(args.warmup, 2), iters)
                rows.append((arch, f"compiled train b{batch}", t, batch, TRAIN_TARGETS[arch]))
                print(f"  {arch} compiled train batch {batch}: done", flush=True)
        steps = {norm: eval_step_fn(m) for norm, m in models.items()}
        t = interleaved(steps, args.warmup + 2, args.eval_iters)
        rows.append((arch, "eval b1", t, 1, EVAL_TARGETS[arch]))
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
        if "train" in measure:
            bn_s, sep_s = f"{batch / bn:.1f} img/s", f"{batch / sep:.1f} img/s"
        else:
            bn_s, sep_s = f"{bn * 1e3:.2f} ms", f"{sep * 1e3:.2f} ms"
        verdict = f"<= {target:.2f} {'ok' if ratio <= target else 'over'}"
        best = min(times["sepbn"]) / min(times["bn"])
        print(f"| {arch} | {measure} | {bn_s} | {sep_s} | {ratio:.3f} | {verdict} | {best:.3f} |")


if __name__ == "__main__":
    main()

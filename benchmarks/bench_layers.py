"""Time ``SepBatchNorm2d`` against ``nn.BatchNorm2d`` side by side and print the ratios.

Shapes are the six feature maps of the paper's Vanilla CNN (Table I) at batch 8:
forward + backward in train mode, and forward at batch 1 in eval mode. The two layers
are timed in alternation, repeat after repeat, and the median of each is kept, so the
ratio is robust to the machine's load; the absolute times are only indicative.

On glibc the script first stops malloc from handing freed blocks back to the kernel:
otherwise every iteration may page-fault its 8 MB feature maps in again, at random
for one layer or the other, which swamps the ratio (``--keep-malloc`` to measure as is).

Usage:
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/bench_layers.py [--repeats 15]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import time
from collections.abc import Callable

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch
from torch import nn

from sepbn.nn import SepBatchNorm2d

# (C, H=W) of the Vanilla CNN's BN inputs, Table I.
VANILLA_SHAPES: tuple[tuple[int, int], ...] = (
    (64, 64),
    (128, 32),
    (256, 16),
    (512, 8),
    (1024, 4),
    (2048, 2),
)


def _steady_allocator() -> bool:
    """Keep glibc from returning freed memory to the kernel (as in a warm training loop)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(
        libc.mallopt(m_mmap_threshold, 32 << 20) and libc.mallopt(m_trim_threshold, 1 << 30)
    )


def _median_time(fn: Callable[[], None], number: int) -> float:
    start = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - start) / number


def _train_step(layer: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        x.grad = None
        layer.zero_grad(set_to_none=True)
        layer(x).backward(grad)

    return step


def _eval_step(layer: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        with torch.no_grad():
            layer(x)

    return step


def _compare(
    bn_fn: Callable[[], None], sep_fn: Callable[[], None], repeats: int, number: int
) -> tuple[float, float]:
    for fn in (bn_fn, sep_fn):  # warm-up: allocator, kernels, thread pool
        _median_time(fn, number)
    bn_times, sep_times = [], []
    for _ in range(repeats):
        bn_times.append(_median_time(bn_fn, number))
        sep_times.append(_median_time(sep_fn, number))
    return statistics.median(bn_times), statistics.median(sep_times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="alternating repeats per case")
    parser.add_argument("--batch", type=int, default=8, help="train-mode batch size (paper: 8)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--keep-malloc", action="store_true", help="leave glibc malloc as is")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    steady = not args.keep_malloc and _steady_allocator()
    torch.manual_seed(0)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, CPU, "
        f"malloc trimming {'off' if steady else 'as is'}"
    )
    print("SepBatchNorm2d(C, num_sets=3, num_groups=2, pool_size=3) vs nn.BatchNorm2d(C)")
    print()
    header = (
        "| C×H×W | train fwd+bwd BN (ms) | SepBN (ms) | ratio "
        "| eval fwd b=1 BN (ms) | SepBN (ms) | ratio |"
    )
    print(header)
    print("|---|---|---|---|---|---|---|")
    for channels, size in VANILLA_SHAPES:
        bn = nn.BatchNorm2d(channels)
        sep = SepBatchNorm2d(channels, num_sets=3, num_groups=2, pool_size=3)
        x = torch.randn(args.batch, channels, size, size, requires_grad=True)
        grad = torch.randn_like(x)
        number = max(1, int(2e6 // x.numel()))
        train_bn, train_sep = _compare(
            _train_step(bn, x, grad), _train_step(sep, x, grad), args.repeats, number
        )
        bn.eval()
        sep.eval()
        x1 = torch.randn(1, channels, size, size)
        number = max(5, int(1e6 // x1.numel()))
        eval_bn, eval_sep = _compare(_eval_step(bn, x1), _eval_step(sep, x1), args.repeats, number)
        print(
            f"| {channels}×{size}×{size} | {train_bn * 1e3:.3f} | {train_sep * 1e3:.3f} "
            f"| {train_sep / train_bn:.2f} | {eval_bn * 1e3:.4f} | {eval_sep * 1e3:.4f} "
            f"| {eval_sep / eval_bn:.2f} |"
        )


if __name__ == "__main__":
    main()

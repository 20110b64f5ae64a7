"""Time ``SepBatchNorm2d`` against ``nn.BatchNorm2d`` side by side and print the ratios.

Shapes are the six feature maps of the paper's Vanilla CNN (Table I) at batch 8:
forward + backward in train mode, and forward at batch 1 in eval mode. The two layers
are timed in alternation, repeat after repeat, and the median of each is kept, so the
ratio is robust to the machine's load; the absolute times are only indicative.

On glibc the script first stops malloc from handing freed blocks back to the kernel:
otherwise every iteration may page-fault its 8 MB feature maps in again, at random
for one layer or the other, which swamps the ratio (``--keep-malloc`` to measure as is).

``--compiled`` adds ``torch.compile`` (inductor, ``dynamic=False``) of both layers, train
fwd+bwd, at the three largest maps (on CPU the compiled SepBN graph holds the C++ ops of
``sepbn.nn.native`` as opaque calls; inductor fuses the compiled BN itself); with
``--path plain`` inductor compiles SepBN's plain implementation instead, which is what a
``torch.compile`` user gets where the C++ op does not run (CUDA).
``--libgomp-default`` leaves ``OMP_WAIT_POLICY`` unset (libgomp's spinning default, what a
user's own training script gets) instead of setting ``PASSIVE`` as the ``sepbn`` command does.
``--channels-last`` gives both layers channels-last inputs in the eager table (SepBN's
NHWC kernels). ``--device cuda`` and ``--dtype bfloat16`` (autocast, float32 parameters)
time the same on a GPU; :func:`layer_ratios` is what
``benchmarks/device_check.py`` calls.

Usage:
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/bench_layers.py [--repeats 15]
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/bench_layers.py --compiled
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/bench_layers.py --channels-last
    .venv/bin/python benchmarks/bench_layers.py --libgomp-default
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext

# Read by OpenMP when torch loads, so decided before the import.
if "--libgomp-default" in sys.argv:
    os.environ.pop("OMP_WAIT_POLICY", None)
else:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch
from torch import nn

from sepbn.nn import SepBatchNorm2d
from sepbn.nn.dispatch import PATHS, sepbn_path, use_native

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


CPU = torch.device("cpu")

# The three largest maps, where the compiled column is measured (issue 9, §1).
LARGE_SHAPES = VANILLA_SHAPES[:3]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_time(fn: Callable[[], None], number: int, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    for _ in range(number):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / number


def _autocast(device: torch.device, dtype: torch.dtype):
    """Autocast to ``dtype`` for half precisions (AMP: float32 parameters), else nothing."""
    if dtype in (torch.float16, torch.bfloat16):
        return torch.autocast(device.type, dtype=dtype)
    return nullcontext()


def _train_step(
    layer: Callable[[torch.Tensor], torch.Tensor],
    params: nn.Module,
    x: torch.Tensor,
    grad: torch.Tensor,
    dtype: torch.dtype = torch.float32,
    path: str = "auto",
) -> Callable[[], None]:
    def step() -> None:
        x.grad = None
        params.zero_grad(set_to_none=True)
        with _autocast(x.device, dtype), sepbn_path(path):  # type: ignore[arg-type]
            y = layer(x)
        y.backward(grad.to(y.dtype))

    return step


def _eval_step(layer: nn.Module, x: torch.Tensor, path: str = "auto") -> Callable[[], None]:
    def step() -> None:
        with torch.no_grad(), sepbn_path(path):  # type: ignore[arg-type]
            layer(x)

    return step


def _compare(
    bn_fn: Callable[[], None],
    sep_fn: Callable[[], None],
    repeats: int,
    number: int,
    device: torch.device = CPU,
) -> tuple[float, float]:
    for fn in (bn_fn, sep_fn):  # warm-up: allocator, kernels, thread pool, compilation
        _median_time(fn, number, device)
    bn_times, sep_times = [], []
    for _ in range(repeats):
        bn_times.append(_median_time(bn_fn, number, device))
        sep_times.append(_median_time(sep_fn, number, device))
    return statistics.median(bn_times), statistics.median(sep_times)


def layer_ratios(
    shapes: tuple[tuple[int, int], ...],
    batch: int,
    device: torch.device,
    dtype: torch.dtype,
    compiled: bool,
    repeats: int,
    work: float = 2e6,
    backend: str = "inductor",
    path: str = "auto",
) -> list[dict[str, float | str]]:
    """Train fwd+bwd time of ``nn.BatchNorm2d`` and ``SepBatchNorm2d`` per (C, H=W).

    Args:
        shapes: (C, H=W) pairs.
        batch: Batch size N.
        device: Where to run.
        dtype: float32, or bfloat16/float16 under autocast (float32 parameters).
        compiled: ``torch.compile`` (``dynamic=False``) both layers.
        repeats: Alternating repeats; each times about ``work / (N·C·H·W)`` calls.
        work: See ``repeats``.
        backend: ``torch.compile`` backend.
        path: SepBN implementation (:func:`sepbn.nn.sepbn_path`); compiled, the one traced.

    Returns:
        One row per shape: ``shape``, ``bn_ms``, ``sepbn_ms``, ``ratio``.
    """
    rows: list[dict[str, float | str]] = []
    for channels, size in shapes:
        bn = nn.BatchNorm2d(channels).to(device)
        sep = SepBatchNorm2d(channels, num_sets=3, num_groups=2, pool_size=3).to(device)
        fns = [
            torch.compile(m, backend=backend, dynamic=False) if compiled else m for m in (bn, sep)
        ]
        # Under AMP a norm's input is the half output of the convolution before it.
        x = torch.randn(batch, channels, size, size, device=device, dtype=dtype)
        x.requires_grad_()
        grad = torch.randn_like(x)
        number = max(1, int(work // x.numel()))
        bn_s, sep_s = _compare(
            _train_step(fns[0], bn, x, grad, dtype),
            _train_step(fns[1], sep, x, grad, dtype, path),
            repeats,
            number,
            device,
        )
        rows.append(
            {
                "shape": f"{channels}×{size}×{size}",
                "bn_ms": bn_s * 1e3,
                "sepbn_ms": sep_s * 1e3,
                "ratio": sep_s / bn_s,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="alternating repeats per case")
    parser.add_argument("--batch", type=int, default=8, help="train-mode batch size (paper: 8)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--keep-malloc", action="store_true", help="leave glibc malloc as is")
    parser.add_argument(
        "--compiled", action="store_true", help="add torch.compile (inductor) at the large maps"
    )
    parser.add_argument("--compiled-only", action="store_true", help="only the compiled table")
    parser.add_argument(
        "--channels-last",
        action="store_true",
        help="channels-last inputs for both layers in the eager table (NHWC kernels)",
    )
    parser.add_argument(
        "--path",
        choices=PATHS,
        default="auto",
        help="SepBN implementation (sepbn.nn.dispatch; auto: the C++ op on CPU)",
    )
    parser.add_argument(
        "--libgomp-default",
        action="store_true",
        help="leave OMP_WAIT_POLICY unset (libgomp's default) instead of PASSIVE",
    )
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    steady = not args.keep_malloc and _steady_allocator()
    torch.manual_seed(0)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, CPU, "
        f"malloc trimming {'off' if steady else 'as is'}, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset (libgomp default)')}"
    )
    print("SepBatchNorm2d(C, num_sets=3, num_groups=2, pool_size=3) vs nn.BatchNorm2d(C)")
    if args.channels_last:
        print("eager inputs channels-last (both layers)")
    print()
    if not args.compiled_only:
        _eager_table(args)
    if args.compiled or args.compiled_only:
        print()
        print(
            f"torch.compile (inductor, dynamic=False), train fwd+bwd, batch {args.batch}, "
            f"SepBN path {args.path}:"
        )
        print()
        print("| C×H×W | compiled BN (ms) | compiled SepBN (ms) | ratio |")
        print("|---|---|---|---|")
        rows = layer_ratios(
            LARGE_SHAPES, args.batch, CPU, torch.float32, True, args.repeats, path=args.path
        )
        for row in rows:
            print(
                f"| {row['shape']} | {row['bn_ms']:.3f} | {row['sepbn_ms']:.3f} "
                f"| {row['ratio']:.2f} |",
                flush=True,
            )


def _eager_table(args: argparse.Namespace) -> None:
    header = (
        "| C×H×W | train fwd+bwd BN (ms) | SepBN (ms) | ratio "
        "| eval fwd b=1 BN (ms) | SepBN (ms) | ratio | SepBN path train / eval |"
    )
    print(header)
    print("|---|---|---|---|---|---|---|---|")
    for channels, size in VANILLA_SHAPES:
        bn = nn.BatchNorm2d(channels)
        sep = SepBatchNorm2d(channels, num_sets=3, num_groups=2, pool_size=3)
        layout = torch.channels_last if args.channels_last else torch.contiguous_format
        x = torch.randn(args.batch, channels, size, size).contiguous(memory_format=layout)
        x.requires_grad_()
        grad = torch.randn_like(x)
        number = max(1, int(2e6 // x.numel()))
        with sepbn_path(args.path):
            train_path = "native" if use_native(sep, x) else "plain"
        train_bn, train_sep = _compare(
            _train_step(bn, bn, x, grad),
            _train_step(sep, sep, x, grad, path=args.path),
            args.repeats,
            number,
        )
        bn.eval()
        sep.eval()
        x1 = torch.randn(1, channels, size, size).contiguous(memory_format=layout)
        with torch.no_grad(), sepbn_path(args.path):
            eval_path = "native" if use_native(sep, x1) else "plain"
        number = max(5, int(1e6 // x1.numel()))
        eval_bn, eval_sep = _compare(
            _eval_step(bn, x1), _eval_step(sep, x1, args.path), args.repeats, number
        )
        print(
            f"| {channels}×{size}×{size} | {train_bn * 1e3:.3f} | {train_sep * 1e3:.3f} "
            f"| {train_sep / train_bn:.2f} | {eval_bn * 1e3:.4f} | {eval_sep * 1e3:.4f} "
            f"| {eval_sep / eval_bn:.2f} | {train_path} / {eval_path} |",
            flush=True,
        )


if __name__ == "__main__":
    main()

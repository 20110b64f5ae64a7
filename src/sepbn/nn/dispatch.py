"""Which implementation a SepBN-type layer runs, and a way to force one.

Four paths compute the same layer (tests compare them):

- ``"plain"``: the reference, written from Eqs. 1, 5-7 with modules (``BatchNorm2d(x)``,
  then ``γ̂ x̂ + β̂``). Always available; in eval mode with running statistics it is one
  folded multiply-add over the map.
- ``"native"``: the C++ CPU kernels of :mod:`sepbn.nn.native` (built once per machine
  with its C++ compiler): the whole train-mode layer as one op call forward and one
  backward, and, for ``SepBatchNorm2d``, the whole eval-mode layer as one call.
- ``"fused"``: the hand-fused autograd nodes of :mod:`sepbn.nn.fused_separable_norm`,
  built from ATen ops (the CPU fallback when the C++ kernels cannot be built).
- ``"compiled"``: ``torch.compile`` of one pure function
  (:mod:`sepbn.nn.compiled_separable_norm`), ``SepBatchNorm2d`` only.

With the default ``"auto"``, a **train-mode** call with a plain inner ``nn.BatchNorm2d``,
outside ``torch.compile``/``torch.jit``/``torch.func`` (compile: below) and with more than one
value per channel, runs:

========  ===================================  ==========================================
device    dtype / layout / autocast            path
========  ===================================  ==========================================
CPU       float32/float64, NCHW- or            native (fused if the C++ kernels are
          channels-last-contiguous, no         unavailable or ``SEPBN_NATIVE=0``); the
          autocast                             output keeps the input's layout
CPU       float32/float64, other strides       fused
CPU       anything else (autocast, half)       plain
CUDA      float32/float16/bfloat16, autocast   compiled (inductor), ``SepBatchNorm2d``
          or not; ``momentum`` not None        with ``aggregation`` soft or hard
CUDA      ``SimpleSepBatchNorm2d``, momentum   plain
          None (cumulative average)
other     any                                  plain
========  ===================================  ==========================================

An **eval-mode** ``SepBatchNorm2d`` call with running statistics runs ``"native"`` when
no gradient is wanted (``torch.no_grad()``/``inference_mode()``, or nothing requires a
gradient), on the CPU conditions above, outside tracing, compiling and ONNX export;
otherwise it runs ``"plain"``. Everything else (``SyncBatchNorm`` inner norm in training)
runs ``"plain"``. A compiled shape class that fails to compile falls back to ``"plain"``
with one warning.

**Inside a user's** ``torch.compile`` (a model compiled as a whole, any backend), the C++
ops go into the graph as opaque calls with shape functions, ``fullgraph=True`` included,
wherever the eager call would run ``"native"`` (CPU, float32/float64, NCHW- or
channels-last-contiguous, a plain inner ``nn.BatchNorm2d``) and ``momentum`` is not None:
the train step is one autograd Function plus one running-statistics update op, an eval
``SepBatchNorm2d`` call without gradient is one op. For ``SepBatchNorm2d`` in training the
Function's C++ op stops short of the pass over the map and returns the folded mapping
``y = a x + b`` (a, b per sample and channel); that multiply-add is ATen code in the graph,
which inductor fuses with the ops after the layer (an activation, a pooling, a residual
addition), as it fuses a BatchNorm's; its backward is the C++ op. Otherwise the compiler traces
``"plain"`` and fuses it itself (CUDA, autocast, the cumulative average). ``torch.export`` (and the
ONNX exporter built on it) always traces ``"plain"``, so an exported program holds only
standard ATen ops. Inductor's CPU layout optimization makes convolution outputs
channels-last inside the graph; the ops over maps are tagged ``flexible_layout`` and run
their channels-last kernels on them, without layout copies (docs/benchmarks.md §3).

:func:`sepbn_path` forces a path for the calls inside it: ``"native"`` where its CPU
conditions hold (plain elsewhere), ``"fused"`` and ``"compiled"`` on any device and dtype
where their other conditions hold (``"compiled"`` on CPU too, which is how CI tests it,
with ``backend="aot_eager"``; both send eval calls to ``"plain"``), and ``"plain"``
everywhere. The layer attribute ``use_fused = False`` forces ``"plain"`` for one layer,
and the environment variable ``SEPBN_PATH`` sets the process-wide default (e.g.
``SEPBN_PATH=plain`` to avoid the compilation at the first CUDA steps, about 10-30 s per
SepBN shape). ``SEPBN_NATIVE=0`` keeps the C++ kernels from being built.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch

Path = Literal["auto", "plain", "native", "fused", "compiled"]
PATHS: tuple[str, ...] = ("auto", "plain", "native", "fused", "compiled")

# The torch.compile backend of the compiled path; SEPBN_COMPILE_BACKEND overrides it.
DEFAULT_BACKEND = os.environ.get("SEPBN_COMPILE_BACKEND", "inductor")

DEFAULT_PATH = os.environ.get("SEPBN_PATH", "auto")
if DEFAULT_PATH not in PATHS:
    raise ValueError(f"SEPBN_PATH={DEFAULT_PATH!r}; valid: {', '.join(map(repr, PATHS))}")

_state: dict[str, str] = {"path": DEFAULT_PATH, "backend": DEFAULT_BACKEND}


def current_path() -> str:
    """The path forced by the innermost :func:`sepbn_path` (outside any: ``SEPBN_PATH``,
    default ``"auto"``)."""
    return _state["path"]


def compile_backend() -> str:
    """The ``torch.compile`` backend the compiled path uses now."""
    return _state["backend"]


@contextmanager
def sepbn_path(path: Path, backend: str | None = None) -> Iterator[None]:
    """Force the implementation of every SepBN-type layer called inside the block.

    Args:
        path: ``"auto"``, ``"plain"``, ``"native"``, ``"fused"`` or ``"compiled"`` (see the module
            docstring for where each applies).
        backend: ``torch.compile`` backend for the compiled path inside the block (default:
            unchanged, ``"inductor"`` unless ``SEPBN_COMPILE_BACKEND`` says otherwise).

    Raises:
        ValueError: If ``path`` is not one of :data:`PATHS`.

    Example:
        >>> with sepbn_path("compiled", backend="aot_eager"):
        ...     y = layer(x)  # doctest: +SKIP
    """
    if path not in PATHS:
        raise ValueError(f"unknown SepBN path {path!r}; valid: {', '.join(map(repr, PATHS))}")
    saved = dict(_state)
    _state["path"] = path
    if backend is not None:
        _state["backend"] = backend
    try:
        yield
    finally:
        _state.update(saved)


def is_exporting() -> bool:
    """Whether ``torch.export`` (or the ONNX exporter built on it) traces the call.

    Reads the flag behind ``torch.compiler.is_exporting()``: older dynamo versions fold
    that call to True inside a plain ``torch.compile`` too (torch 2.11; fixed in 2.14), which sent
    compiled CPU models to the plain path instead of the C++ ops. Under dynamo the
    attribute read is traced as the flag's value, True only while ``torch.export`` runs.
    """
    flag = getattr(torch.compiler, "_is_exporting_flag", None)
    return torch.compiler.is_exporting() if flag is None else bool(flag)

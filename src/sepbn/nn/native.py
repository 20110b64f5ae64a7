"""SepBN's CPU fast path: the C++ kernels of ``csrc/sepbn_cpu.cpp`` as torch ops.

The kernels compute what the plain :class:`~sepbn.nn.SepBatchNorm2d` computes (Eqs. 1,
5-7), faster on a CPU: the adaptive max pooling with its arg-max and the batch statistics
in one pass over each (n, c) plane, the attention's small matrix products as plain loops,
the mixed mapping in a second pass, and the backward in one reduction and one
elementwise pass (see the C++ file's header). The ops are defined in C++
(``TORCH_LIBRARY(sepbn_cpu)``); this module adds what PyTorch's custom-op API asks of
them: a shape function (``torch.library.register_fake``, so that ``torch.compile`` can put
them in its graphs) and the autograd formula (``torch.library.register_autograd``, whose
backward is the C++ backward op). :func:`sep_batch_norm` calls them with named inputs.

**Build.** The first call compiles the file with ``torch.utils.cpp_extension.load``
(the machine's C++ compiler and ``ninja``) against the installed torch, once per machine,
source and torch build, into ``$TORCH_EXTENSIONS_DIR`` (default
``~/.cache/torch_extensions``); 15 s to a minute on 2 cores, announced on stderr. Later
processes load the cached library in milliseconds, and several processes that start at
once (data workers, DDP) wait for one build. ``sepbn build-kernels`` builds ahead of time.
When the build fails, one warning gives the reason and the layers run the plain path.
``SEPBN_PATH`` (:mod:`sepbn.nn.dispatch`) can skip the build or require it.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
import threading
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from sepbn.errors import SepbnError

SOURCE = Path(__file__).with_name("csrc") / "sepbn_cpu.cpp"

_state: dict[str, Any] = {"loaded": False, "error": None}
_lock = threading.Lock()


class NativeBuildError(SepbnError):
    """The C++ kernels could not be built or loaded."""


class Attention(NamedTuple):
    """The attention block of :class:`~sepbn.nn.SepBatchNorm2d`, as the C++ ops take it.

    The block reads X (Fig. 1): T×T max pooling, the 1×1 convolution ``reduce`` C → G,
    flattening position-major to T·T·G values, ``fc2(relu(fc1(·)))`` to G·K logits, and
    the softmax with temperature τ (Eq. 5).
    """

    reduce_weight: Tensor  # (G, C, 1, 1), the 1×1 convolution's weight
    reduce_bias: Tensor  # (G,)
    fc1_weight: Tensor  # (hidden, T·T·G)
    fc1_bias: Tensor  # (hidden,)
    fc2_weight: Tensor  # (G·K, hidden)
    fc2_bias: Tensor  # (G·K,)
    tau: Tensor  # ()


def _cpu_flags() -> list[str]:
    """AVX2 and FMA where this CPU has them (the library is built where it runs)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((set(line.split(":", 1)[1].split()) for line in info.splitlines()
                  if line.startswith("flags")), set())  # fmt: skip
    return ["-mavx2", "-mfma"] if {"avx2", "fma"} <= flags else []


def build() -> None:
    """Build (unless cached) and load the kernels.

    Raises:
        NativeBuildError: If the compiler or ninja is missing or the build fails.
    """
    # cpp_extension logs at import that no CUDA runtime is found: true and irrelevant here.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    from torch.utils import cpp_extension  # slow to import; only when loading

    flags = ["-O3", "-std=c++20", "-fopenmp", "-DNDEBUG", *_cpu_flags()]
    # The instruction set is part of the name: a home directory shared by machines of
    # different CPUs must not hand one of them a library it cannot run.
    name = "sepbn_cpu_" + hashlib.sha256(" ".join(flags).encode()).hexdigest()[:8]
    try:
        built = Path(cpp_extension._get_build_directory(name, False), f"{name}.so").exists()
    except (AttributeError, OSError):  # a private helper: if it moves, announce every load
        built = False
    if not built:
        print("sepbn: building the C++ CPU kernels (once, 15 s to a minute)", file=sys.stderr)
    try:
        cpp_extension.load(
            name=name,
            sources=[str(SOURCE)],
            extra_cflags=flags,
            extra_ldflags=["-fopenmp"],
            is_python_module=False,
        )
    except (OSError, RuntimeError, subprocess.CalledProcessError) as error:
        raise NativeBuildError(f"building {SOURCE} failed: {_reason(error)}") from error


def _reason(error: BaseException) -> str:
    """The line of a failed build's output that says why (ninja's output holds the commands)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines[1:]:
        if any(word in line.lower() for word in ("error", "not found", "no such")):
            return line
    return lines[-1] if lines else type(error).__name__


def available(required: bool = False) -> bool:
    """Whether the kernels are loaded, building and loading them on the first call.

    Returns False (after one warning naming the reason) when they cannot be built.

    Raises:
        NativeBuildError: If they cannot be built and ``required`` (``SEPBN_PATH=native``,
            ``sepbn build-kernels``).
    """
    if _state["loaded"]:
        return True
    if _state["error"] is None:
        with _lock:
            if not _state["loaded"] and _state["error"] is None:
                try:
                    build()
                    _register()
                    _state["loaded"] = True
                except NativeBuildError as error:
                    _state["error"] = error
                    if required:
                        raise
                    warnings.warn(
                        f"sepbn: C++ CPU kernels unavailable, SepBN runs its plain path (same "
                        f"values, slower): {error}. SEPBN_PATH=plain skips the build.",
                        RuntimeWarning,
                        stacklevel=2,
                    )
    if _state["error"] is not None and required:
        raise _state["error"]
    return bool(_state["loaded"])


def _map_like(x: Tensor) -> Tensor:
    """The ops' output maps: channels-last for a channels-last ``x``, NCHW otherwise."""
    channels_last = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=layout)


def _register() -> None:
    """Shape functions and the autograd formula of the C++ ops."""
    lib = "sepbn_cpu::"

    @torch.library.register_fake(lib + "train_forward")
    def _train_forward_fake(
        x: Tensor, weight: Tensor, bias: Tensor, reduce_weight: Tensor, reduce_bias: Tensor,
        fc1_weight: Tensor, fc1_bias: Tensor, fc2_weight: Tensor, fc2_bias: Tensor, tau: Tensor,
        eps: float, pool_size: int, hard: bool, apply: bool = True,
    ) -> tuple[Tensor, ...]:  # fmt: skip
        n, c = x.shape[:2]
        k, g, tt = weight.shape[0], reduce_weight.shape[0], pool_size * pool_size
        return (
            _map_like(x) if apply else x.new_empty(0), x.new_empty(n, g, k), x.new_empty(c),
            x.new_empty(c), x.new_empty(n, c, tt, dtype=torch.int32), x.new_empty(n * tt, c),
            x.new_empty(n, tt * g), x.new_empty(n, fc1_weight.shape[0]), x.new_empty(n, c),
            x.new_empty(c), x.new_empty(n, c), x.new_empty(n, c),
        )  # fmt: skip

    @torch.library.register_fake(lib + "train_backward")
    def _train_backward_fake(grad_y: Tensor, *saved_and_needs: Any) -> tuple[Tensor, ...]:
        *flat, need_input, need_attention = saved_and_needs
        saved = _Saved.from_flat(tuple(flat))
        x = saved.x
        grads = [_map_like(x) if need_input else x.new_empty(0)]
        grads += [torch.empty_like(saved.weight), torch.empty_like(saved.bias)]
        for p in saved.attention[:6]:
            grads.append(torch.empty_like(p) if need_attention else x.new_empty(0))
        return tuple(grads)

    @torch.library.register_fake(lib + "eval_forward")
    def _eval_forward_fake(
        x: Tensor, weight: Tensor, bias: Tensor, reduce_weight: Tensor, *rest: Any
    ) -> tuple[Tensor, Tensor]:
        return _map_like(x), x.new_empty(x.shape[0], reduce_weight.shape[0], weight.shape[0])

    @torch.library.register_fake(lib + "running_update")
    def _running_update_fake(*args: Any) -> None:
        return None

    torch.library.register_autograd(
        lib + "train_forward", _train_backward, setup_context=_train_setup_context
    )


class _Saved(NamedTuple):
    """What the backward op takes from the forward call, in its schema's order."""

    x: Tensor
    weight: Tensor
    bias: Tensor
    attention: Attention
    pi: Tensor  # (N, G, K)
    positions: Tensor  # (N·T·T, C), the pooled map position-major
    argmax: Tensor  # (N, C, T·T) int32, each window's arg-max in H·W
    flat: Tensor  # (N, T·T·G), fc1's input
    hidden: Tensor  # (N, hidden), after the ReLU
    scale: Tensor  # (N, C), γ̂
    mean: Tensor  # (C,), the batch mean
    rstd: Tensor  # (C,), 1 / sqrt(σ² + eps)

    @classmethod
    def from_flat(cls, tensors: tuple[Tensor, ...]) -> _Saved:
        return cls._make((*tensors[:3], Attention(*tensors[3:10]), *tensors[10:]))


def _train_setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
    """Save what the backward op takes; the op's outputs past y carry no gradient."""
    ctx.mark_non_differentiable(*output[1:4], *output[5:])
    _save_for_backward(ctx, inputs, output)


def _save_for_backward(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
    x, weight, bias, *rest = inputs  # the schema: ..., tau, eps, pool_size, hard[, apply]
    _, pi, mean, _, index, positions, flat, hidden, scale, rstd = output[:10]
    ctx.set_materialize_grads(False)
    # In _Saved's order, built flat: torch.compile traces this code, and dynamo up to at
    # least torch 2.8 fails on constructing a NamedTuple with methods inside a Function.
    ctx.save_for_backward(x, weight, bias, *rest[:7], pi, positions, index, flat, hidden, scale,
                          mean, rstd)  # fmt: skip
    ctx.hard = rest[9]


def _train_backward(ctx: Any, grad_y: Tensor | None, *unused: Tensor | None) -> tuple[Any, ...]:
    if grad_y is None:  # y did not reach the loss
        return (None,) * len(ctx.needs_input_grad)
    needs = ctx.needs_input_grad  # x, weight, bias, the attention's six tensors, τ, ...
    # No gradient crosses a hard arg-max; otherwise the attention's backward runs when
    # x (through the pooling) or any attention parameter needs a gradient.
    attention = not ctx.hard and (needs[0] or any(needs[3:9]))
    # The saved tensors are in _Saved's order, the op's; passed flat, because torch.compile
    # traces this code too (see _save_for_backward).
    grads = torch.ops.sepbn_cpu.train_backward(
        grad_y, *ctx.saved_tensors, bool(needs[0]), attention
    )
    wanted = [needs[0], needs[1], needs[2], *(attention and need for need in needs[3:9])]
    grads = tuple(g if w else None for g, w in zip(grads, wanted))
    return (*grads, *(None,) * (len(needs) - len(grads)))  # τ, eps, pool_size, hard[, apply]


class _Train(torch.autograd.Function):
    """The train op under autograd as the layer calls it, with the same backward.

    The op is differentiable on its own (``register_autograd`` above), but that route runs
    more Python per call (the dispatcher's Python autograd kernel, the schema's defaults
    filled in, then this module's context code): side by side, a train step costs 1.13 ×
    BN at 256×16×16 through it and 0.89 × through this Function (``bench_layers.py``,
    PASSIVE, three runs each; docs/benchmarks.md §1, 2026-12-08).

    With ``fold`` (inside ``torch.compile``) the op stops short of its pass over the map and
    returns the folded mapping (a, b per sample and channel); the multiply-add is then ATen
    code in the graph, which inductor fuses with the ops after the layer (the Vanilla
    CNN's LeakyReLU and pooling, a residual addition), as it fuses a BatchNorm's: a
    compiled Vanilla CNN train step costs 1.24-1.31 × a compiled BN one without it,
    1.02-1.05 with it.
    """

    @staticmethod
    def forward(ctx: Any, *inputs_and_fold: Any) -> tuple[Tensor, ...]:
        *inputs, fold = inputs_and_fold
        output = torch.ops.sepbn_cpu.train_forward(*inputs, not fold)
        y = output[0]
        if fold:
            x, a, b = inputs[0], output[10], output[11]
            y = torch.addcmul(b[..., None, None], x, a[..., None, None])
        ctx.mark_non_differentiable(*output[1:4])
        _save_for_backward(ctx, tuple(inputs), output)
        return (y, *output[1:4])

    backward = staticmethod(_train_backward)


def sep_batch_norm(
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    attention: Attention,
    norm: nn.BatchNorm2d,
    factor: float,
    pool_size: int,
    hard: bool,
) -> tuple[Tensor, Tensor]:
    """:class:`~sepbn.nn.SepBatchNorm2d`'s forward through the C++ ops; returns ``(y, π)``.

    In train mode (``norm.training``) with batch statistics, updating ``norm``'s running
    statistics with ``factor`` as ``nn.BatchNorm2d`` does, under autograd; in eval mode
    with the running statistics, without autograd (the dispatch sends gradient-wanting
    eval calls to the plain path).

    Args:
        x: The feature map, float32/float64 on the CPU; NCHW- or channels-last-contiguous
            (the output keeps that layout; other strides are copied to NCHW).
        weight: The K sets' scales γ.
        bias: The K sets' shifts β.
        attention: The attention's tensors.
        norm: The layer's shared ``nn.BatchNorm2d(affine=False)``.
        factor: Running-average factor of this call (the momentum).
        pool_size: T.
        hard: One-hot π (Table III's hard aggregation).

    Shape:
        - x: (N, C, H, W); weight, bias: (K, C)
        - Output: (N, C, H, W) and π (N, G, K)
    """
    ops = torch.ops.sepbn_cpu
    if not norm.training:
        mean, var = norm.running_mean, norm.running_var
        return ops.eval_forward(x, weight, bias, *attention, mean, var, norm.eps, pool_size, hard)
    fold = torch.compiler.is_compiling()
    y, pi, mean, var_unbiased = _Train.apply(
        x, weight, bias, *attention, norm.eps, pool_size, hard, fold
    )
    if norm.running_mean is not None:
        ops.running_update(norm.running_mean, norm.running_var, mean, var_unbiased, factor)
    return y, pi

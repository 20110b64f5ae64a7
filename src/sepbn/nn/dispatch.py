"""Which of SepBN's two implementations a call runs.

:class:`~sepbn.nn.SepBatchNorm2d` has two implementations of the same math: the **plain**
modules, written from Eqs. 1, 5-7 (the reference, and what ``torch.export``, ONNX,
TorchScript, ``torch.func`` and CUDA run), and the **native** C++ CPU kernels of
:mod:`sepbn.nn.native`. The rule, implemented by :func:`use_native`:

    **the C++ op when the input is a CPU tensor, the op was built, and no exporter is
    tracing; otherwise the plain path.**

"The input is a CPU tensor" means what the kernels take: float32 or float64 like the
layer's parameters, no autocast. In train mode the shared normalization must be a plain
``nn.BatchNorm2d`` (a ``SyncBatchNorm`` all-reduces its statistics: plain path) and see
more than one value per channel; in eval mode the layer must keep running statistics and
want no gradient (the eval op has no backward). Inside ``torch.compile`` (which is not an
exporter) the ops go into the graph as opaque calls, with their shape functions and
autograd formula; on CUDA, ``torch.compile(model)`` fuses the plain path itself.
``SimpleSepBatchNorm2d`` and ``DomainBatchNorm2d`` have only the plain implementation.

One switch forces a path: the environment variable ``SEPBN_PATH`` (``auto``, the default;
``plain``, which never builds the kernels; ``native``, which makes a failed build an
error), or, for the calls inside a block, :func:`sepbn_path`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal, Protocol, cast

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from sepbn.nn import native
from sepbn.nn.functional import is_exporting


class _Layer(Protocol):
    """What the rule reads of a layer (a :class:`~sepbn.nn.SeparableNormBase`)."""

    @property
    def has_native(self) -> bool: ...
    @property
    def norm(self) -> _BatchNorm: ...
    @property
    def weight(self) -> nn.Parameter: ...
    def parameters(self) -> Iterator[nn.Parameter]: ...


Path = Literal["auto", "plain", "native"]
PATHS: tuple[str, ...] = ("auto", "plain", "native")

_forced: dict[str, str] = {"path": os.environ.get("SEPBN_PATH", "auto").strip().lower() or "auto"}
if _forced["path"] not in PATHS:
    raise ValueError(f"SEPBN_PATH={_forced['path']!r}; valid: {', '.join(map(repr, PATHS))}")


@contextmanager
def sepbn_path(path: Path) -> Iterator[None]:
    """Force the implementation of every SepBN layer called inside the block.

    Args:
        path: ``"auto"`` (the rule above), ``"plain"``, or ``"native"`` (the rule above,
            but a failed build raises instead of warning).

    Raises:
        ValueError: If ``path`` is not one of :data:`PATHS`.
    """
    if path not in PATHS:
        raise ValueError(f"unknown SepBN path {path!r}; valid: {', '.join(map(repr, PATHS))}")
    saved = _forced["path"]
    _forced["path"] = path
    try:
        yield
    finally:
        _forced["path"] = saved


def use_native(layer: _Layer, x: torch.Tensor) -> bool:
    """Whether ``layer(x)`` runs the C++ op (the rule of the module docstring)."""
    forced = _forced["path"]
    if forced == "plain" or not layer.has_native or not x.is_cpu:
        return False
    # Read from the module dictionaries: half a microsecond less per look-up, every call.
    module = cast(nn.Module, layer)
    norm = cast(_BatchNorm, module._modules["norm"])
    weight = cast(torch.Tensor, module._parameters["weight"])
    if norm.training:
        mode_ok = type(norm) is nn.BatchNorm2d and x.numel() > x.shape[1]
    else:
        wants_grad = torch.is_grad_enabled() and (
            x.requires_grad or any(p.requires_grad for p in layer.parameters())
        )
        mode_ok = norm.running_var is not None and not wants_grad
    return (
        mode_ok
        and x.dtype in _NATIVE_DTYPES
        and x.dtype == weight.dtype
        and not torch.is_autocast_enabled("cpu")
        and not is_exporting()
        and not _is_functorch_tensor(x, weight)
        and _native_available(forced == "native")
    )


_NATIVE_DTYPES = (torch.float32, torch.float64)


@torch.compiler.assume_constant_result
def _native_available(required: bool) -> bool:
    """:func:`sepbn.nn.native.available`; under ``torch.compile`` read once at trace time."""
    return native.available(required)


def _is_functorch_tensor(*tensors: torch.Tensor) -> bool:
    """Whether any of ``tensors`` is wrapped by a ``torch.func`` transform (grad, vmap...).

    Not asked under ``torch.compile``, which cannot trace the question and handles
    ``torch.func`` itself.
    """
    if torch.compiler.is_compiling():
        return False
    is_wrapped = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", None)
    return is_wrapped is not None and any(is_wrapped(t) for t in tensors)

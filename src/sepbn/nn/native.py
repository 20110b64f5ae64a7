"""The C++ CPU kernels of SepBN (``csrc/sepbn_cpu.cpp``), built once per machine, as torch ops.

Why C++: on CPU the ATen route spends a third of a batch-norm step on adaptive max
pooling (a scalar NCHW loop) and about 1 ms per call on sixty small ops. The kernels
compute the pooling with its arg-max and the batch statistics in one pass over each
(n, c) plane, apply the mixed mapping in a second, and run the backward in one reduction
and one elementwise pass, with the attention's small matrix products in between, all
behind one op call (see the C++ file's header).

Why not at install time: a compiled wheel would have to match the user's torch build
exactly (pip's build isolation would even fetch another torch to build against). So the
first call builds the file with the machine's C++ compiler (``g++`` or ``$CXX``) against
the installed torch headers, into a cache keyed by the source, torch version, compiler
and flags (default ``~/.cache/sepbn/extensions``, or ``$SEPBN_EXTENSIONS_DIR``); it takes
about 30-60 s on 2 cores and is announced on stderr. Later processes load the cached
library in milliseconds. ``sepbn build-kernels`` builds it ahead of time.

When the build fails (no compiler, no headers), one warning gives the reason and the
layers use the ATen path (:mod:`sepbn.nn.fused_separable_norm`), which gives the same
values about twice as slowly. ``SEPBN_NATIVE=0`` skips the build altogether;
``SEPBN_NATIVE=1`` makes a failed build an error instead of a warning.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from sepbn.errors import SepbnError

SOURCE = Path(__file__).with_name("csrc") / "sepbn_cpu.cpp"

_MODES = ("auto", "0", "1")
_state: dict[str, object] = {"loaded": False, "error": None, "disabled": 0}
_lock = threading.Lock()


class NativeBuildError(SepbnError):
    """The C++ kernels could not be built or loaded."""


def mode() -> str:
    """``SEPBN_NATIVE``: ``"auto"`` (default; build, warn on failure), ``"0"`` or ``"1"``."""
    value = os.environ.get("SEPBN_NATIVE", "auto").strip().lower() or "auto"
    if value not in _MODES:
        raise NativeBuildError(f"SEPBN_NATIVE={value!r}; valid: auto, 0 (never build), 1 (must)")
    return value


def cache_dir() -> Path:
    """Where built libraries are kept (``$SEPBN_EXTENSIONS_DIR``, else the user's cache)."""
    env = os.environ.get("SEPBN_EXTENSIONS_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sepbn" / "extensions"


def compiler() -> str:
    """The C++ compiler used: ``$CXX``, else ``g++``, else ``c++``."""
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or "g++"


def _cpu_flags() -> list[str]:
    """Instruction-set flags for this CPU (the library is built where it runs)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = set()
    for line in info.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    return ["-mavx2", "-mfma"] if {"avx2", "fma"} <= flags else []


def build_command(source: Path, output: Path) -> list[str]:
    """The compiler command line that builds ``source`` into the shared library ``output``."""
    root = Path(torch.__file__).parent
    torch_lib = root / "lib"
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    # torch.utils.cpp_extension.include_paths(), without importing that module (slow, and
    # it logs a CUDA warning on CPU machines).
    includes = [
        f"-I{root / 'include'}",
        f"-I{root / 'include' / 'torch' / 'csrc' / 'api' / 'include'}",
    ]
    return [
        compiler(), "-O3", "-std=c++20", "-fPIC", "-shared", "-fopenmp", "-DNDEBUG",
        f"-D_GLIBCXX_USE_CXX11_ABI={abi}", *_cpu_flags(), *includes, str(source),
        "-o", str(output), f"-L{torch_lib}", "-lc10", "-ltorch_cpu", f"-Wl,-rpath,{torch_lib}",
    ]  # fmt: skip


def library_path() -> Path:
    """The cached library for this source, torch build, compiler and flags."""
    key = hashlib.sha256()
    key.update(SOURCE.read_bytes())
    key.update(torch.__version__.encode())
    key.update(" ".join(build_command(Path("in.cpp"), Path("out.so"))).encode())
    return cache_dir() / f"sepbn_cpu-{key.hexdigest()[:16]}.so"


def build(verbose: bool = False) -> Path:
    """Build the library unless it is cached; returns its path.

    Several processes may call this at once: a file lock lets one compile while the
    others wait, and the library appears under its final name only when complete.

    Raises:
        NativeBuildError: If the compiler is missing or fails (its error output included).
    """
    target = library_path()
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.exists():  # another process built it meanwhile
            return target
        if shutil.which(compiler()) is None:
            raise NativeBuildError(
                f"no C++ compiler {compiler()!r} on PATH (install g++, e.g. "
                "`apt install g++`, or set CXX)"
            )
        print(
            f"sepbn: building the C++ CPU kernels once (about a minute) into {target.parent}",
            file=sys.stderr,
            flush=True,
        )
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            partial = Path(tmp) / target.name
            command = build_command(SOURCE, partial)
            if verbose:
                print(" ".join(command), file=sys.stderr)
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode != 0:
                tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-20:])
                raise NativeBuildError(
                    f"building {SOURCE} failed (exit {result.returncode}):\n{tail}"
                )
            os.replace(partial, target)
        print(
            f"sepbn: C++ CPU kernels built in {time.perf_counter() - start:.0f} s",
            file=sys.stderr,
            flush=True,
        )
    return target


@contextmanager
def disabled() -> Iterator[None]:
    """Inside the block, act as if the kernels were unavailable (the ATen fused path runs).

    For tests and benchmarks that compare the paths; thread-unsafe like any global switch.
    """
    _state["disabled"] = int(_state.get("disabled", 0)) + 1  # type: ignore[call-overload]
    try:
        yield
    finally:
        _state["disabled"] = int(_state["disabled"]) - 1  # type: ignore[call-overload]


def available() -> bool:
    """Whether the kernels are loaded, building and loading them on the first call.

    Returns False (after one warning naming the reason) when they cannot be built, or
    when ``SEPBN_NATIVE=0`` or inside :func:`disabled`.

    Raises:
        NativeBuildError: If the build fails and ``SEPBN_NATIVE=1``.
    """
    if _state["disabled"]:
        return False
    if _state["loaded"]:
        return True
    if _state["error"] is not None or mode() == "0":
        return False
    with _lock:
        if _state["loaded"] or _state["error"] is not None:
            return bool(_state["loaded"])
        try:
            path = build()
            torch.ops.load_library(str(path))
            from sepbn.nn import native_ops  # registers autograd and fake functions

            native_ops.register()
        except (NativeBuildError, OSError, RuntimeError) as error:
            _state["error"] = error
            if mode() == "1":
                raise NativeBuildError(
                    f"SEPBN_NATIVE=1 but the C++ kernels failed: {error}"
                ) from error
            warnings.warn(
                f"sepbn: C++ CPU kernels unavailable, using the ATen path (same values, "
                f"about 2x slower SepBN layers): {error}. Set SEPBN_NATIVE=0 to skip the build.",
                RuntimeWarning,
                stacklevel=2,
            )
            return False
        _state["loaded"] = True
    return True


def failure() -> BaseException | None:
    """Why the kernels are unavailable (None if loaded or not tried yet)."""
    error = _state["error"]
    return error if isinstance(error, BaseException) else None

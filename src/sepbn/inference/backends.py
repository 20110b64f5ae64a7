"""What runs the landmark network on a batch of crops: eager PyTorch, onnxruntime, TorchScript.

All take the crops as the data pipeline makes them, ``(N, S, S, 3)`` uint8 RGB, and return
``(N, L, 2)`` coordinates divided by S, so :class:`sepbn.inference.LandmarkDetector` does
not care which one it holds. A backend with several landmark schemes (a cross-protocol
model, :class:`BranchesBackend`, or a file exported with several branches) returns
``{scheme: (N, L_p, 2)}`` instead and names them in its ``heads`` (scheme -> L_p). The ONNX
and TorchScript files are those ``sepbn export`` writes; their metadata gives the
protocol(s), S and the box scale.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from sepbn.engine.checkpoint import is_torchscript
from sepbn.engine.distributed import check_device
from sepbn.errors import ConfigError
from sepbn.inference.errors import InferenceError
from sepbn.models import CrossProtocolModel, to_model_input

__all__ = [
    "BranchesBackend",
    "LandmarkBackend",
    "OnnxBackend",
    "TorchBackend",
    "TorchScriptBackend",
    "check_finite_weights",
    "is_torchscript",
    "resolve_device",
]


class LandmarkBackend(Protocol):
    """``backend(crops) -> (N, L, 2)`` normalized coordinates, with ``num_points`` = L; or,
    for several schemes, ``{scheme: (N, L_p, 2)}`` with a ``heads`` attribute (scheme -> L_p)."""

    num_points: int

    def __call__(self, crops: np.ndarray) -> np.ndarray | dict[str, np.ndarray]: ...


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` = CUDA when available, else the CPU; any other device must exist here.

    The check is :func:`sepbn.engine.distributed.check_device`, the one every entry point
    uses; its error becomes an :class:`InferenceError` that suggests ``--device cpu``.

    Raises:
        InferenceError: An unknown device string, or a device this machine lacks.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return check_device(device)
    except ConfigError as exc:
        raise InferenceError(f"{exc}; use --device cpu") from None


class TorchBackend:
    """A single-protocol landmark network in eval mode.

    Args:
        model: ``model(x) -> (N, L, 2)`` for float ``[0, 1]`` images ``(N, 3, S, S)``.
        device: Where it runs.
    """

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        self.device = device
        self.model = model.to(device).eval()
        self.num_points = model_num_points(model)

    @torch.inference_mode()
    def __call__(self, crops: np.ndarray) -> np.ndarray:
        batch = torch.from_numpy(crops).permute(0, 3, 1, 2)  # (N, 3, S, S) uint8
        out = self.model(to_model_input(batch, self.device))  # (N, L, 2)
        return out.float().cpu().numpy().astype(np.float64)


class BranchesBackend:
    """Every branch of a cross-protocol model, one backbone pass per batch of crops.

    Args:
        model: A :class:`~sepbn.models.CrossProtocolModel`.
        device: Where it runs.

    Attributes:
        heads: Scheme -> L, the model's branches in order.
    """

    def __init__(self, model: CrossProtocolModel, device: torch.device) -> None:
        self.device = device
        self.model = model.to(device).eval()
        self.heads: dict[str, int] = {str(k): int(v) for k, v in model.heads.items()}
        self.num_points = max(self.heads.values())

    @torch.inference_mode()
    def __call__(self, crops: np.ndarray) -> dict[str, np.ndarray]:
        batch = torch.from_numpy(crops).permute(0, 3, 1, 2)  # (N, 3, S, S) uint8
        out = self.model.forward_all(to_model_input(batch, self.device))  # {p: (N, L_p, 2)}
        return {name: v.float().cpu().numpy().astype(np.float64) for name, v in out.items()}


class OnnxBackend:
    """A file written by ``sepbn export --format onnx``, run by onnxruntime on the CPU.

    Args:
        path: The ``.onnx`` file; its metadata gives the protocol, S and the box scale.

    Attributes:
        metadata: The file's metadata (see :mod:`sepbn.inference.export`), parsed.
    """

    def __init__(self, path: str | Path) -> None:
        try:
            import onnxruntime
        except ImportError:
            raise InferenceError(
                "backend 'onnx' needs onnxruntime: pip install onnxruntime"
            ) from None
        self.path = Path(path)
        if not self.path.is_file():
            raise InferenceError(f"{self.path}: no such ONNX file")
        try:
            self.session = onnxruntime.InferenceSession(
                str(self.path), providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise InferenceError(f"{self.path}: not a loadable ONNX model: {first}") from None
        props = self.session.get_modelmeta().custom_metadata_map
        self.metadata: dict[str, Any] = {k: _parse(v) for k, v in props.items()}
        if "protocol" not in self.metadata or "input_size" not in self.metadata:
            raise InferenceError(
                f"{self.path}: no sepbn metadata (protocol, input_size); "
                "write the file with `sepbn export`"
            )
        self.num_points = int(self.metadata["num_points"])
        self.heads = exported_heads(self.metadata)
        self._input = self.session.get_inputs()[0].name

    def __call__(self, crops: np.ndarray) -> np.ndarray | dict[str, np.ndarray]:
        batch = np.ascontiguousarray(crops.transpose(0, 3, 1, 2))  # (N, 3, S, S) uint8
        outs = self.session.run(None, {self._input: batch})
        return _outputs(outs, self.heads)


class TorchScriptBackend:
    """A file written by ``sepbn export --format torchscript``.

    Args:
        path: The TorchScript file; its ``sepbn.json`` gives the protocol, S and box scale.
        device: Where it runs.

    Attributes:
        metadata: The file's ``sepbn.json``, parsed.

    Raises:
        InferenceError: The file does not load, or lacks sepbn's metadata.
    """

    def __init__(self, path: str | Path, device: torch.device) -> None:
        self.path = Path(path)
        self.device = device
        extra = {"sepbn.json": ""}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # TorchScript's deprecation
                self.module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
        except Exception as exc:  # torch.jit raises untyped C++ errors
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InferenceError(
                f"{path}: a TorchScript file that does not load: {first}"
            ) from None
        try:
            meta = json.loads(extra["sepbn.json"] or "null")
        except ValueError:
            meta = None
        needed = {"protocol", "num_points", "input_size", "box_scale"}
        if not isinstance(meta, dict) or not needed <= meta.keys():
            raise InferenceError(
                f"{path} is a TorchScript file without sepbn's metadata (sepbn.json with "
                f"{', '.join(sorted(needed))}); predict runs sepbn checkpoints and the files "
                "`sepbn export` writes"
            )
        self.metadata: dict[str, Any] = meta
        self.num_points = int(meta["num_points"])
        self.heads = exported_heads(meta)
        self.module.eval()

    @torch.inference_mode()
    def __call__(self, crops: np.ndarray) -> np.ndarray | dict[str, np.ndarray]:
        batch = torch.from_numpy(crops).permute(0, 3, 1, 2).contiguous()  # (N, 3, S, S) uint8
        out = self.module(batch.to(self.device))  # (N, L, 2), or one per branch
        outs = out if isinstance(out, (tuple, list)) else [out]
        return _outputs([o.float().cpu().numpy() for o in outs], self.heads)


def exported_heads(metadata: dict[str, Any]) -> dict[str, int]:
    """Scheme -> L of an exported file: its ``heads`` (several branches) or its one protocol."""
    heads = metadata.get("heads")
    if isinstance(heads, dict) and heads:
        return {str(k): int(v) for k, v in heads.items()}
    return {str(metadata["protocol"]): int(metadata["num_points"])}


def _outputs(outs: list[Any], heads: dict[str, int]) -> np.ndarray | dict[str, np.ndarray]:
    """One output: its array; one output per branch (in ``heads`` order): a dict of them."""
    arrays = [np.asarray(o, dtype=np.float64) for o in outs]
    if len(heads) == 1:
        return arrays[0]
    return dict(zip(heads, arrays))


def check_finite_weights(model: nn.Module, source: object) -> None:
    """Refuse a network whose parameters or buffers hold NaN or inf (a diverged run).

    Raises:
        InferenceError: Naming ``source``, how many tensors are affected and the first.
    """
    tensors = [*model.named_parameters(), *model.named_buffers()]
    bad = [
        name for name, t in tensors if t.is_floating_point() and not bool(torch.isfinite(t).all())
    ]
    if bad:
        raise InferenceError(
            f"{source}: {len(bad)} weight tensor(s) hold NaN or inf (first: {bad[0]}); the "
            "run that saved it diverged: use an earlier checkpoint"
        )


def _parse(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value


def model_num_points(model: nn.Module) -> int:
    """L of a single-protocol landmark network: its ``num_points`` attribute."""
    num_points = model.num_points  # typed by nn.Module.__getattr__ as a tensor or module
    assert not isinstance(num_points, nn.Module)  # sepbn's models set an int in __init__
    return int(num_points)

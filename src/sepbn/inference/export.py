"""``sepbn export``: the landmark network as one ONNX or TorchScript file.

The exported graph is the whole single-protocol network (for a CNT checkpoint: the shared
backbone and the chosen protocol's branch) in eval mode, so every SepBN layer is in its eval
form: the running statistics folded into the per-sample mixed affine, ``y = a x + b`` with
``a = γ̂ / sqrt(σ² + ε)`` and ``b = β̂ - a μ`` (Eq. 6-7), where ``γ̂, β̂`` come from the
attention branch (adaptive max pooling, a 1×1 convolution, an MLP and a softmax over the K
sets).

**Input and output.** ``images``: ``(N, 3, S, S)`` **uint8** RGB crops (0-255, the crops of
:class:`sepbn.data.transforms.FaceCropTransform`); the division by 255 and the ImageNet
mean / std normalization are inside the graph. ``landmarks``: ``(N, L, 2)`` float32, x, y in
crop pixels divided by S. N is dynamic.

**Metadata** (ONNX ``metadata_props``; TorchScript ``_extra_files["sepbn.json"]``), each a
JSON value: ``protocol``, ``num_points`` (L), ``flip_perm`` (the protocol's 0-based
horizontal-flip permutation), ``input_size`` (S), ``box_scale``, ``input`` and ``output``
(the descriptions above), ``arch``, ``norm``, ``sepbn_version``.

**Several branches** (``--protocol all`` or ``wflw,300w`` on a cross-protocol checkpoint):
one graph, the backbone run once, one output per branch, ``landmarks_<scheme>`` each
``(N, L_p, 2)``, in the order asked (TorchScript: a tuple in that order). The metadata adds
``heads`` (scheme -> L_p, in output order), ``outputs`` (the output names) and ``flip_perms``
(scheme -> permutation); ``protocol`` and ``num_points`` name the scheme with the most
points, the one ``sepbn predict`` refines its crops on.

**ONNX opset.** :func:`onnx_opsets`: from :data:`MIN_OPSET` (18, the opset of PyTorch's
``torch.export``-based exporter, which this module uses) to the newest the installed ``onnx``
knows (28 with onnx 1.23); the exporter converts its graph to the opset asked, and the written
file is checked to carry that opset. ONNX has no adaptive max pooling, so while exporting, SepBN's
attention pools with slices and maxima over its T×T bands (static, since S is);
a SepBN layer in eval form then needs ``Slice``, ``ReduceMax`` / ``Max``, ``Concat``,
``Conv`` (the 1×1 reduction), ``Gemm`` (the MLP), ``Relu``, ``Softmax``, ``Reshape``,
``Transpose``, ``Mul``, ``Add``, ``Sub``, ``Div`` (the folded affine). The networks add
``Conv``, ``MaxPool``, ``LeakyRelu`` / ``Relu`` / ``Clip``, ``ReduceMean``, ``Gemm``.
``tests/inference/test_export.py`` checks onnxruntime and TorchScript against the eager
model (max abs difference below 1e-4 in normalized coordinates).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sepbn import __version__
from sepbn.inference.backends import model_num_points
from sepbn.inference.errors import InferenceError
from sepbn.models import CrossProtocolModel

__all__ = [
    "DEFAULT_OPSET",
    "EXPORT_FORMATS",
    "MIN_OPSET",
    "ExportableBranchesNet",
    "ExportableLandmarkNet",
    "export_checkpoint",
    "export_metadata",
    "export_model",
    "onnx_opsets",
]

EXPORT_FORMATS = ("onnx", "torchscript")
MIN_OPSET = 18
DEFAULT_OPSET = 18
INPUT_DESCRIPTION = "images: (N, 3, S, S) uint8 RGB, 0-255; /255 and ImageNet mean/std inside"
OUTPUT_DESCRIPTION = "landmarks: (N, L, 2) float32, x, y in crop pixels / S"


def onnx_opsets() -> range:
    """The ONNX opsets :func:`export_model` writes: :data:`MIN_OPSET` up to the newest opset of
    the installed ``onnx``, the range its version converter targets (torch hands its graph to
    that converter when the opset asked differs from its own, and with a newer opset than the
    converter knows writes its own opset instead).

    Raises:
        InferenceError: ``onnx`` is not installed.
    """
    try:
        import onnx
    except ImportError:
        raise InferenceError(
            "ONNX export needs onnx and onnxscript: pip install onnx onnxscript"
        ) from None
    return range(MIN_OPSET, onnx.defs.onnx_opset_version() + 1)


class ExportableLandmarkNet(nn.Module):
    """A single-protocol landmark network that takes uint8 crops.

    Args:
        model: ``model(x) -> (N, L, 2)`` for float ``[0, 1]`` images (its first layer is
            the ImageNet normalization).

    Shape:
        - Input: ``(N, 3, S, S)`` uint8.
        - Output: ``(N, L, 2)`` float32.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.eval()
        self.num_points = model_num_points(model)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images.to(torch.float32) / 255.0)


class ExportableBranchesNet(nn.Module):
    """Several branches of a cross-protocol network, one backbone pass, uint8 crops in.

    Args:
        model: A :class:`~sepbn.models.CrossProtocolModel`.
        schemes: Its branches to output, in output order.

    Shape:
        - Input: ``(N, 3, S, S)`` uint8.
        - Output: a tuple of ``(N, L_p, 2)`` float32, one per scheme.
    """

    def __init__(self, model: CrossProtocolModel, schemes: list[str]) -> None:
        super().__init__()
        self.model = model.eval()
        self.schemes = list(schemes)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model.forward_all(images.to(torch.float32) / 255.0, self.schemes)
        return tuple(out[name] for name in self.schemes)


def export_metadata(
    protocol: Any,
    input_size: int,
    box_scale: float,
    config: Any | None = None,
    schemes: list[Any] | None = None,
) -> dict[str, str]:
    """The metadata written beside the graph, as ``{key: JSON text}``.

    ``schemes``: the protocols of a several-branch file, in output order (``protocol``
    among them).
    """
    meta: dict[str, Any] = {
        "format": "sepbn-landmarks-net",
        "protocol": protocol.name,
        "num_points": protocol.num_points,
        "flip_perm": list(protocol.flip_perm),
        "input_size": int(input_size),
        "box_scale": float(box_scale),
        "input": INPUT_DESCRIPTION,
        "output": OUTPUT_DESCRIPTION,
        "sepbn_version": __version__,
    }
    if schemes:
        meta["heads"] = {p.name: p.num_points for p in schemes}
        meta["outputs"] = [f"landmarks_{p.name}" for p in schemes]
        meta["flip_perms"] = {p.name: list(p.flip_perm) for p in schemes}
        meta["output"] = OUTPUT_DESCRIPTION.replace("landmarks:", "landmarks_<scheme>:", 1)
    if config is not None:
        meta["arch"] = config.model.arch
        meta["norm"] = config.model.norm
    return {key: json.dumps(value) for key, value in meta.items()}


def export_model(
    model: nn.Module,
    out: str | Path,
    fmt: str,
    input_size: int,
    metadata: dict[str, str],
    opset: int = DEFAULT_OPSET,
    schemes: list[str] | None = None,
) -> Path:
    """Write a single-protocol ``model`` (or a cross-protocol one's ``schemes``) as ONNX or
    TorchScript.

    Args:
        model: ``model(x) -> (N, L, 2)`` for float ``[0, 1]`` images; with ``schemes``, a
            cross-protocol model.
        out: The file to write (its folder is created).
        fmt: ``"onnx"`` or ``"torchscript"``.
        input_size: S.
        metadata: From :func:`export_metadata`.
        opset: ONNX opset, one of :func:`onnx_opsets`.
        schemes: The branches to write, one output each (module docstring).

    Raises:
        InferenceError: An unknown format, an opset outside :func:`onnx_opsets`, or an
            exporter that wrote another opset than ``opset``.
    """
    if fmt not in EXPORT_FORMATS:
        raise InferenceError(f"unknown export format {fmt!r}; valid: {list(EXPORT_FORMATS)}")
    out = Path(out)
    if out.is_dir():
        raise InferenceError(f"--out {out} is a folder; give the file to write")
    out.parent.mkdir(parents=True, exist_ok=True)
    model = model.cpu().float()
    if schemes:
        assert isinstance(model, CrossProtocolModel), "schemes need a cross-protocol model"
        net: nn.Module = ExportableBranchesNet(model, schemes).eval()
    else:
        net = ExportableLandmarkNet(model).eval()
    outputs = [f"landmarks_{name}" for name in schemes] if schemes else ["landmarks"]
    example = torch.zeros(2, 3, input_size, input_size, dtype=torch.uint8)
    if fmt == "torchscript":
        with torch.no_grad(), warnings.catch_warnings():
            # Shape tests on the static S become constants (intended); TorchScript's own
            # deprecation notice is PyTorch's message to us, not to the user.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", FutureWarning)
            traced = torch.jit.trace(net, example, check_trace=False)
            torch.jit.save(traced, str(out), _extra_files={"sepbn.json": _json_of(metadata)})
        return out
    opsets = onnx_opsets()
    if opset not in opsets:
        raise InferenceError(
            f"ONNX opset {opset} is not supported; valid: {opsets[0]} to {opsets[-1]} "
            f"(sepbn needs >= {MIN_OPSET}; the installed onnx knows up to {opsets[-1]})"
        )
    return _export_onnx(net, example, out, metadata, opset, outputs)


def _export_onnx(
    net: nn.Module,
    example: torch.Tensor,
    out: Path,
    metadata: dict[str, str],
    opset: int,
    outputs: list[str],
) -> Path:
    try:
        import onnx
    except ImportError:
        raise InferenceError(
            "ONNX export needs onnx and onnxscript: pip install onnx onnxscript"
        ) from None
    with torch.no_grad():  # also routes SepBN's adaptive max pooling to slices and maxima
        program = torch.onnx.export(
            net,
            (example,),
            None,
            input_names=["images"],
            output_names=outputs,
            dynamic_shapes={"images": {0: torch.export.Dim("batch")}},
            opset_version=opset,
            dynamo=True,
            verbose=False,
        )
    assert program is not None  # dynamo=True returns the ONNXProgram
    proto = program.model_proto
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    written = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if written != opset:  # never a file of another opset than asked
        raise InferenceError(
            f"the exporter produced ONNX opset {written}, not the {opset} asked; nothing written"
        )
    onnx.checker.check_model(proto)
    onnx.save(proto, str(out))
    return out


def _json_of(metadata: dict[str, str]) -> str:
    return json.dumps({key: json.loads(value) for key, value in metadata.items()})


def export_checkpoint(
    checkpoint: str | Path,
    out: str | Path,
    fmt: str = "onnx",
    protocol: str | None = None,
    opset: int = DEFAULT_OPSET,
) -> Path:
    """``sepbn export``: a checkpoint's network (one protocol's branch) as a file.

    Args:
        checkpoint: A ``sepbn train`` checkpoint.
        out: The file to write.
        fmt: ``"onnx"`` or ``"torchscript"``.
        protocol: The branch of a cross-protocol checkpoint (checked against a
            single-protocol model's point count); ``"all"`` or a comma-separated list
            (``"wflw,300w"``) writes those branches, one output each.
        opset: ONNX opset.

    Raises:
        CheckpointError: A missing, corrupt or foreign checkpoint.
        InferenceError: A protocol the model does not have, an unknown format.
    """
    from sepbn.data.protocols import get_protocol
    from sepbn.engine.model_builder import load_model_from_checkpoint
    from sepbn.inference.schemes import checkpoint_protocol, parse_protocols, richest_scheme
    from sepbn.models import is_cross_protocol

    if fmt not in EXPORT_FORMATS:
        raise InferenceError(f"unknown export format {fmt!r}; valid: {list(EXPORT_FORMATS)}")
    model, config = load_model_from_checkpoint(checkpoint, map_location="cpu")
    if protocol is not None and (protocol == "all" or "," in protocol):
        if not is_cross_protocol(model):
            raise InferenceError(
                f"{checkpoint} has one landmark scheme; --protocol {protocol} needs a "
                "cross-protocol (CNT stage 1) checkpoint"
            )
        names = parse_protocols(protocol, model.protocols) or model.protocols
        schemes = [get_protocol(n) for n in names]
        primary = get_protocol(richest_scheme(names, model.heads))
        meta = export_metadata(
            primary, config.model.input_size, config.data.box_scale, config, schemes
        )
        return export_model(model, out, fmt, config.model.input_size, meta, opset, names)
    name = checkpoint_protocol(model, config, protocol, checkpoint)
    if is_cross_protocol(model):
        model = model.single_protocol(name)
    meta = export_metadata(
        get_protocol(name), config.model.input_size, config.data.box_scale, config
    )
    return export_model(model, out, fmt, config.model.input_size, meta, opset)

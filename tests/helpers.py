"""Helpers shared by test files: random layer states and real 300-W faces.

Imported as ``helpers`` (``pythonpath = ["tests"]`` in ``pyproject.toml``); fixtures live in
``conftest.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from sepbn.data.records import FaceRecord, box_from_landmarks
from sepbn.nn import SeparableNormBase


@torch.no_grad()
def randomize(module: nn.Module, stats: bool = True) -> nn.Module:
    """Random parameters and running statistics everywhere, so no check passes by symmetry.

    Fresh norms are the identity (γ = 1, β = 0, μ = 0, σ² = 1) and fresh SepBN sets are all
    equal, which would let a test pass with weights copied to the wrong place, sets mixed in
    the wrong order or an attention that receives no gradient. Every parameter is drawn from
    N(0, 0.5²) except the scales γ of norm layers, N(1, 0.5²) like trained ones; running
    means from N(0, 1) and variances from U(0.5, 2) unless ``stats`` is False.
    """
    scales = {
        id(m.weight)
        for m in module.modules()
        if isinstance(m, (nn.modules.batchnorm._NormBase, SeparableNormBase))
        and m.weight is not None
    }
    for p in module.parameters():
        p.normal_(1.0 if id(p) in scales else 0.0, 0.5)
    if stats:
        for name, b in module.named_buffers():
            if name.endswith("running_mean"):
                b.normal_()
            elif name.endswith("running_var"):
                b.uniform_(0.5, 2.0)
    return module


@torch.no_grad()
def randomize_norms(model: nn.Module, seed: int = 1) -> nn.Module:
    """Trained-looking statistics and affine in every norm of a model, and distinct SepBN sets.

    Unlike :func:`randomize`, convolutions and heads keep their initialization, so a deep
    model's activations stay in range. The values come from a generator seeded with
    ``seed``, independent of the global one.
    """
    g = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            if module.track_running_stats:
                module.running_mean.copy_(torch.randn(module.num_features, generator=g) * 0.1)
                module.running_var.copy_(torch.rand(module.num_features, generator=g) + 0.5)
            if module.affine:
                module.weight.copy_(torch.rand(module.num_features, generator=g) + 0.5)
                module.bias.copy_(torch.randn(module.num_features, generator=g) * 0.1)
        elif isinstance(module, SeparableNormBase):
            module.weight.copy_(torch.rand(module.weight.shape, generator=g) + 0.5)
            module.bias.copy_(torch.randn(module.bias.shape, generator=g) * 0.1)
    return model


def read_pts(path: Path) -> np.ndarray:
    """A 300-W ``.pts`` file (headed or not) as 0-based ``(L, 2)`` points.

    Written here, independent of :mod:`sepbn.data.formats`, so that tests of the cache and
    datasets on real faces do not rely on the reader they would otherwise share a bug with.
    """
    rows = [ln.split() for ln in path.read_text().splitlines()]
    pts = [r for r in rows if len(r) == 2 and r[0] not in ("version:", "n_points:")]
    return np.array(pts, dtype=np.float64) - 1.0  # 300-W files are 1-based


def pts_faces(folder: Path, count: int) -> list[FaceRecord]:
    """The first ``count`` faces (by file name) of a folder of 300-W ``.pts``/``.jpg`` pairs.

    Each record's box is the tight box of its landmarks.
    """
    records = []
    for path in sorted(folder.glob("*.pts"))[:count]:
        pts = read_pts(path)
        records.append(
            FaceRecord(
                path.with_suffix(".jpg"), pts, box_from_landmarks(pts), "300w", source=str(path)
            )
        )
    return records


TINY_SEPBN = {
    "name": "tiny",
    "model": {"arch": "vanilla_cnn", "norm": "sepbn", "width_mult": 0.125, "input_size": 64},
    "data": {"train": [{"kind": "synthetic", "protocol": "wflw", "options": {"num_faces": 4}}]},
}


def tiny_sepbn_checkpoint(path: Path, cross: bool = False) -> tuple[Path, nn.Module]:
    """An untrained tiny Vanilla CNN with SepBN (WFLW points; + 300-W with ``cross``), saved as
    ``sepbn train`` would, whose attention differs between faces."""
    from sepbn.config import config_from_dict, to_dict
    from sepbn.engine.checkpoint import save_checkpoint
    from sepbn.engine.model_builder import build_model_from_config, model_info
    from sepbn.nn import SepBatchNorm2d

    config = config_from_dict(TINY_SEPBN)
    torch.manual_seed(0)
    heads = {"wflw": 98, "300w": 68} if cross else None
    model = build_model_from_config(
        config.model, num_points=None if cross else 98, heads=heads, pretrained=False
    )
    randomize_norms(model)  # distinct sets, so π differs between faces
    # A sharper attention MLP than at initialization, so the weights move between faces.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, SepBatchNorm2d):
                for p in m.parameters():
                    if p.dim() == 2 and p.shape[0] != m.num_sets:
                        p.mul_(20.0)
    state = {
        "model": model.state_dict(),
        "model_info": model_info(model),
        "config": to_dict(config),
    }
    return save_checkpoint(path, state), model


def assert_train_step_matches(
    layer: nn.Module,
    plain: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    y_plain: torch.Tensor,
    input_grad: bool,
    scaled: bool = False,
    **tol: float,
) -> None:
    """Every gradient (x's when asked) and the running statistics of ``layer`` equal ``plain``'s.

    ``y``/``y_plain`` are the two layers' outputs on ``x`` after one training step; a
    gradient that ``plain`` does not have (the attention behind a hard arg-max) must be
    missing from ``layer`` too. ``scaled``: each gradient's ``atol`` is multiplied by its
    largest magnitude (at least 1), for float32 sums taken in different orders.
    """
    grad = torch.randn_like(y_plain)
    inputs = [x] if input_grad else []
    grads = torch.autograd.grad(y, [*inputs, *layer.parameters()], grad, allow_unused=True)
    expected = torch.autograd.grad(y_plain, [*inputs, *plain.parameters()], grad, allow_unused=True)
    names = [*(["x"] if input_grad else []), *(n for n, _ in layer.named_parameters())]
    for name, g, g_plain in zip(names, grads, expected):
        if g_plain is None:
            assert g is None, name
        else:
            atol = _atol(tol.get("atol", 0.0), g_plain, scaled)
            torch.testing.assert_close(
                g, g_plain, **{**tol, "atol": atol}, msg=lambda m, name=name: f"{name}: {m}"
            )
    torch.testing.assert_close(layer.norm.running_mean, plain.norm.running_mean, **tol)
    torch.testing.assert_close(layer.norm.running_var, plain.norm.running_var, **tol)
    assert int(layer.norm.num_batches_tracked) == int(plain.norm.num_batches_tracked) == 1


def assert_backward_matches(
    model: nn.Module,
    reference: nn.Module,
    x: torch.Tensor,
    x_reference: torch.Tensor,
    y: torch.Tensor,
    y_reference: torch.Tensor,
    rtol: float,
    atol: float,
    scaled: bool = False,
) -> None:
    """One backward of the same random gradient through ``y`` and ``y_reference``: the input
    gradients and every parameter's agree (``scaled``: ``atol`` times each gradient's largest
    magnitude, at least 1)."""
    grad = torch.randn_like(y_reference)
    y.backward(grad)
    y_reference.backward(grad)
    torch.testing.assert_close(x.grad, x_reference.grad, rtol=rtol, atol=atol)
    for (name, expected), p in zip(reference.named_parameters(), model.parameters()):
        torch.testing.assert_close(
            p.grad, expected.grad, rtol=rtol, atol=_atol(atol, expected.grad, scaled), msg=name
        )


def _atol(atol: float, expected: torch.Tensor, scaled: bool) -> float:
    """``atol``, times ``expected``'s largest magnitude (at least 1) when ``scaled``."""
    return atol * max(1.0, float(expected.abs().max())) if scaled else atol


def break_pts_folder(folder: Path) -> Path:
    """Three of the synthetic faces of a ``write_pts_folder`` folder made bad: ``f0.jpg``
    undecodable, ``f1.jpg`` a JPEG that libjpeg calls corrupt, ``f2.pts`` with a point at 1e300.
    """
    (folder / "f0.jpg").write_bytes(b"\xff\xd8\xff" + b"not a JPEG" * 50 + b"\xff\xd9")
    data = bytearray((folder / "f1.jpg").read_bytes())
    middle = len(data) // 2
    data[middle : middle + 40] = bytes([0xFF, 0x00] * 20)
    (folder / "f1.jpg").write_bytes(bytes(data))
    rows = (folder / "f2.pts").read_text().splitlines()
    rows[3] = "1e300 1e300"  # the first point; the others are fine
    (folder / "f2.pts").write_text("\n".join(rows) + "\n")
    return folder


def aflw_points_and_boxes(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``data`` and ``bbox`` of AFLWinfo_release.mat for ``n`` random faces: 19 x then 19 y
    per row, and each face's points' box grown by 5 px as ``[x0, x1, y0, y1]``.

    Shape:
        - output: ``(n, 38)``, ``(n, 4)``
    """
    data = np.concatenate([100 + 80 * rng.random((n, 19)), 120 + 90 * rng.random((n, 19))], 1)
    bbox = np.stack(
        [
            data[:, :19].min(1) - 5,
            data[:, :19].max(1) + 5,
            data[:, 19:].min(1) - 5,
            data[:, 19:].max(1) + 5,
        ],
        axis=1,
    )
    return data, bbox

"""The training loss: L1 on normalized landmark coordinates (paper Sec. IV and V-A).

Models predict coordinates divided by the input size S (``crop_px = pred * S``), so the loss is
computed in those units: a value of 0.01 is an average error of 1% of the crop side per
coordinate. Points that are not annotated (``valid`` False, e.g. in AFLW) are left out.

For the cross-protocol model every branch gets its own L1 loss (paper Sec. IV, "the L1 loss is
used for each branch"); by default the branch losses are averaged with weights equal to the
number of faces of each protocol in the batch, so that every face counts the same whatever its
protocol and the loss scale does not depend on how the batch happens to be split
(``optim.protocol_weighting: protocols`` takes the plain mean over the branches instead).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
from torch import Tensor

__all__ = ["cross_protocol_l1_loss", "landmark_loss", "masked_l1_loss"]


def masked_l1_loss(pred: Tensor, target: Tensor, valid: Tensor | None = None) -> Tensor:
    """Mean absolute error over the coordinates of the valid points.

    Args:
        pred: Predicted coordinates.
        target: Ground truth in the same units.
        valid: Which points count; ``None`` = all.

    Returns:
        A scalar; 0 when no point is valid (so an all-missing face adds no gradient).

    Shape:
        - pred, target: ``(N, L, 2)``
        - valid: ``(N, L)`` bool
        - output: ``()``
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    # At least float32: half-precision predictions (AMP) would lose the small errors.
    dtype = torch.promote_types(torch.promote_types(pred.dtype, target.dtype), torch.float32)
    error = (pred.to(dtype) - target.to(dtype)).abs()  # (N, L, 2)
    if valid is None:
        return error.mean()
    if valid.shape != pred.shape[:-1]:
        raise ValueError(f"valid {tuple(valid.shape)} must be {tuple(pred.shape[:-1])}")
    mask = valid.to(error.dtype).unsqueeze(-1)  # (N, L, 1)
    # Two coordinates per valid point; clamp so an all-invalid batch gives 0, not NaN.
    count = (mask.sum() * 2).clamp_min(1.0)
    return (error * mask).sum() / count


def cross_protocol_l1_loss(
    preds: Mapping[str, Tensor],
    targets: Mapping[str, Mapping[str, Tensor]],
    input_size: int,
    weighting: Literal["faces", "protocols"] = "faces",
) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-protocol L1 losses, averaged with weights ``n_p / sum(n_p)`` (or equally).

    Args:
        preds: Protocol name to normalized predictions, rows in the order of
            ``targets[name]["rows"]`` (ascending batch position).
        targets: The collate function's ``"targets"``: protocol name to ``"landmarks"``
            (crop pixels) and ``"valid"``.
        input_size: S; the crop-pixel targets are divided by it.
        weighting: ``"faces"``: weights ``n_p / sum(n_p)``, every face counts the same;
            ``"protocols"``: the plain mean over the protocols in the batch, so a protocol
            with few faces in the batch weighs as much as one with many.

    Returns:
        The scalar loss and, for logging, each protocol's detached loss (kept on the device
        so that no step waits for a host copy).

    Shape:
        - preds[p]: ``(n_p, L_p, 2)``
        - targets[p]["landmarks"]: ``(n_p, L_p, 2)``; targets[p]["valid"]: ``(n_p, L_p)``
    """
    if weighting not in ("faces", "protocols"):
        raise ValueError(f"weighting must be 'faces' or 'protocols', got {weighting!r}")
    if not targets:
        raise ValueError("the batch has no targets")
    weighted: list[Tensor] = []
    count = 0
    parts: dict[str, Tensor] = {}
    for name, target in targets.items():
        if name not in preds:
            raise KeyError(
                f"the model gave no prediction for protocol {name!r}; got {sorted(preds)}"
            )
        landmarks = target["landmarks"].to(preds[name].device) / input_size
        valid = target["valid"].to(preds[name].device)
        loss = masked_l1_loss(preds[name], landmarks, valid)
        n = int(landmarks.shape[0]) if weighting == "faces" else 1
        parts[name] = loss.detach()
        weighted.append(loss * n)
        count += n
    return torch.stack(weighted).sum() / max(count, 1), parts


def landmark_loss(
    preds: Tensor | Mapping[str, Tensor],
    targets: Mapping[str, Mapping[str, Tensor]],
    input_size: int,
    weighting: Literal["faces", "protocols"] = "faces",
) -> Tensor:
    """The training loss for a single-protocol or a cross-protocol model's output.

    Args:
        preds: ``(N, L, 2)`` from a single-protocol model, or a mapping from a
            cross-protocol one.
        targets: The collate function's ``"targets"``.
        input_size: S.
        weighting: How branch losses are averaged; see :func:`cross_protocol_l1_loss`.

    Returns:
        The scalar loss.

    Shape:
        - preds: ``(N, L, 2)`` or ``{p: (n_p, L_p, 2)}``
        - output: ``()``
    """
    if isinstance(preds, Tensor):
        if len(targets) != 1:
            raise ValueError(
                f"a single-protocol model got a batch with protocols {sorted(targets)}"
            )
        ((name, target),) = targets.items()
        rows = target["rows"].to(preds.device)
        preds = {name: preds.index_select(0, rows)}
    return cross_protocol_l1_loss(preds, targets, input_size, weighting)[0]

"""The training loss (paper Sec. IV, V-A): masked L1, and the cross-protocol average."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sepbn.engine.losses import cross_protocol_l1_loss, landmark_loss, masked_l1_loss


def l1_reference(pred: np.ndarray, target: np.ndarray, valid: np.ndarray) -> float:
    """Mean absolute error over the coordinates of valid points, by loops."""
    total, count = 0.0, 0
    for n in range(pred.shape[0]):
        for j in range(pred.shape[1]):
            if valid[n, j]:
                for c in range(2):
                    total += abs(pred[n, j, c] - target[n, j, c])
                    count += 1
    return total / count if count else 0.0


def test_masked_l1_matches_loops_and_ignores_invalid_points() -> None:
    g = torch.Generator().manual_seed(0)
    pred = torch.rand(4, 7, 2, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.rand(4, 7, 2, generator=g, dtype=torch.float64)
    valid = torch.rand(4, 7, generator=g) > 0.3
    loss = masked_l1_loss(pred, target, valid)
    assert loss.item() == pytest.approx(
        l1_reference(pred.detach().numpy(), target.numpy(), valid.numpy()), rel=1e-12
    )
    loss.backward()
    assert torch.all(pred.grad[~valid] == 0) and torch.all(pred.grad[valid] != 0)
    assert masked_l1_loss(pred, target).item() == pytest.approx((pred - target).abs().mean().item())


def test_all_invalid_points_give_zero_not_nan() -> None:
    pred = torch.rand(2, 3, 2, requires_grad=True)
    loss = masked_l1_loss(pred, torch.rand(2, 3, 2), torch.zeros(2, 3, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0 and torch.all(pred.grad == 0)


def test_cross_protocol_loss_counts_every_face_equally() -> None:
    g = torch.Generator().manual_seed(1)
    sizes = {"wflw": (3, 98), "cofw": (1, 29), "aflw": (4, 19)}
    preds, targets = {}, {}
    for name, (n, points) in sizes.items():
        preds[name] = torch.rand(n, points, 2, generator=g, dtype=torch.float64)
        targets[name] = {
            "landmarks": torch.rand(n, points, 2, generator=g, dtype=torch.float64) * 64,
            "valid": torch.rand(n, points, generator=g) > 0.2,
        }
    loss, parts = cross_protocol_l1_loss(preds, targets, input_size=64)
    expected_parts = {
        k: l1_reference(
            preds[k].numpy(), targets[k]["landmarks"].numpy() / 64, targets[k]["valid"].numpy()
        )
        for k in sizes
    }
    expected = sum(sizes[k][0] * expected_parts[k] for k in sizes) / 8
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert {k: v.item() for k, v in parts.items()} == pytest.approx(expected_parts, rel=1e-12)
    # Per protocol: the plain mean of the three branch losses, whatever their face counts.
    mean, _ = cross_protocol_l1_loss(preds, targets, input_size=64, weighting="protocols")
    assert mean.item() == pytest.approx(sum(expected_parts.values()) / 3, rel=1e-12)
    with pytest.raises(ValueError, match="weighting"):
        cross_protocol_l1_loss(preds, targets, input_size=64, weighting="size")  # type: ignore[arg-type]
    with pytest.raises(KeyError, match="no prediction for protocol 'aflw'"):
        cross_protocol_l1_loss({"wflw": preds["wflw"], "cofw": preds["cofw"]}, targets, 64)


def test_landmark_loss_of_a_single_protocol_model_divides_by_the_input_size() -> None:
    pred = torch.full((2, 3, 2), 0.5)
    targets = {
        "300w": {
            "rows": torch.tensor([0, 1]),
            "landmarks": torch.full((2, 3, 2), 16.0),  # 0.25 of a 64 px crop
            "valid": torch.ones(2, 3, dtype=torch.bool),
        }
    }
    assert landmark_loss(pred, targets, 64).item() == pytest.approx(0.25)
    with pytest.raises(ValueError, match="single-protocol model got a batch with protocols"):
        landmark_loss(pred, {**targets, "wflw": targets["300w"]}, 64)

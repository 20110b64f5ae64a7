"""Eq. 2 (mean pairwise cosine similarity of the branches) against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sepbn.analysis import branch_similarity, mean_pairwise_cosine, plot_branch_similarity
from sepbn.nn import DomainBatchNorm2d, SepBatchNorm2d


def test_eq2_by_hand() -> None:
    p = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    # s(p1,p2) = 0, s(p1,p3) = s(p2,p3) = 1/sqrt(2)  ->  S = (0 + 2/sqrt(2)) / 3
    assert mean_pairwise_cosine(p) == pytest.approx(math.sqrt(2) / 3)
    assert mean_pairwise_cosine(torch.ones(4, 5)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="K >= 2"):
        mean_pairwise_cosine(torch.ones(1, 5))


def test_branch_similarity_reads_every_layer_kind(tmp_path) -> None:
    model = nn.Sequential(nn.Conv2d(3, 2, 1), DomainBatchNorm2d(2, 3), SepBatchNorm2d(2, 2, 1))
    domain, sep = model[1], model[2]
    with torch.no_grad():
        for k, branch in enumerate(domain.branches):
            branch.running_mean.copy_(torch.tensor([1.0, 2.0]))  # identical: S = 1
            branch.running_var.copy_(torch.tensor([1.0, 1.0 + k]))
            branch.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]][k]))
            branch.bias.copy_(torch.tensor([1.0, -1.0]) * (-1) ** k)  # s = -1 for odd pairs
        sep.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    sims = branch_similarity(model)
    assert list(sims) == ["1", "2"]
    assert sims["1"]["running_mean"] == pytest.approx(1.0)
    expected_var = (
        3 / math.sqrt(2 * 5) + 4 / math.sqrt(2 * 10) + 7 / math.sqrt(5 * 10)
    ) / 3  # vectors (1,1), (1,2), (1,3)
    assert sims["1"]["running_var"] == pytest.approx(expected_var)
    assert sims["1"]["scale"] == pytest.approx(math.sqrt(2) / 3)
    assert sims["1"]["shift"] == pytest.approx((-1 + 1 - 1) / 3)
    assert set(sims["2"]) == {"scale", "shift"}
    assert sims["2"]["scale"] == pytest.approx(0.0)
    png = plot_branch_similarity(sims, tmp_path / "fig4.png")
    assert png.stat().st_size > 5000

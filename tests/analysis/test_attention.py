"""Mean SepBN attention weights per pose domain, against a direct per-sample computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from sepbn.analysis import attention_by_domain, format_attention_table
from sepbn.nn import SepBatchNorm2d


def test_attention_by_domain_matches_per_sample_weights() -> None:
    conv, sep = nn.Conv2d(3, 4, 3, padding=1), SepBatchNorm2d(4, num_sets=3, num_groups=2)
    model = nn.Sequential(conv, sep).eval()
    images = torch.randint(0, 256, (10, 3, 12, 12), dtype=torch.uint8)
    domains = torch.tensor([0, 0, 1, 2, -1, 0, 2, 2, 1, -1])
    loader = [
        {"image": images[:6], "domain": domains[:6]},
        {"image": images[6:], "domain": domains[6:]},
    ]
    means = attention_by_domain(model, loader, num_domains=3)
    with torch.no_grad():
        pi = sep.attention(conv(images.float() / 255)).numpy()  # (N, G, K)
    for d in range(3):
        np.testing.assert_allclose(means["1"][d], pi[domains.numpy() == d].mean(0), atol=1e-6)
    assert sep.keep_attention is False and sep.last_attention is None  # cleaned up
    assert "1 group 1    right:" in format_attention_table(means, ["frontal", "left", "right"])


def test_attention_by_domain_needs_sepbn() -> None:
    with pytest.raises(ValueError, match="no SepBN layer"):
        attention_by_domain(nn.BatchNorm2d(3), [], 3)

"""Which mapping set does SepBN pick for which faces? Attention weights by pose domain.

SepBN is motivated by faces falling into sub-domains (paper Fig. 3: near-frontal, left and
right profiles). :func:`attention_by_domain` runs a trained network over a dataset and
averages, per SepBN layer and per pose domain of the faces, the attention weights π
(N, G, K) of Eq. 5/6, so one can see whether the K sets specialise by pose.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from sepbn.models import to_model_input
from sepbn.nn import SeparableNormBase


@torch.inference_mode()
def attention_by_domain(
    model: nn.Module,
    loader: Iterable[Mapping[str, Any]],
    num_domains: int = 3,
    device: str | torch.device = "cpu",
) -> dict[str, np.ndarray]:
    """Mean attention weights per SepBN layer and pose domain.

    Args:
        model: A single-protocol network with SepBN layers (``model(x)``).
        loader: Batches in the collate format; ``batch["domain"]`` (0 frontal, 1 left,
            2 right, -1 unknown) groups the faces; unknown ones are left out.
        num_domains: Number of domains.
        device: Where the model runs.

    Returns:
        Layer name to a ``(num_domains, G, K)`` array of mean weights (NaN for a domain
        without faces); for :class:`~sepbn.nn.SimpleSepBatchNorm2d`, G = 1.
    """
    layers = {n: m for n, m in model.named_modules() if isinstance(m, SeparableNormBase)}
    if not layers:
        raise ValueError("the model has no SepBN layer")
    sums: dict[str, np.ndarray] = {}
    counts = np.zeros(num_domains)
    was_training = model.training
    model.eval().to(device)
    for layer in layers.values():
        layer.keep_attention = True
    try:
        for batch in loader:
            domains = batch["domain"].numpy()
            model(to_model_input(batch["image"], device))
            for name, layer in layers.items():
                attention = layer.last_attention  # kept by keep_attention above
                if attention is None:
                    raise RuntimeError(f"SepBN layer {name!r} took no part in the forward pass")
                pi = attention.float().cpu().numpy()  # (N, G, K) or (N, K)
                pi = pi.reshape(pi.shape[0], -1, pi.shape[-1])
                acc = sums.setdefault(name, np.zeros((num_domains, *pi.shape[1:])))
                for d in range(num_domains):
                    acc[d] += pi[domains == d].sum(axis=0)
            counts += np.bincount(domains[domains >= 0], minlength=num_domains)[:num_domains]
    finally:
        for layer in layers.values():
            layer.keep_attention = False
            layer.last_attention = None
        model.train(was_training)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {name: acc / counts[:, None, None] for name, acc in sums.items()}


def format_attention_table(means: Mapping[str, np.ndarray], domain_names: list[str]) -> str:
    """One line per layer, group and domain: the mean weight of each of the K sets."""
    lines = []
    for name, table in means.items():
        for g in range(table.shape[1]):
            for d, domain in enumerate(domain_names):
                weights = " ".join(f"{w:.3f}" for w in table[d, g])
                lines.append(f"{name} group {g} {domain:>8}: {weights}")
    return "\n".join(lines)

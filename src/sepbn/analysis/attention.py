"""Which mapping set does SepBN pick for which faces? Attention weights by pose domain.

SepBN is motivated by faces falling into sub-domains (paper Fig. 3: near-frontal, left and
right profiles). :func:`attention_by_domain` runs a trained network over a dataset and
averages, per SepBN layer and per pose domain of the faces, the attention weights π
(N, G, K) of Eq. 5/6, so one can see whether the K sets specialise by pose.
:func:`collect_attention` returns every sample's π, and :func:`attention_by_label` splits
them by any per-sample label (yaw bin, WFLW attribute flag): what ``sepbn analyze attention``
reports (:mod:`sepbn.analysis.attention_report`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from sepbn.models import to_model_input
from sepbn.nn import SeparableNormBase


@torch.inference_mode()
def collect_attention(
    model: nn.Module,
    loader: Iterable[Mapping[str, Any]],
    device: str | torch.device = "cpu",
    fields: Sequence[str] = (),
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The attention weights π of every SepBN layer for every sample of ``loader``.

    Args:
        model: A single-protocol network with SepBN layers (``model(x)``).
        loader: Batches in the collate format (``batch["image"]`` uint8).
        device: Where the model runs.
        fields: Per-sample batch entries to return alongside (e.g. ``"index"``, ``"domain"``).

    Returns:
        Layer name (module order) to its ``(N, G, K)`` weights (G = 1 for
        :class:`~sepbn.nn.SimpleSepBatchNorm2d`), and each of ``fields`` as an ``(N,)`` array.

    Raises:
        ValueError: The model has no SepBN layer.
    """
    layers = {n: m for n, m in model.named_modules() if isinstance(m, SeparableNormBase)}
    if not layers:
        raise ValueError("the model has no SepBN layer")
    weights: dict[str, list[np.ndarray]] = {name: [] for name in layers}
    values: dict[str, list[np.ndarray]] = {f: [] for f in fields}
    was_training = model.training
    model.eval().to(device)
    kept = {name: layer.keep_attention for name, layer in layers.items()}
    for layer in layers.values():
        layer.keep_attention = True
    try:
        for batch in loader:
            model(to_model_input(batch["image"], device))
            for name, layer in layers.items():
                attention = layer.last_attention  # kept by keep_attention above
                if attention is None:
                    raise RuntimeError(f"SepBN layer {name!r} took no part in the forward pass")
                pi = attention.float().cpu().numpy()  # (N, G, K) or (N, K)
                weights[name].append(pi.reshape(pi.shape[0], -1, pi.shape[-1]))
            for f in fields:
                values[f].append(np.asarray(batch[f]))
    finally:
        for name, layer in layers.items():
            layer.keep_attention = kept[name]
            if not kept[name]:
                layer.last_attention = None
        model.train(was_training)
    return (
        {name: np.concatenate(w) for name, w in weights.items()},
        {f: np.concatenate(v) for f, v in values.items()},
    )


def attention_by_label(
    pi: np.ndarray, labels: np.ndarray, num_labels: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and standard deviation of π over the samples of each label.

    Args:
        pi: ``(N, G, K)`` weights of one layer.
        labels: ``(N,)`` ints in ``[0, num_labels)``; other values (-1: unknown) are left out.
        num_labels: Number of labels.

    Returns:
        ``mean`` and ``std`` ``(num_labels, G, K)`` (NaN for a label without samples; the
        population std, 0 for one sample) and ``count`` ``(num_labels,)``.
    """
    shape = (num_labels, *pi.shape[1:])
    mean, std = np.full(shape, np.nan), np.full(shape, np.nan)
    count = np.zeros(num_labels, dtype=np.int64)
    for b in range(num_labels):
        rows = pi[labels == b]
        count[b] = len(rows)
        if len(rows):
            mean[b], std[b] = rows.mean(axis=0), rows.std(axis=0)
    return mean, std, count


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
    weights, values = collect_attention(model, loader, device, fields=("domain",))
    return {
        name: attention_by_label(pi, values["domain"], num_domains)[0]
        for name, pi in weights.items()
    }


def format_attention_table(means: Mapping[str, np.ndarray], domain_names: list[str]) -> str:
    """One line per layer, group and domain: the mean weight of each of the K sets."""
    lines = []
    for name, table in means.items():
        for g in range(table.shape[1]):
            for d, domain in enumerate(domain_names):
                weights = " ".join(f"{w:.3f}" for w in table[d, g])
                lines.append(f"{name} group {g} {domain:>8}: {weights}")
    return "\n".join(lines)

"""How different the K branches / sets of a trained network are: paper Eq. 2 and Fig. 4.

For a brute-force SepBN layer (:class:`~sepbn.nn.DomainBatchNorm2d`) the paper compares the
three BN branches' *tracking* parameters (running mean, running variance) and *mapping*
parameters (scale γ, shift β) by their mean pairwise cosine similarity

    S = [s(p1, p2) + s(p1, p3) + s(p2, p3)] / 3                              (Eq. 2)

and finds the tracking parameters nearly identical and the mapping parameters different,
which motivates SepBN's shared normalization with separate mappings. For K branches the mean
runs over all K(K-1)/2 pairs. The same measure applies to the K mapping sets of
:class:`~sepbn.nn.SepBatchNorm2d` and :class:`~sepbn.nn.SimpleSepBatchNorm2d` (which share
their statistics, so only scale and shift are reported).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import Tensor, nn

from sepbn.nn import DomainBatchNorm2d, SeparableNormBase

PARAMETERS = ("running_mean", "running_var", "scale", "shift")


def mean_pairwise_cosine(vectors: Tensor) -> float:
    """Eq. 2: the mean cosine similarity over all pairs of the rows of ``vectors``.

    Shape:
        - vectors: ``(K, D)`` with K >= 2.
    """
    if vectors.dim() != 2 or vectors.shape[0] < 2:
        raise ValueError(f"need (K, D) vectors with K >= 2, got {tuple(vectors.shape)}")
    v = vectors.detach().double()
    pairs = itertools.combinations(range(v.shape[0]), 2)
    sims = [torch.nn.functional.cosine_similarity(v[i], v[j], dim=0) for i, j in pairs]
    return float(torch.stack(sims).mean())


def _branch_similarity(branches: Iterable[nn.Module], name: str) -> float:
    """Eq. 2 between the ``name`` tensors (a parameter or buffer) of BN ``branches``."""
    return mean_pairwise_cosine(torch.stack([getattr(branch, name) for branch in branches]))


def branch_similarity(model: nn.Module) -> dict[str, dict[str, float]]:
    """Eq. 2 for every multi-branch / multi-set normalization layer of ``model``.

    Returns:
        Layer name to ``{"running_mean", "running_var", "scale", "shift"}`` similarities
        (DomainBatchNorm2d) or ``{"scale", "shift"}`` (SepBN layers), in module order.
    """
    out: dict[str, dict[str, float]] = {}
    for name, module in model.named_modules():
        if isinstance(module, DomainBatchNorm2d) and module.num_domains >= 2:
            b = module.branches
            out[name] = {
                "running_mean": _branch_similarity(b, "running_mean"),
                "running_var": _branch_similarity(b, "running_var"),
                "scale": _branch_similarity(b, "weight"),
                "shift": _branch_similarity(b, "bias"),
            }
        elif isinstance(module, SeparableNormBase) and module.weight.shape[0] >= 2:
            out[name] = {
                "scale": mean_pairwise_cosine(module.weight),
                "shift": mean_pairwise_cosine(module.bias),
            }
    return out


def plot_branch_similarity(
    similarities: dict[str, dict[str, float]], path: str | Path, title: str | None = None
) -> Path:
    """Fig. 4: grouped bars of the mean similarity per layer and parameter kind."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not similarities:
        raise ValueError("no multi-branch normalization layer to plot")
    layers = list(similarities)
    kinds = [k for k in PARAMETERS if any(k in v for v in similarities.values())]
    fig = Figure(figsize=(max(6.0, 1.1 * len(layers) + 2), 4.0))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    width = 0.8 / len(kinds)
    for i, kind in enumerate(kinds):
        xs = [j + (i - (len(kinds) - 1) / 2) * width for j in range(len(layers))]
        ax.bar(
            xs,
            [similarities[layer].get(kind, float("nan")) for layer in layers],
            width,
            label=kind.replace("_", " "),
        )
    ax.set_xticks(range(len(layers)), [f"{j + 1}" for j in range(len(layers))])
    ax.set_xlabel("normalization layer (network order)")
    ax.set_ylabel("mean cosine similarity (Eq. 2)")
    ax.set_ylim(min(0.0, ax.get_ylim()[0]), 1.05)
    ax.set_title(title or "Similarity of the branches' parameters (paper Fig. 4)")
    ax.grid(axis="y", alpha=0.4)
    ax.legend(loc="lower left", fontsize="small")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    return out

"""``sepbn analyze embedding``: a t-SNE of the faces coloured by head yaw, as in paper Fig. 3.

The paper's Fig. 3 shows the AFLW training faces falling into three clusters by head pose,
the imbalance between sub-domains that SepBN is designed for. Here each face is either

- its **landmark shape**, aligned to the mean shape by a generalized Procrustes fit
  (:func:`align_shapes`: translation, isotropic scale and rotation, no reflection, so a left
  profile stays a left profile; in-plane roll and face size are removed, yaw stays in the
  shape), or
- the **backbone features** of a trained network on its evaluation crop (``--checkpoint``),

and the vectors are embedded in 2D by scikit-learn's t-SNE (``pip install 'sepbn[analysis]'``;
features wider than 50 are first reduced to 50 by PCA). Faces are coloured by yaw bin
(:mod:`sepbn.analysis.pose_bins`); the number of faces per bin is printed and drawn beside it.

Files written to ``out_dir``: ``embedding.csv`` (one line per embedded face), ``pose_bins.csv``
(faces per yaw bin, every face) and ``embedding.png``.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sepbn.analysis.inputs import eval_loader, load_model_and_faces
from sepbn.analysis.pose_bins import DEFAULT_YAW_EDGES, UNKNOWN_BIN, bin_names, face_yaw, yaw_bins
from sepbn.config import DatasetConfig
from sepbn.engine.checkpoint import CheckpointError
from sepbn.engine.data_builder import LoadedSet, load_records
from sepbn.errors import SepbnError
from sepbn.models import to_model_input

__all__ = [
    "EmbeddingAnalysis",
    "MissingDependencyError",
    "align_shapes",
    "analyze_embedding",
    "backbone_features",
    "tsne",
]

PCA_DIMENSIONS = 50


class MissingDependencyError(SepbnError, ImportError):
    """An optional package that an analysis needs is not installed."""


def _fit_similarity(
    shapes: np.ndarray, reference: np.ndarray, weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Weighted least-squares similarity (no reflection) of each shape onto ``reference``.

    Returns ``(scale (N,), rotation (N, 2, 2), source centre (N, 2), target centre (N, 2))``
    such that ``scale * (x - source) @ rotation.T + target`` fits the reference (Umeyama 1991).
    """
    total = weights.sum(1, keepdims=True)  # (N, 1)
    mu_x = (weights[..., None] * shapes).sum(1) / total  # (N, 2)
    mu_y = (weights[..., None] * reference[None]).sum(1) / total  # (N, 2)
    xc, yc = shapes - mu_x[:, None], reference[None] - mu_y[:, None]  # (N, L, 2)
    cov = np.einsum("nl,nli,nlj->nij", weights, yc, xc) / total[..., None]  # (N, 2, 2)
    u, s, vt = np.linalg.svd(cov)
    d = np.sign(np.linalg.det(u) * np.linalg.det(vt))  # -1: the best fit would mirror
    fix = np.stack([np.ones_like(d), d], axis=1)  # (N, 2)
    rotation = u @ (fix[:, :, None] * vt)  # U diag(1, d) V^T
    var_x = (weights * (xc**2).sum(-1)).sum(1) / total[:, 0]  # (N,)
    scale = (s * fix).sum(1) / var_x
    return scale, rotation, mu_x, mu_y


def align_shapes(
    landmarks: np.ndarray, valid: np.ndarray | None = None, iterations: int = 5
) -> np.ndarray:
    """Generalized Procrustes alignment of landmark shapes onto their mean shape.

    The mean shape is centred at 0 with unit root-mean-square radius. Points that are not
    annotated do not take part in a face's fit and are replaced by the mean shape's points.

    Args:
        landmarks: ``(N, L, 2)`` pixels.
        valid: ``(N, L)`` annotation mask, or None for all annotated.
        iterations: Rounds of fit-all-to-mean, re-estimate the mean.

    Returns:
        ``(N, L, 2)`` aligned shapes; NaN for a face with fewer than 2 annotated points.

    Shape:
        - landmarks: ``(N, L, 2)``; output ``(N, L, 2)``
    """
    pts = np.asarray(landmarks, dtype=np.float64)
    mask = np.ones(pts.shape[:2], bool) if valid is None else np.asarray(valid, dtype=bool)
    usable = mask.sum(1) >= 2
    out = np.full(pts.shape, np.nan)
    if not usable.any():
        return out
    w = np.where(mask & usable[:, None], 1.0, 0.0)  # (N, L)
    x = np.where(mask[..., None], pts, 0.0)[usable]
    w = w[usable]

    def normalize(shape: np.ndarray) -> np.ndarray:
        centred = shape - shape.mean(0)
        return centred / np.sqrt((centred**2).sum(1).mean())

    # Start from the face with the most annotated points.
    reference = normalize(x[np.argmax(w.sum(1))])
    aligned = x
    for _ in range(iterations):
        scale, rotation, mu_x, mu_y = _fit_similarity(x, reference, w)
        aligned = scale[:, None, None] * np.einsum("nlj,nij->nli", x - mu_x[:, None], rotation)
        aligned = aligned + mu_y[:, None]
        aligned = np.where(w[..., None] > 0, aligned, reference[None])
        counts = np.maximum(w.sum(0), 1.0)[:, None]  # (L, 1)
        mean = (w[..., None] * aligned).sum(0) / counts
        reference = normalize(np.where(w.sum(0)[:, None] > 0, mean, reference))
    out[usable] = aligned
    return out


@torch.inference_mode()
def backbone_features(
    model: torch.nn.Module, loader: Iterable[Mapping[str, Any]], device: str = "cpu"
) -> np.ndarray:
    """The flattened backbone output of every face, ``(N, C·s·s)``, in the loader's order."""
    backbone = getattr(model, "backbone", None)
    if backbone is None:
        raise CheckpointError(f"{type(model).__name__} has no backbone to take features from")
    chunks = [
        backbone(to_model_input(batch["image"], device)).flatten(1).float().cpu().numpy()
        for batch in loader
    ]
    return np.concatenate(chunks)


def tsne(vectors: np.ndarray, perplexity: float = 30.0, seed: int = 0) -> np.ndarray:
    """2D t-SNE of ``(N, D)`` vectors (PCA to 50 dimensions first when D > 50).

    Raises:
        MissingDependencyError: scikit-learn is not installed.
    """
    try:
        from sklearn.decomposition import PCA
        from sklearn.manifold import TSNE
    except ImportError:
        raise MissingDependencyError(
            "the t-SNE needs scikit-learn: pip install 'sepbn[analysis]'"
        ) from None
    n = len(vectors)
    if n < 4:
        raise ValueError(f"a t-SNE needs at least 4 faces, got {n}")
    x = vectors
    if x.shape[1] > PCA_DIMENSIONS and n > PCA_DIMENSIONS:
        x = PCA(PCA_DIMENSIONS, random_state=seed).fit_transform(x)
    # scikit-learn needs perplexity < N.
    tsne = TSNE(2, perplexity=min(perplexity, (n - 1) / 3), init="pca", random_state=seed)
    return tsne.fit_transform(x)


@dataclass
class EmbeddingAnalysis:
    """What :func:`analyze_embedding` computed and wrote.

    Attributes:
        dataset: The dataset's display name.
        space: ``"Procrustes-aligned landmark shapes"`` or ``"backbone features"``.
        bin_counts: Yaw bin name -> faces (every face of the dataset; ``"unknown"``: no yaw).
        num_embedded: Faces in the t-SNE (a random subset of at most ``max_faces``).
        paths: The files written.
    """

    dataset: str
    space: str
    bin_counts: dict[str, int]
    num_embedded: int
    paths: list[Path]

    def summary(self) -> str:
        total = sum(self.bin_counts.values())
        lines = [f"{self.dataset}: {total} faces per yaw bin (the imbalance SepBN addresses):"]
        for name, count in self.bin_counts.items():
            lines.append(f"  {name:>18}: {count:6d}  ({100 * count / max(total, 1):5.1f}%)")
        lines.append(f"t-SNE of {self.space} on {self.num_embedded} faces")
        return "\n".join(lines)


def _plot(
    xy: np.ndarray,
    bins: np.ndarray,
    names: list[str],
    counts: dict[str, int],
    path: Path,
    title: str,
) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11.0, 5.0), layout="constrained")
    FigureCanvasAgg(fig)
    scatter, bars = fig.subplots(1, 2, width_ratios=(1.6, 1.0))
    colours = [f"C{b}" for b in range(len(names))]
    labels = [*names, "unknown"]
    for b, name in zip([*range(len(names)), UNKNOWN_BIN], labels):
        sel = bins == b
        if sel.any():
            colour = colours[b] if b >= 0 else "0.6"
            scatter.scatter(*xy[sel].T, s=10, c=colour, alpha=0.8, label=f"{name} ({sel.sum()})")
    scatter.set_xlabel("t-SNE dimension 1 (arbitrary units)")
    scatter.set_ylabel("t-SNE dimension 2 (arbitrary units)")
    scatter.set_title("embedded faces, by head yaw", fontsize="medium")
    scatter.legend(title="yaw bin (faces shown)", fontsize="small", markerscale=2)
    heights = [counts[n] for n in labels]
    bars.bar(range(len(labels)), heights, color=[*colours, "0.6"])
    bars.set_xticks(range(len(labels)), labels, rotation=20, fontsize="small")
    bars.set_xlabel("yaw bin (degrees; + = nose to the image's left)")
    bars.set_ylabel("number of faces (whole dataset)")
    bars.set_title("faces per yaw bin", fontsize="medium")
    for i, h in enumerate(heights):
        bars.annotate(str(h), (i, h), ha="center", va="bottom", fontsize="small")
    fig.suptitle(title)
    fig.savefig(path, dpi=100)
    return path


def analyze_embedding(
    data: DatasetConfig,
    out_dir: str | Path,
    *,
    checkpoint: str | Path | None = None,
    yaw_edges: Sequence[float] = DEFAULT_YAW_EDGES,
    max_faces: int = 3000,
    perplexity: float = 30.0,
    seed: int = 0,
    device: str = "cpu",
    batch_size: int = 32,
) -> EmbeddingAnalysis:
    """t-SNE of ``data``'s faces (shapes, or ``checkpoint``'s backbone features) by yaw bin.

    Raises:
        MissingDependencyError: scikit-learn is missing.
        CheckpointError: A bad checkpoint.
        DatasetError: Unreadable data.
    """
    model = None
    if checkpoint is not None:
        model, config, loaded = load_model_and_faces(checkpoint, data, device)
    else:
        loaded = load_records(data, seed)
    names = bin_names(yaw_edges)
    yaw = face_yaw(loaded.records, loaded.protocol)
    bins = yaw_bins(yaw, yaw_edges)
    counts = {name: int((bins == b).sum()) for b, name in enumerate(names)}
    counts["unknown"] = int((bins == UNKNOWN_BIN).sum())

    if model is not None:
        vectors = backbone_features(model, eval_loader(loaded, config, batch_size), device)
        space = "backbone features"
    else:
        vectors = _shape_vectors(loaded)
        space = "Procrustes-aligned landmark shapes"
    keep = np.flatnonzero(np.isfinite(vectors).all(1))
    if len(keep) > max_faces:
        keep = np.sort(np.random.default_rng(seed).choice(keep, max_faces, replace=False))
    xy = tsne(vectors[keep], perplexity, seed)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "embedding.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "source", "yaw_deg", "yaw_bin", "x", "y"])
        for i, (x, y) in zip(keep, xy):
            label = names[bins[i]] if bins[i] >= 0 else "unknown"
            writer.writerow([i, loaded.records[i].source, f"{yaw[i]:.2f}", label, x, y])
    with (out / "pose_bins.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["yaw_bin", "num_faces"])
        writer.writerows(counts.items())
    title = f"t-SNE of {space}: {loaded.name} ({len(keep)} of {len(bins)} faces)"
    png = _plot(xy, bins[keep], names, counts, out / "embedding.png", title)
    paths = [out / "embedding.csv", out / "pose_bins.csv", png]
    return EmbeddingAnalysis(loaded.name, space, counts, len(keep), paths)


def _shape_vectors(loaded: LoadedSet) -> np.ndarray:
    landmarks = np.stack([r.landmarks for r in loaded.records])  # (N, L, 2)
    valid = np.stack([r.valid for r in loaded.records])  # (N, L)
    return align_shapes(landmarks, valid).reshape(len(landmarks), -1)  # (N, 2L)

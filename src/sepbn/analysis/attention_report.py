"""``sepbn analyze attention``: SepBN's weights π on a dataset, split by pose and attribute.

For each SepBN layer and channel group, the mean and standard deviation of π_{n,g,k} (Eq. 6)
over the faces of each yaw bin (:mod:`sepbn.analysis.pose_bins`) and, when the records carry
WFLW's attribute flags, over the faces with each flag. If the K sets specialise by pose (the
paper's motivation, Fig. 3) the bins' bars differ; if the attention has collapsed they are the
same one-hot bar everywhere. Also the three health numbers per layer of
:mod:`sepbn.nn.attention_health`, from the same weights.

Files written to ``out_dir``: ``attention.csv`` (one line per layer, group, attribute value),
``attention_yaw.png`` and, with attribute flags, ``attention_attributes.png``.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sepbn.analysis.attention import attention_by_label, collect_attention
from sepbn.analysis.inputs import eval_loader, load_model_and_faces
from sepbn.analysis.pose_bins import DEFAULT_YAW_EDGES, UNKNOWN_BIN, bin_names, face_yaw, yaw_bins
from sepbn.config import DatasetConfig
from sepbn.engine.checkpoint import CheckpointError
from sepbn.nn.attention_health import AttentionHealth, attention_health

__all__ = ["AttentionAnalysis", "Split", "analyze_attention", "attention_rows", "plot_split"]


@dataclass(frozen=True)
class Split:
    """A per-face label to split π by.

    Attributes:
        attribute: ``"yaw"`` or a WFLW attribute name.
        labels: ``(N,)`` ints in ``[0, len(names))``, -1 for faces left out.
        names: The label values, as written in the CSV.
    """

    attribute: str
    labels: np.ndarray
    names: list[str]


def attention_rows(
    weights: Mapping[str, np.ndarray], splits: Sequence[Split]
) -> list[dict[str, object]]:
    """The CSV lines: layer, group, attribute, value, num_faces, mean_pi_k..., std_pi_k...

    Args:
        weights: Layer name -> ``(N, G, K)`` π of every face.
        splits: How to split the faces.
    """
    rows: list[dict[str, object]] = []
    for layer, pi in weights.items():
        for split in splits:
            mean, std, count = attention_by_label(pi, split.labels, len(split.names))
            for g in range(pi.shape[1]):
                for b, value in enumerate(split.names):
                    row: dict[str, object] = {
                        "layer": layer,
                        "group": g,
                        "attribute": split.attribute,
                        "value": value,
                        "num_faces": int(count[b]),
                    }
                    row.update({f"mean_pi_{k}": float(mean[b, g, k]) for k in range(pi.shape[2])})
                    row.update({f"std_pi_{k}": float(std[b, g, k]) for k in range(pi.shape[2])})
                    rows.append(row)
    return rows


def _write_csv(rows: list[dict[str, object]], path: Path) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: f"{v:.6f}" if isinstance(v, float) else v for k, v in row.items()})
    return path


def plot_split(
    weights: Mapping[str, np.ndarray], split: Split, path: Path, title: str, xlabel: str
) -> Path:
    """One panel per layer and group: per label, one bar per set k (mean π, ± std)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    layers = list(weights)
    groups = max(pi.shape[1] for pi in weights.values())
    fig = Figure(figsize=(1.2 + 3.6 * groups, 0.8 + 2.6 * len(layers)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(layers), groups, squeeze=False)
    x = np.arange(len(split.names))
    for i, layer in enumerate(layers):
        pi = weights[layer]
        mean, std, count = attention_by_label(pi, split.labels, len(split.names))
        num_sets = pi.shape[2]
        width = 0.8 / num_sets
        for g in range(groups):
            ax = axes[i, g]
            if g >= pi.shape[1]:
                ax.set_visible(False)
                continue
            for k in range(num_sets):
                offset = (k - (num_sets - 1) / 2) * width
                ax.bar(
                    x + offset,
                    mean[:, g, k],
                    width,
                    yerr=std[:, g, k],
                    capsize=2,
                    label=f"set k={k}",
                )
            ax.set_ylim(0, 1.05)
            ax.set_title(f"{layer}, group {g}", fontsize="small")
            ax.set_xticks(
                x, [f"{n}\n({c} faces)" for n, c in zip(split.names, count)], fontsize="x-small"
            )
            ax.set_ylabel("attention weight π (0–1)", fontsize="small")
            ax.grid(axis="y", alpha=0.3)
            if i == len(layers) - 1:
                ax.set_xlabel(xlabel, fontsize="small")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(
        handles,
        labels,
        loc="outside lower center",
        ncols=len(labels),
        fontsize="small",
        title="mean π ± std over the faces",
    )
    fig.suptitle(title)
    fig.savefig(path, dpi=100)
    return path


@dataclass
class AttentionAnalysis:
    """What :func:`analyze_attention` measured and wrote.

    Attributes:
        dataset: The dataset's display name.
        health: Layer name -> its attention statistics on these faces.
        bin_counts: Yaw bin name -> number of faces (``"unknown"``: no yaw).
        rows: The lines of ``attention.csv``.
        paths: The files written.
    """

    dataset: str
    health: dict[str, AttentionHealth]
    bin_counts: dict[str, int]
    rows: list[dict[str, object]] = field(repr=False)
    paths: list[Path]

    def summary(self) -> str:
        """The three health numbers per layer, then the faces per yaw bin."""
        width = max(len(n) for n in self.health)
        lines = [f"{'layer':{width}}  entropy  input-dependence  usage per set"]
        for name, h in self.health.items():
            usage = " ".join(f"{u:.3f}" for u in h.usage)
            flag = "  COLLAPSED" if h.collapsed else ""
            lines.append(f"{name:{width}}  {h.entropy:7.3f}  {h.dependence:16.4f}  {usage}{flag}")
        counts = ", ".join(f"{k}: {v}" for k, v in self.bin_counts.items())
        lines.append(f"{self.dataset}: faces per yaw bin: {counts}")
        return "\n".join(lines)


def analyze_attention(
    checkpoint: str | Path,
    data: DatasetConfig,
    out_dir: str | Path,
    *,
    yaw_edges: Sequence[float] = DEFAULT_YAW_EDGES,
    device: str = "cpu",
    batch_size: int = 32,
) -> AttentionAnalysis:
    """Run ``checkpoint`` over ``data`` and report π per layer, group, yaw bin and attribute.

    Raises:
        CheckpointError: A bad checkpoint, one without SepBN layers or without a branch for
            the data's protocol.
        DatasetError: Unreadable data.
    """
    model, config, loaded = load_model_and_faces(checkpoint, data, device)
    try:
        weights, fields = collect_attention(
            model, eval_loader(loaded, config, batch_size), device, fields=("index",)
        )
    except ValueError as exc:
        raise CheckpointError(f"{checkpoint}: {exc}") from None
    order = fields["index"]  # (N,) record index of each row of weights
    names = bin_names(yaw_edges)
    yaw_labels = yaw_bins(face_yaw(loaded.records, loaded.protocol), yaw_edges)[order]
    splits = [Split("yaw", yaw_labels, names)]
    attribute_names = sorted({a for r in loaded.records for a in r.attributes})
    for a in attribute_names:
        present = np.array([bool(loaded.records[i].attributes.get(a, False)) for i in order])
        splits.append(Split(a, present.astype(np.int64), ["no", "yes"]))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = attention_rows(weights, splits)
    paths = [_write_csv(rows, out / "attention.csv")]
    n = len(order)
    paths.append(
        plot_split(
            weights,
            splits[0],
            out / "attention_yaw.png",
            f"SepBN attention by head yaw: {loaded.name} ({n} faces)",
            "yaw bin (degrees; + = nose to the image's left)",
        )
    )
    if attribute_names:
        # A face counts once for every flag it carries: stack the faces of each flag.
        members = [np.flatnonzero(split.labels == 1) for split in splits[1:]]
        stacked = {layer: np.concatenate([pi[m] for m in members]) for layer, pi in weights.items()}
        labels = np.concatenate([np.full(len(m), a) for a, m in enumerate(members)])
        paths.append(
            plot_split(
                stacked,
                Split("attribute", labels, attribute_names),
                out / "attention_attributes.png",
                f"SepBN attention by WFLW attribute: {loaded.name} (faces with each flag)",
                "attribute flag of the face",
            )
        )
    counts = {name: int((yaw_labels == b).sum()) for b, name in enumerate(names)}
    counts["unknown"] = int((yaw_labels == UNKNOWN_BIN).sum())
    health = {name: attention_health(pi) for name, pi in weights.items()}
    return AttentionAnalysis(loaded.name, health, counts, rows, paths)

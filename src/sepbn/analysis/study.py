"""Seeded studies: mean ± std per setting and paired differences with a 95% interval.

The effects the paper reports are a few percent of NME, about the size of the seed-to-seed
spread of one setting, so a study runs every setting (a **cell**) with several seeds and
compares two cells **paired**: the runs of one seed share the data order and augmentation
draws, so the per-seed difference ``b - a`` removes most of that spread. Its mean gets a
Student-t 95% interval over the seeds; an interval that excludes 0 is a difference the study
can tell.

A study folder (written by ``scripts/cnt_study.py``) holds ``study.json``::

    {"title": ..., "cells": [names], "pairs": [{"a": cell, "b": cell, "stage_a": "final",
     "stage_b": "final", "label": ..., "test": ..., "metric": "nme"}], "tests": [...]}

and one run directory per cell and seed, ``<cell>/s<seed>/``, with ``eval/summary.json``
(``"<stage>/<test set>" -> metrics``) and ``<stage>/metrics.jsonl``. ``"final"`` is a run's
last stage: ``finetune_<protocol>`` when it has one (CNT stage 2), else ``stage1``.

``sepbn report --study FOLDER`` prints :func:`render_study`.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats as scipy_stats

from sepbn.errors import SepbnError
from sepbn.nn.attention_health import AttentionHealth, collapsed_layers

__all__ = [
    "PairedDifference",
    "StudyError",
    "StudyRun",
    "load_study",
    "paired_difference",
    "render_study",
]

#: The columns of the cell table: metric key in ``summary.json`` -> header and scale.
METRICS: dict[str, tuple[str, float]] = {
    "nme": ("NME (%)", 100.0),
    "failure_rate": ("FR@10 (%)", 100.0),
    "auc": ("AUC@10", 1.0),
}
#: Head-pose bins of every evaluation (:mod:`sepbn.analysis.pose_bins`), in column order.
POSE_BINS = ("frontal", "moderate", "profile")


class StudyError(SepbnError, ValueError):
    """A study folder that cannot be read."""


@dataclass
class StudyRun:
    """One run of a cell: its seed, test metrics and attention health.

    Attributes:
        seed: From the folder name ``s<seed>``.
        summary: ``"<stage>/<test set>" -> {metric: value}`` (``eval/summary.json``).
        health: ``{"layers", "collapsed", "entropy", "dependence"}`` of stage 1's last
            logged attention statistics; empty for a model without SepBN.
    """

    seed: int
    summary: dict[str, dict[str, float]]
    health: dict[str, float] = field(default_factory=dict)

    def final_stage(self) -> str:
        stages = {key.split("/", 1)[0] for key in self.summary}
        finetuned = sorted(s for s in stages if s.startswith("finetune_"))
        return finetuned[0] if finetuned else "stage1"

    def value(self, stage: str, test: str, metric: str) -> float | None:
        stage = self.final_stage() if stage == "final" else stage
        return self.summary.get(f"{stage}/{test}", {}).get(metric)


@dataclass
class PairedDifference:
    """``b - a`` over the seeds both cells have.

    Attributes:
        seeds: The paired seeds.
        differences: One ``b - a`` per seed.
        mean: Their mean.
        half_width: Half the Student-t 95% interval of the mean (NaN for one seed).
    """

    seeds: list[int]
    differences: list[float]
    mean: float
    half_width: float

    @property
    def excludes_zero(self) -> bool:
        return not math.isnan(self.half_width) and abs(self.mean) > self.half_width


def paired_difference(a: Mapping[int, float], b: Mapping[int, float]) -> PairedDifference:
    """The paired difference ``b - a`` of two cells' values per seed, with a 95% interval.

    Args:
        a, b: Seed -> value; only seeds in both count.

    Raises:
        StudyError: No common seed.
    """
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise StudyError(f"no seed in common (a: {sorted(a)}, b: {sorted(b)})")
    diffs = [b[s] - a[s] for s in seeds]
    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        return PairedDifference(seeds, diffs, mean, math.nan)
    t = float(scipy_stats.t.ppf(0.975, len(diffs) - 1))
    half = t * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return PairedDifference(seeds, diffs, mean, half)


def _health(stage_dir: Path) -> dict[str, float]:
    """Summary of the last ``attn/<layer>/...`` row of a stage's ``metrics.jsonl``."""
    path = stage_dir / "metrics.jsonl"
    if not path.is_file():
        return {}
    last: dict[str, Any] = {}
    for line in path.read_text().splitlines():
        row = json.loads(line) if line.strip() else {}
        if any(k.startswith("attn/") for k in row):
            last = row
    # The row's attn/<layer>/entropy and /dependence (as_row writes both for each layer).
    names = [m.group(1) for key in last if (m := re.fullmatch(r"attn/(.+)/entropy", key))]
    if not names:
        return {}
    layers = {
        name: AttentionHealth(
            entropy=float(last[f"attn/{name}/entropy"]),
            usage=np.empty(0),
            dependence=float(last[f"attn/{name}/dependence"]),
            num_samples=0,
        )
        for name in names
    }
    return {
        "layers": float(len(layers)),
        "collapsed": float(len(collapsed_layers(layers))),
        "entropy": statistics.fmean(h.entropy for h in layers.values()),
        "dependence": statistics.fmean(h.dependence for h in layers.values()),
    }


def load_study(root: str | Path) -> tuple[dict[str, Any], dict[str, list[StudyRun]]]:
    """The study's ``study.json`` and, per cell, its finished runs (seed order).

    A run without ``eval/summary.json`` (still running, or failed) is left out; the tables
    show each cell's seed count.

    Raises:
        StudyError: No ``study.json`` or an unreadable one.
    """
    root = Path(root)
    spec_path = root / "study.json"
    if not spec_path.is_file():
        raise StudyError(f"{root}: no study.json (written by scripts/cnt_study.py)")
    try:
        spec = json.loads(spec_path.read_text())
    except json.JSONDecodeError as exc:
        raise StudyError(f"{spec_path}: line {exc.lineno}: {exc.msg}") from exc
    cells: dict[str, list[StudyRun]] = {}
    for cell in spec.get("cells", []):
        runs = []
        for run_dir in sorted((root / cell).glob("s*"), key=lambda p: p.name):
            summary_path = run_dir / "eval" / "summary.json"
            if not re.fullmatch(r"s\d+", run_dir.name) or not summary_path.is_file():
                continue
            summary = json.loads(summary_path.read_text())
            runs.append(StudyRun(int(run_dir.name[1:]), summary, _health(run_dir / "stage1")))
        cells[cell] = sorted(runs, key=lambda r: r.seed)
    return spec, cells


def _mean_std(values: Sequence[float], scale: float, digits: int) -> str:
    if not values:
        return "–"
    mean = statistics.fmean(values) * scale
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values) * scale:.{digits}f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return out


def _percent(
    runs: Sequence[StudyRun], stage: str, test: str, metric: str = "nme"
) -> dict[int, float]:
    """Seed -> ``metric`` in % of the runs that have ``stage`` evaluated on ``test``."""
    out = {}
    for run in runs:
        value = run.value(stage, test, metric)
        if value is not None:
            out[run.seed] = value * 100
    return out


def render_study(root: str | Path) -> str:
    """The study as Markdown: per test set a table of cells (mean ± std over seeds of NME,
    FR@10, AUC@10 and NME per head-pose bin, for stage 1 and the final stage), the attention
    health per cell, and the paired differences of ``study.json``'s pairs (NME, or the pair's
    ``metric`` such as ``nme_pose_profile``, in percentage points, with each seed's difference
    and the 95% interval)."""
    spec, cells = load_study(root)
    lines = [f"# {spec.get('title', Path(root).name)}", ""]
    for test in spec.get("tests", []):
        lines += [f"## {test}", ""]
        pose_counts: dict[str, float] = {}
        rows = []
        for cell, runs in cells.items():
            for stage in ("stage1", "final"):
                if not runs:
                    continue
                if stage == "final" and runs[0].final_stage() == "stage1":
                    continue
                present = [r for r in runs if r.value(stage, test, "nme") is not None]
                if not present:
                    continue
                name = runs[0].final_stage() if stage == "final" else "stage1"
                row = [cell, name, str(len(present))]
                for metric, (_, scale) in METRICS.items():
                    vals = [r.value(stage, test, metric) for r in present]
                    row.append(
                        _mean_std([v for v in vals if v is not None], scale, 2 if scale > 1 else 3)
                    )
                for b in POSE_BINS:
                    vals = [r.value(stage, test, f"nme_pose_{b}") for r in present]
                    row.append(_mean_std([v for v in vals if v is not None], 100.0, 2))
                    count = present[0].value(stage, test, f"count_pose_{b}")
                    if count is not None:
                        pose_counts[b] = count
                rows.append(row)
        if not rows:
            lines += ["(no finished run)", ""]
            continue
        header = ["cell", "stage", "seeds", *(h for h, _ in METRICS.values())]
        header += [f"NME {b} (%)" for b in POSE_BINS]
        lines += _table(header, rows)
        if pose_counts:
            counts = ", ".join(f"{b} {int(pose_counts[b])}" for b in POSE_BINS if b in pose_counts)
            lines += ["", f"Faces per head-pose bin: {counts}."]
        lines.append("")
    health_rows = []
    for cell, runs in cells.items():
        with_health = [r.health for r in runs if r.health]
        if with_health:
            health_rows.append(
                [
                    cell,
                    str(len(with_health)),
                    _mean_std([h["collapsed"] for h in with_health], 1.0, 1)
                    + f" of {int(with_health[0]['layers'])}",
                    _mean_std([h["entropy"] for h in with_health], 1.0, 3),
                    _mean_std([h["dependence"] for h in with_health], 1.0, 3),
                ]
            )
    if health_rows:
        lines += ["## Attention health (stage 1, last logged)", ""]
        lines += _table(
            ["cell", "seeds", "collapsed layers", "mean entropy", "mean dependence"], health_rows
        )
        lines.append("")
    pair_rows = []
    for pair in spec.get("pairs", []):
        a, b = pair["a"], pair["b"]
        test = pair.get("test", (spec.get("tests") or [""])[0])
        stage_a, stage_b = pair.get("stage_a", "final"), pair.get("stage_b", "final")
        metric = pair.get("metric", "nme")
        va = _percent(cells.get(a, []), stage_a, test, metric)
        vb = _percent(cells.get(b, []), stage_b, test, metric)
        if not set(va) & set(vb):
            continue
        d = paired_difference(va, vb)
        interval = (
            "–"
            if math.isnan(d.half_width)
            else f"[{d.mean - d.half_width:+.2f}, {d.mean + d.half_width:+.2f}]"
        )
        relative = d.mean / statistics.fmean(va[s] for s in d.seeds) * 100
        pair_rows.append(
            [
                pair.get("label", f"{b} − {a}"),
                test if metric == "nme" else f"{test}, {metric}",
                ", ".join(f"{x:+.2f}" for x in d.differences),
                f"{d.mean:+.2f} ({relative:+.1f}%)",
                interval,
                "yes" if d.excludes_zero else "no",
            ]
        )
    if pair_rows:
        lines += ["## Paired differences (NME, percentage points; negative: b is better)", ""]
        lines += _table(
            ["b − a", "test set", "per seed", "mean (relative)", "95% interval", "tells?"],
            pair_rows,
        )
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"

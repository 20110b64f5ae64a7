"""The table of the τ-schedule experiment (docs/analysis.md) from its run directories.

Usage: python scripts/tau_table.py runs/tau

For each run ``<schedule>_s<seed>``: the final NME on the 300-W common photos and, per SepBN
layer, the three attention-health numbers of the last validation (sepbn.nn.attention_health).
Prints one Markdown table of schedules (mean ± std over seeds) and one per-layer table.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path


def _last_row(run: Path) -> dict:
    rows = [
        json.loads(line) for line in (run / "stage1" / "metrics.jsonl").read_text().splitlines()
    ]
    return [r for r in rows if "val_nme" in r][-1]


def _mean_std(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    values = [v * scale for v in values]
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def main(root: Path) -> None:
    runs = sorted(p for p in root.iterdir() if (p / "eval" / "summary.json").is_file())
    by_schedule: dict[str, list[Path]] = defaultdict(list)
    for run in runs:
        by_schedule[re.sub(r"_s\d+$", "", run.name)].append(run)
    print(
        "| τ schedule | seeds | NME (%) | mean entropy | mean input dependence | collapsed layers |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    layers: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for schedule, members in by_schedule.items():
        nmes, entropies, dependences, collapsed = [], [], [], []
        for run in members:
            summary = json.loads((run / "eval" / "summary.json").read_text())
            nmes.append(next(v["nme"] for k, v in summary.items() if k.startswith("stage1/")))
            row = _last_row(run)
            names = sorted({k.split("/")[1] for k in row if k.startswith("attn/")})
            ent = [row[f"attn/{n}/entropy"] for n in names]
            dep = [row[f"attn/{n}/dependence"] for n in names]
            entropies.append(statistics.mean(ent))
            dependences.append(statistics.mean(dep))
            collapsed.append(sum(e < 0.1 and d < 0.01 for e, d in zip(ent, dep)))
            for n, e, d in zip(names, ent, dep):
                layers[f"{schedule}"][f"{n} entropy"].append(e)
                layers[f"{schedule}"][f"{n} dependence"].append(d)
        print(
            f"| {schedule} | {len(members)} | {_mean_std(nmes, 100)} | "
            f"{_mean_std(entropies, digits=3)} | {_mean_std(dependences, digits=3)} | "
            f"{'/'.join(str(c) for c in collapsed)} of {len(names)} |"
        )
    print()
    names = sorted({k.rsplit(" ", 1)[0] for sched in layers.values() for k in sched})
    print("| layer | " + " | ".join(f"{s}: entropy / dependence" for s in layers) + " |")
    print("| --- |" + " --- |" * len(layers))
    for name in names:
        cells = [
            f"{_mean_std(sched[f'{name} entropy'], digits=3)} / "
            f"{_mean_std(sched[f'{name} dependence'], digits=3)}"
            for sched in layers.values()
        ]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/tau"))

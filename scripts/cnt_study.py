"""The CNT / SepBN studies of docs/analysis.md: many seeded `sepbn train` runs, two at a time.

Plans (each a list of cells; a cell is one training setting, run once per seed):

- ``diagnose``: why CNT lost in ``make demo`` (synthetic faces, the demo's network and
  budget). A one-branch CNT model against the plain model, the old branch against the new one,
  four stage-2 settings from one stage 1, 1500 more 68-point faces in the same branch or in a
  second one, and CNT in its motivating setting (a small target set of 300 68-point faces
  beside 1500 98-point faces) with sampling by size against balanced sampling, the loss
  weighted by faces against per protocol, and longer stage 2s. About 45 minutes.
- ``real``: the paper's two claims on real faces. {BN, SepBN} x {300-W alone, CNT with 300-W +
  MTFL then stage 2 on 300-W} x {all 1675 300-W training crops, a 300-face subset}, plus the
  paper's SGD schedule and weight decay on the attention MLP beside Adam (SepBN, 300-W alone).
  2000 steps a run at 64 px (configs/study/); about 75 minutes.

Every run of a plan takes the same number of optimizer steps (``train.steps_per_epoch``), so
single-set and CNT runs are comparable, and runs of one seed see the same data order (paired).
A run directory that already holds ``eval/summary.json`` is skipped, so an interrupted plan
continues where it stopped. Stage-2-only cells start from another cell's stage 1 of the same
seed (``finetune.init``) and run after it.

Usage (from the repository root, after ``make test`` built .venv)::

    SEPBN_DATA=../shared/data nohup .venv/bin/python scripts/cnt_study.py diagnose \\
        --out runs/diagnose > runs/diagnose.log 2>&1 &
    .venv/bin/sepbn report --study runs/diagnose        # the tables
    SEPBN_DATA=../shared/data nohup .venv/bin/python scripts/cnt_study.py real \\
        --out runs/real > runs/real.log 2>&1 &
    .venv/bin/sepbn report --study runs/real

Each run uses one thread (OMP_NUM_THREADS=1, OMP_WAIT_POLICY=PASSIVE); ``--jobs`` runs go
in parallel (2 on this project's 2-core machine).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Cell:
    """One training setting of a plan.

    Attributes:
        name: Folder name under the plan's output (``<out>/<name>/s<seed>``).
        config: The YAML config, relative to the repository root.
        sets: ``--set`` overrides.
        init_from: A cell whose stage-1 ``last.pt`` (same seed) this cell fine-tunes; the
            cell then trains no stage 1.
    """

    name: str
    config: str
    sets: list[str] = field(default_factory=list)
    init_from: str | None = None


def _finetune(**fields: object) -> str:
    items = ", ".join(f"{k}: {json.dumps(v)}" for k, v in fields.items())
    return f"finetune={{{items}}}"


# The demo's budget: 15 epochs of 94 steps (1500 faces / 16), stage 2 a fifth of it.
DEMO_STEPS = ["train.steps_per_epoch=94"]
# Stage 2 with the branch at stage 1's peak rate (2e-3), the setting these cells ran with
# (finetune.head_lr_scale 1.0, the default); the *_lowlr and *_ftlow* cells use a tenth.
DEMO_FT = {
    "targets": ["300w"],
    "epochs": 3,
    "warmup_epochs": 0,
    "backbone_lr": 1e-7,
    "head_lr": 2e-3,
}
SMALL68 = (
    "{kind: synthetic, protocol: 300w, name: train68, options: {num_faces: 300, start_index: 0}}"
)
AUX98 = (
    "{kind: synthetic, protocol: wflw, name: aux98,"
    " options: {num_faces: 1500, start_index: 100000}}"
)


TRAIN68 = (
    "{kind: synthetic, protocol: 300w, name: train68, options: {num_faces: 1500, start_index: 0}}"
)
MORE68 = (
    "{kind: synthetic, protocol: 300w, name: more68,"
    " options: {num_faces: 1500, start_index: 100000}}"
)
COPY68 = (
    "{kind: synthetic, protocol: 300w_b, name: copy68,"
    " options: {num_faces: 1500, start_index: 100000, layout: 300w}}"
)


def _copy_protocol() -> str:
    """``protocols=[...]``: ``300w_b``, the 300-W protocol under another name (own branch)."""
    from sepbn.data.protocols import get_protocol

    p = get_protocol("300w")
    spec = {
        "name": "300w_b",
        "num_points": p.num_points,
        "flip_perm": list(p.flip_perm),
        "norm": p.norm,
        "norm_points": list(p.norm_points or ()),
    }
    return f"protocols=[{json.dumps(spec)}]"


def diagnose_plan() -> list[Cell]:
    bn, sepbn = "configs/demo/bn.yaml", "configs/demo/sepbn.yaml"
    old_ft = _finetune(**DEMO_FT, freeze_backbone_stats=False)
    new_ft = _finetune(**DEMO_FT)
    small_cnt = [f"data.train=[{SMALL68}, {AUX98}]", new_ft, *DEMO_STEPS]
    return [
        Cell("plain_bn", bn, DEMO_STEPS),
        Cell("cnt1_oldbranch_oldft_bn", bn, ["model.branch_norm=true", old_ft, *DEMO_STEPS]),
        Cell("cnt1_bn", bn, [new_ft, *DEMO_STEPS]),
        # Stage 2 from cnt1_bn's stage 1: which of the two suspects hurt.
        Cell("ft_restart", bn, [old_ft, *DEMO_STEPS], init_from="cnt1_bn"),
        Cell(
            "ft_lowlr",
            bn,
            [_finetune(**{**DEMO_FT, "head_lr": 2e-4}, freeze_backbone_stats=False), *DEMO_STEPS],
            init_from="cnt1_bn",
        ),
        Cell(
            "ft_freeze_lowlr",
            bn,
            [_finetune(**{**DEMO_FT, "head_lr": 2e-4}), *DEMO_STEPS],
            init_from="cnt1_bn",
        ),
        # 1500 more 68-point faces: merged into the one branch, or as a branch of their own.
        Cell("merged68_bn", bn, [f"data.train=[{TRAIN68}, {MORE68}]", *DEMO_STEPS]),
        Cell(
            "copy68_cnt_bn",
            bn,
            [_copy_protocol(), f"data.train=[{TRAIN68}, {COPY68}]", new_ft, *DEMO_STEPS],
        ),
        # The motivating setting: a small target set beside a larger one of another protocol.
        Cell("small_single_sepbn", sepbn, [f"data.train=[{SMALL68}]", *DEMO_STEPS]),
        Cell("small_cnt_sepbn", sepbn, small_cnt),
        Cell("small_cnt_sepbn_balanced", sepbn, [*small_cnt, "data.sampling=balanced"]),
        # Stage 2 at a tenth of the peak rate (frozen statistics) from the same stage 1.
        Cell(
            "small_cnt_sepbn_ftlow",
            sepbn,
            [*small_cnt[:1], _finetune(**{**DEMO_FT, "head_lr": 2e-4}), *DEMO_STEPS],
            init_from="small_cnt_sepbn",
        ),
        # A longer one at that rate from small_cnt_sepbn's stage 1 (its 68-point branch got
        # a sixth of stage 1's steps): 9 epochs instead of 3.
        Cell(
            "small_cnt_sepbn_ftlow9",
            sepbn,
            [*small_cnt[:1], _finetune(**{**DEMO_FT, "epochs": 9, "head_lr": 2e-4}), *DEMO_STEPS],
            init_from="small_cnt_sepbn",
        ),
        Cell("small_cnt_sepbn_protmean", sepbn, [*small_cnt, "optim.protocol_weighting=protocols"]),
    ]


REAL = "configs/study/300w_mtfl.yaml"


def real_plan() -> list[Cell]:
    cells = []
    for regime, subset in (("full", None), ("small", 300)):
        data = [] if subset is None else [f"data.train.0.subset={subset}"]
        for norm in ("bn", "sepbn"):
            cells.append(Cell(f"{regime}_single_{norm}", REAL, [f"model.norm={norm}", *data]))
            cells.append(
                Cell(
                    f"{regime}_cnt_{norm}",
                    "configs/study/300w_mtfl_cnt.yaml",
                    [f"model.norm={norm}", *data],
                )
            )
    # Stage 2 as the paper describes it: the branch "adjusted as described above", i.e. the
    # whole stage-1 schedule again (20 epochs, peak rate, warm-up) with the backbone at 1e-7,
    # from the same stage 1 as the study config's short stage 2.
    long_ft = "finetune={targets: [300w], epochs: 20, warmup_epochs: 2, head_lr_scale: 1.0}"
    for regime, subset in (("full", None), ("small", 300)):
        data = [] if subset is None else [f"data.train.0.subset={subset}"]
        for norm in ("bn", "sepbn"):
            cells.append(
                Cell(
                    f"{regime}_cnt_{norm}_ftlong",
                    "configs/study/300w_mtfl_cnt.yaml",
                    [f"model.norm={norm}", *data, long_ft],
                    init_from=f"{regime}_cnt_{norm}",
                )
            )
    # Balanced sampling for the small target (300 faces beside 7650: 4% of stage 1's faces).
    cells.append(
        Cell(
            "small_cnt_sepbn_balanced",
            "configs/study/300w_mtfl_cnt.yaml",
            ["model.norm=sepbn", "data.train.0.subset=300", "data.sampling=balanced"],
        )
    )
    # The paper's optimizer (Sec. V-A: SGD, momentum 0.9, weight decay 5e-4, warm-up 120 of
    # 500 epochs then cosine to 5e-6) scaled to the budget: warm-up 5 of 20 epochs, peak rate
    # 1e-2 (the paper's 1e-3 is for ~1000x more steps), beside Adam.
    sgd = [
        "optim.name=sgd",
        "optim.lr=1.0e-2",
        "optim.min_lr=5.0e-6",
        "optim.weight_decay=5.0e-4",
        "optim.momentum=0.9",
        "optim.warmup_epochs=5",
    ]
    cells.append(Cell("full_single_sepbn_sgd", REAL, ["model.norm=sepbn", *sgd]))
    # Adam with the paper's weight decay on the attention blocks only (their logits grow
    # unchecked under Adam without weight decay: docs/analysis.md, the tau experiment).
    cells.append(
        Cell(
            "full_single_sepbn_attnwd",
            REAL,
            ["model.norm=sepbn", "optim.attention_weight_decay=5.0e-4"],
        )
    )
    return cells


def _pair(
    a: str, b: str, label: str, stage_a: str = "final", stage_b: str = "final", **kw: str
) -> dict:
    return {"a": a, "b": b, "label": label, "stage_a": stage_a, "stage_b": stage_b, **kw}


def diagnose_spec() -> dict:
    return {
        "title": "Why CNT lost in make demo: synthetic faces, 3 seeds",
        "tests": ["test68"],
        "pairs": [
            _pair(
                "plain_bn",
                "cnt1_oldbranch_oldft_bn",
                "one-branch CNT, old branch (conv+BN+act), stage 1 − plain",
                stage_b="stage1",
            ),
            _pair(
                "plain_bn",
                "cnt1_bn",
                "one-branch CNT, new branch (identity conv+act), stage 1 − plain",
                stage_b="stage1",
            ),
            _pair(
                "cnt1_oldbranch_oldft_bn",
                "cnt1_oldbranch_oldft_bn",
                "old branch: old stage 2 − its stage 1",
                stage_a="stage1",
            ),
            _pair(
                "cnt1_bn",
                "ft_restart",
                "old stage 2 (stats update, head lr 2e-3) − stage 1",
                stage_a="stage1",
            ),
            _pair(
                "cnt1_bn",
                "ft_lowlr",
                "stage 2, stats update, head lr 2e-4 − stage 1",
                stage_a="stage1",
            ),
            _pair(
                "cnt1_bn",
                "cnt1_bn",
                "default stage 2 (frozen stats, head lr 2e-3) − stage 1",
                stage_a="stage1",
            ),
            _pair(
                "cnt1_bn",
                "ft_freeze_lowlr",
                "stage 2, frozen stats, head lr 2e-4 − stage 1",
                stage_a="stage1",
            ),
            _pair("plain_bn", "cnt1_bn", "one-branch CNT after the default stage 2 − plain"),
            _pair("plain_bn", "merged68_bn", "1500 more 68-point faces, same branch − plain"),
            _pair(
                "plain_bn",
                "copy68_cnt_bn",
                "the same 1500 as a second 68-point branch, stage 1 − plain",
                stage_b="stage1",
            ),
            _pair(
                "merged68_bn",
                "copy68_cnt_bn",
                "second branch, stage 1 − same branch",
                stage_b="stage1",
            ),
            _pair("plain_bn", "copy68_cnt_bn", "second branch after stage 2 − plain"),
            _pair(
                "small_single_sepbn",
                "small_cnt_sepbn",
                "small target: CNT stage 1 − single",
                stage_b="stage1",
            ),
            _pair(
                "small_single_sepbn", "small_cnt_sepbn", "small target: CNT after stage 2 − single"
            ),
            _pair(
                "small_single_sepbn",
                "small_cnt_sepbn_ftlow",
                "small target: CNT after stage 2 at a tenth of the rate − single",
            ),
            _pair(
                "small_single_sepbn",
                "small_cnt_sepbn_ftlow9",
                "small target: CNT after a 3x longer one at a tenth − single",
            ),
            _pair(
                "small_cnt_sepbn",
                "small_cnt_sepbn_balanced",
                "balanced sampling − by size (after stage 2)",
            ),
            _pair(
                "small_cnt_sepbn",
                "small_cnt_sepbn_protmean",
                "loss mean per protocol − per face (after stage 2)",
            ),
        ],
    }


def real_spec() -> dict:
    pairs = []
    for regime in ("full", "small"):
        r = f"{regime}:"
        pairs += [
            _pair(f"{regime}_single_bn", f"{regime}_single_sepbn", f"{r} SepBN − BN, 300-W alone"),
            _pair(f"{regime}_cnt_bn", f"{regime}_cnt_sepbn", f"{r} SepBN − BN, CNT after stage 2"),
            _pair(
                f"{regime}_single_bn",
                f"{regime}_cnt_bn",
                f"{r} CNT stage 1 − 300-W alone, BN",
                stage_b="stage1",
            ),
            _pair(
                f"{regime}_single_bn",
                f"{regime}_cnt_bn",
                f"{r} CNT after stage 2 − 300-W alone, BN",
            ),
            _pair(
                f"{regime}_single_sepbn",
                f"{regime}_cnt_sepbn",
                f"{r} CNT stage 1 − 300-W alone, SepBN",
                stage_b="stage1",
            ),
            _pair(
                f"{regime}_single_sepbn",
                f"{regime}_cnt_sepbn",
                f"{r} CNT after stage 2 − 300-W alone, SepBN",
            ),
            _pair(
                f"{regime}_single_bn",
                f"{regime}_cnt_sepbn",
                f"{r} CNT+SepBN after stage 2 − BN 300-W alone",
            ),
            _pair(
                f"{regime}_cnt_bn",
                f"{regime}_cnt_sepbn",
                f"{r} SepBN − BN on MTFL's AFLW faces, CNT stage 1",
                stage_a="stage1",
                stage_b="stage1",
                test="mtfl_aflw_test",
            ),
        ]
    # SepBN's premise is the imbalanced pose sub-domains: its effect per head-pose bin, on
    # MTFL's AFLW faces (440 profiles) and on 300-W (124 moderate, 12 profile faces).
    for regime in ("full", "small"):
        for b in ("frontal", "moderate", "profile"):
            pairs.append(
                _pair(
                    f"{regime}_cnt_bn",
                    f"{regime}_cnt_sepbn",
                    f"{regime}: SepBN − BN, CNT stage 1, {b} faces",
                    stage_a="stage1",
                    stage_b="stage1",
                    test="mtfl_aflw_test",
                    metric=f"nme_pose_{b}",
                )
            )
        pairs.append(
            _pair(
                f"{regime}_single_bn",
                f"{regime}_single_sepbn",
                f"{regime}: SepBN − BN, 300-W alone, moderate faces",
                metric="nme_pose_moderate",
            )
        )
    for regime in ("full", "small"):
        for norm in ("bn", "sepbn"):
            pairs.append(
                _pair(
                    f"{regime}_single_{norm}",
                    f"{regime}_cnt_{norm}_ftlong",
                    f"{regime}: CNT after the paper-length stage 2 − 300-W alone, {norm}",
                )
            )
    pairs.append(
        _pair(
            "small_cnt_sepbn",
            "small_cnt_sepbn_balanced",
            "small: CNT+SepBN balanced sampling − by size, after stage 2",
        )
    )
    pairs += [
        _pair(
            "full_single_sepbn",
            "full_single_sepbn_sgd",
            "full: SepBN 300-W alone, SGD (paper, scaled) − Adam",
        ),
        _pair(
            "full_single_sepbn",
            "full_single_sepbn_attnwd",
            "full: SepBN 300-W alone, Adam + attention weight decay 5e-4 − Adam",
        ),
    ]
    return {
        "title": "The paper's two claims on real faces: 300-W + MTFL, 3 seeds",
        "tests": ["300w_common", "mtfl_aflw_test"],
        "pairs": pairs,
    }


PLANS = {"diagnose": (diagnose_plan, diagnose_spec), "real": (real_plan, real_spec)}


def run_cell(cell: Cell, seed: int, out: Path) -> str:
    run_dir = out / cell.name / f"s{seed}"
    if (run_dir / "eval" / "summary.json").is_file():
        return f"{cell.name} s{seed}: done before"
    sets = [f"seed={seed}", "train.progress=false", "train.tensorboard=false", *cell.sets]
    if cell.init_from is not None:
        init = out / cell.init_from / f"s{seed}" / "stage1" / "last.pt"
        sets.append(f"finetune.init={init}")
    cmd = [sys.executable, "-m", "sepbn.cli", "-q", "train", cell.config, "--run-dir", str(run_dir)]
    for s in sets:
        cmd += ["--set", s]
    run_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    env.setdefault("SEPBN_DATA", str(ROOT.parent / "shared" / "data"))
    t0 = time.time()
    with open(run_dir / "train.log", "w") as log:
        log.write(" ".join(cmd) + "\n")
        log.flush()
        rc = subprocess.call(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    return f"{cell.name} s{seed}: exit {rc} after {time.time() - t0:.0f} s"


def warm_caches(cells: list[Cell], out: Path) -> None:
    """Prepare every crop cache of the plan before runs start in parallel: one tiny run (one
    step, then the test sets) per distinct config and data override, one after the other, so
    that no two runs write the same cache at once. Configs without ``data.cache_dir``
    (synthetic faces) have nothing to prepare and are left out."""
    from sepbn.config import apply_overrides, load_config

    seen: set[tuple[str, ...]] = set()
    for cell in cells:
        key = (cell.config, *(s for s in cell.sets if s.startswith(("data.", "protocols="))))
        if cell.init_from is not None or key in seen:
            continue
        seen.add(key)
        config = apply_overrides(load_config(ROOT / cell.config), cell.sets)
        if config.data.cache_dir is None:
            continue
        tiny = ["optim.epochs=1", "optim.warmup_epochs=0", "train.steps_per_epoch=1"]
        if config.finetune is not None:
            tiny.append("finetune.epochs=1")
        warm = Cell(f"_warm/{len(seen)}", cell.config, [*cell.sets, *tiny])
        print(run_cell(warm, 0, out), flush=True)
    shutil.rmtree(out / "_warm", ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("plan", choices=sorted(PLANS))
    parser.add_argument("--out", type=Path, required=True, help="folder of the run directories")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel, one thread each")
    parser.add_argument("--only", nargs="+", help="run only these cells")
    args = parser.parse_args(argv)
    plan, spec = PLANS[args.plan]
    cells = plan()
    if args.only:
        unknown = sorted(set(args.only) - {c.name for c in cells})
        if unknown:
            parser.error(f"unknown cells {unknown}; valid: {[c.name for c in cells]}")
        cells = [c for c in cells if c.name in args.only]
    args.out.mkdir(parents=True, exist_ok=True)
    study = {**spec(), "cells": [c.name for c in plan()], "seeds": args.seeds}
    (args.out / "study.json").write_text(json.dumps(study, indent=1) + "\n")
    warm_caches(cells, args.out)
    # First every cell that trains its own stage 1 (seed-major, so every cell has seed 0
    # early), then the stage-2-only cells.
    phases = [[c for c in cells if c.init_from is None], [c for c in cells if c.init_from]]
    failed = 0
    for phase in phases:
        jobs = [(c, s) for s in args.seeds for c in phase]
        with ThreadPoolExecutor(args.jobs) as pool:
            for line in pool.map(lambda job: run_cell(job[0], job[1], args.out), jobs):
                print(line, flush=True)
                failed += " exit 0 " not in line and "done before" not in line
    print(f"{args.plan}: all runs finished, {failed} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

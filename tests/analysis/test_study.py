"""Seeded studies: paired differences by hand, and the tables of a hand-made study folder."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from sepbn.analysis.study import StudyError, load_study, paired_difference, render_study


def test_paired_difference_by_hand() -> None:
    a = {0: 5.0, 1: 6.0, 2: 7.0, 9: 1.0}
    b = {0: 6.0, 1: 8.0, 2: 10.0}
    d = paired_difference(a, b)
    assert d.seeds == [0, 1, 2] and d.differences == [1.0, 2.0, 3.0]
    # mean 2, sample std 1, t(0.975, 2 df) = 4.302653 -> half width 4.302653 / sqrt(3)
    assert d.mean == pytest.approx(2.0)
    assert d.half_width == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    assert not d.excludes_zero  # 2 < 2.484
    tight = paired_difference({0: 0.0, 1: 0.0, 2: 0.0}, {0: 1.0, 1: 1.1, 2: 0.9})
    assert tight.excludes_zero
    one = paired_difference({0: 1.0}, {0: 2.0})
    assert math.isnan(one.half_width) and not one.excludes_zero
    with pytest.raises(StudyError, match="no seed in common"):
        paired_difference({0: 1.0}, {1: 1.0})


def _run(root: Path, cell: str, seed: int, summary: dict, attn: dict | None = None) -> None:
    run = root / cell / f"s{seed}"
    (run / "eval").mkdir(parents=True)
    (run / "eval" / "summary.json").write_text(json.dumps(summary))
    (run / "stage1").mkdir()
    rows = [{"epoch": 1, "train_loss": 0.1}]
    if attn:
        rows.append({"epoch": 2, **attn})
    (run / "stage1" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_render_study_tables(tmp_path: Path) -> None:
    spec = {
        "title": "toy",
        "tests": ["t"],
        "cells": ["single", "cnt"],
        "pairs": [
            {
                "a": "single",
                "b": "cnt",
                "label": "cnt − single",
                "stage_a": "final",
                "stage_b": "final",
            },
            {"a": "single", "b": "cnt", "label": "stage 1", "stage_b": "stage1"},
            {"a": "single", "b": "single", "label": "bin", "metric": "nme_pose_frontal"},
        ],
    }
    (tmp_path / "study.json").write_text(json.dumps(spec))
    collapsed = {"attn/b1/entropy": 0.01, "attn/b1/dependence": 0.001}
    healthy = {"attn/b2/entropy": 0.5, "attn/b2/dependence": 0.2}
    for seed, (single, s1, ft) in enumerate([(0.05, 0.06, 0.045), (0.07, 0.08, 0.06)]):
        _run(
            tmp_path,
            "single",
            seed,
            {"stage1/t": {"nme": single, "nme_pose_frontal": 0.04, "count_pose_frontal": 3}},
            {**collapsed, **healthy},
        )
        _run(tmp_path, "cnt", seed, {"stage1/t": {"nme": s1}, "finetune_300w/t": {"nme": ft}})
    (tmp_path / "cnt" / "s5").mkdir()  # unfinished: left out
    _, cells = load_study(tmp_path)
    assert [r.seed for r in cells["cnt"]] == [0, 1]
    assert cells["cnt"][0].final_stage() == "finetune_300w"
    assert cells["single"][0].health == {
        "layers": 2.0,
        "collapsed": 1.0,
        "entropy": 0.255,
        "dependence": 0.1005,
    }
    text = render_study(tmp_path)
    assert "| single | stage1 | 2 | 6.00 ± 1.41 |" in text  # mean 6, std sqrt(2)
    assert "| cnt | finetune_300w | 2 | 5.25 ± 1.06 |" in text
    assert "Faces per head-pose bin: frontal 3." in text
    assert "| single | 2 | 1.0 ± 0.0 of 2 |" in text
    # cnt − single per seed: -0.5, -1.0 (percentage points)
    assert "| cnt − single | t | -0.50, -1.00 | -0.75 (-12.5%) |" in text
    assert "| stage 1 | t | +1.00, +1.00 | +1.00 (+16.7%) | [+1.00, +1.00] | yes |" in text
    # A pair on another metric: the frontal bin, 4.00% in both seeds, against itself.
    assert "| bin | t, nme_pose_frontal | +0.00, +0.00 | +0.00 (+0.0%) |" in text


def test_a_folder_without_study_json_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(StudyError, match=r"no study\.json"):
        load_study(tmp_path)

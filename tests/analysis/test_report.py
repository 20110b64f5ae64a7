"""The paper's numbers file, runs placed in the paper's tables, and the generated reproduce.md."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import statistics
import sys
from pathlib import Path

import pytest
import yaml

from sepbn.analysis.report import (
    DEFAULT_CONFIG_ROOT,
    ReportError,
    build_report,
    config_file_key,
    find_runs,
    paper_entries,
    paper_tables,
    render,
    render_runs_table,
    runs_table,
)
from sepbn.cli import main
from sepbn.config import load_config, save_config

ROOT = Path(__file__).resolve().parents[2]
PAPER = Path(os.environ.get("SEPBN_DATA", ROOT.parent / "shared" / "data")).parent / "paper"


def test_tables_ii_to_xi_and_every_config_exists() -> None:
    tables = paper_tables()
    assert list(tables) == ["II", "III", "IV", "V", "VI", "VII", "VIII", "IX", "X", "XI"]
    configs = {e.config for e in paper_entries() if e.config}
    missing = [c for c in configs if not (DEFAULT_CONFIG_ROOT / c).is_file()]
    assert not missing
    # Every experiment config of configs/ (not base, demo, recipes) is some row of a table.
    experiments = {
        p.relative_to(DEFAULT_CONFIG_ROOT).as_posix()
        for p in DEFAULT_CONFIG_ROOT.rglob("*.yaml")
        if p.parts[-2] in ("vanilla_cnn", "ablation", "resnext50", "mobilenet_v2")
    }
    # aflw_simple_sepbn (Eqs. 3-4) is in no table of the paper.
    assert experiments - configs == {"vanilla_cnn/aflw_simple_sepbn.yaml"}


# Transcribed a second time, by hand, from the paper's text (table, row, column): value.
SPOT_CHECKS = {
    ("II", "Vanilla CNN (brute-force SepBN)", "full"): 1.56,
    ("III", "Vanilla CNN (SepBN, Hard-aggre)", "frontal"): 1.60,
    ("IV", "τ = 20", "full"): 1.67,
    ("IV", "K = 7", "full"): 1.66,
    ("V", "T = 2", "full"): 1.58,
    ("VI", "SepBN at 64² … 8²", "test"): 5.77,
    ("VII", "RAR [47]", "fr"): 4.14,
    ("VII", "Vanilla CNN (CNT+SepBN)", "fr"): 0.00,
    ("VIII", "3FabRec [57]", "frontal"): 1.59,
    ("IX", "Vanilla CNN (SepBN)", "occu"): 6.83,
    ("IX", "SDM [59]", "pose"): 24.10,
    ("X", "MobileNetV2, SepBN at BN2+BN3", "nme"): 4.10,
    ("XI", "MobileNetV2 (CNT)", "wflw"): 5.18,
    ("XI", "ResNeXt-50 (SepBN)", "aflw"): 1.46,
}


def test_spot_checks_against_the_paper() -> None:
    values = {(e.table, e.row, e.column): e.value for e in paper_entries()}
    for key, expected in SPOT_CHECKS.items():
        assert values[key] == pytest.approx(expected), key
    assert values[("VII", "RSR [49]", "fr")] is None  # "-" in the paper
    assert math.isnan(values[("X", "ResNeXt-50, SepBN at BN2+BN3", "nme")])  # NaN
    # Table XI restates Tables VII-IX for the Vanilla CNN.
    for row in ("Vanilla CNN (BN)", "Vanilla CNN (CNT)", "Vanilla CNN (SepBN)"):
        assert values[("XI", row, "cofw")] == values[("VII", row, "nme")]
        assert values[("XI", row, "wflw")] == values[("IX", row, "test")]
        assert values[("XI", row, "aflw")] == values[("VIII", row, "full")]


@pytest.mark.skipif(not (PAPER / "sepbn_cnt_paper.md").is_file(), reason=f"no paper at {PAPER}")
def test_tables_equal_the_paper_text_line_by_line() -> None:
    """A row of Tables II, III, VII-IX and XI in the paper's text is its label, then one cell per
    column, tab-separated; a cell's first number is the value (XI adds the change to the
    baseline as a subscript), "-" none."""
    text = (PAPER / "sepbn_cnt_paper.md").read_text()
    sections = re.split(r"\nTABLE ", text)
    checked = 0
    for tid in ("II", "III", "VII", "VIII", "IX", "XI"):
        section = next(s for s in sections if re.match(rf"{tid}\b", s))
        table = paper_tables()[tid]
        for row in table.rows:
            line = next(ln for ln in section.splitlines() if ln.startswith(row.label + "\t"))
            cells = line.split("\t")[1:]
            for col, cell in zip(table.columns, cells):
                number = re.search(r"\d+(\.\d+)?", cell)
                expected = float(number.group()) if number else None
                assert row.values[col.key] == expected, (tid, row.label, col.key, cell)
                checked += 1
    assert checked == 2 + 3 * 2 + 11 * 2 + 14 * 2 + 11 * 7 + 12 * 3


def test_each_config_file_is_its_own_configuration() -> None:
    """Matching runs to rows ignores seed, name and where a run ran, nothing that trains."""
    configs = sorted({e.config for e in paper_entries() if e.config})
    keys = {config_file_key(DEFAULT_CONFIG_ROOT, c) for c in configs}
    assert len(keys) == len(configs)


def _run(root: Path, config: str, seed: int, summary: dict, **sets: object) -> Path:
    overrides = [f"seed={seed}", f"name=run{seed}"] + [f"{k}={v}" for k, v in sets.items()]
    run = root / f"{Path(config).stem}-{seed}-{len(list(root.glob('*')))}"
    (run / "eval").mkdir(parents=True)
    save_config(load_config(DEFAULT_CONFIG_ROOT / config, overrides), run / "config.yaml")
    (run / "eval" / "summary.json").write_text(json.dumps(summary))
    return run


def _m(nme: float, fr: float = 0.0) -> dict[str, float]:
    return {"nme": nme, "failure_rate": fr, "auc": 0.5, "num_images": 507}


def test_runs_are_grouped_by_config_and_matched_to_rows(tmp_path: Path) -> None:
    cofw = [0.0410, 0.0420, 0.0401]
    for seed, nme in enumerate(cofw):
        _run(tmp_path, "vanilla_cnn/cofw_bn.yaml", seed, {"stage1/cofw_test": _m(nme, 0.01)})
    # Same config, another machine's paths and device: still the same configuration.
    _run(
        tmp_path,
        "vanilla_cnn/cofw_sepbn.yaml",
        7,
        {"stage1/cofw_test": _m(0.0399)},
        **{"data.train.0.path": "/elsewhere/x.mat", "train.device": "cuda"},
    )
    # A changed learning rate is another configuration: in no row.
    _run(
        tmp_path,
        "vanilla_cnn/cofw_sepbn.yaml",
        8,
        {"stage1/cofw_test": _m(0.01)},
        **{"optim.lr": 0.5},
    )
    # CNT: the fine-tuned stage is the paper's number, not stage 1.
    _run(
        tmp_path,
        "vanilla_cnn/cnt_bn.yaml",
        0,
        {"stage1/cofw_test": _m(0.05), "finetune_cofw/cofw_test": _m(0.0385, 0.002)},
    )
    runs = find_runs([tmp_path])
    assert len(runs) == 6
    (report,) = build_report(["VII"], runs)
    rows = {r.label: cells for r, cells in zip(report.table.rows, report.cells)}
    bn = rows["Vanilla CNN (BN)"]["nme"]
    assert bn.measured == pytest.approx([100 * v for v in cofw])
    assert bn.mean == pytest.approx(100 * statistics.fmean(cofw))
    assert bn.std == pytest.approx(100 * statistics.stdev(cofw))
    assert bn.difference == pytest.approx(100 * statistics.fmean(cofw) - 4.07)
    assert rows["Vanilla CNN (BN)"]["fr"].mean == pytest.approx(1.0)
    assert rows["Vanilla CNN (SepBN)"]["nme"].measured == pytest.approx([3.99])
    assert rows["Vanilla CNN (CNT)"]["nme"].measured == pytest.approx([3.85])
    assert rows["Vanilla CNN (CNT)"]["fr"].difference == pytest.approx(0.2 - 0.20)
    assert not rows["Vanilla CNN (CNT+SepBN)"]["nme"].measured
    assert not rows["HPM [46]"]["nme"].measured

    md = render([report], "md")
    assert (
        "| Vanilla CNN (BN) | `vanilla_cnn/cofw_bn.yaml` | 4.07 | 4.10 ± 0.10 (n=3) | +0.03 |" in md
    )
    lines = list(csv.DictReader(io.StringIO(render([report], "csv"))))
    assert len(lines) == 11 * 2
    row = next(r for r in lines if r["row"] == "Vanilla CNN (SepBN)" and r["column"] == "nme")
    assert float(row["measured_mean"]) == pytest.approx(3.99)
    assert float(row["difference"]) == pytest.approx(3.99 - 4.03)
    assert int(row["num_runs"]) == 1
    tex = render([report], "latex")
    assert r"4.10 $\pm$ 0.10 (n=3)" in tex and tex.count(r"\\") >= 13


def test_table_xi_takes_each_column_from_its_own_config(tmp_path: Path) -> None:
    _run(tmp_path, "mobilenet_v2/cofw_bn3.yaml", 0, {"stage1/cofw_test": _m(0.039)})
    _run(tmp_path, "mobilenet_v2/aflw_sepbn.yaml", 0, {"stage1/aflw_full": _m(0.0158)})
    (report,) = build_report(["XI"], find_runs([tmp_path]))
    cells = report.cells[[r.label for r in report.table.rows].index("MobileNetV2 (SepBN)")]
    assert cells["cofw"].mean == pytest.approx(3.9)
    assert cells["aflw"].mean == pytest.approx(1.58)
    assert cells["wflw"].mean is None


def test_cli_report_writes_the_chosen_format(tmp_path: Path, capsys) -> None:
    run = _run(tmp_path / "runs", "vanilla_cnn/aflw_bn.yaml", 0, {"stage1/aflw_full": _m(0.017)})
    assert main(["report", str(run), "--table", "II", "--format", "csv"]) == 0
    out = capsys.readouterr().out
    assert "II,Vanilla CNN (BN),vanilla_cnn/aflw_bn.yaml,full,aflw_full,nme,1.6500,1.7000" in out
    # Without --table: every table with a measured cell (II, III, VIII, XI hold aflw_bn).
    assert main(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "r.md")]) == 0
    text = (tmp_path / "r.md").read_text()
    assert [m for m in re.findall(r"### Table (\w+)", text)] == ["II", "III", "VIII", "XI"]
    assert main(["report", str(tmp_path / "nothing")]) == 1
    assert "is not a finished run" in capsys.readouterr().err
    with pytest.raises(ReportError, match="unknown table"):
        build_report(["XII"], [])


def test_committed_reproduce_md_is_what_the_generator_writes() -> None:
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        import make_reproduce
    finally:
        sys.path.pop(0)
    assert (ROOT / "docs" / "reproduce.md").read_text(encoding="utf-8") == (
        make_reproduce.generate()
    ), "docs/reproduce.md is out of date: run python docs/make_reproduce.py"


def test_paper_results_yaml_is_one_entry_per_published_number() -> None:
    raw = yaml.safe_load((ROOT / "src/sepbn/analysis/paper_results.yaml").read_text())
    expected = sum(len(t["rows"]) * len(t["columns"]) for t in raw.values())
    assert len(paper_entries()) == expected == 2 + 6 + 12 + 8 + 6 + 22 + 28 + 77 + 16 + 36


def _posed(nme: float, frontal: float, profile: float | None) -> dict[str, float]:
    """A summary entry with head-pose bins as every evaluation writes them."""
    entry = {**_m(nme), "nme_pose_frontal": frontal, "count_pose_frontal": 400}
    entry |= {"nme_pose_moderate": 0.05, "count_pose_moderate": 100}
    entry |= {"count_pose_profile": 0 if profile is None else 7, "count_pose_unknown": 0}
    if profile is not None:
        entry["nme_pose_profile"] = profile
    return entry


def test_pose_columns_of_the_runs(tmp_path: Path, capsys) -> None:
    runs_dir = tmp_path / "runs"
    for seed, (frontal, profile) in enumerate([(0.030, 0.090), (0.032, 0.110)]):
        _run(
            runs_dir,
            "vanilla_cnn/cofw_sepbn.yaml",
            seed,
            {"stage1/t": _posed(0.04, frontal, profile)},
        )
    _run(runs_dir, "vanilla_cnn/cofw_bn.yaml", 0, {"stage1/t": _posed(0.05, 0.04, None)})
    _run(runs_dir, "vanilla_cnn/cofw_bn.yaml", 1, {"stage1/t": _m(0.05)})  # before pose bins
    runs = find_runs([runs_dir])
    columns = ["nme_pose_frontal", "nme_pose_profile", "count_pose_profile"]
    bn, sep = runs_table(runs, columns)  # find_runs sorts the folders by name
    assert sep.evaluation == "stage1/t" and len(sep.runs) == 2
    assert sep.values["nme_pose_profile"] == [0.090, 0.110]
    assert bn.values == {
        "nme_pose_frontal": [0.04],
        "nme_pose_profile": [],
        "count_pose_profile": [0.0],
    }
    md = render_runs_table([bn, sep], columns, "md").splitlines()
    assert md[0] == (
        "| name | evaluation | runs | nme_pose_frontal (%) | nme_pose_profile (%) "
        "| count_pose_profile |"
    )
    assert md[2] == "| run0, run1 | stage1/t | 2 | 4.00 | – | 0 |"
    assert md[3] == "| run0, run1 | stage1/t | 2 | 3.10 ± 0.14 (n=2) | 10.00 ± 1.41 (n=2) | 7 |"
    lines = list(csv.DictReader(io.StringIO(render_runs_table([sep], columns, "csv"))))
    assert [(r["column"], r["mean"], r["num_runs"]) for r in lines] == [
        ("nme_pose_frontal", "3.1000", "2"),
        ("nme_pose_profile", "10.0000", "2"),
        ("count_pose_profile", "7.0000", "2"),
    ]
    tex = render_runs_table([sep, bn], columns, "latex")
    assert r"nme\_pose\_frontal (\%)" in tex and r"3.10 $\pm$ 0.14 (n=2)" in tex and "--" in tex
    with pytest.raises(ReportError, match=r"no run has column\(s\) \['nme_pose_frontl'\]"):
        runs_table(runs, ["nme_pose_frontl"])

    # The CLI: --pose is the NME and every bin with its count.
    assert main(["report", str(runs_dir), "--pose"]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert header == (
        "| name | evaluation | runs | nme (%) | nme_pose_frontal (%) | count_pose_frontal "
        "| nme_pose_moderate (%) | count_pose_moderate | nme_pose_profile (%) "
        "| count_pose_profile | count_pose_unknown |"
    )
    assert main(["report", str(runs_dir), "--columns", "nme,auc", "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines()[1] == '"run0, run1",stage1/t,nme,5.0000,0.0000,2'
    assert main(["report", str(runs_dir), "--pose", "--table", "VII"]) == 1
    assert "drop --table" in capsys.readouterr().err

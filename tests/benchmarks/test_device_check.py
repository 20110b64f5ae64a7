"""benchmarks/device_check.py end to end on CPU (``--quick``): every item, CUDA ones skipped."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "device_check.py"
KEYS = {
    "environment",
    "cuda_tests",
    "layers",
    "models",
    "target_resnext50_bf16",
    "stage1_epoch",
    "hours_per_table",
    "skipped",
    "seconds",
}


@pytest.mark.slow
def test_device_check_runs_on_cpu_and_skips_only_cuda_items(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    src = str(SCRIPT.parents[1] / "src")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    out, runs = tmp_path / "out", tmp_path / "runs"
    cmd = [sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--out", str(out)]
    cmd += ["--runs-dir", str(runs)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["device_check.json", "device_check.md"]
    assert (runs / "epoch_vanilla_cnn").is_dir() and any((runs / "cache").iterdir())
    report = json.loads((out / "device_check.json").read_text())
    assert set(report) == KEYS
    assert report["cuda_tests"] == report["target_resnext50_bf16"] == "skipped: no CUDA"
    assert report["skipped"] == [] and set(report["seconds"]) == {
        "tests",
        "models",
        "epoch",
        "layers",
    }
    layers = {(r["dtype"], r["mode"]) for r in report["layers"]}
    assert layers == {(d, m) for d in ("float32", "bfloat16") for m in ("eager", "compiled")}
    assert all(r["ratio"] > 0 for r in report["layers"] + report["models"])
    assert {r["arch"] for r in report["models"]} == {"vanilla_cnn", "mobilenet_v2", "resnext50"}
    epoch = report["stage1_epoch"]["vanilla_cnn"]
    assert epoch["real_faces"] == 41763 and epoch["epoch_s"] > 0
    tables = {r["table"]: r for r in report["hours_per_table"]}
    assert set(tables) == {
        f"Table {n}" for n in ["II", "III", "IV", "V", "VI", "VII", "VIII", "IX", "X", "XI"]
    }
    assert tables["Table II"]["hours"] > 0 and not tables["Table II"]["not_estimated"]
    markdown = (out / "device_check.md").read_text()
    assert "cuda tests: skipped: no CUDA" in markdown and "| Table XI |" in markdown


def _load_script():
    """benchmarks/device_check.py as a module (it puts benchmarks/ on the path itself)."""
    spec = importlib.util.spec_from_file_location("device_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _main(module, monkeypatch, *args: str) -> dict:
    monkeypatch.setattr(sys, "argv", ["device_check.py", "--device", "cpu", "--quick", *args])
    module.main()
    out = Path(args[args.index("--out") + 1])
    return json.loads((out / "device_check.json").read_text())


def test_a_failing_item_is_recorded_and_the_run_goes_on(tmp_path: Path, monkeypatch) -> None:
    """A first GPU run has one chance: one architecture that raises costs only its rows."""
    module = _load_script()
    build = module.build_model

    def build_model(arch: str, **kwargs):
        if arch == "mobilenet_v2":
            raise RuntimeError("CUDA out of memory (planted)")
        return build(arch, **kwargs)

    monkeypatch.setattr(module, "build_model", build_model)
    report = _main(module, monkeypatch, "--only", "models,layers", "--out", str(tmp_path))
    failed = [r for r in report["models"] if "error" in r]
    assert {(r["arch"], r["dtype"]) for r in failed} == {
        ("mobilenet_v2", "bfloat16"),
        ("mobilenet_v2", "float32"),
    }
    assert all("planted" in r["error"] and "Traceback" in r["traceback"] for r in failed)
    assert {r["arch"] for r in report["models"] if "ratio" in r} == {"resnext50", "vanilla_cnn"}
    assert len(report["layers"]) == 8 and all("ratio" in r for r in report["layers"])
    assert report["cuda_tests"] == report["stage1_epoch"] == "not run (--only)"
    markdown = (tmp_path / "device_check.md").read_text()
    assert "| mobilenet_v2 | 64 | 2 | bfloat16 | ERROR RuntimeError: CUDA out of memory" in markdown
    assert "stage-1 epoch: not run (--only)" in markdown


def test_a_section_that_raises_leaves_the_others(tmp_path: Path, monkeypatch) -> None:
    module = _load_script()

    def hours_per_table(_epochs):
        raise ValueError("docs/reproduce.md: no table headings (planted)")

    monkeypatch.setattr(module, "hours_per_table", hours_per_table)
    report = _main(module, monkeypatch, "--only", "epoch,layers", "--out", str(tmp_path))
    assert report["hours_per_table"]["error"].startswith("ValueError: docs/reproduce.md")
    assert report["stage1_epoch"]["vanilla_cnn"]["s_per_face"] > 0  # kept before the failure
    assert len(report["layers"]) == 8
    assert "hours per table: ERROR ValueError" in (tmp_path / "device_check.md").read_text()


def test_a_spent_budget_starts_nothing_and_lists_each_item(tmp_path: Path, monkeypatch) -> None:
    module = _load_script()
    report = _main(module, monkeypatch, "--budget", "0", "--out", str(tmp_path))
    assert report["models"] == report["layers"] == [] and report["stage1_epoch"] == {}
    assert len(report["skipped"]) == 6 + 1 + 8  # 3 models × 2 dtypes, 1 epoch, 8 layer rows
    assert report["skipped"][0] == "models resnext50 bfloat16: time budget (0 s) spent"
    tables = {r["table"]: r for r in report["hours_per_table"]}
    assert tables["Table II"]["hours"] == 0 and tables["Table II"]["not_estimated"]
    assert "Not started:" in (tmp_path / "device_check.md").read_text()


def test_only_refuses_an_unknown_section(tmp_path: Path, monkeypatch, capsys) -> None:
    module = _load_script()
    with pytest.raises(SystemExit):
        _main(module, monkeypatch, "--only", "models,gpu", "--out", str(tmp_path))
    assert "unknown sections ['gpu']" in capsys.readouterr().err


PYTEST_FILE = """
import time

def test_ok():
    pass

def test_broken():
    assert 1 == 2

def test_slow():
    time.sleep({sleep})
"""


@pytest.mark.parametrize("sleep", [0, 60])
def test_pytest_results_are_kept_whole_or_cut_short(tmp_path: Path, sleep: int) -> None:
    """The cuda tests' runner: failures named; a timeout keeps what finished before it."""
    module = _load_script()
    tests = tmp_path / "test_planted.py"
    tests.write_text(PYTEST_FILE.format(sleep=sleep))
    log = tmp_path / "log.txt"
    result = module.run_pytest([str(tests)], timeout=12 if sleep else 120, log=log)
    assert result["passed"] == (1 if sleep else 2)
    assert any("test_broken" in line for line in result["failures"])
    if sleep:
        assert result["returncode"] is None and result["summary"] == "timed out after 12 s"
    else:
        assert result["returncode"] == 1 and result["summary"].startswith("=")
        assert "1 failed, 2 passed" in result["summary"]
    assert "test_ok PASSED" in log.read_text()


def test_the_gpu_target_is_judged_on_the_resnext_bfloat16_row() -> None:
    module = _load_script()
    row = {"arch": "resnext50", "dtype": "bfloat16", "ratio": 1.08}
    other = {"arch": "resnext50", "dtype": "float32", "ratio": 1.5}
    assert module._resnext_target([other, row]) == {"ratio": 1.08, "target": 1.10, "met": True}
    assert module._resnext_target([{**row, "ratio": 1.2}])["met"] is False
    failed = {"arch": "resnext50", "dtype": "bfloat16", "error": "RuntimeError: out of memory"}
    assert module._resnext_target([failed]) == "not measured (see models)"
    assert module._resnext_target({"error": "x"}) == "not measured (see models)"

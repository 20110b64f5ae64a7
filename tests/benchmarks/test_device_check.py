"""benchmarks/device_check.py end to end on CPU (``--quick``): every item, CUDA ones skipped."""

from __future__ import annotations

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
    "seconds",
}


@pytest.mark.slow
def test_device_check_runs_on_cpu_and_skips_only_cuda_items(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    src = str(SCRIPT.parents[1] / "src")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    cmd = [sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "device_check.json").read_text())
    assert set(report) == KEYS
    assert report["cuda_tests"] == report["target_resnext50_bf16"] == "skipped: no CUDA"
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
    markdown = (tmp_path / "device_check.md").read_text()
    assert "cuda tests: skipped: no CUDA" in markdown and "| Table XI |" in markdown

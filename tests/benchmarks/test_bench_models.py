"""benchmarks/bench_models.py end to end at tiny settings: every row, ratios that parse."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "bench_models.py"


def _run(*args: str) -> list[list[str]]:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(REPO / "src")}
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--iters", "1", "--iters-large", "1", "--warmup", "0",
         "--eval-iters", "1", *args],
        capture_output=True, text=True, env=env, timeout=600, check=True,
    ).stdout  # fmt: skip
    rows = [line.strip("|").split("|") for line in out.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in row] for row in rows[1:]]  # without the header


def test_three_architectures_train_and_eval_rows() -> None:
    rows = _run("--batches", "2")
    assert [(r[0], r[1]) for r in rows] == [
        (arch, measure)
        for arch in ("vanilla_cnn", "mobilenet_v2", "resnext50")
        for measure in ("train b2", "eval b1")
    ]
    targets = {"vanilla_cnn": ("1.05", "1.10"), "mobilenet_v2": ("1.10", "1.20")}
    targets["resnext50"] = targets["mobilenet_v2"]
    for arch, measure, bn, sep, ratio, verdict, best in rows:
        assert float(ratio) > 0 and float(best) > 0
        unit = "img/s" if measure.startswith("train") else "ms"
        assert bn.endswith(unit) and sep.endswith(unit)
        # The verdict compares the ratio with the target for that architecture.
        target = targets[arch][0 if measure.startswith("train") else 1]
        assert verdict.startswith(f"<= {target}")
        if abs(float(ratio) - float(target)) > 1e-3:  # the printed ratio is rounded
            assert verdict.endswith("ok") == (float(ratio) <= float(target))


def test_compiled_rows_with_a_cheap_backend() -> None:
    rows = _run("--archs", "vanilla_cnn", "--batches", "2", "--compiled", "--backend", "aot_eager")
    assert [r[1] for r in rows] == ["train b2", "compiled train b2", "eval b1"]
    assert float(rows[1][4]) > 0

"""scripts/cnt_study.py: every cell of both plans is a valid experiment, each pair names cells."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from sepbn.config import apply_overrides, load_config

REPO = Path(__file__).resolve().parents[1]


def _driver():
    spec = importlib.util.spec_from_file_location("cnt_study", REPO / "scripts" / "cnt_study.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["cnt_study"] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("plan", ["diagnose", "real"])
def test_every_cell_loads_and_every_pair_names_cells(plan: str) -> None:
    driver = _driver()
    make_cells, make_spec = driver.PLANS[plan]
    cells = make_cells()
    names = [c.name for c in cells]
    assert len(set(names)) == len(names)
    steps = set()
    for cell in cells:
        config = apply_overrides(load_config(REPO / cell.config), cell.sets)
        steps.add(config.train.steps_per_epoch * config.optim.epochs)
        if cell.init_from is not None:
            assert cell.init_from in names and config.finetune is not None
    assert len(steps) == 1  # one step budget for every stage 1 of a plan
    spec = make_spec()
    for pair in spec["pairs"]:
        assert pair["a"] in names and pair["b"] in names, pair
    json.dumps(spec)  # written as study.json


def test_a_finished_run_is_not_run_again(tmp_path: Path) -> None:
    driver = _driver()
    done = tmp_path / "cell" / "s4" / "eval"
    done.mkdir(parents=True)
    (done / "summary.json").write_text("{}")
    cell = driver.Cell("cell", "configs/demo/bn.yaml")
    assert driver.run_cell(cell, 4, tmp_path) == "cell s4: done before"


def test_caches_are_warmed_once_per_cached_data_setting(tmp_path: Path, monkeypatch) -> None:
    driver = _driver()
    warmed: list = []
    monkeypatch.setattr(driver, "run_cell", lambda cell, seed, out: warmed.append(cell) or "")
    driver.warm_caches(driver.diagnose_plan(), tmp_path)
    assert warmed == []  # synthetic faces: no cache_dir, nothing to prepare
    driver.warm_caches(driver.real_plan(), tmp_path)
    # 300-W alone and CNT, each with all faces and the 300-face subset, and balanced CNT.
    assert len(warmed) == 5
    for cell in warmed:
        config = apply_overrides(load_config(REPO / cell.config), cell.sets)
        assert config.train.steps_per_epoch == 1 and config.optim.epochs == 1
        assert config.finetune is None or config.finetune.epochs == 1

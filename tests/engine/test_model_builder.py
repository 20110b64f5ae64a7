"""Config -> model, model_info both ways, and rebuilding a trained network from its checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sepbn.config import ExperimentConfig, ModelConfig, to_dict
from sepbn.engine.checkpoint import CheckpointError, save_checkpoint
from sepbn.engine.model_builder import (
    build_model_from_config,
    build_model_from_info,
    load_model_from_checkpoint,
    model_info,
)
from sepbn.nn import DomainBatchNorm2d


def _tiny_model_config() -> ModelConfig:
    return ModelConfig(arch="vanilla_cnn", norm="sepbn", width_mult=0.125, input_size=64)


@pytest.mark.parametrize(
    "build", [{"num_points": 5}, {"heads": {"wflw": 98, "cofw": 29}}], ids=["single", "cross"]
)
def test_load_model_from_checkpoint_rebuilds_the_same_network(tmp_path: Path, build) -> None:
    config = ExperimentConfig(model=_tiny_model_config())
    model = build_model_from_config(config.model, **build)
    with torch.no_grad():  # make every weight differ from a fresh build
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model.eval()
    info = (
        {"kind": "single", "num_points": 5}
        if "num_points" in build
        else {"kind": "cross", "heads": build["heads"]}
    )
    path = save_checkpoint(
        tmp_path / "m.pt",
        {"model": model.state_dict(), "model_info": info, "config": to_dict(config)},
    )
    rebuilt, cfg = load_model_from_checkpoint(path)
    assert cfg == config and not rebuilt.training
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        if "num_points" in build:
            assert torch.equal(rebuilt(x), model(x))
        else:
            ids = torch.tensor([0, 1])
            out, ref = rebuilt(x, ids), model(x, ids)
            assert out.keys() == ref.keys() == {"wflw", "cofw"}
            assert all(torch.equal(out[k], ref[k]) for k in out)


def test_load_model_from_checkpoint_rejects_a_bad_embedded_config(tmp_path: Path) -> None:
    config = to_dict(ExperimentConfig(model=_tiny_model_config()))
    config["model"]["nrom"] = "bn"
    path = save_checkpoint(
        tmp_path / "m.pt",
        {"model": {}, "model_info": {"kind": "single", "num_points": 5}, "config": config},
    )
    with pytest.raises(CheckpointError, match=r"embedded config.*unknown key 'model\.nrom'"):
        load_model_from_checkpoint(path)


@pytest.mark.parametrize(
    "build", [{"num_points": 5}, {"heads": {"wflw": 98, "cofw": 29}}], ids=["single", "cross"]
)
def test_model_info_round_trip(build) -> None:
    config = _tiny_model_config()
    model = build_model_from_config(config, **build)
    info = model_info(model)
    expected = (
        {"kind": "single", "num_points": 5}
        if "num_points" in build
        else {"kind": "cross", "heads": {"wflw": 98, "cofw": 29}}
    )
    assert info == expected
    rebuilt = build_model_from_info(config, info, "m.pt")
    assert rebuilt.state_dict().keys() == model.state_dict().keys()
    assert all(rebuilt.state_dict()[k].shape == v.shape for k, v in model.state_dict().items())


def test_an_unknown_model_kind_names_the_file_and_the_valid_kinds(tmp_path: Path) -> None:
    config = ExperimentConfig(model=_tiny_model_config())
    path = save_checkpoint(
        tmp_path / "m.pt",
        {"model": {}, "model_info": {"kind": "ensemble"}, "config": to_dict(config)},
    )
    with pytest.raises(CheckpointError, match=r"m\.pt: unknown model kind 'ensemble'.*'single'"):
        load_model_from_checkpoint(path)


def test_model_info_needs_the_point_count() -> None:
    with pytest.raises(TypeError, match="num_points"):
        model_info(torch.nn.Linear(2, 2))


def test_a_checkpoint_config_from_before_num_domains_still_loads(tmp_path: Path) -> None:
    # Older configs gave the brute-force SepBN its K through num_sets.
    model_config = ModelConfig(norm="domain_bn", num_domains=2, width_mult=0.125, input_size=64)
    model = build_model_from_config(model_config, num_points=5)
    old = to_dict(ExperimentConfig(model=model_config))
    del old["model"]["num_domains"]
    old["model"]["num_sets"] = 2
    path = save_checkpoint(
        tmp_path / "old.pt",
        {
            "model": model.state_dict(),
            "model_info": {"kind": "single", "num_points": 5},
            "config": old,
        },
    )
    with pytest.warns(UserWarning, match=r"old\.pt .*model\.num_sets=2 read as model\.num_domains"):
        rebuilt, config = load_model_from_checkpoint(path)
    assert config.model == model_config
    domains = {m.num_domains for m in rebuilt.modules() if isinstance(m, DomainBatchNorm2d)}
    assert domains == {2}


@pytest.mark.parametrize(
    ("info", "expected"),
    [
        (
            {"kind": "single", "num_points": "68"},
            r"'num_points' must be a positive integer \(L\), got '68'",
        ),
        (
            {"kind": "single", "num_points": -3},
            r"'num_points' must be a positive integer \(L\), got -3",
        ),
        ({"kind": "single", "num_points": True}, r"'num_points' must be a positive integer"),
        ({"kind": "single"}, r"'num_points' must be a positive integer \(L\), got None"),
        (
            {"kind": "cross", "heads": [98, 29]},
            r"'heads' must map protocol names to landmark counts",
        ),
        ({"kind": "cross", "heads": {"wflw": "98"}}, r"'heads' must map protocol names"),
        ({"kind": "cross", "heads": {}}, r"'heads' must map protocol names"),
        ({"kind": ["single"]}, r"unknown model kind \['single'\]"),
    ],
)
def test_a_hand_made_model_info_of_the_wrong_type_names_the_file(
    tmp_path: Path, info: dict, expected: str
) -> None:
    config = to_dict(ExperimentConfig(model=_tiny_model_config()))
    path = save_checkpoint(tmp_path / "m.pt", {"model": {}, "model_info": info, "config": config})
    with pytest.raises(CheckpointError, match=rf"^{tmp_path / 'm.pt'}: (model_info )?{expected}"):
        load_model_from_checkpoint(path)


def test_a_hand_made_config_of_the_wrong_type_names_the_file(tmp_path: Path) -> None:
    config = to_dict(ExperimentConfig(model=_tiny_model_config()))
    info = {"kind": "single", "num_points": 5}
    cases = [
        ({**config, "model": {**config["model"], "norm": ["sepbn"]}}, "model.norm: ['sepbn']"),
        ({**config, "data": 5}, "data: expected a mapping of DataConfig fields, got 5"),
        ({**config, "seed": -1}, "seed must be an integer in [0, 2**63 - 1]"),
        ({**config, "optim": {"lr": float("nan")}}, "optim.lr: expected a finite number"),
    ]
    for i, (bad, expected) in enumerate(cases):
        path = save_checkpoint(
            tmp_path / f"m{i}.pt", {"model": {}, "model_info": info, "config": bad}
        )
        with pytest.raises(CheckpointError) as error:
            load_model_from_checkpoint(path)
        message = str(error.value)
        assert message.startswith(f"{path} (embedded config): ") and expected in message

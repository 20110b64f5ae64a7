"""ResNeXt-50 / MobileNetV2: BN1-BN3 placement (Fig. 6, Table X) and ImageNet weights."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from sepbn.errors import ConfigError
from sepbn.models import (
    SEPBN_POSITIONS,
    bottleneck_norm_positions,
    imagenet_weights_path,
    mobilenet_v2,
    resnext50,
)
from sepbn.nn import SeparableNormBase, SepBatchNorm2d

ALL_SUBSETS = [frozenset(c) for r in range(4) for c in itertools.combinations(SEPBN_POSITIONS, r)]
TINY = dict(width_mult=0.25, input_size=32)


def _preceding_conv(model: nn.Module, norm_name: str) -> nn.Conv2d:
    """The convolution whose output the named norm normalizes (the module just before it)."""
    names = [n for n, _ in model.named_modules()]
    modules = dict(model.named_modules())
    convs = [n for n in names[: names.index(norm_name)] if isinstance(modules[n], nn.Conv2d)]
    return modules[convs[-1]]


def test_resnext_positions_are_the_bottleneck_norms() -> None:
    model = resnext50(4, **TINY)
    positions = bottleneck_norm_positions(model.backbone)
    assert len(positions) == 16 * 3  # [3, 4, 6, 3] bottlenecks
    for name, pos in positions.items():
        assert re.fullmatch(r"layer[1-4]\.\d+\.bn[123]", name), name
        assert name.endswith(pos)
    norms = {n for n, m in model.backbone.named_modules() if isinstance(m, nn.BatchNorm2d)}
    # Outside the blocks: the stem norm and the four shortcut-projection norms.
    assert norms - set(positions) == {"bn1"} | {f"layer{i}.0.downsample.1" for i in range(1, 5)}


def test_mobilenet_positions_follow_fig6() -> None:
    model = mobilenet_v2(4, **TINY)
    positions = bottleneck_norm_positions(model.backbone)
    counts = {pos: sum(p == pos for p in positions.values()) for pos in SEPBN_POSITIONS}
    # 17 inverted residual blocks; the first (t = 1) has no expansion, hence no BN1.
    assert counts == {"bn1": 16, "bn2": 17, "bn3": 17}
    assert not any(name.startswith("features.1.") and p == "bn1" for name, p in positions.items())
    for name, pos in positions.items():
        conv = _preceding_conv(model.backbone, name)
        depthwise = conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels
        if pos == "bn1":  # after the 1x1 expansion
            assert conv.kernel_size == (1, 1) and conv.out_channels > conv.in_channels
        elif pos == "bn2":  # after the 3x3 depthwise conv
            assert conv.kernel_size == (3, 3) and depthwise
        else:  # after the 1x1 linear projection
            assert conv.kernel_size == (1, 1) and not depthwise
    norms = {n for n, m in model.backbone.named_modules() if isinstance(m, nn.BatchNorm2d)}
    assert norms - set(positions) == {"features.0.1", "features.18.1"}  # stem, last 1x1


@pytest.mark.parametrize("subset", ALL_SUBSETS, ids=lambda s: "+".join(sorted(s)) or "none")
@pytest.mark.parametrize("builder", [mobilenet_v2, resnext50], ids=["mobilenet_v2", "resnext50"])
def test_sepbn_placement_matches_request(
    builder: Callable[..., nn.Module], subset: frozenset[str]
) -> None:
    model = builder(4, SepBatchNorm2d, sepbn_positions=subset, **TINY)
    positions = bottleneck_norm_positions(model.backbone)
    modules = dict(model.backbone.named_modules())
    sep = {n for n, m in modules.items() if isinstance(m, SeparableNormBase)}
    assert sep == {n for n, p in positions.items() if p in subset}
    for name in set(positions) - sep:
        assert type(modules[name]) is nn.BatchNorm2d


def test_default_is_bn3_and_none_keeps_bn() -> None:
    model = mobilenet_v2(4, SepBatchNorm2d, **TINY)
    sep = [n for n, m in model.named_modules() if isinstance(m, SepBatchNorm2d)]
    assert len(sep) == 17
    assert all(p == "bn3" for n, p in bottleneck_norm_positions(model.backbone).items() if n in sep)
    plain = mobilenet_v2(4, None, sepbn_positions={"bn1", "bn2", "bn3"}, **TINY)
    assert not any(isinstance(m, SeparableNormBase) for m in plain.modules())


@pytest.mark.parametrize("input_size", [32, 64, 100, 128])
def test_feature_size_and_output(input_size: int) -> None:
    model = mobilenet_v2(7, width_mult=0.25, input_size=input_size)
    x = torch.rand(2, 3, input_size, input_size)
    features = model.backbone(x)
    assert features.shape == (2, model.feature_channels, model.feature_size, model.feature_size)
    assert model(x).shape == (2, 7, 2)


def test_resnext_width_and_argument_errors() -> None:
    model = resnext50(3, **TINY)
    assert model.backbone.layer1[0].conv2.groups == 32
    assert model.backbone.layer1[0].conv2.out_channels == 32  # 32 groups x d = 1
    assert model.feature_channels == 2048
    with pytest.raises(ValueError, match="4 \\* width_mult"):
        resnext50(3, width_mult=0.3)
    with pytest.raises(ValueError, match=r"unknown sepbn_positions \['bn4'\]"):
        mobilenet_v2(3, SepBatchNorm2d, sepbn_positions={"bn4"}, **TINY)
    with pytest.raises(ValueError, match="input_size must be at least 32"):
        mobilenet_v2(3, input_size=16)


@torch.no_grad()
def _save_random_torchvision(model: nn.Module, path: Path, randomize: Callable) -> dict:
    """A randomly initialized torchvision checkpoint with non-trivial norm statistics."""
    randomize(model)
    state = model.state_dict()
    torch.save(state, path)
    return state


def _check_pretrained(
    builder: Callable[..., nn.Module],
    reference: nn.Module,
    state: dict,
    path: Path,
    head_key: str,
    input_size: int,
) -> None:
    positions = {"bn1", "bn2", "bn3"}
    plain = builder(5, None, pretrained=path, input_size=input_size)
    converted = builder(
        5, SepBatchNorm2d, sepbn_positions=positions, pretrained=path, input_size=input_size
    )
    sep = {n: m for n, m in converted.backbone.named_modules() if isinstance(m, SepBatchNorm2d)}
    assert len(sep) == len(bottleneck_norm_positions(converted.backbone))
    for name, layer in sep.items():
        key = name  # the backbone keeps torchvision's module names
        # Every set starts as the ImageNet BN: weight rows all equal to the BN weight.
        assert torch.equal(layer.weight, state[f"{key}.weight"].expand_as(layer.weight))
        assert torch.equal(layer.bias, state[f"{key}.bias"].expand_as(layer.bias))
        assert torch.equal(layer.norm.running_mean, state[f"{key}.running_mean"])
        assert torch.equal(layer.norm.running_var, state[f"{key}.running_var"])
    # Non-bottleneck weights too (the stem conv), and not the replaced classifier.
    stem = "conv1.weight" if head_key == "fc." else "features.0.0.weight"
    assert torch.equal(plain.backbone.state_dict()[stem], state[stem])

    x = torch.rand(2, 3, input_size, input_size)
    converted.head.load_state_dict(plain.head.state_dict())
    plain.eval()
    converted.eval()
    reference.eval()
    with torch.no_grad():
        expected = plain(x)
        got = converted(x)
        # The backbone is torchvision's own network on ImageNet-normalized input.
        normalized = torchvision.transforms.functional.normalize(
            x, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
        )
        if head_key == "fc.":
            r = reference
            tv = r.layer4(
                r.layer3(r.layer2(r.layer1(r.maxpool(r.relu(r.bn1(r.conv1(normalized)))))))
            )
        else:
            tv = reference.features(normalized)
        assert torch.allclose(plain.backbone(x), tv, atol=1e-5)
    assert torch.allclose(got, expected, atol=1e-5)


def test_mobilenet_pretrained_weights_in_every_set(tmp_path: Path, randomize: Callable) -> None:
    reference = torchvision.models.mobilenet_v2()
    path = tmp_path / "mobilenet_v2.pth"
    state = _save_random_torchvision(reference, path, randomize)
    _check_pretrained(mobilenet_v2, reference, state, path, "classifier.", 64)


@pytest.mark.slow
def test_resnext_pretrained_weights_in_every_set(tmp_path: Path, randomize: Callable) -> None:
    reference = torchvision.models.resnext50_32x4d()
    path = tmp_path / "resnext50.pth"
    state = _save_random_torchvision(reference, path, randomize)
    _check_pretrained(resnext50, reference, state, path, "fc.", 128)


def test_pretrained_true_reads_only_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, randomize: Callable
) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(ConfigError) as info:
        mobilenet_v2(5, pretrained=True)
    message = str(info.value)
    expected = tmp_path / "hub" / "checkpoints" / "mobilenet_v2-b0353104.pth"
    assert str(expected) in message
    assert "https://download.pytorch.org/models/mobilenet_v2-b0353104.pth" in message
    assert "no download" in message

    expected.parent.mkdir(parents=True)
    reference = torchvision.models.mobilenet_v2()
    state = _save_random_torchvision(reference, expected, randomize)
    assert imagenet_weights_path("mobilenet_v2", True) == expected
    model = mobilenet_v2(5, pretrained=True)
    assert torch.equal(model.backbone.features[0][0].weight, state["features.0.0.weight"])


def test_pretrained_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.pth not found"):
        mobilenet_v2(5, pretrained=tmp_path / "missing.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"cannot read pretrained weights .*garbage\.pth"):
        mobilenet_v2(5, pretrained=garbage)
    wrong = tmp_path / "wrong.pth"
    small = torchvision.models.mobilenet_v2(width_mult=0.5)
    torch.save(small.state_dict(), wrong)
    with pytest.raises(ValueError, match=r"wrong\.pth do not fit the model"):
        mobilenet_v2(5, pretrained=wrong)
    partial = tmp_path / "partial.pth"
    state = torchvision.models.mobilenet_v2().state_dict()
    del state["features.0.0.weight"]
    torch.save(state, partial)
    with pytest.raises(ValueError, match=r"missing keys \['features.0.0.weight'\]"):
        mobilenet_v2(5, pretrained=partial)
    with pytest.raises(ValueError, match=r"need width_mult=1\.0"):
        mobilenet_v2(5, pretrained=partial, width_mult=0.5)
    with pytest.raises(TypeError, match="pretrained must be a path"):
        mobilenet_v2(5, pretrained=3)  # type: ignore[arg-type]
    assert imagenet_weights_path("resnext50", None) is None
    assert imagenet_weights_path("resnext50", False) is None

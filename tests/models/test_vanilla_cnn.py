"""The Vanilla CNN against paper Table I and Table VI."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from sepbn.models import BLOCK_CHANNELS, ImageNormalize, VanillaBranch, VanillaCNN
from sepbn.nn import SepBatchNorm2d, SimpleSepBatchNorm2d

L = 98  # WFLW


def table1_parameter_count(num_points: int) -> int:
    """Hand count of Table I: bias-free 3x3 convs, BN affine, two linear layers."""
    channels = [3, 64, 128, 256, 512, 1024, 2048]
    conv = sum(3 * 3 * cin * cout for cin, cout in itertools.pairwise(channels))
    bn = sum(2 * c for c in channels[1:])
    fc1 = 8192 * 1024 + 1024
    fc2 = 1024 * 2 * num_points + 2 * num_points
    return conv + bn + fc1 + fc2


def test_table1_shapes_at_every_block() -> None:
    model = VanillaCNN(L)
    shapes = []
    hooks = [
        block.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape[1:])))
        for block in model.backbone.blocks
    ]
    with torch.no_grad():
        out = model(torch.rand(2, 3, 128, 128))
    for h in hooks:
        h.remove()
    # Table I "Input" column: H x W x C after each block, here as (C, H, W).
    assert shapes == [
        (64, 64, 64),
        (128, 32, 32),
        (256, 16, 16),
        (512, 8, 8),
        (1024, 4, 4),
        (2048, 2, 2),
    ]
    assert model.head.fc1.in_features == 8192
    assert model.head.fc1.out_features == 1024
    assert model.head.fc2.out_features == 2 * L
    assert out.shape == (2, L, 2)
    assert (model.feature_channels, model.feature_size) == (2048, 2)


def test_table1_parameter_count_by_hand() -> None:
    model = VanillaCNN(L)
    assert sum(p.numel() for p in model.parameters()) == table1_parameter_count(L)
    assert table1_parameter_count(L) == 33_741_572


def test_block_layers_follow_table1() -> None:
    model = VanillaCNN(5, width_mult=0.125, input_size=64)
    assert isinstance(model.backbone.normalize, ImageNormalize)
    for block in model.backbone.blocks:
        conv, norm, act, pool = block
        assert conv.kernel_size == (3, 3) and conv.padding == (1, 1) and conv.stride == (1, 1)
        assert type(norm) is nn.BatchNorm2d
        assert isinstance(act, nn.LeakyReLU) and act.negative_slope == 0.01
        assert isinstance(pool, nn.MaxPool2d) and pool.kernel_size == 2 and pool.stride == 2
    assert isinstance(model.head.act, nn.LeakyReLU) and model.head.act.negative_slope == 0.01


def test_forward_by_hand_normalizes_first_and_reshapes_xy_pairs() -> None:
    model = VanillaCNN(3, width_mult=0.125, input_size=64).eval()
    x = torch.rand(2, 3, 64, 64)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        features = model.backbone.blocks((x - mean) / std)
        hidden = nn.functional.leaky_relu(model.head.fc1(features.flatten(1)), 0.01)
        vector = model.head.fc2(hidden)  # [x1, y1, x2, y2, x3, y3]
        out = model(x)
    assert torch.allclose(out[:, :, 0], vector[:, 0::2], atol=1e-6)
    assert torch.allclose(out[:, :, 1], vector[:, 1::2], atol=1e-6)


TABLE_VI_ROWS = [
    (False, False, False, False, True, True),
    (False, False, True, True, True, True),
    (True, True, True, True, True, True),
    (True, True, True, True, False, False),
    (True, True, False, False, False, False),
    (False, False, False, False, False, False),
]


@pytest.mark.parametrize("mask", TABLE_VI_ROWS)
def test_sepbn_blocks_placement_table6(mask: tuple[bool, ...]) -> None:
    model = VanillaCNN(5, norm_layer=SepBatchNorm2d, sepbn_blocks=mask, width_mult=0.125)
    modules = dict(model.named_modules())
    sep = sorted(name for name, m in modules.items() if isinstance(m, SepBatchNorm2d))
    # A SepBN holds its shared BatchNorm2d(affine=False) as ".norm"; it is not a block norm.
    plain = sorted(
        name
        for name, m in modules.items()
        if type(m) is nn.BatchNorm2d and not any(name.startswith(f"{s}.") for s in sep)
    )
    assert sep == [f"backbone.blocks.{i}.norm" for i in range(6) if mask[i]]
    assert plain == [f"backbone.blocks.{i}.norm" for i in range(6) if not mask[i]]
    assert model.backbone.sepbn_blocks == mask


def test_sepbn_blocks_indices_and_default() -> None:
    by_index = VanillaCNN(5, SimpleSepBatchNorm2d, sepbn_blocks=[4, 5], width_mult=0.125)
    kinds = [type(block.norm) for block in by_index.backbone.blocks]
    assert kinds == [nn.BatchNorm2d] * 4 + [SimpleSepBatchNorm2d] * 2
    default = VanillaCNN(5, SepBatchNorm2d, width_mult=0.125)
    assert all(isinstance(block.norm, SepBatchNorm2d) for block in default.backbone.blocks)


@pytest.mark.parametrize(
    ("blocks", "error", "match"),
    [
        ((True,) * 5, ValueError, "needs 6 entries"),
        ([0, 6], ValueError, r"\[6\] out of range"),
        (["bn3"], TypeError, "booleans or 0-based block indices"),
    ],
)
def test_sepbn_blocks_errors(blocks: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        VanillaCNN(5, SepBatchNorm2d, sepbn_blocks=blocks, width_mult=0.125)  # type: ignore[arg-type]


@pytest.mark.parametrize(("input_size", "feature_size"), [(64, 1), (96, 1), (192, 3)])
def test_input_size_sets_feature_map(input_size: int, feature_size: int) -> None:
    model = VanillaCNN(4, width_mult=0.125, input_size=input_size)
    assert model.feature_size == feature_size
    features = model.backbone(torch.rand(2, 3, input_size, input_size))
    assert features.shape == (2, model.feature_channels, feature_size, feature_size)
    assert model(torch.rand(2, 3, input_size, input_size)).shape == (2, 4, 2)


def test_width_mult_rounds_to_multiples_of_8() -> None:
    model = VanillaCNN(4, width_mult=0.1, input_size=64)
    channels = [block.conv.out_channels for block in model.backbone.blocks]
    assert channels == [8, 16, 24, 48, 104, 208]
    assert all(c % 8 == 0 for c in channels)
    assert model.head.fc1.out_features == 104  # 1024 * 0.1 rounded
    full = VanillaCNN(4)
    assert [b.conv.out_channels for b in full.backbone.blocks] == list(BLOCK_CHANNELS)


def test_other_channel_counts_and_bad_arguments() -> None:
    gray = VanillaCNN(4, width_mult=0.125, input_size=64, in_channels=1)
    assert gray(torch.rand(2, 1, 64, 64)).shape == (2, 4, 2)
    with pytest.raises(ValueError, match="input_size must be at least 64"):
        VanillaCNN(4, input_size=32)
    with pytest.raises(ValueError, match="num_points"):
        VanillaCNN(0)
    with pytest.raises(ValueError, match="width_mult"):
        VanillaCNN(4, width_mult=0)


@pytest.mark.parametrize("kernel_size", [1, 3])
def test_branch_conv_parameters(kernel_size: int) -> None:
    c, s, n = 16, 2, 7
    branch = VanillaBranch(c, s, n, kernel_size=kernel_size, hidden_features=32)
    # weight and bias (no norm follows the convolution)
    assert sum(p.numel() for p in branch.conv.parameters()) == kernel_size**2 * c * c + c
    assert branch.head.fc1.in_features == c * s * s
    assert branch(torch.rand(3, c, s, s)).shape == (3, n, 2)
    with pytest.raises(ValueError, match="positive odd"):
        VanillaBranch(c, s, n, kernel_size=2)

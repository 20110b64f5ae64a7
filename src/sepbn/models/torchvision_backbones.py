"""ResNeXt-50 (32x4d) and MobileNetV2 from torchvision, with SepBN in their bottlenecks.

Paper Sec. V-D keeps the ImageNet weights, sets the last linear layer to 2L outputs
and feeds 128 x 128 images. SepBN replaces a chosen subset of the three batch norms
of every bottleneck block (Fig. 6, Table X; BN3 alone is best and the default).

The torchvision model is always built with its own ``nn.BatchNorm2d`` (its init
loop writes ``weight`` on every BatchNorm2d), the ImageNet weights are loaded into
it, and only then are the selected norms converted with
:func:`sepbn.nn.convert_batchnorm`, which copies each BN's statistics and affine
into every SepBN set: a converted pretrained model starts where the BN model was.

BN1/BN2/BN3 of a block:

- ResNeXt bottleneck (Fig. 6 left): the norms after the 1x1 reduction, the grouped
  3x3 and the 1x1 expansion (torchvision's ``bn1``, ``bn2``, ``bn3``). The norm of
  the shortcut projection (``downsample``) and the stem norm are not in a
  bottleneck and stay BN.
- MobileNetV2 inverted residual (Fig. 6 right): the norms after the 1x1
  expansion, the 3x3 depthwise conv and the 1x1 projection. The first block has
  expansion ratio t = 1 and therefore no expansion conv: its depthwise norm is
  BN2 and its projection norm BN3, and it has no BN1. The stem and the final
  1x1 conv (1280 channels) are not in a block and stay BN.

Weights are never downloaded: ``pretrained=True`` only looks in torchvision's
cache, and the error names the file to place there and the URL to fetch it from.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlparse

import torch
from torch import Tensor, nn
from torchvision.models import MobileNet_V2_Weights, ResNeXt50_32X4D_Weights, WeightsEnum
from torchvision.models.mobilenetv2 import InvertedResidual, MobileNetV2
from torchvision.models.resnet import Bottleneck, ResNet

from sepbn.errors import ConfigError
from sepbn.models.cross_protocol import LandmarkRegressor, ProtocolBranch
from sepbn.models.preprocess import ImageNormalize
from sepbn.nn import convert_batchnorm

NormLayer = Callable[[int], nn.Module]
ModuleT = TypeVar("ModuleT", bound=nn.Module)
Pretrained = str | os.PathLike | bool | None

#: The three batch-norm positions of a bottleneck block (Fig. 6).
SEPBN_POSITIONS: tuple[str, ...] = ("bn1", "bn2", "bn3")
#: Table X: BN3 alone gives the largest gain for both networks.
DEFAULT_SEPBN_POSITIONS: tuple[str, ...] = ("bn3",)
#: Both networks downsample by 32 (stride-2 convolutions and pooling, rounding up).
DOWNSAMPLING = 32

#: torchvision weight enums; the first member is tried first by ``pretrained=True``
#: (IMAGENET1K_V1, the weights available when the paper was written).
IMAGENET_WEIGHTS: dict[str, type[WeightsEnum]] = {
    "resnext50": ResNeXt50_32X4D_Weights,
    "mobilenet_v2": MobileNet_V2_Weights,
}


class PooledHead(nn.Module):
    """Global average pooling then ``Linear(C, 2L)``: the replaced last layer.

    Args:
        in_channels: C of the feature map.
        num_points: L.
        dropout: Dropout before the linear layer (MobileNetV2's classifier has 0.2).

    Shape:
        - Input: ``(N, C, s, s)``.
        - Output: ``(N, L, 2)``, coordinates divided by the input size.
    """

    def __init__(self, in_channels: int, num_points: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.num_points = num_points
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_channels, 2 * num_points)

    def forward(self, x: Tensor) -> Tensor:
        v = self.fc(self.dropout(self.pool(x).flatten(1)))  # (N, 2L) = [x1, y1, x2, y2, ...]
        return v.view(x.shape[0], self.num_points, 2)  # (N, L, 2)


class PooledBranch(ProtocolBranch):
    """CNT branch for the torchvision backbones: extra conv (identity at init), activation, head.

    The extra convolution of Fig. 5 keeps the C channels; its kernel size is not
    given by the paper. At C = 2048 (ResNeXt) a 3x3 kernel costs 37.7M parameters
    per branch and a 1x1 kernel 4.2M (MobileNetV2, C = 1280: 14.7M vs 1.6M), and
    the 4x4 map at a 128 input leaves a 3x3 kernel little context: 1x1 is the default.

    Args:
        in_channels: C of the shared feature map.
        feature_size: s of the shared feature map (unused: the head pools globally;
            kept for the common branch-factory signature).
        num_points: L of this branch's protocol.
        kernel_size: Odd kernel size of the extra convolution.
        norm_layer: ``None`` (default, Fig. 5): no norm; a norm only for the legacy
            branch of old checkpoints (see :class:`ProtocolBranch`).
        activation: The backbone's activation (ReLU for ResNeXt, ReLU6 for MobileNetV2).
        dropout: Dropout before the final linear layer.

    Shape:
        - Input: ``(n, C, s, s)``.
        - Output: ``(n, L, 2)``.
    """

    def __init__(
        self,
        in_channels: int,
        feature_size: int,
        num_points: int,
        kernel_size: int = 1,
        norm_layer: NormLayer | None = None,
        activation: Callable[[], nn.Module] = nn.ReLU,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(
            in_channels,
            kernel_size,
            norm_layer,
            activation(),
            PooledHead(in_channels, num_points, dropout),
        )


def bottleneck_norm_positions(model: nn.Module) -> dict[str, str]:
    """Name -> ``"bn1" | "bn2" | "bn3"`` for every batch norm inside a bottleneck block.

    Args:
        model: A module containing torchvision ``Bottleneck`` (ResNeXt) or
            ``InvertedResidual`` (MobileNetV2) blocks, already converted or not.

    Returns:
        Module names as in ``model.named_modules()``; norms outside the blocks
        (stem, shortcut projection, MobileNetV2's last conv) are absent.
    """
    positions: dict[str, str] = {}
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, Bottleneck):
            for pos in SEPBN_POSITIONS:
                positions[prefix + pos] = pos
        elif isinstance(module, InvertedResidual):
            # conv = [expand 1x1 (t > 1 only)], depthwise 3x3, project 1x1, norm; the first
            # two are Conv2dNormActivation = (conv, norm, activation).
            slots = [
                f"conv.{i}.1" for i, c in enumerate(module.conv) if isinstance(c, nn.Sequential)
            ]
            slots.append(f"conv.{len(module.conv) - 1}")
            labels = SEPBN_POSITIONS[-len(slots) :]  # t = 1: no expansion -> (bn2, bn3)
            for slot, pos in zip(slots, labels):
                positions[prefix + slot] = pos
    return positions


def _check_positions(sepbn_positions: Iterable[str] | str | None) -> frozenset[str]:
    if sepbn_positions is None:
        return frozenset(DEFAULT_SEPBN_POSITIONS)
    if isinstance(sepbn_positions, str):
        sepbn_positions = (sepbn_positions,)
    positions = frozenset(sepbn_positions)
    unknown = sorted(positions - set(SEPBN_POSITIONS))
    if unknown:
        raise ValueError(
            f"unknown sepbn_positions {unknown}; valid: any subset of {list(SEPBN_POSITIONS)}"
        )
    return positions


def convert_bottleneck_norms(
    model: ModuleT,
    norm_layer: NormLayer | None,
    sepbn_positions: Iterable[str] | str | None = None,
) -> ModuleT:
    """Replace the BN1/BN2/BN3 norms named by ``sepbn_positions`` in every block.

    Args:
        model: Contains torchvision ``Bottleneck`` or ``InvertedResidual`` blocks.
        norm_layer: ``norm_layer(num_features)``; None or ``nn.BatchNorm2d`` leaves
            the model unchanged.
        sepbn_positions: Subset of ``{"bn1", "bn2", "bn3"}``; None means ``{"bn3"}``.

    Returns:
        ``model``, converted in place.
    """
    positions = _check_positions(sepbn_positions)
    if norm_layer is None or norm_layer is nn.BatchNorm2d or not positions:
        return model
    selected = {name for name, pos in bottleneck_norm_positions(model).items() if pos in positions}
    convert_batchnorm(model, norm_layer, include=lambda name, module: name in selected)
    return model


def imagenet_weights_path(arch: str, pretrained: Pretrained) -> Path | None:
    """Where the ImageNet weights of ``arch`` are, without downloading anything.

    Args:
        arch: ``"resnext50"`` or ``"mobilenet_v2"``.
        pretrained: None/False: no weights. A path: that state_dict file. True:
            torchvision's cache, ``torch.hub.get_dir()/checkpoints/<file of the URL>``.

    Returns:
        The file to load, or None.

    Raises:
        ConfigError: The file is absent; the message says where to put it and,
            for ``True``, which URL to download it from on a machine with network.
    """
    if arch not in IMAGENET_WEIGHTS:
        raise ValueError(f"unknown arch {arch!r}; valid: {sorted(IMAGENET_WEIGHTS)}")
    if pretrained is None or pretrained is False:
        return None
    if pretrained is True:
        cache = Path(torch.hub.get_dir()) / "checkpoints"
        candidates = [
            (cache / Path(urlparse(w.url).path).name, w.url) for w in IMAGENET_WEIGHTS[arch]
        ]
        for path, _ in candidates:
            if path.is_file():
                return path
        wanted = "; or ".join(f"{path} from {url}" for path, url in candidates)
        raise ConfigError(
            f"no ImageNet weights for {arch} in torchvision's cache (no download is "
            f"attempted). Download {wanted}, or pass the file's path as pretrained"
        )
    if not isinstance(pretrained, str | os.PathLike):
        raise TypeError(
            f"pretrained must be a path, True, False or None, got {type(pretrained).__name__}"
        )
    path = Path(pretrained).expanduser()
    if not path.is_file():
        raise ConfigError(f"pretrained weights file {path} not found")
    return path


def load_imagenet_weights(model: nn.Module, path: Path, head_prefix: str) -> None:
    """Load a torchvision ImageNet state_dict, strictly except the classifier.

    Args:
        model: The unconverted torchvision model.
        path: A state_dict file in torchvision's checkpoint format.
        head_prefix: Key prefix of the replaced last layer (``"fc."``, ``"classifier."``).

    Raises:
        ValueError: The file is unreadable, or its keys or shapes do not fit ``model``.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and I/O errors all mean "not a state_dict"
        raise ConfigError(f"cannot read pretrained weights {path}: {err}") from err
    if not isinstance(state, Mapping):
        raise ConfigError(
            f"pretrained weights {path} hold a {type(state).__name__}, expected a state_dict"
        )
    state = {k: v for k, v in state.items() if not k.startswith(head_prefix)}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:
        raise ConfigError(f"pretrained weights {path} do not fit the model: {err}") from err
    missing = [k for k in missing if not k.startswith(head_prefix)]
    if missing or unexpected:
        raise ConfigError(
            f"pretrained weights {path} do not fit the model: missing keys {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''}, unexpected keys {list(unexpected)[:5]}"
            f"{'...' if len(unexpected) > 5 else ''}"
        )


def _check_common(num_points: int, input_size: int, width_mult: float) -> None:
    if num_points < 1:
        raise ValueError(f"num_points must be positive, got {num_points}")
    if input_size < DOWNSAMPLING:
        raise ConfigError(f"input_size must be at least {DOWNSAMPLING}, got {input_size}")
    if width_mult <= 0:
        raise ValueError(f"width_mult must be positive, got {width_mult}")


def _check_pretrained_width(arch: str, path: Path | None, width_mult: float) -> None:
    if path is not None and width_mult != 1.0:
        raise ConfigError(
            f"ImageNet weights ({path}) need width_mult=1.0 for {arch}, got {width_mult}"
        )


def resnext50_backbone(
    norm_layer: NormLayer | None = None,
    sepbn_positions: Iterable[str] | str | None = None,
    width_mult: float = 1.0,
    pretrained: Pretrained = None,
) -> nn.Sequential:
    """ImageNet normalization + ResNeXt-50 (32x4d) up to its last stage.

    Args:
        norm_layer: Replaces the norms at ``sepbn_positions``; None keeps BN.
        sepbn_positions: Subset of ``{"bn1", "bn2", "bn3"}``; None means ``{"bn3"}``.
        width_mult: Scales the per-group width d of 32x4d (``4 * width_mult`` must be a
            whole number); the block output widths 256-2048 stay torchvision's.
        pretrained: See :func:`imagenet_weights_path`.

    Shape:
        - Input: ``(N, 3, S, S)`` float in ``[0, 1]``.
        - Output: ``(N, 2048, ceil(S / 32), ceil(S / 32))``.
    """
    width_per_group = 4 * width_mult
    if width_mult <= 0 or width_per_group != int(width_per_group):
        raise ConfigError(
            f"resnext50 width_mult must make 4 * width_mult a positive whole number "
            f"(0.25, 0.5, 0.75, 1.0, ...), got {width_mult}"
        )
    path = imagenet_weights_path("resnext50", pretrained)
    _check_pretrained_width("resnext50", path, width_mult)
    # The same constructor call as torchvision.models.resnext50_32x4d.
    net = ResNet(Bottleneck, [3, 4, 6, 3], groups=32, width_per_group=int(width_per_group))
    if path is not None:
        load_imagenet_weights(net, path, head_prefix="fc.")
    backbone = nn.Sequential(
        OrderedDict(
            normalize=ImageNormalize(),
            conv1=net.conv1,
            bn1=net.bn1,
            relu=net.relu,
            maxpool=net.maxpool,
            layer1=net.layer1,
            layer2=net.layer2,
            layer3=net.layer3,
            layer4=net.layer4,
        )
    )
    return convert_bottleneck_norms(backbone, norm_layer, sepbn_positions)


def mobilenet_v2_backbone(
    norm_layer: NormLayer | None = None,
    sepbn_positions: Iterable[str] | str | None = None,
    width_mult: float = 1.0,
    pretrained: Pretrained = None,
) -> nn.Sequential:
    """ImageNet normalization + MobileNetV2 ``features`` (the t, c, n, s table of torchvision).

    Args:
        norm_layer: Replaces the norms at ``sepbn_positions``; None keeps BN.
        sepbn_positions: Subset of ``{"bn1", "bn2", "bn3"}``; None means ``{"bn3"}``.
        width_mult: MobileNetV2's width multiplier (channels rounded to multiples of 8).
        pretrained: See :func:`imagenet_weights_path`.

    Shape:
        - Input: ``(N, 3, S, S)`` float in ``[0, 1]``.
        - Output: ``(N, 1280 * max(1, width_mult), ceil(S / 32), ceil(S / 32))``.
    """
    if width_mult <= 0:
        raise ValueError(f"width_mult must be positive, got {width_mult}")
    path = imagenet_weights_path("mobilenet_v2", pretrained)
    _check_pretrained_width("mobilenet_v2", path, width_mult)
    net = MobileNetV2(width_mult=width_mult)
    if path is not None:
        load_imagenet_weights(net, path, head_prefix="classifier.")
    backbone = nn.Sequential(OrderedDict(normalize=ImageNormalize(), features=net.features))
    backbone.out_channels = net.last_channel
    return convert_bottleneck_norms(backbone, norm_layer, sepbn_positions)


def resnext50(
    num_points: int,
    norm_layer: NormLayer | None = None,
    sepbn_positions: Iterable[str] | str | None = None,
    width_mult: float = 1.0,
    input_size: int = 128,
    pretrained: Pretrained = None,
) -> LandmarkRegressor:
    """ResNeXt-50 (32x4d) landmark regressor: the fc layer gives 2L outputs (Sec. V-D).

    Args:
        num_points: L.
        norm_layer: SepBN variant for ``sepbn_positions``; None keeps BN everywhere.
        sepbn_positions: Subset of ``{"bn1", "bn2", "bn3"}`` (Table X); default BN3.
        width_mult: See :func:`resnext50_backbone`.
        input_size: S, at least 32 (128 in the paper).
        pretrained: See :func:`imagenet_weights_path`.

    Shape:
        - Input: ``(N, 3, S, S)`` float in ``[0, 1]``.
        - Output: ``(N, L, 2)``; crop pixels are ``output * S``.
    """
    _check_common(num_points, input_size, width_mult)
    backbone = resnext50_backbone(norm_layer, sepbn_positions, width_mult, pretrained)
    channels = 512 * Bottleneck.expansion
    return LandmarkRegressor(
        backbone,
        PooledHead(channels, num_points),
        num_points,
        channels,
        math.ceil(input_size / DOWNSAMPLING),
    )


def mobilenet_v2(
    num_points: int,
    norm_layer: NormLayer | None = None,
    sepbn_positions: Iterable[str] | str | None = None,
    width_mult: float = 1.0,
    input_size: int = 128,
    pretrained: Pretrained = None,
    dropout: float = 0.2,
) -> LandmarkRegressor:
    """MobileNetV2 landmark regressor: the classifier's linear layer gives 2L outputs.

    Args:
        num_points: L.
        norm_layer: SepBN variant for ``sepbn_positions``; None keeps BN everywhere.
        sepbn_positions: Subset of ``{"bn1", "bn2", "bn3"}`` (Table X); default BN3.
        width_mult: MobileNetV2's width multiplier.
        input_size: S, at least 32 (128 in the paper).
        pretrained: See :func:`imagenet_weights_path`.
        dropout: Before the last linear layer; torchvision's classifier uses 0.2 and
            the paper changes only the linear layer.

    Shape:
        - Input: ``(N, 3, S, S)`` float in ``[0, 1]``.
        - Output: ``(N, L, 2)``; crop pixels are ``output * S``.
    """
    _check_common(num_points, input_size, width_mult)
    backbone = mobilenet_v2_backbone(norm_layer, sepbn_positions, width_mult, pretrained)
    channels = backbone.out_channels
    assert isinstance(channels, int)  # MobileNetV2.last_channel, set by mobilenet_v2_backbone
    return LandmarkRegressor(
        backbone,
        PooledHead(channels, num_points, dropout),
        num_points,
        channels,
        math.ceil(input_size / DOWNSAMPLING),
    )

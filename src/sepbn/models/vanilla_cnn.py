"""The Vanilla CNN of paper Table I, its regression head and its CNT branch.

Table I (input 128 x 128 x 3, L landmarks)::

    input            operator
    128 x 128 x 3    Conv(3x3x64),   BN, LReLU, MAX
    64 x 64 x 64     Conv(3x3x128),  BN, LReLU, MAX
    32 x 32 x 128    Conv(3x3x256),  BN, LReLU, MAX
    16 x 16 x 256    Conv(3x3x512),  BN, LReLU, MAX
    8 x 8 x 512      Conv(3x3x1024), BN, LReLU, MAX
    4 x 4 x 1024     Conv(3x3x2048), BN, LReLU, MAX
    2 x 2 x 2048     Flatten
    8192             Linear(8192, 1024), LReLU
    1024             Linear(1024, 2L)

LeakyReLU slope 1e-2, max pooling kernel and stride 2. The convolutions have no
bias: the normalization right after them has its own shift.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

from torch import Tensor, nn

from sepbn.errors import ConfigError
from sepbn.models.cross_protocol import LandmarkRegressor, ProtocolBranch
from sepbn.models.preprocess import IMAGENET_MEAN, IMAGENET_STD, ImageNormalize

NormLayer = Callable[[int], nn.Module]

#: Output channels of the six convolution blocks (Table I).
BLOCK_CHANNELS: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048)
#: Width of the hidden fully connected layer (Table I).
HIDDEN_FEATURES = 1024
#: LeakyReLU negative slope (Table I caption).
NEGATIVE_SLOPE = 1e-2
#: Each block halves the resolution, so the input shrinks by 2**6.
DOWNSAMPLING = 2 ** len(BLOCK_CHANNELS)


def scale_width(channels: int, width_mult: float, divisor: int = 8) -> int:
    """``channels * width_mult`` rounded to the nearest multiple of ``divisor`` (at least one).

    Multiples of 8, as MobileNetV2's ``round_nearest``, keep every channel count divisible
    by the SepBN group counts of Table V (G = 1, 2, 8) at any width; ``width_mult=1``
    leaves Table I unchanged.
    """
    return max(divisor, int(channels * width_mult + divisor / 2) // divisor * divisor)


def conv_block(in_channels: int, out_channels: int, norm_layer: NormLayer) -> nn.Sequential:
    """``Conv 3x3 (padding 1) -> norm -> LeakyReLU(0.01) -> MaxPool 2x2``, one row of Table I.

    Shape:
        - Input: ``(N, in_channels, H, W)``.
        - Output: ``(N, out_channels, H // 2, W // 2)``.
    """
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
            norm=norm_layer(out_channels),
            act=nn.LeakyReLU(NEGATIVE_SLOPE),
            pool=nn.MaxPool2d(kernel_size=2, stride=2),
        )
    )


def _block_mask(sepbn_blocks: Sequence[bool] | Sequence[int] | None) -> tuple[bool, ...]:
    """Normalize ``sepbn_blocks`` (6 bools, or 0-based block indices) to 6 bools."""
    num_blocks = len(BLOCK_CHANNELS)
    if sepbn_blocks is None:
        return (True,) * num_blocks
    items = list(sepbn_blocks)
    if items and all(isinstance(v, bool) for v in items):
        if len(items) != num_blocks:
            raise ValueError(
                f"sepbn_blocks as booleans needs {num_blocks} entries (one per block, "
                f"64x64 ... 2x2), got {len(items)}: {items}"
            )
        return tuple(bool(v) for v in items)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in items):
        raise TypeError(
            f"sepbn_blocks must be {num_blocks} booleans or 0-based block indices, got {items}"
        )
    bad = [v for v in items if not 0 <= v < num_blocks]
    if bad:
        raise ConfigError(f"sepbn_blocks indices {bad} out of range; valid 0..{num_blocks - 1}")
    return tuple(i in items for i in range(num_blocks))


class VanillaHead(nn.Module):
    """Table I regression head: ``Flatten -> Linear -> LReLU -> Linear(., 2L)``.

    Args:
        in_channels: C of the feature map.
        feature_size: s of the ``s x s`` feature map (2 at a 128 input).
        num_points: L.
        hidden_features: Width of the hidden layer (1024 in Table I).

    Shape:
        - Input: ``(N, C, s, s)``.
        - Output: ``(N, L, 2)``, coordinates divided by the input size.
    """

    def __init__(
        self,
        in_channels: int,
        feature_size: int,
        num_points: int,
        hidden_features: int = HIDDEN_FEATURES,
    ) -> None:
        super().__init__()
        self.num_points = num_points
        self.fc1 = nn.Linear(in_channels * feature_size * feature_size, hidden_features)
        self.act = nn.LeakyReLU(NEGATIVE_SLOPE)
        self.fc2 = nn.Linear(hidden_features, 2 * num_points)

    def forward(self, x: Tensor) -> Tensor:
        v = self.fc2(self.act(self.fc1(x.flatten(1))))  # (N, 2L) = [x1, y1, x2, y2, ...]
        return v.view(x.shape[0], self.num_points, 2)  # (N, L, 2)


class VanillaBranch(ProtocolBranch):
    """CNT branch for the Vanilla CNN: extra conv (identity at init), LReLU, then the Table I head.

    Fig. 5 starts every branch with an extra convolution but the paper gives no
    kernel size. It keeps the C channels; the kernel is a trade-off: at C = 2048 a
    3x3 conv costs 37.7M parameters per branch (189M for five protocols), a 1x1 conv
    4.2M. The 2x2 map at a 128 input gives a 3x3 kernel little spatial context, so
    1x1 is the default.

    Args:
        in_channels: C of the shared feature map.
        feature_size: s of the shared ``s x s`` feature map.
        num_points: L of this branch's protocol.
        kernel_size: Odd kernel size of the extra convolution (padding keeps s).
        norm_layer: ``None`` (default, Fig. 5): no norm; a norm only for the legacy
            branch of old checkpoints (see :class:`ProtocolBranch`).
        hidden_features: Width of the hidden linear layer.

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
        hidden_features: int = HIDDEN_FEATURES,
    ) -> None:
        super().__init__(
            in_channels,
            kernel_size,
            norm_layer,
            nn.LeakyReLU(NEGATIVE_SLOPE),
            VanillaHead(in_channels, feature_size, num_points, hidden_features),
        )


class VanillaBackbone(nn.Module):
    """ImageNet normalization and the six convolution blocks of Table I.

    Args:
        norm_layer: Normalization of the blocks selected by ``sepbn_blocks``.
        sepbn_blocks: Which blocks use ``norm_layer``; the others use
            ``nn.BatchNorm2d`` (Table VI). Six booleans (64x64 block first) or 0-based
            block indices; None selects all six.
        width_mult: Multiplies every channel count (beyond the paper, for CPU runs).
        in_channels: Image channels; 3 uses the ImageNet mean/std, other counts
            map ``[0, 1]`` to ``[-1, 1]``.

    Shape:
        - Input: ``(N, in_channels, S, S)`` float in ``[0, 1]``.
        - Output: ``(N, C, S // 64, S // 64)`` with ``C = 2048 * width_mult``.
    """

    def __init__(
        self,
        norm_layer: NormLayer = nn.BatchNorm2d,
        sepbn_blocks: Sequence[bool] | Sequence[int] | None = None,
        width_mult: float = 1.0,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if width_mult <= 0:
            raise ValueError(f"width_mult must be positive, got {width_mult}")
        if in_channels < 1:
            raise ValueError(f"in_channels must be positive, got {in_channels}")
        self.sepbn_blocks = _block_mask(sepbn_blocks)
        if in_channels == 3:
            self.normalize = ImageNormalize(IMAGENET_MEAN, IMAGENET_STD)
        else:
            self.normalize = ImageNormalize((0.5,) * in_channels, (0.5,) * in_channels)
        blocks = []
        channels = in_channels
        for out_channels, use_sepbn in zip(BLOCK_CHANNELS, self.sepbn_blocks):
            out_channels = scale_width(out_channels, width_mult)
            norm = norm_layer if use_sepbn else nn.BatchNorm2d
            blocks.append(conv_block(channels, out_channels, norm))
            channels = out_channels
        self.blocks = nn.Sequential(*blocks)
        self.out_channels = channels

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(self.normalize(x))


class VanillaCNN(LandmarkRegressor):
    """The Table I network: :class:`VanillaBackbone` + :class:`VanillaHead`.

    Args:
        num_points: L, the number of landmarks.
        norm_layer: ``norm_layer(num_features)``: ``nn.BatchNorm2d`` or a SepBN
            variant from :mod:`sepbn.nn`.
        sepbn_blocks: Blocks that use ``norm_layer`` (Table VI); see
            :class:`VanillaBackbone`. Default: all six.
        width_mult: Multiplies all channel counts and the hidden width (beyond the
            paper, so that small configurations train on a CPU).
        input_size: S of the square input, at least 64; the feature map is
            ``S // 64`` wide (2 at the paper's 128).
        in_channels: Image channels.

    Shape:
        - Input: ``(N, in_channels, S, S)`` float in ``[0, 1]``.
        - Output: ``(N, L, 2)``; crop pixels are ``output * S``.
    """

    def __init__(
        self,
        num_points: int,
        norm_layer: NormLayer = nn.BatchNorm2d,
        sepbn_blocks: Sequence[bool] | Sequence[int] | None = None,
        width_mult: float = 1.0,
        input_size: int = 128,
        in_channels: int = 3,
    ) -> None:
        if num_points < 1:
            raise ValueError(f"num_points must be positive, got {num_points}")
        if input_size < DOWNSAMPLING:
            raise ConfigError(
                f"input_size must be at least {DOWNSAMPLING} (six 2x2 poolings), got {input_size}"
            )
        backbone = VanillaBackbone(norm_layer, sepbn_blocks, width_mult, in_channels)
        feature_size = input_size // DOWNSAMPLING
        head = VanillaHead(
            backbone.out_channels,
            feature_size,
            num_points,
            scale_width(HIDDEN_FEATURES, width_mult),
        )
        super().__init__(backbone, head, num_points, backbone.out_channels, feature_size)
        self.input_size = input_size

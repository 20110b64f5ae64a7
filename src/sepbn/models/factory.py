"""``build_model``: one call from configuration values to a model.

Plain dictionaries map the names used in configs to builders; nothing registers
itself. A single-protocol model comes from ``num_points``, a cross-protocol (CNT)
model from ``heads``; in the latter the backbone is that of the single-protocol
model and every branch is the architecture's branch (extra conv, norm, activation,
regression) normalized with the same ``norm`` as the backbone.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from typing import Any

from torch import nn

from sepbn.models.cross_protocol import BranchFactory, CrossProtocolModel, LandmarkRegressor
from sepbn.models.torchvision_backbones import (
    PooledBranch,
    Pretrained,
    mobilenet_v2,
    resnext50,
)
from sepbn.models.vanilla_cnn import HIDDEN_FEATURES, VanillaBranch, VanillaCNN, scale_width
from sepbn.nn import DomainBatchNorm2d, SepBatchNorm2d, SimpleSepBatchNorm2d

NormLayer = Callable[[int], nn.Module]

#: Normalization name -> layer class; every class takes ``num_features`` first.
NORM_LAYERS: dict[str, type[nn.Module]] = {
    "bn": nn.BatchNorm2d,
    "sepbn": SepBatchNorm2d,
    "simple_sepbn": SimpleSepBatchNorm2d,
    "domain_bn": DomainBatchNorm2d,
}

ARCHS: tuple[str, ...] = ("vanilla_cnn", "resnext50", "mobilenet_v2")


def make_norm_layer(norm: str, norm_kwargs: Mapping[str, Any] | None = None) -> NormLayer:
    """``norm_layer(num_features)`` for a normalization name.

    Args:
        norm: A key of :data:`NORM_LAYERS`.
        norm_kwargs: Extra constructor arguments, e.g. ``{"num_sets": 3, "num_groups": 2}``.

    Raises:
        ValueError: Unknown ``norm`` or an argument the layer does not take.
    """
    if norm not in NORM_LAYERS:
        raise ValueError(f"unknown norm {norm!r}; valid: {list(NORM_LAYERS)}")
    cls = NORM_LAYERS[norm]
    kwargs = dict(norm_kwargs or {})
    try:
        inspect.signature(cls).bind(1, **kwargs)
    except TypeError as err:
        valid = [p for p in inspect.signature(cls).parameters if p != "num_features"]
        raise ValueError(
            f"norm_kwargs {sorted(kwargs)} do not fit {cls.__name__} ({err}); valid: {valid}"
        ) from err
    return partial(cls, **kwargs) if kwargs else cls


def _vanilla_cnn(
    num_points: int,
    norm_layer: NormLayer,
    sepbn_blocks: Sequence[bool] | Sequence[int] | None,
    sepbn_positions: Iterable[str] | None,
    width_mult: float,
    input_size: int,
    pretrained: Pretrained,
) -> LandmarkRegressor:
    if sepbn_positions is not None:
        raise ValueError("sepbn_positions is for resnext50/mobilenet_v2; use sepbn_blocks")
    if pretrained not in (None, False):
        raise ValueError(
            f"vanilla_cnn has no ImageNet weights (pretrained={pretrained!r}); "
            "only resnext50 and mobilenet_v2 do"
        )
    return VanillaCNN(num_points, norm_layer, sepbn_blocks, width_mult, input_size)


def _torchvision(
    builder: Callable[..., LandmarkRegressor],
) -> Callable[..., LandmarkRegressor]:
    def build(
        num_points: int,
        norm_layer: NormLayer,
        sepbn_blocks: Sequence[bool] | Sequence[int] | None,
        sepbn_positions: Iterable[str] | None,
        width_mult: float,
        input_size: int,
        pretrained: Pretrained,
    ) -> LandmarkRegressor:
        if sepbn_blocks is not None:
            raise ValueError("sepbn_blocks is for vanilla_cnn; use sepbn_positions")
        return builder(num_points, norm_layer, sepbn_positions, width_mult, input_size, pretrained)

    return build


#: Architecture name -> single-protocol builder.
BUILDERS: dict[str, Callable[..., LandmarkRegressor]] = {
    "vanilla_cnn": _vanilla_cnn,
    "resnext50": _torchvision(resnext50),
    "mobilenet_v2": _torchvision(mobilenet_v2),
}


def branch_factory(
    arch: str, norm_layer: NormLayer | None = None, kernel_size: int = 1, width_mult: float = 1.0
) -> BranchFactory:
    """The CNT branch builder of an architecture (Fig. 5).

    Args:
        arch: A name in :data:`ARCHS`.
        norm_layer: ``None`` (Fig. 5: the extra convolution alone); a norm after it only
            for the legacy branch (:class:`~sepbn.models.cross_protocol.ProtocolBranch`).
        kernel_size: Kernel of the extra convolution; see :class:`VanillaBranch`.
        width_mult: Scales the Vanilla CNN's hidden layer as in :class:`VanillaCNN`.
    """
    if arch == "vanilla_cnn":
        hidden = scale_width(HIDDEN_FEATURES, width_mult)
        return partial(
            VanillaBranch,
            kernel_size=kernel_size,
            norm_layer=norm_layer,
            hidden_features=hidden,
        )
    if arch == "resnext50":
        return partial(PooledBranch, kernel_size=kernel_size, norm_layer=norm_layer)
    if arch == "mobilenet_v2":
        return partial(
            PooledBranch, kernel_size=kernel_size, norm_layer=norm_layer, activation=nn.ReLU6
        )
    raise ValueError(f"unknown arch {arch!r}; valid: {list(ARCHS)}")


def build_model(
    arch: str,
    num_points: int | None = None,
    heads: Mapping[str, int] | None = None,
    norm: str = "bn",
    norm_kwargs: Mapping[str, Any] | None = None,
    sepbn_blocks: Sequence[bool] | Sequence[int] | None = None,
    sepbn_positions: Iterable[str] | None = None,
    width_mult: float = 1.0,
    input_size: int = 128,
    pretrained: Pretrained = None,
    branch_conv_kernel: int = 1,
    branch_norm: bool = False,
) -> LandmarkRegressor | CrossProtocolModel:
    """Build a single-protocol or cross-protocol landmark model.

    Args:
        arch: ``"vanilla_cnn"``, ``"resnext50"`` or ``"mobilenet_v2"``.
        num_points: L of a single-protocol model. Give this or ``heads``.
        heads: Protocol name -> L of a cross-protocol model; the order fixes the ids.
        norm: ``"bn"``, ``"sepbn"``, ``"simple_sepbn"`` or ``"domain_bn"``.
        norm_kwargs: Constructor arguments of the norm layer (e.g. ``num_sets``).
        sepbn_blocks: Vanilla CNN blocks that use ``norm`` (Table VI); default all.
        sepbn_positions: ResNeXt/MobileNetV2 bottleneck norms that use ``norm``
            (Table X), a subset of ``{"bn1", "bn2", "bn3"}``; default ``{"bn3"}``.
        width_mult: Channel multiplier, for small CPU configurations.
        input_size: S of the square input images (128 in the paper).
        pretrained: ImageNet weights for resnext50/mobilenet_v2: a state_dict path,
            True for torchvision's cache, None for none. Never downloads.
        branch_conv_kernel: Kernel size of each branch's extra convolution (CNT only).
        branch_norm: Put ``norm`` after each branch's extra convolution, as sepbn did before
            0.2 (old checkpoints); the default branch has none (CNT only).

    Returns:
        ``model(x) -> (N, L, 2)`` for ``num_points``; a :class:`CrossProtocolModel`
        with ``model(x, protocol_ids) -> {name: (n_p, L_p, 2)}`` for ``heads``.

    Raises:
        ValueError: Unknown ``arch`` or ``norm``, both or neither of ``num_points``
            and ``heads``, or an option that does not apply to ``arch``.
    """
    if arch not in BUILDERS:
        raise ValueError(f"unknown arch {arch!r}; valid: {list(BUILDERS)}")
    norm_layer = make_norm_layer(norm, norm_kwargs)
    if (num_points is None) == (heads is None):
        raise ValueError(
            "give exactly one of num_points (single-protocol model) and heads "
            f"(cross-protocol model), got num_points={num_points!r}, heads={heads!r}"
        )
    # torchvision models already hold their own BN: "bn" means "convert nothing".
    backbone_norm = None if norm == "bn" and arch != "vanilla_cnn" else norm_layer
    options = (backbone_norm, sepbn_blocks, sepbn_positions, width_mult, input_size, pretrained)
    if num_points is not None:
        return BUILDERS[arch](num_points, *options)
    assert heads is not None  # exactly one of num_points and heads, checked above
    # The single-protocol model's backbone is the shared one; its 1-point head is dropped.
    base = BUILDERS[arch](1, *options)
    return CrossProtocolModel(
        base.backbone,
        base.feature_channels,
        base.feature_size,
        heads,
        branch_factory(arch, norm_layer if branch_norm else None, branch_conv_kernel, width_mult),
    )

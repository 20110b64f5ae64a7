"""Replacing the ``nn.BatchNorm2d`` layers of any model by SepBN-type layers."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from sepbn.nn.domain_batch_norm import DomainBatchNorm2d
from sepbn.nn.functional import copy_running_stats
from sepbn.nn.separable_norm_base import SeparableNormBase

NormFactory = Callable[[int], nn.Module]
IncludeFn = Callable[[str, nn.Module], bool]

# Layers whose inner batch norms belong to them and must not be converted again.
_CONVERTED = (SeparableNormBase, DomainBatchNorm2d)


def convert_batchnorm(
    model: nn.Module, factory: NormFactory, include: IncludeFn | None = None
) -> nn.Module:
    """Replace ``nn.BatchNorm2d`` modules of ``model`` by ``factory(num_features)``.

    The new layer starts from the old one: a factory result with an
    ``init_from_batchnorm`` method (every layer of :mod:`sepbn.nn`) gets the old running
    statistics, eps and momentum, and the old affine copied into every set or branch; a
    batch norm gets the same; any other module (for example ``nn.GroupNorm``) keeps its
    own initialization. The new layer is moved to the old
    one's device and dtype and takes its train/eval mode. Since the sets start equal, a
    freshly converted model in eval mode gives exactly the output it gave before.

    Modules inside an existing SepBN-type or ``DomainBatchNorm2d`` layer are never
    converted, so converting twice is safe.

    Args:
        model: Any module (a torchvision ResNeXt or MobileNetV2, a user's own net, or a
            single ``nn.BatchNorm2d``). Converted in place.
        factory: Builds the replacement from the channel count, e.g.
            ``lambda c: SepBatchNorm2d(c, num_sets=3, num_groups=2)``.
        include: ``include(qualified_name, batch_norm) -> bool`` selects which batch norms
            to replace, e.g. ``lambda name, m: name.endswith("bn3")``; all when None.

    Returns:
        ``model``, or the replacement when ``model`` itself is a selected batch norm.

    Raises:
        TypeError: If ``factory`` does not return an ``nn.Module``.
    """
    if isinstance(model, nn.BatchNorm2d):
        return _replace("", model, factory, include)
    _convert_children(model, "", factory, include)
    return model


def _convert_children(
    module: nn.Module, prefix: str, factory: NormFactory, include: IncludeFn | None
) -> None:
    if isinstance(module, _CONVERTED):
        return
    for child_name, child in module.named_children():
        name = f"{prefix}{child_name}"
        if isinstance(child, nn.BatchNorm2d):
            new = _replace(name, child, factory, include)
            if new is not child:
                setattr(module, child_name, new)
        else:
            _convert_children(child, f"{name}.", factory, include)


def _replace(
    name: str, bn: nn.BatchNorm2d, factory: NormFactory, include: IncludeFn | None
) -> nn.Module:
    if include is not None and not include(name, bn):
        return bn
    new = factory(bn.num_features)
    if not isinstance(new, nn.Module):
        raise TypeError(
            f"factory({bn.num_features}) for {name or 'the model'} must return an nn.Module, "
            f"got {type(new).__name__}"
        )
    reference = bn.running_mean if bn.running_mean is not None else bn.weight
    if reference is not None:
        new.to(device=reference.device, dtype=reference.dtype)
    init = getattr(new, "init_from_batchnorm", None)
    if callable(init):
        init(bn)
    elif isinstance(new, _NormBase):
        _copy_batchnorm(bn, new)
    new.train(bn.training)
    return new


@torch.no_grad()
def _copy_batchnorm(src: _NormBase, dst: _NormBase) -> None:
    """Copy eps, momentum and whatever statistics and affine both batch norms have."""
    if src.num_features != dst.num_features:
        raise ValueError(
            f"cannot copy {type(src).__name__}({src.num_features}) into "
            f"{type(dst).__name__}({dst.num_features}): channel counts differ"
        )
    dst.eps, dst.momentum = src.eps, src.momentum
    copy_running_stats(src, dst)
    if src.affine and dst.affine:
        dst.weight.copy_(src.weight)
        dst.bias.copy_(src.bias)

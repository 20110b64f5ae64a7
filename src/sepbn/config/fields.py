"""The model choices, which :class:`~sepbn.config.ModelConfig` fields each of them uses, and the
checks that a field set for another choice is not silently ignored.

Under a norm layer or architecture that does not use a field, that field must keep its default;
:func:`unused_model_fields` lists the ones that do not, each with the reason for the error.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Mapping
from typing import Any, Literal

from sepbn.config.conversion import convert
from sepbn.config.messages import did_you_mean
from sepbn.errors import ConfigError

__all__ = [
    "ARCH_FIELDS",
    "NORM_FIELDS",
    "Arch",
    "Norm",
    "SepbnPosition",
    "branch_kernel_unused",
    "check_norm_kwargs",
    "unused_model_fields",
]

#: The architectures of :data:`sepbn.models.factory.BUILDERS`.
Arch = Literal["vanilla_cnn", "resnext50", "mobilenet_v2"]
#: The norm layers of :data:`sepbn.models.factory.NORM_LAYERS`.
Norm = Literal["bn", "sepbn", "simple_sepbn", "domain_bn"]
#: The bottleneck norms of ResNeXt-50 / MobileNetV2 that can use ``norm`` (Table X).
SepbnPosition = Literal["bn1", "bn2", "bn3"]

#: The :class:`ModelConfig` fields each norm layer takes as constructor arguments
#: (:meth:`ModelConfig.norm_layer_kwargs`). Under any other norm they keep their defaults.
NORM_FIELDS: dict[str, tuple[str, ...]] = {
    "bn": (),
    "sepbn": ("num_sets", "num_groups", "pool_size", "aggregation"),  # K, G, T (Eqs. 5-7)
    "simple_sepbn": ("num_sets",),  # K (Eqs. 3-4)
    "domain_bn": ("num_domains",),  # K pose domains (Fig. 2, Table II)
}
#: The :class:`ModelConfig` fields only some architectures use. The placement fields
#: (``sepbn_blocks``, ``sepbn_positions``) are also unused by norm ``"bn"``.
ARCH_FIELDS: dict[str, tuple[str, ...]] = {
    "vanilla_cnn": ("sepbn_blocks",),
    "resnext50": ("sepbn_positions", "pretrained"),
    "mobilenet_v2": ("sepbn_positions", "pretrained"),
}
# Why a norm or arch ignores the fields it does not list: the reason in the error.
_NORM_WHY = {
    "bn": "plain BatchNorm2d has no sets, groups, attention or domains",
    "sepbn": "its K sets are num_sets; it has no pose domains",
    "simple_sepbn": "one squeeze-and-excitation weight vector per face: it takes num_sets only, "
    "no channel groups, no pooled attention",
    "domain_bn": "one whole BN branch per pose domain, no attention: its K is num_domains",
}
_ARCH_WHY = {
    "vanilla_cnn": "its norm blocks are chosen by sepbn_blocks; it has no ImageNet weights",
    "resnext50": "its bottleneck norms are chosen by sepbn_positions",
    "mobilenet_v2": "its block norms are chosen by sepbn_positions",
}
_PLACEMENT_WHY = "it picks the layers that use the norm, and with 'bn' every layer is plain BN"
# Constructor arguments that norm_kwargs must not hold, and why.
_NOT_NORM_KWARGS = {
    "num_features": "the channel count comes from the network",
    "temperature": "τ follows the temperature section (Eq. 5)",
}


def unused_model_fields(
    values: Mapping[str, Any], defaults: Mapping[str, Any]
) -> list[tuple[str, str]]:
    """``(field, reason)`` for each model field set away from its default that the chosen norm
    or arch does not use.

    Args:
        values: Field names to values (a missing field has its default).
        defaults: Every :class:`ModelConfig` field name to its default, in field order.
    """
    norm, arch = values.get("norm", "sepbn"), values.get("arch", "vanilla_cnn")
    if not isinstance(norm, str) or not isinstance(arch, str):
        return []  # not a choice at all: the conversion of the field reports it
    norm_fields = {f for fields in NORM_FIELDS.values() for f in fields}
    arch_fields = {f for fields in ARCH_FIELDS.values() for f in fields}
    out = []
    for name, default in defaults.items():
        value = values.get(name, default)
        if value == default or (name == "pretrained" and value is False):
            continue
        if name in norm_fields and name not in NORM_FIELDS.get(norm, (name,)):
            out.append((name, f"does not apply to norm {norm!r} ({_NORM_WHY[norm]})"))
        elif name in arch_fields and name not in ARCH_FIELDS.get(arch, (name,)):
            out.append((name, f"does not apply to arch {arch!r} ({_ARCH_WHY[arch]})"))
        elif name in ("sepbn_blocks", "sepbn_positions") and norm == "bn":
            out.append((name, f"does not apply to norm 'bn' ({_PLACEMENT_WHY})"))
    return out


def check_norm_kwargs(norm: str, norm_kwargs: Mapping[str, Any]) -> None:
    """Check that each ``model.norm_kwargs`` key is a constructor argument of the ``norm``
    layer that is neither a field (:data:`NORM_FIELDS`) nor set elsewhere (τ).

    Raises:
        ConfigError: Naming the key and the valid arguments.
    """
    # Imported here: the models pull in torchvision, which a config without norm_kwargs
    # never needs.
    from sepbn.models.factory import NORM_LAYERS

    layer = NORM_LAYERS[norm]
    own = NORM_FIELDS[norm]
    params = inspect.signature(layer).parameters
    hints = typing.get_type_hints(layer.__init__)
    valid = [p for p in params if p not in own and p not in _NOT_NORM_KWARGS]
    for name in norm_kwargs:
        key = f"model.norm_kwargs.{name}"
        if name in own:
            raise ConfigError(f"{key}: set the field model.{name} instead", key=key)
        if name in _NOT_NORM_KWARGS:
            raise ConfigError(f"{key}: not settable, {_NOT_NORM_KWARGS[name]}", key=key)
        if name not in valid:
            raise ConfigError(
                f"{key} is not an argument of {layer.__name__} (norm {norm!r})"
                f"{did_you_mean(name, valid)}; valid: {', '.join(valid)}",
                key=key,
            )
        # The constructor's annotation says what the argument takes (eps: float).
        convert(norm_kwargs[name], hints.get(name, Any), key)


def branch_kernel_unused(kernel: object, finetune: object, train: object) -> bool:
    """A non-default ``branch_conv_kernel`` in a run that surely trains a single-protocol model:
    one training set and no fine-tuning (several sets may still share one protocol)."""
    return kernel != 1 and finetune is None and isinstance(train, list) and len(train) == 1

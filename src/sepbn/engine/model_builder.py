"""Config -> model, and the model description a checkpoint carries, both ways.

The twin of :mod:`sepbn.engine.data_builder`: :func:`build_model_from_config` turns the
``model`` section of an experiment config into a network, :func:`model_info` writes what a
checkpoint needs to rebuild that network (``model_info``, see :mod:`sepbn.engine.checkpoint`)
and :func:`build_model_from_info` reads it back. :func:`load_model_from_checkpoint` puts
the three together for ``sepbn eval``, ``predict`` and ``similarity``.
"""

from __future__ import annotations

import reprlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sepbn.config import ExperimentConfig, ModelConfig, config_from_dict, upgrade_legacy_config
from sepbn.engine.checkpoint import CheckpointError, load_checkpoint, load_model_state
from sepbn.errors import ConfigError
from sepbn.models import build_model, is_cross_protocol

__all__ = [
    "build_model_from_config",
    "build_model_from_info",
    "load_model_from_checkpoint",
    "model_info",
]

MODEL_KINDS = ("single", "cross")


def build_model_from_config(
    config: ModelConfig,
    *,
    num_points: int | None = None,
    heads: Mapping[str, int] | None = None,
    pretrained: bool = True,
) -> nn.Module:
    """:func:`sepbn.models.build_model` from a :class:`ModelConfig`.

    The norm layer gets :meth:`ModelConfig.norm_layer_kwargs`: the fields of its
    :data:`sepbn.config.NORM_FIELDS` entry, then ``norm_kwargs``.

    Args:
        config: The model section.
        num_points: L of a single-protocol model; give this or ``heads``.
        heads: Protocol name to L of a cross-protocol model (the order fixes the ids).
        pretrained: Load ``config.pretrained``; False when weights come from a checkpoint.

    Raises:
        ConfigError: ``branch_conv_kernel`` set for a single-protocol model.
    """
    if num_points is not None and config.branch_conv_kernel != 1:
        raise ConfigError(
            f"model.branch_conv_kernel={config.branch_conv_kernel} does not apply to a "
            "single-protocol model (it is the kernel of each CNT branch); remove it (default: 1)",
            key="model.branch_conv_kernel",
        )
    return build_model(
        config.arch,
        num_points=num_points,
        heads=dict(heads) if heads is not None else None,
        norm=config.norm,
        norm_kwargs=config.norm_layer_kwargs(),
        sepbn_blocks=config.sepbn_blocks,
        sepbn_positions=config.sepbn_positions,
        width_mult=config.width_mult,
        input_size=config.input_size,
        pretrained=config.pretrained if pretrained and config.pretrained else None,
        branch_conv_kernel=config.branch_conv_kernel,
        branch_norm=config.branch_norm,
    )


def model_info(model: nn.Module) -> dict[str, Any]:
    """What :func:`build_model_from_info` needs to rebuild ``model`` (its ``model_info``).

    Returns:
        ``{"kind": "cross", "heads": {protocol: L_p}}`` for a cross-protocol model, else
        ``{"kind": "single", "num_points": L}``.

    Raises:
        TypeError: The model does not say its heads / point count.
    """
    if is_cross_protocol(model):
        heads = getattr(model, "heads", None)
        if not isinstance(heads, Mapping):
            heads = getattr(model, "num_points", None)
        if not isinstance(heads, Mapping):
            raise TypeError(
                "a cross-protocol model needs a 'heads' mapping (protocol name -> L) to be saved"
            )
        return {"kind": "cross", "heads": {str(k): int(v) for k, v in heads.items()}}
    num_points = getattr(model, "num_points", None)
    if not isinstance(num_points, int):
        raise TypeError("a single-protocol model needs an int 'num_points' (L) to be saved")
    return {"kind": "single", "num_points": num_points}


def build_model_from_info(
    config: ModelConfig, info: Mapping[str, Any], source: str | Path
) -> nn.Module:
    """The untrained network that a checkpoint's ``model_info`` describes.

    Args:
        config: The model section the checkpoint was trained with.
        info: Its ``model_info`` (see :func:`model_info`).
        source: The checkpoint, for error messages.

    Raises:
        CheckpointError: An unknown model kind, or a point count or head that is not a
            positive integer.
    """
    kind = info.get("kind")
    if kind == "cross":
        heads = info.get("heads")
        if not (
            isinstance(heads, Mapping)
            and heads
            and all(isinstance(k, str) and _is_count(v) for k, v in heads.items())
        ):
            raise CheckpointError(
                f"{source}: model_info 'heads' must map protocol names to landmark counts "
                f"(positive integers), got {reprlib.repr(heads)}"
            )
        return build_model_from_config(config, heads=dict(heads), pretrained=False)
    if kind == "single":
        num_points = info.get("num_points")
        if not _is_count(num_points):
            raise CheckpointError(
                f"{source}: model_info 'num_points' must be a positive integer (L), "
                f"got {reprlib.repr(num_points)}"
            )
        return build_model_from_config(config, num_points=num_points, pretrained=False)
    raise CheckpointError(
        f"{source}: unknown model kind {reprlib.repr(kind)}; valid: {list(MODEL_KINDS)}"
    )


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def load_model_from_checkpoint(
    path: str | Path,
    map_location: str | torch.device = "cpu",
    config: ExperimentConfig | None = None,
) -> tuple[nn.Module, ExperimentConfig]:
    """Rebuild the model described by a checkpoint and load its weights.

    No config file is needed, and nothing is downloaded (``pretrained`` is ignored since
    the weights come from the checkpoint).

    Args:
        path: The checkpoint.
        map_location: Device of the returned model's tensors.
        config: The experiment config to build with; ``None`` = the checkpoint's own.

    Returns:
        The model in eval mode, and the config it was built with.

    Raises:
        CheckpointError: The file is bad, or its weights do not fit the rebuilt model.
    """
    state = load_checkpoint(path, map_location=map_location)
    if config is None:
        source = f"{path} (embedded config)"
        try:
            config = config_from_dict(upgrade_legacy_config(state["config"], source), source)
        except ValueError as exc:
            raise CheckpointError(str(exc)) from exc
        except TypeError as exc:  # a value of a type no config holds, met before its check
            raise CheckpointError(f"{source}: not a config sepbn writes ({exc})") from exc
    model = build_model_from_info(config.model, state["model_info"], path)
    load_model_state(model, state["model"], str(path))
    model.to(map_location).eval()
    return model, config

"""Configs embedded in checkpoints by an older sepbn, rewritten to build the same network."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from typing import Any

from sepbn.config.fields import NORM_FIELDS, branch_kernel_unused, unused_model_fields
from sepbn.config.schema import ModelConfig

__all__ = ["upgrade_legacy_config"]


def upgrade_legacy_config(data: Mapping[str, Any], source: str = "") -> dict[str, Any]:
    """A config written before :class:`ModelConfig` checked its fields, as it was meant.

    Checkpoints embed the config that made them (:mod:`sepbn.engine.checkpoint`). Before
    ``model.num_domains`` existed the brute-force SepBN took its K from ``num_sets``, fields
    that the norm or arch does not use were silently ignored, and ``norm_kwargs`` could repeat
    a field (and won). Such a config is rewritten to build the same network: ``num_sets``
    becomes ``num_domains`` for ``norm: domain_bn``, ``norm_kwargs`` entries that are fields
    move to the fields, a config without ``model.branch_norm`` (before 0.2) gets ``true`` (its
    CNT branches had a norm), and the ignored fields go back to their defaults; each change is
    reported in a warning that starts with ``source``. A current config comes back unchanged.

    Args:
        data: A mapping for :func:`config_from_dict`.
        source: Where it came from, for the warning.

    Returns:
        A new mapping; ``data`` is not modified.
    """
    out = dict(data)
    model = out.get("model")
    if not isinstance(model, Mapping):
        return out
    model = dict(model)
    notes = []
    norm = model.get("norm", "sepbn")
    if norm == "domain_bn" and "num_domains" not in model and "num_sets" in model:
        model["num_domains"] = model.pop("num_sets")
        notes.append(f"model.num_sets={model['num_domains']!r} read as model.num_domains")
    kwargs = model.get("norm_kwargs")
    if isinstance(kwargs, Mapping) and isinstance(norm, str) and norm in NORM_FIELDS:
        kwargs = dict(kwargs)
        for name in [k for k in kwargs if k in NORM_FIELDS[norm]]:
            model[name] = kwargs.pop(name)
            notes.append(f"model.norm_kwargs.{name} moved to model.{name}")
        model["norm_kwargs"] = kwargs
    if "branch_norm" not in model and "arch" in model:
        # Written before 0.2: CNT branches had a norm after the extra convolution.
        model["branch_norm"] = True
    defaults = {f.name: f.default for f in dataclasses.fields(ModelConfig)}
    unused = [name for name, _ in unused_model_fields(model, defaults)]
    data_section = out.get("data")
    train = data_section.get("train") if isinstance(data_section, Mapping) else None
    if branch_kernel_unused(model.get("branch_conv_kernel", 1), out.get("finetune"), train):
        unused.append("branch_conv_kernel")
    for name in unused:
        notes.append(f"model.{name}={model.pop(name)!r} reset to its default (it had no effect)")
    if notes:
        where = f"{source}: " if source else ""
        warnings.warn(
            f"{where}config from an older sepbn: {'; '.join(notes)}", UserWarning, stacklevel=2
        )
    out["model"] = model
    return out

"""``--set section.field=value`` overrides, each checked against the dataclasses as it is set."""

from __future__ import annotations

import types
from collections.abc import Callable, Sequence
from typing import Any, Union, get_args, get_origin

from sepbn.config.conversion import (
    build_dataclass,
    convert,
    is_dataclass_type,
    to_dict,
    type_hints,
    type_name,
)
from sepbn.config.messages import join_key, unknown_key_error
from sepbn.config.schema import ExperimentConfig
from sepbn.config.yaml_reader import parse_yaml
from sepbn.errors import ConfigError

__all__ = ["apply_overrides", "apply_overrides_with_origin"]


def _parse_override(override: str) -> tuple[list[str], Any]:
    key, sep, raw = override.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {override!r} must look like section.field=value")
    value = parse_yaml(raw, f"--set {override}", lines=False)[0] if raw.strip() else None
    return key.split("."), value


def _set_path(data: dict[str, Any], keys: list[str], value: Any) -> str:
    """Set ``keys`` in ``data`` after checking the path and type against the dataclasses.

    Returns:
        The key path that was set (``"data.train[0].path"``).
    """
    tp: Any = ExperimentConfig
    node: Any = data
    path = ""
    for depth, key in enumerate(keys):
        last = depth == len(keys) - 1
        if get_origin(tp) in (Union, types.UnionType):
            # Descend into the non-null member of an Optional[...] annotation.
            (tp,) = [a for a in get_args(tp) if a is not type(None)]
        if is_dataclass_type(tp):
            hints = type_hints(tp)
            if key not in hints:
                raise unknown_key_error(key, path, hints)
            child_tp = hints[key]
            slot: Any = key
        elif get_origin(tp) is list:
            if not key.lstrip("-").isdigit():
                raise ConfigError(f"{path!r} is a list; index it by number", key=path)
            slot = int(key)
            if not -len(node) <= slot < len(node):
                raise ConfigError(
                    f"index {slot} out of range for {path!r} ({len(node)} item(s))", key=path
                )
            (child_tp,) = get_args(tp)
        elif get_origin(tp) is dict:
            child_tp = get_args(tp)[1] if get_args(tp) else Any
            slot = key
        else:
            raise ConfigError(f"{path!r} is a {type_name(tp)}, not a section", key=path)
        path = join_key(path, slot)
        if last:
            converted = convert(value, child_tp, path)
            node[slot] = to_dict(converted)
            return path
        child = node[slot] if isinstance(node, list) else node.get(slot)
        if child is None:
            inner = [a for a in get_args(child_tp) if a is not type(None)] or [child_tp]
            if is_dataclass_type(inner[0]):
                try:
                    child = to_dict(inner[0]())
                except TypeError:
                    raise ConfigError(
                        f"{path!r} is null; set it as a whole first", key=path
                    ) from None
            elif get_origin(inner[0]) is dict:
                child = {}
            else:
                raise ConfigError(f"{path!r} is null", key=path)
            node[slot] = child
        node, tp = child, child_tp
    raise AssertionError("_parse_override never gives an empty key list")


def apply_overrides(config: ExperimentConfig, overrides: Sequence[str]) -> ExperimentConfig:
    """Return a new config with ``--set key.path=value`` overrides applied in order.

    Each override's key and type are checked as it is applied; the result is validated once,
    so that overrides which only fit together (``model.norm=bn`` with ``model.num_groups=2``)
    may come in any order.

    Raises:
        ConfigError: Naming the override, on an unknown key, a value of the wrong type or out of
            range, or a field that does not apply.
    """
    return apply_overrides_with_origin(config, overrides)


def apply_overrides_with_origin(
    config: ExperimentConfig,
    overrides: Sequence[str],
    origin: Callable[[str], str] | None = None,
) -> ExperimentConfig:
    """:func:`apply_overrides`; ``origin(key)`` names where a key not set by an override came
    from (``"exp.yaml:3"``), for an error about it."""
    data = to_dict(config)
    paths = []
    for override in overrides:
        keys, value = _parse_override(override)
        try:
            paths.append(_set_path(data, keys, value))
        except ConfigError as exc:
            raise ConfigError(exc.reason, key=exc.key, source=f"--set {override}") from None
    try:
        return build_dataclass(ExperimentConfig, data, "")
    except ConfigError as exc:
        # The last override at, above or below the offending key caused the error; else the
        # overrides together with the key's own origin did.
        related = [
            o
            for o, p in zip(overrides, paths, strict=True)
            if _within(exc.key, p) or _within(p, exc.key)
        ]
        if related:
            source = f"--set {related[-1]}"
        else:
            sets = ", ".join(f"--set {o}" for o in overrides)
            source = f"{origin(exc.key)} (with {sets})" if origin else sets
        raise ConfigError(exc.reason, key=exc.key, source=source) from None


def _within(key: str, path: str) -> bool:
    """``key`` is ``path`` or lies under it."""
    return key == path or key.startswith((f"{path}.", f"{path}["))

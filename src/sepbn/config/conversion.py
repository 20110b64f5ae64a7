"""Plain mappings to config dataclasses and back: every value checked against its annotation.

:func:`build_dataclass` walks the annotations of a config dataclass: a
``Literal`` must be one of its choices, a ``list[X]`` a list of ``X``, a dataclass a mapping of
its fields (an unknown key is an error listing the valid ones), and so on down. The
dataclasses' own checks then run; every :class:`ConfigError` names the key path.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeGuard, Union, get_args, get_origin, get_type_hints

from sepbn.config.messages import did_you_mean, join_key, unknown_key_error
from sepbn.errors import ConfigError

__all__ = [
    "build_dataclass",
    "convert",
    "is_dataclass_type",
    "to_dict",
    "type_hints",
    "type_name",
]


def is_dataclass_type(tp: object) -> TypeGuard[type[Any]]:
    """``tp`` is a dataclass, the class itself (an annotation), not an instance."""
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def type_name(tp: Any) -> str:
    """Annotation ``tp`` in the words of an error message (``"one of 'soft', 'hard'"``)."""
    origin = get_origin(tp)
    if tp is type(None):
        return "null"
    if origin in (Union, types.UnionType):
        return " | ".join(type_name(a) for a in get_args(tp))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin is not None:
        args = ", ".join(type_name(a) for a in get_args(tp))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if is_dataclass_type(tp):
        return f"mapping ({tp.__name__})"
    return getattr(tp, "__name__", str(tp))


def type_hints(cls: type) -> dict[str, Any]:
    """The resolved field annotations of dataclass ``cls``."""
    return get_type_hints(cls)


def convert(value: Any, tp: Any, path: str) -> Any:
    """Check ``value`` against annotation ``tp`` and build dataclasses; ``path`` names it."""
    origin = get_origin(tp)
    if tp is Any:
        _check_finite(value, path)
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{path}: expected {type_name(tp)}, got null", key=path)
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return convert(value, arg, path)
            except ConfigError as exc:
                errors.append(exc)
        if len(errors) == 1:
            raise errors[0]
        raise ConfigError(f"{path}: expected {type_name(tp)}, got {value!r}", key=path)
    if origin is Literal:
        if value not in get_args(tp):
            choices = ", ".join(repr(a) for a in get_args(tp))
            raise ConfigError(
                f"{path}: {value!r} is not a valid choice{did_you_mean(value, get_args(tp))}; "
                f"valid: {choices}",
                key=path,
            )
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}", key=path)
        (item,) = get_args(tp) or (Any,)
        return [convert(v, item, join_key(path, i)) for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}", key=path)
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            args = (args[0],) * len(value)
        if len(value) != len(args):
            raise ConfigError(f"{path}: expected {len(args)} items, got {value!r}", key=path)
        return tuple(convert(v, a, join_key(path, i)) for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}", key=path)
        _, item = get_args(tp) or (str, Any)
        return {str(k): convert(v, item, join_key(path, str(k))) for k, v in value.items()}
    if is_dataclass_type(tp):
        return build_dataclass(tp, value, path)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}", key=path)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}", key=path)
        _check_int64(value, path)
        return value
    if tp is float:
        # YAML 1.1 reads "1e-3" (no dot) as a string; accept it as the number it means.
        number = value
        if isinstance(value, str):
            with contextlib.suppress(ValueError):  # not a number: reported below
                number = float(value)
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}", key=path)
        if isinstance(number, int):
            _check_int64(number, path)
        _check_finite(number, path)
        return float(number)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}", key=path)
        return value
    if tp is Path:  # a reader's path option: YAML writes it as a string
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"{path}: expected a path (a string), got {value!r}", key=path)
        return value
    raise TypeError(f"{path}: unsupported annotation {tp!r}")


_INT64 = 2**63


def _check_int64(value: int, path: str) -> None:
    # torch, NumPy and the seeds take 64-bit integers; Python's are unbounded.
    if not -_INT64 <= value < _INT64:
        raise ConfigError(
            f"{path}: {value} is out of the 64-bit range [-2**63, 2**63 - 1]", key=path
        )


def _check_finite(value: Any, path: str) -> None:
    """No NaN or infinity anywhere in ``value`` (a number, or lists and mappings of them):
    YAML reads ``.nan`` and ``.inf``, and ``nan`` / ``inf`` as strings that a float field
    takes, but no setting means them."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{path}: expected a finite number, got {value!r}", key=path)
    if isinstance(value, Mapping):
        for k, v in value.items():
            _check_finite(v, join_key(path, str(k)))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_finite(v, join_key(path, i))


def build_dataclass(cls: type, value: Any, path: str) -> Any:
    """An instance of dataclass ``cls`` from mapping ``value``, every field converted; the
    dataclass's own checks re-raised as a :class:`ConfigError` whose key starts with ``path``."""
    if isinstance(value, cls):
        return value
    where = path or "the top level"
    if not isinstance(value, Mapping):
        raise ConfigError(
            f"{where}: expected a mapping of {cls.__name__} fields, got {value!r}", key=path
        )
    hints = type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in value:
        if key not in fields:
            raise unknown_key_error(str(key), path, fields)
    kwargs = {}
    for name, f in fields.items():
        if name in value:
            kwargs[name] = convert(value[name], hints[name], join_key(path, name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            key = join_key(path, name)
            raise ConfigError(f"{where}: missing required key {key!r}", key=key)
    try:
        return cls(**kwargs)
    except ValueError as exc:
        # Checks of __post_init__: make sure the message and the key say where the value is.
        # A section's own checks name their keys in full ("model.num_groups"); a dataclass that
        # may sit anywhere (DatasetConfig) names them relative to itself ("kind").
        reason = exc.reason if isinstance(exc, ConfigError) else str(exc)
        key = exc.key if isinstance(exc, ConfigError) else ""
        if path and not key.startswith(path):
            key = join_key(path, key) if key else path
        if path and not reason.startswith(path):
            reason = f"{path}: {reason}"
        raise ConfigError(reason, key=key) from None


def to_dict(config: Any) -> Any:
    """A plain, YAML-safe ``dict`` (lists, not tuples) of a config dataclass."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, Mapping):
        return {str(k): to_dict(v) for k, v in config.items()}
    if isinstance(config, (list, tuple)):
        return [to_dict(v) for v in config]
    if isinstance(config, Path):
        return str(config)
    return config

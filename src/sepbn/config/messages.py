"""How config errors name a key and suggest a choice, shared by every step of loading."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

import yaml

from sepbn.errors import ConfigError

__all__ = ["did_you_mean", "join_key", "unknown_key_error", "yaml_value"]


def join_key(path: str, key: str | int) -> str:
    """The key path of ``key`` under ``path``: ``"model.norm"``, ``"data.train[0]"``."""
    if isinstance(key, int):
        return f"{path}[{key}]" if path else f"[{key}]"
    return f"{path}.{key}" if path else key


def did_you_mean(value: object, valid: Iterable[object]) -> str:
    """`` (did you mean 'x'?)`` for the closest string in ``valid``, or ``""``."""
    if not isinstance(value, str):
        return ""
    near = difflib.get_close_matches(value, [v for v in valid if isinstance(v, str)], n=1)
    return f" (did you mean {near[0]!r}?)" if near else ""


def unknown_key_error(key: str, section: str, valid: Iterable[str]) -> ConfigError:
    """The error for ``key`` in ``section`` (``""`` = the top level), listing the valid keys."""
    choices = sorted(valid)
    where = f"in {section}" if section else "at the top level"
    return ConfigError(
        f"unknown key {join_key(section, key)!r}{did_you_mean(key, choices)}; "
        f"valid keys {where}: {', '.join(choices)}",
        key=join_key(section, key),
    )


def yaml_value(value: Any) -> str:
    """``value`` as it would be written in a YAML file (``null``, ``[1, 2]``)."""
    return yaml.safe_dump(value, default_flow_style=True).removesuffix("\n...\n").strip()

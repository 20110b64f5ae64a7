"""Config files: YAML with ``base:`` inheritance, the file and line of every key, saving.

``base`` names one file or a list of files (relative to the file that names them), merged in
order: mappings key by key (:func:`deep_merge`), lists and scalars replace. While the files are
read, each key path remembers the file and line that set it, so that an error about a value
names where to change it (``exp.yaml:4``, or ``exp.yaml (set in base.yaml:4)``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from sepbn.config.conversion import build_dataclass, to_dict
from sepbn.config.messages import join_key
from sepbn.config.overrides import apply_overrides_with_origin
from sepbn.config.schema import ExperimentConfig
from sepbn.config.yaml_reader import read_yaml_file
from sepbn.errors import ConfigError

__all__ = ["Locations", "config_from_dict", "deep_merge", "load_config", "save_config"]


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` merged into ``base`` key by key; lists and scalars replace (the ``base:`` rule)."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


#: Key path (``"data.train[0].kind"``) -> the file and line (1-based) that set it.
Locations = dict[str, tuple[Path, int]]


def _node_locations(node: yaml.Node, path: str, file: Path, out: Locations) -> None:
    if isinstance(node, yaml.MappingNode):
        items: Iterable[tuple[str | int, yaml.Node, yaml.Node]] = (
            (k.value, k, v) for k, v in node.value
        )
    elif isinstance(node, yaml.SequenceNode):
        items = ((i, v, v) for i, v in enumerate(node.value))
    else:
        return
    for key, mark_node, value_node in items:
        child = join_key(path, key)
        out[child] = (file, mark_node.start_mark.line + 1)
        _node_locations(value_node, child, file, out)


def _merge_locations(base: Locations, over: Locations, over_data: Mapping[str, Any]) -> None:
    """``base`` updated as :func:`deep_merge` updates the data: a value that is not a mapping
    replaces everything under its key."""

    def replaced(data: Any, path: str) -> Iterable[str]:
        for key, value in data.items():
            child = join_key(path, str(key))
            if isinstance(value, Mapping):
                yield from replaced(value, child)
            else:
                yield child

    for path in replaced(over_data, ""):
        for stale in [k for k in base if k.startswith((f"{path}.", f"{path}["))]:
            del base[stale]
    base.update(over)


def _read_yaml(
    path: Path, chain: tuple[Path, ...] = (), locations: Locations | None = None
) -> dict[str, Any]:
    """Read ``path`` and resolve its ``base`` files (relative to ``path``).

    ``locations``, when given, receives the file and line of every key of the result.
    """
    path = path.resolve()
    if path in chain:
        cycle = " -> ".join(str(p) for p in (*chain, path))
        raise ConfigError(f"config files inherit from each other in a cycle: {cycle}")
    if not path.is_file():
        inherited = f" (the base of {chain[-1]})" if chain else ""
        raise ConfigError(f"config file not found: {path}{inherited}")
    data, node = read_yaml_file(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"the top level must be a mapping, got {type(data).__name__}", source=str(path)
        )
    own: Locations = {}
    if node is not None and locations is not None:
        _node_locations(node, "", path, own)
    bases = data.pop("base", None)
    if bases is None:
        if locations is not None:
            locations.update(own)
        return dict(data)
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(
            f"'base' must be a file name or a list of them, got {bases!r}", source=str(path)
        )
    merged: dict[str, Any] = {}
    for base in bases:
        base_locations: Locations = {}
        more = _read_yaml(path.parent / base, (*chain, path), base_locations)
        merged = deep_merge(merged, more)
        if locations is not None:
            _merge_locations(locations, base_locations, more)
    if locations is not None:
        own = {k: v for k, v in own.items() if k != "base" and not k.startswith("base[")}
        _merge_locations(locations, own, data)
    return deep_merge(merged, data)


def _located(key: str, locations: Locations, top: Path) -> str:
    """``top:line`` (or ``top (set in base.yaml:line)``) of ``key`` or its nearest parent."""
    while key:
        if key in locations:
            file, line = locations[key]
            if file == top.resolve():
                return f"{top}:{line}"
            return f"{top} (set in {os.path.relpath(file, top.resolve().parent)}:{line})"
        cut = max(key.rfind("."), key.rfind("["))
        key = key[: max(cut, 0)]
    return str(top)


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Load a YAML config, resolve its ``base`` chain, apply ``--set`` overrides, validate.

    Nothing but the YAML files is read: an unknown arch or norm, a typo or a field that does
    not apply fails here, before any dataset is opened.

    Args:
        path: The YAML file.
        overrides: ``"section.field=value"`` strings, applied in order.

    Raises:
        ConfigError: A missing file or base, bad YAML, an unknown key (with the valid keys), a
            bad value, or a field that does not apply to the chosen norm or arch. The message
            starts with the file and the line of the key (``exp.yaml:4: ...``, or
            ``exp.yaml (set in base.yaml:4): ...`` for an inherited key).
    """
    path = Path(path)
    locations: Locations = {}
    data = _read_yaml(path, locations=locations)
    try:
        config = build_dataclass(ExperimentConfig, data, "")
    except ConfigError as exc:
        source = _located(exc.key, locations, path)
        raise ConfigError(exc.reason, key=exc.key, source=source) from None
    if not overrides:
        return config
    return apply_overrides_with_origin(
        config, overrides, lambda key: _located(key, locations, path)
    )


def config_from_dict(data: Mapping[str, Any], source: str = "") -> ExperimentConfig:
    """Build and validate an :class:`ExperimentConfig` from a plain mapping.

    Args:
        data: The mapping (``base`` keys must already be resolved).
        source: Where it came from, prefixed to error messages.

    Raises:
        ConfigError: On an unknown key, a missing required key, a value of the wrong type or out
            of range, or a field that does not apply; the message names the key path.
    """
    try:
        return build_dataclass(ExperimentConfig, data, "")
    except ConfigError as exc:
        if not source:
            raise
        raise ConfigError(exc.reason, key=exc.key, source=source) from None


def save_config(config: ExperimentConfig, path: str | Path) -> Path:
    """Write the resolved config as YAML (loadable by :func:`load_config`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(to_dict(config), sort_keys=False, default_flow_style=False)
    path.write_text(text)
    return path

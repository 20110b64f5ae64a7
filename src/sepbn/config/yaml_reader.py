"""YAML read strictly: UTF-8 text, no duplicate key, no alias bomb, one-line errors.

``yaml.safe_load`` never runs code, but it accepts what a config must not be: a key written
twice (the last silently wins), an alias that refers to the node holding it (every walk over
the data then recurses forever), and aliases nested into each other so that a few hundred
bytes stand for billions of values (the "billion laughs": any walk over the data hangs).
:class:`StrictLoader` refuses each while the file is read, and every error is a
:class:`ConfigError` of one line that names the file and line: ``exp.yaml:4: ...``.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

import yaml

from sepbn.errors import ConfigError

__all__ = ["MAX_NODES", "StrictLoader", "parse_yaml", "read_yaml_file"]

#: The most values a document may stand for once its aliases are expanded. Configs hold a
#: few hundred; a user protocol with every flip pair and edge a few thousand.
MAX_NODES = 100_000

_MERGE_TAG = "tag:yaml.org,2002:merge"


class StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping with a key written twice."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first: dict[Hashable, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:  # "<<: *base" keys are meant to be overridden
                continue
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, Hashable):
                continue  # SafeLoader itself reports an unhashable key
            if key in first:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (first at line {first[key].start_mark.line + 1}); "
                    "a key may appear once in a mapping",
                    key_node.start_mark,
                )
            first[key] = key_node
        return super().construct_mapping(node, deep=deep)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_aliases(root: yaml.Node, at: Callable[[int], str]) -> None:
    """Refuse a node graph that holds itself, or that expands to more than :data:`MAX_NODES`.

    One depth-first pass, each node visited once: a node's expanded size is one plus that of
    its children, counted once per alias that repeats it, as any walk over the data counts it.
    """
    size: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if children_done:
            on_path.discard(id(node))
            size[id(node)] = 1 + sum(size[id(c)] for c in _children(node))
            if size[id(node)] > MAX_NODES:
                raise ConfigError(
                    f"aliases (*name) expand this value to more than {MAX_NODES} values "
                    "(an alias bomb?); a config is refused above that",
                    source=at(node.start_mark.line + 1),
                )
            continue
        if id(node) in size:
            continue
        if id(node) in on_path:
            raise ConfigError(
                "an alias (*name) refers to the value that holds it, which would nest that "
                "value in itself forever",
                source=at(node.start_mark.line + 1),
            )
        on_path.add(id(node))
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in size)


def _yaml_error(exc: yaml.YAMLError, source: str, at: Callable[[int], str]) -> ConfigError:
    """``exc`` (several lines: the problem, its context, a caret) as one line at its line."""
    if not isinstance(exc, yaml.MarkedYAMLError) or exc.problem_mark is None:
        return ConfigError(f"not valid YAML: {' '.join(str(exc).split())}", source=source)
    mark = exc.problem_mark
    reason = f"not valid YAML: {exc.problem} (column {mark.column + 1})"
    if exc.context:
        where = f" at line {exc.context_mark.line + 1}" if exc.context_mark else ""
        reason += f", {exc.context}{where}"
    return ConfigError(reason, source=at(mark.line + 1))


def parse_yaml(text: str, source: str, *, lines: bool = True) -> tuple[Any, yaml.Node | None]:
    """Parse one YAML document with :class:`StrictLoader`.

    Args:
        text: The document.
        source: What it is, for errors: a file name, or ``"--set key=value"``.
        lines: Name the line in errors (``exp.yaml:4``); off for a one-line value.

    Returns:
        The data (``None`` for an empty document) and the composed node graph (for the line
        of each key), ``None`` when empty.

    Raises:
        ConfigError: Bad YAML, a duplicate key, a self-referencing alias, an alias bomb, or
            nesting too deep to read.
    """

    def at(line: int) -> str:
        return f"{source}:{line}" if lines else source

    loader = StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, None
        _check_aliases(node, at)
        return loader.construct_document(node), node
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, source, at) from None
    except RecursionError:
        raise ConfigError(
            "nested too deeply to read (hundreds of levels of lists or mappings)", source=source
        ) from None
    finally:
        loader.dispose()


def read_yaml_file(path: Path) -> tuple[Any, yaml.Node | None]:
    """:func:`parse_yaml` of a UTF-8 file (a byte-order mark is allowed).

    Raises:
        ConfigError: The file cannot be read, is binary or not UTF-8 text (naming the line
            of the first bad byte), or any error of :func:`parse_yaml`.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"cannot read the file: {exc.strerror or exc}", source=str(path)
        ) from None
    if b"\x00" in data:
        raise ConfigError("a binary file, not a YAML config (it holds NUL bytes)", source=str(path))
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigError(
            f"not UTF-8 text (byte 0x{data[exc.start]:02x} at column {column}; a latin-1 "
            "file?); save the file as UTF-8",
            source=f"{path}:{line}",
        ) from None
    return parse_yaml(text, str(path))

"""The ``options`` of a dataset entry, checked against what its reader takes.

A reader's options are its keyword-only arguments (:func:`sepbn.data.formats.reader_options`),
and their annotations say what each one takes; ``kind: synthetic`` takes
:data:`SYNTHETIC_OPTIONS`. Checking them when the config is read (or when ``--option`` is
parsed) turns ``--option image_root=5`` into one line naming the option, not a traceback from
inside the reader after the model was built.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from typing import Any

from sepbn.config.conversion import convert
from sepbn.config.messages import did_you_mean, join_key
from sepbn.data.formats import READERS, reader_options
from sepbn.data.synthetic.config import SyntheticFaceConfig
from sepbn.errors import ConfigError

__all__ = ["SYNTHETIC_OPTIONS", "check_dataset_options"]

#: The options of ``kind: synthetic`` and what each takes (see
#: :class:`~sepbn.config.DatasetConfig`): face count, index of the first face, dataset seed,
#: the built-in protocol to draw, and the sampling settings.
SYNTHETIC_OPTIONS: dict[str, Any] = {
    "num_faces": int,
    "start_index": int,
    "seed": int,
    "layout": str,
    "config": SyntheticFaceConfig,
}
_AT_LEAST = {"num_faces": 1, "start_index": 0, "seed": 0}
# Reader arguments that are not options: set by the dataset entry itself.
_NOT_OPTIONS = {
    "on_error": "set the dataset's on_error (--on-error) instead",
    "report": "sepbn collects the skipped records itself",
}


def _reader_types(kind: str) -> dict[str, Any]:
    """The options of reader ``kind``, each with its annotation."""
    hints = typing.get_type_hints(READERS[kind])
    return {name: hints.get(name, Any) for name in reader_options(kind) if name not in _NOT_OPTIONS}


def check_dataset_options(kind: str, options: Mapping[str, Any]) -> None:
    """Check each option's name and type for a dataset of ``kind`` (a known kind).

    Raises:
        ConfigError: An option the reader does not take (listing the valid ones), or a value
            of the wrong type or out of range; the key is ``options.<name>``.
    """
    types = SYNTHETIC_OPTIONS if kind == "synthetic" else _reader_types(kind)
    for name, value in options.items():
        key = join_key("options", str(name))
        if name in _NOT_OPTIONS and kind != "synthetic":
            raise ConfigError(f"{key}: not an option, {_NOT_OPTIONS[name]}", key=key)
        if name not in types:
            valid = sorted(types)
            raise ConfigError(
                f"{key}: unknown option for dataset kind {kind!r}{did_you_mean(name, valid)}; "
                f"valid: {', '.join(valid) or 'none'}",
                key=key,
            )
        convert(value, types[name], key)
        low = _AT_LEAST.get(name) if kind == "synthetic" else None
        if low is not None and value < low:
            raise ConfigError(f"{key} must be >= {low}, got {value!r}", key=key)

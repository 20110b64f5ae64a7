"""Which landmark scheme(s) a model predicts: a checkpoint's own protocol, a cross-protocol
model's branches asked for by name (``"all"``, ``"wflw,300w"``), and the one of them whose
points the crops are refined on."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from sepbn.data.protocols import PROTOCOLS, get_protocol, protocol_for_num_points
from sepbn.inference.backends import model_num_points
from sepbn.inference.errors import InferenceError
from sepbn.models import is_cross_protocol

__all__ = ["checkpoint_protocol", "parse_protocols", "protocols_with", "richest_scheme"]


def parse_protocols(text: str | Sequence[str] | None, available: Sequence[str]) -> list[str] | None:
    """``"all"``, ``"wflw,300w"`` or a list, checked against a model's ``available`` schemes.

    Returns:
        The schemes in the order given (``"all"``: ``available``), or ``None`` for ``None``.

    Raises:
        InferenceError: An empty list, a repeated name, or a scheme the model lacks.
    """
    if text is None:
        return None
    names = [n.strip() for n in text.split(",")] if isinstance(text, str) else list(text)
    if names == ["all"]:
        return list(available)
    if not names or not all(names) or len(set(names)) != len(names):
        raise InferenceError(f"protocols {text!r}: give 'all' or distinct names like wflw,300w")
    missing = [n for n in names if n not in available]
    if missing:
        raise InferenceError(
            f"the model has no branch for {missing[0]!r}; valid: {list(available)} or 'all'"
        )
    return names


def richest_scheme(schemes: Sequence[str], heads: Any) -> str:
    """Of ``schemes`` (``heads``: scheme -> L), the one with the most points (the first of
    equals): the scheme crops are refined on."""
    return max(schemes, key=lambda n: (int(heads[n]), -list(schemes).index(n)))


def checkpoint_protocol(model: nn.Module, config: Any, protocol: str | None, path: Any) -> str:
    """The protocol to predict with: the asked one if the model has it, else the model's own.

    Raises:
        InferenceError: A cross-protocol model without that branch (or several branches and
            none asked for), or a protocol whose point count is not the model's.
    """
    branches = list(model.protocols) if is_cross_protocol(model) else []
    if branches:
        if protocol is None:
            if len(branches) > 1:
                raise InferenceError(
                    f"{path} has branches {branches}: choose one with protocol=... (--protocol)"
                )
            return branches[0]
        if protocol not in branches:
            raise InferenceError(f"{path} has no branch {protocol!r}; valid: {branches}")
        return protocol
    num_points = model_num_points(model)
    if protocol is not None:
        asked = get_protocol(protocol)
        if asked.num_points != num_points:
            raise InferenceError(
                f"{path} is a {num_points}-point model; protocol {protocol!r} has "
                f"{asked.num_points} points (valid: {protocols_with(num_points)})"
            )
        return protocol
    hints = [d.protocol for d in config.data.train if d.protocol]
    try:
        return protocol_for_num_points(num_points, hints)
    except ValueError as exc:
        raise InferenceError(f"{path}: {exc}") from None


def protocols_with(num_points: int) -> list[str]:
    """The built-in protocols of ``num_points`` points."""
    return [name for name, p in PROTOCOLS.items() if p.num_points == num_points]

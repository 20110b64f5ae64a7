"""The error of the inference area: a bad input that the CLI reports in one line."""

from __future__ import annotations

from sepbn.errors import SepbnError

__all__ = ["InferenceError"]


class InferenceError(SepbnError, ValueError):
    """A photo, box, device, protocol or output path that prediction or export cannot use.

    The message names the offending value (the file, the box) and what would be valid.
    """

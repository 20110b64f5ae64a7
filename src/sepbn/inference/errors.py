"""The errors of the inference area, and the one line that names what failed on one input."""

from __future__ import annotations

import re

import cv2

from sepbn.data.errors import DatasetError
from sepbn.errors import SepbnError

__all__ = ["InferenceError", "OutputError", "error_reason"]


class InferenceError(SepbnError, ValueError):
    """A photo, box, device, protocol or output path that prediction or export cannot use.

    The message names the offending value (the file, the box) and what would be valid.
    """


class OutputError(InferenceError):
    """A result file that could not be written (a full disk, no permission).

    Attributes:
        path: The file being written.
    """

    def __init__(self, path: object, reason: str) -> None:
        super().__init__(f"cannot write {path}: {reason}")
        self.path = path
        self.reason = reason


# "OpenCV(4.x) /path/loadsave.cpp:79: error: (-215:Assertion failed) pixels <= ... in function"
_CV2_MESSAGE = re.compile(r"error: \([-\d]+:(?P<kind>[^)]*)\) (?P<what>.*?)(?: in function .*)?$")


def error_reason(exc: BaseException) -> str:
    """One line saying why one photo or frame failed, for its record and the warning line.

    A sepbn error is its own message; OpenCV's assertions are translated where they have a
    plain meaning; anything else is its type and the first line of its message.
    """
    if isinstance(exc, DatasetError):
        return exc.reason
    if isinstance(exc, SepbnError):
        return str(exc)
    text = str(exc).strip()
    if isinstance(exc, cv2.error):
        if "CV_IO_MAX_IMAGE_PIXELS" in text:
            return (
                "the image declares more pixels than OpenCV decodes "
                "(CV_IO_MAX_IMAGE_PIXELS, 2^30 by default)"
            )
        match = _CV2_MESSAGE.search(text.replace("\n", " "))
        if match:
            return f"OpenCV: {match['kind'].strip().lower()}: {match['what'].strip()}"
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__

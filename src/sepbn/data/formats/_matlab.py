"""Read MATLAB ``.mat`` files of either version with one interface.

MATLAB v7.3 files are HDF5 (read with h5py): arrays are stored transposed (column-major) and
cell arrays are arrays of object references. Older v5 files are read with scipy, after
:func:`~sepbn.data.formats._mat_v5.check_v5` has made sure their structure cannot crash it.
This class hides both differences, so the readers index every array as MATLAB would print it.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import scipy.io

from sepbn.data.errors import DatasetError
from sepbn.data.formats._mat_v5 import check_v5

# MATLAB classes that hold numbers (v7.3 files name the class of each variable).
_NUMERIC_CLASSES = {
    "double", "single", "logical",
    "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
}  # fmt: skip


def _one_line(e: Exception) -> str:
    """``"TypeName: message"`` on one line, for errors raised by scipy and h5py."""
    return " ".join(f"{type(e).__name__}: {e}".split())


def load_v5(path: Path, **options: Any) -> dict[str, Any]:
    """``scipy.io.loadmat`` of a v5 file whose structure passed :func:`check_v5` first.

    Raises:
        MalformedMatFile: A structure scipy would not read safely (a ValueError).
        OSError: The file is unreadable.
    """
    data = path.read_bytes()
    check_v5(data)
    return scipy.io.loadmat(io.BytesIO(data), **options)


def cell_string(element: np.ndarray, source: str, name: str) -> str:
    """One element of a MATLAB cell array of strings.

    v5 files give a numpy string array; v7.3 files store chars as uint16 code points.

    Raises:
        DatasetError: The element holds no text (numbers, a nested cell, a struct).
    """
    c = np.asarray(element)
    if c.dtype.kind == "U":
        return str(c.ravel()[0]) if c.size else ""
    if c.dtype.kind == "S":
        return c.ravel()[0].decode("latin-1") if c.size else ""
    codes = c.ravel(order="F")
    if c.dtype.kind in "ui" and np.all((codes >= 0) & (codes < 0x110000)):
        return "".join(chr(int(v)) for v in codes)
    reason = f"{name} must be a string, got a {c.dtype} array of shape {c.shape}"
    raise DatasetError(source, reason, f"bad {name}")


class MatFile:
    """A MATLAB file opened for reading, v5 or v7.3.

    Args:
        path: The ``.mat`` file.

    Raises:
        DatasetError: The file is missing or not a readable MATLAB file.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._h5: h5py.File | None = None
        self._v5: dict[str, Any] = {}
        if not self.path.is_file():
            raise DatasetError(str(self.path), "MATLAB file not found")
        try:
            if h5py.is_hdf5(self.path):
                self._h5 = h5py.File(self.path, "r")
            else:
                self._v5 = load_v5(self.path)
        except Exception as e:  # scipy/h5py raise many types for corrupt files
            raise DatasetError(
                str(self.path),
                f"not a readable MATLAB .mat file ({_one_line(e)})",
                "not a readable MATLAB .mat file",
            ) from None

    @property
    def version(self) -> str:
        """``"7.3"`` for HDF5 files, ``"5"`` otherwise."""
        return "7.3" if self._h5 is not None else "5"

    def keys(self) -> list[str]:
        """The variable names stored in the file."""
        if self._h5 is not None:
            return sorted(k for k in self._h5 if not k.startswith("#"))
        return sorted(k for k in self._v5 if not k.startswith("__"))

    def __contains__(self, key: str) -> bool:
        return key in self.keys()

    def _need(self, key: str) -> None:
        if key not in self:
            raise DatasetError(
                str(self.path), f"variable {key!r} not found; the file has {self.keys()}"
            )

    def _fail(self, key: str, e: Exception) -> DatasetError:
        return DatasetError(
            f"{self.path}[{key}]", f"unreadable ({_one_line(e)})", "unreadable MATLAB variable"
        )

    def array(self, key: str) -> np.ndarray:
        """A numeric variable in MATLAB orientation (rows x columns)."""
        self._need(key)
        try:
            if self._h5 is not None:
                return np.asarray(self._h5[key][()]).T
            return np.asarray(self._v5[key])
        except Exception as e:
            raise self._fail(key, e) from None

    def numbers(self, key: str) -> np.ndarray:
        """A numeric variable (numbers or logicals) as float64, in MATLAB orientation.

        Raises:
            DatasetError: The variable is missing, or is text, a cell, a struct or complex,
                naming the file and the variable.
        """
        arr = self.array(key)
        kind = arr.dtype.kind
        if self._h5 is not None:
            matlab_class = self._h5[key].attrs.get("MATLAB_class", b"double")
            if isinstance(matlab_class, bytes):
                matlab_class = matlab_class.decode("ascii", "replace")
            if str(matlab_class) not in _NUMERIC_CLASSES:
                kind = "O"  # e.g. char arrays, stored as uint16
            what = f"MATLAB class {matlab_class}"
        else:
            what = "a cell array" if kind == "O" else f"a {arr.dtype} array"
        if kind not in "biuf":
            raise DatasetError(
                f"{self.path}[{key}]",
                f"must be a numeric array, got {what}",
                "MATLAB variable of wrong type",
            )
        return arr.astype(np.float64)

    def cell(self, key: str) -> list[np.ndarray]:
        """The elements of a cell array in MATLAB's linear (column-major) order."""
        self._need(key)
        try:
            if self._h5 is not None:
                h5 = self._h5
                refs = np.asarray(h5[key][()])
                # HDF5 holds the transposed array, so its C order is MATLAB's column order.
                return [np.asarray(h5[r][()]).T for r in refs.ravel()]
            cells = np.asarray(self._v5[key])
            if cells.dtype != object:
                raise TypeError(f"expected a cell array, got a {cells.dtype} array")
            return [np.asarray(c) for c in cells.ravel(order="F")]
        except DatasetError:
            raise
        except Exception as e:
            raise self._fail(key, e) from None

    def strings(self, key: str) -> list[str]:
        """A cell array of strings (e.g. file names).

        Raises:
            DatasetError: An element is not a string, naming it (1-based).
        """
        return [
            cell_string(c, f"{self.path}[{key} {i}]", key)
            for i, c in enumerate(self.cell(key), start=1)
        ]

    def close(self) -> None:
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None

    def __enter__(self) -> MatFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""Read MATLAB ``.mat`` files of either version with one interface.

MATLAB v7.3 files are HDF5 (read with h5py): arrays are stored transposed (column-major) and
cell arrays are arrays of object references. Older v5 files are read with scipy. This class
hides both differences, so the readers index every array as MATLAB would print it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
import scipy.io

from sepbn.data.errors import DatasetError


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
                self._v5 = scipy.io.loadmat(self.path)
        except Exception as e:  # scipy/h5py raise many types for corrupt files
            raise DatasetError(
                str(self.path), f"not a readable MATLAB .mat file ({type(e).__name__}: {e})"
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
        return DatasetError(f"{self.path}[{key}]", f"unreadable ({type(e).__name__}: {e})")

    def array(self, key: str) -> np.ndarray:
        """A numeric variable in MATLAB orientation (rows x columns)."""
        self._need(key)
        try:
            if self._h5 is not None:
                return np.asarray(self._h5[key][()]).T
            return np.asarray(self._v5[key])
        except Exception as e:
            raise self._fail(key, e) from None

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
        """A cell array of strings (e.g. file names)."""
        out = []
        for c in self.cell(key):
            if c.dtype.kind in "US":
                out.append(str(c.ravel()[0]) if c.size else "")
            else:
                # v7.3 stores char arrays as uint16 code points.
                out.append("".join(chr(int(v)) for v in c.ravel(order="F")))
        return out

    def close(self) -> None:
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None

    def __enter__(self) -> MatFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

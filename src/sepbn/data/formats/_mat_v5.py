"""A structural check of MATLAB v5 ``.mat`` bytes, run before scipy parses them.

scipy's v5 reader is not hardened against damaged files (its ``loadmat`` docstring says so):
an element whose data-type code is out of range indexes a C table of dtypes and crashes the
process with a segmentation fault (scipy/scipy#25349), a crash no ``except`` can catch.
A truncated download or a flipped byte is enough. This module walks the file's elements the
way scipy will read them, for the array classes the dataset readers use (numeric, logical,
char, cell, struct), and raises :class:`MalformedMatFile` where a code, size or count is not
one scipy reads safely. It reads no values; scipy still does that.

Layout (MathWorks, "MAT-File Format", v5): a 128-byte header whose last two bytes are
``IM`` (little-endian) or ``MI``, then data elements. An element is an 8-byte tag (data type,
byte count) followed by its data padded to 8 bytes, or a "small" element packing type,
count and up to 4 data bytes into 8 bytes. A variable is a ``miMATRIX`` element holding
array flags, dimensions, name and the class's data; ``miCOMPRESSED`` wraps one ``miMATRIX``
in zlib.
"""

from __future__ import annotations

import math
import struct
import zlib

# Data types (Table 1-1 of the format): those scipy maps to a dtype.
_MI_INT8, _MI_INT32, _MI_UINT32 = 1, 5, 6
_MI_MATRIX, _MI_COMPRESSED, _MI_UTF8 = 14, 15, 16
_MI_NUMBERS = {1, 2, 3, 4, 5, 6, 7, 9, 12, 13, 16, 17, 18}
# Array classes: cell, struct, char and the numeric ones (double .. uint64). Objects,
# sparse matrices, function handles and opaque classes are never in the datasets.
_MX_CELL, _MX_STRUCT, _MX_CHAR = 1, 2, 4
_MX_NUMERIC = set(range(6, 16))
_COMPLEX_FLAG = 0x0800
_MAX_DIMS = 32  # scipy's buffer for the dimensions
_MAX_DEPTH = 32  # cells in cells in ...; the datasets nest two deep


class MalformedMatFile(ValueError):
    """The bytes are not a v5 ``.mat`` file scipy can read safely; the message says where."""


class _Elements:
    """Sequential reader of data elements, as scipy's ``VarReader5`` reads them."""

    def __init__(self, data: bytes, endian: str, pos: int = 0) -> None:
        self.data = data
        self.endian = endian
        self.pos = pos

    def _need(self, n: int, what: str) -> None:
        if self.pos + n > len(self.data):
            raise MalformedMatFile(f"{what} at byte {self.pos} is cut short")

    def full_tag(self, what: str) -> tuple[int, int]:
        """Type and byte count of an element that must use the full 8-byte tag."""
        self._need(8, what)
        mdtype, size = struct.unpack_from(self.endian + "II", self.data, self.pos)
        self.pos += 8
        return mdtype, size

    def element(self, what: str, allowed: set[int]) -> bytes:
        """The data of the next (full or small) element, whose type must be in ``allowed``."""
        self._need(8, what)
        first, second = struct.unpack_from(self.endian + "II", self.data, self.pos)
        if first >> 16:  # small element: count in the high half, data in the next 4 bytes
            mdtype, size = first & 0xFFFF, first >> 16
            if size > 4:
                raise MalformedMatFile(f"{what} at byte {self.pos}: small element of {size} bytes")
            start, self.pos = self.pos + 4, self.pos + 8
        else:
            mdtype, size = first, second
            start = self.pos + 8
            self.pos = start
            self._need(size, what)
            self.pos = start + size + (-size % 8)
        if mdtype not in allowed:
            raise MalformedMatFile(f"{what} at byte {start - 8}: data type code {mdtype}")
        return self.data[start : start + size]

    def int32s(self, what: str) -> list[int]:
        raw = self.element(what, {_MI_INT32, _MI_UINT32})
        if len(raw) % 4 or len(raw) > 4 * _MAX_DIMS:
            raise MalformedMatFile(f"{what}: {len(raw)} bytes")
        return list(struct.unpack(f"{self.endian}{len(raw) // 4}i", raw))

    def matrix(self, depth: int) -> None:
        """One ``miMATRIX`` element (tag included); raises where scipy would crash."""
        if depth > _MAX_DEPTH:
            raise MalformedMatFile(f"arrays nested more than {_MAX_DEPTH} deep")
        mdtype, size = self.full_tag("array")
        if mdtype != _MI_MATRIX:
            raise MalformedMatFile(f"array at byte {self.pos - 8}: data type code {mdtype}")
        start = self.pos
        self._need(size, "array")
        if size == 0:  # an empty cell element
            return
        flags = self.element("array flags", {_MI_UINT32})
        if len(flags) != 8:
            raise MalformedMatFile(f"array flags at byte {start}: {len(flags)} bytes")
        (word,) = struct.unpack_from(self.endian + "I", flags)
        mx_class = word & 0xFF
        dims = self.int32s("array dimensions")
        if len(dims) < 2 or min(dims) < 0:
            raise MalformedMatFile(f"array at byte {start}: dimensions {dims}")
        count = math.prod(dims)
        self.element("array name", {_MI_INT8, _MI_UTF8})
        if mx_class in _MX_NUMERIC or mx_class == _MX_CHAR:
            self.element("array data", _MI_NUMBERS)
            if word & _COMPLEX_FLAG:
                self.element("imaginary part", _MI_NUMBERS)
        elif mx_class in (_MX_CELL, _MX_STRUCT):
            fields = 1
            if mx_class == _MX_STRUCT:
                (length, *_) = self.int32s("field name length") or [0]
                names = self.element("field names", {_MI_INT8, _MI_UTF8})
                if length <= 0 or len(names) % length:
                    raise MalformedMatFile(f"struct at byte {start}: field name length {length}")
                fields = len(names) // length
            # Every element of a cell or struct is an array of at least a tag.
            if count * fields * 8 > start + size - self.pos:
                raise MalformedMatFile(f"array at byte {start}: {count} elements do not fit")
            for _ in range(count * fields):
                self.matrix(depth + 1)
        else:
            raise MalformedMatFile(f"array at byte {start}: unsupported class {mx_class}")
        if self.pos != start + size:
            raise MalformedMatFile(
                f"array at byte {start}: {size} bytes declared, {self.pos - start} read"
            )


def check_v5(data: bytes) -> None:
    """Walk every variable of a v5 ``.mat`` file's bytes.

    Raises:
        MalformedMatFile: Where the structure is not one scipy reads safely.
    """
    if len(data) < 128 or 0 in data[:4]:
        raise MalformedMatFile("no MATLAB v5 header (v4 files are not supported)")
    endian = {b"IM": "<", b"MI": ">"}.get(data[126:128])
    if endian is None:
        raise MalformedMatFile(f"byte-order mark {data[126:128]!r}, expected b'IM' or b'MI'")
    (version,) = struct.unpack_from(endian + "H", data, 124)
    if version != 0x0100:
        raise MalformedMatFile(f"format version {version:#06x}, expected 0x0100 (v5 to v7)")
    top = _Elements(data, endian, 128)
    while top.pos < len(data):
        mdtype, size = top.full_tag("variable")
        start = top.pos
        top._need(size, "variable")
        if mdtype == _MI_COMPRESSED:
            try:
                inner = zlib.decompress(data[start : start + size])
            except zlib.error as e:
                raise MalformedMatFile(f"compressed variable at byte {start - 8}: {e}") from None
            _Elements(inner, endian).matrix(depth=0)
        elif mdtype == _MI_MATRIX:
            top.pos = start - 8
            top.matrix(depth=0)
        else:
            raise MalformedMatFile(f"variable at byte {start - 8}: data type code {mdtype}")
        top.pos = start + size

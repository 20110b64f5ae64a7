"""Landmark annotation protocols: point count, flip permutation, NME normalizer.

Landmark semantics live here as data, defined once and used by the readers, the
augmentation (horizontal flip) and the metrics (paper Eq. 8 normalizer, Sec. V-A).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from sepbn.errors import ConfigError

NormKind = Literal["inter_ocular", "box"]


@dataclass(frozen=True)
class LandmarkProtocol:
    """One annotation scheme.

    Attributes:
        name: Protocol key, e.g. ``"wflw"``.
        num_points: L, the number of landmarks.
        flip_perm: 0-based horizontal-flip permutation: after mirroring the image,
            ``flipped = points[flip_perm]`` restores the semantic order.
        norm: ``"inter_ocular"`` (distance between ``norm_points``) or ``"box"``
            (``sqrt(w * h)`` of the annotation box, the AFLW protocol).
        norm_points: The two landmark indices of the inter-ocular distance.
    """

    name: str
    num_points: int
    flip_perm: tuple[int, ...]
    norm: NormKind = "inter_ocular"
    norm_points: tuple[int, ...] | None = None  # two indices, checked in __post_init__

    def __post_init__(self) -> None:
        perm = self.flip_perm
        if len(perm) != self.num_points:
            raise ValueError(
                f"protocol {self.name!r}: flip_perm has {len(perm)} entries, "
                f"expected num_points={self.num_points}"
            )
        if sorted(perm) != list(range(self.num_points)):
            raise ValueError(f"protocol {self.name!r}: flip_perm is not a permutation of 0..L-1")
        if any(perm[perm[i]] != i for i in range(self.num_points)):
            raise ValueError(f"protocol {self.name!r}: flip_perm is not an involution")
        if self.norm not in ("inter_ocular", "box"):
            raise ValueError(
                f"protocol {self.name!r}: norm must be 'inter_ocular' or 'box', got {self.norm!r}"
            )
        if self.norm == "inter_ocular":
            if self.norm_points is None or len(self.norm_points) != 2:
                raise ValueError(f"protocol {self.name!r}: inter_ocular needs two norm_points")
            if not all(0 <= p < self.num_points for p in self.norm_points):
                raise ValueError(
                    f"protocol {self.name!r}: norm_points {self.norm_points} out of range "
                    f"0..{self.num_points - 1}"
                )

    def normalizer(self, landmarks: np.ndarray, boxes: np.ndarray | None = None) -> np.ndarray:
        """The NME denominator d of Eq. 8 for each face.

        Args:
            landmarks: Ground truth, ``(N, L, 2)`` or ``(L, 2)``.
            boxes: Annotation boxes ``(N, 4)`` or ``(4,)`` as ``x_min, y_min, x_max, y_max``;
                required for ``norm="box"``.

        Returns:
            ``(N,)`` (or a scalar array for a single face) of positive distances in pixels.
        """
        gt = np.asarray(landmarks, dtype=np.float64)
        single = gt.ndim == 2
        gt = gt[None] if single else gt
        if self.norm == "inter_ocular":
            assert self.norm_points is not None  # __post_init__ requires it for inter_ocular
            i, j = self.norm_points
            d = np.linalg.norm(gt[:, i] - gt[:, j], axis=-1)
        else:
            if boxes is None:
                raise ValueError(f"protocol {self.name!r} normalizes by box size: pass boxes")
            b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
            d = np.sqrt(np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None))
        return d[0] if single else d

    def flip(self, landmarks: np.ndarray, width: float) -> np.ndarray:
        """Mirror ``(..., L, 2)`` 0-based pixel landmarks in an image of ``width`` pixels.

        The pixel at column ``x`` goes to column ``width - 1 - x``.
        """
        pts = np.asarray(landmarks, dtype=np.float64)[..., list(self.flip_perm), :].copy()
        pts[..., 0] = (width - 1) - pts[..., 0]
        return pts

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "num_points": self.num_points,
            "flip_perm": list(self.flip_perm),
            "norm": self.norm,
            "norm_points": list(self.norm_points) if self.norm_points else None,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LandmarkProtocol:
        """Build a user-defined protocol, e.g. from a config file's ``protocols:`` section."""
        known = {"name", "num_points", "flip_perm", "norm", "norm_points"}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown protocol field(s) {sorted(unknown)}; valid: {sorted(known)}")
        np_ = d.get("norm_points")
        return cls(
            name=str(d["name"]),
            num_points=int(d["num_points"]),
            flip_perm=tuple(int(i) for i in d["flip_perm"]),
            norm=d.get("norm", "inter_ocular"),
            norm_points=tuple(int(i) for i in np_) if np_ is not None else None,
        )


def _desc(hi: int, lo: int) -> list[int]:
    return list(range(hi, lo - 1, -1))


_WFLW_FLIP = (
    _desc(32, 0)
    + [46, 45, 44, 43, 42, 50, 49, 48, 47]
    + [37, 36, 35, 34, 33, 41, 40, 39, 38]
    + [51, 52, 53, 54]
    + [59, 58, 57, 56, 55]
    + [72, 71, 70, 69, 68, 75, 74, 73]
    + [64, 63, 62, 61, 60, 67, 66, 65]
    + [82, 81, 80, 79, 78, 77, 76]
    + [87, 86, 85, 84, 83]
    + [92, 91, 90, 89, 88]
    + [95, 94, 93]
    + [97, 96]
)
_300W_FLIP = (
    _desc(16, 0)
    + _desc(26, 17)
    + [27, 28, 29, 30]
    + [35, 34, 33, 32, 31]
    + [45, 44, 43, 42, 47, 46]
    + [39, 38, 37, 36, 41, 40]
    + [54, 53, 52, 51, 50, 49, 48]
    + [59, 58, 57, 56, 55]
    + [64, 63, 62, 61, 60]
    + [67, 66, 65]
)
_COFW_FLIP = [1, 0, 3, 2, 6, 7, 4, 5, 9, 8, 11, 10, 14, 15, 12, 13, 17, 16, 19, 18, 20, 21, 23, 22]
_COFW_FLIP += [24, 25, 26, 27, 28]
_AFLW_FLIP = [5, 4, 3, 2, 1, 0, 11, 10, 9, 8, 7, 6, 14, 13, 12, 17, 16, 15, 18]

PROTOCOLS: dict[str, LandmarkProtocol] = {
    p.name: p
    for p in (
        LandmarkProtocol("wflw", 98, tuple(_WFLW_FLIP), "inter_ocular", (60, 72)),
        LandmarkProtocol("300w", 68, tuple(_300W_FLIP), "inter_ocular", (36, 45)),
        LandmarkProtocol("cofw", 29, tuple(_COFW_FLIP), "inter_ocular", (8, 9)),
        # COFW's alternative, inter-pupil normalizer (pupils are points 16 and 17).
        LandmarkProtocol("cofw_pupil", 29, tuple(_COFW_FLIP), "inter_ocular", (16, 17)),
        LandmarkProtocol("aflw", 19, tuple(_AFLW_FLIP), "box", None),
        LandmarkProtocol("wider5", 5, (1, 0, 2, 4, 3), "inter_ocular", (0, 1)),
    )
}


# The built-in protocol of each point count; 29 means COFW (cofw_pupil shares the count).
PROTOCOL_BY_COUNT: dict[int, str] = {68: "300w", 98: "wflw", 29: "cofw", 19: "aflw", 5: "wider5"}


def protocol_for_num_points(num_points: int, hints: Sequence[str] = ()) -> str:
    """The protocol key of landmarks that come only with their count L.

    The first of ``hints`` with ``num_points`` points wins (e.g. the protocols a model was
    trained on), then the built-in table :data:`PROTOCOL_BY_COUNT`, then the only registered
    protocol with that count.

    Raises:
        ValueError: No protocol, or several registered ones, have ``num_points`` points; the
            message lists the known counts.
    """
    for name in hints:
        if get_protocol(name).num_points == num_points:
            return name
    if num_points in PROTOCOL_BY_COUNT:
        return PROTOCOL_BY_COUNT[num_points]
    matches = sorted(p.name for p in PROTOCOLS.values() if p.num_points == num_points)
    if len(matches) == 1:
        return matches[0]
    why = f"ambiguous: {matches}" if matches else "no protocol has that count"
    known = dict(sorted(PROTOCOL_BY_COUNT.items()))
    raise ValueError(
        f"cannot infer the protocol of {num_points}-point landmarks ({why}; known counts: "
        f"{known}); pass protocol= (--protocol on the command line)"
    )


def get_protocol(name: str) -> LandmarkProtocol:
    """Look up a protocol by key, with the valid keys in the error."""
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise ConfigError(
            f"unknown landmark protocol {name!r}; valid: {sorted(PROTOCOLS)}"
        ) from None


def register_protocol(protocol: LandmarkProtocol, *, overwrite: bool = False) -> LandmarkProtocol:
    """Add a user-defined protocol to :data:`PROTOCOLS`."""
    existing = PROTOCOLS.get(protocol.name)
    if existing is not None and existing != protocol and not overwrite:
        raise ValueError(f"protocol {protocol.name!r} already exists with a different definition")
    PROTOCOLS[protocol.name] = protocol
    return protocol

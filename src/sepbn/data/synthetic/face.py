"""A rendered synthetic face: its pixels, its projected points, and its landmarks per protocol."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sepbn.data.records import FaceRecord
from sepbn.data.synthetic.layouts import PROTOCOL_WEIGHTS, check_protocol
from sepbn.data.synthetic.params import FaceParams
from sepbn.data.synthetic.template import NUM_LANDMARKS


@dataclass
class SyntheticFace:
    """A rendered face: the pixels and every projected point they were drawn from.

    Attributes:
        params: What was rendered.
        image: ``(S, S, 3)`` uint8 RGB.
        points: ``(P_full, 2)`` projected template points, 0-based pixels.
        occluder_mask: ``(S, S)`` uint8, 255 where an occluder covers the face, or None.
    """

    params: FaceParams
    image: np.ndarray
    points: np.ndarray
    occluder_mask: np.ndarray | None

    def landmarks(self, protocol: str) -> np.ndarray:
        """Landmarks of ``protocol``, a key of :data:`PROTOCOL_WEIGHTS` (``"300w"``,
        ``"aflw"``, ``"cofw"``, ``"cofw_pupil"``, ``"wflw"`` or ``"wider5"``).

        Shape:
            ``(L, 2)`` float64, 0-based pixels.
        """
        check_protocol(protocol)
        return PROTOCOL_WEIGHTS[protocol] @ self.points

    def occluded(self, landmarks: np.ndarray) -> np.ndarray:
        """True where an occluder covers the pixel nearest to a landmark.

        Shape:
            ``landmarks``: ``(L, 2)``; returns ``(L,)`` bool.
        """
        flags = np.zeros(len(landmarks), dtype=bool)
        if self.occluder_mask is None:
            return flags
        h, w = self.occluder_mask.shape
        ij = np.round(landmarks).astype(np.int64)
        inside = (ij[:, 0] >= 0) & (ij[:, 0] < w) & (ij[:, 1] >= 0) & (ij[:, 1] < h)
        flags[inside] = self.occluder_mask[ij[inside, 1], ij[inside, 0]] > 127
        return flags

    @property
    def box(self) -> np.ndarray:
        """``(4,)`` tight box of the 68 projected landmarks, the same for every protocol."""
        lm = self.points[:NUM_LANDMARKS]
        return np.concatenate([lm.min(axis=0), lm.max(axis=0)])

    def to_record(self, protocol: str, source: str) -> FaceRecord:
        """This face as a :class:`FaceRecord` annotated with ``protocol``."""
        lm = self.landmarks(protocol)
        return FaceRecord(
            image_path=None,
            landmarks=lm,
            box=self.box,
            protocol=protocol,
            valid=np.ones(len(lm), dtype=bool),
            occluded=self.occluded(lm),
            attributes=dict(self.params.attributes),
            source=source,
            image=self.image,
            domain=self.params.domain,
        )

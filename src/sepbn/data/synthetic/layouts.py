"""Protocol layouts of the synthetic faces: each protocol's landmarks as weights of template points.

Every protocol is a fixed ``(L, P_full)`` weight matrix applied to the projected full point
set of :mod:`sepbn.data.synthetic.template` (:data:`PROTOCOL_WEIGHTS`: 300-W, WFLW, COFW,
AFLW, WIDER 5-point), so the same face, pixel for pixel, can be annotated under every
protocol. Layouts whose points the 68 landmarks do not mark (COFW's and AFLW's nose
wings, AFLW's eye corners) were fitted to real annotations of the same faces under both
markups, so the synthetic protocols relate to each other as the real ones do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from sepbn.data.synthetic.template import (
    FULL_GROUPS,
    GROUPS,
    LID_STEPS,
    NUM_FULL,
    NUM_LANDMARKS,
    lid_point,
)
from sepbn.errors import ConfigError


def _wflw_indices() -> list[int]:
    """Full-set index of each of the 98 WFLW points."""
    jaw = []
    for k in range(17):
        jaw.append(k)
        if k < 16:
            jaw.append(int(FULL_GROUPS["jaw_mid"][k]))
    brow_l, brow_r = GROUPS["brow_lower_l"], GROUPS["brow_lower_r"]
    return [
        *jaw,  # 0-32
        *range(17, 22), *brow_l,  # 33-41: upper edge tail to inner, lower edge inner to tail
        *range(22, 27), *brow_r[::-1],  # 42-50: upper edge inner to tail, lower tail to inner
        *range(27, 31), *range(31, 36),  # 51-59: nose ridge and base
        36, *(lid_point("lid_upper_l", k) for k in (3, 6, 9)),  # 60-63
        39, *(lid_point("lid_lower_l", k) for k in (3, 6, 9)),  # 64-67
        42, *(lid_point("lid_upper_r", k) for k in (3, 6, 9)),  # 68-71
        45, *(lid_point("lid_lower_r", k) for k in (3, 6, 9)),  # 72-75
        *range(48, 68),  # 76-95: outer then inner lips, same order as 300-W
        int(GROUPS["iris_l"][0]), int(GROUPS["iris_r"][0]),  # 96-97: pupils
    ]  # fmt: skip


def _selection(indices: Sequence[int]) -> np.ndarray:
    """Protocol weights that pick full-set points."""
    w = np.zeros((len(indices), NUM_FULL))
    w[np.arange(len(indices)), list(indices)] = 1.0
    return w


def _wider5() -> np.ndarray:
    """WIDER FACE 5-point weights: eye centres, nose tip, mouth corners, left to right."""
    w = np.zeros((5, NUM_FULL))
    w[0, 36:42] = 1.0 / 6.0  # image-left eye centre
    w[1, 42:48] = 1.0 / 6.0  # image-right eye centre
    w[2, 30] = 1.0  # nose tip
    w[3, 48] = 1.0  # image-left mouth corner
    w[4, 54] = 1.0  # image-right mouth corner
    return w


def _combinations(rows: Sequence[Mapping[int, float]]) -> np.ndarray:
    """Protocol weights from one ``{full-set index: weight}`` row per landmark.

    Every row must sum to 1 (an affine combination), so the landmarks move with the face
    under any shift, rotation or scaling of the projected points.
    """
    w = np.zeros((len(rows), NUM_FULL))
    for i, row in enumerate(rows):
        for k, v in row.items():
            w[i, k] += v
    if not np.allclose(w.sum(axis=1), 1.0):
        raise ValueError(f"protocol weight rows must sum to 1, got {w.sum(axis=1)}")
    return w


# Where AFLW and COFW annotators put the side of the nose: on the outermost point of the
# nostril wing (ala), beyond iBUG's alar base 31 / 35, by this fraction of the vector from
# the subnasale 33 (least squares on 26 AFLW2000-3D points: 0.36; both COFW test faces
# with 68-point ground truth agree).
_ALA_REACH = 0.35
# AFLW's outer eye corners lie beyond iBUG's 36 / 45 by this fraction of the eye width
# (fitted: 0.12 on 26 AFLW2000-3D corners, 23 of them on the outer side).
_AFLW_EYE_REACH = 0.1
# AFLW's brow outer ends lie this fraction of the way from iBUG's brow tail 17 / 26 to
# the next brow point (fitted: 0.20 on 23 AFLW2000-3D points).
_AFLW_BROW_INSET = 0.2


def _cofw() -> np.ndarray:
    """COFW 29-point weights (Burgos-Artizzu et al., ICCV 2013); see :data:`PROTOCOL_WEIGHTS`."""
    lid_mid = {
        f"{lid}_{side}": lid_point(f"lid_{lid}_{side}", LID_STEPS // 2)
        for lid in ("upper", "lower")
        for side in ("l", "r")
    }
    brow_mid = {side: int(GROUPS[f"brow_lower_{side}"][2]) for side in ("l", "r")}  # under 19/24
    pupil = {side: int(GROUPS[f"iris_{side}"][0]) for side in ("l", "r")}
    ala = 1.0 + _ALA_REACH
    return _combinations(
        [
            {17: 1.0}, {26: 1.0},  # 0-1: brow outer ends
            {21: 1.0}, {22: 1.0},  # 2-3: brow inner ends
            {19: 1.0}, {brow_mid["l"]: 1.0},  # 4-5: image-left brow middle, top and bottom
            {24: 1.0}, {brow_mid["r"]: 1.0},  # 6-7: image-right brow middle, top and bottom
            {36: 1.0}, {45: 1.0},  # 8-9: outer eye corners (the inter-ocular pair)
            {39: 1.0}, {42: 1.0},  # 10-11: inner eye corners
            {lid_mid["upper_l"]: 1.0}, {lid_mid["lower_l"]: 1.0},  # 12-13: lid middles
            {lid_mid["upper_r"]: 1.0}, {lid_mid["lower_r"]: 1.0},  # 14-15
            {pupil["l"]: 1.0}, {pupil["r"]: 1.0},  # 16-17: pupils
            {31: ala, 33: -_ALA_REACH}, {35: ala, 33: -_ALA_REACH},  # 18-19: nose wings
            {30: 1.0}, {33: 1.0},  # 20-21: nose tip, subnasale
            {48: 1.0}, {54: 1.0},  # 22-23: mouth corners
            {51: 1.0}, {62: 1.0}, {66: 1.0}, {57: 1.0},  # 24-27: lip edges, top to bottom
            {8: 1.0},  # 28: chin
        ]
    )  # fmt: skip


def _aflw() -> np.ndarray:
    """AFLW 19-point weights (the 21 AFLW points without the ears); see :data:`PROTOCOL_WEIGHTS`."""
    ala, eye, brow = 1.0 + _ALA_REACH, 1.0 + _AFLW_EYE_REACH, 1.0 - _AFLW_BROW_INSET
    inset = _AFLW_BROW_INSET
    return _combinations(
        [
            {17: brow, 18: inset}, {19: 1.0}, {21: 1.0},  # 0-2: image-left brow, outer to inner
            {22: 1.0}, {24: 1.0}, {26: brow, 25: inset},  # 3-5: image-right brow, inner to outer
            {36: eye, 39: -_AFLW_EYE_REACH},  # 6: image-left eye, outer corner
            {37: 0.25, 38: 0.25, 40: 0.25, 41: 0.25},  # 7: its centre
            {39: 1.0},  # 8: its inner corner
            {42: 1.0},  # 9: image-right eye, inner corner
            {43: 0.25, 44: 0.25, 46: 0.25, 47: 0.25},  # 10: its centre
            {45: eye, 42: -_AFLW_EYE_REACH},  # 11: its outer corner
            {31: ala, 33: -_ALA_REACH}, {30: 1.0}, {35: ala, 33: -_ALA_REACH},  # 12-14: nose
            {48: 1.0}, {62: 0.5, 66: 0.5}, {54: 1.0},  # 15-17: mouth corner, centre, corner
            {8: 1.0},  # 18: chin
        ]
    )  # fmt: skip


#: Protocol key -> ``(L, P_full)`` weights mapping projected full-set points to landmarks.
#: Every row is an affine combination (it sums to 1) of full-set points, so each
#: protocol's points move with the face and mirror with it under the protocol's flip
#: permutation (:mod:`sepbn.data.protocols`).
#:
#: * ``"300w"``: the 68 template landmarks (iBUG order).
#: * ``"wflw"``: 98 points; the 68 plus jaw mid-points, the lower brow edges, eyelid
#:   quarter points and the pupils.
#: * ``"wider5"``: eye centres (means of the six eye points), nose tip, mouth corners.
#: * ``"cofw"`` (29) and ``"cofw_pupil"`` (the same points, inter-pupil normalizer):
#:   brow outer 0/1 and inner 2/3 ends (17, 26, 21, 22), brow middles, top (19 / 24)
#:   and bottom (the lower brow edge under them) 4-7, outer 8/9 and inner 10/11 eye
#:   corners, the middles of the upper 12/14 and lower 13/15 lids (WFLW's lid mid
#:   points), pupils 16/17, nose wings 18/19, tip 20 (30), subnasale 21 (33), mouth
#:   corners 22/23, lip edges from the top of the upper lip to the bottom of the lower
#:   one 24-27 (51, 62, 66, 57) and the chin 28 (8). Identified on the two COFW test
#:   faces that also have 68-point ground truth (COFW68); the nose wings lie beyond iBUG's
#:   31/35 there, as in AFLW.
#: * ``"aflw"`` (19): per brow outer end, middle (19 / 24), inner end; per eye outer
#:   corner, centre (mean of the four lid points), inner corner; nose wings and tip (30);
#:   mouth corners and centre (between the inner lips 62 and 66); chin (8); image-left
#:   before image-right. Fitted by least squares to the 21-point AFLW annotations of the
#:   16 AFLW2000-3D samples against their 68-point fits: a second iBUG point is used only
#:   where it lowers the leave-one-face-out residual by over 10% (brow outer ends, outer
#:   eye corners, nose wings).
PROTOCOL_WEIGHTS: dict[str, np.ndarray] = {
    "300w": _selection(range(NUM_LANDMARKS)),
    "wflw": _selection(_wflw_indices()),
    "wider5": _wider5(),
    "cofw": _cofw(),
    "cofw_pupil": _cofw(),
    "aflw": _aflw(),
}

#: Protocols a synthetic face can be annotated with, sorted: ``"300w"`` (68 points),
#: ``"aflw"`` (19), ``"cofw"`` and ``"cofw_pupil"`` (29, the same points under two NME
#: normalizers), ``"wflw"`` (98) and ``"wider5"`` (5). Point order and flip pairs follow
#: :data:`sepbn.data.protocols.PROTOCOLS`; the layouts are documented at
#: :data:`PROTOCOL_WEIGHTS`.
SYNTHETIC_PROTOCOLS: tuple[str, ...] = tuple(sorted(PROTOCOL_WEIGHTS))


def check_protocol(protocol: str) -> None:
    """Raise a ``ValueError`` listing :data:`SYNTHETIC_PROTOCOLS` if ``protocol`` is not one."""
    if protocol not in PROTOCOL_WEIGHTS:
        raise ConfigError(
            f"synthetic faces have no {protocol!r} layout; valid: {list(SYNTHETIC_PROTOCOLS)}"
        )

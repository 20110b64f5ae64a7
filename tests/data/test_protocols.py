"""Protocol lookup by point count, shared by the COCO reader and the landmark detector."""

from __future__ import annotations

import pytest

from sepbn.data.protocols import (
    PROTOCOL_BY_COUNT,
    PROTOCOLS,
    LandmarkProtocol,
    protocol_for_num_points,
)


def test_protocol_for_num_points_built_in_counts_and_hints() -> None:
    assert {n: protocol_for_num_points(n) for n in PROTOCOL_BY_COUNT} == PROTOCOL_BY_COUNT
    # A hint with the right count wins over the table; hints with another count are passed over.
    assert protocol_for_num_points(29, hints=("300w", "cofw_pupil")) == "cofw_pupil"
    assert protocol_for_num_points(68, hints=("wflw",)) == "300w"


def test_protocol_for_num_points_registered_and_unknown(monkeypatch) -> None:
    with pytest.raises(ValueError, match=r"7-point landmarks \(no protocol has that count; known"):
        protocol_for_num_points(7)
    seven = LandmarkProtocol("seven", 7, tuple(range(7)), "box")
    monkeypatch.setitem(PROTOCOLS, "seven", seven)
    assert protocol_for_num_points(7) == "seven"
    monkeypatch.setitem(PROTOCOLS, "other7", LandmarkProtocol("other7", 7, tuple(range(7)), "box"))
    with pytest.raises(ValueError, match=r"ambiguous: \['other7', 'seven'\].*68: '300w'"):
        protocol_for_num_points(7)

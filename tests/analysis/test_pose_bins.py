"""Head-pose bins: yaw of hand-made faces, per-bin NME against hand-computed means, 300-W."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from sepbn.analysis.pose_bins import (
    POSE_BIN_EDGES,
    format_pose_bins,
    landmark_yaw,
    pose_bin_keys,
    pose_bin_metrics,
    yaw_bins,
)
from sepbn.data.formats.ibug300w import read_300w
from sepbn.data.protocols import LandmarkProtocol, get_protocol

# Eye reference points, nose tip and nose depth k of the yaw model (sepbn.data.domains):
# the nose tip sits at 0.5 - k tan(yaw) of the way from the image-left to the image-right eye.
REFERENCE = {"300w": (36, 45, 30, 0.55), "wider5": (0, 1, 2, 0.65)}


def face(protocol: str, yaw: float, rng: np.random.Generator) -> np.ndarray:
    """An ``(L, 2)`` face whose estimated yaw is ``yaw`` degrees, at a random roll, scale and
    position; the points the estimate ignores are random."""
    left, right, nose, depth = REFERENCE[protocol]
    pts = rng.uniform(-1, 1, (get_protocol(protocol).num_points, 2))
    pts[left], pts[right] = (-0.5, 0.0), (0.5, 0.0)
    pts[nose] = (-0.5 + 0.5 - depth * math.tan(math.radians(yaw)), 0.6)
    roll = rng.uniform(-0.5, 0.5)
    rotation = np.array([[math.cos(roll), -math.sin(roll)], [math.sin(roll), math.cos(roll)]])
    return pts @ rotation.T * rng.uniform(40, 200) + rng.uniform(0, 300, 2)


# Yaw, its bin with the default edges (15°, 30°), kept 0.5° off the edges.
FACES = [
    (0.0, "frontal"),
    (9.0, "frontal"),
    (-14.5, "frontal"),
    (15.5, "moderate"),
    (-22.0, "moderate"),
    (29.5, "moderate"),
    (30.5, "profile"),
    (-44.0, "profile"),
    (60.0, "profile"),
]


@pytest.mark.parametrize("protocol", ["300w", "wider5"])
def test_per_bin_nme_is_the_mean_of_its_faces(protocol: str) -> None:
    rng = np.random.default_rng(0)
    landmarks = np.stack([face(protocol, yaw, rng) for yaw, _ in FACES])  # (N, L, 2)
    np.testing.assert_allclose(
        landmark_yaw(landmarks, get_protocol(protocol)), [y for y, _ in FACES], atol=1e-9
    )
    nmes = np.array([0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.10, 0.20, 0.60])
    got = pose_bin_metrics(nmes, landmarks, get_protocol(protocol))
    assert got == pytest.approx(
        {
            "nme_pose_frontal": (0.01 + 0.02 + 0.03) / 3,
            "count_pose_frontal": 3,
            "nme_pose_moderate": (0.04 + 0.05 + 0.06) / 3,
            "count_pose_moderate": 3,
            "nme_pose_profile": (0.10 + 0.20 + 0.60) / 3,
            "count_pose_profile": 3,
            "count_pose_unknown": 0,
        }
    )
    assert list(got) == pose_bin_keys()


def test_unmeasurable_faces_are_counted_not_dropped() -> None:
    rng = np.random.default_rng(1)
    protocol = get_protocol("aflw")  # eyes 6-8 and 9-11, nose tip 13
    landmarks = rng.uniform(0, 100, (4, protocol.num_points, 2))
    landmarks[:, 6], landmarks[:, 11], landmarks[:, 13] = (20, 50), (80, 50), (50, 70)
    valid = np.ones((4, protocol.num_points), bool)
    valid[1, 13] = False  # no nose tip: unknown
    valid[2, [6, 7, 8]] = False  # the image-left eye hidden: a profile by the eye rule
    valid[3, :] = False  # nothing annotated: unknown
    nmes = np.array([0.02, 0.5, 0.3, 0.7])
    got = pose_bin_metrics(nmes, landmarks, protocol, valid)
    assert got == {
        "nme_pose_frontal": 0.02,
        "count_pose_frontal": 1,
        "count_pose_moderate": 0,  # an empty bin has a count and no NME
        "nme_pose_profile": 0.3,
        "count_pose_profile": 1,
        "count_pose_unknown": 2,
    }
    assert sum(v for k, v in got.items() if k.startswith("count")) == 4
    # A protocol without eye and nose points for the estimate: every face unknown.
    custom = LandmarkProtocol("custom7", 7, tuple(range(7)), "inter_ocular", (0, 1))
    assert pose_bin_metrics(np.zeros(3), np.zeros((3, 7, 2)), custom)["count_pose_unknown"] == 3


def test_edges_names_and_checks() -> None:
    assert POSE_BIN_EDGES == (15.0, 30.0)
    # A yaw on an edge goes to the bin above it; NaN to the unknown bin.
    np.testing.assert_array_equal(
        yaw_bins(np.array([15.0, 30.0, 14.99, np.nan]), (15, 30)), [1, 2, 0, -1]
    )
    rng = np.random.default_rng(2)
    landmarks = np.stack([face("wider5", yaw, rng) for yaw in (5.0, 25.0, -50.0, 70.0)])
    protocol = get_protocol("wider5")
    # Two edges name the three bins; other counts number them.
    got = pose_bin_metrics(np.arange(4.0), landmarks, protocol, edges=(20, 60))
    assert got == {
        "nme_pose_frontal": 0.0,
        "count_pose_frontal": 1,
        "nme_pose_moderate": 1.5,
        "count_pose_moderate": 2,
        "nme_pose_profile": 3.0,
        "count_pose_profile": 1,
        "count_pose_unknown": 0,
    }
    got = pose_bin_metrics(np.arange(4.0), landmarks, protocol, edges=(20, 40, 60))
    assert got == pytest.approx(
        {f"{k}_pose_bin{i}": v for i in range(4) for k, v in (("nme", float(i)), ("count", 1))}
        | {"count_pose_unknown": 0}
    )
    assert list(got) == pose_bin_keys((20, 40, 60))
    with pytest.raises(ValueError, match="must be positive"):
        pose_bin_metrics(np.zeros(4), landmarks, get_protocol("wider5"), edges=(-10, 10))
    with pytest.raises(ValueError, match="3 NMEs for 4 faces"):
        pose_bin_metrics(np.zeros(3), landmarks, get_protocol("wider5"))


def test_format_prints_bins_edges_and_counts() -> None:
    text = format_pose_bins(
        {
            "nme_pose_frontal": 0.0321,
            "count_pose_frontal": 370,
            "count_pose_moderate": 0,
            "nme_pose_profile": 0.06,
            "count_pose_profile": 12,
            "count_pose_unknown": 2,
        }
    )
    lines = text.splitlines()
    assert lines[0].startswith("NME by head pose")
    assert lines[1].split() == ["frontal", "|yaw|", "<", "15°", "NME", "3.21%", "370", "faces"]
    assert lines[2].split() == [
        "moderate",
        "15°",
        "≤",
        "|yaw|",
        "<",
        "30°",
        "NME",
        "–",
        "0",
        "faces",
    ]
    assert lines[3].split() == ["profile", "|yaw|", "≥", "30°", "NME", "6.00%", "12", "faces"]
    assert lines[4].split()[0] == "unknown" and lines[4].split()[-2:] == ["2", "faces"]


@pytest.mark.realdata
def test_300w_common_fills_every_bin(data_root: Path) -> None:
    """The counts the edges were chosen by (module docstring): 506 faces of 300-W common."""
    records = read_300w(data_root / "300W", "common", allow_missing=True)
    landmarks = np.stack([r.landmarks for r in records])  # (N, 68, 2)
    valid = np.stack([r.valid for r in records])
    got = pose_bin_metrics(np.zeros(len(records)), landmarks, get_protocol("300w"), valid)
    counts = [got[f"count_pose_{b}"] for b in ("frontal", "moderate", "profile", "unknown")]
    assert counts == [370, 124, 12, 0]
    # The five points of the same faces (eye centres, nose tip, mouth corners) agree.
    five = np.stack(
        [
            landmarks[:, 36:42].mean(1),
            landmarks[:, 42:48].mean(1),
            landmarks[:, 30],
            landmarks[:, 48],
            landmarks[:, 54],
        ],
        axis=1,
    )
    yaw68 = landmark_yaw(landmarks, get_protocol("300w"), valid)
    yaw5 = landmark_yaw(five, get_protocol("wider5"))
    assert np.median(np.abs(yaw68 - yaw5)) < 2.0

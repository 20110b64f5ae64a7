"""Per-point confidence: its definition on a stub network whose answer is known, and how
``--draw`` colours it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from sepbn.data.protocols import get_protocol
from sepbn.inference import Face, InferenceError, LandmarkDetector
from sepbn.inference.photos import _drawing, confidence_colours

SIZE, SCALE = 64, 1.25


class FixedInCrop(nn.Module):
    """Every face gets the same crop coordinates: its points move with the crop."""

    def __init__(self, coords: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("coords", torch.as_tensor(coords, dtype=torch.float32))
        self.num_points = len(coords)

    def forward(self, x: Tensor) -> Tensor:
        return self.coords.expand(x.shape[0], -1, -1)


def photo_points(box: np.ndarray, normalized: np.ndarray) -> np.ndarray:
    """Crop coordinates / S of the evaluation crop of ``box`` -> photo pixels, by hand: the
    square of side ``max(w, h) * SCALE`` around the box centre spans the S crop pixels, the
    centre at crop pixel ``(S - 1) / 2``."""
    centre = (box[:2] + box[2:]) / 2
    side = max(box[2] - box[0], box[3] - box[1]) * SCALE
    return centre + (normalized * SIZE - (SIZE - 1) / 2) * side / SIZE


def moved_box(box: np.ndarray, direction: float, scale: float) -> np.ndarray:
    """The box moved by ``direction`` times 8% of its side sqrt(w h) in x and y, its half
    sides times ``scale``."""
    side = np.sqrt((box[2] - box[0]) * (box[3] - box[1]))
    centre = (box[:2] + box[2:]) / 2 + direction * 0.08 * side
    half = (box[2:] - box[:2]) / 2 * scale
    return np.concatenate([centre - half, centre + half])


def test_full_confidence_averages_the_shifted_back_shifted_and_mirrored_crops() -> None:
    coords = np.random.default_rng(1).uniform(0.2, 0.8, (68, 2))
    detector = LandmarkDetector(FixedInCrop(coords), "300w", SIZE, SCALE, refine_steps=0)
    box = np.array([30.0, 40.0, 130.0, 160.0])
    (face,) = detector.predict(np.zeros((220, 200, 3), dtype=np.uint8), [box])
    points = photo_points(box, coords)
    # The mirrored crop: the network answers coords in the flipped crop; flipped back, point l
    # is the answer for point perm[l] mirrored about the crop's centre column.
    perm = list(get_protocol("300w").flip_perm)
    unflipped = np.stack([(SIZE - 1) / SIZE - coords[perm, 0], coords[perm, 1]], axis=1)
    views = [
        photo_points(moved_box(box, 1.0, 1.1), coords),
        photo_points(moved_box(box, -1.0, 0.9), coords),
        photo_points(box, unflipped),
    ]
    tight = points.max(axis=0) - points.min(axis=0)
    d = np.mean([np.linalg.norm(points - v, axis=1) for v in views], axis=0)
    d /= np.sqrt(tight[0] * tight[1])
    np.testing.assert_allclose(face.confidence, np.exp(-d / 0.05), rtol=1e-4)
    np.testing.assert_allclose(
        face.quality,
        np.exp(
            -np.linalg.norm(points - views[0], axis=1).mean() / np.sqrt(tight[0] * tight[1]) / 0.05
        ),
        rtol=1e-4,
    )


def test_shift_confidence_is_exp_of_each_points_move_with_the_shifted_crop() -> None:
    coords = np.random.default_rng(0).uniform(0.2, 0.8, (68, 2))
    detector = LandmarkDetector(
        FixedInCrop(coords), "300w", SIZE, SCALE, refine_steps=0, confidence="shift"
    )
    box = np.array([30.0, 40.0, 130.0, 160.0])
    photo = np.zeros((220, 200, 3), dtype=np.uint8)
    (face,) = detector.predict(photo, [box])
    points = photo_points(box, coords)
    np.testing.assert_allclose(face.landmarks, points, atol=1e-4)
    # The shifted crop; d_l per side of the points' tight box.
    moved = photo_points(moved_box(box, 1.0, 1.1), coords)
    tight = points.max(axis=0) - points.min(axis=0)
    d = np.linalg.norm(points - moved, axis=1) / np.sqrt(tight[0] * tight[1])
    np.testing.assert_allclose(face.confidence, np.exp(-d / 0.05), rtol=1e-4)
    np.testing.assert_allclose(face.quality, np.exp(-d.mean() / 0.05), rtol=1e-4)
    # Points farther from the crop centre move more when the crop grows: less confident.
    far = np.linalg.norm(coords - 0.5 + 0.08, axis=1)
    assert np.corrcoef(far, face.confidence)[0, 1] < 0


def test_colours_go_from_red_through_yellow_to_green() -> None:
    colours = confidence_colours(np.array([0.0, 0.25, 0.5, 1.0, np.nan, 2.0]))
    expected = [[255, 0, 0], [255, 128, 0], [255, 255, 0], [0, 255, 0], [255, 0, 0], [0, 255, 0]]
    np.testing.assert_array_equal(colours, expected)


def test_draw_colours_each_point_by_its_confidence() -> None:
    image = np.zeros((100, 200, 3), dtype=np.uint8)
    face = Face(
        landmarks=np.array([[40.0, 50.0], [150.0, 50.0]]),
        box=np.array([0.0, 0.0, 1.0, 1.0]),
        score=1.0,
        quality=0.5,
        confidence=np.array([0.0, 1.0]),
    )
    drawn = _drawing(image, [face])
    np.testing.assert_array_equal(drawn[50, 40], [255, 0, 0])  # unsure: red
    np.testing.assert_array_equal(drawn[50, 150], [0, 255, 0])  # sure: green


def test_an_unknown_confidence_mode_is_refused() -> None:
    with pytest.raises(
        InferenceError, match=r"unknown confidence 'best'; valid: \['full', 'shift'\]"
    ):
        LandmarkDetector(FixedInCrop(np.zeros((68, 2))), "300w", SIZE, confidence="best")

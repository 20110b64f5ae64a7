"""LandmarkDetector: crop each face box, run the model, map its output back to photo pixels.

The models here are stubs whose output is known, so the expected photo coordinates follow
by hand from the evaluation crop: the square of side ``max(w, h) * box_scale`` around the
box centre is resized to the S x S input, with the box centre at crop pixel ``(S - 1) / 2``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from helpers import randomize_norms
from sepbn.config import DataConfig, ExperimentConfig, ModelConfig, to_dict
from sepbn.engine.checkpoint import save_checkpoint
from sepbn.engine.model_builder import build_model_from_config
from sepbn.inference import LandmarkDetector

SIZE = 64  # S, the model input side
SCALE = 1.25  # the crop's box enlargement
POINTS = 68  # the 300-W protocol


def photo_from_crop(box: np.ndarray, crop_px: np.ndarray, scale: float = SCALE) -> np.ndarray:
    """Crop pixels of the evaluation crop of ``box`` -> photo pixels, by hand."""
    x0, y0, x1, y1 = box
    centre = np.array([(x0 + x1) / 2, (y0 + y1) / 2])
    side = max(x1 - x0, y1 - y0) * scale  # photo pixels spanned by the S crop pixels
    return centre + (crop_px - (SIZE - 1) / 2) * side / SIZE


class Constant(nn.Module):
    """Returns the same normalized crop coordinates for every face; keeps its inputs."""

    def __init__(self, coords: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("coords", torch.as_tensor(coords, dtype=torch.float32))
        self.num_points = int(coords.shape[0])
        self.inputs: list[Tensor] = []

    def forward(self, x: Tensor) -> Tensor:
        self.inputs.append(x.clone())
        return self.coords.expand(x.shape[0], -1, -1)  # (N, L, 2), crop pixels / S


class RedCentroid(nn.Module):
    """Every landmark at the centroid of the red channel of its crop, in crop pixels / S."""

    num_points = POINTS

    def forward(self, x: Tensor) -> Tensor:
        red = x[:, 0].double()  # (N, S, S); blue and green stay black in the test photo
        ys, xs = torch.meshgrid(
            torch.arange(SIZE, dtype=red.dtype), torch.arange(SIZE, dtype=red.dtype), indexing="ij"
        )
        mass = red.sum(dim=(1, 2))
        centre = torch.stack([(red * xs).sum(dim=(1, 2)), (red * ys).sum(dim=(1, 2))], -1)
        centre = centre / mass[:, None] / SIZE  # (N, 2)
        return centre[:, None].expand(-1, POINTS, -1).float()


def _coords(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.1, 0.9, size=(POINTS, 2))


PHOTO = np.zeros((240, 320, 3), dtype=np.uint8)


def test_landmarks_map_back_to_photo_pixels() -> None:
    coords = _coords()
    box = np.array([60.0, 40.0, 180.0, 200.0])  # not square: the side is the height
    model = Constant(coords)
    detector = LandmarkDetector(model, "300w", SIZE, SCALE, refine_steps=0)
    landmarks = detector.predict_boxes(PHOTO, box[None])
    assert landmarks.shape == (1, POINTS, 2) and landmarks.dtype == np.float64
    np.testing.assert_allclose(landmarks[0], photo_from_crop(box, coords * SIZE), atol=1e-9)
    (batch,) = model.inputs
    assert batch.shape == (1, 3, SIZE, SIZE) and batch.dtype == torch.float32


def test_each_box_of_a_batch_sees_its_own_face() -> None:
    """Red blobs at known photo positions; the crop, the model and the mapping agree on them."""
    centres = np.array([[70.0, 60.0], [230.0, 90.0], [150.0, 190.0]])
    ys, xs = np.mgrid[: PHOTO.shape[0], : PHOTO.shape[1]]
    red = sum(np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * 5.0**2)) for cx, cy in centres)
    photo = np.zeros_like(PHOTO)
    photo[..., 0] = np.round(255 * red)
    # Boxes of different sizes and shapes, each holding one blob (and only that one) in
    # its crop, off-centre; the last crop runs past the bottom of the photo.
    boxes = np.array([[40.0, 35.0, 110.0, 95.0], [200.0, 50.0, 250.0, 120.0], [115, 170, 185, 236]])
    detector = LandmarkDetector(RedCentroid(), "300w", SIZE, SCALE, refine_steps=0)
    landmarks = detector.predict_boxes(photo, boxes)
    assert landmarks.shape == (3, POINTS, 2)
    np.testing.assert_allclose(landmarks[:, 0], centres, atol=0.05)  # photo pixels
    # The same faces one at a time give the same landmarks.
    for box, expected in zip(boxes, landmarks):
        np.testing.assert_allclose(detector.predict_boxes(photo, [box])[0], expected, atol=1e-9)


@pytest.mark.parametrize("refine_steps", [1, 2])
def test_refine_recrops_around_the_previous_landmark_box(refine_steps: int) -> None:
    coords = _coords(1)
    model = Constant(coords)
    boxes = np.array([[60.0, 40.0, 180.0, 200.0], [200.0, 30.0, 300.0, 100.0]])
    detector = LandmarkDetector(model, "300w", SIZE, SCALE, refine_steps=refine_steps)
    landmarks = detector.predict_boxes(PHOTO, boxes)
    for box, got in zip(boxes, landmarks):
        expected = photo_from_crop(box, coords * SIZE)
        for _ in range(refine_steps):  # the tight box of the previous prediction
            tight = np.concatenate([expected.min(axis=0), expected.max(axis=0)])
            expected = photo_from_crop(tight, coords * SIZE)
        np.testing.assert_allclose(got, expected, atol=1e-9)
    assert [len(x) for x in model.inputs] == [2] * (1 + refine_steps)  # one batch per step


@pytest.mark.parametrize("boxes", [[], np.zeros((0, 4))], ids=["list", "array"])
def test_no_boxes_give_no_faces_without_running_the_model(boxes) -> None:
    model = Constant(_coords())
    landmarks = LandmarkDetector(model, "300w", SIZE, SCALE).predict_boxes(PHOTO, boxes)
    assert landmarks.shape == (0, POINTS, 2)
    assert model.inputs == []


def test_invalid_arguments() -> None:
    model = Constant(_coords())
    with pytest.raises(ValueError, match="refine_steps must be >= 0, got -1"):
        LandmarkDetector(model, "300w", refine_steps=-1)
    with pytest.raises(ValueError, match=r"unknown landmark protocol 'nope'; valid: \[.*'300w'"):
        LandmarkDetector(model, "nope")


def _model_config() -> ModelConfig:
    return ModelConfig(arch="vanilla_cnn", norm="sepbn", width_mult=0.125, input_size=SIZE)


def _cross_model() -> nn.Module:
    model = build_model_from_config(_model_config(), heads={"300w": 68, "wflw": 98})
    return randomize_norms(model).eval()


def test_cross_protocol_model_runs_the_chosen_branch() -> None:
    model = _cross_model()
    detector = LandmarkDetector(model, "wflw", SIZE, SCALE)
    x = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        expected = model(x, torch.tensor([1, 1]))["wflw"]  # wflw is protocol id 1
        torch.testing.assert_close(detector.model.forward_all(x)["wflw"], expected, rtol=0, atol=0)
    assert detector.predict_boxes(PHOTO, [[60.0, 40.0, 180.0, 200.0]]).shape == (1, 98, 2)
    with pytest.raises(
        ValueError, match=r"no branch for protocol 'cofw'; valid: \['300w', 'wflw'\]"
    ):
        LandmarkDetector(model, "cofw", SIZE, SCALE)


def _checkpoint(path: Path, model: nn.Module, info: dict) -> Path:
    config = ExperimentConfig(model=_model_config(), data=DataConfig(box_scale=1.4))
    return save_checkpoint(
        path, {"model": model.state_dict(), "model_info": info, "config": to_dict(config)}
    )


def test_from_checkpoint_takes_size_crop_and_protocol_from_it(tmp_path: Path) -> None:
    single = randomize_norms(build_model_from_config(_model_config(), num_points=68)).eval()
    path = _checkpoint(tmp_path / "single.pt", single, {"kind": "single", "num_points": 68})
    detector = LandmarkDetector.from_checkpoint(path, refine_steps=3)
    assert detector.protocol.name == "300w"  # told by the point count
    assert detector.transform.output_size == SIZE and detector.transform.box_scale == 1.4
    assert detector.refine_steps == 3
    x = torch.rand(1, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(detector.model(x), single(x), rtol=0, atol=0)

    cross = _cross_model()
    info = {"kind": "cross", "heads": {"300w": 68, "wflw": 98}}
    path = _checkpoint(tmp_path / "cross.pt", cross, info)
    with pytest.raises(ValueError, match=r"has branches \['300w', 'wflw'\]: choose one"):
        LandmarkDetector.from_checkpoint(path)
    detector = LandmarkDetector.from_checkpoint(path, protocol="wflw")
    assert detector.protocol.name == "wflw" and detector.protocols == ["wflw"]
    with torch.no_grad():  # the detector holds every branch; the wflw one is the model's
        expected = cross(x, torch.tensor([1]))["wflw"]
        torch.testing.assert_close(detector.model.forward_all(x)["wflw"], expected, rtol=0, atol=0)

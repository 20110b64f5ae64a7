"""FaceTracker: when the face detector runs, which box each frame is cropped from, and
whose identity each face keeps; then ``predict_photos`` on a video."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from sepbn.data.protocols import get_protocol
from sepbn.inference import Face, InferenceError, LandmarkDetector, predict_photos, read_landmarks
from sepbn.inference.tracking import FaceTracker, box_iou

SQUARE = np.array([[0.0, 0.0], [10.0, 0.0], [10.0, 10.0], [0.0, 10.0], [5.0, 5.0]])


class Scripted:
    """A stand-in for LandmarkDetector: frame ``k`` holds faces at known places.

    ``faces[k]`` is a list of ``(top_left, quality)``; each face's five points are ``SQUARE``
    moved to ``top_left``. The face detector finds them all (in the order given); a crop of a
    box gives the face whose points lie nearest that box.
    """

    protocol = get_protocol("wider5")

    def __init__(self, faces: list[list[tuple[tuple[float, float], float]]]) -> None:
        self.faces, self.frame = faces, 0
        self.detected: list[int] = []
        self.crops: list[tuple[int, np.ndarray, int | None]] = []

    def _face(self, k: int) -> tuple[np.ndarray, float]:
        corner, quality = self.faces[self.frame][k]
        return SQUARE + np.asarray(corner), quality

    def detect_faces(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.detected.append(self.frame)
        boxes = [
            np.concatenate([p.min(0), p.max(0)])
            for p, _ in map(self._face, range(len(self.faces[self.frame])))
        ]
        return np.reshape(boxes, (-1, 4)), np.full(len(boxes), 0.9)

    def predict_many(self, images, boxes, scores, refine_steps=None) -> list[list[Face]]:
        faces = []
        for box, score in zip(boxes[0], scores[0]):
            self.crops.append((self.frame, np.asarray(box), refine_steps))
            k = int(
                np.argmin(
                    [
                        np.linalg.norm(self._face(i)[0].mean(0) - (box[:2] + box[2:]) / 2)
                        for i in range(len(self.faces[self.frame]))
                    ]
                )
            )
            points, quality = self._face(k)
            faces.append(Face(points, np.asarray(box), float(score), quality, np.ones(5)))
        return [faces]


def run(script: Scripted, frames: int, **options) -> list[list[Face]]:
    tracker = FaceTracker(script, smooth=False, **options)  # type: ignore[arg-type]
    out = []
    for k in range(frames):
        script.frame = k
        out.append(tracker(np.zeros((400, 400, 3), np.uint8), k / 30))
    return out


def test_the_detector_runs_every_n_frames_and_crops_follow_the_last_points() -> None:
    moving = [[((2.0 * k, 1.0 * k), 0.9)] for k in range(12)]
    script = Scripted(moving)
    out = run(script, 12, detect_every=5)
    assert script.detected == [0, 5, 10]
    for frame, box, steps in script.crops:
        if frame not in (0, 5, 10):  # followed: the tight box of the previous frame's points
            previous = SQUARE + [2.0 * (frame - 1), 1.0 * (frame - 1)]
            np.testing.assert_allclose(box, [*previous.min(0), *previous.max(0)])
            assert steps == 0  # a tight landmark box needs no re-crop
        else:
            assert steps is None  # the detector's box: the detector's own re-crops
    assert {face.track_id for faces in out for face in faces} == {0}


def test_a_quality_drop_sends_that_frame_back_to_the_detector() -> None:
    script = Scripted([[((0.0, 0.0), 0.05 if k == 3 else 0.9)] for k in range(6)])
    run(script, 6, detect_every=10, min_quality=0.2)
    assert script.detected == [0, 3]


def test_identities_follow_the_faces_not_the_detectors_order() -> None:
    a, b = (0.0, 0.0), (100.0, 0.0)
    script = Scripted(
        [
            [(a, 0.9), (b, 0.9)],
            [(b, 0.9), (a, 0.9)],
            [(b, 0.9), ((200.0, 0.0), 0.9)],  # a left, a new face came
        ]
    )
    out = run(script, 3, detect_every=1)
    first = {face.track_id: tuple(face.landmarks[0]) for face in out[0]}
    second = {face.track_id: tuple(face.landmarks[0]) for face in out[1]}
    assert first == second  # b came first in frame 1, and kept b's id
    ids = [face.track_id for face in out[2]]
    assert ids[0] == next(i for i, p in first.items() if p == b)
    assert ids[1] not in first  # a new identity, not a's


def test_box_iou_by_hand() -> None:
    a = np.array([[0.0, 0.0, 2.0, 2.0]])
    b = np.array([[1.0, 1.0, 3.0, 3.0], [5.0, 5.0, 6.0, 6.0]])
    np.testing.assert_allclose(box_iou(a, b), [[1 / 7, 0.0]])


def test_bad_options_are_refused() -> None:
    with pytest.raises(InferenceError, match="detect_every must be >= 1"):
        FaceTracker(Scripted([]), detect_every=0)  # type: ignore[arg-type]
    with pytest.raises(InferenceError, match="min_quality must be in"):
        FaceTracker(Scripted([]), min_quality=2.0)  # type: ignore[arg-type]


class Boxes:
    """A face detector that finds one fixed box, and counts its calls."""

    def __init__(self, box: list[float]) -> None:
        self.box, self.calls = box, 0

    def __call__(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.calls += 1
        return np.array([self.box]), np.array([0.99])


def _video(path: Path, frames: int) -> Path:
    rng = np.random.default_rng(0)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (96, 80))
    for _ in range(frames):
        writer.write(rng.integers(0, 255, (80, 96, 3), dtype=np.uint8))
    writer.release()
    return path


class Brightness(torch.nn.Module):
    """68 points spread over 80% of the crop (so that their tight box, enlarged by the crop's
    1.25, is the crop again), all shifted by the crop's mean brightness."""

    num_points = 68

    def __init__(self) -> None:
        super().__init__()
        grid = np.stack(np.meshgrid(np.linspace(0.1, 0.9, 17), [0.1, 0.37, 0.63, 0.9]), -1)
        self.register_buffer("coords", torch.as_tensor(grid.reshape(68, 2), dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shift = 0.05 * (x.mean(dim=(1, 2, 3)) - 0.5)  # (N,)
        return self.coords + shift[:, None, None]


def test_videos_get_track_ids_and_smoothing_is_on_by_default(tmp_path: Path) -> None:
    video = _video(tmp_path / "clip.avi", 6)
    box = [20.0, 10.0, 76.0, 70.0]
    results = {}
    for name, options in {
        "smooth": {"min_quality": 0.0},
        "raw": {"min_quality": 0.0, "smooth": False},
        "every": {"smooth": False, "detect_every": 1},
    }.items():
        boxes = Boxes(box)
        detector = LandmarkDetector(Brightness(), "300w", 64, face_detector=boxes)
        predict_photos(detector, [video], tmp_path / name, **options)
        records = read_landmarks(tmp_path / name).records
        assert [r["frame"] for r in records] == list(range(6))
        assert all(r["faces"][0]["track_id"] == 0 for r in records)
        results[name] = np.array([r["faces"][0]["landmarks"] for r in records])
        assert boxes.calls == (6 if name == "every" else 1)
    # The first frame passes the filter unchanged; later ones are pulled toward the past.
    np.testing.assert_allclose(results["smooth"][0], results["raw"][0], atol=0.01)
    assert np.abs(results["smooth"][1:] - results["raw"][1:]).max() > 0.05
    # Detecting on every frame without smoothing is predicting each frame on its own.
    detector = LandmarkDetector(Brightness(), "300w", 64, face_detector=Boxes(box))
    alone = np.array(
        [detector.predict(np.ascontiguousarray(f[..., ::-1]))[0].landmarks for f in _read(video)]
    )
    np.testing.assert_allclose(results["every"], alone, atol=0.01)


def _read(video: Path) -> list[np.ndarray]:
    capture, out = cv2.VideoCapture(str(video)), []
    while True:
        ok, bgr = capture.read()
        if not ok:
            return out
        out.append(bgr)

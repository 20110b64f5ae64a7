"""LandmarkDetector's photo API: inputs of every kind, faces with scores, batching, errors."""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from sepbn.data.formats.ibug300w import read_pts
from sepbn.data.records import box_from_landmarks
from sepbn.inference import Face, InferenceError, LandmarkDetector
from sepbn.models import build_model


def _lfpw_photo(data_root: Path, name: str = "image_0001") -> tuple[Path, np.ndarray]:
    folder = data_root / "300W" / "lfpw" / "testset"
    return folder / f"{name}.png", read_pts(folder / f"{name}.pts") - 1.0  # 0-based


@pytest.fixture(scope="module")
def real(real_300w_checkpoint: Path) -> LandmarkDetector:
    return LandmarkDetector.from_checkpoint(real_300w_checkpoint, device="cpu")


def _tiny(refine_steps: int = 1) -> LandmarkDetector:
    model = build_model("vanilla_cnn", num_points=68, norm="sepbn", width_mult=0.125, input_size=64)
    return LandmarkDetector(model.eval(), "300w", 64, refine_steps=refine_steps)


def test_predict_returns_faces_with_box_score_and_quality() -> None:
    detector = _tiny()
    image = np.random.default_rng(0).integers(0, 255, (90, 120, 3), dtype=np.uint8)
    faces = detector.predict(image, [[20, 10, 80, 70]])
    assert len(faces) == 1 and isinstance(faces[0], Face)
    face = faces[0]
    assert face.landmarks.shape == (68, 2) and np.isfinite(face.landmarks).all()
    np.testing.assert_array_equal(face.box, [20, 10, 80, 70])
    assert face.score == 1.0 and 0.0 < face.quality <= 1.0
    assert set(face.to_dict()) == {"box", "score", "quality", "landmarks", "confidence"}
    assert face.confidence is not None and face.confidence.shape == (68,)
    assert ((face.confidence > 0) & (face.confidence <= 1)).all()
    # With the shifted crop alone, quality = exp(-mean d / s) and confidence_l = exp(-d_l / s):
    # quality is the geometric mean of the confidences.
    detector.confidence = "shift"
    (shift,) = detector.predict(image, [[20, 10, 80, 70]])
    assert shift.confidence is not None and shift.quality == pytest.approx(face.quality)
    np.testing.assert_allclose(np.exp(np.log(shift.confidence).mean()), shift.quality, rtol=1e-9)


def test_predict_boxes_keeps_the_array_api_and_matches_predict() -> None:
    detector = _tiny()
    image = np.random.default_rng(1).integers(0, 255, (100, 100, 3), dtype=np.uint8)
    boxes = [[10, 10, 60, 60], [40, 30, 95, 90]]
    array = detector.predict_boxes(image, boxes)
    assert array.shape == (2, 68, 2)
    faces = detector.predict(image, boxes)
    np.testing.assert_allclose(np.stack([f.landmarks for f in faces]), array, atol=1e-5)


def test_faces_of_several_photos_go_through_the_network_together() -> None:
    detector = _tiny()
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 255, (80, 90, 3), dtype=np.uint8) for _ in range(3)]
    boxes = [[[5, 5, 50, 50]], [[10, 10, 60, 60], [30, 20, 85, 75]], [[0, 0, 40, 40]]]
    calls = []
    backend = detector.backend
    detector.backend = lambda crops: calls.append(len(crops)) or backend(crops)  # type: ignore
    together = detector.predict_many(images, boxes)
    assert calls == [4, 16]  # the first pass, then the refined pass with its three views
    detector.backend = backend
    for image, box, faces in zip(images, boxes, together):
        alone = detector.predict(image, box)
        np.testing.assert_allclose(
            np.stack([f.landmarks for f in faces]),
            np.stack([f.landmarks for f in alone]),
            atol=1e-4,
        )


def test_gray_arrays_and_pil_images_are_accepted() -> None:
    detector = _tiny()
    gray = np.random.default_rng(3).integers(0, 255, (64, 64), dtype=np.uint8)
    from_gray = detector.predict(gray, [[8, 8, 56, 56]])[0].landmarks
    rgb = np.repeat(gray[..., None], 3, axis=2)
    np.testing.assert_allclose(from_gray, detector.predict(rgb, [[8, 8, 56, 56]])[0].landmarks)
    with pytest.raises(InferenceError, match="shape"):
        detector.predict(np.zeros((4, 4, 2), np.uint8), [[0, 0, 2, 2]])
    pil = pytest.importorskip("PIL.Image")  # optional: sepbn never needs PIL
    from_pil = detector.predict(pil.fromarray(rgb), [[8, 8, 56, 56]])[0].landmarks
    np.testing.assert_allclose(from_pil, from_gray)


def test_a_box_wholly_outside_the_image_is_refused() -> None:
    detector = _tiny()
    image = np.zeros((50, 60, 3), np.uint8)
    with pytest.raises(InferenceError, match="wholly outside the 60x50 image"):
        detector.predict(image, [[100, 100, 150, 150]])
    with pytest.raises(InferenceError, match="empty"):
        detector.predict(image, [[10, 10, 5, 30]])


def test_a_protocol_with_another_point_count_is_refused() -> None:
    model = build_model("vanilla_cnn", num_points=68, norm="bn", width_mult=0.125, input_size=64)
    with pytest.raises(InferenceError, match=r"68 points.*'wflw' has 98"):
        LandmarkDetector(model, "wflw", 64)


def test_device_none_picks_what_is_there_and_absent_cuda_is_one_error() -> None:
    detector = LandmarkDetector(
        build_model("vanilla_cnn", num_points=68, width_mult=0.125, input_size=64),
        "300w",
        64,
        device=None,
    )
    assert detector.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(InferenceError, match="no CUDA"):
            LandmarkDetector(detector.model, "300w", 64, device="cuda")


# ------------------------------------------------------------------ real photos


@pytest.mark.realdata
@pytest.mark.slow
def test_quality_ranks_real_faces_above_non_face_crops(
    real: LandmarkDetector, data_root: Path
) -> None:
    face_q, other_q = [], []
    for i in (1, 2, 3, 4, 5, 6):
        path, truth = _lfpw_photo(data_root, f"image_{i:04d}")
        image = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        box = box_from_landmarks(truth)
        face = real.predict(image, [box])[0]
        side = np.sqrt((box[2] - box[0]) * (box[3] - box[1]))
        assert np.linalg.norm(face.landmarks - truth, axis=1).mean() / side < 0.08
        face_q.append(face.quality)
        noise = np.random.default_rng(i).integers(0, 255, image.shape, dtype=np.uint8)
        other_q.append(real.predict(noise, [box])[0].quality)
        beside = box + np.array([1, 0, 1, 0]) * 1.3 * (box[2] - box[0])  # background
        if beside[2] >= image.shape[1]:
            beside = box - np.array([1, 0, 1, 0]) * 1.3 * (box[2] - box[0])
        other_q.append(real.predict(image, [beside])[0].quality)
    assert min(face_q) > max(other_q), (face_q, other_q)


def _exif_jpeg(bgr: np.ndarray, orientation: int) -> bytes:
    """A JPEG of ``bgr`` with an EXIF APP1 segment holding only the orientation tag."""
    ok, encoded = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 98])
    assert ok
    ifd = struct.pack(">H", 1) + struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) + bytes(4)
    payload = b"Exif\x00\x00" + b"MM\x00\x2a\x00\x00\x00\x08" + ifd
    app1 = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    data = encoded.tobytes()
    return data[:2] + app1 + data[2:]


@pytest.mark.realdata
@pytest.mark.slow
def test_gray_rgba_16bit_and_exif_rotated_photos_give_the_same_landmarks(
    real: LandmarkDetector, data_root: Path, tmp_path: Path
) -> None:
    path, truth = _lfpw_photo(data_root)
    bgr = cv2.imread(str(path))
    box = box_from_landmarks(truth)
    plain = real.predict(path, [box])[0].landmarks
    side = np.sqrt((box[2] - box[0]) * (box[3] - box[1]))

    cv2.imwrite(str(tmp_path / "gray.png"), cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))
    rgba = np.concatenate([bgr, np.full(bgr.shape[:2] + (1,), 255, np.uint8)], axis=2)
    cv2.imwrite(str(tmp_path / "rgba.png"), rgba)
    cv2.imwrite(str(tmp_path / "deep.png"), bgr.astype(np.uint16) * 257)
    for name, tolerance in (("rgba.png", 1e-3), ("deep.png", 1e-3), ("gray.png", 0.03)):
        got = real.predict(tmp_path / name, [box])[0].landmarks
        error = np.linalg.norm(got - plain, axis=1).mean() / side
        assert error < tolerance, (name, error)

    # Stored turned by 90 degrees clockwise with orientation 8 ("rotate 270 CW to view"):
    # a viewer, and sepbn, show the upright photo, so the display-coordinate box still fits.
    (tmp_path / "upright.jpg").write_bytes(_exif_jpeg(bgr, 1))
    (tmp_path / "turned.jpg").write_bytes(_exif_jpeg(cv2.rotate(bgr, cv2.ROTATE_90_CLOCKWISE), 8))
    upright = real.predict(tmp_path / "upright.jpg", [box])[0].landmarks
    turned = real.predict(tmp_path / "turned.jpg", [box])[0].landmarks
    assert np.linalg.norm(upright - plain, axis=1).mean() / side < 0.02
    np.testing.assert_allclose(turned, upright, atol=0.05 * side)
    assert np.linalg.norm(turned - upright, axis=1).mean() / side < 0.01

"""Every landmark scheme of a cross-protocol model from one backbone pass: the API, the
output files, ``sepbn predict --protocol all`` and ``sepbn export --protocol all``.

References are built from the definition: each scheme's points equal what a one-scheme
detector of that branch predicts from the same final crop, which is the crop refined around
the points of the scheme with the most points.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from helpers import randomize_norms, read_pts
from sepbn.cli import main
from sepbn.config import ExperimentConfig, ModelConfig, to_dict
from sepbn.engine.checkpoint import save_checkpoint
from sepbn.engine.model_builder import build_model_from_config, model_info
from sepbn.inference import InferenceError, LandmarkDetector, read_landmarks
from sepbn.inference.schemes import parse_protocols

SIZE = 64
HEADS = {"300w": 68, "wider5": 5}
PHOTO = np.random.default_rng(7).integers(0, 256, (150, 130, 3), dtype=np.uint8)
BOX = [20.0, 25.0, 100.0, 115.0]


@pytest.fixture(scope="module")
def cross() -> torch.nn.Module:
    config = ModelConfig(arch="vanilla_cnn", norm="sepbn", width_mult=0.125, input_size=SIZE)
    torch.manual_seed(0)
    model = build_model_from_config(config, heads=HEADS, pretrained=False)
    return randomize_norms(model).eval()


@pytest.fixture(scope="module")
def checkpoint(cross, tmp_path_factory) -> Path:
    config = ModelConfig(arch="vanilla_cnn", norm="sepbn", width_mult=0.125, input_size=SIZE)
    state = {
        "model": cross.state_dict(),
        "model_info": model_info(cross),
        "config": to_dict(ExperimentConfig(model=config)),
    }
    return save_checkpoint(tmp_path_factory.mktemp("cnt") / "last.pt", state)


def test_forward_all_equals_each_branch_alone(cross) -> None:
    x = torch.rand(3, 3, SIZE, SIZE)
    with torch.no_grad():
        out = cross.forward_all(x)
        assert list(out) == ["300w", "wider5"]
        for name in HEADS:
            torch.testing.assert_close(out[name], cross.single_protocol(name)(x), rtol=0, atol=0)
        assert list(cross.forward_all(x, ["wider5"])) == ["wider5"]
    with pytest.raises(KeyError, match="unknown protocol 'wflw'"):
        cross.forward_all(x, ["wflw"])


def test_each_scheme_is_its_branch_on_the_crop_refined_by_the_richest(cross) -> None:
    both = LandmarkDetector(cross, "300w", SIZE, protocols=["wider5", "300w"])
    (face,) = both.predict(PHOTO, [BOX])
    assert list(face.schemes) == ["wider5", "300w"]
    # Reference: one-scheme detectors without refinement, on the box the 300w points refine to.
    first = LandmarkDetector(cross, "300w", SIZE, refine_steps=0).predict_boxes(PHOTO, [BOX])[0]
    refined = [*first.min(axis=0), *first.max(axis=0)]
    for name in HEADS:
        alone = LandmarkDetector(cross, name, SIZE, refine_steps=0)
        expected = alone.predict_boxes(PHOTO, [refined])[0]
        np.testing.assert_allclose(face.schemes[name].landmarks, expected, atol=1e-4)  # float32
        confidence = face.schemes[name].confidence
        assert confidence.shape == (HEADS[name],) and ((confidence > 0) & (confidence <= 1)).all()
    np.testing.assert_array_equal(face.landmarks, face.schemes["300w"].landmarks)
    np.testing.assert_array_equal(face.confidence, face.schemes["300w"].confidence)


def test_all_schemes_cost_one_backbone_pass_per_crop_batch(cross) -> None:
    detector = LandmarkDetector(cross, "300w", SIZE)
    calls = []
    hook = cross.backbone.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    try:
        (face,) = detector.predict(PHOTO, [BOX], protocols="all")
    finally:
        hook.remove()
    assert calls == [1, 4]  # the first crop, then the refined crop with its three views
    assert set(face.schemes) == set(HEADS) and face.schemes["wider5"].landmarks.shape == (5, 2)
    # Asked per call or not at all: the detector's own scheme alone, no schemes.
    (plain,) = detector.predict(PHOTO, [BOX])
    assert plain.schemes == {} and "schemes" not in plain.to_dict()
    np.testing.assert_allclose(plain.landmarks, face.landmarks, atol=1e-9)


def test_schemes_are_checked_against_the_model() -> None:
    assert parse_protocols("all", ["300w", "wider5"]) == ["300w", "wider5"]
    assert parse_protocols("wider5, 300w", ["300w", "wider5"]) == ["wider5", "300w"]
    assert parse_protocols(None, ["300w"]) is None
    with pytest.raises(InferenceError, match=r"no branch for 'wflw'; valid: \['300w'\] or 'all'"):
        parse_protocols("300w,wflw", ["300w"])
    with pytest.raises(InferenceError, match="distinct names"):
        parse_protocols("300w,300w", ["300w"])


def test_predict_all_writes_every_scheme_in_every_format(checkpoint, tmp_path) -> None:
    photo = tmp_path / "photo.png"
    cv2.imwrite(str(photo), PHOTO[..., ::-1])
    box = ",".join(f"{v:g}" for v in BOX)
    common = ["-q", "predict", str(checkpoint), str(photo), "--box", box, "--protocol", "all"]
    assert main([*common, "--out", str(tmp_path / "j")]) == 0
    read = read_landmarks(tmp_path / "j")
    head = json.loads((tmp_path / "j" / "landmarks.jsonl").read_text().splitlines()[0])
    assert head["schemes"] == HEADS and read.protocol == "300w" and read.num_points == 68
    (found,) = read.records[0]["faces"]
    detector = LandmarkDetector.from_checkpoint(checkpoint, protocol="all", device="cpu")
    (face,) = detector.predict(PHOTO, [BOX])
    for name, count in HEADS.items():
        written = found["schemes"][name]
        np.testing.assert_allclose(written["landmarks"], face.schemes[name].landmarks, atol=0.01)
        np.testing.assert_allclose(written["confidence"], face.schemes[name].confidence, atol=5e-4)
        assert len(written["confidence"]) == count

    assert main([*common, "--out", str(tmp_path / "c"), "--format", "csv"]) == 0
    with open(tmp_path / "c" / "landmarks.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    wider = face.schemes["wider5"]
    got = [[float(row[f"wider5_x{i}"]), float(row[f"wider5_y{i}"])] for i in range(5)]
    np.testing.assert_allclose(got, wider.landmarks, atol=0.01)
    np.testing.assert_allclose([float(row[f"c{i}"]) for i in range(68)], face.confidence, atol=5e-4)
    np.testing.assert_allclose(
        [float(row[f"wider5_c{i}"]) for i in range(5)], wider.confidence, atol=5e-4
    )

    assert main([*common, "--out", str(tmp_path / "p"), "--format", "pts"]) == 0
    names = sorted(p.name for p in (tmp_path / "p").iterdir())
    assert names == [
        "photo.pts",
        "photo.wider5.pts",
        "photo.wider5_confidence.txt",
        "photo_confidence.txt",
        "summary.json",
    ]
    np.testing.assert_allclose(
        read_pts(tmp_path / "p" / "photo.wider5.pts"), wider.landmarks, atol=1e-3
    )
    lines = (tmp_path / "p" / "photo.wider5_confidence.txt").read_text().split()
    np.testing.assert_allclose([float(v) for v in lines], wider.confidence, atol=5e-4)


def test_predict_all_on_a_one_scheme_checkpoint_is_one_line(
    tiny_300w_checkpoint, tmp_path, capsys
) -> None:
    args = [
        "predict",
        str(tiny_300w_checkpoint),
        "x.jpg",
        "--protocol",
        "all",
        "--out",
        str(tmp_path / "o"),
    ]
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1 and "has one landmark scheme; --protocol all needs a cross-protocol" in err[0]
    )


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_all_writes_one_output_per_branch(cross, checkpoint, tmp_path, fmt) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    out = tmp_path / f"all.{fmt}"
    assert (
        main(
            [
                "export",
                str(checkpoint),
                "--protocol",
                "wider5,300w",
                "--format",
                fmt,
                "--out",
                str(out),
            ]
        )
        == 0
    )
    exported = LandmarkDetector.from_checkpoint(out, protocol="all")
    meta = exported.backend.metadata
    assert meta["heads"] == {"wider5": 5, "300w": 68}
    assert meta["outputs"] == ["landmarks_wider5", "landmarks_300w"]
    assert meta["protocol"] == "300w" and meta["num_points"] == 68
    crops = np.random.default_rng(1).integers(0, 256, (3, SIZE, SIZE, 3), dtype=np.uint8)
    got = exported.backend(crops)
    with torch.no_grad():
        x = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255.0
        expected = cross.forward_all(x)
    for name in HEADS:
        assert np.abs(got[name] - expected[name].numpy()).max() < 1e-4
    eager = LandmarkDetector.from_checkpoint(checkpoint, protocol="all", device="cpu")
    (a,), (b,) = eager.predict(PHOTO, [BOX]), exported.predict(PHOTO, [BOX])
    assert exported.protocols == ["wider5", "300w"] and exported.protocol.name == "300w"
    for name in HEADS:
        np.testing.assert_allclose(a.schemes[name].landmarks, b.schemes[name].landmarks, atol=0.02)


def test_a_video_gets_every_scheme_tracked_and_smoothed(cross, tmp_path) -> None:
    from sepbn.inference import predict_photos

    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (130, 150))
    for k in range(4):
        writer.write(np.roll(PHOTO, k, axis=1)[..., ::-1].copy())
    writer.release()

    def boxes(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.array([BOX]), np.array([0.9])

    detector = LandmarkDetector(
        cross, "300w", SIZE, protocols=["300w", "wider5"], face_detector=boxes
    )
    predict_photos(detector, [video], tmp_path / "out", min_quality=0.0)
    records = read_landmarks(tmp_path / "out").records
    assert len(records) == 4
    for record in records:
        (face,) = record["faces"]
        assert face["track_id"] == 0 and set(face["schemes"]) == set(HEADS)
        assert np.array(face["schemes"]["wider5"]["landmarks"]).shape == (5, 2)
        np.testing.assert_allclose(face["schemes"]["300w"]["landmarks"], face["landmarks"])

"""``sepbn export``: ONNX and TorchScript files that compute what the eager model does."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sepbn.cli import main
from sepbn.config import ExperimentConfig, ModelConfig, to_dict
from sepbn.data.protocols import get_protocol
from sepbn.engine.checkpoint import save_checkpoint
from sepbn.engine.model_builder import build_model_from_config, model_info
from sepbn.inference import LandmarkDetector
from sepbn.inference.errors import InferenceError
from sepbn.inference.export import MIN_OPSET, export_checkpoint, onnx_opsets
from sepbn.nn import SepBatchNorm2d

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

SIZE = 64
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
SMALL = {
    "vanilla_cnn": 0.125,
    "mobilenet_v2": 0.25,
    "resnext50": 0.25,  # the smallest width its groups allow
}


def _with_statistics(model: torch.nn.Module, protocol_ids: bool = False) -> torch.nn.Module:
    """Running statistics and sets that differ from their initial values, then eval mode."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
        model.train()
        for _ in range(2):
            x = torch.rand(4, 3, SIZE, SIZE, generator=generator)
            model(x, torch.tensor([0, 0, 1, 1])) if protocol_ids else model(x)
    return model.eval()


def _checkpoint(tmp_path: Path, arch: str, **build) -> tuple[Path, torch.nn.Module]:
    config = ModelConfig(arch=arch, norm="sepbn", width_mult=SMALL[arch], input_size=SIZE)
    model = build_model_from_config(config, pretrained=False, **build)
    _with_statistics(model, protocol_ids="heads" in build)
    state = {
        "model": model.state_dict(),
        "model_info": model_info(model),
        "config": to_dict(ExperimentConfig(model=config)),
    }
    return save_checkpoint(tmp_path / f"{arch}.pt", state), model


def _crops(n: int) -> np.ndarray:
    return np.random.default_rng(n).integers(0, 256, (n, 3, SIZE, SIZE), dtype=np.uint8)


def _eager(model: torch.nn.Module, crops: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(crops).float() / 255.0).numpy()


@pytest.mark.slow
@pytest.mark.parametrize("arch", list(SMALL))
def test_onnx_and_torchscript_match_the_eager_model(arch: str, tmp_path: Path) -> None:
    path, model = _checkpoint(tmp_path, arch, num_points=68)
    assert any(isinstance(m, SepBatchNorm2d) for m in model.modules())
    onnx_file = export_checkpoint(path, tmp_path / "m.onnx", "onnx")
    script_file = export_checkpoint(path, tmp_path / "m.ts", "torchscript")
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    scripted = torch.jit.load(str(script_file))
    for n in (1, 5):  # dynamic batch
        crops = _crops(n)
        expected = _eager(model, crops)
        (got,) = session.run(None, {"images": crops})
        assert got.shape == (n, 68, 2)
        assert np.abs(got - expected).max() < 1e-4
        with torch.no_grad():
            traced = scripted(torch.from_numpy(crops)).numpy()
        assert np.abs(traced - expected).max() < 1e-4
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["protocol"]) == "300w" and json.loads(meta["num_points"]) == 68
    assert json.loads(meta["flip_perm"]) == list(get_protocol("300w").flip_perm)
    extra = {"sepbn.json": ""}
    torch.jit.load(str(script_file), _extra_files=extra)
    assert json.loads(extra["sepbn.json"])["input_size"] == SIZE


@pytest.mark.slow
def test_a_cnt_checkpoint_exports_its_chosen_branch(tmp_path: Path, capsys) -> None:
    path, model = _checkpoint(tmp_path, "vanilla_cnn", heads={"300w": 68, "wflw": 98})
    out = tmp_path / "wflw.onnx"
    assert main(["export", str(path), "--protocol", "wflw", "--out", str(out)]) == 0
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    crops = _crops(3)
    expected = _eager(model.single_protocol("wflw"), crops)
    (got,) = session.run(None, {"images": crops})
    assert got.shape == (3, 98, 2) and np.abs(got - expected).max() < 1e-4
    assert json.loads(session.get_modelmeta().custom_metadata_map["protocol"]) == "wflw"
    # Several branches and none chosen: one line naming them.
    assert main(["export", str(path), "--out", str(tmp_path / "x.onnx")]) == 1
    assert "'300w', 'wflw'" in capsys.readouterr().err


@pytest.mark.slow
def test_landmark_detector_runs_the_onnx_file(tmp_path: Path) -> None:
    path, _ = _checkpoint(tmp_path, "vanilla_cnn", num_points=68)
    onnx_file = export_checkpoint(path, tmp_path / "m.onnx")
    eager = LandmarkDetector.from_checkpoint(path, device="cpu")
    exported = LandmarkDetector.from_checkpoint(onnx_file, backend="onnx")
    assert exported.protocol.name == "300w" and exported.transform.output_size == SIZE
    image = np.random.default_rng(0).integers(0, 256, (120, 100, 3), dtype=np.uint8)
    boxes = [[10, 20, 70, 80], [30, 30, 90, 100]]
    a, b = eager.predict(image, boxes), exported.predict(image, boxes)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x.landmarks, y.landmarks, atol=1e-4 * SIZE * 2)
        assert abs(x.quality - y.quality) < 1e-3


@pytest.mark.parametrize("opset", [MIN_OPSET - 1, 99, "eighteen"])
def test_an_opset_the_exporter_cannot_write_is_refused_as_it_is_parsed(
    tmp_path: Path, capsys, opset: object
) -> None:
    args = ["export", "any.pt", "--opset", str(opset), "--out", str(tmp_path / "m.onnx")]
    with pytest.raises(SystemExit) as info:
        main(args)
    newest = onnx_opsets()[-1]
    assert info.value.code == 2 and newest >= 20  # 18, 19 and 20 export with onnx >= 1.15
    err = capsys.readouterr().err
    assert f"ONNX opset '{opset}' is not supported; valid: {MIN_OPSET} to {newest}" in err
    path, _ = _checkpoint(tmp_path, "vanilla_cnn", num_points=68)
    with pytest.raises(InferenceError, match=f"valid: {MIN_OPSET} to {newest}"):
        export_checkpoint(path, tmp_path / "m.onnx", opset=newest + 1)
    assert not (tmp_path / "m.onnx").exists()


def test_a_file_of_another_opset_than_asked_is_never_written(tmp_path: Path, monkeypatch) -> None:
    import onnx

    path, _ = _checkpoint(tmp_path, "vanilla_cnn", num_points=68)
    graph = onnx.helper.make_graph([], "g", [], [])

    class Program:  # what torch returns when its converter gives up: its own opset 18
        model_proto = onnx.helper.make_model(
            graph, opset_imports=[onnx.helper.make_opsetid("", 18)]
        )

    monkeypatch.setattr(torch.onnx, "export", lambda *args, **kwargs: Program())
    with pytest.raises(InferenceError, match="produced ONNX opset 18, not the 20 asked"):
        export_checkpoint(path, tmp_path / "m.onnx", opset=20)
    assert not (tmp_path / "m.onnx").exists()

"""Every face detector on a real photo, and the errors of the ones that cannot be built.

Haar always runs (OpenCV is a dependency); the others run where their extra is installed and
are skipped with the ``pip install`` that brings them otherwise.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from sepbn.data.formats import read_pts
from sepbn.data.image_io import load_image
from sepbn.inference.face_detection import FaceDetectorError, build_face_detector
from sepbn.inference.face_detection.box_correction import match_detection, training_box

PHOTO = Path("300W") / "lfpw" / "testset" / "image_0001"


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    lo, hi = np.maximum(a[:2], b[:2]), np.minimum(a[2:], b[2:])
    inter = float(np.prod(np.clip(hi - lo, 0, None)))
    return inter / (float(np.prod(a[2:] - a[:2])) + float(np.prod(b[2:] - b[:2])) - inter)


def _needs(name: str) -> None:
    """Skip unless the extra of detector ``name`` is installed."""
    module = {"mtcnn": "facenet_pytorch", "dlib": "dlib", "mediapipe": "mediapipe"}.get(name)
    if module and importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} not installed (pip install 'sepbn[{name}]')")


@pytest.mark.realdata
@pytest.mark.parametrize("name", ["haar", "mtcnn", "dlib", "mediapipe"])
def test_detector_finds_the_face_of_a_real_photo(name: str, data_root: Path) -> None:
    _needs(name)
    rgb = load_image(data_root / PHOTO.with_suffix(".png"))
    target = training_box(read_pts(data_root / PHOTO.with_suffix(".pts")) - 1)  # 1-based file
    detector = build_face_detector(name)
    boxes, scores = detector(rgb)
    assert boxes.shape[1:] == (4,) and boxes.dtype == np.float64
    assert scores.shape == (len(boxes),) and np.all((scores >= 0) & (scores <= 1))
    assert np.all(np.diff(scores) <= 0), "highest score first"
    i = match_detection(boxes, target)
    assert i is not None, f"{name} found {boxes.round()} around {target.round()}"
    # With the fitted correction the box is the training convention's, not just nearby.
    assert _iou(boxes[i], target) > 0.7, (name, boxes[i].round(), target.round())


def test_mtcnn_without_facenet_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "facenet_pytorch" else find_spec(name, *a),
    )
    with pytest.raises(FaceDetectorError, match=r"pip install 'sepbn\[mtcnn\]'"):
        build_face_detector("mtcnn")


@pytest.mark.parametrize(
    ("name", "module", "install"),
    [
        ("dlib", "dlib", r"pip install 'sepbn\[dlib\]'"),
        ("mediapipe", "mediapipe", r"pip install 'sepbn\[mediapipe\]'.*numpy<2"),
    ],
)
def test_missing_extra_names_the_install(
    name: str, module: str, install: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A None entry in sys.modules makes `import module` raise ImportError.
    for loaded in [m for m in sys.modules if m == module or m.startswith(module + ".")]:
        monkeypatch.delitem(sys.modules, loaded)
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(FaceDetectorError, match=install):
        build_face_detector(name)


def test_yunet_needs_a_model_file_and_says_where_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(FaceDetectorError, match=r"needs its model file: download .*opencv_zoo"):
        build_face_detector("yunet")
    with pytest.raises(FaceDetectorError, match=r"missing\.onnx not found; it is .*yunet"):
        build_face_detector("yunet", model_path=tmp_path / "missing.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(FaceDetectorError, match=r"bad\.onnx is not a YuNet model"):
        build_face_detector("yunet", model_path=bad)


def test_detector_options_are_checked() -> None:
    with pytest.raises(ValueError, match="min_relative_size"):
        build_face_detector("haar", min_relative_size=2.0)
    with pytest.raises(FaceDetectorError, match=r"unknown option\(s\) \['no_such'\] .*min_size"):
        build_face_detector("haar", no_such=1)


@pytest.mark.realdata
def test_mtcnn_agrees_with_facenet_pytorchs_own_cascade(data_root: Path) -> None:
    # Same weights, independent code: facenet-pytorch's MTCNN is the reference (it crops
    # with its own resampling, so boxes agree closely, not exactly).
    _needs("mtcnn")
    facenet = pytest.importorskip("facenet_pytorch", reason="facenet-pytorch needs requests")
    rgb = load_image(data_root / PHOTO.with_suffix(".png"))
    ours, _ = build_face_detector("mtcnn", max_side=0, min_face=20).detect_raw(rgb)
    theirs, _ = facenet.MTCNN(keep_all=True, device="cpu").detect(rgb)
    assert len(ours) == len(theirs) >= 1
    for box in theirs:
        assert max(_iou(box.astype(np.float64), mine) for mine in ours) > 0.9

"""Landmarks on whole photos: every face detector, and dlib's HOG + shape predictor, side by side.

For the 300-W common test photos (LFPW + HELEN test, 506 faces) and the WFLW test photos
in ``$SEPBN_DATA`` (356 photos, 425 faces; large-pose and occlusion subsets from the
attribute lists), each pipeline reads the photo, finds the faces, predicts their landmarks
and writes one JSON line per photo. Reported per pipeline:

* recall: a ground-truth face is found when a predicted face's landmark centre lies within
  the ground truth's inter-ocular distance of its landmark centre (each prediction matches
  one face at most);
* NME (inter-ocular, the 300-W convention) on the found faces, and the same model's NME
  from ground-truth boxes on those faces, with their ratio (the issue's <= 1.10 check);
* milliseconds per photo, split into decode / detect / landmarks / write, and per face.

WFLW faces have 98 points; they are scored on the 68 that correspond to the 300-W markup
(:data:`WFLW_TO_300W`). Decoding is done once per photo and counted in every pipeline.
Nothing here asserts a time: the numbers go into docs/benchmarks.md::

    SEPBN_DATA=../shared/data OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_predict.py \\
        --checkpoint runs/recipe_300w_cpu_sepbn/stage1/last.pt
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from sepbn.data.formats import read_records
from sepbn.data.image_io import load_image
from sepbn.data.protocols import get_protocol
from sepbn.data.records import FaceRecord
from sepbn.inference import LandmarkDetector
from sepbn.inference.face_detection import FACE_DETECTORS, FaceDetectorError, build_face_detector
from sepbn.inference.face_detection.box_correction import training_box
from sepbn.metrics import nme_per_image

# WFLW-98 index of each 300-W-68 point: jaw every other point, the upper brow edges,
# nose, the six points of each eye, mouth.
WFLW_TO_300W = np.array(
    [*range(0, 33, 2), *range(33, 38), *range(42, 47), *range(51, 60)]
    + [60, 61, 63, 64, 65, 67, 68, 69, 71, 72, 73, 75]
    + [*range(76, 96)]
)

DLIB_REFERENCE = "dlib HOG + dlib 68-point predictor"

Pipeline = Callable[[np.ndarray], tuple[np.ndarray, dict[str, float]]]


# --- adapters to LandmarkDetector: the only lines to change when its API changes ---------
def load_landmark_model(checkpoint: Path, confidence: str = "shift") -> LandmarkDetector:
    return LandmarkDetector.from_checkpoint(checkpoint, device="cpu", confidence=confidence)


def predict_landmarks(model: LandmarkDetector, rgb: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """``(F, L, 2)`` landmarks of the faces in ``boxes`` (training-convention boxes)."""
    faces = model.predict(rgb, boxes)
    return np.stack([f.landmarks for f in faces]) if faces else np.zeros((0, 68, 2))


# ------------------------------------------------------------------------------------------


def real_data_parser(doc: str | None, checkpoint: str, limit: str) -> argparse.ArgumentParser:
    """``--checkpoint`` (what it must be), ``--data`` (``$SEPBN_DATA``) and ``--limit``."""
    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help=checkpoint)
    parser.add_argument("--data", type=Path, default=os.environ.get("SEPBN_DATA", "../shared/data"))
    parser.add_argument("--limit", type=int, default=0, help=limit)
    return parser


@dataclass
class Photo:
    path: Path
    faces: list[FaceRecord]


@dataclass
class Scores:
    """Per pipeline and set: the matched prediction of each face and the time per stage."""

    predicted: list[np.ndarray | None] = field(default_factory=list)  # per face, (68, 2)
    ms: dict[str, float] = field(
        default_factory=lambda: {"decode": 0.0, "detect": 0.0, "landmarks": 0.0, "write": 0.0}
    )


def read_sets(data: Path, limit: int) -> dict[str, list[Photo]]:
    """The two test sets as photos with their faces (68 points each)."""
    common = read_records("300w", data / "300W", split="common", allow_missing=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # most attribute-list faces have no image here
        wflw = read_records(
            "wflw_attr", data / "WFLW" / "WFLW_annotations" / "list_98pt_test", on_error="skip"
        )
    sets = {}
    for name, records in (("300w_common", common), ("wflw", wflw)):
        photos: dict[Path, Photo] = {}
        for r in records:
            photos.setdefault(r.image_path, Photo(r.image_path, [])).faces.append(r)
        sets[name] = list(photos.values())[: limit or None]
    return sets


def gt68(face: FaceRecord) -> np.ndarray:
    return face.landmarks[WFLW_TO_300W] if face.protocol == "wflw" else face.landmarks


def match(predicted: np.ndarray, faces: list[FaceRecord]) -> list[np.ndarray | None]:
    """Each face's nearest unused prediction whose centre is within its inter-ocular distance."""
    protocol = get_protocol("300w")
    centres = predicted.mean(axis=1) if len(predicted) else np.zeros((0, 2))
    used = np.zeros(len(predicted), dtype=bool)
    out: list[np.ndarray | None] = []
    for face in faces:
        gt = gt68(face)
        dist = np.linalg.norm(centres - gt.mean(axis=0), axis=1)
        dist[used] = np.inf
        best = int(np.argmin(dist)) if len(dist) else -1
        if best >= 0 and dist[best] <= protocol.normalizer(gt[None])[0]:
            used[best] = True
            out.append(predicted[best])
        else:
            out.append(None)
    return out


def detector_pipeline(model: LandmarkDetector, name: str, options: dict) -> Pipeline:
    detector = build_face_detector(name, **options)

    def run(rgb: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
        t0 = time.perf_counter()
        boxes, _ = detector(rgb)
        t1 = time.perf_counter()
        landmarks = predict_landmarks(model, rgb, boxes)
        t2 = time.perf_counter()
        return landmarks, {"detect": t1 - t0, "landmarks": t2 - t1}

    return run


def dlib_reference_pipeline() -> Pipeline:
    """dlib's HOG detector (the ``dlib`` detector's raw boxes) + its 68-point predictor."""
    import dlib

    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FaceDetectorError("the dlib reference needs pip install 'sepbn[bench-dlib]'")
    folder = Path(next(iter(spec.submodule_search_locations))) / "models"
    predictor = dlib.shape_predictor(str(folder / "shape_predictor_68_face_landmarks.dat"))
    detector = build_face_detector("dlib")

    def run(rgb: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
        t0 = time.perf_counter()
        boxes, _ = detector.detect_raw(rgb)
        t1 = time.perf_counter()
        out = []
        for x0, y0, x1, y1 in boxes:
            rect = dlib.rectangle(int(x0), int(y0), int(x1) - 1, int(y1) - 1)
            shape = predictor(rgb, rect)
            out.append([(p.x, p.y) for p in shape.parts()])
        t2 = time.perf_counter()
        landmarks = np.asarray(out, dtype=np.float64).reshape(-1, 68, 2)
        return landmarks, {"detect": t1 - t0, "landmarks": t2 - t1}

    return run


def build_pipelines(
    model: LandmarkDetector, names: list[str], yunet_model: str | None
) -> dict[str, Pipeline]:
    pipelines: dict[str, Pipeline] = {}
    for name in names:
        options = {"model_path": yunet_model} if name == "yunet" else {}
        if name == "yunet" and not yunet_model:
            print("yunet: skipped (pass --yunet-model)")
            continue
        try:
            pipelines[name] = detector_pipeline(model, name, options)
        except FaceDetectorError as e:
            print(f"{name}: skipped ({e})")
    try:
        pipelines[DLIB_REFERENCE] = dlib_reference_pipeline()
    except (ImportError, FaceDetectorError) as e:
        print(f"dlib reference: skipped ({e})")
    return pipelines


def write_line(file, photo: Photo, landmarks: np.ndarray) -> None:
    record = {"image": str(photo.path), "landmarks": np.round(landmarks, 2).tolist()}
    file.write(json.dumps(record) + "\n")


def nme_of(predicted: Sequence[np.ndarray], faces: Sequence[FaceRecord]) -> np.ndarray:
    gt = np.stack([gt68(f) for f in faces])
    return nme_per_image(np.stack(predicted), gt, get_protocol("300w").normalizer(gt))


def main() -> None:
    parser = real_data_parser(__doc__, "a 68-point model", "first N photos per set (a test)")
    parser.add_argument("--detectors", nargs="*", default=sorted(FACE_DETECTORS))
    parser.add_argument("--yunet-model", help="YuNet .onnx file, to include 'yunet'")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (2 cores)")
    parser.add_argument(
        "--confidence",
        default="shift",
        help="the detector's per-point confidence: shift (no extra crops, as when section 7 "
        "was measured) or full (three more crops per face, sepbn predict's default)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = load_landmark_model(args.checkpoint, args.confidence)
    sets = read_sets(args.data, args.limit)
    pipelines = build_pipelines(model, args.detectors, args.yunet_model)
    scores = {(s, p): Scores() for s in sets for p in pipelines}
    from_gt: dict[str, list[np.ndarray]] = {s: [] for s in sets}
    with tempfile.TemporaryDirectory() as out_dir:
        files = {p: open(Path(out_dir) / f"{i}.jsonl", "w") for i, p in enumerate(pipelines)}  # noqa: SIM115
        for set_name, photos in sets.items():
            for photo in photos:
                t0 = time.perf_counter()
                rgb = load_image(photo.path)
                decode = time.perf_counter() - t0
                gt_boxes = np.stack([training_box(gt68(f)) for f in photo.faces])
                from_gt[set_name].extend(predict_landmarks(model, rgb, gt_boxes))
                for name, pipeline in pipelines.items():
                    landmarks, ms = pipeline(rgb)
                    t1 = time.perf_counter()
                    write_line(files[name], photo, landmarks)
                    ms["write"] = time.perf_counter() - t1
                    ms["decode"] = decode
                    score = scores[set_name, name]
                    score.predicted.extend(match(landmarks, photo.faces))
                    for stage, seconds in ms.items():
                        score.ms[stage] += 1000 * seconds
            print(f"{set_name}: {len(photos)} photos done")
        for f in files.values():
            f.close()
    report(sets, pipelines, scores, from_gt)


def report(
    sets: dict[str, list[Photo]],
    pipelines: dict[str, Pipeline],
    scores: dict[tuple[str, str], Scores],
    from_gt: dict[str, list[np.ndarray]],
) -> None:
    print(
        "\n| set | pipeline | recall | recall large pose | recall occlusion | NME found "
        "| sepbn NME from GT boxes, same faces | ratio "
        "| ms/photo decode / detect / landmarks / write | ms/photo | ms/face |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for set_name, photos in sets.items():
        faces = [f for p in photos for f in p.faces]
        gt_nme = nme_of(from_gt[set_name], faces)
        print(
            f"| {set_name} | ground-truth boxes | - | - | - | {100 * gt_nme.mean():.2f}% | "
            f"{100 * gt_nme.mean():.2f}% | 1.00 | | | |"
        )
        for name in pipelines:
            s = scores[set_name, name]
            found = np.array([p is not None for p in s.predicted])
            kept = [(p, f) for p, f in zip(s.predicted, faces) if p is not None]
            nme = nme_of(*zip(*kept)) if kept else np.array([np.nan])
            same = gt_nme[found] if found.any() else np.array([np.nan])
            subsets = []
            for attr in ("pose", "occlusion"):
                member = np.array([f.attributes.get(attr, False) for f in faces], dtype=bool)
                subsets.append(f"{100 * found[member].mean():.1f}%" if member.any() else "-")
            per_stage = " / ".join(f"{s.ms[k] / len(photos):.0f}" for k in s.ms)
            total = sum(s.ms.values())
            # The dlib reference has its own landmark model: no ratio to sepbn's.
            ratio = "-" if name == DLIB_REFERENCE else f"{nme.mean() / same.mean():.3f}"
            print(
                f"| {set_name} | {name} | {100 * found.mean():.1f}% | {subsets[0]} | "
                f"{subsets[1]} | {100 * nme.mean():.2f}% | {100 * same.mean():.2f}% | "
                f"{ratio} | {per_stage} | {total / len(photos):.0f} | {total / len(faces):.0f} |"
            )


if __name__ == "__main__":
    main()

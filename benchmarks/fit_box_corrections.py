"""Fit every available face detector's box correction on the 300-W training crops.

Runs each registered detector (with its default options) on the 1675 crops of
``$SEPBN_DATA/300W_train_crops``, fits the least-squares :class:`BoxCorrection` that maps its
raw boxes to the square box of the 68 ground-truth points
(:func:`sepbn.inference.face_detection.box_correction.fit_box_correction`) and writes the
numbers into ``src/sepbn/inference/face_detection/box_corrections.json``. Detectors whose
extra is not installed here are skipped and keep their entry from an earlier run, so the file
can be completed from several environments (mediapipe needs one of its own)::

    SEPBN_DATA=../shared/data python benchmarks/fit_box_corrections.py
    SEPBN_DATA=../shared/data python benchmarks/fit_box_corrections.py --detectors mtcnn

Test photos are never used here.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from sepbn.data.formats import read_records
from sepbn.data.image_io import load_image
from sepbn.inference.face_detection import FACE_DETECTORS, FaceDetectorError, build_face_detector
from sepbn.inference.face_detection.base import BOX_CORRECTIONS_FILE
from sepbn.inference.face_detection.box_correction import fit_box_correction, training_box

# YuNet needs a model file the user brings; it is fitted only when one is given.
NEEDS_A_FILE = {"yunet"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("SEPBN_DATA", "../shared/data"))
    parser.add_argument("--detectors", nargs="*", default=sorted(FACE_DETECTORS))
    parser.add_argument("--yunet-model", help="YuNet .onnx file, to fit 'yunet' too")
    parser.add_argument("--out", type=Path, default=BOX_CORRECTIONS_FILE)
    parser.add_argument("--limit", type=int, default=0, help="use the first N crops (a test)")
    args = parser.parse_args()

    crops = Path(args.data) / "300W_train_crops"
    records = read_records("pts_folder", crops)
    if args.limit:
        records = records[: args.limit]
    images = [load_image(r.image_path) for r in records]
    targets = [training_box(r.landmarks) for r in records]
    print(f"{len(records)} training crops from {crops}")

    fitted = json.loads(args.out.read_text())["detectors"] if args.out.is_file() else {}
    for name in args.detectors:
        options = {}
        if name in NEEDS_A_FILE:
            if not args.yunet_model:
                print(f"{name:10s} skipped: pass --yunet-model")
                continue
            options["model_path"] = args.yunet_model
        try:
            detector = build_face_detector(name, **options)
        except FaceDetectorError as e:
            print(f"{name:10s} skipped: {e}")
            continue
        start = time.perf_counter()
        fit = fit_box_correction(detector, images, targets)
        fitted[name] = fit.to_dict()
        c = fit.correction
        print(
            f"{name:10s} found {fit.num_found}/{fit.num_faces}  scale {c.scale:.4f}  "
            f"offset ({c.offset_x:+.4f}, {c.offset_y:+.4f})  side rms {fit.side_rms:.4f}  "
            f"centre rms {fit.centre_rms:.4f}  IoU {fit.mean_iou:.3f}  "
            f"({time.perf_counter() - start:.0f} s)"
        )
    payload = {
        "about": (
            "Per-detector BoxCorrection (raw box -> square box of the 68 ground-truth points), "
            "least squares on the 300-W training crops (300W_train_crops, LFPW + HELEN train); "
            "written by benchmarks/fit_box_corrections.py with each detector's default options."
        ),
        "detectors": dict(sorted(fitted.items())),
    }
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

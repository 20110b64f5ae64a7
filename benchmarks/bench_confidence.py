"""Does a landmark's confidence rank its error? Spearman on 300-W common and WFLW test.

``LandmarkDetector`` gives each point ``confidence_l = exp(-d_l / 0.05)``, ``d_l`` the distance
between the point predicted from the final crop and from a crop shifted by 8% and enlarged by
10%, per box side (:mod:`sepbn.inference.detector`). For every face of the 300-W common
test set (506) and the WFLW test set (the 425 faces with photos; its occlusion subset on its
own), cropped from its ground-truth box, this script compares the confidences with the
per-point error ``||p_l - g_l|| / d_io`` (``d_io``: outer eye corners; WFLW faces are scored
on the 68 points that correspond to 300-W's, ``bench_predict.WFLW_TO_300W``). Reported:

* pooled: Spearman's rank correlation between ``1 - confidence`` and the error over every
  point of every face (the issue's target: >= 0.3);
* within face: the same per face, averaged (does it find a face's worst points?);
* face: between ``1 - quality`` and the face's NME;
* the mean error of the 10% least confident points against the other 90%.

Two more disagreement signals are measured beside it, to choose what the detector computes:
the mirrored crop (the prediction on the horizontally flipped photo, flipped back), and the
mean of both distances. Nothing is asserted; the numbers go into docs/benchmarks.md::

    SEPBN_DATA=../shared/data OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_confidence.py \\
        --checkpoint runs/recipe_300w_cpu_sepbn/stage1/last.pt
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.stats import spearmanr
from tqdm import tqdm

from bench_predict import gt68, read_sets, real_data_parser
from sepbn.data.image_io import load_image
from sepbn.inference import LandmarkDetector
from sepbn.inference.detector import QUALITY_SCALE
from sepbn.inference.face_detection.box_correction import training_box


def mirrored(detector: LandmarkDetector, rgb: np.ndarray, box: np.ndarray) -> np.ndarray:
    """``(L, 2)`` points predicted on the mirrored photo, mapped back (flipped and reordered)."""
    width = rgb.shape[1]
    flipped_box = [width - 1 - box[2], box[1], width - 1 - box[0], box[3]]
    points = detector.predict_boxes(np.ascontiguousarray(rgb[:, ::-1]), [flipped_box])[0]
    return detector.protocol.flip(points, width)


def measure(detector: LandmarkDetector, faces, label: str) -> dict[str, np.ndarray]:
    """Per face: error ``(F, 68)``, the three confidences ``(F, 68)`` and quality ``(F,)``."""
    rows: dict[str, list] = {"error": [], "shift": [], "mirror": [], "both": [], "quality": []}
    photos: dict[Path, np.ndarray] = {}
    for face in tqdm(faces, desc=label, unit="face"):
        rgb = photos.setdefault(face.image_path, load_image(face.image_path))
        if len(photos) > 4:
            photos.pop(next(iter(photos)))
        truth = gt68(face)
        box = training_box(truth)
        (found,) = detector.predict(rgb, [box])
        side = np.sqrt(np.prod(found.landmarks.max(axis=0) - found.landmarks.min(axis=0)))
        d_shift = -QUALITY_SCALE * np.log(found.confidence)  # d_l back from confidence_l
        d_mirror = np.linalg.norm(found.landmarks - mirrored(detector, rgb, box), axis=1) / side
        iod = np.linalg.norm(truth[36] - truth[45])
        rows["error"].append(np.linalg.norm(found.landmarks - truth, axis=1) / iod)
        rows["shift"].append(found.confidence)
        rows["mirror"].append(np.exp(-d_mirror / QUALITY_SCALE))
        rows["both"].append(np.exp(-(d_shift + d_mirror) / 2 / QUALITY_SCALE))
        rows["quality"].append(found.quality)
    return {k: np.asarray(v) for k, v in rows.items()}


def report(name: str, m: dict[str, np.ndarray], member: np.ndarray) -> None:
    error = m["error"][member]
    for signal in ("shift", "mirror", "both"):
        confidence = m[signal][member]
        pooled = spearmanr(1 - confidence.ravel(), error.ravel()).statistic
        within = np.nanmean([spearmanr(1 - c, e).statistic for c, e in zip(confidence, error)])
        quality = m["quality"][member] if signal == "shift" else np.exp(np.log(confidence).mean(1))
        face = spearmanr(1 - quality, error.mean(axis=1)).statistic
        low = confidence.ravel() <= np.quantile(confidence, 0.1)
        flat = error.ravel()
        print(
            f"| {name} | {member.sum()} | {signal} | {pooled:.3f} | {within:.3f} | {face:.3f} | "
            f"{100 * flat[low].mean():.2f}% | {100 * flat[~low].mean():.2f}% |"
        )


def main() -> None:
    parser = real_data_parser(__doc__, "a 68-point model", "photos per set (0: all)")
    args = parser.parse_args()
    detector = LandmarkDetector.from_checkpoint(args.checkpoint, device="cpu", detector=None)
    if detector.protocol.name != "300w":
        raise SystemExit(f"{args.checkpoint}: needs a 68-point (300w) model")
    print(f"\ncheckpoint: {args.checkpoint}\n")
    lines = []
    for set_name, photos in read_sets(args.data, args.limit).items():
        faces = [face for photo in photos for face in photo.faces]
        measured = measure(detector, faces, set_name)
        lines.append((set_name, measured, np.ones(len(faces), dtype=bool)))
        if set_name == "wflw":
            occluded = np.array([f.attributes.get("occlusion", False) for f in faces])
            lines.append(("wflw occlusion", measured, occluded))
    print(
        "| set | faces | signal | Spearman pooled | within face | face (quality) | "
        "error, 10% least confident | error, the rest |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, measured, member in lines:
        report(name, measured, member)


if __name__ == "__main__":
    main()

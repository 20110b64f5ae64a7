"""Does a landmark's confidence rank its error? Spearman on 300-W common and WFLW test.

``LandmarkDetector`` gives each point ``confidence_l = exp(-d_l / 0.05)``, ``d_l`` the mean
distance between the point predicted from the final crop and from other views of the face,
per box side (:mod:`sepbn.inference.detector`). For every face of the 300-W common
test set (506) and the WFLW test set (the 425 faces with photos; its occlusion subset on its
own), cropped from its ground-truth box, this script compares the confidences with the
per-point error ``||p_l - g_l|| / d_io`` (``d_io``: outer eye corners; WFLW faces are scored
on the 68 points that correspond to 300-W's, ``bench_predict.WFLW_TO_300W``). Reported:

* pooled: Spearman's rank correlation between ``1 - confidence`` and the error over every
  point of every face (the issue's target: >= 0.3);
* within face: the same per face, averaged (does it find a face's worst points?);
* face: between ``1 - quality`` and the face's NME;
* the mean error of the 10% least confident points against the other 90%.

Both of the detector's modes are measured: ``full`` (the default: the mean distance to the
predictions of the shifted, a back-shifted and the mirrored crop) and ``shift`` (the shifted
crop alone, no extra network work). Nothing is asserted; the numbers go into docs/benchmarks.md::

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
from sepbn.inference.face_detection.box_correction import training_box

#: The detector's confidence modes (sepbn.inference.detector.CONFIDENCE_MODES).
SIGNALS = ("full", "shift")


def measure(detectors: dict[str, LandmarkDetector], faces, label: str) -> dict[str, np.ndarray]:
    """Per face: error ``(F, 68)``, each mode's confidences ``(F, 68)`` and quality ``(F,)``."""
    rows: dict[str, list] = {k: [] for k in ("error", *SIGNALS, "quality")}
    photos: dict[Path, np.ndarray] = {}
    for face in tqdm(faces, desc=label, unit="face"):
        rgb = photos.setdefault(face.image_path, load_image(face.image_path))
        if len(photos) > 4:
            photos.pop(next(iter(photos)))
        truth = gt68(face)
        box = training_box(truth)
        found = {mode: detector.predict(rgb, [box])[0] for mode, detector in detectors.items()}
        iod = np.linalg.norm(truth[36] - truth[45])
        rows["error"].append(np.linalg.norm(found["full"].landmarks - truth, axis=1) / iod)
        for mode in SIGNALS:
            rows[mode].append(found[mode].confidence)
        rows["quality"].append(found["full"].quality)
    return {k: np.asarray(v) for k, v in rows.items()}


def report(name: str, m: dict[str, np.ndarray], member: np.ndarray) -> None:
    error = m["error"][member]
    for signal in SIGNALS:
        confidence = m[signal][member]
        pooled = spearmanr(1 - confidence.ravel(), error.ravel()).statistic
        within = np.nanmean([spearmanr(1 - c, e).statistic for c, e in zip(confidence, error)])
        face = spearmanr(1 - m["quality"][member], error.mean(axis=1)).statistic
        low = confidence.ravel() <= np.quantile(confidence, 0.1)
        flat = error.ravel()
        print(
            f"| {name} | {member.sum()} | {signal} | {pooled:.3f} | {within:.3f} | {face:.3f} | "
            f"{100 * flat[low].mean():.2f}% | {100 * flat[~low].mean():.2f}% |"
        )


def main() -> None:
    parser = real_data_parser(__doc__, "a 68-point model", "photos per set (0: all)")
    args = parser.parse_args()
    detectors = {
        mode: LandmarkDetector.from_checkpoint(
            args.checkpoint, device="cpu", detector=None, confidence=mode
        )
        for mode in SIGNALS
    }
    if detectors["full"].protocol.name != "300w":
        raise SystemExit(f"{args.checkpoint}: needs a 68-point (300w) model")
    print(f"\ncheckpoint: {args.checkpoint}\n")
    lines = []
    for set_name, photos in read_sets(args.data, args.limit).items():
        faces = [face for photo in photos for face in photo.faces]
        measured = measure(detectors, faces, set_name)
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

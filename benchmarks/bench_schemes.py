"""Every scheme from one CNT model: do its ``wider5`` branch and its 68-point branch agree?

A cross-protocol (CNT) checkpoint with a ``300w`` (68 points) and a ``wider5`` (5 points)
branch predicts both schemes from one backbone pass (``LandmarkDetector.predict(...,
protocols="all")``). The five points can also be derived from 68 (eye centres = mean of each
eye's six points, nose tip = point 30, mouth corners = points 48 and 54; image-left first, the
``wider5`` order). Reported, as NME in % of the inter-ocular distance (eye centres):

* 300-W common (506 faces, crops from the ground-truth box): the ``wider5`` branch against the
  five points derived from the model's own 68-point prediction and from the 68-point ground
  truth, and the derived five against the derived ground truth (the 68-point branch alone);
* MTFL test (2,995 AFLW faces, box from the five points as in training): the five points
  derived from the 68-point branch against MTFL's ground truth, beside the ``wider5`` branch
  against the same ground truth.

Nothing here asserts a number; they go into docs/benchmarks.md::

    SEPBN_DATA=../shared/data OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_schemes.py \\
        --checkpoint runs/real/full_cnt_sepbn/s0/stage1/last.pt
"""

from __future__ import annotations

import warnings

import numpy as np
from tqdm import tqdm

from bench_predict import real_data_parser
from sepbn.data.formats import read_records
from sepbn.data.image_io import load_image
from sepbn.data.records import FaceRecord
from sepbn.inference import LandmarkDetector
from sepbn.inference.face_detection.box_correction import training_box


def five_from_68(points: np.ndarray) -> np.ndarray:
    """``(..., 5, 2)`` wider5 points of ``(..., 68, 2)`` 300-W points (image-left first)."""
    eyes = [points[..., 36:42, :].mean(axis=-2), points[..., 42:48, :].mean(axis=-2)]
    return np.stack([*eyes, points[..., 30, :], points[..., 48, :], points[..., 54, :]], axis=-2)


def nme5(predicted: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """``(F,)`` mean point error of ``(F, 5, 2)`` points per eye-centre distance of ``truth``."""
    iod = np.linalg.norm(truth[:, 0] - truth[:, 1], axis=1)
    return np.linalg.norm(predicted - truth, axis=2).mean(axis=1) / iod


def predict_all(
    detector: LandmarkDetector, faces: list[FaceRecord], box_of, label: str
) -> dict[str, np.ndarray]:
    """``{scheme: (F, L_p, 2)}`` of every face, cropped from ``box_of(face)``."""
    out: dict[str, list[np.ndarray]] = {"300w": [], "wider5": []}
    for face in tqdm(faces, desc=label, unit="face"):
        rgb = load_image(face.image_path)
        (found,) = detector.predict(rgb, [box_of(face)], protocols=["300w", "wider5"])
        for name in out:
            out[name].append(found.schemes[name].landmarks)
    return {name: np.stack(v) for name, v in out.items()}


def main() -> None:
    parser = real_data_parser(__doc__, "a 300w + wider5 CNT run", "faces per set (0: all)")
    args = parser.parse_args()
    detector = LandmarkDetector.from_checkpoint(args.checkpoint, protocol="all", device="cpu")
    if not {"300w", "wider5"} <= set(detector.heads):
        raise SystemExit(f"{args.checkpoint}: needs 300w and wider5 branches, has {detector.heads}")
    limit = args.limit or None
    common = read_records("300w", args.data / "300W", split="common", allow_missing=True)[:limit]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the rows MTFL's reader leaves out are reported there
        mtfl = read_records("mtfl", args.data / "MTFL", split="test")[:limit]

    got = predict_all(detector, common, lambda f: training_box(f.landmarks), "300-W common")
    truth = five_from_68(np.stack([f.landmarks for f in common]))
    derived = five_from_68(got["300w"])
    rows = [
        (
            "300-W common",
            len(common),
            "wider5 branch",
            "derived from own 68",
            got["wider5"],
            derived,
        ),
        ("300-W common", len(common), "wider5 branch", "derived from GT 68", got["wider5"], truth),
        ("300-W common", len(common), "derived from own 68", "derived from GT 68", derived, truth),
    ]
    got = predict_all(detector, mtfl, lambda f: f.box, "MTFL test")
    truth = np.stack([f.landmarks for f in mtfl])
    rows += [
        (
            "MTFL test (AFLW)",
            len(mtfl),
            "derived from own 68",
            "MTFL GT",
            five_from_68(got["300w"]),
            truth,
        ),
        ("MTFL test (AFLW)", len(mtfl), "wider5 branch", "MTFL GT", got["wider5"], truth),
    ]
    print(f"\ncheckpoint: {args.checkpoint}\n")
    print("| set | faces | points | against | NME (eye centres) | median |")
    print("|---|---|---|---|---|---|")
    for name, count, a, b, x, y in rows:
        e = nme5(x, y)
        print(
            f"| {name} | {count} | {a} | {b} | {100 * e.mean():.2f}% | {100 * np.median(e):.2f}% |"
        )


if __name__ == "__main__":
    main()

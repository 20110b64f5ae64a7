"""Landmarks on video: tracking and smoothing against detecting every frame, on clips with a
known truth.

Each clip is made from one 300-W common test photo: a slow camera motion (a similarity
transform of the photo around its face: a drift of 0.4 face sides, a rotation of ±8°, a scale
of ±10%, one smooth cycle per clip) rendered frame by frame and written with OpenCV's video
writer (MPEG-4, so the frames carry a codec's noise as real videos do). The transform of each
frame is known, so the true trajectory of every point is too. Each pipeline then reads the
clip back and predicts every frame through :class:`sepbn.inference.tracking.FaceTracker`:

* ``detect every frame``: the face detector on every frame, no smoothing (what a loop of
  ``LandmarkDetector.predict`` does);
* ``track``: the face detector every ``--detect-every`` frames (default the CLI's), the crop
  from the previous landmarks otherwise, no smoothing;
* ``track + smooth``: the same with the One Euro filter (``sepbn predict``'s default on
  videos), once per ``--filters`` setting.

Reported per pipeline: per-frame NME (inter-ocular, outer eye corners), jitter (the mean over
frames and points of the frame-to-frame change of the error vector ``e_t = p_t - g_t``, in %
of the inter-ocular distance), frames without the face, and frames/s of the pipeline (decoding
excluded, the same for all); then the issue's ratios. Nothing is asserted; the numbers go into
docs/benchmarks.md::

    SEPBN_DATA=../shared/data OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_video.py \\
        --checkpoint runs/recipe_300w_cpu_sepbn/stage1/last.pt
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from bench_predict import real_data_parser
from sepbn.data.formats import read_records
from sepbn.data.image_io import load_image
from sepbn.inference import LandmarkDetector
from sepbn.inference.one_euro import BETA, MIN_CUTOFF
from sepbn.inference.tracking import DETECT_EVERY, FaceTracker

FRAME = 320  # frame side, pixels
FPS = 30.0


def camera(t: float, centre: np.ndarray, side: float) -> np.ndarray:
    """``(2, 3)`` photo -> frame transform at ``t`` in ``[0, 1)`` of the clip."""
    phase = 2 * math.pi * t
    angle = math.radians(8.0) * math.sin(phase)
    scale = 0.4 * FRAME / side * (1 + 0.1 * math.sin(phase + 1.0))
    drift = 0.4 * 0.4 * FRAME * np.array([math.sin(phase), 0.5 * (1 - math.cos(phase))])
    rot = scale * np.array(
        [[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]]
    )
    shift = FRAME / 2 + drift - rot @ centre
    return np.concatenate([rot, shift[:, None]], axis=1)


def write_clip(rgb: np.ndarray, truth: np.ndarray, path: Path, frames: int) -> np.ndarray:
    """Write the clip; returns the true points of every frame, ``(T, L, 2)``."""
    centre = (truth.min(0) + truth.max(0)) / 2
    side = float(np.max(truth.max(0) - truth.min(0)))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (FRAME, FRAME))
    out = []
    for k in range(frames):
        matrix = camera(k / frames, centre, side)
        frame = cv2.warpAffine(rgb, matrix, (FRAME, FRAME), flags=cv2.INTER_LINEAR)
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        out.append(truth @ matrix[:, :2].T + matrix[:, 2])
    writer.release()
    return np.stack(out)


def read_clip(path: Path) -> list[np.ndarray]:
    capture, frames = cv2.VideoCapture(str(path)), []
    while True:
        ok, bgr = capture.read()
        if not ok:
            capture.release()
            return frames
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))


def run(tracker: FaceTracker, frames: list[np.ndarray], truth: np.ndarray):
    """Per frame, the face nearest the truth (NaN when none), and the seconds spent."""
    predicted = np.full(truth.shape, np.nan)
    start = time.perf_counter()
    for k, frame in enumerate(frames):
        faces = tracker(frame, k / FPS)
        if faces:
            centres = np.array([f.landmarks.mean(0) for f in faces])
            best = int(np.argmin(np.linalg.norm(centres - truth[k].mean(0), axis=1)))
            predicted[k] = faces[best].landmarks
    return predicted, time.perf_counter() - start


def scores(predicted: np.ndarray, truth: np.ndarray) -> tuple[float, float, float]:
    """NME, jitter (both in % of the inter-ocular distance) and the share of missed frames."""
    iod = np.linalg.norm(truth[:, 36] - truth[:, 45], axis=1)  # (T,)
    error = (predicted - truth) / iod[:, None, None]  # (T, L, 2)
    nme = np.linalg.norm(error, axis=2).mean(axis=1)
    step = np.linalg.norm(np.diff(error, axis=0), axis=2).mean(axis=1)
    return 100 * np.nanmean(nme), 100 * np.nanmean(step), float(np.isnan(nme).mean())


def main() -> None:
    parser = real_data_parser(__doc__, "a 68-point model", "clips (photos) to make")
    parser.add_argument("--frames", type=int, default=60, help="frames per clip (2 s at 30 fps)")
    parser.add_argument("--detect-every", type=int, default=DETECT_EVERY)
    parser.add_argument(
        "--filters",
        nargs="+",
        default=[f"{MIN_CUTOFF},{BETA}", "1,10", "1,20"],
        help="One Euro settings to measure, min_cutoff,beta each",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads (2 cores)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    detector = LandmarkDetector.from_checkpoint(args.checkpoint, device="cpu")
    faces = read_records("300w", args.data / "300W", split="common", allow_missing=True)
    faces = faces[:: max(1, len(faces) // (args.limit or 8))][: args.limit or 8]
    pipelines = {"detect every frame": {"detect_every": 1, "smooth": False}}
    pipelines["track"] = {"detect_every": args.detect_every, "smooth": False}
    for setting in args.filters:
        min_cutoff, beta = (float(v) for v in setting.split(","))
        pipelines[f"track + smooth ({min_cutoff:g} Hz, β {beta:g})"] = {
            "detect_every": args.detect_every,
            "min_cutoff": min_cutoff,
            "beta": beta,
        }
    results: dict[str, list] = {name: [] for name in pipelines}
    with tempfile.TemporaryDirectory() as folder:
        for i, face in enumerate(tqdm(faces, desc="clips", unit="clip")):
            path = Path(folder) / f"clip{i}.mp4"
            truth = write_clip(load_image(face.image_path), face.landmarks, path, args.frames)
            frames = read_clip(path)
            truth = truth[: len(frames)]
            for name, options in pipelines.items():
                predicted, seconds = run(FaceTracker(detector, **options), frames, truth)
                results[name].append((*scores(predicted, truth), len(frames), seconds))
    print(
        f"\ncheckpoint: {args.checkpoint}; {len(faces)} clips of {args.frames} frames, "
        f"{FRAME}x{FRAME} px, face detector {type(detector.face_detector).__name__}\n"
    )
    print("| pipeline | NME | jitter | missed frames | frames/s |")
    print("|---|---|---|---|---|")
    summary = {}
    for name, rows in results.items():
        nme, jitter, missed, count, seconds = np.array(rows).T
        summary[name] = (nme.mean(), jitter.mean(), count.sum() / seconds.sum())
        print(
            f"| {name} | {nme.mean():.2f}% | {jitter.mean():.3f}% | {100 * missed.mean():.1f}% "
            f"| {summary[name][2]:.1f} |"
        )
    base, track = summary["detect every frame"], summary["track"]
    print(
        f"\ntrack vs detect every frame: {track[2] / base[2]:.2f}x frames/s, "
        f"NME {track[0] / base[0]:.3f}x, jitter {track[1] / base[1]:.2f}x"
    )
    for name, values in summary.items():
        if name.startswith("track + smooth"):
            print(
                f"{name} vs track: jitter {values[1] / track[1]:.2f}x, NME "
                f"{values[0] / track[0]:.3f}x"
            )


if __name__ == "__main__":
    main()

"""Synthetic-face generator speed, side by side with decoding the same faces as JPEGs.

One process renders 160 px synthetic faces (:mod:`sepbn.data.synthetic`) and decodes
JPEGs of the same size, alternating in chunks of 50 so that load from other processes
hits both alike. The ratio, generation speed over JPEG-decoding speed, is the figure to
compare: decoding is what a real-data loader pays per image before any augmentation.

Usage:
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/bench_synthetic.py [--num 1000]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import cv2

from sepbn.data.synthetic import SyntheticFaceConfig, make_synthetic_records, save_synthetic_preview


def benchmark_generator(
    num_faces: int = 500, config: SyntheticFaceConfig | None = None
) -> dict[str, float]:
    """Time the generator against decoding same-sized JPEGs, side by side in one run.

    Generation and decoding alternate in chunks of 50, so both see the same machine load.

    Returns:
        ``images_per_s`` (wall clock), ``cpu_images_per_s`` (process CPU time, less
        sensitive to other processes), ``jpeg_decodes_per_s`` and ``ratio``, generation
        speed over JPEG-decoding speed (the reference a real-data loader has to beat).
    """
    if num_faces < 1:
        raise ValueError(f"num_faces must be >= 1, got {num_faces}")
    cfg = config if config is not None else SyntheticFaceConfig()
    warm = make_synthetic_records(50, "300w", seed=1, config=cfg)  # noise texture, caches
    blobs = [cv2.imencode(".jpg", r.image)[1] for r in warm]
    gen_s = gen_cpu = dec_s = 0.0
    for start in range(0, num_faces, 50):
        n = min(50, num_faces - start)
        t0, c0 = time.perf_counter(), time.process_time()
        make_synthetic_records(n, "300w", seed=0, config=cfg, start_index=start)
        t1, c1 = time.perf_counter(), time.process_time()
        for blob in blobs[:n]:
            cv2.imdecode(blob, cv2.IMREAD_COLOR)
        dec_s += time.perf_counter() - t1
        gen_s, gen_cpu = gen_s + (t1 - t0), gen_cpu + (c1 - c0)
    return {
        "images_per_s": num_faces / gen_s,
        "cpu_images_per_s": num_faces / gen_cpu,
        "jpeg_decodes_per_s": num_faces / dec_s,
        "ratio": dec_s / gen_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=1000, help="faces to time")
    parser.add_argument("--preview", type=Path, help="also save a preview grid PNG here")
    args = parser.parse_args()
    result = benchmark_generator(args.num)
    print(
        f"synthetic faces at 160 px, one process: {result['images_per_s']:.0f} images/s "
        f"({result['cpu_images_per_s']:.0f} per CPU-second); decoding the same images as "
        f"JPEG: {result['jpeg_decodes_per_s']:.0f}/s; generation / decoding speed "
        f"ratio {result['ratio']:.2f}"
    )
    if args.preview is not None:
        print(f"preview written to {save_synthetic_preview(args.preview)}")


if __name__ == "__main__":
    main()

"""Data pipeline throughput, side by side in one run: cache vs raw photos vs albumentations.

Augmented 128 x 128 samples per second in ONE process with ONE thread
(``cv2.setNumThreads(1)``, ``torch.set_num_threads(1)``), i.e. per DataLoader worker:

    (a) cache        sepbn LandmarkDataset over a prepared FaceCache, full augmentation
    (a') cache+batch the same plus ``collate_landmarks`` in batches of 64
    (b) raw          sepbn LandmarkDataset over the records: JPEG decode + one warp
    (c) album cache  albumentations Affine (scale/translate/rotate/shear) + HorizontalFlip
                     + CenterCrop + Resize with keypoints, on the same cached crops
    (d) album raw    JPEG decode + square crop + resize to the cache crop, then (c)

Rounds alternate the pipelines so that load from other processes hits all of them alike;
the best round of each is reported. Data: 300-W training crops under ``$SEPBN_DATA``
(default ``../shared/data``), else synthetic noise images written to a temporary folder.

Usage:
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/bench_data.py [--faces 400]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import cv2
import numpy as np
import torch

from sepbn.data.cache import CACHE_MARGIN, prepare_cache
from sepbn.data.datasets import LandmarkDataset, collate_landmarks
from sepbn.data.image_io import load_image
from sepbn.data.protocols import get_protocol
from sepbn.data.records import FaceRecord, box_from_landmarks
from sepbn.data.transforms import DEFAULT_BOX_SCALE, AugmentConfig, FaceCropTransform

REPO = Path(__file__).resolve().parents[1]
SIZE = 128
PROTOCOL = get_protocol("300w")


def real_records(root: Path, limit: int) -> list[FaceRecord]:
    """The first ``limit`` 300-W training crops (LFPW, then HELEN)."""
    try:
        from sepbn.data.formats import read_records
    except ImportError:  # the format readers are optional for this benchmark
        read_records = None
    records: list[FaceRecord] = []
    for sub in ("lfpw", "helen"):
        folder = root / "300W_train_crops" / sub / "trainset"
        if read_records is not None:
            records += read_records("pts_folder", folder, protocol="300w")
            continue
        for pts_file in sorted(folder.glob("*.pts")):
            rows = [ln.split() for ln in pts_file.read_text().splitlines()]
            pts = np.array([r for r in rows if len(r) == 2 and ":" not in r[0]], float) - 1
            box = box_from_landmarks(pts)
            records.append(FaceRecord(pts_file.with_suffix(".jpg"), pts, box, "300w"))
    return records[:limit]


def synthetic_records(folder: Path, count: int) -> list[FaceRecord]:
    """Noise JPEGs of 256 px with a random 68-point face of about 128 px in the middle."""
    rng = np.random.default_rng(0)
    records = []
    for i in range(count):
        img = cv2.GaussianBlur(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8), (0, 0), 2)
        path = folder / f"face_{i:05d}.jpg"
        cv2.imwrite(str(path), img, [cv2.IMWRITE_JPEG_QUALITY, 92])
        pts = 128 + rng.uniform(-64, 64, (68, 2))
        records.append(FaceRecord(path, pts, box_from_landmarks(pts), "300w", source=str(path)))
    return records


class AlbumentationsFaces:
    """The same crop/rotate/shear/scale/flip with albumentations on square face windows.

    The geometric ranges match ``AugmentConfig()``: rotation 25 degrees, shear 0.1
    (5.7 degrees), box jitter 0.15 as scale 0.7-1.3 and translation 7.5% of the window.
    """

    def __init__(self, windows: Callable[[int], tuple[np.ndarray, np.ndarray]], n: int) -> None:
        import albumentations as A

        self.windows, self.n = windows, n
        window = self._window_size()
        crop = round(DEFAULT_BOX_SCALE / CACHE_MARGIN * window)
        common = [
            A.Affine(
                scale=(0.7, 1.3),
                translate_percent=(-0.075 * crop / window, 0.075 * crop / window),
                rotate=(-25, 25),
                shear=(-5.7, 5.7),
                p=1.0,
            ),
            A.CenterCrop(crop, crop),
            A.Resize(SIZE, SIZE),
        ]
        kp = A.KeypointParams(format="xy", remove_invisible=False)
        self.plain = A.Compose(common, keypoint_params=kp)
        self.flipped = A.Compose([*common, A.HorizontalFlip(p=1.0)], keypoint_params=kp)
        self.perm = np.asarray(PROTOCOL.flip_perm)
        self.rng = np.random.default_rng(0)

    def _window_size(self) -> int:
        return self.windows(0)[0].shape[0]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        image, pts = self.windows(i)
        flip = self.rng.random() < 0.5
        out = (self.flipped if flip else self.plain)(image=image, keypoints=pts)
        kps = np.asarray(out["keypoints"], dtype=np.float32)[:, :2]
        if flip:
            kps = kps[self.perm]  # albumentations mirrors points but keeps their order
        return {
            "image": torch.from_numpy(out["image"]).permute(2, 0, 1).contiguous(),
            "landmarks": torch.from_numpy(kps),
        }


def throughput(dataset, order: np.ndarray, batch: int = 0) -> float:
    """Samples per second over ``order`` (optionally collated in batches)."""
    start = time.perf_counter()
    if batch:
        for b in range(0, len(order), batch):
            collate_landmarks([dataset[int(i)] for i in order[b : b + batch]])
    else:
        for i in order:
            dataset[int(i)]
    return len(order) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--faces", type=int, default=400, help="faces to cache (default 400)")
    parser.add_argument("--samples", type=int, default=2000, help="samples per pipeline round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    torch.set_num_threads(1)

    root = Path(os.environ.get("SEPBN_DATA", REPO.parent / "shared" / "data"))
    with tempfile.TemporaryDirectory(prefix="sepbn_bench_") as tmp:
        tmp_path = Path(tmp)
        records = real_records(root, args.faces) if (root / "300W_train_crops").is_dir() else []
        source = f"300-W training crops ({root})"
        if not records:
            records = synthetic_records(tmp_path, args.faces)
            source = "synthetic noise images"
        start = time.perf_counter()
        cache = prepare_cache(records, tmp_path / "cache", PROTOCOL, progress=False)
        prep = len(records) / (time.perf_counter() - start)

        transform = FaceCropTransform(PROTOCOL, SIZE, augment=AugmentConfig())
        from_cache = LandmarkDataset(cache, PROTOCOL, transform)
        from_raw = LandmarkDataset(records, PROTOCOL, transform)

        def cached_window(i: int) -> tuple[np.ndarray, np.ndarray]:
            return np.asarray(cache.images[i]), cache.landmarks[i]

        def raw_window(i: int) -> tuple[np.ndarray, np.ndarray]:
            # Decode, cut the same square window as the cache (black outside), resize.
            image = load_image(records[i].image_path)
            m, size = cache.matrix[i], cache.crop_size
            side = round(size / m[0, 0])
            x0, y0 = np.round((-0.5 - m[:, 2]) / m[0, 0] + 0.5).astype(int)
            pad = side
            padded = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_CONSTANT)
            window = padded[y0 + pad : y0 + pad + side, x0 + pad : x0 + pad + side]
            window = cv2.resize(window, (size, size), interpolation=cv2.INTER_AREA)
            return window, cache.landmarks[i]

        album_cache = AlbumentationsFaces(cached_window, len(cache))
        album_raw = AlbumentationsFaces(raw_window, len(cache))
        pipelines = {
            "(a) sepbn, cache": (from_cache, 0),
            "(a') sepbn, cache + collate(64)": (from_cache, 64),
            "(b) sepbn, raw JPEG": (from_raw, 0),
            "(c) albumentations, cache": (album_cache, 0),
            "(d) albumentations, raw JPEG": (album_raw, 0),
        }
        best = dict.fromkeys(pipelines, 0.0)
        rng = np.random.default_rng(0)
        for r in range(args.rounds):
            from_cache.set_epoch(r)
            from_raw.set_epoch(r)
            order = rng.integers(0, len(cache), size=args.samples)
            for name, (ds, batch) in pipelines.items():
                best[name] = max(best[name], throughput(ds, order, batch))

    print(f"data: {source}, {len(cache)} faces; cache prepared at {prep:.0f} faces/s")
    print(f"cache crop {cache.crop_size} px, margin {cache.margin}; output {SIZE} px")
    print(f"one process, 1 thread; best of {args.rounds} rounds x {args.samples} samples\n")
    print("| pipeline | samples/s | vs (a) cache |")
    print("|---|---:|---:|")
    ref = best["(a) sepbn, cache"]
    for name, value in best.items():
        print(f"| {name} | {value:,.0f} | {value / ref:.2f}x |")
    print()
    print(f"cache / albumentations(cache): {ref / best['(c) albumentations, cache']:.2f}x")
    print(f"cache / raw JPEG:              {ref / best['(b) sepbn, raw JPEG']:.2f}x")
    print(
        f"raw / albumentations(raw):     "
        f"{best['(b) sepbn, raw JPEG'] / best['(d) albumentations, raw JPEG']:.2f}x"
    )


if __name__ == "__main__":
    main()

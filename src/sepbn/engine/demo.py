"""``sepbn demo``: BN vs SepBN vs CNT+SepBN on a machine with no dataset.

Three small Vanilla CNNs (Table I layout at reduced width and input size) are trained for the
same number of epochs on the same 68-point faces, then evaluated on held-out faces:

- **BN**: the baseline, trained on 68-point faces only.
- **SepBN**: every BN replaced by SepBN (K=3, G=2, T=3, τ annealed), same data.
- **CNT+SepBN**: stage 1 on the 68-point faces plus as many *other* faces annotated with the
  98-point WFLW protocol (cross-protocol training, Fig. 5, one branch per protocol), then
  stage 2 fine-tunes the 68-point branch for a quarter of the epochs with the backbone at the
  paper's learning rate of 1e-7.

This is minutes of CPU training, not the paper's 500 epochs: expect SepBN and BN to be close
and CNT, whose per-protocol branches get fewer updates each, not yet to pay off (see the
README for the figures of a run).

By default the faces come from :mod:`sepbn.data.synthetic` (seeded, unbalanced poses: most
near-frontal, fewer left/right profiles, the situation SepBN targets). ``--data`` swaps the
68-point training faces for a real dataset (then ``--test-data`` is the test set); the 98-point
auxiliary set of CNT stays synthetic.

Outputs in ``out_dir``: one run directory per model (config, checkpoints, metrics), the
results table (``results.md``, ``results.json``), the CED plot (``ced.png``) and a grid of
test faces with true (green) and predicted (red) landmarks (``predictions.png``).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from torch.utils.data import DataLoader

from sepbn.config import ExperimentConfig, config_from_dict, deep_merge
from sepbn.data.datasets import collate_landmarks
from sepbn.data.transforms import apply_affine
from sepbn.data.visualize import GREEN, RED, add_title, make_grid, write_png
from sepbn.engine.checkpoint import load_model_from_checkpoint
from sepbn.engine.data_builder import load_records, make_eval_set
from sepbn.engine.evaluator import EvalResult, evaluate
from sepbn.engine.trainer import train
from sepbn.errors import ConfigError
from sepbn.metrics import plot_ced

logger = logging.getLogger(__name__)

# Synthetic face index ranges: disjoint, so no test face is ever trained on.
_TRAIN_START, _AUX_START, _TEST_START = 0, 100_000, 200_000


@dataclass
class DemoSettings:
    """What ``sepbn demo`` trains.

    Attributes:
        out_dir: Output folder.
        quick: A tiny run (a few seconds per model) for smoke tests.
        train_data: ``KIND:PATH[:SPLIT]`` real 68-point training set instead of synthetic faces.
        test_data: ``KIND:PATH[:SPLIT]`` test set for ``train_data``.
        epochs: Training epochs of every model (CNT stage 1; stage 2 adds a quarter of them).
        seed: Seeds the faces, the weights and the data order.
    """

    out_dir: Path = Path("demo_output")
    quick: bool = False
    train_data: str | None = None
    test_data: str | None = None
    epochs: int | None = None
    seed: int = 0


def _parse_spec(spec: str, what: str) -> dict[str, Any]:
    parts = spec.split(":")
    if len(parts) not in (2, 3) or not all(parts[:2]):
        raise ConfigError(f"{what} must be KIND:PATH or KIND:PATH:SPLIT, got {spec!r}")
    out: dict[str, Any] = {"kind": parts[0], "path": parts[1]}
    if len(parts) == 3 and parts[2]:
        out["split"] = parts[2]
    return out


def _synthetic(num: int, start: int, protocol: str, name: str) -> dict[str, Any]:
    return {
        "kind": "synthetic",
        "protocol": protocol,
        "name": name,
        "options": {"num_faces": num, "start_index": start},
    }


def demo_configs(settings: DemoSettings) -> dict[str, ExperimentConfig]:
    """The three experiments, as validated configs (also saved in each run directory)."""
    quick = settings.quick
    num_train = 48 if quick else 1500
    num_test = 24 if quick else 300
    epochs = settings.epochs or (1 if quick else 15)
    if settings.train_data:
        if not settings.test_data:
            raise ConfigError("--data needs --test-data (KIND:PATH[:SPLIT]) to evaluate on")
        train68 = _parse_spec(settings.train_data, "--data") | {"name": "train68"}
        test68 = _parse_spec(settings.test_data, "--test-data") | {"name": "test68"}
    else:
        if settings.test_data:
            raise ConfigError("--test-data needs --data")
        train68 = _synthetic(num_train, _TRAIN_START, "300w", "train68")
        test68 = _synthetic(num_test, _TEST_START, "300w", "test68")
    aux98 = _synthetic(num_train, _AUX_START, "wflw", "aux98")

    base: dict[str, Any] = {
        "seed": settings.seed,
        "model": {"arch": "vanilla_cnn", "width_mult": 0.25, "input_size": 64},
        "data": {"train": [train68], "test": [test68], "num_workers": 0},
        # Adam converges in a few epochs, where the paper's SGD schedule needs hundreds.
        "optim": {
            "name": "adam",
            "lr": 2e-3,
            "min_lr": 1e-5,
            "weight_decay": 0.0,
            "batch_size": 16,
            "epochs": epochs,
            "warmup_epochs": 1,
        },
        # τ from 30 to 1 over the first ~third of training (paper: 30 epochs of 500).
        "temperature": {"start": 30.0, "end": 1.0, "epochs": max(1, epochs // 3)},
        "train": {
            "device": "cpu",
            "checkpoint_every": max(1, epochs),
            "val_every": max(1, epochs),
            "tensorboard": False,
        },
    }
    variants: dict[str, dict[str, Any]] = {
        "BN": {"name": "demo_bn", "model": {"norm": "bn"}},
        "SepBN": {"name": "demo_sepbn", "model": {"norm": "sepbn"}},
        "CNT+SepBN": {
            "name": "demo_cnt_sepbn",
            "model": {"norm": "sepbn"},
            "data": {"train": [train68, aux98]},
            "finetune": {
                "targets": ["300w"],
                "epochs": max(1, epochs // 4),
                "warmup_epochs": 0,
                "backbone_lr": 1e-7,  # paper Sec. V-A
            },
        },
    }
    return {
        label: config_from_dict(deep_merge(base, variant), source=f"demo {label}")
        for label, variant in variants.items()
    }


def _final_checkpoint(run_dir: Path, config: ExperimentConfig) -> Path:
    stage = "finetune_300w" if config.finetune is not None else "stage1"
    return run_dir / stage / "last.pt"


def run_demo(settings: DemoSettings) -> dict[str, dict[str, float]]:
    """Train the three models, evaluate them, write the table, the CED plot and the grid.

    Returns:
        Model label to its test metrics (``nme``, ``failure_rate``, ``auc``; fractions).
    """
    out = Path(settings.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    configs = demo_configs(settings)
    start = time.perf_counter()
    results: dict[str, EvalResult] = {}
    test_set = None
    for i, (label, config) in enumerate(configs.items(), 1):
        logger.info("[%d/%d] training %s", i, len(configs), label)
        run_dir = out / config.name
        train(config, run_dir, resume=(run_dir / "config.yaml").is_file())
        model, _ = load_model_from_checkpoint(_final_checkpoint(run_dir, config))
        if test_set is None:
            loaded = load_records(config.data.test[0], config.seed)
            test_set = make_eval_set(loaded, config)
        loader = DataLoader(test_set, batch_size=64, collate_fn=collate_landmarks)
        results[label] = evaluate(model, loader, "300w", progress=False)
    elapsed = time.perf_counter() - start

    metrics = {k: r.metrics.to_dict() for k, r in results.items()}
    table = _table(results)
    source = settings.test_data or "held-out synthetic 68-point faces"
    report = (
        f"# sepbn demo\n\nTest set: {source} ({len(test_set)} faces). "
        f"Trained and evaluated in {elapsed / 60:.1f} min.\n\n{table}\n"
    )
    (out / "results.md").write_text(report)
    (out / "results.json").write_text(json.dumps(metrics, indent=2))
    plot_ced(
        {k: r.nmes for k, r in results.items()},
        out / "ced.png",
        title=f"Cumulative error distribution, {source}",
    )
    _prediction_grid(results, test_set, out / "predictions.png")
    print("\n" + report)
    print(f"wrote {out / 'ced.png'}, {out / 'predictions.png'}, {out / 'results.md'}")
    return metrics


def _table(results: dict[str, EvalResult]) -> str:
    lines = ["| model | NME (%) | FR@10% (%) | AUC@10% |", "|---|---:|---:|---:|"]
    for label, r in results.items():
        m = r.metrics
        lines.append(f"| {label} | {100 * m.nme:.2f} | {100 * m.failure_rate:.2f} | {m.auc:.4f} |")
    return "\n".join(lines)


def _prediction_grid(results: dict[str, EvalResult], test_set: Any, path: Path) -> Path:
    """Rows: models; columns: the same test faces; green = truth, red = prediction."""
    num = min(6, len(test_set))
    # The hardest and easiest faces of the last model, plus some in between.
    order = np.argsort(list(results.values())[-1].nmes)
    picks = order[np.linspace(0, len(order) - 1, num).round().astype(int)]
    images, marks, titles = [], [], []
    for label, r in results.items():
        for pos in picks:
            sample = test_set[int(r.indices[pos])]
            crop = sample["image"].permute(1, 2, 0).numpy()
            size = crop.shape[0]
            # Enlarge small crops for display; pixel centres map as x -> k * x + (k - 1) / 2.
            k = max(1, 160 // size)
            image = cv2.resize(crop, (k * size, k * size), interpolation=cv2.INTER_LINEAR)
            pred = apply_affine(sample["matrix"].numpy(), r.predictions.landmarks[pos])
            true = sample["landmarks"].numpy().astype(np.float64)
            images.append(image)
            marks.append([(k * true + (k - 1) / 2, GREEN), (k * pred + (k - 1) / 2, RED)])
            titles.append(f"{label} {100 * r.nmes[pos]:.1f}%")
    grid = make_grid(images, marks, ncols=num, titles=titles, radius=1.5)
    grid = add_title(grid, "Test faces: true (green) vs predicted (red) landmarks, NME per face")
    return write_png(path, grid)

"""One command that checks SepBN on a GPU and estimates what the paper's tables cost there.

Runs, in order (issue 9, §3), and writes ``device_check.json`` and ``device_check.md``:

1. the tests marked ``cuda`` (a pytest subprocess; its summary line is kept);
2. layer train fwd+bwd SepBN/BN ratios at the six Vanilla CNN maps, batch 64, float32
   and bfloat16 (autocast), eager, and ``torch.compile`` at the three large ones;
3. train-step SepBN/BN ratios and images/s for the Vanilla CNN (128 px), MobileNetV2 and
   ResNeXt-50 (256 px), batch 64, float32 and bfloat16 (autocast), SepBN at BN3;
4. the time of one stage-1 epoch of ``configs/<arch>/cnt_sepbn.yaml`` per architecture,
   measured over a few hundred steps on synthetic faces of the same sizes (the real
   pipeline: ``sepbn.engine.experiment.train``, augmentation, AMP, the config's batch)
   and extrapolated to the real stage-1 set, 41763 faces (paper Sec. V-A: COFW 1345,
   AFLW 20000, WFLW 7500, 300-W 3148, WIDER FACE 9770);
5. "hours per table": for every config listed under a table in ``docs/reproduce.md``,
   epochs × faces × the measured time per face of its architecture (stage 2 of CNT
   configs fine-tunes each target on its own training set), summed per table.

The target "SepBN/BN train step ≤ 1.10 for ResNeXt-50 in bfloat16" is judged on CUDA.
Everything runs on CPU too (``--device cpu --quick``, in CI: tiny sizes, the
``aot_eager`` compile backend); the items that need CUDA then say "skipped: no CUDA".

Usage (≤ 8 minutes on one GPU)::

    python benchmarks/device_check.py --out device_check/
    OMP_WAIT_POLICY=PASSIVE python benchmarks/device_check.py --device cpu --quick --out /tmp/dc
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_layers  # the layer timing, shared with bench_layers.py
from sepbn.config import config_from_dict, load_config, to_dict
from sepbn.engine.experiment import train
from sepbn.models import build_model

REPO = Path(__file__).resolve().parents[1]
NO_CUDA = "skipped: no CUDA"
TARGET_RESNEXT_BF16 = 1.10

# Training faces per protocol (paper Sec. V-A); the stage-1 set is their sum, 41763.
PAPER_TRAIN_FACES = {"cofw": 1345, "aflw": 20000, "wflw": 7500, "300w": 3148, "wider5": 9770}
# Landmarks per protocol, for the synthetic stand-ins.
ARCH_INPUT = {"vanilla_cnn": 128, "mobilenet_v2": 256, "resnext50": 256}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_cuda_tests(device: torch.device, timeout: int) -> dict[str, Any] | str:
    """``pytest -m cuda`` in a subprocess; its last summary line and exit code."""
    if device.type != "cuda":
        return NO_CUDA
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider"]
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as error:
        return {"summary": f"timed out after {timeout} s", "returncode": None, "tail": str(error)}
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    return {
        "summary": lines[-1] if lines else "(no output)",
        "returncode": proc.returncode,
        "seconds": round(time.perf_counter() - start, 1),
        "failures": [ln for ln in lines if ln.startswith(("FAILED", "ERROR"))],
    }


def layer_section(
    device: torch.device, quick: bool, backend: str, repeats: int
) -> list[dict[str, Any]]:
    """SepBN/BN layer ratios, float32 and bfloat16, eager and compiled, batch 64."""
    if quick:  # CI: tiny maps, one repeat
        shapes = ((2, 16), (64, 2))  # the first and last map's kind: wide, deep
        batch, work = 2, 2e4
    else:
        shapes, batch, work = bench_layers.VANILLA_SHAPES, 64, 2e7
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        for mode in ("eager", "compiled"):
            torch._dynamo.reset()
            # Compiled at the three large maps only (§1's column): each shape compiles twice.
            mode_shapes = shapes if quick or mode == "eager" else bench_layers.LARGE_SHAPES
            for row in bench_layers.layer_ratios(
                mode_shapes, batch, device, dtype, mode == "compiled", repeats, work, backend
            ):
                rows.append({"dtype": str(dtype).removeprefix("torch."), "mode": mode, **row})
    return rows


def _train_step_fn(
    model: nn.Module, x: torch.Tensor, target: torch.Tensor, dtype: torch.dtype
) -> Callable[[], None]:
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with bench_layers._autocast(x.device, dtype):
            loss = nn.functional.l1_loss(model(x).float(), target)
        loss.backward()
        optimizer.step()

    return step


def model_section(device: torch.device, quick: bool, iters: int) -> list[dict[str, Any]]:
    """Train-step SepBN/BN ratios and images/s per architecture, float32 and bfloat16."""
    rows = []
    batch = 2 if quick else 64
    for arch, size in ARCH_INPUT.items():
        size = 64 if quick else size
        width = 0.25 if quick else 1.0
        torch.manual_seed(0)
        models = {
            norm: build_model(arch, num_points=98, norm=norm, input_size=size, width_mult=width)
            .to(device)
            .train()
            for norm in ("bn", "sepbn")
        }
        if device.type == "cuda":
            models = {k: m.to(memory_format=torch.channels_last) for k, m in models.items()}
        x = torch.rand(batch, 3, size, size, device=device)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        target = torch.rand(batch, 98, 2, device=device)
        for dtype in (torch.float32, torch.bfloat16):
            steps = {k: _train_step_fn(m, x, target, dtype) for k, m in models.items()}
            times: dict[str, list[float]] = {k: [] for k in steps}
            for step in steps.values():  # warm-up: cuDNN autotune, SepBN's compilation
                for _ in range(1 if quick else 3):
                    step()
            for i in range(iters):
                for name in list(steps) if i % 2 == 0 else list(reversed(steps)):
                    _sync(device)
                    start = time.perf_counter()
                    steps[name]()
                    _sync(device)
                    times[name].append(time.perf_counter() - start)
            bn, sep = statistics.median(times["bn"]), statistics.median(times["sepbn"])
            rows.append(
                {
                    "arch": arch,
                    "input": size,
                    "batch": batch,
                    "dtype": str(dtype).removeprefix("torch."),
                    "bn_img_s": batch / bn,
                    "sepbn_img_s": batch / sep,
                    "ratio": sep / bn,
                }
            )
        del models
    return rows


def _synthetic_stage1_config(arch: str, device: torch.device, quick: bool, steps: int) -> Any:
    """``configs/<arch>/cnt_sepbn.yaml`` with synthetic faces in place of the five sets."""
    config = to_dict(load_config(REPO / "configs" / arch / "cnt_sepbn.yaml"))
    batch = config["optim"]["batch_size"]
    per_protocol = max(2, math.ceil(steps * batch / len(PAPER_TRAIN_FACES)))
    size = 64 if quick else ARCH_INPUT[arch]
    config["model"].update({"pretrained": None, "input_size": size})
    if quick:
        config["model"]["width_mult"] = 0.125
    config["data"].update(
        {
            "train": [
                {
                    "kind": "synthetic",
                    "protocol": protocol,
                    "name": f"synthetic_{protocol}",
                    "options": {"num_faces": per_protocol, "start_index": 100 * i},
                }
                for i, protocol in enumerate(PAPER_TRAIN_FACES)
            ],
            "test": [],
            "val": None,
            "num_workers": 0 if quick else min(8, os.cpu_count() or 1),
        }
    )
    config["finetune"] = None
    config["optim"].update({"epochs": 2, "warmup_epochs": 1})
    config["train"].update(
        {
            "device": str(device),
            "progress": False,
            "tensorboard": False,
            "checkpoint_every": 1000,
            "val_every": 1000,
        }
    )
    return config_from_dict(config, source=f"device_check:{arch}")


def epoch_section(
    device: torch.device, quick: bool, steps: int, out: Path
) -> dict[str, dict[str, Any]]:
    """Seconds per face of stage-1 training per architecture, and the real epoch's time.

    Two epochs on synthetic faces; the second one is timed (the first compiles and warms
    up), from the end of epoch 1 to the end of epoch 2.
    """
    results = {}
    archs = ("vanilla_cnn",) if quick else tuple(ARCH_INPUT)
    for arch in archs:
        config = _synthetic_stage1_config(arch, device, quick, steps)
        marks: list[float] = []

        def on_epoch(_info: Any, marks: list[float] = marks) -> None:
            _sync(device)
            marks.append(time.perf_counter())

        train(config, out / f"epoch_{arch}", callbacks=[on_epoch])
        faces = sum(ds.options["num_faces"] for ds in config.data.train)
        seconds = marks[-1] - marks[-2]
        per_face = seconds / faces
        real = sum(PAPER_TRAIN_FACES.values())
        results[arch] = {
            "config": f"configs/{arch}/cnt_sepbn.yaml",
            "synthetic_faces": faces,
            "batch": config.optim.batch_size,
            "input": config.model.input_size,
            "measured_s": seconds,
            "s_per_face": per_face,
            "real_faces": real,
            "epoch_s": per_face * real,
        }
    return results


def _table_configs(reproduce: Path) -> dict[str, list[str]]:
    """Table name -> the configs listed under its heading in ``docs/reproduce.md``."""
    tables: dict[str, list[str]] = {}
    current = None
    for line in reproduce.read_text().splitlines():
        heading = re.match(r"### (Table [IVX]+)", line)
        if heading:
            current = heading.group(1)
            tables[current] = []
        elif line.startswith("## "):  # the next section: no table's configs any more
            current = None
        elif current:
            for path in re.findall(r"`([a-z0-9_]+/[A-Za-z0-9_.-]+\.yaml)`", line):
                if path not in tables[current]:
                    tables[current].append(path)
    return tables


def _config_faces(config: Any) -> tuple[int, int]:
    """(faces per stage-1 epoch, faces per stage-2 epoch summed over targets), paper sizes."""
    protocols = [ds.kind for ds in config.data.train]
    stage1 = sum(PAPER_TRAIN_FACES.get(p, 0) for p in protocols)
    stage2 = 0
    if config.finetune is not None:
        targets = config.finetune.targets or protocols
        stage2 = sum(PAPER_TRAIN_FACES.get(t, 0) for t in targets)
    return stage1, stage2


def hours_per_table(epochs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Hours on this device per paper table, from the measured seconds per face."""
    rows = []
    for table, paths in _table_configs(REPO / "docs" / "reproduce.md").items():
        hours, missing = 0.0, []
        for path in paths:
            config = load_config(REPO / "configs" / path)
            measured = epochs.get(config.model.arch)
            if measured is None:
                missing.append(path)
                continue
            stage1, stage2 = _config_faces(config)
            ft_epochs = 0
            if config.finetune is not None:
                ft_epochs = config.finetune.epochs or config.optim.epochs
            faces = config.optim.epochs * stage1 + ft_epochs * stage2
            hours += faces * measured["s_per_face"] / 3600
        rows.append(
            {
                "table": table,
                "configs": len(paths),
                "hours": hours,
                "not_estimated": missing,
            }
        )
    return rows


def _markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [
        f"device_check: {env['device_name']}, torch {env['torch']}, "
        f"{'quick' if env['quick'] else 'full'} sizes, compile backend {env['backend']}",
        "",
    ]
    tests = report["cuda_tests"]
    lines += [f"cuda tests: {tests if isinstance(tests, str) else tests['summary']}", ""]
    lines += [
        "| layer C×H×W | dtype | mode | BN (ms) | SepBN (ms) | SepBN/BN |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["layers"]:
        lines.append(
            f"| {r['shape']} | {r['dtype']} | {r['mode']} | {r['bn_ms']:.3f} "
            f"| {r['sepbn_ms']:.3f} | {r['ratio']:.2f} |"
        )
    lines += [
        "",
        "| model | input | batch | dtype | BN img/s | SepBN img/s | SepBN/BN step |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["models"]:
        lines.append(
            f"| {r['arch']} | {r['input']} | {r['batch']} | {r['dtype']} | {r['bn_img_s']:.1f} "
            f"| {r['sepbn_img_s']:.1f} | {r['ratio']:.3f} |"
        )
    target = report["target_resnext50_bf16"]
    if isinstance(target, str):
        verdict = target
    else:
        met = "met" if target["met"] else "NOT met"
        verdict = f"{target['ratio']:.3f} ≤ {target['target']:.2f}: {met}"
    lines += ["", f"target ResNeXt-50 bf16 SepBN/BN train step ≤ 1.10: {verdict}", ""]
    lines += [
        "| stage-1 epoch | batch | input | synthetic faces timed | s/face | epoch of 41763 faces |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["stage1_epoch"].values():
        lines.append(
            f"| {r['config']} | {r['batch']} | {r['input']} | {r['synthetic_faces']} "
            f"| {r['s_per_face'] * 1e3:.2f} ms | {r['epoch_s'] / 60:.1f} min |"
        )
    lines += [
        "",
        "| table | configs | hours on this device | configs not estimated (arch not timed) |",
        "|---|---|---|---|",
    ]
    for r in report["hours_per_table"]:
        lines.append(
            f"| {r['table']} | {r['configs']} | {r['hours']:.1f} "
            f"| {len(r['not_estimated']) or '-'} |"
        )
    lines += [
        "",
        "Hours = Σ over the table's configs of epochs × paper training faces × the measured",
        "seconds per face of the config's architecture (stage 1 of its CNT config, synthetic",
        "faces, the config's batch and AMP); configs shared by several tables count in each.",
    ]
    if env["quick"]:
        lines += ["", "--quick: tiny models and inputs; these hours are not an estimate."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("device_check"), help="output folder")
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument("--device", default=default_device, help=f"default {default_device}")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (CI)")
    parser.add_argument("--epoch-steps", type=int, default=None, help="stage-1 steps timed")
    parser.add_argument("--skip-tests", action="store_true", help="do not run the cuda tests")
    parser.add_argument("--test-timeout", type=int, default=300, help="seconds for the tests")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch.cuda.is_available() is False")
    backend = "aot_eager" if args.quick and device.type == "cpu" else "inductor"
    args.out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        print(f"device_check: {name} ...", flush=True)
        result = fn()
        timings[name] = round(time.perf_counter() - start, 1)
        return result

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    report: dict[str, Any] = {
        "environment": {
            "torch": torch.__version__,
            "device": str(device),
            "device_name": name,
            "quick": args.quick,
            "backend": backend,
            "threads": torch.get_num_threads(),
        }
    }
    report["cuda_tests"] = (
        "skipped: --skip-tests"
        if args.skip_tests and device.type == "cuda"
        else timed("cuda tests", lambda: run_cuda_tests(device, args.test_timeout))
    )
    repeats = 1 if args.quick else 5
    report["layers"] = timed("layers", lambda: layer_section(device, args.quick, backend, repeats))
    iters = 2 if args.quick else 10
    report["models"] = timed("models", lambda: model_section(device, args.quick, iters))
    if device.type == "cuda":
        row = next(
            r for r in report["models"] if (r["arch"], r["dtype"]) == ("resnext50", "bfloat16")
        )
        report["target_resnext50_bf16"] = {
            "ratio": row["ratio"],
            "target": TARGET_RESNEXT_BF16,
            "met": row["ratio"] <= TARGET_RESNEXT_BF16,
        }
    else:
        report["target_resnext50_bf16"] = NO_CUDA
    steps = args.epoch_steps or (2 if args.quick else 200)
    report["stage1_epoch"] = timed(
        "stage-1 epoch", lambda: epoch_section(device, args.quick, steps, args.out / "runs")
    )
    report["hours_per_table"] = hours_per_table(report["stage1_epoch"])
    report["seconds"] = timings  # where the 8 minutes went: compilation shows up here
    (args.out / "device_check.json").write_text(json.dumps(report, indent=2) + "\n")
    markdown = _markdown(report)
    (args.out / "device_check.md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()

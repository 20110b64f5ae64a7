"""One command that checks SepBN on a GPU and estimates what the paper's tables cost there.

Runs, in this order (issue 9, §3; the order is the priority under ``--budget``), and writes
``device_check.json`` and ``device_check.md`` after every section:

1. ``tests``: the tests marked ``cuda`` (a pytest subprocess, its log in ``cuda_tests.log``);
2. ``models``: train-step SepBN/BN ratios and images/s for ResNeXt-50 and MobileNetV2
   (256 px) and the Vanilla CNN (128 px), batch 64, float32 and bfloat16 (autocast),
   SepBN at BN3;
3. ``epoch``: the time of one stage-1 epoch of ``configs/<arch>/cnt_sepbn.yaml`` per
   architecture, measured over a few hundred steps on synthetic faces of the same sizes
   (the real pipeline: ``sepbn.engine.experiment.train``, augmentation, AMP, the config's
   batch) and extrapolated to the real stage-1 set, 41763 faces (paper Sec. V-A: COFW
   1345, AFLW 20000, WFLW 7500, 300-W 3148, WIDER FACE 9770); then "hours per table": for
   every config listed under a table in ``docs/reproduce.md``, epochs × faces × the
   measured time per face of its architecture (stage 2 of CNT configs fine-tunes each
   target on its own training set), summed per table;
4. ``layers``: layer train fwd+bwd SepBN/BN ratios at the six Vanilla CNN maps, batch 64,
   float32 and bfloat16 (autocast), eager, and ``torch.compile`` at the three large ones.

The target "SepBN/BN train step ≤ 1.10 for ResNeXt-50 in bfloat16" is judged on CUDA.
Everything runs on CPU too (``--device cpu --quick``, in CI: tiny sizes, the
``aot_eager`` compile backend); the items that need CUDA then say "skipped: no CUDA".

A first GPU run has one chance, so nothing in it is all-or-nothing: a section or item that
raises is recorded with its error and the run goes on; once ``--budget`` seconds have
passed no new item starts (each skipped item is listed under ``skipped``); ``--only``
reruns some sections. Without ``pip install`` (the GPU machines' image has torch, numpy,
OpenCV, SciPy, h5py, Matplotlib, PyYAML, tqdm and pytest, not facenet-pytorch), put
``src`` on the path.

Usage (≤ 8 minutes on one GPU with the default budget)::

    PYTHONPATH=src python benchmarks/device_check.py --out device_check/
    PYTHONPATH=src python benchmarks/device_check.py --out dc/ --budget 300 --only models,epoch
    OMP_WAIT_POLICY=PASSIVE python benchmarks/device_check.py --device cpu --quick --out /tmp/dc
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
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
SECTIONS = ("tests", "models", "epoch", "layers")

# Training faces per protocol (paper Sec. V-A); the stage-1 set is their sum, 41763.
PAPER_TRAIN_FACES = {"cofw": 1345, "aflw": 20000, "wflw": 7500, "300w": 3148, "wider5": 9770}
# Input size per architecture, in the order the models are measured (the target's first).
ARCH_INPUT = {"resnext50": 256, "mobilenet_v2": 256, "vanilla_cnn": 128}


class Budget:
    """The run's seconds; once they are spent no new item starts, and each one not started
    is listed (an item already running finishes)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.perf_counter() + seconds
        self.skipped: list[str] = []

    def left(self) -> float:
        return self.end - time.perf_counter()

    def run(self, item: str, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` if the budget allows ``item`` to start, else None (listed as
        skipped); an exception becomes the item's error record, so the next item runs."""
        if self.left() <= 0:
            self.skipped.append(f"{item}: time budget ({self.seconds:.0f} s) spent")
            return None
        try:
            return fn(*args)
        except Exception as error:  # out of memory, a compiler failure: the next goes on
            return _error(error)


def _error(exc: BaseException) -> dict[str, str]:
    """A failure as the report keeps it: the exception line and the traceback's end."""
    text = "".join(traceback.format_exception(exc))
    print(text, file=sys.stderr, flush=True)
    return {"error": f"{type(exc).__name__}: {exc}"[:2000], "traceback": text[-4000:]}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_pytest(args: list[str], timeout: float, log: Path) -> dict[str, Any]:
    """pytest in a subprocess from the repository root; its summary, exit code and failures.

    One line per test (``-v``), so a run stopped at ``timeout`` still tells which passed;
    the whole output goes to ``log``.
    """
    cmd = [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "-rfE", *args]
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False
        )
        output, returncode = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as error:
        partial = error.stdout or b""
        output = partial.decode(errors="replace") if isinstance(partial, bytes) else partial
        returncode = None
    log.write_text(output)
    lines = [ln for ln in output.splitlines() if ln.strip()]
    results = [ln for ln in lines if re.search(r" (PASSED|FAILED|ERROR|SKIPPED|XFAIL)\b", ln)]
    if returncode is None:
        summary = f"timed out after {timeout:.0f} s"
    else:
        summary = lines[-1] if lines else "(no output)"
    return {
        "summary": summary,
        "returncode": returncode,
        "seconds": round(time.perf_counter() - start, 1),
        "passed": sum(" PASSED" in ln for ln in results),
        "failures": [ln for ln in lines if ln.startswith(("FAILED", "ERROR"))]
        or [ln for ln in results if " FAILED" in ln or " ERROR" in ln],
    }


def layer_section(
    device: torch.device, quick: bool, backend: str, repeats: int, budget: Budget
) -> list[dict[str, Any]]:
    """SepBN/BN layer ratios, float32 and bfloat16, eager and compiled, batch 64."""
    if quick:  # CI: tiny maps, one repeat
        shapes = ((2, 16), (64, 2))  # the first and last map's kind: wide, deep
        batch, work = 2, 2e4
    else:
        shapes, batch, work = bench_layers.VANILLA_SHAPES, 64, 2e7
    rows: list[dict[str, Any]] = []
    for dtype in (torch.float32, torch.bfloat16):
        for mode in ("eager", "compiled"):
            torch._dynamo.reset()
            # Compiled at the three large maps only (§1's column): each shape compiles twice.
            mode_shapes = shapes if quick or mode == "eager" else bench_layers.LARGE_SHAPES
            for channels, size in mode_shapes:
                label = {
                    "dtype": str(dtype).removeprefix("torch."),
                    "mode": mode,
                    "shape": f"{channels}×{size}×{size}",
                }
                row = budget.run(
                    f"layers {label['dtype']} {mode} {label['shape']}",
                    _layer_row,
                    (channels, size),
                    (batch, device, dtype, mode == "compiled", repeats, work, backend),
                )
                if row is not None:
                    rows.append({**label, **row})
    return rows


def _layer_row(shape: tuple[int, int], settings: tuple[Any, ...]) -> dict[str, Any]:
    """:func:`bench_layers.layer_ratios` at one (C, H=W)."""
    (row,) = bench_layers.layer_ratios((shape,), *settings)
    return row


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


def _time_train_steps(
    models: dict[str, nn.Module],
    x: torch.Tensor,
    target: torch.Tensor,
    dtype: torch.dtype,
    warmup: int,
    iters: int,
) -> dict[str, float]:
    """Median seconds per SGD step of each model, timed in alternation."""
    device = x.device
    steps = {k: _train_step_fn(m, x, target, dtype) for k, m in models.items()}
    times: dict[str, list[float]] = {k: [] for k in steps}
    for step in steps.values():  # warm-up: cuDNN autotune, SepBN's compilation
        for _ in range(warmup):
            step()
    for i in range(iters):
        for name in list(steps) if i % 2 == 0 else list(reversed(steps)):
            _sync(device)
            start = time.perf_counter()
            steps[name]()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def model_section(
    device: torch.device, quick: bool, iters: int, budget: Budget
) -> list[dict[str, Any]]:
    """Train-step SepBN/BN ratios and images/s per architecture, bfloat16 and float32."""
    rows: list[dict[str, Any]] = []
    batch = 2 if quick else 64
    for arch, size in ARCH_INPUT.items():
        size = 64 if quick else size
        width = 0.25 if quick else 1.0
        models: dict[str, nn.Module] = {}  # built by the first dtype's item, kept for the next
        for dtype in (torch.bfloat16, torch.float32):
            label = {
                "arch": arch,
                "input": size,
                "batch": batch,
                "dtype": str(dtype).removeprefix("torch."),
            }
            warmup = 1 if quick else 3
            row = budget.run(
                f"models {arch} {label['dtype']}",
                _model_row,
                models,
                (arch, size, width),
                (batch, dtype, device, warmup, iters),
            )
            if row is not None:
                rows.append({**label, **row})
        del models
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def _model_row(
    models: dict[str, nn.Module], build: tuple[str, int, float], timing: tuple[Any, ...]
) -> dict[str, float]:
    """BN and SepBN train-step throughput of one architecture in one dtype.

    ``models`` is filled with the two models (same seed; channels-last on CUDA) if empty.
    """
    arch, size, width = build
    batch, dtype, device, warmup, iters = timing
    if not models:
        torch.manual_seed(0)
        for norm in ("bn", "sepbn"):
            model = build_model(arch, num_points=98, norm=norm, input_size=size, width_mult=width)
            if device.type == "cuda":
                model = model.to(memory_format=torch.channels_last)
            models[norm] = model.to(device).train()
    x = torch.rand(batch, 3, size, size, device=device)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    target = torch.rand(batch, 98, 2, device=device)
    median = _time_train_steps(models, x, target, dtype, warmup, iters)
    return {
        "bn_img_s": batch / median["bn"],
        "sepbn_img_s": batch / median["sepbn"],
        "ratio": median["sepbn"] / median["bn"],
    }


def _synthetic_stage1_config(
    arch: str, device: torch.device, quick: bool, steps: int, runs: Path
) -> Any:
    """``configs/<arch>/cnt_sepbn.yaml`` with synthetic faces in place of the five sets.

    Their crop cache goes to ``runs/cache`` (the first epoch fills it, the timed second one
    reads it, as training on the real sets does), not to the working directory.
    """
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
            "cache_dir": str(runs / "cache"),
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
    device: torch.device, quick: bool, steps: int, runs: Path, budget: Budget
) -> dict[str, dict[str, Any]]:
    """Seconds per face of stage-1 training per architecture, and the real epoch's time.

    Two epochs on synthetic faces; the second one is timed (the first compiles and warms
    up), from the end of epoch 1 to the end of epoch 2. The run folders go to ``runs``.
    """
    results: dict[str, dict[str, Any]] = {}
    archs = ("vanilla_cnn",) if quick else tuple(ARCH_INPUT)
    for arch in archs:
        row = budget.run(f"epoch {arch}", _epoch_row, arch, device, quick, steps, runs)
        if row is not None:
            results[arch] = row
    return results


def _epoch_row(
    arch: str, device: torch.device, quick: bool, steps: int, runs: Path
) -> dict[str, Any]:
    """Two synthetic stage-1 epochs of one architecture; the second one's time per face."""
    config = _synthetic_stage1_config(arch, device, quick, steps, runs)
    marks: list[float] = []

    def on_epoch(_info: Any) -> None:
        _sync(device)
        marks.append(time.perf_counter())

    train(config, runs / f"epoch_{arch}", callbacks=[on_epoch])
    faces = sum(ds.options["num_faces"] for ds in config.data.train)
    seconds = marks[-1] - marks[-2]
    per_face = seconds / faces
    real = sum(PAPER_TRAIN_FACES.values())
    return {
        "config": f"configs/{arch}/cnt_sepbn.yaml",
        "synthetic_faces": faces,
        "batch": config.optim.batch_size,
        "input": config.model.input_size,
        "measured_s": seconds,
        "s_per_face": per_face,
        "real_faces": real,
        "epoch_s": per_face * real,
    }


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
            measured = epochs.get(config.model.arch, {})
            if "s_per_face" not in measured:  # not timed: skipped or failed
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


def _section_state(section: Any) -> str | None:
    """A section that has no rows to show: not run, skipped, or failed as a whole."""
    if isinstance(section, str):
        return section
    if isinstance(section, dict) and "error" in section:
        return f"ERROR {section['error']}"
    return None


def _table(
    title: str, section: Any, header: list[str], keys: list[str], cells: Callable[[dict], list]
) -> list[str]:
    """A Markdown table of a section's rows; a row that failed shows its error."""
    state = _section_state(section)
    if state is not None:
        return [f"{title}: {state}", ""]
    rows = section.values() if isinstance(section, dict) else section
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        values = [r.get(k, "") for k in keys]
        values += [f"ERROR {r['error']}"] if "error" in r else cells(r)
        lines.append("| " + " | ".join(str(v) for v in values) + " |")
    return [*lines, ""]


def _markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [
        f"device_check: {env['device_name']}, torch {env['torch']} (CUDA {env['cuda']}), "
        f"Python {env['python']}, {'quick' if env['quick'] else 'full'} sizes, "
        f"compile backend {env['backend']}",
        "",
    ]
    tests = report["cuda_tests"]
    state = _section_state(tests)
    if state is None:
        state = f"{tests['summary']} ({tests['passed']} passed, {tests['seconds']} s)"
        state += "".join(f"\n- {line}" for line in tests["failures"])
    lines += [f"cuda tests: {state}", ""]
    lines += _table(
        "models",
        report["models"],
        ["model", "input", "batch", "dtype", "BN img/s", "SepBN img/s", "SepBN/BN step"],
        ["arch", "input", "batch", "dtype"],
        lambda r: [f"{r['bn_img_s']:.1f}", f"{r['sepbn_img_s']:.1f}", f"{r['ratio']:.3f}"],
    )
    target = report["target_resnext50_bf16"]
    if isinstance(target, str):
        verdict = target
    else:
        met = "met" if target["met"] else "NOT met"
        verdict = f"{target['ratio']:.3f} ≤ {target['target']:.2f}: {met}"
    lines += [f"target ResNeXt-50 bf16 SepBN/BN train step ≤ 1.10: {verdict}", ""]
    lines += _table(
        "stage-1 epoch",
        report["stage1_epoch"],
        ["stage-1 epoch", "batch", "input", "synthetic faces timed", "s/face", "41763 faces"],
        ["config", "batch", "input", "synthetic_faces"],
        lambda r: [f"{r['s_per_face'] * 1e3:.2f} ms", f"{r['epoch_s'] / 60:.1f} min"],
    )
    lines += _table(
        "hours per table",
        report["hours_per_table"],
        ["table", "configs", "hours on this device", "configs not estimated (arch not timed)"],
        ["table", "configs"],
        lambda r: [f"{r['hours']:.1f}", len(r["not_estimated"]) or "-"],
    )
    if _section_state(report["hours_per_table"]) is None:
        lines += [
            "Hours = Σ over the table's configs of epochs × paper training faces × the",
            "measured seconds per face of the config's architecture (stage 1 of its CNT",
            "config, synthetic faces, the config's batch and AMP); configs shared by several",
            "tables count in each.",
            "",
        ]
    lines += _table(
        "layers",
        report["layers"],
        ["layer C×H×W", "dtype", "mode", "BN (ms)", "SepBN (ms)", "SepBN/BN"],
        ["shape", "dtype", "mode"],
        lambda r: [f"{r['bn_ms']:.3f}", f"{r['sepbn_ms']:.3f}", f"{r['ratio']:.2f}"],
    )
    if report["skipped"]:
        lines += ["Not started:", *(f"- {item}" for item in report["skipped"]), ""]
    spent = ", ".join(f"{name} {seconds} s" for name, seconds in report["seconds"].items())
    lines.append(f"Seconds per section: {spent}")
    if env["quick"]:
        lines += ["", "--quick: tiny models and inputs; these hours are not an estimate."]
    return "\n".join(lines) + "\n"


def _environment(device: torch.device, quick: bool, backend: str) -> dict[str, Any]:
    cuda = device.type == "cuda"
    return {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "python": platform.python_version(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if cuda else "CPU",
        "cpus": os.cpu_count(),
        "quick": quick,
        "backend": backend,
        "threads": torch.get_num_threads(),
    }


def _resnext_target(models: Any) -> dict[str, Any] | str:
    """The issue's GPU target, judged on the ResNeXt-50 bfloat16 row."""
    rows = models if isinstance(models, list) else []
    row = next((r for r in rows if (r["arch"], r["dtype"]) == ("resnext50", "bfloat16")), None)
    if row is None or "ratio" not in row:
        return "not measured (see models)"
    ratio = row["ratio"]
    return {"ratio": ratio, "target": TARGET_RESNEXT_BF16, "met": ratio <= TARGET_RESNEXT_BF16}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("device_check"), help="output folder")
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument("--device", default=default_device, help=f"default {default_device}")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (CI)")
    parser.add_argument("--epoch-steps", type=int, default=None, help="stage-1 steps timed")
    parser.add_argument(
        "--budget", type=float, default=420, help="seconds after which no new item starts"
    )
    parser.add_argument(
        "--test-timeout", type=float, default=180, help="seconds at most for the cuda tests"
    )
    parser.add_argument(
        "--only",
        default=",".join(SECTIONS),
        help=f"comma-separated sections to run, of {','.join(SECTIONS)} (default: all)",
    )
    parser.add_argument(
        "--runs-dir", type=Path, default=None, help="training runs of 'epoch' (default: a temp dir)"
    )
    args = parser.parse_args()
    only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown:
        parser.error(f"--only: unknown sections {unknown}; valid: {', '.join(SECTIONS)}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch.cuda.is_available() is False")
    backend = "aot_eager" if args.quick and device.type == "cpu" else "inductor"
    args.out.mkdir(parents=True, exist_ok=True)
    runs = args.runs_dir or Path(tempfile.mkdtemp(prefix="device_check_runs_"))
    budget = Budget(args.budget)
    not_run = "not run (--only)"
    report: dict[str, Any] = {
        "environment": _environment(device, args.quick, backend),
        "cuda_tests": not_run,
        "models": not_run,
        "target_resnext50_bf16": NO_CUDA if device.type != "cuda" else not_run,
        "stage1_epoch": not_run,
        "hours_per_table": not_run,
        "layers": not_run,
        "skipped": budget.skipped,
        "seconds": {},
    }

    def write() -> None:  # after every section: a run cut short still leaves its results
        (args.out / "device_check.json").write_text(json.dumps(report, indent=2) + "\n")
        (args.out / "device_check.md").write_text(_markdown(report))

    def section(name: str, key: str, fn: Callable[[], Any]) -> None:
        if name not in only:
            return
        print(f"device_check: {name} ({budget.left():.0f} s of the budget left) ...", flush=True)
        start = time.perf_counter()
        try:
            report[key] = fn()
        except Exception as error:  # the next section still runs
            report[key] = _error(error)
        report["seconds"][name] = round(time.perf_counter() - start, 1)
        write()

    def tests() -> Any:  # pytest -m cuda, within the budget
        if device.type != "cuda":
            return NO_CUDA
        timeout = min(args.test_timeout, max(budget.left(), 1))
        log = args.out / "cuda_tests.log"
        result = budget.run("tests", run_pytest, ["-m", "cuda"], timeout, log)
        return "skipped: time budget spent" if result is None else result

    def epoch() -> Any:
        steps = args.epoch_steps or (2 if args.quick else 200)
        report["stage1_epoch"] = epoch_section(device, args.quick, steps, runs, budget)
        return hours_per_table(report["stage1_epoch"])

    def models() -> Any:
        rows = model_section(device, args.quick, 2 if args.quick else 10, budget)
        if device.type == "cuda":  # in the file written right after this section
            report["target_resnext50_bf16"] = _resnext_target(rows)
        return rows

    section("tests", "cuda_tests", tests)
    section("models", "models", models)
    section("epoch", "hours_per_table", epoch)
    repeats = 1 if args.quick else 5
    section("layers", "layers", lambda: layer_section(device, args.quick, backend, repeats, budget))
    write()
    print(_markdown(report))


if __name__ == "__main__":
    main()

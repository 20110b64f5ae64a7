"""The ``sepbn`` command line: thin wiring around the library modules.

Why this file is long: it is the argument parser of the twelve commands below (ten at the
top level, three of them under ``analyze``, plus the alias ``sepbn similarity``) and their
``_cmd_*`` functions, each a few lines that call one library function; the logic is in the
modules they call.

Commands::

    sepbn demo                      train BN / SepBN / CNT+SepBN on synthetic faces, compare
    sepbn train CONFIG [--set k=v]  train an experiment (CNT stage 1 and 2 included)
    sepbn eval CHECKPOINT --data K --path P [--split S]
    sepbn prepare --data K --path P --out CACHE_DIR
    sepbn preview --data K --path P --out grid.png     augmented samples with landmarks
    sepbn predict CHECKPOINT INPUTS... --out DIR [--detector D] [--format jsonl|csv|pts]
                                    [--draw] [--every N] [--box x0,y0,x1,y1 | --boxes F]
                                    [--protocol all|P,...] [--detect-every N] [--no-smooth]
    sepbn export CHECKPOINT --format onnx|torchscript --out FILE [--protocol P|all|P,...]
    sepbn build-kernels             build SepBN's C++ CPU kernels now (else at first use)
    sepbn analyze similarity CHECKPOINT --out fig4.png Eq. 2 / Fig. 4 (alias: sepbn similarity)
    sepbn analyze attention CHECKPOINT --data K --path P --out DIR   π by yaw bin / attribute
    sepbn analyze embedding --data K --path P [--checkpoint C] --out DIR   t-SNE as in Fig. 3
    sepbn report RUN_DIR... [--table IX] [--format md|csv|latex]     runs beside the paper
                                    [--pose] [--columns KEY,...]    or the runs' own columns
    sepbn report --study FOLDER                                    a seeded study's tables

Known errors (:class:`sepbn.errors.SepbnError`: bad data, bad config, bad checkpoint, a
diverged run) print one line and exit with status 1; ``sepbn --debug CMD`` prints their full
traceback. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
import traceback
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from sepbn import __version__
from sepbn import cli_arguments as argtypes
from sepbn.errors import ConfigError, SepbnError, os_error_reason

if TYPE_CHECKING:
    import numpy as np

    from sepbn.analysis.attention_report import AttentionAnalysis
    from sepbn.analysis.embedding import EmbeddingAnalysis
    from sepbn.config import DatasetConfig
    from sepbn.data.errors import SkipReport

logger = logging.getLogger("sepbn")


def _add_data_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument(
        "--data",
        required=required,
        metavar="KIND",
        help="dataset format: wflw, wflw_attr, 300w, pts_folder, cofw, cofw68, aflw, "
        "aflw2000, wider5, mtfl, coco or synthetic",
    )
    p.add_argument("--path", help="annotation file or dataset folder")
    p.add_argument("--split", help="split of the dataset (train, test, common, full, ...)")
    p.add_argument("--protocol", help="landmark protocol key (default: the reader's)")
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra reader option, e.g. --option image_root=/data/WFLW/WFLW_images",
    )
    p.add_argument(
        "--on-error",
        choices=("raise", "skip"),
        default="raise",
        help="stop at the first bad record, or skip bad records and report them",
    )


def _dataset_config(args: argparse.Namespace) -> DatasetConfig:
    from sepbn.config import DatasetConfig
    from sepbn.config.yaml_reader import parse_yaml

    options = {}
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--option expects KEY=VALUE, got {item!r}")
        options[key] = parse_yaml(value, f"--option {item}", lines=False)[0]
    try:
        return DatasetConfig(
            kind=args.data,
            path=args.path,
            split=args.split,
            protocol=args.protocol,
            options=options,
            on_error=args.on_error,
        )
    except ConfigError as exc:  # an option's type: say it came from --option
        if not exc.key.startswith("options."):
            raise
        raise ConfigError(exc.reason, key=exc.key, source="--option") from None


def _cmd_train(args: argparse.Namespace) -> int:
    from sepbn.config import load_config
    from sepbn.engine.experiment import train

    config = load_config(args.config, args.set)
    run_dir = Path(args.run_dir or Path("runs") / config.name)
    problem = argtypes.output_path_problem(run_dir, "folder")
    if problem:  # the default run dir (--run-dir is checked as it is parsed)
        raise ConfigError(f"run directory {problem}")
    result = train(config, run_dir, resume=args.resume)
    if result.evaluation:
        print(f"\nTest results ({run_dir / 'eval'}):")
        print(_metrics_table({k: v for k, v in result.evaluation.items()}))
    return 0


def _metrics_table(rows: dict[str, dict[str, float]]) -> str:
    width = max([len(k) for k in rows] + [10])
    lines = [f"{'':{width}}  {'NME(%)':>7}  {'FR(%)':>6}  {'AUC':>6}  {'faces':>6}"]
    for name, m in rows.items():
        lines.append(
            f"{name:{width}}  {100 * m['nme']:7.2f}  {100 * m['failure_rate']:6.2f}  "
            f"{m['auc']:6.4f}  {int(m['num_images']):6d}"
        )
    return "\n".join(lines)


def _cmd_eval(args: argparse.Namespace) -> int:
    from sepbn.analysis.pose_bins import format_pose_bins
    from sepbn.engine.evaluate_checkpoint import evaluate_checkpoint
    from sepbn.metrics import format_attribute_table

    done = evaluate_checkpoint(
        args.checkpoint,
        _dataset_config(args),
        args.out,
        name=args.name,
        device=args.device,
        batch_size=args.batch_size,
        num_workers=args.workers,
    )
    _print_skipped(done.skipped, done.paths["skipped"])
    print(f"{done.dataset.name} ({done.dataset.protocol.name}): {done.result.metrics.format()}")
    print(format_pose_bins(done.result.pose))
    if done.attributes:
        print(format_attribute_table({Path(args.checkpoint).stem: done.attributes}))
    print("wrote " + ", ".join(str(p) for p in done.paths.values()))
    return 0


def _cmd_prepare(args: argparse.Namespace) -> int:
    from sepbn.data.cache import cache_crop_size, prepare_cache
    from sepbn.engine.data_builder import load_records

    loaded = load_records(_dataset_config(args), seed=0)
    size = cache_crop_size(args.input_size)
    cache = prepare_cache(
        loaded.records,
        args.out,
        loaded.protocol,
        crop_size=size,
        on_error=args.on_error,
        skipped=loaded.read_skipped,
    )
    _print_skipped(cache.skip_report(), cache.root / "skipped.csv")
    print(f"cache {args.out}: {len(cache)} faces ({loaded.protocol.name}, {size} px crops)")
    return 0


def _print_skipped(report: SkipReport, listing: Path) -> None:
    """How many records a command skipped, and where the full list is.

    The counts per reason were printed as each step (reading, preparing) finished.
    """
    if len(report):
        print(f"skipped {len(report)} record(s) in all; each one is listed in {listing}")


def _cmd_preview(args: argparse.Namespace) -> int:
    from sepbn.data.datasets import LandmarkDataset
    from sepbn.data.transforms import DEFAULT_BOX_SCALE, AugmentConfig, FaceCropTransform
    from sepbn.data.visualize import save_augmentation_grid
    from sepbn.engine.data_builder import load_records

    loaded = load_records(_dataset_config(args), seed=args.seed)
    augment = None
    if not args.no_augment:
        augment = AugmentConfig()
        if args.photometric:
            augment = AugmentConfig(
                brightness=0.2, contrast=0.3, grayscale_prob=0.2, blur_prob=0.2, occlusion_prob=0.3
            )
    transform = FaceCropTransform(loaded.protocol, args.input_size, DEFAULT_BOX_SCALE, augment)
    dataset = LandmarkDataset(
        loaded.records, loaded.protocol, transform, seed=args.seed, on_error=args.on_error
    )
    title = f"{loaded.name}: {'augmented' if augment else 'evaluation'} crops ({len(dataset)})"
    path = save_augmentation_grid(
        dataset, args.out, num=args.num, seed=args.seed, show_index=args.index, title=title
    )
    print(f"wrote {path}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    import signal

    from tqdm import tqdm

    from sepbn.inference import LandmarkDetector, predict_photos
    from sepbn.inference.stopping import Interrupted

    boxes = _predict_boxes(args)
    detector = LandmarkDetector.from_checkpoint(
        args.checkpoint,
        protocol=args.protocol,
        device=args.device,
        detector=args.detector,
        batch_size=args.batch_size,
        confidence=args.confidence,
    )
    try:
        summary = predict_photos(
            detector,
            args.inputs,
            args.out,
            boxes=boxes,
            fmt=args.format,
            draw=args.draw,
            every=args.every,
            progress=not args.quiet,
            report=lambda line: tqdm.write(f"sepbn predict: {line}", file=sys.stderr),
            overwrite=args.overwrite,
            signals=True,
            detect_every=args.detect_every,
            smooth=not args.no_smooth,
            min_quality=args.min_quality,
        )
    except Interrupted as exc:  # a second Ctrl-C or SIGTERM; records and summary are written
        print(
            f"sepbn predict: stopped by {exc}; the results so far are in {args.out}",
            file=sys.stderr,
        )
        return 128 + exc.signum
    if summary.stopped_by:  # a first signal: the photos in hand were finished
        print(
            f"sepbn predict: stopped by {summary.stopped_by}: {summary.format()}", file=sys.stderr
        )
        return 128 + int(getattr(signal, summary.stopped_by))
    if summary.ok:
        if not args.quiet:  # a file name that is not UTF-8 must not fail the last line
            encoding = sys.stdout.encoding or "utf-8"
            print(summary.format().encode(encoding, "backslashreplace").decode(encoding))
        return 0
    print(f"sepbn predict: {summary.format()}", file=sys.stderr)
    return 1


def _predict_boxes(args: argparse.Namespace) -> np.ndarray | dict[str, np.ndarray] | None:
    """``--box`` (one array for every photo) or ``--boxes FILE`` (per photo), or None."""
    from sepbn.inference.boxes import parse_boxes, read_boxes_file
    from sepbn.inference.errors import InferenceError

    if args.box and args.boxes:
        raise InferenceError("give --box or --boxes, not both")
    if args.box:
        return parse_boxes(args.box)
    if args.boxes:
        return read_boxes_file(args.boxes)
    return None


def _cmd_export(args: argparse.Namespace) -> int:
    from sepbn.inference.export import export_checkpoint

    path = export_checkpoint(
        args.checkpoint, args.out, fmt=args.format, protocol=args.protocol, opset=args.opset
    )
    print(f"wrote {path}")
    return 0


def _cmd_build_kernels(args: argparse.Namespace) -> int:
    from sepbn.nn import native

    native.available(required=True)  # raises NativeBuildError (one line) if it cannot
    print(f"sepbn: C++ CPU kernels built and loaded from {native.SOURCE.name}")
    return 0


def _cmd_similarity(args: argparse.Namespace) -> int:
    from sepbn.analysis import branch_similarity, plot_branch_similarity
    from sepbn.engine.checkpoint import CheckpointError
    from sepbn.engine.model_builder import load_model_from_checkpoint

    model, _ = load_model_from_checkpoint(args.checkpoint)
    sims = branch_similarity(model)
    if not sims:
        raise CheckpointError(
            f"{args.checkpoint} has no SepBN or brute-force SepBN layer to compare"
        )
    kinds = ("running_mean", "running_var", "scale", "shift")
    print(f"{'layer':40}" + "".join(f"{k:>14}" for k in kinds))
    for name, row in sims.items():
        cells = "".join(f"{row[k]:14.4f}" if k in row else f"{'-':>14}" for k in kinds)
        print(f"{name:40}{cells}")
    print(f"wrote {plot_branch_similarity(sims, args.out)}")
    return 0


def _yaw_edges(text: str) -> list[float]:
    from sepbn.analysis.pose_bins import bin_names

    try:
        edges = [float(v) for v in text.split(",")]
        bin_names(edges)  # checks them
    except ValueError as exc:
        raise ConfigError(f"--yaw-edges expects degrees like -30,30, got {text!r}: {exc}") from None
    return edges


def _print_analysis(done: AttentionAnalysis | EmbeddingAnalysis) -> int:
    print(done.summary())
    print("wrote " + ", ".join(str(p) for p in done.paths))
    return 0


def _cmd_attention(args: argparse.Namespace) -> int:
    from sepbn.analysis.attention_report import analyze_attention

    done = analyze_attention(
        args.checkpoint,
        _dataset_config(args),
        args.out,
        yaw_edges=_yaw_edges(args.yaw_edges),
        device=args.device,
        batch_size=args.batch_size,
    )
    return _print_analysis(done)


def _cmd_embedding(args: argparse.Namespace) -> int:
    from sepbn.analysis.embedding import analyze_embedding

    done = analyze_embedding(
        _dataset_config(args),
        args.out,
        checkpoint=args.checkpoint,
        yaw_edges=_yaw_edges(args.yaw_edges),
        max_faces=args.max_faces,
        perplexity=args.perplexity,
        seed=args.seed,
        device=args.device,
        batch_size=args.batch_size,
    )
    return _print_analysis(done)


def _cmd_report(args: argparse.Namespace) -> int:
    from sepbn.analysis.report import (
        POSE_COLUMNS,
        ReportError,
        build_report,
        find_runs,
        paper_tables,
        render,
        render_runs_table,
        runs_table,
    )

    if args.study is not None:
        from sepbn.analysis.study import render_study

        if args.run_dirs or args.table or args.all or args.columns or args.pose:
            raise ReportError("--study renders one study folder alone; drop the other options")
        if args.format != "md":
            raise ReportError("--study writes Markdown only; drop --format")
        return _write_report(render_study(args.study), args)
    runs = find_runs(args.run_dirs)
    if args.columns or args.pose:
        if args.table or args.all:
            raise ReportError("--columns and --pose lay out the runs alone; drop --table / --all")
        if not runs:
            raise ReportError("--columns and --pose need at least one RUN_DIR")
        keys = [c.strip() for text in args.columns or [] for c in text.split(",") if c.strip()]
        columns = list(dict.fromkeys([*(POSE_COLUMNS if args.pose else ()), *keys]))
        table = runs_table(runs, columns)
        return _write_report(render_runs_table(table, columns, args.format), args)
    ids = list(paper_tables()) if args.all or not args.table else args.table
    reports = build_report(ids, runs, args.configs)
    if not args.all and not args.table:
        reports = [r for r in reports if r.has_runs]
        if not reports:
            raise ReportError(
                f"none of the {len(runs)} run(s) matches a row of Tables II-XI "
                "(same config up to seed and name); --all prints the paper's tables alone"
            )
    used = {d for r in reports for row in r.runs for d in row}
    unmatched = [str(run.run_dir) for run in runs if run.run_dir not in used]
    if unmatched:
        print(
            f"note: {len(unmatched)} run(s) in no row shown: {', '.join(unmatched)}",
            file=sys.stderr,
        )
    return _write_report(render(reports, args.format), args)


def _write_report(text: str, args: argparse.Namespace) -> int:
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text, encoding="utf-8")
        print(f"wrote {args.out}")
    else:
        print(text, end="")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from sepbn.demo import DemoSettings, run_demo

    settings = DemoSettings(
        out_dir=Path(args.out),
        quick=args.quick,
        train_data=args.data,
        test_data=args.test_data,
        epochs=args.epochs,
        seed=args.seed,
        config_dir=args.config_dir,
    )
    run_demo(settings)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sepbn",
        description="Separable Batch Normalization and Cross-protocol Network Training "
        "for facial landmark localization.",
    )
    parser.add_argument("--version", action="version", version=f"sepbn {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and results")
    parser.add_argument("--debug", action="store_true", help="full tracebacks for known errors too")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("demo", help="BN vs SepBN vs CNT+SepBN on synthetic faces (no download)")
    p.add_argument("--out", default="demo_output", type=argtypes.output_dir, help="output folder")
    p.add_argument("--quick", action="store_true", help="a tiny run (seconds) for smoke tests")
    p.add_argument(
        "--data",
        metavar="KIND:PATH[:SPLIT]",
        help="train on a real dataset instead of synthetic 68-point faces, "
        "e.g. pts_folder:../shared/data/300W_train_crops",
    )
    p.add_argument(
        "--test-data",
        metavar="KIND:PATH[:SPLIT]",
        help="test set for --data, e.g. 300w:../shared/data/300W:common",
    )
    p.add_argument("--epochs", type=argtypes.positive_int, help="training epochs per model")
    p.add_argument(
        "--seed",
        type=argtypes.seed,
        help="seeds faces, weights and data order (default: the configs', 0)",
    )
    p.add_argument(
        "--config-dir",
        type=Path,
        metavar="DIR",
        help="folder of the demo's YAML configs (default: configs/demo of the sepbn checkout)",
    )
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("train", help="train an experiment from a YAML config")
    p.add_argument("config", help="YAML file (see configs/)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set optim.lr=0.01 (repeatable)",
    )
    p.add_argument(
        "--run-dir", type=argtypes.output_dir, help="output folder (default runs/<config name>)"
    )
    p.add_argument("--resume", action="store_true", help="continue a killed run")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="evaluate a checkpoint: NME, FR, AUC, CED, per-image CSV")
    p.add_argument("checkpoint")
    _add_data_args(p)
    p.add_argument("--out", default="eval_output", type=argtypes.output_dir, help="output folder")
    p.add_argument("--name", help="file name prefix (default: the dataset name)")
    p.add_argument("--batch-size", type=argtypes.positive_int, default=32)
    p.add_argument(
        "--workers", type=argtypes.non_negative_int, default=0, help="DataLoader worker processes"
    )
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("prepare", help="pre-crop a dataset into a fast memory-mapped cache")
    _add_data_args(p)
    p.add_argument("--out", required=True, type=argtypes.output_dir, help="cache folder")
    p.add_argument(
        "--input-size", type=argtypes.positive_int, default=128, help="network input size S"
    )
    p.set_defaults(func=_cmd_prepare)

    p = sub.add_parser("preview", help="save a grid of augmented samples with their landmarks")
    _add_data_args(p)
    p.add_argument(
        "--out",
        default="augmentation_grid.png",
        type=argtypes.image_file,
        help=f"the image to write ({', '.join(argtypes.IMAGE_SUFFIXES)})",
    )
    p.add_argument("--num", type=argtypes.positive_int, default=16)
    p.add_argument("--seed", type=argtypes.seed, default=0)
    p.add_argument("--input-size", type=argtypes.positive_int, default=128)
    p.add_argument("--no-augment", action="store_true", help="show the evaluation crops")
    p.add_argument("--photometric", action="store_true", help="add photometric augmentation")
    p.add_argument("--index", action="store_true", help="write landmark indices")
    p.set_defaults(func=_cmd_preview)

    from sepbn.inference.boxes import NUMBERS_ARGUMENT
    from sepbn.inference.detector import CONFIDENCE_MODES
    from sepbn.inference.export import DEFAULT_OPSET, EXPORT_FORMATS, MIN_OPSET
    from sepbn.inference.face_detection import DEFAULT_FACE_DETECTOR, FACE_DETECTORS
    from sepbn.inference.tracking import DETECT_EVERY, MIN_QUALITY
    from sepbn.inference.writers import FORMAT_ALIASES, FORMATS

    p = sub.add_parser(
        "predict", help="landmarks on photos, folders and videos (face detector or --box)"
    )
    p._negative_number_matcher = NUMBERS_ARGUMENT  # `--box -5,3,120,140` is a value
    p.add_argument(
        "checkpoint", help="a sepbn checkpoint, or a file of `sepbn export` (ONNX, TorchScript)"
    )
    p.add_argument(
        "inputs", nargs="+", help="photo files, folders (searched recursively) and videos"
    )
    p.add_argument("--out", default="predictions", type=argtypes.output_dir, help="output folder")
    p.add_argument(
        "--detector",
        default=DEFAULT_FACE_DETECTOR,
        help=f"face detector ({', '.join(sorted(FACE_DETECTORS))}; "
        f"default {DEFAULT_FACE_DETECTOR})",
    )
    p.add_argument(
        "--box",
        action="append",
        metavar="X0,Y0,X1,Y1",
        help="face box in display pixels, used for every photo (repeatable; negative "
        "numbers as --box -5,3,120,140 or --box=-5,3,120,140); default: the face detector",
    )
    p.add_argument(
        "--boxes", metavar="JSON", help="per-photo boxes: {image path or name: [[x0,y0,x1,y1]]}"
    )
    p.add_argument(
        "--format",
        choices=[*FORMATS, *FORMAT_ALIASES],
        default="jsonl",
        help="landmarks.jsonl (one JSON line per photo; json is the same), landmarks.csv, "
        "or one .pts file per face",
    )
    p.add_argument(
        "--draw",
        action="store_true",
        help="also write <name>_landmarks.jpg, points coloured by confidence (red 0, green 1)",
    )
    p.add_argument(
        "--every",
        type=argtypes.positive_int,
        default=1,
        metavar="N",
        help="every N-th video frame",
    )
    p.add_argument(
        "--confidence",
        choices=CONFIDENCE_MODES,
        default=CONFIDENCE_MODES[0],
        help="per-point confidence from the shifted, back-shifted and mirrored crops (full, "
        "three more crops per face) or the shifted crop alone (shift, faster)",
    )
    p.add_argument(
        "--detect-every",
        type=argtypes.positive_int,
        default=DETECT_EVERY,
        metavar="N",
        help="on videos, follow each face from its previous landmarks (track_id in the "
        "records) and run the face detector every N frames, or when a face's quality drops "
        f"(default {DETECT_EVERY}; 1: every frame)",
    )
    p.add_argument(
        "--min-quality",
        type=float,
        default=MIN_QUALITY,
        metavar="Q",
        help=f"on videos, a followed face below this quality sends its frame back to the face "
        f"detector (default {MIN_QUALITY})",
    )
    p.add_argument(
        "--no-smooth",
        action="store_true",
        help="on videos, do not smooth the landmarks over time (One Euro filter)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="write into an --out folder that already holds files (never one holding an input)",
    )
    p.add_argument(
        "--protocol",
        help="branch of a cross-protocol checkpoint; 'all' or a list (wflw,300w) gives each "
        "face its points in every scheme named, from one backbone pass",
    )
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    p.add_argument(
        "--batch-size", type=argtypes.positive_int, default=64, help="face crops per network call"
    )
    p.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=argparse.SUPPRESS,  # keeps `sepbn -q predict` working
        help="no progress bar, only warnings",
    )
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("export", help="the landmark network as one ONNX or TorchScript file")
    p.add_argument("checkpoint")
    p.add_argument("--format", choices=EXPORT_FORMATS, default="onnx")
    p.add_argument("--out", required=True, type=argtypes.output_file, help="the file to write")
    p.add_argument(
        "--protocol",
        help="branch of a cross-protocol checkpoint; 'all' or a list (wflw,300w): one output "
        "per branch (landmarks_<scheme>), listed in the metadata",
    )
    p.add_argument(
        "--opset",
        type=argtypes.onnx_opset,
        default=DEFAULT_OPSET,
        help=f"ONNX opset, {MIN_OPSET} up to the newest the installed onnx knows "
        f"(default {DEFAULT_OPSET})",
    )
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser(
        "build-kernels",
        help="build SepBN's C++ CPU kernels ahead of time (otherwise the first SepBN call does)",
    )
    p.set_defaults(func=_cmd_build_kernels)

    _add_analysis_commands(sub)
    return parser


def _add_analysis_commands(sub: argparse._SubParsersAction) -> None:
    """``sepbn analyze {similarity,attention,embedding}``, its alias ``sepbn similarity``, and
    ``sepbn report``."""
    analyze = sub.add_parser("analyze", help="the paper's analyses: Eq. 2 / Fig. 4, π, Fig. 3")
    kinds = analyze.add_subparsers(dest="analysis", metavar="ANALYSIS", required=True)
    about = "Eq. 2 / Fig. 4: how similar the branches / sets of each layer are"
    for parent, help_text in ((kinds, about), (sub, "the same as 'analyze similarity'")):
        p = parent.add_parser("similarity", help=help_text)
        p.add_argument("checkpoint")
        p.add_argument(
            "--out",
            default="similarity.png",
            type=argtypes.figure_file,
            help="bar chart (.png, .pdf, .svg)",
        )
        p.set_defaults(func=_cmd_similarity)

    p = kinds.add_parser(
        "attention", help="SepBN's attention π per layer and group, by yaw bin and attribute"
    )
    p.add_argument("checkpoint")
    _add_data_args(p)
    p.add_argument(
        "--out",
        default="attention",
        type=argtypes.output_dir,
        help="output folder (PNG per layer, CSV)",
    )
    p.add_argument(
        "--yaw-edges",
        default="-30,30",
        metavar="DEG,...",
        help="yaw bin edges in degrees, e.g. --yaw-edges=-60,-30,30,60 (default -30,30: "
        "right profile, near-frontal, left profile)",
    )
    p.add_argument("--batch-size", type=argtypes.positive_int, default=32)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_cmd_attention)

    p = kinds.add_parser(
        "embedding", help="Fig. 3: t-SNE of aligned landmark shapes or backbone features"
    )
    _add_data_args(p)
    p.add_argument("--checkpoint", help="embed this network's backbone features instead")
    p.add_argument(
        "--out", default="embedding", type=argtypes.output_dir, help="output folder (PNG, CSV)"
    )
    p.add_argument("--yaw-edges", default="-30,30", metavar="DEG,...", help="yaw bin edges")
    p.add_argument(
        "--max-faces", type=argtypes.positive_int, default=3000, help="t-SNE on a random subset"
    )
    p.add_argument("--perplexity", type=argtypes.positive_float, default=30.0)
    p.add_argument("--seed", type=argtypes.seed, default=0)
    p.add_argument("--batch-size", type=argtypes.positive_int, default=32)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_cmd_embedding)

    p = sub.add_parser("report", help="runs' test results in the layout of the paper's tables")
    p.add_argument("run_dirs", nargs="*", metavar="RUN_DIR", help="run folders, or runs/")
    p.add_argument(
        "--table",
        action="append",
        metavar="ID",
        help="II, III, ..., XI (repeatable; default: every table a run appears in)",
    )
    p.add_argument("--all", action="store_true", help="every table, with or without runs")
    p.add_argument(
        "--columns",
        action="append",
        metavar="KEY,...",
        help="instead of the paper's tables, one row per configuration and evaluated test set "
        "with these keys of eval/summary.json, e.g. nme,nme_pose_profile (repeatable)",
    )
    p.add_argument(
        "--pose",
        action="store_true",
        help="the same with NME and face count per head-pose bin (frontal, moderate, profile, "
        "unknown), before any --columns",
    )
    p.add_argument(
        "--study",
        metavar="FOLDER",
        help="a seeded study of scripts/cnt_study.py: mean ± std per cell and seed-paired "
        "differences with 95%% intervals (docs/analysis.md)",
    )
    p.add_argument("--format", choices=("md", "csv", "latex"), default="md")
    p.add_argument(
        "--out", type=argtypes.output_file, help="write to this file instead of printing"
    )
    p.add_argument("--configs", help="the configs/ folder the rows name (default: the checkout's)")
    p.set_defaults(func=_cmd_report)


def _format_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    line: str | None = None,
) -> str:
    # Data warnings (skipped records, fallbacks) are for the user: no source line, no path.
    return f"warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(message)s",
    )
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    warnings.formatwarning = _format_warning

    try:
        return int(args.func(args) or 0)
    except SepbnError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"sepbn {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"sepbn {args.command}: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        # A file the command could not write or read (a full disk, a quota, no permission)
        # that no lower layer turned into a SepbnError: one line naming it, not a traceback.
        if exc.filename is None and exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        if args.debug:
            traceback.print_exc()
        where = f"{exc.filename}: " if exc.filename is not None else ""
        print(f"sepbn {args.command}: error: {where}{os_error_reason(exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

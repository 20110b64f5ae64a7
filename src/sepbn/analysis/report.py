"""Runs beside the paper's tables: what ``sepbn report`` prints and docs/reproduce.md shows.

The paper's numbers (Tables II-XI) live in one data file, ``paper_results.yaml`` next to this
module: per table its columns (a test set and a metric) and its rows (a configuration of
``configs/`` and the published values). :func:`paper_tables` reads it.

A run directory (``sepbn train``) holds ``config.yaml``, the resolved config, and
``eval/summary.json``: ``"<stage>/<test set>" -> {nme, failure_rate, auc, num_images}``.
Runs are grouped into **configurations**: two runs are one configuration when their configs
are equal up to ``seed``, ``name`` and the fields that say where and how a run ran rather
than what it trained (data paths, device, workers, logging:
:data:`sepbn.engine.run_config.RESUMABLE_CHANGES`). A paper row's cell is matched to the
configuration of the config file it names, its value read from the stage ``finetune_<protocol>``
when the run has one (CNT), else ``stage1``. Several seeds give mean ± sample std.

Numbers the paper has no table for, such as the NME per head-pose bin that every evaluation
writes (:func:`sepbn.analysis.pose_bins.pose_bin_metrics`), are laid out by
:func:`runs_table`: one row per configuration and evaluated ``<stage>/<test set>``, one
column per chosen key of ``eval/summary.json`` (``sepbn report --columns`` or ``--pose``).

Why this file is long (~620 lines): it is everything ``sepbn report`` prints, the paper's tables
and the runs' own columns, each in three formats (Markdown, CSV, LaTeX) that share the grouping
of runs into configurations and the cell formatting.
"""

from __future__ import annotations

import csv
import fnmatch
import io
import json
import math
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from sepbn.analysis.pose_bins import pose_bin_keys
from sepbn.config import config_from_dict, load_config, to_dict
from sepbn.config.yaml_reader import read_yaml_file
from sepbn.engine.run_config import RESUMABLE_CHANGES
from sepbn.errors import SepbnError

__all__ = [
    "DEFAULT_CONFIG_ROOT",
    "FORMATS",
    "POSE_COLUMNS",
    "PaperColumn",
    "PaperEntry",
    "PaperRow",
    "PaperTable",
    "ReportError",
    "RunResult",
    "RunsRow",
    "TableReport",
    "build_report",
    "config_file_key",
    "configuration_key",
    "find_runs",
    "load_run",
    "paper_entries",
    "paper_tables",
    "render",
    "render_document",
    "render_runs_table",
    "runs_table",
]

#: ``configs/`` of the checkout this module lives in (``src/sepbn/analysis/report.py``).
DEFAULT_CONFIG_ROOT = Path(__file__).resolve().parents[3] / "configs"
FORMATS = ("md", "csv", "latex")
METRICS = ("nme", "failure_rate")
#: ``--format csv``: one line per table cell.
CSV_COLUMNS = (
    *("table", "row", "config", "column", "test_set", "metric", "paper"),
    *("measured_mean", "measured_std", "num_runs", "difference"),
)
#: ``--pose``: the whole set's NME, then the NME and face count of each head-pose bin.
POSE_COLUMNS = ("nme", *pose_bin_keys())
# Fields that do not make two runs different configurations (besides RESUMABLE_CHANGES).
_NOT_THE_CONFIGURATION = ("seed", "name", "data.train.*.options.image_root", "data.val*")


class ReportError(SepbnError, ValueError):
    """A run directory without results, or an unknown table."""


@dataclass(frozen=True)
class PaperColumn:
    """One column of a paper table: a test set and a metric (in percent).

    Attributes:
        key: Its key in the data file.
        label: The heading, as in the paper.
        test_set: The test set name of a run's ``eval/summary.json``.
        metric: ``"nme"`` or ``"failure_rate"``.
    """

    key: str
    label: str
    test_set: str
    metric: str = "nme"


@dataclass(frozen=True)
class PaperRow:
    """One row: a configuration (per column) and the published values.

    Attributes:
        label: The row's name in the paper.
        configs: Column key -> config file under ``configs/``; empty for other methods.
        values: Column key -> published value in percent; None where the paper has "-",
            NaN where it prints NaN.
    """

    label: str
    configs: dict[str, str]
    values: dict[str, float | None]


@dataclass(frozen=True)
class PaperTable:
    """One of Tables II-XI."""

    id: str
    title: str
    columns: list[PaperColumn]
    rows: list[PaperRow]


@dataclass(frozen=True)
class PaperEntry:
    """One published number: table, row, its config, column, value (percent)."""

    table: str
    row: str
    config: str | None
    column: str
    value: float | None


def _table(tid: str, raw: Mapping[str, Any]) -> PaperTable:
    columns = [PaperColumn(**c) for c in raw["columns"]]
    keys = [c.key for c in columns]
    rows = []
    for r in raw["rows"]:
        if set(r) != {"row", "config", "values"}:
            raise ValueError(f"paper_results.yaml table {tid}: a row has keys {sorted(r)}")
        config = r.get("config")
        configs = dict(config) if isinstance(config, Mapping) else dict.fromkeys(keys, config)
        values = {k: (None if v is None else float(v)) for k, v in r["values"].items()}
        if set(values) != set(keys) or not set(configs) <= set(keys):
            raise ValueError(f"paper_results.yaml table {tid} row {r['row']!r}: columns {keys}")
        rows.append(PaperRow(str(r["row"]), {k: v for k, v in configs.items() if v}, values))
    for c in columns:
        if c.metric not in METRICS:
            raise ValueError(f"table {tid}: metric {c.metric!r}; valid: {list(METRICS)}")
    return PaperTable(tid, str(raw["title"]), columns, rows)


@cache
def paper_tables() -> dict[str, PaperTable]:
    """Tables II-XI of the paper, from ``paper_results.yaml``, in the paper's order."""
    text = resources.files("sepbn.analysis").joinpath("paper_results.yaml").read_text("utf-8")
    return {str(tid): _table(str(tid), raw) for tid, raw in yaml.safe_load(text).items()}


def paper_entries() -> list[PaperEntry]:
    """Every published number, flat."""
    return [
        PaperEntry(t.id, r.label, r.configs.get(c.key), c.key, r.values[c.key])
        for t in paper_tables().values()
        for r in t.rows
        for c in t.columns
    ]


@dataclass(frozen=True)
class RunResult:
    """The evaluation of one run directory.

    Attributes:
        run_dir: The folder.
        name: The config's ``name``.
        seed: The config's ``seed``.
        key: The configuration it belongs to (see the module docstring).
        summary: ``"<stage>/<test set>" -> metrics`` (fractions, as written by training).
    """

    run_dir: Path
    name: str
    seed: int
    key: tuple[tuple[str, str], ...]
    summary: dict[str, dict[str, float]] = field(repr=False)

    def value(self, column: PaperColumn) -> float | None:
        """The run's number for ``column`` in percent, or None if it has no such test set."""
        stages = {k.split("/", 1)[0] for k in self.summary}
        finetuned = [s for s in stages if s.startswith("finetune_")]
        for key in [f"{s}/{column.test_set}" for s in sorted(finetuned)] + [
            f"stage1/{column.test_set}"
        ]:
            if key in self.summary:
                return 100.0 * float(self.summary[key][column.metric])
        return None


def _flatten(value: Any, prefix: str = "") -> Iterable[tuple[str, Any]]:
    if isinstance(value, Mapping):
        for k in sorted(value):
            yield from _flatten(value[k], f"{prefix}{k}.")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _flatten(v, f"{prefix}{i}.")
    else:
        yield prefix.rstrip("."), value


def configuration_key(config: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """What identifies a configuration: every config leaf except seed, name and where it ran."""
    ignored = (*RESUMABLE_CHANGES, *_NOT_THE_CONFIGURATION)
    return tuple(
        (path, repr(v))
        for path, v in _flatten(config)
        if not any(fnmatch.fnmatchcase(path, p) or path.startswith(p + ".") for p in ignored)
    )


def load_run(run_dir: str | Path) -> RunResult:
    """Read ``config.yaml`` and ``eval/summary.json`` of a run.

    Raises:
        ReportError: Either file is missing or unreadable.
    """
    root = Path(run_dir)
    config_path, summary_path = root / "config.yaml", root / "eval" / "summary.json"
    for path in (config_path, summary_path):
        if not path.is_file():
            raise ReportError(f"{root} is not a finished run: {path} is missing")
    try:
        # Through the config classes, so defaults added since the run are filled in.
        config = to_dict(config_from_dict(read_yaml_file(config_path)[0], str(config_path)))
        summary = json.loads(summary_path.read_text())
    except (ValueError, yaml.YAMLError) as exc:
        raise ReportError(f"{root}: {exc}") from exc
    return RunResult(root, config["name"], config["seed"], configuration_key(config), summary)


def find_runs(paths: Iterable[str | Path]) -> list[RunResult]:
    """Runs from run directories, or from folders of run directories (``runs/``)."""
    runs = []
    for p in map(Path, paths):
        if (p / "config.yaml").is_file() or not p.is_dir():
            runs.append(load_run(p))
        else:
            found = sorted(d for d in p.iterdir() if (d / "config.yaml").is_file())
            if not found:
                raise ReportError(f"{p} holds no run directory (no */config.yaml)")
            runs += [load_run(d) for d in found]
    return runs


@cache
def config_file_key(config_root: Path, relative: str) -> tuple[tuple[str, str], ...]:
    """The configuration of the file ``relative`` under ``config_root`` (``configs/``)."""
    return configuration_key(to_dict(load_config(config_root / relative)))


@dataclass
class Cell:
    """One table cell: the paper's value and the runs' values (percent)."""

    paper: float | None
    measured: list[float] = field(default_factory=list)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.measured) if self.measured else None

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.measured) if len(self.measured) > 1 else None

    @property
    def difference(self) -> float | None:
        if self.mean is None or self.paper is None or math.isnan(self.paper):
            return None
        return self.mean - self.paper


@dataclass
class TableReport:
    """A paper table with the runs that match its rows.

    Attributes:
        table: The paper's table.
        cells: Per row (in order), column key -> :class:`Cell`.
        runs: Run directories used per row.
    """

    table: PaperTable
    cells: list[dict[str, Cell]]
    runs: list[list[Path]]

    @property
    def has_runs(self) -> bool:
        return any(self.runs)


def build_report(
    table_ids: Sequence[str], runs: Sequence[RunResult], config_root: str | Path | None = None
) -> list[TableReport]:
    """The chosen tables with the runs placed in their rows.

    Raises:
        ReportError: An unknown table id.
    """
    tables = paper_tables()
    unknown = [t for t in table_ids if t not in tables]
    if unknown:
        raise ReportError(f"unknown table(s) {unknown}; valid: {list(tables)}")
    root = Path(config_root) if config_root is not None else DEFAULT_CONFIG_ROOT
    reports = []
    for tid in table_ids:
        table = tables[tid]
        cells, used = [], []
        for row in table.rows:
            row_cells, row_runs = {}, set()
            for col in table.columns:
                cell = Cell(row.values[col.key])
                config = row.configs.get(col.key)
                if config is not None and runs:
                    key = config_file_key(root, config)
                    for run in runs:
                        value = run.value(col) if run.key == key else None
                        if value is not None:
                            cell.measured.append(value)
                            row_runs.add(run.run_dir)
                row_cells[col.key] = cell
            cells.append(row_cells)
            used.append(sorted(row_runs))
        reports.append(TableReport(table, cells, used))
    return reports


def _num(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "–"
    if math.isnan(value):
        return "NaN"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def _measured(cell: Cell, pm: str = "±") -> str:
    if cell.mean is None:
        return ""
    if cell.std is None:
        return _num(cell.mean)
    return f"{cell.mean:.2f} {pm} {cell.std:.2f} (n={len(cell.measured)})"


def _config_text(row: PaperRow) -> str:
    configs = list(dict.fromkeys(row.configs.values()))
    return ", ".join(f"`{c}`" for c in configs) if configs else ""


def _markdown(report: TableReport, heading: bool = True) -> str:
    t = report.table
    head = ["row", "config"]
    for c in t.columns:
        head += [f"{c.label} paper", f"{c.label} measured", "Δ"]
    lines = [f"### Table {t.id} — {t.title}", ""] if heading else []
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row, cells in zip(t.rows, report.cells):
        out = [row.label, _config_text(row)]
        for c in t.columns:
            cell = cells[c.key]
            diff = _num(cell.difference, signed=True) if cell.mean is not None else ""
            out += [_num(cell.paper), _measured(cell), diff]
        lines.append("| " + " | ".join(out) + " |")
    return "\n".join(lines)


def _csv(reports: Sequence[TableReport]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)

    def fmt(v: float | None) -> str:
        return "" if v is None else ("nan" if math.isnan(v) else f"{v:.4f}")

    for report in reports:
        t = report.table
        for row, cells in zip(t.rows, report.cells):
            for c in t.columns:
                cell = cells[c.key]
                writer.writerow(
                    [
                        t.id,
                        row.label,
                        row.configs.get(c.key, ""),
                        c.key,
                        c.test_set,
                        c.metric,
                        fmt(cell.paper),
                        fmt(cell.mean),
                        fmt(cell.std),
                        len(cell.measured),
                        fmt(cell.difference),
                    ]
                )
    return buf.getvalue()


_LATEX_SPECIAL = re.compile(r"([&%$#_{}])")


def _tex(text: str) -> str:
    text = _LATEX_SPECIAL.sub(r"\\\1", text)
    return text.replace("τ", r"$\tau$").replace("→", r"$\to$").replace("²", r"$^2$")


def _latex(report: TableReport) -> str:
    t = report.table
    cols = "l" + "rrr" * len(t.columns)
    head = " & ".join(
        ["Method"] + [rf"\multicolumn{{3}}{{c}}{{{_tex(c.label)}}}" for c in t.columns]
    )
    sub = " & ".join([""] + ["paper & ours & $\\Delta$"] * len(t.columns))
    lines = [
        r"\begin{table}[t]",
        rf"\caption{{Table {t.id}: {_tex(t.title)}}}",
        rf"\begin{{tabular}}{{{cols}}}",
        r"\hline",
        head + r" \\",
        sub + r" \\",
        r"\hline",
    ]
    for row, cells in zip(t.rows, report.cells):
        out = [_tex(row.label)]
        for c in t.columns:
            cell = cells[c.key]
            diff = _num(cell.difference, signed=True) if cell.mean is not None else ""
            out += [_num(cell.paper).replace("–", "--"), _measured(cell, r"$\pm$"), diff]
        lines.append(" & ".join(out) + r" \\")
    lines += [r"\hline", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines)


def render(reports: Sequence[TableReport], fmt: str = "md") -> str:
    """The tables as Markdown, one CSV (long format: one line per cell) or LaTeX.

    Raises:
        ReportError: An unknown format.
    """
    if fmt == "md":
        return "\n\n".join(_markdown(r) for r in reports) + "\n"
    if fmt == "csv":
        return _csv(reports)
    if fmt == "latex":
        return "\n\n".join(_latex(r) for r in reports) + "\n"
    raise ReportError(f"unknown format {fmt!r}; valid: {list(FORMATS)}")


_MARKER = re.compile(r"^<!-- table (\w+) -->$", re.MULTILINE)


def render_document(template: str, runs: Sequence[RunResult] = (), config_root: Any = None) -> str:
    """A Markdown document: ``template`` with each ``<!-- table ID -->`` line replaced by that
    table (heading included), with ``runs`` in its measured columns.

    Raises:
        ReportError: A marker names an unknown table.
    """
    ids = _MARKER.findall(template)
    reports = {r.table.id: r for r in build_report(ids, runs, config_root)}
    return _MARKER.sub(lambda m: _markdown(reports[m.group(1)]), template)


@dataclass
class RunsRow:
    """One configuration on one evaluation, for :func:`runs_table`.

    Attributes:
        name: The configuration's ``name`` (the runs' names, joined, if they differ).
        evaluation: ``"<stage>/<test set>"``, a key of ``eval/summary.json``.
        runs: Its run directories (one per seed).
        values: Column -> the runs' values (as written: fractions for NME and failure rate),
            only from the runs that have that column.
    """

    name: str
    evaluation: str
    runs: list[Path]
    values: dict[str, list[float]]


def runs_table(runs: Sequence[RunResult], columns: Sequence[str]) -> list[RunsRow]:
    """The chosen ``eval/summary.json`` columns of ``runs``, seeds of a configuration together.

    Args:
        runs: Runs from :func:`find_runs`.
        columns: Keys of a summary entry, e.g. :data:`POSE_COLUMNS`.

    Returns:
        One row per configuration and evaluation, in the order the runs are given.

    Raises:
        ReportError: No columns, or a column that no run has (a typo), with the valid ones.
    """
    if not columns:
        raise ReportError("no columns chosen")
    known = {k for run in runs for entry in run.summary.values() for k in entry}
    unknown = [c for c in columns if c not in known]
    if unknown:
        raise ReportError(f"no run has column(s) {unknown}; the runs have: {sorted(known)}")
    rows: dict[tuple[Any, str], RunsRow] = {}
    for run in runs:
        for evaluation, entry in run.summary.items():
            row = rows.setdefault(
                (run.key, evaluation), RunsRow(run.name, evaluation, [], {c: [] for c in columns})
            )
            if run.name not in row.name.split(", "):
                row.name += f", {run.name}"
            row.runs.append(run.run_dir)
            for c in columns:
                if c in entry:
                    row.values[c].append(float(entry[c]))
    return list(rows.values())


def _column_kind(column: str) -> str:
    if column.startswith("count_") or column == "num_images":
        return "count"
    if column.startswith(("nme", "failure_rate")):
        return "percent"
    return "plain"


def _runs_cell(column: str, values: Sequence[float], pm: str = "±") -> tuple[str, float | None]:
    """The printed cell and its mean (percent for NME and failure rate)."""
    if not values:
        return "–", None
    kind = _column_kind(column)
    vals = [100.0 * v for v in values] if kind == "percent" else list(values)
    mean = statistics.fmean(vals)
    if kind == "count":
        text = f"{mean:.0f}" if len(set(vals)) == 1 else f"{mean:.1f}"
    elif kind == "percent":
        text = f"{mean:.2f}"
    else:
        text = f"{mean:.4g}"
    if len(vals) > 1 and len(set(vals)) > 1 and kind != "count":
        text += f" {pm} {statistics.stdev(vals):.2f} (n={len(vals)})"
    return text, mean


def _runs_heading(column: str) -> str:
    return f"{column} (%)" if _column_kind(column) == "percent" else column


def render_runs_table(rows: Sequence[RunsRow], columns: Sequence[str], fmt: str = "md") -> str:
    """:func:`runs_table` as Markdown, CSV (one line per cell) or LaTeX; NME and failure rate
    in percent, mean ± sample std over the seeds of a configuration, ``–`` where no run of a
    row has the column (e.g. runs evaluated before the column existed).

    Raises:
        ReportError: An unknown format.
    """
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["name", "evaluation", "column", "mean", "std", "num_runs"])
        for row in rows:
            for c in columns:
                vals = row.values[c]
                _, mean = _runs_cell(c, vals)
                scale = 100.0 if _column_kind(c) == "percent" else 1.0
                std = statistics.stdev(vals) * scale if len(vals) > 1 else None
                writer.writerow(
                    [
                        row.name,
                        row.evaluation,
                        c,
                        "" if mean is None else f"{mean:.4f}",
                        "" if std is None else f"{std:.4f}",
                        len(vals),
                    ]
                )
        return buf.getvalue()
    if fmt == "md":
        head = ["name", "evaluation", "runs", *(_runs_heading(c) for c in columns)]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for row in rows:
            cells = [_runs_cell(c, row.values[c])[0] for c in columns]
            lines.append(
                "| " + " | ".join([row.name, row.evaluation, str(len(row.runs)), *cells]) + " |"
            )
        return "\n".join(lines) + "\n"
    if fmt == "latex":
        head = [_tex(h) for h in ("name", "evaluation", *map(_runs_heading, columns))]
        lines = [
            rf"\begin{{tabular}}{{ll{'r' * len(columns)}}}",
            r"\hline",
            " & ".join(head) + r" \\",
            r"\hline",
        ]
        for row in rows:
            cells = [_runs_cell(c, row.values[c], r"$\pm$")[0].replace("–", "--") for c in columns]
            lines.append(" & ".join([_tex(row.name), _tex(row.evaluation), *cells]) + r" \\")
        lines += [r"\hline", r"\end{tabular}"]
        return "\n".join(lines) + "\n"
    raise ReportError(f"unknown format {fmt!r}; valid: {list(FORMATS)}")

"""Summary metrics and the tables written after an evaluation.

Holds :class:`LandmarkMetrics` (NME, failure rate, AUC), the per-image CSV, the
summary JSON, and WFLW's per-attribute table in the layout of the paper's Table IX.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from sepbn.metrics.ced import auc
from sepbn.metrics.nme import FAILURE_THRESHOLD, as_float64, check_errors, failure_rate

if TYPE_CHECKING:
    from sepbn.data.records import FaceRecord

# WFLW's six test subsets: FaceRecord.attributes key -> Table IX column header.
WFLW_ATTRIBUTES: dict[str, str] = {
    "pose": "pose",
    "expression": "expr.",
    "illumination": "illu.",
    "makeup": "mu.",
    "occlusion": "occu.",
    "blur": "blur",
}
# Table IX's column order: the full test set first, then the six subsets.
TABLE_IX_COLUMNS: dict[str, str] = {"test": "test", **WFLW_ATTRIBUTES}


@dataclass(frozen=True)
class LandmarkMetrics:
    """The summary numbers of one evaluation.

    Attributes:
        nme: Mean of the per-image NMEs, as a fraction of d (Eq. 8 without x100).
        failure_rate: Fraction of images with NME > ``threshold``.
        auc: Area under the CED up to ``threshold``, divided by it, in ``[0, 1]``.
        num_images: Number of images the numbers are over.
        threshold: The failure / AUC threshold as a fraction.
    """

    nme: float
    failure_rate: float
    auc: float
    num_images: int
    threshold: float = FAILURE_THRESHOLD

    @classmethod
    def from_errors(cls, nmes: Any, threshold: float = FAILURE_THRESHOLD) -> LandmarkMetrics:
        """Summarize per-image NMEs (fractions; numpy or torch, shape ``(N,)``)."""
        errors = check_errors(nmes)
        return cls(
            nme=float(errors.mean()),
            failure_rate=failure_rate(errors, threshold),
            auc=auc(errors, threshold),
            num_images=int(errors.size),
            threshold=float(threshold),
        )

    def format(self) -> str:
        """One line with NME and failure rate in percent, e.g. for a log."""
        t = f"{100 * self.threshold:g}%"
        return (
            f"NME {100 * self.nme:.2f}% | FR@{t} {100 * self.failure_rate:.2f}% | "
            f"AUC@{t} {self.auc:.4f} | {self.num_images} images"
        )

    def to_dict(self) -> dict[str, float | int]:
        """Plain values (fractions) for JSON."""
        return asdict(self)


def write_per_image_csv(
    path: str | Path,
    indices: Any,
    nmes: Any,
    sources: Sequence[str] | None = None,
) -> Path:
    """Write one row per image: ``index, source, nme`` (nme as a fraction of d).

    Args:
        path: Output CSV file; missing parent folders are created.
        indices: ``(N,)`` record indices.
        nmes: ``(N,)`` per-image NMEs.
        sources: ``N`` record sources (``"file:line"``); empty strings when ``None``.

    Returns:
        The path written.
    """
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    errors = as_float64(nmes, "nmes").reshape(-1)
    src = [""] * idx.size if sources is None else list(sources)
    if not (idx.size == errors.size == len(src)):
        raise ValueError(
            f"indices ({idx.size}), nmes ({errors.size}) and sources ({len(src)}) "
            "must have the same length"
        )
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "source", "nme"])
        # repr() round-trips the float exactly.
        writer.writerows(zip(idx.tolist(), src, map(repr, errors.tolist())))
    return out


def write_summary_json(path: str | Path, metrics: LandmarkMetrics, **extra: Any) -> Path:
    """Write the metrics (fractions) plus any ``extra`` JSON-serializable fields."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**extra, "metrics": metrics.to_dict()}, indent=2) + "\n")
    return out


class PerImageErrors(Protocol):
    """What :func:`attribute_table` needs from an evaluation result (``EvalResult``)."""

    @property
    def indices(self) -> np.ndarray: ...
    @property
    def nmes(self) -> np.ndarray: ...


def attribute_table(
    result: PerImageErrors,
    records: Sequence[FaceRecord],
    threshold: float = FAILURE_THRESHOLD,
) -> dict[str, LandmarkMetrics]:
    """Metrics on the whole test set and on WFLW's six attribute subsets (Table IX).

    An image belongs to a subset when its record's ``attributes[name]`` is true.

    Args:
        result: Per-image errors with the record index of each image, e.g. an
            ``EvalResult`` from :func:`sepbn.engine.evaluator.evaluate`.
        records: The dataset's records, indexed by ``result.indices``.
        threshold: Failure / AUC threshold as a fraction.

    Returns:
        ``"test"`` plus each of ``pose, expression, illumination, makeup, occlusion,
        blur`` that has at least one image, mapped to its metrics.

    Raises:
        ValueError: If an index is out of range or no record carries any WFLW attribute.
    """
    idx = np.asarray(result.indices, dtype=np.int64).reshape(-1)
    errors = check_errors(result.nmes)
    if idx.size != errors.size:
        raise ValueError(f"result has {idx.size} indices but {errors.size} errors")
    bad = np.flatnonzero((idx < 0) | (idx >= len(records)))
    if bad.size:
        raise ValueError(f"record index {idx[bad[0]]} out of range for {len(records)} records")
    names = list(WFLW_ATTRIBUTES)
    attrs = [records[i].attributes for i in idx.tolist()]
    if not any(a in rec for rec in attrs for a in names):
        raise ValueError(
            f"no evaluated record carries any WFLW attribute {names}; "
            "attribute_table needs WFLW test records"
        )
    flags = np.array([[bool(rec.get(a, False)) for a in names] for rec in attrs], dtype=bool)
    flags = flags.reshape(idx.size, len(names))  # (N, 6)
    table = {"test": LandmarkMetrics.from_errors(errors, threshold)}
    for j, name in enumerate(names):
        if flags[:, j].any():
            table[name] = LandmarkMetrics.from_errors(errors[flags[:, j]], threshold)
    return table


def format_attribute_table(rows: Mapping[str, Mapping[str, LandmarkMetrics]]) -> str:
    """Plain-text NME table (percent) in the layout of the paper's Table IX.

    Args:
        rows: Model name -> the output of :func:`attribute_table`. A subset
            missing from a row prints as ``-``.

    Returns:
        The table: a header ``test pose expr. illu. mu. occu. blur`` and one line per model.
    """
    if not rows:
        raise ValueError("format_attribute_table needs at least one row")
    first = max(len("Method"), *(len(name) for name in rows))
    width = 7
    header = "Method".ljust(first) + "".join(h.rjust(width) for h in TABLE_IX_COLUMNS.values())
    lines = [header]
    for name, table in rows.items():
        cells = []
        for key in TABLE_IX_COLUMNS:
            m = table.get(key)
            cells.append("-" if m is None else f"{100 * m.nme:.2f}")
        lines.append(name.ljust(first) + "".join(c.rjust(width) for c in cells))
    return "\n".join(lines)

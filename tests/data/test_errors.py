"""DatasetError categories, the skip report's summary, and the list of skipped records."""

from __future__ import annotations

import csv
import pickle
from pathlib import Path

from sepbn.data.errors import DatasetError, SkipReport, split_source, write_skip_csv


def test_summary_counts_by_category_not_by_the_values_in_the_reason() -> None:
    report = SkipReport()
    for i, (w, h) in enumerate([(3, 4), (0, 9), (2, 2)], start=1):
        reason = f"degenerate box (width {w}, height {h})"
        report.handle(DatasetError(f"list.txt:{i}", reason, "degenerate box"), "skip")
    report.handle(DatasetError("list.txt:7 (a.jpg)", "image file is empty"), "skip")
    assert report.counts() == {"degenerate box": 3, "image file is empty": 1}
    assert report.summary().splitlines() == [
        "skipped 4 record(s):",
        "  3 x degenerate box (first: list.txt:1: degenerate box (width 3, height 4))",
        "  1 x image file is empty (first: list.txt:7 (a.jpg))",
    ]
    assert report.summary_counts() == {"total": 4, "by_category": report.counts()}


def test_split_source_into_file_line_and_image() -> None:
    assert split_source("/d/list.txt:12 (/d/img.jpg)") == {
        "file": "/d/list.txt",
        "line": "12",
        "image": "/d/img.jpg",
    }
    assert split_source("ann.json[annotation 3]") == {
        "file": "ann.json",
        "line": "annotation 3",
        "image": "",
    }
    assert split_source("/d/face (1).pts") == {"file": "/d/face (1).pts", "line": "", "image": ""}


def test_write_skip_csv_lists_every_entry(tmp_path: Path) -> None:
    a = SkipReport([DatasetError("l.txt:2", "token 3 'x' is not a number", "not a number")])
    b = SkipReport([DatasetError("f/x.png", "image without a .pts file next to it")])
    path = write_skip_csv(tmp_path / "out" / "skipped.csv", {"train/a": a, "test/b": b})
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows == [
        {
            "dataset": "train/a",
            "file": "l.txt",
            "line": "2",
            "image": "",
            "category": "not a number",
            "reason": "token 3 'x' is not a number",
        },
        {
            "dataset": "test/b",
            "file": "f/x.png",
            "line": "",
            "image": "",
            "category": "image without a .pts file next to it",
            "reason": "image without a .pts file next to it",
        },
    ]
    assert SkipReport.from_json(a.to_json()).rows() == a.rows()


def test_dataset_error_keeps_its_fields_through_pickling() -> None:
    e = pickle.loads(pickle.dumps(DatasetError("l.txt:2", "box 3x4 too small", "box too small")))
    assert (e.source, e.reason, e.category, str(e)) == (
        "l.txt:2",
        "box 3x4 too small",
        "box too small",
        "l.txt:2: box 3x4 too small",
    )

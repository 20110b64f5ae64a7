"""read_records: one entry point for every format, with clear errors for bad kinds/options."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest

from sepbn.data.errors import SkipReport
from sepbn.data.formats import READERS, DatasetWarning, read_records, read_wider5

LABEL = "# a.jpg\n100 120 90 100 120 150 0.0 160 150 0.0 140 170 0.0 125 190 0.0 155 190 0.0 0.3\n"


def test_all_kinds_registered_with_uniform_signatures() -> None:
    assert set(READERS) >= {
        "wflw",
        "wflw_attr",
        "300w",
        "pts_folder",
        "cofw",
        "cofw68",
        "aflw",
        "aflw2000",
        "wider5",
        "coco",
    }
    for kind, reader in READERS.items():
        params = inspect.signature(reader).parameters
        assert list(params)[:2] == ["path", "split"], kind
        assert params["on_error"].default == "raise", kind
        assert params["report"].kind is inspect.Parameter.KEYWORD_ONLY, kind


def test_unknown_kind_and_option_list_the_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown dataset kind 'ibug'; valid: \['300w', 'aflw'"):
        read_records("ibug", tmp_path)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['imageroot'\] .*'image_root'"):
        read_records("wider5", tmp_path, imageroot=tmp_path)


def test_dispatch_passes_split_options_and_report(tmp_path: Path) -> None:
    (tmp_path / "train" / "images").mkdir(parents=True)
    (tmp_path / "train" / "label.txt").write_text(LABEL + LABEL.replace("a.jpg", "b.jpg"))
    (tmp_path / "train" / "images" / "a.jpg").write_bytes(b"jpg")
    direct = read_wider5(tmp_path / "train" / "label.txt", check_images=False)
    via = read_records("wider5", tmp_path, "train", check_images=False)
    assert len(via) == len(direct) == 2
    np.testing.assert_array_equal(via[1].landmarks, direct[1].landmarks)
    report = SkipReport()
    with pytest.warns(DatasetWarning, match="image file not found"):
        kept = read_records("wider5", tmp_path, "train", on_error="skip", report=report)
    assert len(kept) == 1 and len(report) == 1
    with pytest.raises(
        ValueError, match=r"on_error must be one of \['raise', 'skip'\], got 'ignore'"
    ):
        read_records("wider5", tmp_path, "train", on_error="ignore")

"""Property-based tests: every reader, fed mutated files, keeps its one-line promise.

Each reader gets a small valid dataset written into a fresh folder, then one mutation:
a field or token replaced by a value of the wrong type or range, a MATLAB variable of the
wrong class or shape, or the file's bytes cut short or overwritten. Whatever the mutation:

* with ``on_error="raise"`` the reader returns usable records or raises a
  :class:`DatasetError` whose message is one line and names the mutated file;
* with ``on_error="skip"`` a mutation of one record never raises: the record is skipped and
  reported (nothing is lost silently); a mutation of the whole file (bytes cut, a shared
  array of the wrong type) may leave no readable records, and then raises the same kind of
  one-line :class:`DatasetError`;
* nothing else escapes, not even a numpy ``RuntimeWarning``.

40 examples per reader keep the file fast; ``SEPBN_FUZZ_EXAMPLES=2000`` runs a longer hunt.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.io
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import aflw_points_and_boxes
from sepbn.data.errors import DatasetError, SkipReport
from sepbn.data.formats import DatasetWarning, read_records
from sepbn.data.records import FaceRecord
from sepbn.data.validation import validate_record

SETTINGS = settings(
    max_examples=int(os.environ.get("SEPBN_FUZZ_EXAMPLES", "40")),
    deadline=None,
    database=None,  # no .hypothesis folder in the checkout; failures print their example
    # Each example writes into its own fresh folder under tmp_path.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _rng() -> np.random.Generator:
    """The same valid files in every example, so that Hypothesis replays them exactly."""
    return np.random.default_rng(22)


# Tokens a hostile or careless file holds where a number or a name belongs.
NASTY_TOKENS = st.one_of(
    st.sampled_from(
        [
            "abc", "nan", "inf", "-inf", "1e400", "1e300", "-1e300", "0", "-1", "2", "1.5",
            "0x10", "1_000", "\u0661\u0662", "\x00", "\ufeff", "9" * 5000, "#", "{", "}",
            "version:", "n_points: 3", "a b", "a\nb",
        ]
    ),
    st.text(max_size=8),
)  # fmt: skip
JSON_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.sampled_from([10**400, -1, 0, 1e300, "left", "abc", "", "a\x00b", [], {}]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=6,
)
NUMBERS = st.sampled_from([np.nan, np.inf, -np.inf, 1e300, -1e300, 0.0, -5.0, 1e6])


def _png() -> bytes:
    return b"not decoded by the readers"  # they check only that the file is there and whole


def _folder(tmp_path: Path) -> Path:
    return Path(tempfile.mkdtemp(dir=tmp_path))


def _check_error(error: DatasetError, names: tuple[str, ...]) -> None:
    message = str(error)
    assert "\n" not in message, message
    assert any(name in message for name in names), message


def _check_records(records: list[FaceRecord]) -> None:
    for record in records:
        assert isinstance(record, FaceRecord)
        validate_record(record)


def _holds(
    read: Callable[..., list[FaceRecord]],
    mutated: Path,
    *,
    record_level: bool,
    originals: int,
    also: tuple[str, ...] = (),
) -> None:
    """The contract of the module docstring for one mutated dataset, read by
    ``read(on_error=..., report=...)``.

    ``also``: other names an error may give instead of the mutated file's, where a record
    joins several files (its source names the one it is kept under).
    """
    names = (mutated.name, *also)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        warnings.simplefilter("ignore", DatasetWarning)
        try:
            _check_records(read(on_error="raise", report=SkipReport()))
        except DatasetError as e:
            _check_error(e, names)
        report = SkipReport()
        try:
            records = read(on_error="skip", report=report)
        except DatasetError as e:
            assert not record_level, f"one bad record ended the reading under skip: {e}"
            _check_error(e, names)
            return
    _check_records(records)
    for e in report.skipped:
        assert "\n" not in str(e), str(e)
    if record_level:  # lines cut off a file's end leave no trace to report
        assert len(records) + len(report) >= originals, "a record was dropped without a report"


def _mutate_tokens(text: str, data: st.DataObject) -> str:
    lines = text.splitlines()
    spots = [(i, j) for i, line in enumerate(lines) for j in range(len(line.split()))]
    i, j = data.draw(st.sampled_from(spots))
    tokens = lines[i].split()
    tokens[j] = data.draw(NASTY_TOKENS)
    lines[i] = " ".join(tokens)
    return "\n".join(lines) + "\n"


def _mutate_bytes(raw: bytes, data: st.DataObject) -> bytes:
    where = data.draw(st.integers(0, len(raw)))
    how = data.draw(st.sampled_from(["cut", "overwrite", "insert"]))
    if how == "cut":
        return raw[:where]
    chunk = data.draw(st.binary(min_size=1, max_size=16))
    rest = raw[where + len(chunk) :] if how == "overwrite" else raw[where:]
    return raw[:where] + chunk + rest


def _mutated_text(path: Path, text: str, data: st.DataObject) -> bool:
    """Write ``text`` to ``path`` with one mutation; True when it touches one record only."""
    if data.draw(st.booleans()):
        path.write_text(_mutate_tokens(text, data), encoding="utf-8")
        return True
    path.write_bytes(_mutate_bytes(text.encode(), data))
    return False


# --------------------------------------------------------------------------- text formats


def _points(rng: np.random.Generator, n: int, low: float = 20.0, high: float = 80.0) -> np.ndarray:
    return low + (high - low) * rng.random((n, 2))


def _images(root: Path, names: list[str]) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(_png())


@SETTINGS
@given(data=st.data())
def test_wflw_list(tmp_path: Path, data: st.DataObject) -> None:
    rng = _rng()
    root = _folder(tmp_path)
    names = [f"a/{k}.jpg" for k in range(3)]
    _images(root / "images", names)
    lines = []
    for name in names:
        pts = _points(rng, 98)
        box = [*(pts.min(0) - 2), *(pts.max(0) + 2)]
        values = [*pts.ravel(), *box, 0, 1, 0, 0, 1, 0]
        lines.append(" ".join(f"{v:g}" for v in values) + f" {name}")
    path = root / "list_98pt_rect_attr_test.txt"
    record_level = _mutated_text(path, "\n".join(lines), data)

    read = partial(read_records, "wflw", path, image_root=root / "images")

    _holds(read, path, record_level=record_level, originals=3)


@SETTINGS
@given(data=st.data(), headed=st.booleans())
def test_pts_folder(tmp_path: Path, data: st.DataObject, headed: bool) -> None:
    rng = _rng()
    root = _folder(tmp_path)
    files = []
    for k in range(3):
        body = "\n".join(f"{x:.3f} {y:.3f}" for x, y in _points(rng, 68))
        text = f"version: 1\nn_points: 68\n{{\n{body}\n}}" if headed else body
        (root / f"{k}.pts").write_text(text + "\n")
        (root / f"{k}.jpg").write_bytes(_png())
        files.append(root / f"{k}.pts")
    mutated = data.draw(st.sampled_from(files))
    _mutated_text(mutated, mutated.read_text(), data)

    read = partial(read_records, "pts_folder", root)

    # Each .pts is a record of its own, whatever happens to its bytes.
    _holds(read, mutated, record_level=True, originals=3)


@SETTINGS
@given(data=st.data())
def test_wider5_label(tmp_path: Path, data: st.DataObject) -> None:
    rng = _rng()
    root = _folder(tmp_path)
    _images(root / "images", ["e/a.jpg", "e/b.jpg"])
    lines = []
    for name in ("e/a.jpg", "e/b.jpg"):
        lines.append(f"# {name}")
        for _ in range(2):
            marks = _points(rng, 5, 110, 180)
            tokens = [100, 100, 100, 100, *[c for x, y in marks for c in (x, y, 0.0)], 0.9]
            lines.append(" ".join(f"{v:g}" for v in tokens))
    path = root / "label.txt"
    record_level = _mutated_text(path, "\n".join(lines), data)

    read = partial(read_records, "wider5", path)

    # Faces whose box becomes 80 px or less are a selection (logged), not an error.
    _holds(read, path, record_level=record_level, originals=0)


@SETTINGS
@given(data=st.data(), attributes=st.booleans())
def test_mtfl_list(tmp_path: Path, data: st.DataObject, attributes: bool) -> None:
    rng = _rng()
    root = _folder(tmp_path)
    names = [f"lfw_5590/{k}.jpg" for k in range(3)]
    _images(root, names)
    lines = []
    for name in names:
        pts = _points(rng, 5, 25, 55)
        extra = " 1 2 2 3" if attributes else ""
        lines.append(f"{name} " + " ".join(f"{v:g}" for v in [*pts[:, 0], *pts[:, 1]]) + extra)
    path = root / "training.txt"
    record_level = _mutated_text(path, "\n".join(lines), data)

    read = partial(read_records, "mtfl", path)

    _holds(read, path, record_level=record_level, originals=3)


# --------------------------------------------------------------------------- COCO JSON


def _coco() -> dict[str, Any]:
    rng = _rng()
    images = [{"id": k, "file_name": f"{k}.png", "height": 100, "width": 100} for k in (1, 2)]
    anns = []
    for k, image_id in enumerate((1, 2, 2), start=1):
        pts = _points(rng, 5)
        kps = [c for x, y in pts for c in (float(x), float(y), 2)]
        box = [*(pts.min(0) - 3), *(pts.max(0) - pts.min(0) + 6)]
        anns.append(
            {
                "id": k,
                "image_id": image_id,
                "keypoints": kps,
                "bbox": [float(v) for v in box],
                "attributes": {"pose": True},
                "domain": 0,
            }
        )
    return {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "face"}]}


def _coco_spots(data: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Paths into the JSON tree: (key, index, field[, element])."""
    spots: list[tuple[Any, ...]] = [("images",), ("annotations",), ("categories",)]
    for i, img in enumerate(data["images"]):
        spots.append(("images", i))
        spots += [("images", i, k) for k in img]
    for i, ann in enumerate(data["annotations"]):
        spots.append(("annotations", i))
        spots += [("annotations", i, k) for k in ann]
        spots += [("annotations", i, "keypoints", e) for e in (0, 1, 2, 14)]
        spots += [("annotations", i, "bbox", e) for e in (0, 3)]
    return spots


@SETTINGS
@given(data=st.data())
def test_coco_json(tmp_path: Path, data: st.DataObject) -> None:
    root = _folder(tmp_path)
    _images(root, ["1.png", "2.png"])
    coco = _coco()
    path = root / "faces.json"
    if data.draw(st.booleans()):
        spot = data.draw(st.sampled_from(_coco_spots(coco)))
        parent: Any = coco
        for key in spot[:-1]:
            parent = parent[key]
        if data.draw(st.booleans()) and isinstance(parent, dict):
            del parent[spot[-1]]
        else:
            parent[spot[-1]] = data.draw(JSON_VALUES)
        path.write_text(json.dumps(coco))
        record_level = len(spot) > 1  # inside one image entry or annotation
    else:
        path.write_bytes(_mutate_bytes(json.dumps(coco, indent=1).encode(), data))
        record_level = False

    # The protocol is given: inferring it from point counts is a whole-file question.
    read = partial(read_records, "coco", path, protocol="wider5")

    _holds(read, path, record_level=record_level, originals=3)


# --------------------------------------------------------------------------- MATLAB files


def _wrong_variable(original: np.ndarray) -> st.SearchStrategy[Any]:
    """A MATLAB variable of the wrong class, shape or values in place of ``original``."""
    a = np.asarray(original, dtype=np.float64)
    cell = np.empty((2, 1), dtype=object)
    cell[0, 0], cell[1, 0] = "x", np.ones(3)
    return st.sampled_from(
        [
            "abc",
            np.array(["ab", "cd"]),
            cell,
            {"field": np.ones(2)},
            a.astype(np.complex128) + 1j,
            a.astype(bool),
            a.astype(np.int8),
            np.zeros((0, 0)),
            a.T,
            a.reshape(-1),
            a[:-1] if len(a) > 1 else np.ones((3, 3)),
            np.full_like(a, np.nan),
            a * 1e300,
            -a,
        ]
    )


def _mutate_element(array: np.ndarray, data: st.DataObject) -> np.ndarray:
    out = np.array(array, dtype=np.float64)
    index = tuple(data.draw(st.integers(0, n - 1)) for n in out.shape)
    out[index] = data.draw(NUMBERS)
    return out


def _mutate_mat(
    variables: dict[str, Any], data: st.DataObject, record_keys: tuple[str, ...] = ()
) -> tuple[dict[str, Any], bool]:
    """One variable replaced, or one element changed; True when only one record is hit.

    ``record_keys``: variables whose rows are records (an element change hits one record).
    """
    key = data.draw(st.sampled_from(sorted(variables)))
    out = dict(variables)
    value = variables[key]
    if isinstance(value, np.ndarray) and value.dtype != object and data.draw(st.booleans()):
        out[key] = _mutate_element(value, data)
        return out, key in record_keys
    out[key] = data.draw(_wrong_variable(value if value.dtype != object else np.ones((2, 2))))
    return out, False


def _cofw_part(n: int = 3) -> dict[str, Any]:
    rng = _rng()
    cell = np.empty((n, 1), dtype=object)
    phis, boxes = [], []
    for i in range(n):
        cell[i, 0] = rng.integers(0, 256, (60, 50, 3), dtype=np.uint8)
        xy = 10.0 + 30.0 * rng.random((2, 29))
        phis.append(np.concatenate([xy[0], xy[1], (rng.random(29) < 0.3).astype(float)]))
        boxes.append([8.0, 9.0, 35.0, 34.0])
    return {"IsT": cell, "phisT": np.array(phis), "bboxesT": np.array(boxes)}


@SETTINGS
@given(data=st.data())
def test_cofw_mat(tmp_path: Path, data: st.DataObject) -> None:
    path = _folder(tmp_path) / "COFW_test_color.mat"
    variables = _cofw_part()
    choice = data.draw(st.sampled_from(["variable", "image", "bytes"]))
    record_level = False
    if choice == "variable":
        variables, record_level = _mutate_mat(variables, data, record_keys=("phisT", "bboxesT"))
    elif choice == "image":  # one cell element of the wrong class or shape
        cell = variables["IsT"].copy()
        cell[1, 0] = data.draw(_wrong_variable(np.ones((60, 50))))
        variables["IsT"] = cell
        record_level = True
    scipy.io.savemat(path, variables)
    if choice == "bytes":
        path.write_bytes(_mutate_bytes(path.read_bytes(), data))

    read = partial(read_records, "cofw", path)

    _holds(read, path, record_level=record_level, originals=3)


@SETTINGS
@given(data=st.data())
def test_cofw68_folder(tmp_path: Path, data: st.DataObject) -> None:
    rng = _rng()
    root = _folder(tmp_path)
    (root / "test_annotations").mkdir()
    files = {}
    for i in (1, 2, 3):
        points = {
            "Points": _points(rng, 68, 10, 40),
            "Occ": (rng.random((1, 68)) < 0.2).astype(float),
        }
        files[root / "test_annotations" / f"{i}_points.mat"] = points
    files[root / "cofw68_test_bboxes.mat"] = {"bboxes": np.tile([8.0, 8.0, 35.0, 35.0], (3, 1))}
    mutated = data.draw(st.sampled_from(sorted(files)))
    files[mutated], record_level = _mutate_mat(files[mutated], data, record_keys=("bboxes",))
    if mutated.name != "cofw68_test_bboxes.mat":
        record_level = True  # one file per face
    for path, variables in files.items():
        scipy.io.savemat(path, variables)
    if data.draw(st.booleans()):
        mutated.write_bytes(_mutate_bytes(mutated.read_bytes(), data))
        record_level = mutated.name != "cofw68_test_bboxes.mat"

    read = partial(read_records, "cofw68", root)

    # A box that does not fit its points is reported under the points file.
    _holds(read, mutated, record_level=record_level, originals=3, also=("_points.mat",))


def _aflw_info(n: int = 4) -> dict[str, Any]:
    data, bbox = aflw_points_and_boxes(_rng(), n)
    names = np.empty((n, 1), dtype=object)
    for k in range(n):
        names[k, 0] = f"img{k}.jpg"
    ra = np.array([[3.0, 1.0, 4.0, 2.0]])
    return {"bbox": bbox, "data": data, "mask_new": np.ones((n, 19)), "ra": ra, "nameList": names}


@SETTINGS
@given(data=st.data())
def test_aflw_info_mat(tmp_path: Path, data: st.DataObject) -> None:
    root = _folder(tmp_path)
    _images(root, [f"img{k}.jpg" for k in range(4)])
    path = root / "AFLWinfo_release.mat"
    variables = _aflw_info()
    choice = data.draw(st.sampled_from(["variable", "name", "bytes"]))
    record_level = False
    if choice == "variable":
        variables, record_level = _mutate_mat(variables, data, record_keys=("bbox", "data"))
    elif choice == "name":  # one file name of the wrong class
        names = variables["nameList"].copy()
        names[data.draw(st.integers(0, 3)), 0] = data.draw(_wrong_variable(np.ones((2, 2))))
        variables["nameList"] = names
        record_level = True
    scipy.io.savemat(path, variables)
    if choice == "bytes":
        path.write_bytes(_mutate_bytes(path.read_bytes(), data))

    read = partial(read_records, "aflw", path, "test", num_train=2, image_root=root)

    _holds(read, path, record_level=record_level, originals=2)


@SETTINGS
@given(data=st.data())
def test_aflw2000_folder(tmp_path: Path, data: st.DataObject) -> None:
    rng = _rng()
    root = _folder(tmp_path)
    files = {}
    for k in range(3):
        pt2d = _points(rng, 21, 50, 150).T.copy()  # (2, 21), 1-based pixels
        files[root / f"image{k:05d}.mat"] = {"pt2d": pt2d}
        (root / f"image{k:05d}.jpg").write_bytes(_png())
    mutated = data.draw(st.sampled_from(sorted(files)))
    files[mutated], _ = _mutate_mat(files[mutated], data)
    for path, variables in files.items():
        scipy.io.savemat(path, variables)
    if data.draw(st.booleans()):
        mutated.write_bytes(_mutate_bytes(mutated.read_bytes(), data))

    read = partial(read_records, "aflw2000", root)

    _holds(read, mutated, record_level=True, originals=3)


def test_the_contract_catches_a_traceback(tmp_path: Path) -> None:
    """The checker itself: an exception other than DatasetError fails it."""

    def read(on_error: str, report: SkipReport) -> list[FaceRecord]:
        raise TypeError("int() argument must be a string")

    with pytest.raises(TypeError):
        _holds(read, tmp_path / "x.json", record_level=True, originals=0)

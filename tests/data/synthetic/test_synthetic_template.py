"""The 3-D template: 300-W semantics, and closeness to real near-frontal annotations."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from sepbn.data.protocols import PROTOCOLS


def test_template_has_300w_semantics_on_a_frontal_face(neutral_frontal: Callable) -> None:
    lm = neutral_frontal("300w")
    x, y = lm[:, 0], lm[:, 1]
    assert x[36] < x[39] < x[42] < x[45]  # eye corners, left to right
    assert x[48] < x[51] < x[54] and x[31] < x[33] < x[35]
    assert (np.diff(x[0:9]) > 0).all() and (np.diff(x[8:17]) > 0).all()
    assert y[8] == y.max() and x[0] == x.min() and x[16] == x.max()
    assert y[17:27].max() < y[36:48].min()  # brows above the eyes
    assert y[36:48].max() < y[30] < y[33] < y[51] < y[62] < y[57]  # eyes, nose, mouth
    assert (y[[37, 38]] < y[[41, 40]]).all() and (y[[43, 44]] < y[[47, 46]]).all()
    assert (np.diff(y[27:31]) > 0).all()  # the ridge runs down to the tip
    # mirror symmetry under the 300-W flip permutation: the neutral face is symmetric
    np.testing.assert_allclose(PROTOCOLS["300w"].flip(lm, 160), lm, atol=1e-6)


def _read_300w_crops(root: Path) -> np.ndarray:
    shapes = []
    for f in sorted((root / "300W_train_crops").glob("*/trainset/*.pts"))[:600]:
        lines = f.read_text().splitlines()
        shapes.append(np.array([ln.split() for ln in lines[3:71]], dtype=np.float64) - 1.0)
    return np.stack(shapes)


def _frontal_mean(
    shapes: np.ndarray,
    ref: np.ndarray,
    eyes: tuple[int, int],
    nose: int,
    similarity: Callable,
) -> np.ndarray:
    a, b = eyes
    iod = np.linalg.norm(shapes[:, b] - shapes[:, a], axis=1)
    axis = (shapes[:, b] - shapes[:, a]) / iod[:, None]
    offset = ((shapes[:, nose] - 0.5 * (shapes[:, a] + shapes[:, b])) * axis).sum(1) / iod
    frontal = shapes[np.abs(offset) < 0.04]
    assert len(frontal) > 50
    return np.mean([similarity(s, ref)(s) for s in frontal], axis=0)


@pytest.mark.realdata
def test_template_matches_real_annotations(
    data_root: Path, neutral_frontal: Callable, similarity: Callable
) -> None:
    """The neutral frontal face is close to the mean of real near-frontal annotations."""
    ref = neutral_frontal("300w")
    mean = _frontal_mean(_read_300w_crops(data_root), ref, (36, 45), 30, similarity)
    err = np.linalg.norm(similarity(ref, mean)(ref) - mean, axis=1)
    nme = err / np.linalg.norm(mean[36] - mean[45])
    assert nme.mean() < 0.025 and nme.max() < 0.06
    # the measure has the power to catch a wrong point order: left/right swapped labels
    swapped = ref[list(PROTOCOLS["300w"].flip_perm)]
    bad = np.linalg.norm(similarity(swapped, mean)(swapped) - mean, axis=1)
    assert bad.mean() > 4.0 * err.mean()

    lists = data_root / "WFLW" / "WFLW_annotations" / "list_98pt_test"
    rows = []
    for name in ("blur", "makeup"):
        for line in (lists / f"list_98pt_test_{name}.txt").read_text().splitlines():
            rows.append(np.array(line.split()[:196], dtype=np.float64).reshape(98, 2))
    ref98 = neutral_frontal("wflw")
    mean98 = _frontal_mean(np.stack(rows), ref98, (60, 72), 54, similarity)
    err98 = np.linalg.norm(similarity(ref98, mean98)(ref98) - mean98, axis=1)
    assert (err98 / np.linalg.norm(mean98[60] - mean98[72])).mean() < 0.04

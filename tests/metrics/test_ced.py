"""CED curve, AUC (Simpson) and the CED plot."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from sepbn.metrics import auc, ced_curve, failure_rate, plot_ced

ERRORS = [0.015, 0.045, 0.2, 0.065]


def test_ced_curve_hand_computed() -> None:
    x, y = ced_curve(ERRORS, threshold=0.1, num=11)
    np.testing.assert_allclose(x, np.arange(11) * 0.01, atol=1e-15)
    # Fraction of the 4 errors <= x at x = 0, 0.01, ..., 0.1.
    expected = [0, 0, 1, 1, 1, 2, 2, 3, 3, 3, 3]
    np.testing.assert_array_equal(y, np.array(expected) / 4)


def test_ced_counts_error_equal_to_x() -> None:
    _, y = ced_curve([0.0, 0.1], threshold=0.1, num=2)
    np.testing.assert_array_equal(y, [0.5, 1.0])


def test_auc_simpson_hand_integrated() -> None:
    # Grid 0, 0.05, 0.1 with CED 0, 0.5, 0.5: Simpson gives
    # h / 3 * (y0 + 4 y1 + y2) = 0.05 / 3 * 2.5, divided by the threshold 0.1.
    assert auc([0.02, 0.2], threshold=0.1, num=3) == pytest.approx(0.05 / 3 * 2.5 / 0.1)


def test_auc_close_to_exact_area_of_step_curve() -> None:
    # The CED is a step function: the exact area / threshold is mean(1 - e / 0.1)
    # over errors below it = (0.85 + 0.55 + 0 + 0.35) / 4 = 0.4375.
    assert auc(ERRORS) == pytest.approx(0.4375, abs=7e-4)
    rng = np.random.default_rng(3)
    errors = rng.gamma(2.0, 0.025, 500)
    exact = np.mean(np.clip(1 - errors / 0.1, 0, 1))
    assert auc(errors) == pytest.approx(exact, abs=7e-4)
    assert auc(torch.from_numpy(errors)) == auc(errors)


def test_auc_limits() -> None:
    assert auc(np.zeros(10)) == pytest.approx(1.0, abs=1e-12)
    assert auc([0.11, 0.5, 3.0]) == 0.0
    assert auc([0.0, 0.5]) == pytest.approx(0.5, abs=1e-12)


def test_ced_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="num must be >= 2"):
        ced_curve([0.1], num=1)
    with pytest.raises(ValueError, match="1-D"):
        ced_curve(np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"image 0 has -0\.1"):
        auc([-0.1])


def test_plot_ced_writes_labelled_png(tmp_path, monkeypatch) -> None:
    figures: list[Figure] = []
    save = Figure.savefig

    def capture(self: Figure, *args, **kwargs):
        figures.append(self)
        return save(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", capture)
    curves = {"baseline": ERRORS, "sepbn": np.array([0.01, 0.02, 0.03, 0.12])}
    path = plot_ced(curves, tmp_path / "sub" / "ced.png", title="WFLW test")
    assert path == tmp_path / "sub" / "ced.png"
    image = cv2.imread(str(path))
    assert image is not None and image.shape[0] > 200 and image.std() > 5

    (ax,) = figures[0].axes
    assert ax.get_title() == "WFLW test"
    assert "%" in ax.get_xlabel() and "%" in ax.get_ylabel()
    assert all(line.get_visible() for line in ax.get_xgridlines() + ax.get_ygridlines())
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    for label, (name, errors) in zip(labels, curves.items()):
        assert label.startswith(name)
        assert f"AUC {auc(errors):.4f}" in label
        assert f"FR {100 * failure_rate(errors):.2f}%" in label
    x, y = ced_curve(curves["sepbn"])
    np.testing.assert_allclose(ax.lines[1].get_xydata(), np.stack([100 * x, 100 * y], 1))


def test_plot_ced_needs_a_curve(tmp_path) -> None:
    with pytest.raises(ValueError, match="at least one curve"):
        plot_ced({}, tmp_path / "x.png")

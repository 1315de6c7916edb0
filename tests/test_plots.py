"""Plots people read: parity plots with the RMSE in the title and a residual panel, learning
curves that name the loss terms and their units."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest

from snapqeq.analysis.metrics import HARTREE, Record
from snapqeq.analysis.plots import learning_curve, learning_curve_figure, parity_figure, parity_plot


def _records(errors_mha: list[float], n_atoms: int = 8) -> list[Record]:
    """Records with known per-atom energy errors (mHa/atom)."""
    out = []
    for k, e in enumerate(errors_mha):
        ref = -3.0 * n_atoms + 0.05 * k * n_atoms
        out.append(Record(n_atoms=n_atoms, total_charge=0.0, split="test", energy=ref +
                          e * 1e-3 * HARTREE * n_atoms, energy_ref=ref))
    return out


def test_parity_plot_shows_rmse_and_residuals(tmp_path):
    """Sub-mHa errors: the title gives each set's RMSE, the residual panel the errors in
    mHa/atom (points exactly at the errors)."""
    records = {"train": _records([0.1, -0.1, 0.1, -0.1]), "test": _records([0.3, -0.4])}
    fig = parity_figure(records)
    top, residual = fig.axes
    title = top.get_title()
    assert "train: 0.1 mHa/atom" in title
    assert f"test: {np.sqrt((0.09 + 0.16) / 2):.3g} mHa/atom" in title
    assert "mHa/atom" in residual.get_ylabel()
    points = np.concatenate([c.get_offsets()[:, 1] for c in residual.collections])
    np.testing.assert_allclose(np.sort(points), np.sort([0.1, -0.1, 0.1, -0.1, 0.3, -0.4]),
                               atol=1e-9)
    plt.close(fig)
    assert parity_plot(records, tmp_path / "parity.png").stat().st_size > 0


@pytest.mark.parametrize("weights, expected, absent", [
    (None, ["(\\Delta E/N)^2", "eV²/atom²", "eV²/Å²", "e²"], []),
    ({"energy": 1.0, "forces": 0.1, "charges": 0.0}, ["0.1\\,", "eV²/Å²"], ["e²]"]),
])
def test_learning_curve_names_terms_and_units(tmp_path, weights, expected, absent):
    history = [{"epoch": e, "train_loss": 1.0 / (e + 1), "validation_loss": 1.5 / (e + 1)}
               for e in range(5)]
    fig = learning_curve_figure(history, weights)
    label = fig.axes[0].get_title()
    assert label.startswith("loss = ")
    assert all(x in label for x in expected), label
    assert not any(x in label for x in absent), label
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == [
        "train (mean over structures)", "validation"]
    plt.close(fig)
    assert learning_curve(history, tmp_path / "lc.png", weights).stat().st_size > 0

"""PNG plots people look at: learning curves, parity plots, energy curves."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from snapqeq.metrics import Record  # noqa: E402


def learning_curve(history: list[dict], path: str | Path) -> Path:
    """Training and validation loss per epoch (log scale)."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    epochs = [h["epoch"] for h in history]
    for key, label in (("train_loss", "train"), ("validation_loss", "validation")):
        values = [h[key] for h in history]
        if np.all(np.isfinite(values)):
            ax.semilogy(epochs, values, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def parity_plot(records: dict[str, list[Record]], path: str | Path) -> Path:
    """Predicted versus reference energy per atom (eV/atom), one colour per data set."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    lo, hi = np.inf, -np.inf
    for name, rec in records.items():
        rec = [r for r in rec if r.energy_ref is not None]
        if not rec:
            continue
        ref = np.array([r.energy_ref / r.n_atoms for r in rec])
        pred = np.array([r.energy / r.n_atoms for r in rec])
        ax.scatter(ref, pred, s=8, label=name)
        lo, hi = min(lo, ref.min(), pred.min()), max(hi, ref.max(), pred.max())
    if np.isfinite(lo):
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.set_xlabel("reference energy (eV/atom)")
    ax.set_ylabel("model energy (eV/atom)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def energy_curves(x: np.ndarray, curves: dict[str, np.ndarray], path: str | Path,
                  xlabel: str, ylabel: str = "energy (eV/atom)") -> Path:
    """Several energy curves over the same abscissa (e.g. energy versus compression)."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for label, y in curves.items():
        ax.plot(x, y, marker="o", ms=3, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)

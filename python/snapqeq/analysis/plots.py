"""PNG plots people look at: learning curves, parity plots, energy curves, OLCAO
coefficient parity with uncertainty calibration."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from snapqeq.analysis.metrics import HARTREE, Record  # noqa: E402

#: loss terms of snapqeq.training.batch.structure_loss: key, weight symbol, term, unit
LOSS_TERMS = (("energy", "w_E", "(\\Delta E/N)^2", "eV²/atom²"),
              ("forces", "w_F", "\\langle \\Delta F^2 \\rangle", "eV²/Å²"),
              ("charges", "w_q", "\\langle \\Delta q^2 \\rangle", "e²"))


def loss_label(loss_weights: dict | None = None) -> str:
    """Axis label naming the loss terms (per structure: energy per atom, force components,
    reference charges) with their units; with ``loss_weights`` (the training config's) only
    the active terms, with their weights as numbers."""
    parts = []
    for key, weight, term, unit in LOSS_TERMS:
        if loss_weights is None:
            parts.append(f"${weight}\\,{term}$ [{unit}]")
        elif float(loss_weights.get(key, 0.0)) > 0:
            parts.append(f"${float(loss_weights[key]):g}\\,{term}$ [{unit}]")
    return "loss = " + " + ".join(parts) if parts else "loss"


def learning_curve_figure(history: list[dict], loss_weights: dict | None = None):
    """The figure of :func:`learning_curve` (not closed; for tests and notebooks)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    members = sorted({h.get("member", 0) for h in history})
    for member in members:  # a committee's history has the rows of every member
        rows = [h for h in history if h.get("member", 0) == member]
        epochs = [h["epoch"] for h in rows]
        for key, label, color in (("train_loss", "train (mean over structures)", "C0"),
                                  ("validation_loss", "validation", "C1")):
            values = [h[key] for h in rows]
            if np.all(np.isfinite(values)):
                ax.semilogy(epochs, values, color=color, alpha=0.9 if len(members) == 1
                            else 0.5, label=label if member == members[0] else None)
    if len(members) > 1:
        ax.text(0.98, 0.98, f"{len(members)} committee members", ha="right", va="top",
                transform=ax.transAxes, fontsize=8)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss per structure")
    ax.set_title(loss_label(loss_weights), fontsize=9)
    if ax.get_legend_handles_labels()[0]:  # no curve: a run of zero epochs
        ax.legend()
    fig.tight_layout()
    return fig


def learning_curve(history: list[dict], path: str | Path,
                   loss_weights: dict | None = None) -> Path:
    """Training and validation loss per epoch (log scale), the loss terms and their units
    on the axis (``loss_weights``: the config's, to show only the active terms)."""
    fig = learning_curve_figure(history, loss_weights)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def energy_rmse(records: list[Record]) -> float:
    """Energy RMSE per atom (eV/atom) of the records with a reference energy."""
    err = [(r.energy - r.energy_ref) / r.n_atoms for r in records if r.energy_ref is not None]
    return float(np.sqrt(np.mean(np.square(err)))) if err else float("nan")


def parity_figure(records: dict[str, list[Record]]):
    """The figure of :func:`parity_plot` (not closed; for tests and notebooks)."""
    fig, (ax, rx) = plt.subplots(2, 1, figsize=(5, 6.2), sharex=True,
                                 gridspec_kw={"height_ratios": [3, 1.4]})
    lo, hi = np.inf, -np.inf
    titles = []
    for name, rec in records.items():
        rec = [r for r in rec if r.energy_ref is not None]
        if not rec:
            continue
        ref = np.array([r.energy_ref / r.n_atoms for r in rec])
        pred = np.array([r.energy / r.n_atoms for r in rec])
        rmse = energy_rmse(rec)
        ax.scatter(ref, pred, s=8, label=f"{name} ({len(rec)})")
        # residuals in mHa/atom: the scale of the CENT paper's errors, invisible above
        rx.scatter(ref, (pred - ref) / HARTREE * 1000.0, s=8)
        titles.append(f"{name}: {rmse / HARTREE * 1000.0:.3g} mHa/atom "
                      f"({rmse * 1000.0:.3g} meV/atom)")
        lo, hi = min(lo, ref.min(), pred.min()), max(hi, ref.max(), pred.max())
    if np.isfinite(lo):
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    rx.axhline(0.0, color="k", lw=0.8)
    ax.set_title("energy RMSE per atom\n" + "\n".join(titles), fontsize=8)
    ax.set_ylabel("model energy (eV/atom)")
    rx.set_xlabel("reference energy (eV/atom)")
    rx.set_ylabel("model - reference\n(mHa/atom)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def parity_plot(records: dict[str, list[Record]], path: str | Path) -> Path:
    """Predicted versus reference energy per atom (eV/atom), one colour per data set, the
    RMSE of each set (mHa/atom and meV/atom) in the title and a residual panel (mHa/atom)
    so that sub-mHa errors are visible."""
    fig = parity_figure(records)
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


def coefficient_parity_plot(mean: np.ndarray, std: np.ndarray, target: np.ndarray, path: str | Path,
                title: str = "", center: bool = True) -> Path:
    """Two panels: predicted vs reference A_i (Hartree; one colour per coefficient index)
    and the histogram of z = (A - mean) / std against N(0, 1).

    With ``center`` both axes of the parity panel show A_i minus the reference mean of
    coefficient i: the coefficients span orders of magnitude, and the environment-dependent
    part the model has to learn would otherwise be invisible.
    """
    valid = np.isfinite(target) & np.isfinite(mean) & np.isfinite(std) & (std > 0)
    shift = np.zeros(mean.shape[1])
    if center:
        shift = np.array([target[valid[:, d], d].mean() if valid[:, d].any() else 0.0
                          for d in range(mean.shape[1])])
    ref, pred = (target - shift)[valid], (mean - shift)[valid]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(9.5, 4.2))
    cols = np.broadcast_to(np.arange(mean.shape[1]), mean.shape)
    sc = ax.scatter(ref, pred, c=cols[valid], s=6, cmap="viridis")
    lo, hi = float(min(ref.min(), pred.min())), float(max(ref.max(), pred.max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    r2 = 1.0 - np.sum((pred - ref) ** 2) / np.sum(ref**2) if center else np.nan
    label = "$A_i - \\langle A_i \\rangle$" if center else "$A_i$"
    ax.set_xlabel(f"reference {label} (Hartree)")
    ax.set_ylabel(f"predicted mean {label} (Hartree)")
    if center:
        ax.text(0.04, 0.94, f"$R^2$ = {r2:.3f}", transform=ax.transAxes)
    fig.colorbar(sc, ax=ax, label="coefficient index i")
    z = ((target - mean) / std)[valid]
    cover = float(np.mean(np.abs(z) <= 1.0))
    bx.hist(np.clip(z, -5, 5), bins=60, range=(-5, 5), density=True, alpha=0.7,
            label=f"{100 * cover:.0f}% within 1$\\sigma$")
    g = np.linspace(-5, 5, 201)
    bx.plot(g, np.exp(-0.5 * g**2) / np.sqrt(2 * np.pi), "k-", lw=1, label="N(0, 1): 68%")
    bx.set_xlabel("z = (reference - mean) / $\\sigma$")
    bx.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)

"""Accuracy metrics of a model on reference data, in the units people quote.

Energies per atom in meV/atom and mHa/atom (the CENT paper's unit), forces in meV/Angstrom,
charges in e.  Groups: all, neutral, ionized (by total charge) and each ``info["split"]``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from snapqeq.units import HARTREE  # eV


@dataclass
class Record:
    """Prediction and reference for one structure."""

    n_atoms: int
    total_charge: float
    split: str | None
    energy: float
    energy_ref: float | None
    forces: np.ndarray | None = None
    forces_ref: np.ndarray | None = None
    charges: np.ndarray | None = None
    charges_ref: np.ndarray | None = None


@dataclass
class Metrics:
    count: int
    energy_rmse_mev: float
    energy_mae_mev: float
    energy_rmse_mha: float
    energy_mae_mha: float
    force_rmse_mev: float | None
    charge_rmse: float | None

    def as_dict(self) -> dict:
        return asdict(self)


def _rmse(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x)))) if len(x) else float("nan")


def compute_metrics(records: list[Record]) -> Metrics:
    """Energy, force and charge errors of a group of structures."""
    rec = [r for r in records if r.energy_ref is not None]
    de = np.array([(r.energy - r.energy_ref) / r.n_atoms for r in rec])  # eV/atom
    df = [np.ravel(r.forces - r.forces_ref) for r in rec
          if r.forces is not None and r.forces_ref is not None]
    dq = [r.charges - r.charges_ref for r in rec
          if r.charges is not None and r.charges_ref is not None]
    mae = float(np.mean(np.abs(de))) if len(de) else float("nan")
    return Metrics(
        count=len(rec),
        energy_rmse_mev=_rmse(de) * 1e3,
        energy_mae_mev=mae * 1e3,
        energy_rmse_mha=_rmse(de) / HARTREE * 1e3,
        energy_mae_mha=mae / HARTREE * 1e3,
        force_rmse_mev=_rmse(np.concatenate(df)) * 1e3 if df else None,
        charge_rmse=_rmse(np.concatenate(dq)) if dq else None,
    )


def grouped_metrics(records: list[Record]) -> dict[str, Metrics]:
    """Metrics for all structures, neutral, ionized and per split label."""
    groups: dict[str, list[Record]] = {"all": list(records)}
    groups["neutral"] = [r for r in records if abs(r.total_charge) < 1e-8]
    groups["ionized"] = [r for r in records if abs(r.total_charge) >= 1e-8]
    for r in records:
        if r.split:
            groups.setdefault(f"split={r.split}", []).append(r)
            tag = "neutral" if abs(r.total_charge) < 1e-8 else "ionized"
            groups.setdefault(f"split={r.split}/{tag}", []).append(r)
    return {k: compute_metrics(v) for k, v in groups.items() if v}


def format_table(metrics: dict[str, Metrics]) -> str:
    """A plain-text table of grouped metrics."""
    head = (f"{'group':<24} {'n':>5} {'E RMSE':>10} {'E MAE':>10} {'E RMSE':>10} "
            f"{'F RMSE':>10} {'q RMSE':>8}\n"
            f"{'':<24} {'':>5} {'meV/atom':>10} {'meV/atom':>10} {'mHa/atom':>10} "
            f"{'meV/Å':>10} {'e':>8}")
    rows = [head]
    for name, m in metrics.items():
        f = f"{m.force_rmse_mev:10.2f}" if m.force_rmse_mev is not None else f"{'-':>10}"
        q = f"{m.charge_rmse:8.4f}" if m.charge_rmse is not None else f"{'-':>8}"
        rows.append(f"{name:<24} {m.count:>5} {m.energy_rmse_mev:10.3f} {m.energy_mae_mev:10.3f} "
                    f"{m.energy_rmse_mha:10.4f} {f} {q}")
    return "\n".join(rows)

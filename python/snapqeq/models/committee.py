"""Committee (ensemble) models: statistics and the uncertainty threshold.

``snapqeq train`` with ``committee: n`` trains n members
(:func:`snapqeq.training.trainer.train_committee`) and
writes them into one model file (:func:`snapqeq.training.export.export_committee`).  The ASE
calculator and ``pair_style snapqeq`` evaluate every member completely (its own chi, its
own charge equilibration, energy, forces, stress, charges), report the members' mean as the
prediction and their spread as the uncertainty (:func:`committee_statistics`):

- ``energy_std`` (eV): sqrt(1/n sum_k (E_k - <E>)^2), per structure;
- ``forces_std`` (eV/Angstrom), per atom i: sqrt(1/n sum_k |F_k,i - <F_i>|^2), the RMS
  deviation of the force vector (the three components together);
- ``energies_std`` (eV), per atom: the spread of the per-atom energies.

(population standard deviations, 1/n).  With a threshold (:class:`CommitteeCheck`;
calculator parameters ``committee_threshold`` / ``committee_action``, pair style keywords
``committee_threshold E F`` / ``committee_action warn|stop``) a structure whose energy std
per atom exceeds E (eV/atom) or one of whose atoms has a force std above F (eV/Angstrom)
warns or stops the calculation, with the same message text in ASE and LAMMPS (LAMMPS names
atoms by their IDs, ASE by their indices).  Large spreads flag extrapolation (RuNNer,
AIMNet2 and many active-learning schemes rely on it).
"""

from __future__ import annotations

import warnings

import numpy as np

from snapqeq.analysis.metrics import Record

__all__ = ["ACTIONS", "CommitteeCheck", "committee_statistics", "energy_message",
           "force_message", "mean_records", "spread_summary"]

ACTIONS = ("warn", "stop")
#: warnings per kind (energy, forces) and calculator / LAMMPS run before they are muted
MAX_WARNINGS = 5
# the end of every message that stops a calculation (identical in the plugin)
STOP_HINT = ("; set committee_action to warn to go on with a warning, or add such "
             "structures to the training data")


def committee_statistics(energies: np.ndarray, forces: np.ndarray | None = None,
                         atom_energies: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Mean and spread of the members' predictions.

    ``energies``: (n,) member energies (eV); ``forces``: (n, N, 3) member forces (eV/A);
    ``atom_energies``: (n, N) member per-atom energies (eV).  Returns ``energy``,
    ``energy_std`` (eV) and, where given, ``forces`` / ``forces_std`` (N,) and
    ``energies`` / ``energies_std`` (N,), as defined in the module docstring.
    """
    e = np.asarray(energies, dtype=float)
    out = {"energy": e.mean(), "energy_std": np.sqrt(np.mean((e - e.mean()) ** 2))}
    if forces is not None:
        f = np.asarray(forces, dtype=float)
        mean = f.mean(0)
        out["forces"] = mean
        out["forces_std"] = np.sqrt(np.mean(np.sum((f - mean) ** 2, axis=2), axis=0))
    if atom_energies is not None:
        ea = np.asarray(atom_energies, dtype=float)
        out["energies"] = ea.mean(0)
        out["energies_std"] = np.sqrt(np.mean((ea - ea.mean(0)) ** 2, axis=0))
    return out


def energy_message(std: float, n_atoms: int, threshold: float) -> str:
    """Text of an energy spread above the threshold (the plugin prints the same)."""
    return (f"snapqeq committee: energy std {std / n_atoms:.6g} eV/atom ({std:.6g} eV over "
            f"{n_atoms} atoms) exceeds committee_threshold {threshold:g} eV/atom: the "
            f"members disagree, the model extrapolates there")


def force_message(std: float, atom: int, element: str, threshold: float) -> str:
    """Text of a force spread above the threshold (atom: ASE index / LAMMPS ID)."""
    return (f"snapqeq committee: force std {std:.6g} eV/Angstrom of atom {atom} ({element}) "
            f"exceeds committee_threshold {threshold:g} eV/Angstrom: the members disagree, "
            f"the model extrapolates there")


class CommitteeCheck:
    """The uncertainty threshold of one calculator.

    Parameters
    ----------
    threshold : (float or None, float or None) or None
        (E, F): the largest energy std per atom (eV/atom) and the largest per-atom force
        std (eV/Angstrom) accepted; None (for either) switches that check off.
    action : {"warn", "stop"}
        A spread above the threshold warns (at most :data:`MAX_WARNINGS` per kind) or
        raises ValueError naming the threshold and the value.
    """

    def __init__(self, threshold=None, action: str = "warn"):
        if action not in ACTIONS:
            raise ValueError(f"committee_action must be one of {', '.join(ACTIONS)}, "
                             f"not {action!r}")
        if threshold is None:
            threshold = (None, None)
        try:
            energy, force = threshold
        except (TypeError, ValueError):
            raise ValueError("committee_threshold must be a pair (energy std per atom in "
                             "eV/atom, force std in eV/Angstrom), None to skip either; got "
                             f"{threshold!r}") from None
        for name, value in (("energy", energy), ("force", force)):
            if value is not None and not (float(value) > 0.0):
                raise ValueError(f"committee_threshold: the {name} threshold must be positive "
                                 f"(or None), got {value!r}")
        self.energy = None if energy is None else float(energy)
        self.force = None if force is None else float(force)
        self.action = action
        self._warned = {"energy": 0, "forces": 0}

    @property
    def active(self) -> bool:
        return self.energy is not None or self.force is not None

    def _fail(self, kind: str, message: str) -> None:
        if self.action == "stop":
            raise ValueError(message + STOP_HINT)
        self._warned[kind] += 1
        if self._warned[kind] <= MAX_WARNINGS:
            more = (" (further warnings of this kind muted)"
                    if self._warned[kind] == MAX_WARNINGS else "")
            warnings.warn(message + more, UserWarning, stacklevel=4)

    def check(self, energy_std: float, forces_std: np.ndarray, symbols: list[str]) -> None:
        """Energy std (eV) of a structure of len(symbols) atoms and per-atom force std."""
        n = len(symbols)
        if self.energy is not None and energy_std / n > self.energy:
            self._fail("energy", energy_message(energy_std, n, self.energy))
        if self.force is not None and len(forces_std):
            i = int(np.argmax(forces_std))
            if forces_std[i] > self.force:
                self._fail("forces", force_message(float(forces_std[i]), i, symbols[i],
                                                   self.force))


# ------------------------------------------------------------------------------ training
def mean_records(member_records: list[list]) -> tuple[list, list[dict]]:
    """The committee-mean record of every structure and its spread (energy std per atom,
    eV/atom; largest per-atom force std, eV/A)."""
    mean, spread = [], []
    for recs in zip(*member_records, strict=True):
        r0 = recs[0]
        has_f = r0.forces is not None
        stats = committee_statistics([r.energy for r in recs],
                                     np.array([r.forces for r in recs]) if has_f else None)
        mean.append(Record(
            n_atoms=r0.n_atoms, total_charge=r0.total_charge, split=r0.split,
            energy=float(stats["energy"]), energy_ref=r0.energy_ref,
            forces=stats.get("forces"), forces_ref=r0.forces_ref,
            charges=np.mean([r.charges for r in recs], axis=0), charges_ref=r0.charges_ref))
        spread.append({"energy_std": float(stats["energy_std"]) / r0.n_atoms,
                       "force_std_max": (float(stats["forces_std"].max())
                                         if has_f else None)})
    return mean, spread


def spread_summary(spread: list[dict]) -> dict:
    e = [s["energy_std"] for s in spread]
    f = [s["force_std_max"] for s in spread if s["force_std_max"] is not None]
    return {"count": len(spread), "energy_std_mean_mev": 1e3 * float(np.mean(e)),
            "energy_std_max_mev": 1e3 * float(np.max(e)),
            "force_std_max_mean_mev": 1e3 * float(np.mean(f)) if f else None}

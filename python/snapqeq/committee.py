"""Committee (ensemble) models: training, statistics and the uncertainty threshold.

``snapqeq train`` with ``committee: n`` trains n members (:func:`train_committee`) and
writes them into one model file (:func:`snapqeq.export.export_committee`).  The ASE
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

import dataclasses
import json
import warnings
from pathlib import Path

import numpy as np

__all__ = ["ACTIONS", "CommitteeCheck", "committee_statistics", "energy_message",
           "force_message", "train_committee"]

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
def _mean_records(member_records: list[list]) -> tuple[list, list[dict]]:
    """The committee-mean record of every structure and its spread (energy std per atom,
    eV/atom; largest per-atom force std, eV/A)."""
    from snapqeq.metrics import Record

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


def _spread_summary(spread: list[dict]) -> dict:
    e = [s["energy_std"] for s in spread]
    f = [s["force_std_max"] for s in spread if s["force_std_max"] is not None]
    return {"count": len(spread), "energy_std_mean_mev": 1e3 * float(np.mean(e)),
            "energy_std_max_mev": 1e3 * float(np.max(e)),
            "force_std_max_mean_mev": 1e3 * float(np.mean(f)) if f else None}


def train_committee(config):
    """Train ``config.committee`` members and write them into one model file.

    Member k is :func:`snapqeq.training.train` of the same configuration with seed
    ``config.seed + k`` in ``OUTPUT/member_k`` (its own initial weights, batch order and
    reference-energy fit; with ``split: random`` of one data file also its own random
    train/validation/test split, as RuNNer committees do; with ``split: info`` / ``size``
    or separate files every member sees the same sets).  Then ``OUTPUT/model.pt`` holds
    all members (:func:`snapqeq.export.export_committee`) with the union of the members'
    training envelopes, and ``OUTPUT/metrics.txt`` / ``metrics.json`` give, on the sets of
    seed ``config.seed``, the metrics of the committee-mean prediction (the training-path
    evaluation of :func:`snapqeq.training.evaluate`, forces by autograd) and the mean and
    largest energy std (meV/atom) and the mean of the largest per-atom force std
    (meV/Angstrom) per structure.  With ``split: random`` the test structures of member 0
    may be training structures of other members: use ``snapqeq test`` on held-out data.
    ``resume`` continues every member from its own ``checkpoint_last.pt``.

    Returns a :class:`snapqeq.training.TrainResult` whose ``model`` is member 0, whose
    ``model_path`` is the committee file, whose ``history`` has the rows of every member
    (key ``member``) and whose ``seconds`` sum the members' training times.
    """
    from snapqeq.bispectrum import Bispectrum
    from snapqeq.export import export_committee, load_model, merge_envelopes
    from snapqeq.metrics import format_table, grouped_metrics
    from snapqeq.training import TrainResult, _load, evaluate, train

    n = int(config.committee)
    if n < 2:
        raise ValueError(f"train_committee needs committee >= 2, got {n}")
    if config.olcao is not None:
        raise ValueError("a committee with an OLCAO head is not supported: train the "
                         "OLCAO head on a single model (committee: 1)")
    out = Path(config.output)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for k in range(n):
        if config.progress:
            print(f"committee member {k + 1}/{n} (seed {config.seed + k})", flush=True)
        results.append(train(dataclasses.replace(
            config, committee=1, seed=config.seed + k, output=str(out / f"member_{k}"))))
    descriptor = Bispectrum(**config.descriptor)
    elements = list(descriptor.elements)
    min_distances, envelope = merge_envelopes(
        [load_model(r.model_path).metadata for r in results])
    models = [r.model for r in results]
    model_path = export_committee(models, elements, descriptor.to_dict(), out / "model.pt",
                                  overwrite=True, min_distances=min_distances,
                                  envelope=envelope)

    sets = _load(dataclasses.replace(config, committee=1, progress=False), descriptor)
    metrics, tables = {}, []
    for name, samples in sets.items():
        if not samples:
            continue
        records, spread = _mean_records([evaluate(m, samples) for m in models])
        groups = grouped_metrics(records)
        metrics[name] = {k: m.as_dict() for k, m in groups.items()}
        metrics[name]["committee_spread"] = _spread_summary(spread)
        s = metrics[name]["committee_spread"]
        force = ("-" if s["force_std_max_mean_mev"] is None
                 else f"{s['force_std_max_mean_mev']:.2f} meV/A")
        tables.append(f"[{name}] committee mean of {n} members\n{format_table(groups)}\n"
                      f"energy std {s['energy_std_mean_mev']:.3f} meV/atom on average, "
                      f"{s['energy_std_max_mev']:.3f} at most; largest per-atom force std "
                      f"{force} on average")
    metrics["members"] = [r.metrics for r in results]
    (out / "metrics.txt").write_text("\n\n".join(tables) + "\n")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    history = [{"member": k, **row} for k, r in enumerate(results) for row in r.history]
    (out / "history.json").write_text(json.dumps(history))
    import yaml

    (out / "config.yaml").write_text(yaml.safe_dump(dataclasses.asdict(config),
                                                    sort_keys=False))
    seconds = sum(r.seconds for r in results)
    seen = sum(r.seconds * r.structures_per_second for r in results)
    return TrainResult(models[0], model_path, history, metrics, seconds,
                       seen / seconds if seconds > 0 else float("nan"))

"""Metrics of an exported model on any reference data file (``snapqeq test``).

Uses the ASE calculator, i.e. exactly what users run, not the training code path.
"""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from snapqeq.calculator import SnapQEqCalculator
from snapqeq.data import DataKeys, _reference, check_reference_keys, read_structures, total_charge
from snapqeq.metrics import Metrics, Record, grouped_metrics


def evaluate_structures(calc: SnapQEqCalculator, structures, keys: DataKeys | None = None,
                        progress: bool = True) -> list[Record]:
    """One metric record per structure (model energy/forces/charges vs reference)."""
    keys = keys or DataKeys()
    records = []
    for atoms in tqdm(structures, desc="evaluating", unit="struct", disable=not progress):
        energy_ref, forces_ref, charges_ref = _reference(atoms, keys)
        # the training rule, with the calculator's total_charge parameter first
        total = total_charge(atoms, keys, calc.parameters["total_charge"])
        work = atoms.copy()
        work.info["charge"] = total
        calc.reset()
        work.calc = calc
        forces = work.get_forces()  # one calculation: energy and charges come with it
        records.append(Record(
            n_atoms=len(work), total_charge=float(total), split=atoms.info.get(keys.split),
            energy=work.get_potential_energy(), energy_ref=energy_ref,
            forces=forces, forces_ref=forces_ref,
            charges=work.get_charges(), charges_ref=charges_ref))
    return records


def evaluate_file(model: str | Path, data: str | Path, keys: DataKeys | None = None,
                  progress: bool = True, format: str | None = None,
                  calculator: dict | None = None) -> dict[str, Metrics]:
    """Grouped metrics (all / neutral / ionized / per split) of a model on a data file
    (extended XYZ or RuNNer ``input.data``, see :func:`snapqeq.data.read_structures`);
    every structure needs a reference energy.  ``keys`` as in the training configuration
    (its ``keys`` section), so that both read the same total charges (the rule of
    :func:`snapqeq.data.total_charge`); ``calculator`` parameters (e.g. ``total_charge``,
    ``tol``) go to the :class:`SnapQEqCalculator`."""
    keys = keys or DataKeys()
    structures = read_structures(data, format)
    check_reference_keys(structures, keys, str(data), need_energy=True)
    calc = SnapQEqCalculator(model, **(calculator or {}))
    return grouped_metrics(evaluate_structures(calc, structures, keys, progress))

"""Metrics of an exported model on any reference data file (``snapqeq test``).

Uses the ASE calculator, i.e. exactly what users run, not the training code path.
"""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from snapqeq.analysis.metrics import Metrics, Record, grouped_metrics
from snapqeq.calculators.cent import SnapQEqCalculator
from snapqeq.io.structures import (
    DataKeys,
    check_reference_keys,
    read_structures,
    reference_values,
    total_charge,
)


def evaluate_structures(calc: SnapQEqCalculator, structures, keys: DataKeys | None = None,
                        progress: bool = True) -> list[Record]:
    """One metric record per structure (model energy/forces/charges vs reference)."""
    keys = keys or DataKeys()
    records = []
    for atoms in tqdm(structures, desc="evaluating", unit="struct", disable=not progress):
        energy_ref, forces_ref, charges_ref = reference_values(atoms, keys)
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
    (extended XYZ or RuNNer ``input.data``, see :func:`snapqeq.io.structures.read_structures`);
    every structure needs a reference energy.  ``keys`` as in the training configuration
    (its ``keys`` section), so that both read the same total charges (the rule of
    :func:`snapqeq.io.structures.total_charge`); ``calculator`` parameters (e.g. ``total_charge``,
    ``tol``) go to the :class:`SnapQEqCalculator`."""
    keys = keys or DataKeys()
    structures = read_structures(data, format)
    check_reference_keys(structures, keys, str(data), need_energy=True)
    calc = SnapQEqCalculator(model, **(calculator or {}))
    return grouped_metrics(evaluate_structures(calc, structures, keys, progress))

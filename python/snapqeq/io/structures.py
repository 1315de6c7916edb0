"""Reference data files: extended XYZ and RuNNer/n2p2 ``input.data`` read into ASE Atoms,
where their reference values live (:class:`DataKeys`) and the one total-charge rule of
``snapqeq train`` and ``snapqeq test``.

Units: Angstrom, eV, eV/Angstrom and e (RuNNer's atomic units are converted on reading).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms

#: per-atom charges summing to more than this (e) need a declared total charge
UNDECLARED_CHARGE_TOL = 1e-3


@dataclass(frozen=True)
class DataKeys:
    """Where the reference values live in ASE Atoms read from extended XYZ."""

    energy: str = "energy"
    forces: str = "forces"
    charge: str = "charge"          # total charge, atoms.info
    ref_charges: str = "ref_charges"  # per-atom reference charges, atoms.arrays
    split: str = "split"


def reference_values(atoms: Atoms, keys: DataKeys):
    """Reference energy (eV), forces (eV/Angstrom) and per-atom charges (e) of a structure,
    each None when absent, whether ase.io put them into info/arrays or a calculator."""
    energy = atoms.info.get(keys.energy)
    forces = atoms.arrays.get(keys.forces)
    calc = atoms.calc
    if calc is not None:
        if energy is None and keys.energy == "energy" and "energy" in calc.results:
            energy = calc.results["energy"]
        if forces is None and keys.forces == "forces" and "forces" in calc.results:
            forces = calc.results["forces"]
    charges = atoms.arrays.get(keys.ref_charges)
    if charges is None and calc is not None and keys.ref_charges in calc.results:
        charges = calc.results[keys.ref_charges]
    return energy, forces, charges


#: ``format`` names of :func:`read_structures` besides everything ase.io reads
RUNNER = "runnerdata"


def _is_runner(path: Path) -> bool:
    """RuNNer/n2p2 ``input.data``: a ``*.data`` file whose first keyword is ``begin``."""
    if path.name != "input.data" and path.suffix != ".data":
        return False
    with path.open() as f:
        for line in f:
            words = line.split()
            if words:
                return words[0] in ("begin", "comment")
    return False


def _from_runner(atoms: Atoms) -> Atoms:
    """RuNNer frame (read by ASE in Angstrom/eV) with the keys of :class:`DataKeys`:
    ``info["energy"]`` (eV), ``arrays["forces"]`` (eV/Angstrom), total charge
    ``info["charge"]`` (e), per-atom (Hirshfeld) charges ``arrays["ref_charges"]`` (e)."""
    out = atoms.copy()
    if atoms.calc is not None:
        # into info/arrays: the calculator would disown its results once the charges change
        out.info["energy"] = atoms.get_potential_energy()
        out.arrays["forces"] = atoms.get_forces()
    out.info["charge"] = float(atoms.info.get("total_charge", 0.0))
    out.arrays["ref_charges"] = atoms.get_initial_charges().copy()
    out.set_initial_charges(None)
    return out


def read_structures(path: str | Path, format: str | None = None) -> list[Atoms]:
    """All frames of a reference-data file.

    Extended XYZ (or anything ase.io reads; ``format`` as in :func:`ase.io.read`) or
    RuNNer/n2p2 ``input.data`` (``format="runnerdata"``, or a ``*.data`` file that starts
    with ``begin``): atomic units are converted to Angstrom/eV, the total charge goes to
    ``info["charge"]`` and the per-atom charges to ``arrays["ref_charges"]`` (e).
    """
    from ase.io import read

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"data file not found: {path}")
    if format is None and _is_runner(path):
        format = RUNNER
    try:
        frames = read(path, index=":", format=format)
    except Exception as err:  # ase raises many types for malformed files
        raise ValueError(f"{path}: cannot read as {format or 'extended XYZ/ase.io'}: "
                         f"{err}") from err
    frames = frames if isinstance(frames, list) else [frames]
    if format == RUNNER:
        frames = [_from_runner(a) for a in frames]
    for k, atoms in enumerate(frames):
        if len(atoms) == 0:
            raise ValueError(f"{path}: structure {k} has no atoms")
    return frames


def _is_default(keys: DataKeys, name: str) -> bool:
    return getattr(keys, name) == DataKeys.__dataclass_fields__[name].default


def _undeclared_charge(atoms: Atoms, keys: DataKeys) -> float | None:
    """The net charge of a structure's per-atom charges (reference charges, else ASE initial
    charges) when it has no total charge ``info[keys.charge]`` and they do not sum to 0."""
    if keys.charge in atoms.info:
        return None
    per_atom = reference_values(atoms, keys)[2]
    if per_atom is None and atoms.has("initial_charges"):
        per_atom = atoms.get_initial_charges()
    if per_atom is not None and abs(float(np.sum(per_atom))) > UNDECLARED_CHARGE_TOL:
        return float(np.sum(per_atom))
    return None


def total_charge(atoms: Atoms, keys: DataKeys = DataKeys(),
                 override: float | None = None) -> float:
    """Total charge (e) of a reference structure, the one rule of ``snapqeq train`` and
    ``snapqeq test``:

    1. ``override`` when given (the ``total_charge`` parameter of the calculator
       ``snapqeq test`` evaluates with);
    2. else ``info[keys.charge]`` (extended XYZ ``charge=``; RuNNer ``charge`` lines);
    3. else 0, but a structure whose per-atom charges (``arrays[keys.ref_charges]``, else
       ASE initial charges) sum to a non-zero charge is a ValueError: it would be trained
       or tested as neutral.

    See :func:`check_reference_keys` for the data sets in which a missing total charge
    is an error.
    """
    if override is not None:
        return float(override)
    if keys.charge in atoms.info:
        return float(atoms.info[keys.charge])
    net = _undeclared_charge(atoms, keys)
    if net is not None:
        raise ValueError(f"a structure ({atoms.get_chemical_formula()}) has no total charge "
                         f"info[{keys.charge!r}] but its per-atom charges sum to {net:.4g} e; "
                         f"set info[{keys.charge!r}] (or keys.charge) so it is not treated "
                         f"as neutral")
    return 0.0


def check_reference_keys(structures: list[Atoms], keys: DataKeys, source: str,
                         need_energy: bool = False) -> None:
    """Refuse reference data whose keys would be silently misread (ValueError naming the
    file, the structure and the key).

    - a key set in ``keys`` (not the default) that no structure has;
    - structures without a total charge in a data set where other structures have one,
      or whose per-atom reference charges sum to a non-zero charge (they would be
      treated as neutral);
    - with ``need_energy``: structures without a reference energy.
    """
    n = len(structures)
    refs = [reference_values(a, keys) for a in structures]
    found = {
        "energy": [r[0] is not None for r in refs],
        "forces": [r[1] is not None for r in refs],
        "ref_charges": [r[2] is not None for r in refs],
        "charge": [keys.charge in a.info for a in structures],
        "split": [keys.split in a.info for a in structures],
    }
    for name, have in found.items():
        if not _is_default(keys, name) and not any(have):
            raise ValueError(f"{source}: no structure has the key {getattr(keys, name)!r} "
                             f"given as keys.{name}")
    have_q = found["charge"]
    for k in range(n):
        if have_q[k]:
            continue
        if any(have_q):
            first = have_q.index(True)
            raise ValueError(
                f"{source}: structure {k} has no total charge info[{keys.charge!r}] while "
                f"structure {first} has one; give every structure its total charge")
        net = _undeclared_charge(structures[k], keys)
        if net is not None:
            what = (f"reference charges {keys.ref_charges!r}" if refs[k][2] is not None
                    else "initial charges")
            raise ValueError(
                f"{source}: structure {k} has no total charge info[{keys.charge!r}] but its "
                f"{what} sum to {net:.4g} e; set info[{keys.charge!r}] (or keys.charge) so "
                f"it is not treated as neutral")
    if need_energy:
        missing = [k for k in range(n) if not found["energy"][k]]
        if missing:
            raise ValueError(
                f"{source}: {len(missing)} of {n} structures have no reference energy "
                f"(key {keys.energy!r}), e.g. structure {missing[0]}")

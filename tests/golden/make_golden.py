"""The golden reference of snapqeq: a tiny committed model and what it gives, to be met by
every engine (tests/test_golden.py), in the manner of LAMMPS' unittest/force-styles YAMLs.

    python tests/golden/make_golden.py                  # compute afresh, compare, write nothing
    python tests/golden/make_golden.py --write          # write golden_model.pt + reference.yaml
    python tests/golden/make_golden.py --write --force  # ... replacing the committed ones

The model is a 4G model (electronegativity network, charge equilibration, short-range
network of B and q) for Na and Cl with random, seeded weights and no training data; the
reference numbers are those of the ASE calculator (dense charge equilibration converged to
1e-13, Ewald sums to 1e-13): for each configuration the initial energy, forces, charges
and (periodic cells) stress, and the same after STEPS velocity-Verlet steps from the
stored velocities.  The configurations: a free Na4Cl4 cluster, neutral and charged +1,
and a periodic 16-atom rock-salt cell, neutral and charged +1 (neutralising background).

The YAML is regenerated only by an explicit ``--write``, which refuses to replace the
committed files without ``--force``: a changed number is a changed result, to be explained
in the commit that rewrites it.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
import yaml
from ase import Atoms, units
from ase.build import bulk
from ase.md.verlet import VelocityVerlet

HERE = Path(__file__).resolve().parent
MODEL = HERE / "golden_model.pt"
REFERENCE = HERE / "reference.yaml"

ELEMENTS = ["Na", "Cl"]
MASSES = {"Na": 22.99, "Cl": 35.45}  # amu, as the LAMMPS decks set them
TIMESTEP_PS = 0.001
STEPS = 5
SOLVER = {"method": "dense", "tol": 1e-13, "accuracy": 1e-13}  # the calculator's options
LAMMPS_OPTIONS = "tol 1e-13 ewald_accuracy 1e-13"  # the same for pair_style snapqeq
#: LAMMPS' metal-unit m v^2 -> energy factor (force->mvv2e, a rounded constant); ASE's
#: exact one differs by 3e-9 relative, so the ASE run uses masses scaled by the ratio to
#: integrate the very equations of motion LAMMPS integrates
LAMMPS_MVV2E = 1.0364269e-4
EPSILON = 1e-9  # relative agreement every engine is held to (tests/test_golden.py)


# ------------------------------------------------------------------------------- model
def descriptor() -> dict:
    from snapqeq.descriptors.bispectrum import Bispectrum

    return Bispectrum(2, 1.0, {"Na": 2.6, "Cl": 3.0}, {"Na": 1.0, "Cl": 0.8}).to_dict()


def build_model():
    """The golden 4G model, the same on every machine (seeded, no training data)."""
    from snapqeq.descriptors.bispectrum import Bispectrum
    from snapqeq.models.cent import CENT
    from snapqeq.units import BOHR, HARTREE

    torch.manual_seed(15)
    n = Bispectrum.from_dict(descriptor()).n_components
    model = CENT(len(ELEMENTS), n, [4, 4], widths=[1.0 * BOHR, 2.0 * BOHR],
                 hardness=[0.2 * HARTREE, 0.1 * HARTREE], e0=[-4.0, -3.0], chi_scale=1.0,
                 short_hidden=[4])
    with torch.no_grad():  # Na gives electrons to Cl; chi varies visibly with B
        model.chi0.copy_(torch.tensor([-2.0, 2.0], dtype=torch.float64))
        for p in model.chi_net.parameters():
            p.mul_(2.0)
    return model.double()


def write_model(path: Path, overwrite: bool) -> Path:
    from snapqeq.training.export import export_model

    # a plausible envelope, so that the guard runs its distance and charge checks
    return export_model(build_model(), ELEMENTS, descriptor(), path, overwrite=overwrite,
                        min_distances={"Na-Na": 3.2, "Na-Cl": 2.2, "Cl-Cl": 3.2},
                        envelope={"descriptor_range": None, "total_charge_range": [-1.0, 1.0]})


# ---------------------------------------------------------------------- configurations
def _velocities(atoms: Atoms, seed: int, temperature: float = 600.0) -> np.ndarray:
    """Maxwell-Boltzmann velocities (Angstrom/ps), zero total momentum."""
    rng = np.random.default_rng(seed)
    m = np.array([MASSES[s] for s in atoms.get_chemical_symbols()])
    kt = units.kB * temperature
    v = rng.normal(size=(len(atoms), 3)) * np.sqrt(kt / (m * LAMMPS_MVV2E))[:, None]
    v -= (m[:, None] * v).sum(0) / m.sum()
    return v


def _cluster(seed: int) -> Atoms:
    a = bulk("NaCl", "rocksalt", a=5.64, cubic=True)
    rng = np.random.default_rng(seed)
    return Atoms(a.get_chemical_symbols(),
                 positions=a.positions + rng.normal(scale=0.08, size=a.positions.shape))


def _cell(seed: int) -> Atoms:
    a = bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat((2, 1, 1))
    a.positions += np.random.default_rng(seed).normal(scale=0.08, size=a.positions.shape)
    a.wrap()
    return a


def configurations() -> dict[str, tuple[Atoms, float, np.ndarray]]:
    """name -> (atoms, total charge, velocities in Angstrom/ps)."""
    out = {}
    for name, atoms, charge, seed in (("cluster_neutral", _cluster(1), 0.0, 11),
                                      ("cluster_charged", _cluster(2), 1.0, 12),
                                      ("periodic_neutral", _cell(3), 0.0, 13),
                                      ("periodic_charged", _cell(4), 1.0, 14)):
        out[name] = (atoms, charge, _velocities(atoms, seed))
    return out


# --------------------------------------------------------------------------- reference
def ase_masses(atoms: Atoms) -> np.ndarray:
    """Masses for ASE that reproduce LAMMPS' metal-unit dynamics (see LAMMPS_MVV2E)."""
    ase_mvv2e = (1.0 / (1000.0 * units.fs)) ** 2  # 1 amu (Angstrom/ps)^2 in eV
    return np.array([MASSES[s] for s in atoms.get_chemical_symbols()]) * \
        LAMMPS_MVV2E / ase_mvv2e


def _snapshot(atoms: Atoms) -> dict:
    out = {"energy": float(atoms.get_potential_energy()),
           "forces": atoms.get_forces().tolist(),
           "charges": atoms.calc.results["charges"].tolist()}
    if atoms.pbc.all():
        out["stress"] = atoms.get_stress().tolist()  # eV/Angstrom^3, xx yy zz yz xz xy
    return out


def ase_run(model: Path, atoms: Atoms, charge: float, velocities: np.ndarray,
            steps: int = STEPS) -> tuple[dict, dict, np.ndarray]:
    """(initial snapshot, snapshot after ``steps`` NVE steps, final positions) with the
    ASE calculator."""
    from snapqeq.calculators.cent import SnapQEqCalculator

    atoms = atoms.copy()
    atoms.set_masses(ase_masses(atoms))
    atoms.set_velocities(velocities / (1000.0 * units.fs))
    with warnings.catch_warnings():  # the golden model has no descriptor range
        warnings.filterwarnings("ignore", message=r".*descriptor_range")
        atoms.calc = SnapQEqCalculator(str(model), total_charge=charge, **SOLVER)
        first = _snapshot(atoms)
        VelocityVerlet(atoms, timestep=TIMESTEP_PS * 1000.0 * units.fs).run(steps)
        last = _snapshot(atoms)
    return first, last, atoms.positions.copy()


def reference(model: Path) -> dict:
    """The whole YAML record, computed afresh with the ASE calculator."""
    import snapqeq

    out = {"snapqeq_version": snapqeq.__version__,
           "date_generated": datetime.date.today().isoformat(),
           "generator": "tests/golden/make_golden.py (ASE calculator)",
           "model": MODEL.name, "elements": ELEMENTS, "masses": MASSES,
           "units": "metal: eV, Angstrom, e, ps; stress eV/Angstrom^3 (ASE, xx yy zz yz xz xy)",
           "epsilon": EPSILON, "timestep": TIMESTEP_PS, "steps": STEPS,
           "pair_style_options": LAMMPS_OPTIONS, "configurations": {}}
    for name, (atoms, charge, velocities) in configurations().items():
        first, last, _ = ase_run(model, atoms, charge, velocities)
        entry = {"natoms": len(atoms), "total_charge": charge,
                 "boundary": "p p p" if atoms.pbc.all() else "f f f",
                 "cell": atoms.cell.array.tolist() if atoms.pbc.all() else None,
                 "symbols": atoms.get_chemical_symbols(),
                 "positions": atoms.positions.tolist(), "velocities": velocities.tolist()}
        for prefix, snap in (("init", first), ("run", last)):
            entry.update({f"{prefix}_{k}": v for k, v in snap.items()})
        out["configurations"][name] = entry
    return out


def load_reference(path: Path = REFERENCE) -> dict:
    return yaml.safe_load(path.read_text())


def structure(entry: dict) -> Atoms:
    """The Atoms of one configuration of the YAML."""
    if entry["cell"] is None:
        return Atoms(entry["symbols"], positions=entry["positions"])
    return Atoms(entry["symbols"], positions=entry["positions"], cell=entry["cell"], pbc=True)


def max_relative(got, ref) -> float:
    """max |got - ref| / max |ref| (a scalar: |got - ref| / |ref|)."""
    got, ref = np.asarray(got, dtype=float), np.asarray(ref, dtype=float)
    return float(np.abs(got - ref).max() / np.abs(ref).max())


def compare(new: dict, old: dict) -> dict[str, float]:
    """Relative differences per configuration and quantity (see :func:`max_relative`)."""
    out = {}
    for name, ref in old["configurations"].items():
        got = new["configurations"][name]
        for key in ref:
            if key.startswith(("init_", "run_")):
                out[f"{name}.{key}"] = max_relative(got[key], ref[key])
    return out


def _dump(record: dict) -> str:
    header = ("# snapqeq golden reference: written by `python tests/golden/make_golden.py "
              "--write`;\n# checked by tests/test_golden.py against the ASE calculator, the "
              "LAMMPS plugin\n# (Python module) and `mpirun -np 2 lmp`.  Do not edit by "
              "hand.\n")
    return header + yaml.safe_dump(record, sort_keys=False, default_flow_style=None, width=100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true",
                        help="write golden_model.pt and reference.yaml")
    parser.add_argument("--force", action="store_true",
                        help="with --write: replace the existing files")
    args = parser.parse_args(argv)
    if args.force and not args.write:
        parser.error("--force only goes with --write")
    if args.write:
        present = [p.name for p in (MODEL, REFERENCE) if p.exists()]
        if present and not args.force:
            print(f"refusing to overwrite {', '.join(present)} in {HERE}: pass --force to "
                  "regenerate the golden reference", file=sys.stderr)
            return 1
        write_model(MODEL, overwrite=True)
        REFERENCE.write_text(_dump(reference(MODEL)))
        print(f"wrote {MODEL} and {REFERENCE}")
        return 0
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:  # the committed model vs one built afresh
        fresh = write_model(Path(tmp) / "model.pt", overwrite=False)
        for label, model in (("committed model", MODEL), ("model built afresh", fresh)):
            diffs = compare(reference(model), load_reference())
            worst = max(diffs, key=diffs.get)
            print(f"{label}: largest relative difference to {REFERENCE.name}: "
                  f"{diffs[worst]:.2e} ({worst})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

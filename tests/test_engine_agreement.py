"""The ASE calculator and the LAMMPS plugin agree at their *default* settings (issue 15).

Both take the Ewald parameters (beta, real-space and reciprocal cutoffs) from the one rule
of the C++ kernel (``snapqeq._electrostatics.ewald_parameters``) and the same physical
constants, so with the shipped 4G model (short-range network, adjoint solve) energies,
forces, stresses and charges agree to 1e-9 relative; what is left is the solver tolerance
(1e-10 relative residual on both sides).  Before the common rule (``ewald.py`` with
beta = sqrt(pi) (N/V^2)^(1/6), the kernel with 2.3 (N/V^2)^(1/6)) the forces of these cells
differed by ~3e-6 relative and the charges by ~2e-7 e.

The plugin is built and run as in tests/test_lammps_plugin.py (its fixtures and helpers).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from test_lammps_plugin import VOIGT_TO_LAMMPS, boundary_of, setup_commands, write_data

from snapqeq import SnapQEqCalculator
from snapqeq.lammps.plugin import load_plugin
from snapqeq.lammps.runtime import open_lammps

MODEL = Path(__file__).resolve().parents[1] / "examples" / "models" / "nacl_4g.pt"
RTOL = 1e-9
# the shipped model files predate the guard's descriptor ranges (a warning per calculator)
pytestmark = pytest.mark.filterwarnings("ignore:.*descriptor_range:UserWarning")


def rattled(repeat: int, periodic: bool, seed: int = 0) -> Atoms:
    """Rock-salt NaCl, 8 repeat^3 atoms, positions rattled by 0.1 Angstrom."""
    a = bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat(repeat)
    a.positions += np.random.default_rng(seed).normal(scale=0.1, size=a.positions.shape)
    if periodic:
        a.wrap()
        return a
    return Atoms(a.get_chemical_symbols(), positions=a.positions)


def plugin_defaults(atoms: Atoms, plugin: Path, tmp_path: Path, total_charge: float) -> dict:
    """``run 0`` with the pair style's default tol and ewald_accuracy; W = sum r (x) F."""
    data = write_data(tmp_path / "in.data", atoms)
    lmp = open_lammps()
    try:
        load_plugin(lmp, plugin)
        lmp.commands_list(setup_commands(data, MODEL, boundary_of(atoms), total_charge,
                                         tol=None, accuracy=None) + [
            "compute virial all pressure NULL virial",
            "thermo_style custom step pe c_virial[*]", "run 0"])
        n = lmp.extract_global("nlocal")
        pressure = np.array([lmp.extract_compute("virial", 0, 1)[k] for k in range(6)])
        return {"energy": lmp.get_thermo("pe"),
                "forces": lmp.numpy.extract_atom("f")[:n].copy(),
                "charges": lmp.numpy.extract_atom("q")[:n].copy(),
                "virial": pressure * lmp.get_thermo("vol") / lmp.extract_global("nktv2p")}
    finally:
        lmp.close()


@pytest.mark.parametrize(("repeat", "periodic", "total_charge"), [
    (2, True, 1.0),    # 64 atoms: dense solve with the direct Ewald sum
    (2, True, 0.0),
    (4, True, 1.0),    # 512 atoms: the C++ kernel's solver, as in the plugin
    (2, False, 1.0),   # 64-atom cluster, free boundaries
], ids=["periodic64+1", "periodic64", "periodic512+1", "cluster64+1"])
def test_calculator_and_plugin_agree_at_defaults(plugin, tmp_path, repeat, periodic,
                                                 total_charge):
    atoms = rattled(repeat, periodic)
    atoms.calc = SnapQEqCalculator(MODEL, total_charge=total_charge)
    energy, forces = atoms.get_potential_energy(), atoms.get_forces()
    charges = atoms.get_charges()
    got = plugin_defaults(atoms, plugin, tmp_path, total_charge)

    assert abs(energy - got["energy"]) <= RTOL * abs(got["energy"])
    assert np.abs(charges - got["charges"]).max() <= RTOL  # e
    assert abs(charges.sum() - total_charge) < 1e-10
    assert np.abs(forces - got["forces"]).max() <= RTOL * np.abs(got["forces"]).max()
    if periodic:
        virial = -atoms.get_stress() * atoms.get_volume()  # ASE Voigt -> W
        assert np.abs(virial[VOIGT_TO_LAMMPS] - got["virial"]).max() <= \
            RTOL * np.abs(got["virial"]).max()

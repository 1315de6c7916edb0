"""SnapQEqCalculator: exact derivatives, ASE conventions, invariances, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms, units
from ase.build import bulk
from ase.calculators.calculator import PropertyNotImplementedError
from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress
from ase.md.velocitydistribution import Stationary, ZeroRotation, thermalize_momenta
from ase.md.verlet import VelocityVerlet

from snapqeq import Bispectrum
from snapqeq.calculators.cent import SnapQEqCalculator
from snapqeq.datasets.clusters import nacl_cube
from snapqeq.models.cent import CENT
from snapqeq.training.data import make_sample
from snapqeq.training.export import export_model
from snapqeq.training.potential import predict

DESCRIPTOR = {"twojmax": 4, "rcutfac": 1.0, "radii": {"Na": 3.0, "Cl": 3.0},
              "weights": {"Na": 1.0, "Cl": 0.5}}


@pytest.fixture(scope="module", params=["cent", "4g"])
def model_file(request, tmp_path_factory):
    torch.manual_seed(1)
    bs = Bispectrum(**DESCRIPTOR)
    model = CENT(2, bs.n_components, [3, 3], [0.53, 1.06], [5.44, 2.72], [-1.0, -2.0],
                 chi_scale=2.0, short_hidden=[4] if request.param == "4g" else None)
    refs = [nacl(periodic=p, seed=s) for p in (True, False) for s in range(3)]
    model.set_feature_scaling(torch.tensor(np.concatenate([bs.compute(a) for a in refs])),
                              torch.tensor(np.concatenate([bs.species(a) for a in refs])))
    meta = bs.to_dict()
    path = export_model(model, ["Na", "Cl"], meta, tmp_path_factory.mktemp("m") / "model.pt")
    return path, model, bs


def nacl(periodic: bool, seed: int = 3, triclinic: bool = False) -> Atoms:
    atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True)
    if triclinic:
        atoms.set_cell(atoms.cell.array + np.array([[0, 0, 0], [0.6, 0, 0], [0.3, -0.4, 0]]),
                       scale_atoms=True)
    if not periodic:
        atoms.pbc = False
        atoms.cell = np.zeros((3, 3))
    atoms.rattle(0.08, seed=seed)
    return atoms


@pytest.mark.parametrize("periodic,triclinic,charge", [
    (False, False, 0.0), (False, False, 1.0), (True, False, 0.0), (True, True, 1.0)])
def test_forces_and_stress_are_exact_derivatives(model_file, periodic, triclinic, charge):
    path, model, bs = model_file
    atoms = nacl(periodic, triclinic=triclinic)
    atoms.info["charge"] = charge
    # tight Ewald truncation: the automatic splitting parameter follows the volume, so the
    # strain derivative of a truncated sum differs from the analytic stress at that level
    atoms.calc = SnapQEqCalculator(path, accuracy=1e-13)
    f = atoms.get_forces()
    fd = calculate_numerical_forces(atoms, 1e-5)
    assert np.abs(f - fd).max() < 1e-7 * max(1.0, np.abs(f).max())
    assert atoms.get_charges().sum() == pytest.approx(charge, abs=1e-10)
    assert atoms.get_potential_energies().sum() == pytest.approx(
        atoms.get_potential_energy(), rel=1e-12)
    if periodic:
        s = atoms.get_stress()
        sn = calculate_numerical_stress(atoms, 1e-6)
        assert np.abs(s - sn).max() < 1e-7 * max(1e-3, np.abs(s).max())
    else:
        with pytest.raises(PropertyNotImplementedError):
            atoms.get_stress()


def test_matches_training_path(model_file):
    path, model, bs = model_file
    atoms = nacl(False)
    atoms.info["charge"] = 2.0
    atoms.calc = SnapQEqCalculator(path)
    out = predict(model, make_sample(atoms, bs))
    assert atoms.get_potential_energy() == pytest.approx(float(out["energy"].detach()), rel=1e-12)
    assert np.allclose(atoms.get_forces(), out["forces"].detach().numpy(), atol=1e-10)
    assert np.allclose(atoms.get_charges(), out["charges"].detach().numpy(), atol=1e-10)


def test_invariances(model_file):
    path, *_ = model_file
    atoms = nacl(False)
    calc = SnapQEqCalculator(path)
    atoms.calc = calc
    e, f, q = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_charges()
    rot = atoms.copy()
    rot.rotate(37, (1, 2, 3), center="COM")
    rot.translate((0.3, -1.0, 2.0))
    rot.calc = SnapQEqCalculator(path)
    assert rot.get_potential_energy() == pytest.approx(e, rel=1e-11)
    r = rot.get_forces()
    rmat = np.linalg.lstsq(atoms.positions - atoms.positions.mean(0),
                           rot.positions - rot.positions.mean(0), rcond=None)[0]
    assert np.allclose(f @ rmat, r, atol=1e-9)
    perm = np.random.default_rng(0).permutation(len(atoms))
    p = atoms[perm]
    p.calc = SnapQEqCalculator(path)
    assert p.get_potential_energy() == pytest.approx(e, rel=1e-11)
    assert np.allclose(p.get_charges(), q[perm], atol=1e-10)
    assert np.abs(f.sum(0)).max() < 1e-9


def test_total_charge_sources_and_warm_start(model_file):
    path, *_ = model_file
    atoms = nacl(False)
    calc = SnapQEqCalculator(path)
    atoms.calc = calc
    assert atoms.get_charges().sum() == pytest.approx(0.0, abs=1e-10)
    atoms.set_initial_charges([1.0] + [0.0] * (len(atoms) - 1))
    atoms.calc = SnapQEqCalculator(path)
    assert atoms.get_charges().sum() == pytest.approx(1.0, abs=1e-10)
    atoms.info["charge"] = 2.0
    atoms.calc = SnapQEqCalculator(path)
    assert atoms.get_charges().sum() == pytest.approx(2.0, abs=1e-10)
    atoms.calc = SnapQEqCalculator(path, total_charge=-1.0)
    assert atoms.get_charges().sum() == pytest.approx(-1.0, abs=1e-10)
    e1 = atoms.get_potential_energy()
    copy = atoms.copy()
    copy.calc = atoms.calc
    copy.positions[0, 0] += 0.01
    assert copy.get_potential_energy() != e1
    atoms.calc.reset()
    assert atoms.get_potential_energy() == pytest.approx(e1, rel=1e-12)


def test_large_cell_uses_iterative_solver_and_agrees(model_file):
    path, *_ = model_file
    atoms = nacl(True).repeat((2, 2, 2))
    dense = SnapQEqCalculator(path, method="dense")
    cg = SnapQEqCalculator(path, method="cg", tol=1e-12)
    a1, a2 = atoms.copy(), atoms.copy()
    a1.calc, a2.calc = dense, cg
    assert a2.get_potential_energy() == pytest.approx(a1.get_potential_energy(), rel=1e-9)
    assert np.allclose(a1.get_forces(), a2.get_forces(), atol=1e-7)


def test_large_cluster_uses_the_kernel_solver_and_agrees(model_file):
    """Above DENSE_MAX_ATOMS["free"] a cluster's charges, electrostatic forces and (4G)
    adjoint term come from the C++ kernel: the same numbers as the dense path, forces
    still the derivative of the energy."""
    path, *_ = model_file
    atoms = nacl(True).repeat((4, 4, 3))  # 384 atoms
    atoms.pbc, atoms.cell = False, np.zeros((3, 3))
    atoms.info["charge"] = 1.0
    kernel = SnapQEqCalculator(path, tol=1e-12)
    dense = SnapQEqCalculator(path, method="dense")
    a1, a2 = atoms.copy(), atoms.copy()
    a1.calc, a2.calc = dense, kernel
    assert a2.get_potential_energy() == pytest.approx(a1.get_potential_energy(), rel=1e-11)
    assert np.allclose(a1.get_forces(), a2.get_forces(), atol=1e-8)
    assert np.allclose(a1.get_charges(), a2.get_charges(), atol=1e-10)
    some = [0, 77, 200]
    fd = np.array([[(_energy_at(a2, i, k, 1e-5) - _energy_at(a2, i, k, -1e-5)) / -2e-5
                    for k in range(3)] for i in some])
    assert np.abs(a2.get_forces()[some] - fd).max() < 1e-6


def _energy_at(atoms: Atoms, i: int, k: int, h: float) -> float:
    moved = atoms.copy()
    moved.positions[i, k] += h
    moved.calc = atoms.calc
    return moved.get_potential_energy()


def test_bad_input_gives_clear_errors(model_file, tmp_path):
    path, *_ = model_file
    calc = SnapQEqCalculator(path)
    kr = Atoms("NaKr", positions=[[0, 0, 0], [3, 0, 0]])
    kr.calc = calc
    with pytest.raises(ValueError, match="Kr"):
        kr.get_potential_energy()
    close = Atoms("NaCl", positions=[[0, 0, 0], [0.01, 0, 0]])
    close.calc = SnapQEqCalculator(path)
    with pytest.raises(ValueError, match="close|overlap|distance"):
        close.get_potential_energy()
    nan = nacl(False)
    nan.positions[2, 1] = np.nan
    nan.calc = SnapQEqCalculator(path)
    with pytest.raises(ValueError, match="finite"):
        nan.get_potential_energy()
    slab = nacl(True)
    slab.pbc = [True, True, False]
    slab.calc = SnapQEqCalculator(path)
    with pytest.raises(ValueError, match="mixed"):
        slab.get_potential_energy()
    with pytest.raises(ValueError, match="not found"):
        SnapQEqCalculator(tmp_path / "nothing.pt")


EXAMPLE_MODEL = Path(__file__).resolve().parents[1] / "examples" / "models" / "nacl_4g.pt"


def nve_energies(atoms: Atoms, timestep_fs: float, duration_fs: float) -> np.ndarray:
    """Total energy per atom (eV) every 5 steps of a VelocityVerlet run."""
    atoms.calc = SnapQEqCalculator(EXAMPLE_MODEL)
    dyn = VelocityVerlet(atoms, timestep=timestep_fs * units.fs)
    energies = []
    dyn.attach(lambda: energies.append(atoms.get_total_energy() / len(atoms)), interval=5)
    dyn.run(int(round(duration_fs / timestep_fs)))
    return np.asarray(energies)


@pytest.mark.slow
def test_nve_conserves_energy_on_a_64_atom_cluster():
    """VelocityVerlet with the GFN2-xTB-trained 4G example model on the 64-atom cube,
    velocities drawn at 600 K (it equilibrates near 420 K): the total energy fluctuates
    by O(dt^2) and drifts by < 0.5 meV/atom/ps at 1 fs (measured: 0.0035; 0.013 at 2 fs)."""
    start = nacl_cube(4)
    thermalize_momenta(start, 600.0, rng=np.random.default_rng(1))
    Stationary(start)
    ZeroRotation(start)
    spread = {}
    for dt in (2.0, 1.0):
        e = nve_energies(start.copy(), dt, 500.0)
        time_ps = np.arange(len(e)) * 5 * dt / 1000.0
        drift = np.polyfit(time_ps, e, 1)[0]
        spread[dt] = e.std()
        assert abs(drift) < 0.5e-3 * dt**2, (dt, drift)  # eV/atom/ps
        assert spread[dt] < 0.1e-3 * dt**2, (dt, spread[dt])
    # the error is the integrator's: it falls like dt^2 (ratio 4 expected)
    assert 2.5 < spread[2.0] / spread[1.0] < 6.0, spread


def test_refuses_geometries_far_outside_the_training_data():
    """The example model stores its training data's shortest distances (Na-Cl 2.10 Å)."""
    meta_min = SnapQEqCalculator(EXAMPLE_MODEL).model.metadata["min_distances"]
    assert meta_min["Na-Cl"] == pytest.approx(2.1, abs=0.01)
    dimer = Atoms("NaCl", positions=[[0, 0, 0], [0.9, 0, 0]])
    dimer.calc = SnapQEqCalculator(EXAMPLE_MODEL)
    with pytest.raises(ValueError, match=r"atoms 0 \(Na\) and 1 \(Cl\) are 0.900 Angstrom"):
        dimer.get_potential_energy()
    dimer.calc = SnapQEqCalculator(EXAMPLE_MODEL, min_distance_factor=0.0)
    assert np.isfinite(dimer.get_potential_energy())
    dimer.positions[1, 0] = 2.4
    dimer.calc = SnapQEqCalculator(EXAMPLE_MODEL)
    assert np.isfinite(dimer.get_potential_energy())


def test_cells_smaller_than_the_cutoffs_and_too_thin_cells():
    """A 2-atom primitive cell (4 Å vectors, cutoff 6.5 Å) is summed over images exactly;
    a flat cell is refused."""
    atoms = bulk("NaCl", "rocksalt", a=5.64)
    atoms.rattle(0.05, seed=2)
    atoms.calc = SnapQEqCalculator(EXAMPLE_MODEL)
    big = atoms.repeat((2, 2, 2))
    big.calc = SnapQEqCalculator(EXAMPLE_MODEL)
    # equal up to the Ewald truncation (accuracy 1e-6; each cell picks its own parameters)
    assert big.get_potential_energy() == pytest.approx(8 * atoms.get_potential_energy(),
                                                       rel=1e-7)
    np.testing.assert_allclose(calculate_numerical_forces(atoms, 1e-4), atoms.get_forces(),
                               atol=1e-5)
    flat = atoms.copy()
    flat.set_cell(np.diag([5.0, 5.0, 0.05]), scale_atoms=True)
    flat.calc = SnapQEqCalculator(EXAMPLE_MODEL, min_distance_factor=0.0)
    with pytest.raises(ValueError, match="thin|close|overlap|apart"):
        flat.get_potential_energy()


# ------------------------------------------------------------------------------ the guard
def _guard_cube(scale: float = 1.0) -> Atoms:
    atoms = nacl_cube(2, a=5.64)
    atoms.rattle(0.05, seed=10)
    atoms.positions *= scale
    return atoms


def test_guard_stops_too_close_pairs_and_warns_on_request(guarded_model):
    """Na and Cl 0.3 Å apart: below 0.5 x the 2.62 Å of the training data."""
    dimer = Atoms("NaCl", positions=[[0, 0, 0], [0.3, 0, 0]])
    dimer.calc = SnapQEqCalculator(guarded_model)
    with pytest.raises(ValueError, match=r"snapqeq guard: atoms 0 \(Na\) and 1 \(Cl\) are "
                       r"0.300 Angstrom apart, below 1.308 = min_distance_factor x 2.616"):
        dimer.get_potential_energy()
    dimer.calc = SnapQEqCalculator(guarded_model, guard="warn")
    with pytest.warns(UserWarning, match="are 0.300 Angstrom apart"):
        assert np.isfinite(dimer.get_potential_energy())


def test_guard_total_charge_outside_the_trained_range(guarded_model):
    """Trained on 0 and +1: +5 stops, +1.4 (within charge_margin 0.5 e) passes."""
    atoms = _guard_cube()
    atoms.calc = SnapQEqCalculator(guarded_model, total_charge=5)
    with pytest.raises(ValueError, match=r"total charge 5 e lies outside the trained range "
                       r"\[0, 1\] e by more than charge_margin 0.5 e"):
        atoms.get_potential_energy()
    atoms.calc = SnapQEqCalculator(guarded_model, total_charge=1.4)
    assert np.isfinite(atoms.get_potential_energy())
    atoms.calc = SnapQEqCalculator(guarded_model, total_charge=5, guard="warn")
    with pytest.warns(UserWarning, match="total charge 5 e"):
        atoms.get_potential_energy()


def test_guard_descriptor_extrapolation_warns_or_stops(guarded_model, recwarn):
    """A cube compressed to 0.8 leaves the bispectrum range of the training cubes: a
    warning by default, an error with guard='strict'; the uncompressed one passes."""
    atoms = _guard_cube()
    atoms.calc = SnapQEqCalculator(guarded_model, guard="strict")
    assert np.isfinite(atoms.get_potential_energy())
    squeezed = _guard_cube(0.8)
    squeezed.calc = SnapQEqCalculator(guarded_model, guard="strict")
    with pytest.raises(ValueError, match=r"atom \d+ \((Na|Cl)\) has bispectrum component \d+ "
                       r"= .*, outside its training range .* by more than descriptor_margin 1"):
        squeezed.get_potential_energy()
    squeezed.calc = SnapQEqCalculator(guarded_model)
    with pytest.warns(UserWarning, match="the model extrapolates there"):
        assert np.isfinite(squeezed.get_potential_energy())
    with pytest.raises(ValueError, match="guard must be one of stop, strict, warn"):
        SnapQEqCalculator(guarded_model, guard="ignore")


def test_guard_of_model_files_without_the_envelope_says_so():
    """The shipped example models record distances and trained total charges (0..+2), not
    bispectrum ranges: a warning says so; +5 e on a NaCl dimer stops."""
    with pytest.warns(UserWarning, match="has no descriptor_range \\(written by an older"):
        calc = SnapQEqCalculator(EXAMPLE_MODEL)
    assert calc.guard.checks_distances and not calc.guard.ranges
    dimer = Atoms("NaCl", positions=[[0, 0, 0], [2.4, 0, 0]])
    dimer.calc = SnapQEqCalculator(EXAMPLE_MODEL, total_charge=5)
    with pytest.raises(ValueError, match=r"total charge 5 e lies outside the trained range "
                       r"\[0, 2\] e"):
        dimer.get_potential_energy()


def test_empty_structure_is_refused():
    atoms = Atoms()
    atoms.calc = SnapQEqCalculator(EXAMPLE_MODEL)
    with pytest.raises(ValueError, match="no atoms"):
        atoms.get_potential_energy()

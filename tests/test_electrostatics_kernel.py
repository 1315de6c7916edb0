"""The C++ electrostatics kernel through its Cython binding (snapqeq._electrostatics).

The kernel (kernel/electrostatics.cpp) is what the LAMMPS plugin runs; here it is checked,
serially, against the torch implementation (snapqeq.electrostatics.ewald,
snapqeq.electrostatics.qeq), which its own
tests validate against finite differences and independent formulas: potentials, energies,
diagonal, forces and virial/stress of 1/2 a^T A b (also the bilinear a != b term), and the
constrained charge equilibration, for clusters and for orthorhombic and triclinic cells,
neutral and net-charged.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from conftest import assert_close

from snapqeq._electrostatics import GaussianElectrostatics, ewald_parameters, solve_qeq
from snapqeq.electrostatics import ewald
from snapqeq.electrostatics.ewald import Electrostatics
from snapqeq.electrostatics.qeq import equilibrate
from snapqeq.neighbors import build_pairs

RTOL = 1e-8
ACCURACY = 1e-13  # both implementations truncate far below RTOL
WIDTHS = {"Na": 0.53, "Cl": 1.06}
HARDNESS = {"Na": 5.4, "Cl": 2.7}


# -------------------------------------------------------------------------- structures
def _rattled(repeat, seed: int, scale: float = 0.1) -> Atoms:
    a = bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat(repeat)
    a.positions += np.random.default_rng(seed).normal(scale=scale, size=a.positions.shape)
    return a


def cluster(seed: int = 1) -> Atoms:
    a = _rattled((2, 1, 1), seed)
    return Atoms(a.get_chemical_symbols(), positions=a.positions)


def orthorhombic(seed: int = 2) -> Atoms:
    a = _rattled((2, 1, 1), seed)  # 11.28 x 5.64 x 5.64: images within the cutoff
    a.wrap()
    return a


def triclinic(seed: int = 3) -> Atoms:
    """A tilted cell that is not in LAMMPS form (a not along x)."""
    a = bulk("NaCl", "rocksalt", a=5.64, cubic=True)
    cell = a.cell.array.copy()
    cell[0, 1], cell[1, 0], cell[2, 0], cell[2, 1] = 0.3, 0.7, -0.4, 0.5
    a.set_cell(cell, scale_atoms=True)
    a.positions += np.random.default_rng(seed).normal(scale=0.1, size=a.positions.shape)
    a.wrap()
    return a


STRUCTURES = {"cluster": cluster, "orthorhombic": orthorhombic, "triclinic": triclinic}


def widths_of(atoms: Atoms) -> np.ndarray:
    return np.array([WIDTHS[s] for s in atoms.get_chemical_symbols()])


def hardness_of(atoms: Atoms) -> np.ndarray:
    return np.array([HARDNESS[s] for s in atoms.get_chemical_symbols()])


def charges(atoms: Atoms, total: float, seed: int = 5) -> np.ndarray:
    q = np.random.default_rng(seed).normal(scale=0.6, size=len(atoms))
    return q - q.mean() + total / len(atoms)


def kernel_of(atoms: Atoms, **kw) -> GaussianElectrostatics:
    cell = atoms.cell.array if atoms.pbc.all() else None
    return GaussianElectrostatics(atoms.positions, cell, widths_of(atoms), accuracy=ACCURACY,
                                  **kw)


def reference_of(atoms: Atoms) -> Electrostatics:
    return Electrostatics(atoms.positions, atoms.cell.array, atoms.pbc.all(), widths_of(atoms),
                          accuracy=ACCURACY, kspace="ewald")


def voigt(w: np.ndarray) -> np.ndarray:
    """3 x 3 -> ASE Voigt order xx yy zz yz xz xy."""
    return np.array([w[0, 0], w[1, 1], w[2, 2], w[1, 2], w[0, 2], w[0, 1]])


def reference_forces(ref: Electrostatics, atoms: Atoms, q: np.ndarray):
    """Energy, forces and virial W = sum r (x) F (3 x 3) of 1/2 q A q from
    snapqeq.electrostatics.ewald."""
    e, f, stress = ref.forces_stress(torch.tensor(q))
    f = f.numpy()
    if stress is not None:
        s = stress.numpy()
        w = -atoms.get_volume() * np.array([[s[0], s[5], s[4]], [s[5], s[1], s[3]],
                                             [s[4], s[3], s[2]]])
    else:  # free boundaries: pair forces, W = sum_i r_i (x) F_i
        w = atoms.positions.T @ f
        w = 0.5 * (w + w.T)
    return float(e), f, w


# ------------------------------------------------------------------------------ tests
@pytest.mark.parametrize("structure", sorted(STRUCTURES))
@pytest.mark.parametrize("total", [0.0, 1.0])
def test_potential_energy_diagonal(structure, total):
    atoms = STRUCTURES[structure]()
    es, ref = kernel_of(atoms), reference_of(atoms)
    q = charges(atoms, total)
    assert_close(es.apply(q), ref.potential(torch.tensor(q)).numpy(), rtol=RTOL, what="phi")
    assert abs(es.energy(q) - float(ref.energy(torch.tensor(q)))) < RTOL * abs(es.energy(q))
    assert_close(es.diagonal(), ref.diagonal().numpy(), rtol=RTOL, what="diagonal")
    # several vectors at once
    both = es.apply(np.stack([q, 2.0 * q]))
    assert_close(both[1], 2.0 * both[0], rtol=1e-13, what="linear")


@pytest.mark.parametrize("structure", sorted(STRUCTURES))
@pytest.mark.parametrize("total", [0.0, 1.0])
def test_forces_and_virial(structure, total):
    atoms = STRUCTURES[structure]()
    es, ref = kernel_of(atoms), reference_of(atoms)
    q = charges(atoms, total)
    e, f_ref, w_ref = reference_forces(ref, atoms, q)
    f, w, per_atom = es.forces(q, per_atom=True)
    assert abs(es.energy(q) - e) < RTOL * abs(e)
    assert_close(f, f_ref, rtol=RTOL, what="forces")
    assert np.abs(w - w_ref).max() < RTOL * np.abs(w_ref).max(), "virial"
    assert np.abs(per_atom.sum(0) - w).max() < 1e-12 * np.abs(w).max(), "per-atom virials"
    assert np.abs(f.sum(0)).max() < 1e-10 * np.abs(f).max(), "momentum"
    if atoms.pbc.all():  # the ASE stress convention
        _, _, stress = ref.forces_stress(torch.tensor(q))
        assert_close(voigt(-w / atoms.get_volume()), stress.numpy(), rtol=RTOL, floor=1e-6,
                     what="stress")


@pytest.mark.parametrize("structure", sorted(STRUCTURES))
def test_bilinear_forces(structure):
    """forces(a, b) is the gradient of 1/2 a^T A b: 1/2 [E(a+b) - E(a) - E(b)]."""
    atoms = STRUCTURES[structure]()
    es, ref = kernel_of(atoms), reference_of(atoms)
    a, b = charges(atoms, 1.0, seed=7), charges(atoms, -0.5, seed=8)
    parts = [reference_forces(ref, atoms, v) for v in (a + b, a, b)]
    f_ref = 0.5 * (parts[0][1] - parts[1][1] - parts[2][1])
    w_ref = 0.5 * (parts[0][2] - parts[1][2] - parts[2][2])
    f, w = es.forces(a, b)
    assert_close(f, f_ref, rtol=RTOL, what="bilinear forces")
    assert np.abs(w - w_ref).max() < RTOL * np.abs(w_ref).max()
    f2, w2 = es.forces(b, a)  # symmetric in a and b
    assert_close(f2, f, rtol=1e-12, what="forces(b, a)")
    assert np.abs(w2 - w).max() < 1e-12 * np.abs(w).max()


@pytest.mark.parametrize("structure", sorted(STRUCTURES))
@pytest.mark.parametrize("total", [0.0, 1.0, -2.0])
def test_charge_equilibration(structure, total):
    atoms = STRUCTURES[structure]()
    chi = np.random.default_rng(11).normal(scale=1.5, size=len(atoms))
    chi += np.where(np.array(atoms.get_chemical_symbols()) == "Na", -2.0, 2.0)
    es = kernel_of(atoms)
    q, mu, iterations, converged = solve_qeq(es, hardness_of(atoms), chi, total, tol=1e-12)
    ref = equilibrate(atoms, chi, hardness_of(atoms), widths_of(atoms), total_charge=total,
                      method="dense", tol=1e-13, accuracy=ACCURACY)
    assert converged and 0 < iterations < 100
    assert abs(q.sum() - total) < 1e-12
    assert_close(q, ref.charges, rtol=RTOL, floor=1e-3, what="charges")
    assert abs(mu - ref.chemical_potential) < RTOL * max(1.0, abs(mu))
    # the multiplier equalizes the electronegativity: J q + A q + chi = mu everywhere
    grad = hardness_of(atoms) * q + es.apply(q) + chi
    assert np.abs(grad - mu).max() < 1e-9 * np.abs(chi).max()
    # a warm start from the solution needs no iteration
    q2, _, it2, _ = solve_qeq(es, hardness_of(atoms), chi, total, initial=q, tol=1e-10)
    assert it2 == 0 and np.abs(q2 - q).max() < 1e-14


def test_solver_limits():
    atoms = orthorhombic()
    es = kernel_of(atoms)
    chi = np.linspace(-3.0, 3.0, len(atoms))
    q, _, iterations, converged = solve_qeq(es, hardness_of(atoms), chi, 0.0, tol=1e-14,
                                            maxiter=2)
    assert not converged and iterations == 2 and abs(q.sum()) < 1e-12
    with pytest.raises(ValueError, match="hardness"):
        solve_qeq(es, -hardness_of(atoms), chi)
    with pytest.raises(ValueError, match="chi"):
        solve_qeq(es, hardness_of(atoms), chi[:-1])


def test_pair_list_forms_agree():
    """Displacement vectors, integer shifts, full and half lists, the internal list."""
    atoms = triclinic()
    params = ewald_parameters(len(atoms), atoms.cell.array, widths_of(atoms), ACCURACY)
    pl = build_pairs(atoms.positions, atoms.cell.array, True, params["cutoff"] + 1.0)
    q = charges(atoms, 0.5)
    cell, w = atoms.cell.array, widths_of(atoms)
    variants = {
        "internal": GaussianElectrostatics(atoms.positions, cell, w, accuracy=ACCURACY),
        "vectors": GaussianElectrostatics(atoms.positions, cell, w, pl.i, pl.j, pl.rij,
                                          accuracy=ACCURACY),
        "shifts": GaussianElectrostatics(atoms.positions, cell, w, pl.i, pl.j,
                                         shifts=pl.shift, accuracy=ACCURACY),
    }
    # a half list: every pair (and every image of an atom with itself) once
    s0, s1, s2 = pl.shift.T
    positive = (s0 > 0) | ((s0 == 0) & ((s1 > 0) | ((s1 == 0) & (s2 > 0))))
    keep = (pl.i < pl.j) | ((pl.i == pl.j) & positive)
    variants["half"] = GaussianElectrostatics(atoms.positions, cell, w, pl.i[keep], pl.j[keep],
                                              pl.rij[keep], accuracy=ACCURACY, full_list=False)
    base = variants["internal"]
    phi, (f, vir) = base.apply(q), base.forces(q)
    for name, es in variants.items():
        assert es.cutoff == base.cutoff
        assert es.n_pairs == (base.n_pairs // 2 if name == "half" else base.n_pairs)
        assert_close(es.apply(q), phi, rtol=1e-12, what=f"phi ({name})")
        f2, vir2 = es.forces(q)
        assert_close(f2, f, rtol=1e-11, what=f"forces ({name})")
        assert np.abs(vir2 - vir).max() < 1e-11 * np.abs(vir).max()


def test_independent_of_splitting():
    """The Ewald sum does not depend on beta (here: the real-space cutoff)."""
    atoms = orthorhombic()
    q = charges(atoms, 1.0)
    results = []
    for cutoff in (None, 12.0, 16.0):
        es = kernel_of(atoms, cutoff=cutoff)
        results.append((es.beta, es.apply(q), es.forces(q)[0]))
    assert len({round(b, 12) for b, _, _ in results}) == 3
    for _, phi, f in results[1:]:
        assert_close(phi, results[0][1], rtol=RTOL, what="phi vs beta")
        assert_close(f, results[0][2], rtol=RTOL, what="forces vs beta")


def test_widths_of_every_atom_differ():
    """More distinct widths than tabulated kernels: direct evaluation, same physics."""
    atoms = orthorhombic()
    w = np.linspace(0.5, 1.1, len(atoms))
    es = GaussianElectrostatics(atoms.positions, atoms.cell.array, w, accuracy=ACCURACY)
    ref = Electrostatics(atoms.positions, atoms.cell.array, True, w, accuracy=ACCURACY,
                         kspace="ewald")
    q = charges(atoms, 0.0)
    assert_close(es.apply(q), ref.potential(torch.tensor(q)).numpy(), rtol=RTOL, what="phi")


def test_parameters_and_bad_input():
    atoms = orthorhombic()
    cell, w = atoms.cell.array, widths_of(atoms)
    p = ewald_parameters(len(atoms), cell, w, 1e-10)
    assert p["beta"] <= 1.0 / (np.sqrt(2.0) * w.max()) * (1 + 1e-12)
    # the same truncation rule as the torch implementation (for the same beta)
    py = ewald.ewald_parameters(cell, w, len(atoms), 1e-10, kspace="ewald", beta=p["beta"])
    assert p["cutoff"] == pytest.approx(py.cutoff, rel=1e-13)
    assert p["kcut"] == pytest.approx(py.kcut, rel=1e-13)
    fixed = ewald_parameters(len(atoms), cell, w, 1e-10, cutoff=20.0)
    assert fixed["cutoff"] == pytest.approx(20.0)
    with pytest.raises(ValueError, match="too short"):
        ewald_parameters(len(atoms), cell, w, 1e-10, cutoff=1.0)
    with pytest.raises(ValueError, match="accuracy"):
        ewald_parameters(len(atoms), cell, w, 2.0)
    with pytest.raises(ValueError, match="widths"):
        GaussianElectrostatics(atoms.positions, cell, -w)
    with pytest.raises(ValueError, match="singular"):
        GaussianElectrostatics(atoms.positions, np.zeros((3, 3)), w)
    with pytest.raises(ValueError, match="pair indices"):
        GaussianElectrostatics(atoms.positions, cell, w, [0], [len(atoms)], [[1.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match="vectors"):
        GaussianElectrostatics(atoms.positions, cell, w, [0], [1])
    es = GaussianElectrostatics(atoms.positions, cell, w)
    with pytest.raises(ValueError, match="shape"):
        es.apply(np.zeros(len(atoms) + 1))
    assert es.periodic and es.n_atoms == len(atoms) and es.n_kvectors > 0
    free = GaussianElectrostatics(atoms.positions, None, w)
    assert not free.periodic and free.beta is None and free.n_pairs == 0

"""Charge equilibration (snapqeq.electrostatics.qeq): constraint, optimality, dense vs CG,
Hellmann-Feynman forces and stress, derivatives of the torch layer (first and second
order), warm start, the cluster limit of a growing box, and input errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk

from snapqeq.electrostatics.ewald import COULOMB, Electrostatics
from snapqeq.electrostatics.qeq import (
    DENSE_MAX_ATOMS,
    ConstrainedSolver,
    QEqConvergenceError,
    QEqResult,
    _ScreeningPreconditioner,
    equilibrate,
    qeq_energy,
)

F64 = torch.float64
HARDNESS = {"Na": 5.44, "Cl": 2.72}  # 0.2 and 0.1 Ha/e^2 (SPEC §8)
WIDTHS = {"Na": 0.529, "Cl": 1.058}  # 1 and 2 bohr
MADELUNG_SC = 2.837297479480620


def rocksalt(reps=1, rattle=0.1, triclinic=True, seed=2) -> Atoms:
    atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat(reps)
    atoms.rattle(rattle, seed=seed)
    if triclinic:
        cell = atoms.cell.array.copy()
        cell[1] += 0.3 * cell[0]
        cell[2] += 0.2 * cell[1] - 0.1 * cell[0]
        atoms.set_cell(cell, scale_atoms=True)
    return atoms


def cluster(reps=1, rattle=0.15, seed=3) -> Atoms:
    atoms = rocksalt(reps, rattle, triclinic=False, seed=seed)
    atoms.pbc = False
    atoms.cell = np.zeros((3, 3))
    return atoms


def electronegativity(atoms: Atoms, seed=1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.where(atoms.numbers == 11, -2.0, 2.0) + 0.3 * rng.normal(size=len(atoms))


def per_atom(atoms: Atoms, table: dict) -> np.ndarray:
    return np.array([table[s] for s in atoms.get_chemical_symbols()])


def energy_of(atoms: Atoms, chi, total, **kw) -> float:
    return equilibrate(atoms, chi, HARDNESS, WIDTHS, total_charge=total, compute_forces=False,
                       **kw).energy


CASES = {
    "cluster": lambda: cluster(),
    "periodic": lambda: rocksalt(),
}


@pytest.mark.parametrize("case", ["cluster", "periodic"])
@pytest.mark.parametrize("method", ["dense", "cg"])
@pytest.mark.parametrize("total", [0.0, 1.0, -2.0])
def test_total_charge_and_equalization(case, method, total):
    atoms = CASES[case]()
    chi = electronegativity(atoms)
    res = equilibrate(atoms, chi, HARDNESS, WIDTHS, total_charge=total, method=method)
    assert isinstance(res, QEqResult)
    assert abs(res.charges.sum() - total) < 1e-12
    # electronegativity equalization: dU/dq_i = chi + J q + phi is the same on all atoms
    mu = chi + per_atom(atoms, HARDNESS) * res.charges + res.potential
    assert np.ptp(mu) < 1e-8
    assert res.chemical_potential == pytest.approx(mu.mean(), abs=1e-8)
    assert res.residual <= 1e-10
    assert (res.stress is None) == (case == "cluster")
    assert res.forces.shape == (len(atoms), 3)


@pytest.mark.parametrize("case", ["cluster", "periodic"])
@pytest.mark.parametrize("total", [0.0, 1.0])
def test_dense_and_cg_agree(case, total):
    atoms = CASES[case]()
    chi = electronegativity(atoms)
    dense = equilibrate(atoms, chi, HARDNESS, WIDTHS, total, method="dense")
    cg = equilibrate(atoms, chi, HARDNESS, WIDTHS, total, method="cg")
    np.testing.assert_allclose(cg.charges, dense.charges, atol=1e-8)
    assert cg.energy == pytest.approx(dense.energy, abs=1e-8)
    np.testing.assert_allclose(cg.forces, dense.forces, atol=1e-8)
    assert cg.iterations > 0 and dense.iterations == 0


@pytest.mark.parametrize("total", [0.0, 1.0, -2.0])
def test_kernel_solver_agrees_with_dense(total):
    """The C++ kernel's solver (method "kernel", the LAMMPS plugin's) gives the dense
    solution: charges, energy, potentials, forces, chemical potential; "auto" picks it for
    clusters above DENSE_MAX_ATOMS["free"] and not below."""
    atoms = cluster(reps=(4, 4, 3))  # 384 atoms
    assert len(atoms) > DENSE_MAX_ATOMS["free"]
    chi = electronegativity(atoms)
    dense = equilibrate(atoms, chi, HARDNESS, WIDTHS, total, method="dense")
    kernel = equilibrate(atoms, chi, HARDNESS, WIDTHS, total, method="kernel")
    assert kernel.method == "kernel" and kernel.iterations > 0
    assert kernel.residual <= 1e-10
    np.testing.assert_allclose(kernel.charges, dense.charges, atol=1e-9)
    assert kernel.energy == pytest.approx(dense.energy, rel=1e-11)
    np.testing.assert_allclose(kernel.potential, dense.potential, atol=1e-8)
    np.testing.assert_allclose(kernel.forces, dense.forces, atol=1e-8)
    assert kernel.chemical_potential == pytest.approx(dense.chemical_potential, abs=1e-8)
    assert equilibrate(atoms, chi, HARDNESS, WIDTHS, total).method == "kernel"
    small = cluster()
    assert equilibrate(small, electronegativity(small), HARDNESS, WIDTHS).method == "dense"


def test_kernel_solver_on_a_chain():
    """A linear cluster (extent ~0 across) keeps a small coarse level and the dense answer."""
    n = 300
    rng = np.random.default_rng(4)
    positions = np.zeros((n, 3))
    positions[:, 0] = 2.8 * np.arange(n)
    positions += rng.normal(scale=0.05, size=positions.shape)
    atoms = Atoms(["Na", "Cl"] * (n // 2), positions=positions)
    chi = electronegativity(atoms)
    dense = equilibrate(atoms, chi, HARDNESS, WIDTHS, 1.0, method="dense")
    kernel = equilibrate(atoms, chi, HARDNESS, WIDTHS, 1.0, method="kernel")
    np.testing.assert_allclose(kernel.charges, dense.charges, atol=1e-9)
    np.testing.assert_allclose(kernel.forces, dense.forces, atol=1e-8)
    assert kernel.iterations < 60


@pytest.mark.parametrize("total", [0.0, 1.0])
def test_kernel_solver_periodic_matches_dense(total):
    """Periodic cells through the C++ kernel: the Ewald parameters of the one rule, so
    charges, energy, forces and stress equal the dense torch solve to the solver tolerance."""
    atoms = rocksalt()
    chi = electronegativity(atoms)
    dense = equilibrate(atoms, chi, HARDNESS, WIDTHS, total, method="dense", tol=1e-12)
    kernel = equilibrate(atoms, chi, HARDNESS, WIDTHS, total, method="kernel", tol=1e-12)
    np.testing.assert_allclose(kernel.charges, dense.charges, rtol=0, atol=1e-11)
    assert abs(kernel.energy - dense.energy) < 1e-11 * abs(dense.energy)
    np.testing.assert_allclose(kernel.forces, dense.forces, rtol=0,
                               atol=1e-10 * np.abs(dense.forces).max())
    np.testing.assert_allclose(kernel.stress, dense.stress, rtol=0,
                               atol=1e-10 * np.abs(dense.stress).max())


def test_kernel_solver_errors():
    with pytest.raises(ValueError, match="mixed boundary"):
        atoms = rocksalt()
        atoms.pbc = [True, True, False]
        equilibrate(atoms, electronegativity(atoms), HARDNESS, WIDTHS, method="kernel")
    atoms = cluster(reps=(4, 4, 3))
    with pytest.raises(QEqConvergenceError, match="C\\+\\+ kernel"):
        equilibrate(atoms, electronegativity(atoms), HARDNESS, WIDTHS, method="kernel",
                    max_iter=2)
    atoms.positions[5] = atoms.positions[7]
    with pytest.raises(ValueError, match="overlap"):
        equilibrate(atoms, electronegativity(atoms), HARDNESS, WIDTHS, method="kernel")


@pytest.mark.parametrize("case", ["cluster", "periodic"])
@pytest.mark.parametrize("total", [0.0, 1.0])
def test_bordered_solution_is_constrained_minimum(case, total):
    """The bordered-system solution equals the minimiser of U on sum q = Q found
    independently (null-space parametrisation), and any feasible perturbation raises U."""
    atoms = CASES[case]()
    n = len(atoms)
    chi = electronegativity(atoms)
    res = equilibrate(atoms, chi, HARDNESS, WIDTHS, total, method="dense")
    es = Electrostatics(atoms.positions, atoms.cell.array, atoms.pbc,
                        per_atom(atoms, WIDTHS), kspace="ewald")
    a = es.matrix().numpy() + np.diag(per_atom(atoms, HARDNESS))

    def u(q):
        return chi @ q + 0.5 * q @ a @ q

    q0 = np.full(n, total / n)
    basis = np.linalg.svd(np.ones((1, n)))[2][1:].T  # orthonormal basis of sum = 0
    y = np.linalg.solve(basis.T @ a @ basis, -basis.T @ (chi + a @ q0))
    q_min = q0 + basis @ y
    np.testing.assert_allclose(res.charges, q_min, atol=1e-10)
    assert res.energy == pytest.approx(u(q_min), abs=1e-9)
    rng = np.random.default_rng(0)
    for _ in range(5):
        d = basis @ rng.normal(size=n - 1) * 1e-3
        assert u(res.charges + d) > u(res.charges)


def _fd_energy_forces(atoms, chi, total, idx, h=1e-5, **kw):
    out = np.zeros((len(idx), 3))
    for n, k in enumerate(idx):
        for d in range(3):
            vals = []
            for sign in (1, -1):
                other = atoms.copy()
                other.positions[k, d] += sign * h
                vals.append(energy_of(other, chi, total, **kw))
            out[n, d] = -(vals[0] - vals[1]) / (2 * h)
    return out


@pytest.mark.parametrize("case", ["cluster", "periodic"])
@pytest.mark.parametrize("total", [0.0, 1.0])
def test_forces_are_derivatives_of_equilibrated_energy(case, total):
    """Hellmann-Feynman: the forces at fixed charges are -dU(q*(r))/dr of the re-solved
    energy (finite differences re-equilibrate at each displaced geometry)."""
    atoms = CASES[case]()
    chi = electronegativity(atoms)
    kw = dict(method="dense", tol=1e-12, accuracy=1e-12)
    res = equilibrate(atoms, chi, HARDNESS, WIDTHS, total, **kw)
    idx = [0, 5]
    fd = _fd_energy_forces(atoms, chi, total, idx, **kw)
    np.testing.assert_allclose(res.forces[idx], fd, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("total", [0.0, 2.0])
def test_stress_is_strain_derivative_of_equilibrated_energy(total):
    atoms = rocksalt()
    chi = electronegativity(atoms)
    kw = dict(method="dense", tol=1e-12, accuracy=1e-12)
    res = equilibrate(atoms, chi, HARDNESS, WIDTHS, total, **kw)
    h = 1e-6
    voigt = [(0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)]
    fd = np.zeros(6)
    for v, (a, b) in enumerate(voigt):
        vals = []
        for sign in (1, -1):
            eps = np.zeros((3, 3))
            eps[a, b] += sign * h / 2
            eps[b, a] += sign * h / 2
            other = atoms.copy()
            other.set_cell(atoms.cell.array @ (np.eye(3) + eps), scale_atoms=True)
            vals.append(energy_of(other, chi, total, **kw))
        fd[v] = (vals[0] - vals[1]) / (2 * h) / atoms.get_volume()
    np.testing.assert_allclose(res.stress, fd, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("method", ["dense", "cg"])
@pytest.mark.parametrize("case", ["cluster", "periodic"])
def test_qeq_energy_derivatives(method, case):
    """qeq_energy is differentiable: dU/dchi = q, dU/dJ = q^2/2, dq/dchi, dq/dr, and the
    second derivatives used when training on forces (d^2U/dchi dr, and d^2q/dchi dr for a
    charge-dependent short-range energy), all against finite differences of re-solved
    charges."""
    atoms = CASES[case]()
    n = len(atoms)
    periodic = case == "periodic"
    pos0 = torch.tensor(atoms.positions)
    cell0 = torch.tensor(atoms.cell.array) if periodic else None
    chi0 = torch.tensor(electronegativity(atoms))
    hard = torch.tensor(per_atom(atoms, HARDNESS))
    wid = torch.tensor(per_atom(atoms, WIDTHS))
    weights = torch.tensor(np.random.default_rng(4).normal(size=n))
    kw = dict(total_charge=1.0, method=method, tol=1e-13, accuracy=1e-12)

    def solve(chi=chi0, pos=pos0, hardness=hard):
        return qeq_energy(chi, pos, cell0, periodic, hardness, wid, **kw)

    chi = chi0.clone().requires_grad_(True)
    pos = pos0.clone().requires_grad_(True)
    hj = hard.clone().requires_grad_(True)
    e, q = solve(chi, pos, hj)
    g_chi, g_pos, g_j = torch.autograd.grad(e, (chi, pos, hj), create_graph=True)
    assert torch.allclose(g_chi, q, atol=1e-12)
    assert torch.allclose(g_j, 0.5 * q * q, atol=1e-12)
    res = equilibrate(atoms, chi0.numpy(), HARDNESS, WIDTHS, 1.0, method=method, tol=1e-13,
                      accuracy=1e-12)
    assert float(e.detach()) == pytest.approx(res.energy, abs=1e-9)
    np.testing.assert_allclose(-g_pos.detach().numpy(), res.forces, atol=1e-9)

    h = 1e-5
    j, k = 3, 1
    chi_p, chi_m = chi0.clone(), chi0.clone()
    chi_p[j] += h
    chi_m[j] -= h
    pos_p, pos_m = pos0.clone(), pos0.clone()
    pos_p[k, 0] += h
    pos_m[k, 0] -= h
    # dq/dchi_j and d(w.q)/dr_k
    dq = torch.autograd.grad(q @ weights, chi, retain_graph=True)[0][j]
    fd = (solve(chi=chi_p)[1] - solve(chi=chi_m)[1]) @ weights / (2 * h)
    assert float(dq) == pytest.approx(float(fd), rel=1e-6, abs=1e-9)
    g_wq = torch.autograd.grad(q @ weights, pos, create_graph=True)[0]
    fd = (solve(pos=pos_p)[1] - solve(pos=pos_m)[1]) @ weights / (2 * h)
    assert float(g_wq[k, 0].detach()) == pytest.approx(float(fd), rel=1e-6, abs=1e-9)

    def force_x(chi_v, what):
        p = pos0.clone().requires_grad_(True)
        e_v, q_v = qeq_energy(chi_v, p, cell0, periodic, hard, wid, **kw)
        target = e_v if what == "energy" else q_v @ weights
        return float(torch.autograd.grad(target, p)[0][k, 0])

    # d^2 U / dchi_j dr_k (training on forces) and d^2 (w.q) / dchi_j dr_k
    d2e = torch.autograd.grad(g_pos[k, 0], chi, retain_graph=True)[0][j]
    fd = (force_x(chi_p, "energy") - force_x(chi_m, "energy")) / (2 * h)
    assert float(d2e) == pytest.approx(fd, rel=1e-5, abs=1e-9)
    d2q = torch.autograd.grad(g_wq[k, 0], chi, retain_graph=True)[0][j]
    fd = (force_x(chi_p, "charges") - force_x(chi_m, "charges")) / (2 * h)
    assert float(d2q) == pytest.approx(fd, rel=1e-5, abs=1e-9)


def test_qeq_energy_stress_via_strain():
    atoms = rocksalt()
    pos0 = torch.tensor(atoms.positions)
    cell0 = torch.tensor(atoms.cell.array)
    chi = torch.tensor(electronegativity(atoms))
    hard = torch.tensor(per_atom(atoms, HARDNESS))
    wid = torch.tensor(per_atom(atoms, WIDTHS))
    strain = torch.zeros(3, 3, dtype=F64, requires_grad=True)
    deform = torch.eye(3, dtype=F64) + strain
    e, _ = qeq_energy(chi, pos0 @ deform, cell0 @ deform, True, hard, wid, total_charge=-1.0,
                      accuracy=1e-12, tol=1e-12)
    (g,) = torch.autograd.grad(e, strain)
    g = 0.5 * (g + g.T) / atoms.get_volume()
    res = equilibrate(atoms, chi.numpy(), HARDNESS, WIDTHS, -1.0, accuracy=1e-12, tol=1e-12)
    voigt = torch.stack([g[0, 0], g[1, 1], g[2, 2], g[1, 2], g[0, 2], g[0, 1]])
    np.testing.assert_allclose(voigt.numpy(), res.stress, atol=1e-10)


def test_qeq_energy_without_grad_is_plain_solve():
    atoms = cluster()
    chi = torch.tensor(electronegativity(atoms))
    with torch.no_grad():
        e, q = qeq_energy(chi, torch.tensor(atoms.positions), None, False,
                          torch.tensor(per_atom(atoms, HARDNESS)),
                          torch.tensor(per_atom(atoms, WIDTHS)))
    res = equilibrate(atoms, chi.numpy(), HARDNESS, WIDTHS)
    assert float(e) == pytest.approx(res.energy, abs=1e-10)
    np.testing.assert_allclose(q.numpy(), res.charges, atol=1e-12)


def test_warm_start():
    """A warm start (charges of a slightly different geometry) converges to the same charges
    in fewer iterations; initial charges with the wrong total are shifted onto sum q = Q."""
    atoms = rocksalt(reps=2, rattle=0.05, triclinic=False)
    chi = electronegativity(atoms)
    cold = equilibrate(atoms, chi, HARDNESS, WIDTHS, 1.0, method="cg", tol=1e-8)
    moved = atoms.copy()
    moved.rattle(0.005, seed=9)
    ref = equilibrate(moved, chi, HARDNESS, WIDTHS, 1.0, method="cg", tol=1e-8)
    warm = equilibrate(moved, chi, HARDNESS, WIDTHS, 1.0, method="cg", tol=1e-8,
                       initial_charges=cold.charges + 0.3)
    assert abs(warm.charges.sum() - 1.0) < 1e-12
    np.testing.assert_allclose(warm.charges, ref.charges, atol=1e-7)
    assert warm.iterations < ref.iterations


def test_cg_iterations_stay_flat_with_size():
    """The screening preconditioner keeps the CG iteration count (nearly) independent of
    the cell size, where plain Jacobi needs O(N^(1/3)) iterations."""
    iters, jacobi = [], []
    for reps in (2, 4):
        atoms = rocksalt(reps=reps, rattle=0.05, triclinic=False)
        chi = torch.tensor(electronegativity(atoms))
        es = Electrostatics(atoms.positions, atoms.cell.array, True, per_atom(atoms, WIDTHS))
        solver = ConstrainedSolver(es, torch.tensor(per_atom(atoms, HARDNESS)), "cg", 1e-10)
        iters.append(solver.solve(-chi, 0.0).iterations)
        solver._precondition = solver._jacobi
        jacobi.append(solver.solve(-chi, 0.0).iterations)
    assert max(iters) <= 16
    assert jacobi[1] > 1.5 * iters[1]
    assert jacobi[1] - jacobi[0] > iters[1] - iters[0]


@pytest.mark.parametrize("shape", ["bulk", "cluster_in_box"])
def test_screening_preconditioner_is_positive_definite(shape):
    atoms = rocksalt(reps=2, rattle=0.3)
    if shape == "cluster_in_box":
        atoms.set_cell(np.eye(3) * 30.0)
        atoms.center()
    n = len(atoms)
    es = Electrostatics(atoms.positions, atoms.cell.array, True, per_atom(atoms, WIDTHS))
    hard = torch.tensor(per_atom(atoms, HARDNESS))
    pre = _ScreeningPreconditioner(es, 1.0 / (hard + es.diagonal()))
    proj = torch.eye(n, dtype=F64) - 1.0 / n
    m = torch.stack([pre(proj[:, i].clone()) for i in range(n)], dim=1)
    assert torch.allclose(m, m.T, atol=1e-14)
    basis = torch.linalg.svd(torch.ones(1, n, dtype=F64))[2][1:].T
    assert float(torch.linalg.eigvalsh(basis.T @ m @ basis)[0]) > 0.0


def test_cluster_limit_of_growing_box():
    """Equilibrated charges of a cluster in a cubic box of side L: U(L) approaches the
    free-BC result as U_free - alpha_M k_e Q^2 / (2L) + (2 pi k_e / 3 L^3)(Q M2 - D^2)
    + O(L^-5) (see tests/test_ewald.py::test_cluster_in_growing_box for the terms). The
    charges relax only at O(L^-3) (the uniform Makov-Payne shift does not move them), and
    U is stationary in q, so the correction evaluated with the free-BC charges is exact to
    that order; the relaxation adds O(L^-6)."""
    free = cluster(rattle=0.2)
    chi = electronegativity(free)
    w = per_atom(free, WIDTHS)
    for total in (0.0, 1.0):
        ref = equilibrate(free, chi, HARDNESS, WIDTHS, total)
        q = ref.charges
        c = free.positions.mean(0)
        dipole = (q[:, None] * (free.positions - c)).sum(0)
        m2 = float((q * (((free.positions - c) ** 2).sum(1) + 1.5 * w**2)).sum())
        resid, dq = {}, {}
        for side in (40.0, 80.0):
            boxed = free.copy()
            boxed.set_cell(np.eye(3) * side)
            boxed.center()
            boxed.pbc = True
            res = equilibrate(boxed, chi, HARDNESS, WIDTHS, total, accuracy=1e-12)
            resid[side] = (res.energy - ref.energy + MADELUNG_SC * COULOMB * total**2
                           / (2 * side) - 2 * math.pi * COULOMB / (3 * side**3)
                           * (total * m2 - dipole @ dipole))
            dq[side] = np.abs(res.charges - q).max()
        assert abs(resid[80.0]) < abs(resid[40.0]) / 2**4
        assert dq[80.0] < dq[40.0] / 2**2.5


def test_per_element_and_scalar_parameters():
    atoms = cluster()
    chi = electronegativity(atoms)
    a = equilibrate(atoms, chi, HARDNESS, WIDTHS)
    b = equilibrate(atoms, chi, per_atom(atoms, HARDNESS), per_atom(atoms, WIDTHS))
    np.testing.assert_allclose(a.charges, b.charges, atol=1e-14)
    c = equilibrate(atoms, chi, 4.0, 0.8)  # one value for all atoms
    assert abs(c.charges.sum()) < 1e-12


def test_single_atom():
    for pbc in (False, True):
        atoms = Atoms("Na", positions=[[0.5, 0.5, 0.5]], cell=np.eye(3) * 4.0, pbc=pbc)
        res = equilibrate(atoms, [1.0], HARDNESS, WIDTHS, total_charge=1.0)
        assert res.charges[0] == pytest.approx(1.0, abs=1e-14)
        assert np.isfinite(res.energy)


def test_empty_structure():
    res = equilibrate(Atoms(), [], HARDNESS, WIDTHS)
    assert res.charges.shape == (0,) and res.energy == 0.0


def test_convergence_failure_raises():
    atoms = rocksalt(reps=2)
    with pytest.raises(QEqConvergenceError, match="did not converge"):
        equilibrate(atoms, electronegativity(atoms), HARDNESS, WIDTHS, method="cg", max_iter=2)
    assert issubclass(QEqConvergenceError, RuntimeError)


def test_bad_input():
    atoms = cluster()
    n = len(atoms)
    chi = electronegativity(atoms)
    with pytest.raises(ValueError, match="hardness"):
        equilibrate(atoms, chi, {"Na": 5.0, "Cl": -1.0}, WIDTHS)
    with pytest.raises(ValueError, match="hardness"):
        equilibrate(atoms, chi, {"Na": 5.0, "Cl": 0.0}, WIDTHS)
    with pytest.raises(ValueError, match="widths"):
        equilibrate(atoms, chi, HARDNESS, {"Na": 0.5, "Cl": 0.0})
    with pytest.raises(ValueError, match="no value for element"):
        equilibrate(atoms, chi, {"Na": 5.0}, WIDTHS)
    with pytest.raises(ValueError, match="chi"):
        bad = chi.copy()
        bad[2] = np.nan
        equilibrate(atoms, bad, HARDNESS, WIDTHS)
    with pytest.raises(ValueError, match="one value per atom"):
        equilibrate(atoms, chi[:-1], HARDNESS, WIDTHS)
    with pytest.raises(ValueError, match="total_charge"):
        equilibrate(atoms, chi, HARDNESS, WIDTHS, total_charge=np.inf)
    with pytest.raises(ValueError, match="method"):
        equilibrate(atoms, chi, HARDNESS, WIDTHS, method="lu")
    with pytest.raises(ValueError, match="tol"):
        equilibrate(atoms, chi, HARDNESS, WIDTHS, tol=0.0)
    with pytest.raises(ValueError, match="initial_charges"):
        equilibrate(atoms, chi, HARDNESS, WIDTHS, method="cg", initial_charges=np.full(n, np.nan))
    moved = atoms.copy()
    moved.positions[1] = moved.positions[0] + [0.05, 0.0, 0.0]
    with pytest.raises(ValueError, match="overlapping"):
        equilibrate(moved, chi, HARDNESS, WIDTHS)
    moved = atoms.copy()
    moved.positions[1, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite positions"):
        equilibrate(moved, chi, HARDNESS, WIDTHS)
    slab = rocksalt()
    slab.pbc = [True, True, False]
    with pytest.raises(ValueError, match="mixed boundary"):
        equilibrate(slab, electronegativity(slab), HARDNESS, WIDTHS)
    with pytest.raises(ValueError, match="hardness"):
        qeq_energy(torch.tensor(chi), torch.tensor(atoms.positions), None, False,
                   torch.zeros(n, dtype=F64), torch.ones(n, dtype=F64))


def test_solver_rejects_non_positive_definite_operator():
    """A (forced) negative hardness makes the QEq matrix indefinite: CG stops with a clear
    error instead of returning wrong charges."""
    atoms = rocksalt()
    es = Electrostatics(atoms.positions, atoms.cell.array, True, per_atom(atoms, WIDTHS))
    hard = torch.full((len(atoms),), -30.0, dtype=F64)
    with pytest.raises((QEqConvergenceError, ValueError)):
        ConstrainedSolver(es, hard, "cg", 1e-10).solve(
            -torch.tensor(electronegativity(atoms)), 0.0)

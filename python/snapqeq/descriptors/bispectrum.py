"""SNAP bispectrum descriptors, numerically identical to LAMMPS ``compute sna/atom``.

Parameters, defaults and column order follow LAMMPS (ML-SNAP).  Lengths in Angstrom.
The numerical work is done by the C++ kernel (``kernel/sna.cpp``) through the Cython
extension ``snapqeq._sna``; this module builds neighbour lists and assembles results.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from ase import Atoms

from snapqeq._sna import SNAKernel, accumulate_pair_forces
from snapqeq.io.snap_files import SNA_DEFAULTS, read_snapcoeff, read_snapparam
from snapqeq.neighbors import PairList, build_pairs, check_geometry, csr_offsets

VOIGT = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))  # xx yy zz yz xz xy
#: Keys of :meth:`Bispectrum.to_dict` (LAMMPS ``compute sna/atom`` keyword names).
DICT_KEYS = ("twojmax", "rcutfac", "radii", "weights", "rfac0", "rmin0", "switchflag",
             "bzeroflag", "quadraticflag", "chemflag", "bnormflag", "wselfallflag",
             "switchinnerflag", "sinner", "dinner")


@dataclass(frozen=True)
class BispectrumGradients:
    """Derivatives of the bispectrum components.

    Attributes
    ----------
    i, j : (P,) int64
        Unique (central site, atom) pairs, sorted by i; includes i == j.
    dB : (P, K, 3)
        dB_i/dr_j in 1/Angstrom (summed over the periodic images of j).
    virial : (N, K, 6)
        Per-atom virial contributions in the layout of LAMMPS ``compute snav/atom``
        (one block, not split by type): atom a receives +dB_i/dr_ij (x) r_i from each pair
        where it is the centre and -dB_i/dr_ij (x) r_j' where it is the neighbour image j'
        (positions as given, images unwrapped).  Voigt order xx yy zz yz xz xy with
        component (a, b) = dB_a * r_b.  Summed over atoms it is -sum_pairs dB (x) rij.
    """

    i: np.ndarray
    j: np.ndarray
    dB: np.ndarray
    virial: np.ndarray


def _element_dict(name: str, values, elements=None) -> dict[str, float]:
    if not isinstance(values, dict) or not values:
        raise ValueError(f"{name} must be a non-empty dict element symbol -> value")
    out = {str(k): float(v) for k, v in values.items()}
    if elements is not None and list(out) != list(elements):
        if set(out) != set(elements):
            raise ValueError(f"{name} must have the same elements as radii: {list(elements)}")
        out = {e: out[e] for e in elements}
    for k, v in out.items():
        if not math.isfinite(v):
            raise ValueError(f"{name}[{k!r}] is not finite")
    return out


class Bispectrum:
    """Bispectrum components of LAMMPS ``compute sna/atom``.

    Parameters
    ----------
    twojmax : int
        Band limit 2*J_max (>= 0).
    rcutfac : float
        Scale factor of the pair cutoff R_ij = rcutfac * (R_i + R_j).
    radii, weights : dict
        Per-element radius R (Angstrom) and neighbour weight w.  The order of the keys is
        the element order: LAMMPS atom types 1, 2, ... and the chem block order.
    rfac0, rmin0, switchflag, bzeroflag, quadraticflag, chemflag, bnormflag,
    wselfallflag, switchinnerflag
        As in LAMMPS.  ``bnormflag`` defaults to False here as in ``compute sna/atom``.
    sinner, dinner : dict, optional
        Per-element centre and half-width (Angstrom) of the inner switching function,
        required with ``switchinnerflag``; a pair uses the mean of its two elements.
    """

    def __init__(
        self,
        twojmax: int,
        rcutfac: float,
        radii: dict[str, float],
        weights: dict[str, float],
        *,
        rfac0: float = SNA_DEFAULTS["rfac0"],
        rmin0: float = SNA_DEFAULTS["rmin0"],
        switchflag: bool = SNA_DEFAULTS["switchflag"],
        bzeroflag: bool = SNA_DEFAULTS["bzeroflag"],
        quadraticflag: bool = SNA_DEFAULTS["quadraticflag"],
        chemflag: bool = SNA_DEFAULTS["chemflag"],
        bnormflag: bool = SNA_DEFAULTS["bnormflag"],
        wselfallflag: bool = SNA_DEFAULTS["wselfallflag"],
        switchinnerflag: bool = SNA_DEFAULTS["switchinnerflag"],
        sinner: dict[str, float] | None = None,
        dinner: dict[str, float] | None = None,
    ):
        if isinstance(twojmax, bool) or int(twojmax) != twojmax or twojmax < 0:
            raise ValueError(f"twojmax must be a non-negative integer, got {twojmax!r}")
        if not (math.isfinite(rcutfac) and rcutfac > 0):
            raise ValueError(f"rcutfac must be positive, got {rcutfac!r}")
        if not (0.0 < rfac0 <= 1.0):
            raise ValueError(f"rfac0 must lie in (0, 1], got {rfac0!r}")
        radii = _element_dict("radii", radii)
        self.elements: tuple[str, ...] = tuple(radii)
        weights = _element_dict("weights", weights, self.elements)
        for e, r in radii.items():
            if r <= 0:
                raise ValueError(f"radius of {e} must be positive, got {r}")
        if not (0.0 <= rmin0 < 2 * rcutfac * min(radii.values())):
            raise ValueError(f"rmin0 must lie in [0, smallest pair cutoff), got {rmin0!r}")
        if switchinnerflag:
            if sinner is None or dinner is None:
                raise ValueError("switchinnerflag needs sinner and dinner dicts per element")
            sinner = _element_dict("sinner", sinner, self.elements)
            dinner = _element_dict("dinner", dinner, self.elements)
            if any(v <= 0 for v in dinner.values()) or any(v < 0 for v in sinner.values()):
                raise ValueError("sinner must be >= 0 and dinner > 0")
        self.params = dict(
            twojmax=int(twojmax), rcutfac=float(rcutfac), rfac0=float(rfac0),
            rmin0=float(rmin0), switchflag=bool(switchflag), bzeroflag=bool(bzeroflag),
            quadraticflag=bool(quadraticflag), chemflag=bool(chemflag),
            bnormflag=bool(bnormflag), wselfallflag=bool(wselfallflag),
            switchinnerflag=bool(switchinnerflag),
        )
        self.radii = radii
        self.weights = weights
        self.sinner = sinner
        self.dinner = dinner
        nelem = len(self.elements) if chemflag else 1
        self._kernel = SNAKernel(int(twojmax), float(rfac0), float(rmin0), bool(switchflag),
                                 bool(bzeroflag), bool(chemflag), bool(bnormflag),
                                 bool(wselfallflag), bool(switchinnerflag), nelem)
        self.n_linear: int = self._kernel.ncoeff
        k = self.n_linear
        self.n_components: int = k + (k * (k + 1) // 2 if quadraticflag else 0)
        self._r = np.array([radii[e] for e in self.elements])
        self._w = np.array([weights[e] for e in self.elements])
        self._si = np.array([sinner[e] for e in self.elements]) if switchinnerflag else None
        self._di = np.array([dinner[e] for e in self.elements]) if switchinnerflag else None
        self._triu = np.triu_indices(k)

    # ------------------------------------------------------------------ basics
    def __repr__(self) -> str:
        flags = ", ".join(f"{k}={v}" for k, v in self.params.items())
        return f"Bispectrum(elements={self.elements}, {flags})"

    @property
    def cutoff(self) -> float:
        """Largest pair cutoff (Angstrom)."""
        return 2.0 * self.params["rcutfac"] * float(self._r.max())

    def triples(self) -> np.ndarray:
        """(j1, j2, j) (doubled) of each linear component of one element block."""
        return self._kernel.triples()

    def species(self, atoms: Atoms) -> np.ndarray:
        """Element index of every atom (position in ``self.elements``)."""
        index = {e: k for k, e in enumerate(self.elements)}
        symbols = atoms.get_chemical_symbols()
        unknown = sorted(set(symbols) - set(index))
        if unknown:
            raise ValueError(
                f"atoms contain elements {unknown} that this descriptor does not know; "
                f"known elements: {list(self.elements)}"
            )
        return np.fromiter((index[s] for s in symbols), dtype=np.int64, count=len(symbols))

    # ------------------------------------------------------------ neighbours
    def pair_arguments(self, atoms: Atoms) -> tuple[PairList, dict]:
        """The pairs inside their element-pair cutoff (Angstrom) and the keyword arguments of
        the C++ kernel's calls for them (for :meth:`pair_forces` and the ``snapqeq._sna``
        functions)."""
        species = self.species(atoms)
        pairs = build_pairs(atoms.positions, atoms.cell.array, atoms.pbc, self.cutoff)
        si, sj = species[pairs.i], species[pairs.j]
        rcut = self.params["rcutfac"] * (self._r[si] + self._r[sj])
        rsq = np.einsum("pk,pk->p", pairs.rij, pairs.rij)
        keep = rsq < rcut * rcut
        if not np.all(keep):
            pairs = pairs.select(keep, len(atoms))
            si, sj, rcut = si[keep], sj[keep], rcut[keep]
        args = self._kernel_args(pairs.offsets, species, pairs.rij, rcut, sj, si)
        return pairs, args

    def _kernel_args(self, offsets, center_species, rij, rcut, sj, si_pair) -> dict:
        chem = self.params["chemflag"]
        empty = np.zeros(0)
        if self.params["switchinnerflag"]:
            sinner = 0.5 * (self._si[si_pair] + self._si[sj])
            dinner = 0.5 * (self._di[si_pair] + self._di[sj])
        else:
            sinner = dinner = empty
        return dict(
            offsets=np.ascontiguousarray(offsets, dtype=np.int64),
            ielem=np.ascontiguousarray(center_species if chem else
                                       np.zeros(len(center_species)), dtype=np.int32),
            rij=np.ascontiguousarray(rij, dtype=np.float64),
            rcut=np.ascontiguousarray(rcut, dtype=np.float64),
            wj=np.ascontiguousarray(self._w[sj], dtype=np.float64),
            elem=np.ascontiguousarray(sj if chem else np.zeros(len(sj)), dtype=np.int32),
            sinner=np.ascontiguousarray(sinner, dtype=np.float64),
            dinner=np.ascontiguousarray(dinner, dtype=np.float64),
        )

    # ----------------------------------------------------------- descriptors
    def with_quadratic(self, b: np.ndarray) -> np.ndarray:
        """Linear components (N, n_linear) extended by the quadratic ones B_a B_c (a < c) and
        B_a^2 / 2 when ``quadraticflag`` is set (LAMMPS' order); unchanged otherwise."""
        if not self.params["quadraticflag"]:
            return b
        a, c = self._triu
        quad = b[:, a] * b[:, c]
        quad[:, a == c] *= 0.5
        return np.concatenate([b, quad], axis=1)

    def compute(self, atoms: Atoms) -> np.ndarray:
        """Bispectrum components of every atom, shape (N, n_components)."""
        _, args = self.pair_arguments(atoms)
        return self.with_quadratic(self._kernel.bispectrum(**args))

    def compute_linear_with_pairs(self, atoms: Atoms) -> tuple[np.ndarray, PairList, dict]:
        """Linear components (N, n_linear) plus the pair list and kernel arguments.

        For models that evaluate B and then forces for the same structure without
        rebuilding the neighbour list (see :meth:`pair_forces`).
        """
        pairs, args = self.pair_arguments(atoms)
        return self._kernel.bispectrum(**args), pairs, args

    def compute_grid(self, atoms: Atoms, points: np.ndarray) -> np.ndarray:
        """Bispectrum components at arbitrary points, shape (M, n_components).

        LAMMPS ``compute sna/grid`` semantics: each point is a central site of the first
        element; a neighbour atom of element e counts within 2 * rcutfac * R_e with weight
        w_e (so for one element a point on an atom reproduces that atom's B).
        """
        points = np.atleast_2d(np.asarray(points, dtype=np.float64))
        if points.ndim != 2 or points.shape[1] != 3:
            raise ValueError("points must have shape (M, 3)")
        if not np.all(np.isfinite(points)):
            raise ValueError("grid points must be finite")
        species = self.species(atoms)
        check_geometry(atoms.positions, atoms.cell.array, np.asarray(atoms.pbc))
        m = len(points)
        combined = np.concatenate([points, atoms.positions])
        pairs = build_pairs(combined, atoms.cell.array, atoms.pbc, self.cutoff)
        keep = (pairs.i < m) & (pairs.j >= m)
        i, j, rij = pairs.i[keep], pairs.j[keep] - m, pairs.rij[keep]
        sj = species[j]
        rcut = 2.0 * self.params["rcutfac"] * self._r[sj]
        inside = np.einsum("pk,pk->p", rij, rij) < rcut * rcut
        i, sj, rij, rcut = i[inside], sj[inside], rij[inside], rcut[inside]
        args = self._kernel_args(csr_offsets(i, m), np.zeros(m, np.int64), rij, rcut, sj, sj)
        return self.with_quadratic(self._kernel.bispectrum(**args))

    # ----------------------------------------------------------- derivatives
    def effective_beta(self, beta: np.ndarray, b_linear: np.ndarray | None) -> np.ndarray:
        """Per-atom weights on the linear components (N, n_linear) with the same first
        derivative as sum_i beta_i . [B_i, quad(B_i)] at ``b_linear`` (units of beta: eV
        for an energy); ``beta`` itself without quadratic components."""
        k = self.n_linear
        if not self.params["quadraticflag"]:
            return beta
        a, c = self._triu
        bq = beta[:, k:]
        eff = beta[:, :k].copy()
        # d(B_a B_c)/dB = B_c e_a + B_a e_c, and d(B_a^2 / 2)/dB_a = B_a
        np.add.at(eff.T, a, (bq * b_linear[:, c]).T)
        off = a != c
        np.add.at(eff.T, c[off], (bq[:, off] * b_linear[:, a[off]]).T)
        return eff

    def _check_beta(self, beta, n: int) -> np.ndarray:
        beta = np.ascontiguousarray(beta, dtype=np.float64)
        if beta.shape != (n, self.n_components):
            raise ValueError(f"beta must have shape ({n}, {self.n_components}), got {beta.shape}")
        if not np.all(np.isfinite(beta)):
            raise ValueError("beta contains non-finite values")
        return beta

    def pair_forces(self, args: dict, beta_linear: np.ndarray) -> np.ndarray:
        """dE_i/drij for every pair of a prepared pair list (see compute_linear_with_pairs)."""
        return self._kernel.pair_forces(**args, beta=np.ascontiguousarray(beta_linear))

    def forces(self, atoms: Atoms, beta) -> tuple[np.ndarray, np.ndarray]:
        """Forces and virial of E = sum_i beta_i . B_i by the adjoint method.

        Parameters
        ----------
        beta : (N, n_components) array, eV per unit of B.

        Returns
        -------
        forces : (N, 3) eV/Angstrom, -dE/dr.
        virial : (6,) eV, W = -dE/d(strain) (LAMMPS sign: sum r (x) F), Voigt order
            xx yy zz yz xz xy.  The ASE stress is -W / V.
        """
        beta = self._check_beta(beta, len(atoms))
        pairs, args = self.pair_arguments(atoms)
        b_lin = self._kernel.bispectrum(**args) if self.params["quadraticflag"] else None
        dedr = self.pair_forces(args, self.effective_beta(beta, b_lin))
        forces, dedstrain = accumulate_pair_forces(dedr, pairs.i, pairs.j, pairs.rij, len(atoms))
        sym = 0.5 * (dedstrain + dedstrain.T)
        return forces, -np.array([sym[a, b] for a, b in VOIGT])

    def gradients(self, atoms: Atoms) -> BispectrumGradients:
        """Per-pair derivatives dB_i/dr_j and per-atom virial contributions.

        Memory is P x K x 3 doubles; meant for training and analysis, not for MD (use
        :meth:`forces`).
        """
        n = len(atoms)
        pairs, args = self.pair_arguments(atoms)
        db = self._kernel.pair_gradients(**args)                 # (P, k, 3) wrt rij
        if self.params["quadraticflag"]:
            b = self._kernel.bispectrum(**args)
            a, c = self._triu
            bi = b[pairs.i]
            dq = bi[:, c, None] * db[:, a, :] + bi[:, a, None] * db[:, c, :]
            dq[:, a == c, :] *= 0.5
            db = np.concatenate([db, dq], axis=1)
        k = db.shape[1]
        # per-atom virial: centre gets +dB (x) r_i, neighbour image gets -dB (x) r_j'
        ri = atoms.positions[pairs.i]
        rj = ri + pairs.rij
        virial = np.zeros((n, k, 6))
        for col, (x, y) in enumerate(VOIGT):
            np.add.at(virial[:, :, col], pairs.i, db[:, :, x] * ri[:, None, y])
            np.add.at(virial[:, :, col], pairs.j, -db[:, :, x] * rj[:, None, y])
        # dB_i/dr_j summed over images, and dB_i/dr_i = -sum_j dB_i/drij
        keys = np.concatenate([pairs.i * n + pairs.j, np.arange(n) * (n + 1)])
        vals = np.concatenate([db, np.zeros((n, k, 3))])
        self_sum = np.zeros((n, k, 3))
        np.add.at(self_sum, pairs.i, db)
        vals[len(db):] = -self_sum
        ukeys, inverse = np.unique(keys, return_inverse=True)
        out = np.zeros((len(ukeys), k, 3))
        np.add.at(out, inverse, vals)
        return BispectrumGradients(ukeys // n, ukeys % n, out, virial)

    # ------------------------------------------------------------ serialisation
    def to_dict(self) -> dict:
        """JSON-able parameters (LAMMPS keyword names); :meth:`from_dict` inverts it.
        This is the ``descriptor`` entry of the model files."""
        return dict(self.params, radii=dict(self.radii), weights=dict(self.weights),
                    sinner=self.sinner, dinner=self.dinner)

    @classmethod
    def from_dict(cls, params: dict) -> Bispectrum:
        """Build from a parameter dict as written by :meth:`to_dict` (None = default)."""
        unknown = set(params) - set(DICT_KEYS)
        if unknown:
            raise ValueError(f"unknown bispectrum parameters {sorted(unknown)}")
        missing = [k for k in ("twojmax", "rcutfac", "radii", "weights") if k not in params]
        if missing:
            raise ValueError(f"bispectrum parameters need {missing}")
        kw = {k: v for k, v in params.items() if v is not None}
        return cls(kw.pop("twojmax"), kw.pop("rcutfac"), kw.pop("radii"), kw.pop("weights"),
                   **kw)

    # ------------------------------------------------------------- SNAP files
    @classmethod
    def from_snapparam(cls, param_file, coeff_file) -> Bispectrum:
        """The descriptor of a LAMMPS SNAP potential (``.snapparam`` + ``.snapcoeff``)."""
        params = read_snapparam(param_file)
        coeff = read_snapcoeff(coeff_file)
        return cls.from_snap(params, coeff)

    @classmethod
    def from_snap(cls, params: dict, coeff) -> Bispectrum:
        """Build from parsed SNAP parameter and coefficient files (see snapqeq.io.snap_files)."""
        keywords = {k: params[k] for k in (
            "rfac0", "rmin0", "switchflag", "bzeroflag", "quadraticflag", "chemflag",
            "bnormflag", "wselfallflag", "switchinnerflag") if k in params}
        if params.get("switchinnerflag"):
            keywords["sinner"] = dict(zip(coeff.elements, params["sinner"], strict=True))
            keywords["dinner"] = dict(zip(coeff.elements, params["dinner"], strict=True))
        radii = dict(zip(coeff.elements, coeff.radii, strict=True))
        weights = dict(zip(coeff.elements, coeff.weights, strict=True))
        return cls(params["twojmax"], params["rcutfac"], radii, weights, **keywords)


"""Full neighbour lists for the bispectrum and the electrostatics (vesin backend)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import vesin


@dataclass(frozen=True)
class PairList:
    """Full neighbour list, sorted by the central site.

    Attributes
    ----------
    i, j : (P,) int64
        Central and neighbour site of each pair (a neighbour appears once per image).
    rij : (P, 3) float64
        Displacement r_j + S.cell - r_i (Angstrom).
    shift : (P, 3) int64
        Cell shift S of the neighbour image.
    offsets : (N + 1,) int64
        Pairs of site i are ``offsets[i]:offsets[i + 1]``.
    """

    i: np.ndarray
    j: np.ndarray
    rij: np.ndarray
    shift: np.ndarray
    offsets: np.ndarray

    def select(self, keep: np.ndarray, nsites: int) -> PairList:
        """The sub-list of pairs where ``keep`` is true."""
        i = self.i[keep]
        return PairList(i, self.j[keep], self.rij[keep], self.shift[keep], csr_offsets(i, nsites))


def csr_offsets(i: np.ndarray, nsites: int) -> np.ndarray:
    """CSR offsets of a sorted array of site indices."""
    offsets = np.zeros(nsites + 1, dtype=np.int64)
    np.cumsum(np.bincount(i, minlength=nsites), out=offsets[1:])
    return offsets


def check_geometry(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray) -> None:
    """Raise ValueError for non-finite positions or a degenerate periodic cell."""
    if not np.all(np.isfinite(positions)):
        bad = np.flatnonzero(~np.all(np.isfinite(positions), axis=1))
        raise ValueError(f"non-finite positions for atoms {bad[:10].tolist()}; fix the structure")
    if not np.all(np.isfinite(cell)):
        raise ValueError("the cell contains non-finite numbers")
    if np.any(pbc):
        lengths = np.linalg.norm(cell, axis=1)
        if np.any(lengths[pbc] <= 0.0):
            raise ValueError("periodic direction with a zero cell vector; set the cell or pbc")
        if abs(np.linalg.det(cell)) < 1e-12 and np.all(pbc):
            raise ValueError("the periodic cell is singular (zero volume)")


def build_pairs(positions: np.ndarray, cell: np.ndarray, pbc, cutoff: float) -> PairList:
    """All pairs (i, j, image) with 0 < |rij| < cutoff (Angstrom), sorted by i.

    Works for periodic, non-periodic and mixed boundary conditions and for cells smaller
    than the cutoff (a neighbour then appears once per periodic image, possibly i itself).
    """
    positions = np.ascontiguousarray(positions, dtype=np.float64)
    cell = np.ascontiguousarray(cell, dtype=np.float64)
    pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,)).copy()
    check_geometry(positions, cell, pbc)
    n = len(positions)
    if n == 0:
        empty = np.zeros(0, dtype=np.int64)
        return PairList(empty, empty, np.zeros((0, 3)), np.zeros((0, 3), np.int64),
                        np.zeros(1, np.int64))
    nl = vesin.NeighborList(cutoff=float(cutoff), full_list=True)
    i, j, s, d = nl.compute(positions, cell, pbc.tolist(), quantities="ijSD", copy=True)
    i = i.astype(np.int64)
    j = j.astype(np.int64)
    s = s.astype(np.int64)
    keep = np.einsum("pk,pk->p", d, d) > 1e-20
    i, j, s, d = i[keep], j[keep], s[keep], d[keep]
    if len(i) and np.any(np.diff(i) < 0):
        order = np.argsort(i, kind="stable")
        i, j, s, d = i[order], j[order], s[order], d[order]
    return PairList(i, j, np.ascontiguousarray(d), s, csr_offsets(i, n))


def shortest_distances(species: np.ndarray, pairs: PairList, n_elements: int) -> np.ndarray:
    """(E, E) symmetric matrix of the shortest distance (Angstrom) between atoms of each
    element pair in ``pairs``; inf where no such pair is listed."""
    out = np.full((n_elements, n_elements), np.inf)
    if len(pairs.i):
        a, b = species[pairs.i], species[pairs.j]
        key = np.minimum(a, b) * n_elements + np.maximum(a, b)
        r = np.sqrt(np.einsum("pk,pk->p", pairs.rij, pairs.rij))
        flat = np.full(n_elements * n_elements, np.inf)
        np.minimum.at(flat, key, r)
        out = np.minimum(flat.reshape(n_elements, n_elements),
                         flat.reshape(n_elements, n_elements).T)
    return out

"""Electrostatics of Gaussian charges (SPEC §5): free boundary conditions and Ewald sums.

Atom i carries the spherical Gaussian charge density

    rho_i(r) = q_i / (alpha_i sqrt(pi))^3 * exp(-|r - r_i|^2 / alpha_i^2)

so that two atoms interact through k_e q_i q_j erf(gamma_ij r) / r with
gamma_ij = 1 / sqrt(alpha_i^2 + alpha_j^2), and each Gaussian has the self energy
k_e gamma_ii q_i^2 / sqrt(pi), gamma_ii = 1 / (sqrt(2) alpha_i).

Free boundary conditions sum all pairs. Periodic cells use the Ewald split with a parameter
beta <= min gamma_ij::

    E_real = sum_(pairs, images) k_e q_i q_j [erfc(beta r) - erfc(gamma_ij r)] / r
    E_rec  = (2 pi k_e / V) sum_(k != 0) exp(-k^2 / (4 beta^2)) |S(k)|^2 / k^2
    E_self = k_e sum_i q_i^2 (gamma_ii - beta) / sqrt(pi)
    E_bg   = -(pi k_e / (2 V)) sum_ij q_i q_j (1 / beta^2 - alpha_i^2 - alpha_j^2)

The sum is the k = 0-free Fourier sum of the Gaussian densities (a net charge sits in a
uniform compensating background), and it does not depend on beta. beta <= min gamma keeps
every piece positive semi-definite, because the Fourier transform of the real-space kernel,
4 pi (exp(-k^2/4gamma^2) - exp(-k^2/4beta^2)) / k^2, is then non-negative; it also makes the
real-space kernel decay like erfc(beta r), so the real cutoff is set by beta alone.

The reciprocal sum is either the direct k-vector sum (``kspace="ewald"``, small cells) or
smooth particle-mesh Ewald with cardinal B-splines (``kspace="pme"``, Essmann et al. 1995,
O(N log N)). Both are written with torch operations, so energies and potentials are
differentiable (twice and more, as training on forces needs) with respect to charges,
positions, cell and widths.
:class:`Electrostatics` also provides a fast matrix-free product q -> phi for a fixed
geometry (sparse matrices, no autograd) for iterative solvers, and the dense matrix for
small systems.

Units: Angstrom, e, eV; k_e = :data:`snapqeq.units.COULOMB` eV Angstrom / e^2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import scipy.sparse
import scipy.special
import torch
import vesin
from torch import Tensor

from snapqeq._electrostatics import ewald_parameters as kernel_ewald_parameters
from snapqeq._electrostatics import ewald_truncation as kernel_ewald_truncation
from snapqeq.units import COULOMB

__all__ = [
    "COULOMB",
    "DEFAULT_ACCURACY",
    "MIN_DISTANCE",
    "EwaldParameters",
    "Electrostatics",
    "bspline_modulus",
    "bspline_weights",
    "check_structure",
    "electrostatic_energy",
    "ewald_parameters",
    "fft_size",
    "gaussian_coulomb",
    "half_pairs",
    "reciprocal_norms",
    "self_coefficient",
    "spline_weights",
    "spreading_matrix",
]

MIN_DISTANCE = 0.1
"""Closest allowed approach of two atoms (or of an atom and its own image), Angstrom.

Gaussian charges stay finite at r = 0, so overlapping atoms would not crash the solver;
they are nevertheless rejected because they always mean a broken structure."""

DEFAULT_ACCURACY = 1e-6
"""Default truncation target of the Ewald sums (relative; see :func:`ewald_parameters`)."""

EWALD_MAX_ATOMS = 2000
"""``kspace="auto"`` uses the direct k-sum up to this many atoms and PME above: with the
kernel's parameters, the direct sum gives the LAMMPS plugin's numbers to round-off (the
torch PME at 10k atoms would be ~9x slower with them, measured)."""

PME_ORDERS = (4, 6, 8)
"""Supported B-spline orders of PME; by default the cheapest for the accuracy (see
:func:`ewald_parameters`)."""

_FREE_DENSE_MAX = 6000  # free BC: cache the dense matrix for the fast product up to this N
_BLOCK = 1 << 22  # entries per block of pair / k-vector work (bounds temporary memory)
_F64 = torch.float64
_SQRT_PI = math.sqrt(math.pi)


# --------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class EwaldParameters:
    """Parameters of the periodic Ewald sum.

    Attributes
    ----------
    beta : float
        Splitting parameter (1/Angstrom), beta <= min gamma_ij.
    cutoff : float
        Real-space cutoff (Angstrom).
    kspace : str
        ``"ewald"`` (direct k-vector sum) or ``"pme"`` (smooth particle-mesh Ewald).
    kcut : float
        Reciprocal cutoff |k| <= kcut (1/Angstrom) of the direct sum.
    grid : tuple of int
        PME grid points along the three cell vectors.
    order : int
        PME B-spline order (even).
    accuracy : float
        The truncation target these values were derived from.
    """

    beta: float
    cutoff: float
    kspace: str
    kcut: float
    grid: tuple[int, int, int]
    order: int
    accuracy: float


def fft_size(n: float, minimum: int = 1) -> int:
    """Smallest integer >= max(n, minimum) whose only prime factors are 2, 3 and 5."""
    k = max(int(math.ceil(n - 1e-9)), minimum)
    while True:
        m = k
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return k
        k += 1


# Relative SPME interpolation error at oversampling 1, per B-spline order: the error falls
# like s^-p with the oversampling s. Fitted (largest of several rattled triclinic rock-salt
# cells, times ~1.5) against the direct sum; tests/test_ewald.py checks the rule.
_PME_ERROR = {4: 3e-4, 6: 1.5e-5, 8: 1e-6}


# PME grids aim at an interpolation error of accuracy / 10, as the truncations do
_PME_SAFETY = 0.1

# Measured single-core costs (seconds) of one equilibration with PME: set-up, ~20
# conjugate-gradient products and the forces, per real-space pair (neighbour list,
# kernel, sparse products), per PME grid point (influence function, FFTs) and per spline
# weight (N p^3: weights, spreading, interpolation). They set beta and the order.
_COST_PER_PAIR = 7e-7
_COST_PER_GRID_POINT = 6e-7
_COST_PER_WEIGHT = 9e-8


def _pme_oversampling(accuracy: float, order: int) -> float:
    """Grid points per Nyquist interval of k_c that keep the SPME error below accuracy."""
    return max(1.0, (_PME_ERROR[order] / accuracy) ** (1.0 / order))


def _pme_grid(lengths, kcut: float, accuracy: float, order: int) -> tuple[int, int, int]:
    over = _pme_oversampling(accuracy, order)
    return tuple(fft_size(over * kcut * float(a) / math.pi, 2 * order) for a in lengths)


def ewald_parameters(cell, widths, n_atoms: int, accuracy: float = DEFAULT_ACCURACY,
                     kspace: str = "auto", beta: float | None = None,
                     order: int | None = None) -> EwaldParameters:
    """Choose the Ewald parameters for a periodic cell.

    beta, the real-space cutoff r_c and the reciprocal cutoff k_c come from the C++ kernel
    (:func:`snapqeq._electrostatics.ewald_parameters` and ``ewald_truncation``), the one
    rule that the LAMMPS plugin applies as well (eps = ``accuracy``):

    - each truncation aims at eps' = eps / 10, because the errors of the many terms near a
      cutoff add up: r_c with erfc(beta r_c) = eps' (the neglected real-space kernel
      [erfc(beta r) - erfc(gamma r)] / r < eps' / r) and k_c = 2 beta sqrt(-ln eps'), so
      exp(-k^2 / 4 beta^2) < eps' beyond;
    - beta: the kernel's balance of real- against reciprocal-space work of the direct sum,
      2.3 (N / V^2)^(1/6), capped at min gamma_ij = 1 / (sqrt(2) max alpha) as SPEC §5
      requires. The direct sum (``kspace="ewald"``, and ``"auto"`` up to
      :data:`EWALD_MAX_ATOMS` atoms) always uses it, so its energies, potentials, forces and
      stresses are those of the plugin to round-off.
    - PME (``kspace="pme"``) without a given beta picks beta (and the B-spline order) that
      minimise its estimated run time, measured cost per real-space pair times
      N rho (2 pi / 3) r_c^3, plus cost per grid point times the grid size, plus cost per
      spline weight times N p^3, with r_c and k_c of that beta from the kernel's
      truncation: the direct-sum beta makes the real space ~10x too expensive for this
      path at 10k atoms (r_c 21.7 instead of 8.9 Angstrom). Such sums agree with the
      plugin's to their truncation error (~accuracy / 10), not to round-off.
    - PME grid, derived from k_c of that beta: K_d >= s * k_c |a_d| / pi points along cell
      vector a_d, rounded up to a 2-3-5 FFT size, at least 2 * order; the oversampling
      s = (c_p / eps')^(1/p) (>= 1) comes from the measured interpolation error c_p s^-p of
      order-p B-splines.

    With these choices the relative error of energies and potentials is below eps
    (checked in the tests against converged sums; typically eps / 10 to eps / 2).

    Parameters
    ----------
    cell : (3, 3) array
        Cell vectors as rows (Angstrom).
    widths : (N,) array
        Gaussian widths alpha (Angstrom).
    n_atoms : int
        Number of atoms.
    accuracy : float
        Relative truncation target eps, 0 < eps < 1.
    kspace : {"auto", "ewald", "pme"}
        Reciprocal method; ``"auto"`` takes the direct sum up to :data:`EWALD_MAX_ATOMS`.
    beta : float, optional
        Force the splitting parameter (1/Angstrom); must not exceed min gamma.
    order : int, optional
        PME B-spline order (4, 6 or 8); default: the cheapest, see above.
    """
    if not 0.0 < accuracy < 1.0:
        raise ValueError(f"accuracy must be in (0, 1), got {accuracy}")
    if kspace not in ("auto", "ewald", "pme"):
        raise ValueError(f"kspace must be 'auto', 'ewald' or 'pme', got {kspace!r}")
    if order is not None and order not in PME_ORDERS:
        raise ValueError(f"PME order must be one of {PME_ORDERS}, got {order}")
    cell = np.asarray(cell, dtype=np.float64)
    widths = np.asarray(widths, dtype=np.float64)
    volume = abs(float(np.linalg.det(cell)))
    if kspace == "auto":
        kspace = "ewald" if n_atoms <= EWALD_MAX_ATOMS else "pme"
    gamma_min = 1.0 / (math.sqrt(2.0) * float(widths.max()))
    target = _PME_SAFETY * accuracy
    lengths = np.linalg.norm(cell, axis=1)
    if beta is not None and not 0.0 < beta <= gamma_min * (1.0 + 1e-12):
        raise ValueError(f"beta = {beta} must be in (0, min gamma = {gamma_min:.6g}] 1/Angstrom")
    if beta is None and kspace == "ewald":
        rule = kernel_ewald_parameters(max(n_atoms, 1), cell, widths, accuracy)
    else:
        if kspace == "pme":  # the cheapest beta and order, truncated by the kernel's rule
            unit = kernel_ewald_truncation(1.0, accuracy)  # r_c = s / beta, k_c = 2 t beta

            def cost(b: float, p: int) -> float:
                pairs = n_atoms**2 / volume * (2.0 * math.pi / 3.0) * (unit["cutoff"] / b) ** 3
                ngrid = math.prod(_pme_grid(lengths, unit["kcut"] * b, target, p))
                return (_COST_PER_PAIR * pairs + _COST_PER_GRID_POINT * ngrid
                        + _COST_PER_WEIGHT * n_atoms * p**3)

            betas = [beta] if beta is not None else [
                b for b in gamma_min * np.geomspace(0.1, 1.0, 41)
                if unit["cutoff"] / b <= 40.0] or [gamma_min]
            orders = [order] if order is not None else PME_ORDERS
            beta, order = min(((float(b), p) for b in betas for p in orders),
                              key=lambda bp: cost(*bp))
        rule = kernel_ewald_truncation(beta, accuracy)
    order = PME_ORDERS[1] if order is None else order
    grid = _pme_grid(lengths, rule["kcut"], target, order)
    return EwaldParameters(beta=float(rule["beta"]), cutoff=float(rule["cutoff"]),
                           kspace=kspace, kcut=float(rule["kcut"]), grid=grid,
                           order=int(order), accuracy=float(accuracy))


# --------------------------------------------------------------------------- helpers


def _tensor(x) -> Tensor:
    if isinstance(x, Tensor):
        return x.to(_F64)
    return torch.as_tensor(np.asarray(x, dtype=np.float64))


def bspline_weights(w: Tensor, order: int) -> Tensor:
    """Cardinal B-spline values M_p(w + j), j = 0..p-1, for offsets w in [0, 1).

    A charge at grid coordinate u puts weight M_p(w + j) on grid point floor(u) - j,
    w = u - floor(u) (Essmann et al. 1995). Differentiable in w.

    Parameters
    ----------
    w : (n,) tensor
    order : int
        Spline order p >= 2.

    Returns
    -------
    (n, p) tensor
    """
    cols = [w, 1.0 - w]  # M_2(w), M_2(w + 1)
    for n in range(3, order + 1):
        new = []
        for j in range(n):
            x = w + j
            term = x * cols[j] if j < n - 1 else torch.zeros_like(w)
            if j >= 1:
                term = term + (n - x) * cols[j - 1]
            new.append(term / (n - 1))
        cols = new
    return torch.stack(cols, dim=1)


# --------------------------------------------------------------------------- grid helpers


def spline_weights(positions: Tensor, cell: Tensor, grid: tuple[int, int, int],
                   order: int) -> tuple[Tensor, Tensor]:
    """B-spline charge-assignment weights of each atom on a periodic grid (SPME).

    Parameters
    ----------
    positions : (N, 3) tensor
        Angstrom.
    cell : (3, 3) tensor
        Cell rows (Angstrom); the grid has ``grid[d]`` points along cell vector d.
    grid : 3 ints
    order : int
        B-spline order p.

    Returns
    -------
    weights : (N, p^3) tensor
        Differentiable with respect to positions and cell; each row sums to 1.
    index : (N, p^3) int64 tensor
        Flat (C-order) grid index of each weight.
    """
    thetas, _, idx = _spline_factors(positions, cell, grid, order)
    w = (thetas[0][:, :, None, None] * thetas[1][:, None, :, None]
         * thetas[2][:, None, None, :]).reshape(len(positions), -1)
    return w, _flat_index(idx, grid).reshape(len(positions), -1)


def _spline_factors(positions: Tensor, cell: Tensor, grid: tuple[int, int, int], order: int,
                    derivative: bool = False):
    """Per cell direction d: spline values theta_d (N, p) at u_d = K_d s_d (s fractional),
    optionally d theta_d / d u_d, and the grid indices (N, p)."""
    frac = positions @ torch.linalg.inv(cell)
    thetas, dthetas, idx = [], [], []
    for d in range(3):
        u = frac[:, d] * grid[d]
        base = torch.floor(u.detach())
        w = u - base
        thetas.append(bspline_weights(w, order))
        if derivative:  # M_p'(x) = M_(p-1)(x) - M_(p-1)(x - 1)
            low = bspline_weights(w, order - 1)
            zero = torch.zeros_like(w)[:, None]
            dthetas.append(torch.cat([low, zero], 1) - torch.cat([zero, low], 1))
        idx.append(torch.remainder(base.long()[:, None] - torch.arange(order)[None, :],
                                   grid[d]))
    return thetas, dthetas, idx


def _flat_index(idx: list[Tensor], grid: tuple[int, int, int]) -> Tensor:
    """(N, p, p, p) flat C-order grid indices from per-direction indices."""
    return (idx[0][:, :, None, None] * grid[1] + idx[1][:, None, :, None]) * grid[2] + idx[
        2][:, None, None, :]


def spreading_matrix(positions: Tensor, cell: Tensor, grid: tuple[int, int, int],
                     order: int) -> scipy.sparse.csr_matrix:
    """The weights of :func:`spline_weights` as a sparse (N, prod(grid)) matrix W: the
    grid charge is W.T @ q and the interpolated potential W @ grid values."""
    with torch.no_grad():
        w, flat = spline_weights(positions, cell, grid, order)
    n, nnz = w.shape
    return scipy.sparse.csr_matrix(
        (w.reshape(-1).numpy(), flat.reshape(-1).numpy(), np.arange(0, n * nnz + 1, nnz)),
        shape=(n, math.prod(grid)))


def reciprocal_norms(cell: Tensor, grid: tuple[int, int, int]) -> Tensor:
    """|m|^2 (1/Angstrom^2, without 2 pi) of the reciprocal vectors m = sum_d m_d b_d of
    the rfft half grid, shape (K1, K2, K3 // 2 + 1); differentiable in the cell."""
    k1, k2, k3 = grid
    recip = torch.linalg.inv(cell).T
    m = [torch.fft.fftfreq(k1, 1.0 / k1, dtype=_F64),
         torch.fft.fftfreq(k2, 1.0 / k2, dtype=_F64),
         torch.fft.rfftfreq(k3, 1.0 / k3, dtype=_F64)]
    mv = (m[0][:, None, None, None] * recip[0] + m[1][None, :, None, None] * recip[1]
          + m[2][None, None, :, None] * recip[2])
    return torch.sum(mv * mv, dim=-1)


def bspline_modulus(grid: tuple[int, int, int], order: int) -> Tensor:
    """B(m) = prod_d |b_d(m_d)|^2 of Essmann et al. (4.4) on the rfft half grid: undoes
    the smoothing of B-spline assignment and interpolation. Even orders only."""
    vals = bspline_weights(torch.zeros(1, dtype=_F64), order)[0, 1:]  # M_p(1..p-1)
    mods = []
    for d, k in enumerate(grid):
        m = torch.arange(k if d < 2 else k // 2 + 1, dtype=_F64)
        arg = 2.0 * math.pi * m[:, None] * torch.arange(order - 1, dtype=_F64)[None, :] / k
        den = (vals * torch.cos(arg)).sum(1) ** 2 + (vals * torch.sin(arg)).sum(1) ** 2
        mods.append(1.0 / den)
    return mods[0][:, None, None] * mods[1][None, :, None] * mods[2][None, None, :]


def rfft_multiplicity(k3: int) -> Tensor:
    """1 or 2 per last-axis rfft index: how often it occurs in the full spectrum."""
    mult = torch.full((k3 // 2 + 1,), 2.0, dtype=_F64)
    mult[0] = 1.0
    if k3 % 2 == 0:
        mult[-1] = 1.0
    return mult


def self_coefficient(widths, beta: float = 0.0):
    """c_i = k_e (gamma_ii - beta) / sqrt(pi) (eV/e^2), gamma_ii = 1 / (sqrt(2) alpha_i): the
    Gaussian self energy, less the beta part of the Ewald split for periodic cells
    (beta = 0: free boundaries). E_self = sum_i c_i q_i^2, so it adds 2 c_i q_i to phi_i and
    2 c_i to A_ii. widths: (N,) tensor or ndarray (Angstrom)."""
    return COULOMB / _SQRT_PI * (1.0 / (math.sqrt(2.0) * widths) - beta)


def gaussian_coulomb(pos_a: Tensor, pos_b: Tensor, wid_a: Tensor, wid_b: Tensor,
                     excluded: Tensor) -> Tensor:
    """Pair interactions k_e erf(gamma_ab r_ab) / r_ab (eV/e^2) of unit Gaussian charges
    without periodic images, gamma_ab = 1 / sqrt(alpha_a^2 + alpha_b^2).

    ``pos_a`` (..., M, 3) and ``pos_b`` (..., N, 3) Angstrom, widths (..., M) / (..., N)
    Angstrom; leading dimensions broadcast (batches of clusters). Pairs where ``excluded``
    (..., M, N) is True (an atom with itself, padding) are 0; their distance is replaced by
    1 before the square root, so that no NaN reaches the gradients.
    """
    d = pos_b[..., None, :, :] - pos_a[..., :, None, :]
    r2 = torch.sum(d * d, dim=-1)
    r = torch.sqrt(torch.where(excluded, torch.ones_like(r2), r2))
    gamma = torch.rsqrt(wid_a[..., :, None] ** 2 + wid_b[..., None, :] ** 2)
    return torch.where(excluded, torch.zeros_like(r), COULOMB * torch.erf(gamma * r) / r)


def _background(q, widths, volume, beta: float, diagonal: bool = False):
    """Uniform-background term of the Ewald sum of a net charge: phi_bg = B q (eV/e) with
    B_ij = -(pi k_e / V) (1 / beta^2 - alpha_i^2 - alpha_j^2) and E_bg = q . B q / 2.

    q: (N,) charges (e), or (N, M) columns (the identity gives the matrix B); widths alpha
    (N,) Angstrom; volume V (Angstrom^3, float or tensor). Tensors or ndarrays alike,
    differentiable in all tensor arguments. ``diagonal=True`` returns B_ii instead (q is
    then ignored). E_bg depends on the cell only through 1/V, so dE_bg/d strain =
    -E_bg * identity."""
    w2 = widths * widths
    scale = -math.pi * COULOMB / volume
    if diagonal:
        return scale * (1.0 / beta**2 - 2.0 * w2)
    total = q.sum(0)
    if q.ndim == 1:
        return scale * (total / beta**2 - w2 @ q - w2 * total)
    return scale * (total[None, :] / beta**2 - (w2 @ q)[None, :] - w2[:, None] * total[None, :])


def _check_geometry(positions: np.ndarray, cell: np.ndarray, periodic: bool,
                    widths: np.ndarray) -> None:
    n = len(positions)
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise ValueError(f"positions must have shape (N, 3), got {positions.shape}")
    if widths.shape != (n,):
        raise ValueError(f"widths must have shape ({n},), got {widths.shape}")
    if not np.all(np.isfinite(positions)):
        bad = np.flatnonzero(~np.all(np.isfinite(positions), axis=1))
        raise ValueError(f"non-finite positions for atoms {bad[:10].tolist()}; fix the structure")
    if not np.all(np.isfinite(widths)) or np.any(widths <= 0.0):
        bad = np.flatnonzero(~(np.isfinite(widths) & (widths > 0.0)))
        raise ValueError(f"Gaussian widths must be finite and > 0 Angstrom; atoms "
                         f"{bad[:10].tolist()} have {widths[bad[:10]].tolist()}")
    if periodic:
        if cell.shape != (3, 3) or not np.all(np.isfinite(cell)):
            raise ValueError("a periodic structure needs a finite (3, 3) cell")
        volume = abs(float(np.linalg.det(cell)))
        lengths = np.linalg.norm(cell, axis=1)
        if volume <= 1e-9 * max(float(lengths.prod()), 1e-300):
            raise ValueError("the periodic cell is singular (zero volume); set a proper cell")
        heights = volume / np.linalg.norm(np.cross(cell[[1, 2, 0]], cell[[2, 0, 1]]), axis=1)
        if heights.min() < MIN_DISTANCE:
            raise ValueError(f"the periodic cell is too thin (plane spacing "
                             f"{heights.min():.3g} Angstrom < {MIN_DISTANCE}): atoms would "
                             f"overlap their own images")


def half_pairs(positions: np.ndarray, cell: np.ndarray, periodic: bool, cutoff: float):
    """Half neighbour list from vesin: each pair and each +-image pair once within
    ``cutoff`` (Angstrom). Returns i, j (int64), the integer cell shifts S (float, (P, 3))
    and the displacements r_j + S cell - r_i (P, 3)."""
    box = cell if periodic else np.zeros((3, 3))
    nl = vesin.NeighborList(cutoff=float(cutoff), full_list=False)
    i, j, s, d = nl.compute(positions, box, bool(periodic), quantities="ijSD", copy=True)
    return i.astype(np.int64), j.astype(np.int64), s.astype(np.float64), d


def _check_min_distance(positions: np.ndarray, cell: np.ndarray, periodic: bool) -> None:
    # vesin's cell grid follows the cutoff: searching at 0.1 Angstrom directly would build
    # ~1e6 cells for a 20 Angstrom cluster (7 ms); search at 1 Angstrom and filter instead
    i, j, _, d = half_pairs(positions, cell, periodic, max(MIN_DISTANCE, 1.0))
    r = np.linalg.norm(d, axis=1)
    close = r < MIN_DISTANCE
    if np.any(close):
        i, j, r = i[close], j[close], r[close]
        k = int(np.argmin(r))
        raise ValueError(f"atoms {int(i[k])} and {int(j[k])} are {r[k]:.3g} Angstrom apart "
                         f"(< {MIN_DISTANCE} Angstrom, including periodic images): "
                         f"overlapping atoms; fix the structure")


def _periodic(pbc) -> bool:
    pbc_arr = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))
    if pbc_arr.any() and not pbc_arr.all():
        raise ValueError(f"mixed boundary conditions pbc={pbc_arr.tolist()} are not "
                         f"supported; use all True (periodic) or all False (cluster)")
    return bool(pbc_arr.all())


def check_structure(positions, cell, pbc, widths) -> None:
    """The input checks of :class:`Electrostatics` (ValueError with a message naming the
    atoms): positions (N, 3) finite, widths (N,) finite and > 0 Angstrom, pbc all True or
    all False, a periodic cell finite, not singular and not thinner than
    :data:`MIN_DISTANCE`, and no two atoms (or an atom and its image) closer than
    :data:`MIN_DISTANCE`. Also used before the C++ kernel, which assumes valid input."""
    periodic = _periodic(pbc)
    positions = np.asarray(positions, dtype=np.float64)
    widths = np.asarray(widths, dtype=np.float64)
    cell = np.asarray(cell, dtype=np.float64) if periodic else np.zeros((3, 3))
    _check_geometry(positions, cell, periodic, widths)
    if len(positions):
        _check_min_distance(positions, cell, periodic)


# --------------------------------------------------------------------------- main class


class Electrostatics:
    """Gaussian-charge electrostatics of one geometry (free or fully periodic).

    Construction checks the structure, chooses the Ewald parameters and builds the
    neighbour list; the geometry is then fixed. :meth:`energy` and :meth:`potential` are
    differentiable torch functions: pass ``positions``, ``cell`` or ``widths`` tensors that
    require grad (with the values given at construction, e.g. a strained copy at zero
    strain) to obtain forces, stress or gradients for training. :meth:`matvec` is the fast
    product q -> phi for iterative solvers, :meth:`matrix` the dense matrix.

    Parameters
    ----------
    positions : (N, 3) array or tensor
        Positions (Angstrom).
    cell : (3, 3) array or tensor
        Cell vectors as rows (Angstrom); ignored without pbc.
    pbc : bool or sequence of 3 bools
        All True (Ewald) or all False (free boundary conditions). Mixed (slab) boundary
        conditions are not supported.
    widths : (N,) array or tensor
        Gaussian widths alpha (Angstrom).
    accuracy : float
        Truncation target of the Ewald sums, see :func:`ewald_parameters`.
    kspace : {"auto", "ewald", "pme"}
        Reciprocal-space method for periodic cells.
    parameters : EwaldParameters, optional
        Use these instead of choosing them.
    """

    def __init__(self, positions, cell, pbc, widths, *, accuracy: float = DEFAULT_ACCURACY,
                 kspace: str = "auto", parameters: EwaldParameters | None = None):
        self.periodic = _periodic(pbc)
        pos = _tensor(positions).detach().clone()
        wid = _tensor(widths).detach().clone()
        cel = (_tensor(cell).detach().clone().reshape(3, 3) if self.periodic
               else torch.zeros(3, 3, dtype=_F64))
        pos_np, cell_np, wid_np = pos.numpy(), cel.numpy(), wid.numpy()
        check_structure(pos_np, cell_np, self.periodic, wid_np)
        self.n_atoms = len(pos_np)
        self.positions, self.cell, self.widths = pos, cel, wid
        self.parameters: EwaldParameters | None = None
        self.volume = abs(float(np.linalg.det(cell_np))) if self.periodic else math.inf
        if self.periodic:
            if parameters is None:
                parameters = ewald_parameters(cell_np, wid_np, self.n_atoms, accuracy, kspace)
            elif parameters.beta > 1.0 / (math.sqrt(2.0) * wid_np.max()) * (1 + 1e-12):
                raise ValueError("parameters.beta exceeds min gamma of these widths")
            self.parameters = parameters
            i, j, s, _ = half_pairs(pos_np, cell_np, True, parameters.cutoff)
            self._i, self._j = torch.from_numpy(i), torch.from_numpy(j)
            self._shift = torch.from_numpy(s)
            if parameters.kspace == "ewald":
                self._mvec = self._kvectors(cell_np, parameters.kcut)
        self._fast: dict = {}

    # ------------------------------------------------------------------ public API

    def with_parameters(self, **changes) -> Electrostatics:
        """A new instance for the same geometry with some Ewald parameters changed."""
        if not self.periodic:
            raise ValueError("Ewald parameters only apply to periodic cells")
        params = replace(self.parameters, **changes)
        return Electrostatics(self.positions, self.cell, True, self.widths, parameters=params)

    def energy(self, charges, positions=None, cell=None, widths=None) -> Tensor:
        """Electrostatic energy E_es (eV) including the Gaussian self energies.

        Differentiable with respect to all tensor arguments. ``positions``, ``cell`` and
        ``widths`` default to the construction values; when given they must have the same
        values (the neighbour list is fixed), e.g. tensors that require grad.

        Parameters
        ----------
        charges : (N,) tensor
            Charges (e).
        positions : (N, 3) tensor, optional
        cell : (3, 3) tensor, optional
        widths : (N,) tensor, optional
        """
        q = _tensor(charges)
        pos, cel, wid = self._geometry(positions, cell, widths)
        if self.n_atoms == 0:
            return q.sum() * 0.0
        if not self.periodic:
            return self._free_energy(q, pos, wid)
        p = self.parameters
        e = self._real_energy(q, pos, cel, wid)
        e = e + torch.sum(self_coefficient(wid, p.beta) * q * q)
        volume = torch.abs(torch.linalg.det(cel))
        e = e + 0.5 * torch.dot(q, _background(q, wid, volume, p.beta))
        if p.kspace == "pme":
            e = e + self._pme_energy(q, pos, cel)
        else:
            e = e + self._ewald_energy(q, pos, cel)
        return e

    def potential(self, charges, positions=None, cell=None, widths=None) -> Tensor:
        """Site potentials phi_i = dE_es/dq_i (eV/e), written out explicitly.

        Same arguments as :meth:`energy`; differentiable with respect to all of them
        (E_es is quadratic, so E_es = q . phi / 2).
        """
        q = _tensor(charges)
        pos, cel, wid = self._geometry(positions, cell, widths)
        if self.n_atoms == 0:
            return q * 0.0
        if not self.periodic:
            return self._free_potential(q, pos, wid)
        p = self.parameters
        phi = self._real_potential(q, pos, cel, wid)
        phi = phi + 2.0 * self_coefficient(wid, p.beta) * q
        volume = torch.abs(torch.linalg.det(cel))
        phi = phi + _background(q, wid, volume, p.beta)
        if p.kspace == "pme":
            phi = phi + self._pme_potential(q, pos, cel)
        else:
            phi = phi + self._ewald_potential(q, pos, cel)
        return phi

    @torch.no_grad()
    def matvec(self, charges) -> Tensor:
        """Fast phi = A q (eV/e) for the construction geometry; no autograd.

        The same linear map as :meth:`potential`, evaluated with cached sparse matrices
        (real space, PME spreading) or a cached dense matrix (small free clusters)."""
        q = _tensor(charges).detach()
        if self.n_atoms == 0:
            return q.clone()
        f = self._fast_operator()
        if "dense" in f:
            return f["dense"] @ q
        if not self.periodic:
            return self._free_potential_blocks(q)
        qn = q.numpy()
        phi = f["real"] @ qn + f["diag"] * qn
        phi += _background(qn, f["widths"], self.volume, self.parameters.beta)
        if self.parameters.kspace == "pme":
            grid = torch.from_numpy(f["spread"].T @ qn).reshape(self.parameters.grid)
            pot = torch.fft.irfftn(f["theta"] * torch.fft.rfftn(grid), s=self.parameters.grid)
            phi += f["spread"] @ pot.reshape(-1).numpy()
        else:
            c, s, fk = f["cos"], f["sin"], f["fk"]
            phi += c @ (fk * (qn @ c)) + s @ (fk * (qn @ s))
        return torch.from_numpy(phi)

    @torch.no_grad()
    def diagonal(self) -> Tensor:
        """Diagonal of the electrostatic matrix A_ii = d phi_i / d q_i (eV/e^2), for
        preconditioning. Exact for free BC and the direct sum; for PME the reciprocal
        part is that of the exact sum (position independent), which differs from the
        PME value by the interpolation error."""
        if self.n_atoms == 0:
            return torch.zeros(0, dtype=_F64)
        f = self._fast_operator()
        if "dense" in f:
            return torch.diagonal(f["dense"]).clone()
        if not self.periodic:
            return 2.0 * self_coefficient(self.widths)
        p = self.parameters
        d = f["real"].diagonal() + f["diag"]
        d = d + _background(None, f["widths"], self.volume, p.beta, diagonal=True)
        if p.kspace == "ewald":
            c, s, fk = f["cos"], f["sin"], f["fk"]
            d = d + (c * c) @ fk + (s * s) @ fk
        else:
            # the k != 0 potential of a unit charge at its own site (images included) is
            # position independent for the exact sum: 2 sum_m G(m) without spline factors
            d = d + f["rec_self"]
        return torch.from_numpy(np.asarray(d, dtype=np.float64))

    @torch.no_grad()
    def matrix(self) -> Tensor:
        """Dense electrostatic matrix A (N, N) in eV/e^2 with E_es = q.A.q / 2.

        Free BC: A_ii = 2 k_e gamma_ii / sqrt(pi), A_ij = k_e erf(gamma_ij r_ij) / r_ij.
        Periodic: the Ewald matrix; the reciprocal part always uses the direct k-sum with
        this instance's beta and accuracy (for ``kspace="pme"`` instances too, which then
        differ from :meth:`matvec` by the PME interpolation error). O(N^2) memory."""
        n = self.n_atoms
        if not self.periodic:
            f = self._fast_operator()
            if "dense" in f:
                return f["dense"].clone()
            return self._free_matrix()
        p = self.parameters
        a = torch.zeros(n, n, dtype=_F64)
        v = self._real_kernel(self.positions, self.cell, self.widths)
        a.index_put_((self._i, self._j), v, accumulate=True)
        a.index_put_((self._j, self._i), v, accumulate=True)
        a.diagonal().add_(2.0 * self_coefficient(self.widths, p.beta))
        a += _background(torch.eye(n, dtype=_F64), self.widths, self.volume, p.beta)
        mvec = self._mvec if p.kspace == "ewald" else self._kvectors(self.cell.numpy(), p.kcut)
        recip = torch.linalg.inv(self.cell).T
        for k0 in range(0, len(mvec), max(1, _BLOCK // max(n, 1))):
            k = 2.0 * math.pi * mvec[k0:k0 + _BLOCK // max(n, 1)] @ recip
            fk = self._ewald_factor(k)
            phase = self.positions @ k.T
            c, s = torch.cos(phase), torch.sin(phase)
            a += (c * fk) @ c.T + (s * fk) @ s.T
        return a

    def forces_stress(self, charges) -> tuple[Tensor, Tensor, Tensor | None]:
        """Energy (eV), forces (N, 3) (eV/Angstrom) and, for periodic cells, the stress
        (6,) (eV/Angstrom^3, ASE Voigt order xx yy zz yz xz xy, = (1/V) dE/d strain) at
        fixed charges.

        Free BC: reverse-mode differentiation of :meth:`energy`. Periodic cells: the same
        derivatives written out (pair forces and virial in real space, B-spline derivative
        forces for PME, strain derivative of the influence function), which is several
        times faster and less memory-hungry for large cells; the tests check both agree."""
        q = _tensor(charges).detach()
        if not self.periodic:
            with torch.enable_grad():
                pos = self.positions.clone().requires_grad_(True)
                e = self.energy(q, pos)
                (grad,) = torch.autograd.grad(e, pos)
            return e.detach(), -grad, None
        p = self.parameters
        e, forces, virial = self._real_forces_virial(q)
        e = e + float(torch.sum(self_coefficient(self.widths, p.beta) * q * q))
        e_bg = 0.5 * float(torch.dot(q, _background(q, self.widths, self.volume, p.beta)))
        virial -= e_bg * np.eye(3)  # E_bg ~ 1/V
        e += e_bg
        e_rec, f_rec, v_rec = (self._pme_forces_virial(q) if p.kspace == "pme"
                               else self._ewald_forces_virial(q))
        e += e_rec
        forces = torch.from_numpy(forces) + f_rec
        g = (virial + v_rec) / self.volume
        g = 0.5 * (g + g.T)
        stress = torch.tensor([g[0, 0], g[1, 1], g[2, 2], g[1, 2], g[0, 2], g[0, 1]])
        return torch.tensor(e, dtype=_F64), forces, stress

    # ------------------------------------------------------------------ internals

    def _geometry(self, positions, cell, widths):
        pos = self.positions if positions is None else _tensor(positions)
        wid = self.widths if widths is None else _tensor(widths)
        cel = self.cell if cell is None or not self.periodic else _tensor(cell)
        for name, new, ref in (("positions", pos, self.positions), ("widths", wid, self.widths),
                               ("cell", cel, self.cell)):
            if new is not ref and (new.shape != ref.shape or not torch.allclose(
                    new.detach(), ref, rtol=0.0, atol=1e-8)):
                raise ValueError(f"{name} differ from the geometry this Electrostatics was "
                                 f"built for; build a new one for a new geometry")
        return pos, cel, wid

    # real space (periodic)

    def _real_kernel(self, pos: Tensor, cel: Tensor, wid: Tensor, sl=slice(None)) -> Tensor:
        i, j = self._i[sl], self._j[sl]
        d = pos[j] - pos[i] + self._shift[sl] @ cel
        r = torch.linalg.norm(d, dim=1)
        gamma = torch.rsqrt(wid[i] ** 2 + wid[j] ** 2)
        beta = self.parameters.beta
        return COULOMB * (torch.erfc(beta * r) - torch.erfc(gamma * r)) / r

    def _slices(self):
        n = len(self._i)
        return [slice(a, a + _BLOCK) for a in range(0, max(n, 1), _BLOCK)]

    def _real_energy(self, q, pos, cel, wid) -> Tensor:
        e = q.sum() * 0.0
        for sl in self._slices():
            v = self._real_kernel(pos, cel, wid, sl)
            e = e + torch.sum(v * q[self._i[sl]] * q[self._j[sl]])
        return e

    def _real_potential(self, q, pos, cel, wid) -> Tensor:
        phi = torch.zeros(self.n_atoms, dtype=_F64)
        for sl in self._slices():
            i, j = self._i[sl], self._j[sl]
            v = self._real_kernel(pos, cel, wid, sl)
            phi = phi.index_add(0, i, v * q[j]).index_add(0, j, v * q[i])
        return phi

    # free boundary conditions (all pairs, in row blocks)

    def _free_block(self, pos: Tensor, wid: Tensor, r0: int, r1: int) -> Tensor:
        """Rows r0:r1 of the off-diagonal free-BC matrix k_e erf(gamma r) / r."""
        eye = torch.arange(r0, r1)[:, None] == torch.arange(self.n_atoms)[None, :]
        return gaussian_coulomb(pos[r0:r1], pos, wid[r0:r1], wid, eye)

    def _rows(self):
        step = max(1, _BLOCK // max(self.n_atoms, 1))
        return [(a, min(a + step, self.n_atoms)) for a in range(0, self.n_atoms, step)]

    def _free_energy(self, q, pos, wid) -> Tensor:
        e = torch.sum(self_coefficient(wid) * q * q)
        for r0, r1 in self._rows():
            e = e + 0.5 * torch.sum(q[r0:r1] * (self._free_block(pos, wid, r0, r1) @ q))
        return e

    def _free_potential(self, q, pos, wid) -> Tensor:
        rows = [self._free_block(pos, wid, r0, r1) @ q for r0, r1 in self._rows()]
        return torch.cat(rows) + 2.0 * self_coefficient(wid) * q

    def _free_potential_blocks(self, q: Tensor) -> Tensor:
        return self._free_potential(q, self.positions, self.widths)

    def _free_matrix(self) -> Tensor:
        a = torch.cat([self._free_block(self.positions, self.widths, r0, r1)
                       for r0, r1 in self._rows()])
        a.diagonal().add_(2.0 * self_coefficient(self.widths))
        return a

    # direct reciprocal sum

    @staticmethod
    def _kvectors(cell: np.ndarray, kcut: float) -> Tensor:
        """Integer vectors m (one of each +-m pair) with |2 pi m . recip| <= kcut."""
        lengths = np.linalg.norm(cell, axis=1)
        mmax = np.floor(kcut * lengths / (2.0 * math.pi)).astype(int)
        axes = [np.arange(-m, m + 1) for m in mmax]
        m = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
        half = (m[:, 0] > 0) | ((m[:, 0] == 0) & (m[:, 1] > 0)) | (
            (m[:, 0] == 0) & (m[:, 1] == 0) & (m[:, 2] > 0))
        m = m[half]
        k = 2.0 * math.pi * m @ np.linalg.inv(cell).T
        m = m[np.einsum("ij,ij->i", k, k) <= kcut**2]
        return torch.from_numpy(m.astype(np.float64))

    def _ewald_factor(self, k: Tensor, cel: Tensor | None = None) -> Tensor:
        """8 pi k_e exp(-k^2/4beta^2) / (V k^2): potential weight of one +-k pair."""
        cel = self.cell if cel is None else cel
        volume = torch.abs(torch.linalg.det(cel))
        k2 = torch.sum(k * k, dim=1)
        beta = self.parameters.beta
        return 8.0 * math.pi * COULOMB / volume * torch.exp(-k2 / (4.0 * beta**2)) / k2

    def _kblocks(self):
        step = max(1, _BLOCK // max(self.n_atoms, 1))
        return [slice(a, a + step) for a in range(0, len(self._mvec), step)]

    def _ewald_energy(self, q, pos, cel) -> Tensor:
        recip = torch.linalg.inv(cel).T
        e = q.sum() * 0.0
        for sl in self._kblocks():
            k = 2.0 * math.pi * self._mvec[sl] @ recip
            phase = pos @ k.T
            c, s = q @ torch.cos(phase), q @ torch.sin(phase)
            e = e + 0.5 * torch.sum(self._ewald_factor(k, cel) * (c * c + s * s))
        return e

    def _ewald_potential(self, q, pos, cel) -> Tensor:
        recip = torch.linalg.inv(cel).T
        phi = torch.zeros(self.n_atoms, dtype=_F64)
        for sl in self._kblocks():
            k = 2.0 * math.pi * self._mvec[sl] @ recip
            phase = pos @ k.T
            cos, sin = torch.cos(phase), torch.sin(phase)
            fk = self._ewald_factor(k, cel)
            phi = phi + cos @ (fk * (q @ cos)) + sin @ (fk * (q @ sin))
        return phi

    # smooth particle-mesh Ewald

    def _pme_weights(self, pos: Tensor, cel: Tensor) -> tuple[Tensor, Tensor]:
        return spline_weights(pos, cel, self.parameters.grid, self.parameters.order)

    def _rfft_multiplicity(self) -> Tensor:
        return rfft_multiplicity(self.parameters.grid[2])

    def _pme_influence(self, cel: Tensor, splines: bool = True) -> Tensor:
        """G(m) = k_e B(m) exp(-pi^2 m^2 / beta^2) / (2 pi V m^2) on the rfft half grid,
        with E_rec = sum_m G(m) |F(Q)(m)|^2 over the full grid and G(0) = 0."""
        p = self.parameters
        m2 = reciprocal_norms(cel, p.grid)
        zero = m2 == 0
        m2safe = torch.where(zero, torch.ones_like(m2), m2)
        volume = torch.abs(torch.linalg.det(cel))
        g = COULOMB / (2.0 * math.pi * volume) * torch.exp(
            -(math.pi**2 / p.beta**2) * m2safe) / m2safe
        if splines:
            g = g * bspline_modulus(p.grid, p.order)
        return torch.where(zero, torch.zeros_like(g), g)

    def _pme_grid(self, q: Tensor, pos: Tensor, cel: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        w, flat = self._pme_weights(pos, cel)
        k1, k2, k3 = self.parameters.grid
        grid = torch.zeros(k1 * k2 * k3, dtype=_F64).index_add(
            0, flat.reshape(-1), (q[:, None] * w).reshape(-1))
        return grid.reshape(k1, k2, k3), w, flat

    def _pme_energy(self, q, pos, cel) -> Tensor:
        grid, _, _ = self._pme_grid(q, pos, cel)
        fq = torch.fft.rfftn(grid)
        g = self._pme_influence(cel) * self._rfft_multiplicity()
        return torch.sum(g * (fq.real**2 + fq.imag**2))

    def _pme_potential(self, q, pos, cel) -> Tensor:
        grid, w, flat = self._pme_grid(q, pos, cel)
        shape = self.parameters.grid
        theta = 2.0 * math.prod(shape) * self._pme_influence(cel)
        pot = torch.fft.irfftn(theta * torch.fft.rfftn(grid), s=shape).reshape(-1)
        return torch.sum(w * pot[flat], dim=1)

    # analytic forces and virials (periodic); virial = dE/d strain (3, 3)

    def _real_forces_virial(self, q: Tensor) -> tuple[float, np.ndarray, np.ndarray]:
        qn, pos, cell = q.numpy(), self.positions.numpy(), self.cell.numpy()
        wid, beta = self.widths.numpy(), self.parameters.beta
        energy, forces, virial = 0.0, np.zeros((self.n_atoms, 3)), np.zeros((3, 3))
        for sl in self._slices():
            i, j = self._i[sl].numpy(), self._j[sl].numpy()
            d = pos[j] - pos[i] + self._shift[sl].numpy() @ cell
            r = np.sqrt(np.einsum("pk,pk->p", d, d))
            gamma = 1.0 / np.sqrt(wid[i] ** 2 + wid[j] ** 2)
            v = COULOMB * (scipy.special.erfc(beta * r) - scipy.special.erfc(gamma * r)) / r
            dv = (2.0 * COULOMB / _SQRT_PI * (gamma * np.exp(-(gamma * r) ** 2)
                                              - beta * np.exp(-(beta * r) ** 2)) - v) / r
            qq = qn[i] * qn[j]
            energy += float(qq @ v)
            fpair = (qq * dv / r)[:, None] * d  # dE/d(r_j - r_i)
            virial += d.T @ fpair
            for k in range(3):
                forces[:, k] += np.bincount(i, fpair[:, k], self.n_atoms) - np.bincount(
                    j, fpair[:, k], self.n_atoms)
        return energy, forces, virial

    def _ewald_forces_virial(self, q: Tensor) -> tuple[float, Tensor, np.ndarray]:
        with torch.enable_grad():
            pos = self.positions.clone().requires_grad_(True)
            strain = torch.zeros(3, 3, dtype=_F64, requires_grad=True)
            deform = torch.eye(3, dtype=_F64) + strain
            e = self._ewald_energy(q, pos @ deform, self.cell @ deform)
            gpos, gstrain = torch.autograd.grad(e, (pos, strain))
        return float(e.detach()), -gpos, gstrain.numpy()

    def _pme_forces_virial(self, q: Tensor) -> tuple[float, Tensor, np.ndarray]:
        p = self.parameters
        f = self._fast_operator()
        grid = torch.from_numpy(f["spread"].T @ q.numpy()).reshape(p.grid)
        fq = torch.fft.rfftn(grid)
        pot = torch.fft.irfftn(f["theta"] * fq, s=p.grid).reshape(-1)
        # E_rec = Q.pot / 2 with dE/dQ = pot: forces from the spline derivatives
        forces = torch.zeros(self.n_atoms, 3, dtype=_F64)
        scale = torch.tensor(p.grid, dtype=_F64)[None, :] * q[:, None]
        inv_t = torch.linalg.inv(self.cell).T
        step = max(1, _BLOCK // p.order**3)
        for a in range(0, self.n_atoms, step):
            th, dth, idx = _spline_factors(self.positions[a:a + step], self.cell, p.grid,
                                           p.order, derivative=True)
            pv = pot[_flat_index(idx, p.grid)]
            t3 = torch.einsum("nabc,nc->nab", pv, th[2])
            d3 = torch.einsum("nabc,nc->nab", pv, dth[2])
            du = torch.stack([torch.einsum("nab,na,nb->n", t3, dth[0], th[1]),
                              torch.einsum("nab,na,nb->n", t3, th[0], dth[1]),
                              torch.einsum("nab,na,nb->n", d3, th[0], th[1])], dim=1)
            forces[a:a + step] = -(du * scale[a:a + step]) @ inv_t
        # a homogeneous strain leaves fractional coordinates, hence Q, unchanged: only the
        # influence function G(m; cell) responds
        power = (fq.real**2 + fq.imag**2) * self._rfft_multiplicity()
        with torch.enable_grad():
            strain = torch.zeros(3, 3, dtype=_F64, requires_grad=True)
            e = torch.sum(self._pme_influence(self.cell @ (torch.eye(3, dtype=_F64) + strain))
                          * power)
            (gstrain,) = torch.autograd.grad(e, strain)
        return float(e.detach()), forces, gstrain.numpy()

    # cached operator for matvec

    def _fast_operator(self) -> dict:
        if self._fast:
            return self._fast
        f: dict = {}
        n = self.n_atoms
        if not self.periodic:
            if n <= _FREE_DENSE_MAX:
                f["dense"] = self._free_matrix()
            self._fast = f
            return f
        p = self.parameters
        i, j = self._i.numpy(), self._j.numpy()
        v = self._real_kernel(self.positions, self.cell, self.widths).numpy()
        f["real"] = scipy.sparse.csr_matrix(
            (np.concatenate([v, v]), (np.concatenate([i, j]), np.concatenate([j, i]))),
            shape=(n, n))
        f["widths"] = self.widths.numpy()
        f["diag"] = 2.0 * self_coefficient(f["widths"], p.beta)
        if p.kspace == "pme":
            f["spread"] = spreading_matrix(self.positions, self.cell, p.grid, p.order)
            f["theta"] = 2.0 * math.prod(p.grid) * self._pme_influence(self.cell)
            f["rec_self"] = 2.0 * float(torch.sum(
                self._pme_influence(self.cell, splines=False) * self._rfft_multiplicity()))
        else:
            k = 2.0 * math.pi * self._mvec @ torch.linalg.inv(self.cell).T
            phase = (self.positions @ k.T).numpy()
            f["cos"], f["sin"] = np.cos(phase), np.sin(phase)
            f["fk"] = self._ewald_factor(k).numpy()
        self._fast = f
        return f


def electrostatic_energy(charges, positions, cell, pbc, widths, *,
                         accuracy: float = DEFAULT_ACCURACY, kspace: str = "auto") -> Tensor:
    """Electrostatic energy (eV) of Gaussian charges, differentiable in all tensor inputs.

    Convenience wrapper around :class:`Electrostatics` for one evaluation: charges (e),
    positions (Angstrom), cell rows (Angstrom), pbc (all True or all False), widths alpha
    (Angstrom)."""
    es = Electrostatics(_detached(positions), _detached(cell), pbc, _detached(widths),
                        accuracy=accuracy, kspace=kspace)
    return es.energy(charges, _tensor(positions),
                     _tensor(cell) if es.periodic else None, _tensor(widths))


def _detached(x):
    return x.detach() if isinstance(x, Tensor) else x

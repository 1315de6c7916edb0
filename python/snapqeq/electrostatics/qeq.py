"""Charge equilibration (QEq) with Gaussian charges (SPEC §5).

The charges minimise

    U(q) = sum_i [chi_i q_i + J_i q_i^2 / 2] + E_es(q)     subject to  sum_i q_i = Q

where E_es is the Gaussian-charge electrostatic energy of :mod:`snapqeq.electrostatics.ewald` (free
boundary conditions or Ewald sums; its self term supplies the k_e gamma_ii q_i^2 / sqrt(pi)
of SPEC's diagonal). With A = diag(J) + A_es the minimiser solves the bordered system
[A 1; 1^T 0][q; lambda] = [-chi; Q]; A is positive definite on sum q = 0, so q is unique.

Two solvers share one operator:

- ``"dense"``: LU factorisation of the bordered (N+1) x (N+1) matrix (direct Ewald sum for
  periodic cells), with iterative refinement; O(N^3).
- ``"cg"``: projected, preconditioned conjugate gradients on the matrix-free product
  q -> (J + A_es) q (sparse real space + smooth PME); every search direction has zero sum, so
  sum q = Q holds to round-off from any feasible start; warm-startable; O(N log N) per step.
  Periodic cells use a Jacobi preconditioner with the long-wavelength Coulomb stiffness
  removed in Fourier space, which keeps the iteration count flat with system size
  (:class:`_ScreeningPreconditioner`); clusters use Jacobi.

For clusters above :data:`DENSE_MAX_ATOMS`, and periodic cells above it up to
:data:`KERNEL_MAX_PERIODIC` atoms, :func:`equilibrate` uses the conjugate
gradients of the C++ electrostatics kernel instead (``"kernel"``: the solver of the LAMMPS
plugin, with its Ewald parameters and its preconditioners), so that the ASE calculator and
the plugin give the same numbers (to the solver tolerance) at their default settings.

:func:`equilibrate` is the user-facing entry point (numpy in, :class:`QEqResult` out).
:func:`qeq_energy` is the same physics for the model: it returns U(q*) and q* as torch tensors
that are differentiable with respect to chi, positions, cell, hardness and widths.

Units: Angstrom, e, eV; chi in eV/e, J in eV/e^2, widths alpha in Angstrom.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from ase.stress import full_3x3_to_voigt_6_stress
from torch import Tensor

from snapqeq.electrostatics.ewald import (
    DEFAULT_ACCURACY,
    Electrostatics,
    check_structure,
    ewald_parameters,
    fft_size,
    half_pairs,
    reciprocal_norms,
    spreading_matrix,
)
from snapqeq.units import COULOMB

__all__ = [
    "DENSE_MAX_ATOMS",
    "KERNEL_MAX_PERIODIC",
    "QEqConvergenceError",
    "QEqResult",
    "ConstrainedSolver",
    "equilibrate",
    "fixed_charge_forces",
    "per_atom",
    "qeq_energy",
    "total_charge_of",
]

DENSE_MAX_ATOMS = {"free": 250, "periodic": 300}
"""``method="auto"`` solves densely up to these sizes (free clusters / periodic cells) and
with conjugate gradients above; the crossover measured by benchmarks/bench_qeq.py."""

KERNEL_MAX_PERIODIC = 2000
"""``method="auto"`` equilibrates periodic cells above the dense limit and up to this many
atoms with the C++ kernel (direct Ewald sum, the LAMMPS plugin's solver and parameters),
larger ones with ``"cg"`` (PME, cheaper there); crossover measured at ~1700-2700 atoms."""

CG_PME_MIN_ATOMS = 401
"""Periodic cells of at least this many atoms solved by ``method="cg"`` (and
:func:`qeq_energy`) use smooth PME, smaller ones the direct Ewald sum."""

_F64 = torch.float64


class QEqConvergenceError(RuntimeError):
    """The iterative charge equilibration did not reach the requested tolerance."""


@dataclass
class QEqResult:
    """Equilibrated charges and the quantities at the solution.

    Attributes
    ----------
    charges : (N,) ndarray
        Charges q (e); sum equals the total charge to round-off.
    energy : float
        U(q) = sum chi q + sum J q^2 / 2 + E_es(q) (eV); no reference energies E0.
    potential : (N,) ndarray
        Electrostatic site potential phi_i = dE_es/dq_i (eV/e).
    forces : (N, 3) ndarray or None
        -dU/dr at fixed charges and fixed chi (eV/Angstrom); by the variational principle
        these are the total forces when chi does not depend on positions.
    stress : (6,) ndarray or None
        (1/V) dU/d strain at fixed charges (eV/Angstrom^3, ASE Voigt order); periodic only.
    iterations : int
        Conjugate-gradient iterations (0 for the dense solver).
    residual : float
        ||P(A q + chi)|| / ||P(A q_u + chi)||: the spread of the electronegativity
        dU/dq_i left at the solution relative to that at uniform charges q_u = Q/N
        (P removes the mean).
    chemical_potential : float
        mu = dU/dq_i (eV/e), equal on all atoms at the solution (= -lambda).
    method : str
        ``"dense"``, ``"cg"`` or ``"kernel"``.
    """

    charges: np.ndarray
    energy: float
    potential: np.ndarray
    forces: np.ndarray | None
    stress: np.ndarray | None
    iterations: int
    residual: float
    chemical_potential: float
    method: str


# --------------------------------------------------------------------------- input checks


def per_atom(values, symbols: Sequence[str], name: str, unit: str,
             positive: bool = False) -> np.ndarray:
    """Expand a per-atom sequence, a scalar or a {element: value} dict to an (N,) array.

    Raises ValueError for a wrong length, an element missing from the dict, non-finite
    values, or (with ``positive``) values <= 0.
    """
    n = len(symbols)
    if isinstance(values, Mapping):
        missing = sorted(set(symbols) - set(values))
        if missing:
            raise ValueError(f"{name} has no value for element(s) {missing}; give "
                             f"{name} for every element in the structure")
        arr = np.array([float(values[s]) for s in symbols], dtype=np.float64)
    else:
        if isinstance(values, Tensor):
            values = values.detach().cpu().numpy()
        arr = np.asarray(values, dtype=np.float64)
        if arr.ndim == 0:
            arr = np.full(n, float(arr))
        if arr.shape != (n,):
            raise ValueError(f"{name} must have one value per atom ({n}), got shape "
                             f"{arr.shape}")
    bad = ~np.isfinite(arr)
    if positive:
        bad |= ~(arr > 0.0)
    if bad.any():
        idx = np.flatnonzero(bad)[:10]
        need = "finite and > 0" if positive else "finite"
        raise ValueError(f"{name} ({unit}) must be {need}; atoms {idx.tolist()} have "
                         f"{arr[idx].tolist()}")
    return arr


def _check_scalar(x: float, name: str) -> float:
    x = float(x)
    if not math.isfinite(x):
        raise ValueError(f"{name} must be finite, got {x}")
    return x


def _check_method(method: str) -> None:
    if method not in ("auto", "dense", "cg"):
        raise ValueError(f"method must be 'auto', 'dense' or 'cg', got {method!r}")


def _resolve_method(method: str, n: int, periodic: bool) -> str:
    _check_method(method)
    if method != "auto":
        return method
    return "dense" if n <= DENSE_MAX_ATOMS["periodic" if periodic else "free"] else "cg"


def _electrostatics(positions, cell, pbc, widths, method: str,
                    accuracy: float | None) -> Electrostatics:
    # the dense solver needs the explicit Ewald matrix, so its energies use the direct sum;
    # torch's CG takes PME (its own beta) from CG_PME_MIN_ATOMS atoms on, 2-5x cheaper
    # there than the direct sum with the kernel's parameters (the "kernel" method gives
    # the plugin's numbers at those sizes)
    kspace = "ewald" if method == "dense" or len(positions) < CG_PME_MIN_ATOMS else "pme"
    return Electrostatics(positions, cell, pbc, widths, kspace=kspace,
                          accuracy=DEFAULT_ACCURACY if accuracy is None else accuracy)


# --------------------------------------------------------------------------- solver


@dataclass
class _Solution:
    x: Tensor
    mu: float
    iterations: int
    residual: float
    ax: Tensor  # A x, reused for potentials and energies
    ref: float  # absolute residual scale of this solve (eV/e)


class ConstrainedSolver:
    """Solves min_x x.A.x/2 - b.x subject to sum x = c, with A = diag(J) + A_es.

    Equivalently [A 1; 1^T 0][x; -mu] = [b; c]. One instance serves one geometry: the
    main charge solve and the adjoint solves of :func:`qeq_energy`'s backward pass.

    Parameters
    ----------
    electrostatics : Electrostatics
        The geometry and its electrostatic operator A_es.
    hardness : (N,) tensor
        J (eV/e^2), > 0.
    method : {"dense", "cg"}
    tol : float
        Relative tolerance on the residual (see :class:`QEqResult`).
    max_iter : int, optional
        Conjugate-gradient iteration limit (default max(1000, 10 sqrt(N))).
    """

    def __init__(self, electrostatics: Electrostatics, hardness: Tensor, method: str,
                 tol: float, max_iter: int | None = None):
        if method not in ("dense", "cg"):
            raise ValueError(f"method must be 'dense' or 'cg', got {method!r}")
        if not tol > 0.0:
            raise ValueError(f"tol must be > 0, got {tol}")
        self.es = electrostatics
        self.hardness = hardness.detach().to(_F64)
        self.method = method
        self.tol = float(tol)
        n = electrostatics.n_atoms
        self.max_iter = int(max_iter) if max_iter is not None else max(1000, int(10 * n**0.5))
        self.scale = 0.0  # residual scale of the main solve; sets adjoint tolerances
        if method == "dense":
            a = electrostatics.matrix()
            a.diagonal().add_(self.hardness)
            self._a = a
            bordered = torch.zeros(n + 1, n + 1, dtype=_F64)
            bordered[:n, :n] = a
            bordered[:n, n] = 1.0
            bordered[n, :n] = 1.0
            self._lu = torch.linalg.lu_factor(bordered)
        else:
            dinv = 1.0 / (self.hardness + electrostatics.diagonal())
            if not torch.all(dinv > 0):
                raise ValueError("the QEq matrix has a non-positive diagonal; check hardness "
                                 "and widths")
            sum_dinv = float(dinv.sum())

            def jacobi(r: Tensor) -> Tensor:
                # M^-1 (r - m 1) with m such that the result sums to zero
                return dinv * (r - float((dinv * r).sum()) / sum_dinv)

            self._jacobi = jacobi
            self._precondition = (_ScreeningPreconditioner(electrostatics, dinv)
                                  if electrostatics.periodic else jacobi)

    def matvec(self, x: Tensor) -> Tensor:
        """(J + A_es) x in eV/e."""
        if self.method == "dense":
            return self._a @ x
        return self.hardness * x + self.es.matvec(x)

    @staticmethod
    def _project(r: Tensor) -> Tensor:
        return r - r.mean()

    def solve(self, b: Tensor, total: float, x0: Tensor | None = None,
              ref: float | None = None) -> _Solution:
        """Solve with right-hand side b (eV/e) and sum x = total (e).

        Converged when ||P(b - A x)|| <= tol * ref; ``ref`` defaults to the residual of the
        uniform vector total/N, and a right-hand side smaller than that returns at once."""
        b = b.detach().to(_F64)
        n = len(b)
        uniform = torch.full((n,), total / max(n, 1), dtype=_F64)
        if ref is None:
            au = self.matvec(uniform) if total != 0.0 else torch.zeros(n, dtype=_F64)
            ref = float(torch.linalg.norm(self._project(b - au)))
        ref = max(ref, 1e-300)
        if self.method == "dense":
            return self._solve_dense(b, total, ref)
        x = uniform if x0 is None else x0.detach().to(_F64) + (total - float(x0.sum())) / n
        return self._solve_cg(b, total, x, ref)

    def _finish(self, x: Tensor, ax: Tensor, b: Tensor, total: float, ref: float,
                iterations: int) -> _Solution:
        x = x + (total - float(x.sum())) / len(x)  # remove round-off drift of sum x
        r = ax - b
        return _Solution(x, float(r.mean()), iterations,
                         float(torch.linalg.norm(self._project(r))) / ref, ax, ref)

    def _solve_dense(self, b: Tensor, total: float, ref: float) -> _Solution:
        n = len(b)
        rhs = torch.cat([b, torch.tensor([total], dtype=_F64)])
        sol = torch.linalg.lu_solve(*self._lu, rhs[:, None])[:, 0]
        for _ in range(3):  # iterative refinement against round-off
            x = sol[:n]
            ax = self._a @ x
            res = rhs - torch.cat([ax + sol[n], x.sum()[None]])
            if float(torch.linalg.norm(self._project(res[:n]))) <= 0.01 * self.tol * ref:
                break
            sol = sol + torch.linalg.lu_solve(*self._lu, res[:, None])[:, 0]
        x = sol[:n]
        out = self._finish(x, self._a @ x, b, total, ref, 0)
        if not out.residual <= self.tol or not math.isfinite(out.residual):
            raise QEqConvergenceError(
                f"dense QEq solve reached only a relative residual {out.residual:.3g} "
                f"(tol {self.tol:g}); the system is ill-conditioned - check hardness, "
                f"widths and geometry")
        return out

    def _solve_cg(self, b: Tensor, total: float, x: Tensor, ref: float) -> _Solution:
        precondition = self._precondition
        target = self.tol * ref
        iterations = 0
        for _restart in range(5):
            ax = self.matvec(x)
            # adding c 1 to r changes neither the problem nor z, but keeping r projected
            # stops the (large) Lagrange part of r from swamping the update in round-off
            r = self._project(b - ax)
            rnorm = float(torch.linalg.norm(r))
            if not math.isfinite(rnorm):
                raise QEqConvergenceError("QEq conjugate gradients produced non-finite values")
            if rnorm <= target:
                return self._finish(x, ax, b, total, ref, iterations)
            z = precondition(r)
            p = z
            rz = float(r @ z)
            if not rz > 0.0:
                precondition = self._precondition = self._jacobi
                continue
            while iterations < self.max_iter:
                ap = self.matvec(p)
                pap = float(p @ ap)
                if not pap > 0.0:
                    raise QEqConvergenceError(
                        f"QEq matrix is not positive definite on sum q = const (p.A.p = "
                        f"{pap:.3g}); check hardness (> 0) and widths")
                alpha = rz / pap
                x = x + alpha * p
                r = self._project(r - alpha * ap)
                iterations += 1
                if float(torch.linalg.norm(r)) <= target:
                    break  # verified against the true residual by the restart loop
                z = precondition(r)
                rz_new = float(r @ z)
                if not rz_new > 0.0:  # preconditioner not positive definite: use Jacobi
                    precondition = self._precondition = self._jacobi
                    break
                p = z + (rz_new / rz) * p
                rz = rz_new
            else:
                break
        ax = self.matvec(x)
        res = float(torch.linalg.norm(self._project(b - ax))) / ref
        raise QEqConvergenceError(
            f"QEq conjugate gradients did not converge: relative residual {res:.3g} after "
            f"{iterations} iterations (tol {self.tol:g}); raise max_iter or tol, or check "
            f"the input (hardness, widths, geometry)")

    def project_solve(self, b: Tensor) -> Tensor:
        """x = S b: the solution with sum x = 0 of [A 1; 1^T 0][x; .] = [b; 0].

        S is symmetric; it is the derivative of the charges with respect to -chi. A right-hand
        side below the main solve's convergence threshold gives x = 0 (CG) at no cost."""
        ref = max(float(torch.linalg.norm(self._project(b.detach()))), self.scale)
        return self.solve(b, 0.0, ref=ref).x


class _ScreeningPreconditioner:
    """Jacobi preconditioner with the long-range Coulomb stiffness removed in Fourier space.

    On a long charge wave (wavevector k) the electrostatic matrix acts like the continuum
    Coulomb operator c(k) = 4 pi k_e exp(-k^2 sigma^2) / (Omega k^2) (Omega = V/N), which
    makes long waves stiff: with a Jacobi preconditioner alone the condition number grows
    like L^2 and CG needs O(N^(1/3)) iterations (25 -> 80 from 512 to 33k atoms of NaCl).
    Writing A ~ D + W Phi W^T (D the diagonal, W the B-spline assignment to a coarse grid,
    Phi the Coulomb convolution) and replacing W^T D^-1 W by a constant omega, Woodbury's
    identity gives

        M^-1 = D^-1 - D^-1 W H W^T D^-1,    H(k) = Phi(k) / (1 + Phi(k) omega),

    i.e. on long waves M^-1 ~ 1 / (D + c). The iteration count then stays flat (14-20 from
    1k to 110k atoms of rattled NaCl, tol 1e-10). M is positive definite when H omega' < 1
    for the local density omega' of the structure; the choices below were checked with
    Lanczos (largest eigenvalue of D^-1/2 W H W^T D^-1/2 <= 0.97-0.99) on rattled and
    disordered triclinic NaCl up to 110k atoms, a cluster in a large box and a slab: omega
    is the largest smoothed local density, not the mean (vacuum regions); the grid is
    coarse (2 Angstrom, order-4 splines: finer grids alias the atomic structure into the
    long waves); there is no k = 0 term (the mean is projected out anyway); c(k) omega is
    capped at 100. Should r.z ever come out non-positive the solver falls back to Jacobi.
    """

    spacing = 2.0  # grid spacing, Angstrom
    order = 4  # B-spline order of the assignment
    smoothing = 5.0  # Angstrom, for the local density omega
    max_screening = 100.0  # cap on c(k) omega

    def __init__(self, es: Electrostatics, dinv: Tensor):
        lengths = torch.linalg.norm(es.cell, dim=1)
        grid = tuple(fft_size(float(a) / self.spacing, 2 * self.order) for a in lengths)
        ng = math.prod(grid)
        self._w = spreading_matrix(es.positions, es.cell, grid, self.order)
        k2 = (2.0 * math.pi) ** 2 * reciprocal_norms(es.cell, grid)
        # omega: the largest local density of 1/D (the grid field W^T D^-1 1 averaged over
        # a Gaussian of 5 Angstrom); equals the mean in a homogeneous bulk and the density
        # inside a cluster or slab surrounded by vacuum
        dens = torch.from_numpy(self._w.T @ dinv.numpy()).reshape(grid)
        dens = torch.fft.irfftn(torch.fft.rfftn(dens) * torch.exp(-0.5 * k2 * self.smoothing**2),
                                s=grid)
        omega = float(dens.max())
        sigma2 = 0.5 * float((es.widths**2).mean())
        zero = k2 == 0
        k2 = torch.where(zero, torch.ones_like(k2), k2)
        # Phi(k) = c(k) prod(grid) / N: spreading an atomic wave puts N / prod(grid) atoms'
        # worth on each grid point, gathering returns c(k) times the wave
        phi = 4.0 * math.pi * COULOMB * ng / es.volume * torch.exp(-k2 * sigma2) / k2
        phi = torch.clamp(phi, max=self.max_screening / omega)
        self._h = torch.where(zero, torch.zeros_like(phi), phi / (1.0 + phi * omega))
        self._grid = grid
        self._dinv = dinv.numpy()

    def __call__(self, r: Tensor) -> Tensor:
        x = self._dinv * r.numpy()
        grid = torch.from_numpy(self._w.T @ x).reshape(self._grid)
        y = self._w @ torch.fft.irfftn(self._h * torch.fft.rfftn(grid), s=self._grid
                                       ).reshape(-1).numpy()
        z = torch.from_numpy(x - self._dinv * y)
        return z - z.mean()


class _ProjectedSolve(torch.autograd.Function):
    """x = S b with S the constrained inverse of the QEq matrix (fixed geometry); linear
    and symmetric, so the backward pass is S again (and so on, to any order)."""

    @staticmethod
    def forward(ctx, rhs: Tensor, solver: ConstrainedSolver) -> Tensor:
        ctx.solver = solver
        return solver.project_solve(rhs)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return _ProjectedSolve.apply(grad, ctx.solver), None


# --------------------------------------------------------------------------- public API


def total_charge_of(atoms, total_charge: float | None = None) -> float:
    """Total charge (e): the argument, else ``atoms.info["charge"]``, else the sum of
    ``atoms.get_initial_charges()`` (0 when none are set)."""
    if total_charge is not None:
        return float(total_charge)
    if "charge" in atoms.info:
        return float(atoms.info["charge"])
    return float(np.sum(atoms.get_initial_charges()))


def equilibrate(atoms, chi, hardness, widths, total_charge: float = 0.0,
                method: str = "auto", tol: float = 1e-10, initial_charges=None, *,
                accuracy: float | None = None, max_iter: int | None = None,
                compute_forces: bool = True) -> QEqResult:
    """Equilibrate the charges of a structure.

    Parameters
    ----------
    atoms : ase.Atoms
        Cluster (pbc all False) or periodic cell (pbc all True); any triclinic cell.
    chi : (N,) array
        Electronegativities chi_i (eV/e).
    hardness : (N,) array, scalar or {element: value}
        Hardness J (eV/e^2), > 0.
    widths : (N,) array, scalar or {element: value}
        Gaussian widths alpha (Angstrom), > 0.
    total_charge : float
        Total charge Q (e); a net-charged periodic cell gets a uniform background.
    method : {"auto", "dense", "cg", "kernel"}
        Solver: ``"dense"``, ``"cg"`` (torch, the operator of :mod:`snapqeq.electrostatics.ewald`),
        or ``"kernel"``: conjugate gradients of the C++ electrostatics kernel that the LAMMPS
        plugin runs (:mod:`snapqeq._electrostatics`; direct Ewald sum for periodic cells;
        15-40x faster than ``"cg"`` for clusters of 1000-2000 atoms, as fast as ``"cg"``
        for periodic cells of ~1700 atoms).  ``"auto"`` is dense up to
        :data:`DENSE_MAX_ATOMS`, above that ``"kernel"`` for clusters and for periodic
        cells up to :data:`KERNEL_MAX_PERIODIC` atoms, ``"cg"`` (PME) for larger
        periodic cells.
    tol : float
        Relative residual tolerance (see :class:`QEqResult`).
    initial_charges : (N,) array, optional
        Warm start for ``"cg"`` (shifted uniformly to sum to Q).
    accuracy : float, optional
        Ewald truncation target (default :data:`snapqeq.electrostatics.ewald.DEFAULT_ACCURACY`).
    max_iter : int, optional
        Conjugate-gradient iteration limit.
    compute_forces : bool
        Also return forces and (periodic) stress at fixed charges.

    Raises
    ------
    ValueError
        Bad input: non-finite chi or positions, non-positive hardness or widths, missing
        elements, overlapping atoms, degenerate cell, mixed pbc.
    QEqConvergenceError
        The solver did not reach ``tol``.
    """
    symbols = atoms.get_chemical_symbols()
    n = len(symbols)
    chi_np = per_atom(chi, symbols, "chi", "eV/e")
    j_np = per_atom(hardness, symbols, "hardness", "eV/e^2", positive=True)
    w_np = per_atom(widths, symbols, "widths", "Angstrom", positive=True)
    total = _check_scalar(total_charge, "total_charge")
    x0 = None
    if initial_charges is not None:
        x0 = torch.from_numpy(per_atom(initial_charges, symbols, "initial_charges", "e"))
    periodic = bool(np.any(atoms.pbc))
    if method == "kernel" or (method == "auto" and n > DENSE_MAX_ATOMS[
            "periodic" if periodic else "free"] and (not periodic or n <= KERNEL_MAX_PERIODIC)):
        return _equilibrate_kernel(atoms, chi_np, j_np, w_np, total, x0, tol, max_iter,
                                   compute_forces, accuracy)
    method = _resolve_method(method, n, periodic)
    if n == 0:
        if total != 0.0:
            raise ValueError(f"total_charge {total} on a structure without atoms")
        empty = np.zeros(0)
        return QEqResult(empty, 0.0, empty, np.zeros((0, 3)), np.zeros(6) if any(atoms.pbc)
                         else None, 0, 0.0, 0.0, method)
    es = _electrostatics(atoms.positions, atoms.cell.array, atoms.pbc, w_np, method, accuracy)
    solver = ConstrainedSolver(es, torch.from_numpy(j_np), method, tol, max_iter)
    chi_t, j_t = torch.from_numpy(chi_np), torch.from_numpy(j_np)
    sol = solver.solve(-chi_t, total, x0)
    q = sol.x
    phi = sol.ax - j_t * q
    forces = stress = None
    if compute_forces:
        e_es, forces, stress = _torch_forces(es, q)
    else:
        e_es = 0.5 * torch.dot(q, phi)
    energy = float(torch.dot(chi_t, q) + 0.5 * torch.dot(j_t * q, q) + e_es)
    return QEqResult(charges=q.numpy(), energy=energy, potential=phi.numpy(), forces=forces,
                     stress=stress, iterations=sol.iterations, residual=sol.residual,
                     chemical_potential=float(sol.mu), method=method)


def _torch_forces(es: Electrostatics, q: Tensor):
    """Electrostatic energy, forces and (periodic) stress at fixed charges, torch path."""
    e_es, f, s = es.forces_stress(q)
    return e_es, f.numpy(), None if s is None else s.numpy()


def _kernel_forces(es, q: np.ndarray, periodic: bool):
    """Electrostatic forces and (periodic) stress at fixed charges, C++ kernel path."""
    forces, virial = es.forces(q)
    stress = None
    if periodic:  # ASE stress (1/V) dE/d strain = -W / V, Voigt xx yy zz yz xz xy
        stress = full_3x3_to_voigt_6_stress(-virial / es.volume)
    return forces, stress


def fixed_charge_forces(atoms, widths, charges, method: str,
                        accuracy: float | None = None):
    """Forces (N, 3) and stress (6,) or None of the electrostatic energy at fixed
    ``charges``: the numbers :func:`equilibrate` returns with ``compute_forces=True`` for a
    solve whose :attr:`QEqResult.method` was ``method`` (so that a caller which solved
    without forces can add them later for the same geometry)."""
    w_np = per_atom(widths, atoms.get_chemical_symbols(), "widths", "Angstrom",
                    positive=True)
    q = np.ascontiguousarray(charges, dtype=np.float64)
    if method == "kernel":
        es = kernel_electrostatics(atoms, w_np, accuracy)
        return _kernel_forces(es, q, bool(np.any(atoms.pbc)))
    es = _electrostatics(atoms.positions, atoms.cell.array, atoms.pbc, w_np, method, accuracy)
    _, forces, stress = _torch_forces(es, torch.from_numpy(q))
    return forces, stress


def kernel_electrostatics(atoms, widths: np.ndarray, accuracy: float | None = None):
    """The C++ kernel's Gaussian-charge electrostatics of ``atoms`` (widths in Angstrom):
    free boundaries for a cluster, direct Ewald with the kernel's parameters for the
    requested relative ``accuracy`` (default :data:`DEFAULT_ACCURACY`) for a periodic cell.
    """
    from snapqeq._electrostatics import GaussianElectrostatics

    positions = np.ascontiguousarray(atoms.positions, dtype=np.float64)
    widths = np.ascontiguousarray(widths, dtype=np.float64)
    if not bool(np.any(atoms.pbc)):
        return GaussianElectrostatics(positions, None, widths)
    accuracy = DEFAULT_ACCURACY if accuracy is None else accuracy
    cell = atoms.cell.array
    cutoff = ewald_parameters(cell, widths, len(atoms), accuracy, "ewald").cutoff
    # vesin's half list: twice faster to build and to use than a full one
    i, j, shifts, _ = half_pairs(positions, cell, True, cutoff * (1.0 + 1e-9))
    return GaussianElectrostatics(positions, cell, widths, i, j, shifts=shifts,
                                  accuracy=accuracy, full_list=False)


def _equilibrate_kernel(atoms, chi: np.ndarray, hardness: np.ndarray, widths: np.ndarray,
                        total: float, initial: Tensor | None, tol: float,
                        max_iter: int | None, compute_forces: bool,
                        accuracy: float | None = None) -> QEqResult:
    """:func:`equilibrate` with the C++ kernel (method ``"kernel"``)."""
    from snapqeq._electrostatics import solve_qeq

    n = len(atoms)
    periodic = bool(np.any(atoms.pbc))
    # the checks of the torch path (finite positions, no overlapping atoms, pbc all or
    # nothing, a proper cell), which then hold for the kernel's input as well
    check_structure(atoms.positions, atoms.cell.array, atoms.pbc, widths)
    es = kernel_electrostatics(atoms, widths, accuracy)
    maxiter = int(max_iter) if max_iter is not None else max(1000, int(10 * n**0.5))
    q, mu, iterations, converged = solve_qeq(
        es, hardness, chi, total, None if initial is None else initial.numpy(), tol, maxiter)
    phi = es.apply(q)

    def spread(v: np.ndarray) -> float:  # norm without the part the constraint absorbs
        return float(np.linalg.norm(v - v.mean()))

    uniform = np.full(n, total / n)
    scale = spread(es.apply(uniform) + hardness * uniform + chi) or 1.0
    residual = spread(phi + hardness * q + chi) / scale
    if not converged:
        raise QEqConvergenceError(
            f"QEq conjugate gradients (C++ kernel) did not converge: relative residual "
            f"{residual:.3g} after {iterations} iterations (tol {tol:g}); raise max_iter or "
            f"tol, or check the input (hardness, widths, geometry)")
    forces = stress = None
    if compute_forces:
        forces, stress = _kernel_forces(es, q, periodic)
    energy = float(chi @ q + 0.5 * hardness @ (q * q) + 0.5 * q @ phi)
    return QEqResult(charges=q, energy=energy, potential=phi, forces=forces, stress=stress,
                     iterations=int(iterations), residual=residual,
                     chemical_potential=float(mu), method="kernel")


def qeq_energy(chi: Tensor, positions: Tensor, cell: Tensor | None, pbc, hardness: Tensor,
               widths: Tensor, total_charge: float = 0.0, *, method: str = "auto",
               tol: float = 1e-10, initial_charges: Tensor | None = None,
               accuracy: float | None = None, max_iter: int | None = None
               ) -> tuple[Tensor, Tensor]:
    """QEq energy U(q*) (eV) and charges q* (e) as differentiable torch tensors.

    This is the layer the CENT model trains through. The charges are solved without
    autograd; the graph is then rebuilt from one Newton step q = q* - S g (g = A q* + chi,
    S the constrained inverse, :class:`_ProjectedSolve`) with a first-order correction
    for the dependence of S on the geometry. Because U is quadratic in q, one Newton step
    from any feasible point is exact, so

    - the returned values are the converged ones;
    - first derivatives are exact: dU/dchi_i = q_i and dU/dr = dU/dr|_q (Hellmann-Feynman,
      the variational principle), dq/dchi = -S and dq/dr = -S (dA/dr) q;
    - second derivatives of U and of q (training on forces, with or without a
      charge-dependent short-range energy) are exact too. Derivatives with respect to
      charges cost one extra linear solve per backward pass (the adjoint solve of SPEC §5),
      and nothing when only the forces of U are needed.

    Parameters
    ----------
    chi : (N,) tensor
        Electronegativities (eV/e).
    positions : (N, 3) tensor
        Positions (Angstrom); may require grad (forces).
    cell : (3, 3) tensor or None
        Cell rows (Angstrom); may require grad (stress, via a strained cell and positions).
    pbc : bool or 3 bools
        All True (periodic) or all False (cluster).
    hardness : (N,) tensor
        J per atom (eV/e^2), > 0; may require grad.
    widths : (N,) tensor
        alpha per atom (Angstrom), > 0; may require grad.
    total_charge : float
        Q (e).
    method, tol, initial_charges, accuracy, max_iter
        As in :func:`equilibrate`.

    Returns
    -------
    energy : scalar tensor
        U(q*) = chi.q + J.q^2 / 2 + E_es(q) (eV), without reference energies.
    charges : (N,) tensor
    """
    chi = torch.as_tensor(chi, dtype=_F64)
    positions = torch.as_tensor(positions, dtype=_F64)
    hardness = torch.as_tensor(hardness, dtype=_F64)
    widths = torch.as_tensor(widths, dtype=_F64)
    n = len(positions)
    symbols = ["X"] * n
    per_atom(chi, symbols, "chi", "eV/e")
    per_atom(hardness, symbols, "hardness", "eV/e^2", positive=True)
    per_atom(widths, symbols, "widths", "Angstrom", positive=True)
    total = _check_scalar(total_charge, "total_charge")
    pbc_arr = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))
    periodic = bool(pbc_arr.any())
    cell_t = (torch.as_tensor(cell, dtype=_F64) if cell is not None
              else torch.zeros(3, 3, dtype=_F64))
    method = _resolve_method(method, n, periodic)
    es = _electrostatics(positions.detach(), cell_t.detach(), pbc_arr, widths.detach(), method,
                         accuracy)
    solver = ConstrainedSolver(es, hardness, method, tol, max_iter)
    x0 = None
    if initial_charges is not None:
        x0 = torch.as_tensor(initial_charges, dtype=_F64).detach()
        per_atom(x0, symbols, "initial_charges", "e")
    sol = solver.solve(-chi.detach(), total, x0)
    solver.scale = sol.ref
    q_star = sol.x
    cell_arg = cell_t if periodic else None
    tensors = (chi, positions, cell_t, hardness, widths)
    if not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors)):
        e = torch.dot(chi, q_star) + 0.5 * torch.dot(hardness * q_star, q_star)
        return e + 0.5 * torch.dot(q_star, sol.ax - hardness * q_star), q_star

    def qeq_matvec(y: Tensor) -> Tensor:  # (J + A_es) y, differentiable in the geometry
        return hardness * y + es.potential(y, positions, cell_arg, widths)

    def qeq_matvec_fixed(y: Tensor) -> Tensor:  # the operator S inverts (graph in y only)
        return solver.hardness * y + es.potential(y)

    g = chi + qeq_matvec(q_star)
    y = _ProjectedSolve.apply(g, solver)
    q = q_star - y + _ProjectedSolve.apply(qeq_matvec(y) - qeq_matvec_fixed(y), solver)
    e = torch.dot(chi, q) + 0.5 * torch.dot(hardness * q, q) + es.energy(
        q, positions, cell_arg, widths)
    return e, q

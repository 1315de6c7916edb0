# distutils: language = c++
# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Cython binding of the C++ electrostatics kernel (kernel/electrostatics.h).

The same code runs inside the LAMMPS plugin (``pair_style snapqeq``); here it runs in one
process, without MPI, and without threads.  Units: Angstrom, e, eV (potentials eV/e,
forces eV/Angstrom, virials eV); Coulomb constant k_e = 14.399645478425672 eV Angstrom /
e^2 (CODATA 2018, ``COULOMB``).

Physics (SPEC section 5).  Atom i carries a Gaussian charge of width alpha_i; the
electrostatic energy is E_es = 1/2 q^T A q with

* free boundaries (``cell=None``): A_ij = k_e erf(g_ij r_ij)/r_ij,
  A_ii = 2 k_e g_ii/sqrt(pi), g_ij = 1/sqrt(alpha_i^2 + alpha_j^2), g_ii = 1/(sqrt 2 alpha_i);
* periodic cells: the Ewald sum of the same Gaussians (real space, reciprocal space,
  self energy, and a uniform background for net-charged cells, so the result does not
  depend on the splitting parameter beta <= min g_ij).  The real space runs over a pair
  list inside the real-space cutoff, the reciprocal space over the Ewald k vectors with
  |k| <= kcut.  ``accuracy`` bounds the relative truncation error of both sums: with
  eps' = accuracy / 10, cutoff = erfcinv(eps') / beta and kcut = 2 beta sqrt(-ln eps').
  This is the project's one Ewald parameter rule: :func:`snapqeq.electrostatics.ewald.ewald_parameters`
  and the LAMMPS plugin take beta and both cutoffs from here.

API
---
``ewald_parameters(n_atoms, cell, widths, accuracy=1e-6, cutoff=None)``
    dict with ``beta`` (1/Angstrom), ``cutoff`` (Angstrom), ``kcut`` (1/Angstrom) and
    ``accuracy``: the values the class below uses.  Without ``cutoff`` beta balances the
    real-space against the reciprocal-space work, beta ~ (N/V^2)^(1/6); with a cutoff,
    beta = erfcinv(accuracy / 10) / cutoff (which must not exceed min g).

``ewald_truncation(beta, accuracy=1e-6)``
    the same dict for a given beta (the two cutoffs of the rule above).

``COULOMB``, ``HARTREE``, ``BOHR``
    the kernel's constants (eV Angstrom / e^2, eV, Angstrom; CODATA 2018, as
    :mod:`snapqeq.units`).

``GaussianElectrostatics(positions, cell, widths, i=None, j=None, vectors=None, *,
shifts=None, accuracy=1e-6, cutoff=None, full_list=True)``
    One geometry.  positions (N, 3); cell (3, 3) lattice vectors as rows (any
    orientation) or None for free boundaries; widths (N,) > 0.  Periodic cells need the
    real-space pairs within ``self.cutoff``: ``i``, ``j`` (P,) atom indices and either
    ``vectors`` (P, 3) = r_j + S cell - r_i or integer ``shifts`` S (P, 3), e.g. from
    ``snapqeq.neighbors.build_pairs`` or ``vesin``; pairs beyond the cutoff are ignored.
    ``full_list=True``: every pair appears in both directions (vesin full lists);
    ``False``: once (half lists).  Without a pair list one is built with
    ``snapqeq.neighbors.build_pairs`` (a full list).  To build your own list, get the
    cutoff first from ``ewald_parameters`` (or pass ``cutoff``).  Free boundaries take all
    pairs (O(N^2)) and ignore a pair list.

    Methods:

    * ``apply(v)``: A v for v of shape (N,) or (m, N) (charges in e -> potentials eV/e);
    * ``diagonal()``: A_ii, (N,) eV/e^2;
    * ``energy(q)``: 1/2 q^T A q (eV);
    * ``forces(a, b=None, per_atom=False)``: forces (N, 3) eV/Angstrom and virial (3, 3) eV
      (W = sum r (x) F, stress = -W / V) of E = 1/2 a^T A b at fixed a and b (b = a: the
      electrostatic forces at fixed charges; b != a: the bilinear adjoint term); with
      ``per_atom=True`` also the per-atom virials (N, 3, 3);
    * read-only attributes ``n_atoms``, ``periodic``, ``beta``, ``cutoff``, ``kcut``,
      ``accuracy``, ``volume``, ``n_kvectors``, ``n_pairs`` (pairs inside the cutoff).

``solve_qeq(es, hardness, chi, total_charge=0.0, initial=None, tol=1e-10, maxiter=1000)``
    Charges minimizing chi.q + 1/2 q (diag(hardness) + A) q subject to sum q =
    total_charge (hardness (N,) eV/e^2, chi (N,) eV/e): projected preconditioned conjugate
    gradients from ``initial`` (shifted to the total; default the Jacobi estimate),
    converged when the projected residual is below ``tol`` times that of uniform charges.
    Returns ``(charges, multiplier, iterations, converged)``; the multiplier is the
    equalized electronegativity (chemical potential, eV/e) dU/dq_i.

Example (an ASE ``atoms`` with per-atom ``widths``, ``hardness`` and ``chi``)::

    from snapqeq._electrostatics import GaussianElectrostatics, solve_qeq
    cell = atoms.cell.array if atoms.pbc.all() else None
    es = GaussianElectrostatics(atoms.positions, cell, widths)   # builds its pair list
    q, mu, iterations, converged = solve_qeq(es, hardness, chi, total_charge=0.0)
    energy = chi @ q + 0.5 * hardness @ q**2 + es.energy(q)      # U(q), eV
    forces, virial = es.forces(q)      # at fixed charges (+ the chi term of the model)
    w = -virial / atoms.get_volume()   # ASE stress: [w00, w11, w22, w12, w02, w01]

Notes: the object keeps references to its input arrays (the kernel borrows them); a new
geometry needs a new object.  ``accuracy`` (default 1e-6, as in snapqeq.electrostatics.ewald and the
LAMMPS plugin) means the same cutoffs as in snapqeq.electrostatics.ewald for the same beta.  Shifts must
lie in -127..127 cell vectors.
"""

import numpy as np

cimport numpy as cnp
from libcpp cimport bool as cbool
from libcpp.vector cimport vector

cnp.import_array()


cdef extern from "electrostatics.h" namespace "snapqeq" nogil:
    cdef cppclass EwaldParameters:
        double beta
        double real_cutoff
        double kcut
        double accuracy

    EwaldParameters c_ewald_parameters "snapqeq::ewald_parameters" (
        double, double, double, double, double) except +
    EwaldParameters c_ewald_truncation "snapqeq::ewald_truncation" (double, double) except +
    const double kCoulomb "snapqeq::kCoulomb"
    const double kHartree "snapqeq::kHartree"
    const double kBohr "snapqeq::kBohr"

    cdef cppclass PairList:
        long size
        const int* i
        const int* j
        const double* d
        const signed char* shift
        cbool half

    cdef cppclass Electrostatics:
        Electrostatics() except +
        void setup_free(int, int, int, const double*, const double*, const int*) except +
        void setup_periodic(int, int, int, const double*, const double*, const double*,
                            const EwaldParameters&, const PairList&, const int*) except +
        int size()
        int kvectors()
        long real_pairs()
        const EwaldParameters& parameters()
        void apply(const double*, double*) except +
        const vector[double]& diagonal()
        void forces(const double*, const double*, double*, double*, double*) except +

    cdef cppclass SolveStats:
        int iterations
        double residual
        double multiplier
        cbool converged

    SolveStats solve_constrained(Electrostatics&, const double*, const double*, double,
                                 double*, double, int, double*) except +


def _cell_array(cell):
    c = np.ascontiguousarray(cell, dtype=np.float64)
    if c.shape != (3, 3) or not np.all(np.isfinite(c)):
        raise ValueError("cell must be a finite (3, 3) array of lattice vectors (rows)")
    if abs(np.linalg.det(c)) < 1e-12:
        raise ValueError("the cell is singular (zero volume)")
    return c


def _widths(widths, n):
    w = np.array(np.broadcast_to(np.asarray(widths, dtype=np.float64), (n,)))
    if not np.all(w > 0.0):
        raise ValueError("Gaussian widths must be positive")
    return w


#: the kernel's physical constants (kernel/electrostatics.h, CODATA 2018): k_e in
#: eV Angstrom / e^2, the Hartree in eV, the bohr in Angstrom; tests/test_units.py checks
#: them against snapqeq.units
COULOMB = kCoulomb
HARTREE = kHartree
BOHR = kBohr


cdef dict _parameters_dict(EwaldParameters p):
    return {"beta": p.beta, "cutoff": p.real_cutoff, "kcut": p.kcut, "accuracy": p.accuracy}


def ewald_truncation(beta, accuracy=1e-6):
    """Real-space and reciprocal cutoffs for the splitting parameter ``beta`` (1/Angstrom):
    the dict of :func:`ewald_parameters` for a given beta."""
    return _parameters_dict(c_ewald_truncation(float(beta), float(accuracy)))


def ewald_parameters(n_atoms, cell, widths, accuracy=1e-6, cutoff=None):
    """Ewald parameters (beta, cutoff, kcut, accuracy) for a periodic cell; see the module
    docstring."""
    c = _cell_array(cell)
    w = np.asarray(widths, dtype=np.float64).reshape(-1)
    if w.size == 0 or not np.all(w > 0.0):
        raise ValueError("Gaussian widths must be positive")
    return _parameters_dict(c_ewald_parameters(float(n_atoms), abs(float(np.linalg.det(c))),
                                               float(w.max()), float(accuracy),
                                               0.0 if cutoff is None else float(cutoff)))


cdef class GaussianElectrostatics:
    """Gaussian-charge electrostatics of one geometry (see the module docstring)."""

    cdef Electrostatics* es
    cdef readonly int n_atoms
    cdef readonly bint periodic
    cdef readonly double volume
    # borrowed by the kernel: kept alive here
    cdef object _x, _cell, _w, _i, _j, _d, _s

    def __cinit__(self):
        self.es = new Electrostatics()

    def __dealloc__(self):
        del self.es

    def __init__(self, positions, cell, widths, i=None, j=None, vectors=None, *, shifts=None,
                 accuracy=1e-6, cutoff=None, full_list=True):
        x = np.ascontiguousarray(positions, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != 3 or not np.all(np.isfinite(x)):
            raise ValueError("positions must be a finite (N, 3) array")
        cdef int n = x.shape[0]
        w = _widths(widths, n)
        self.n_atoms = n
        self._x, self._w = x, w
        cdef const double[:, ::1] xv = x
        cdef const double[::1] wv = w
        cdef const double* xp = &xv[0, 0] if n else NULL
        cdef const double* wp = &wv[0] if n else NULL
        cdef PairList pl
        cdef EwaldParameters p
        cdef const double[:, ::1] cv
        cdef const int[::1] iv, jv
        cdef const double[:, ::1] dv
        cdef const signed char[:, ::1] sv
        if cell is None:
            self.periodic = False
            self.volume = np.inf
            self.es.setup_free(n, 0, n, xp, wp, NULL)
            return
        c = _cell_array(cell)
        self.periodic = True
        self.volume = abs(float(np.linalg.det(c)))
        self._cell = c
        if n == 0:
            raise ValueError("a periodic cell needs at least one atom")
        params = ewald_parameters(n, c, w, accuracy, cutoff)
        p.beta, p.real_cutoff, p.kcut, p.accuracy = (params["beta"], params["cutoff"],
                                                     params["kcut"], params["accuracy"])
        if i is None:
            from snapqeq.neighbors import build_pairs

            pairs = build_pairs(x, c, True, p.real_cutoff * (1.0 + 1e-9))
            i, j, vectors, shifts, full_list = pairs.i, pairs.j, None, pairs.shift, True
        ia = np.ascontiguousarray(i, dtype=np.int64).reshape(-1)
        ja = np.ascontiguousarray(j, dtype=np.int64).reshape(-1)
        if ia.shape != ja.shape:
            raise ValueError("i and j must have the same length")
        if ia.size and (ia.min() < 0 or ja.min() < 0 or ia.max() >= n or ja.max() >= n):
            raise ValueError(f"pair indices must lie in 0..{n - 1}")
        i32 = ia.astype(np.int32)
        j32 = ja.astype(np.int32)
        self._i, self._j = i32, j32
        pl.size = ia.size
        if vectors is not None:
            d = np.ascontiguousarray(vectors, dtype=np.float64).reshape(-1, 3)
            if d.shape[0] != ia.size or not np.all(np.isfinite(d)):
                raise ValueError("vectors must be a finite (P, 3) array, one row per pair")
            self._d = d
            if ia.size:
                dv = d
                pl.d = &dv[0, 0]
        elif shifts is not None:
            sh = np.asarray(shifts).reshape(-1, 3)
            if sh.shape[0] != ia.size:
                raise ValueError("shifts must be a (P, 3) array, one row per pair")
            if sh.size and (np.abs(sh).max() > 127 or np.any(sh != np.round(sh))):
                raise ValueError("shifts must be integers in -127..127")
            s8 = np.ascontiguousarray(sh, dtype=np.int8)
            self._s = s8
            if ia.size:
                sv = s8
                pl.shift = &sv[0, 0]
        else:
            raise ValueError("give the pair displacements (vectors) or the cell shifts")
        if ia.size:
            iv = i32
            jv = j32
            pl.i = &iv[0]
            pl.j = &jv[0]
        pl.half = not full_list
        cv = c
        self.es.setup_periodic(n, 0, n, xp, wp, &cv[0, 0], p, pl, NULL)

    @property
    def beta(self):
        return self.es.parameters().beta if self.periodic else None

    @property
    def cutoff(self):
        return self.es.parameters().real_cutoff if self.periodic else None

    @property
    def kcut(self):
        return self.es.parameters().kcut if self.periodic else None

    @property
    def accuracy(self):
        return self.es.parameters().accuracy if self.periodic else None

    @property
    def n_kvectors(self):
        """Reciprocal vectors of the half space in the Ewald sum."""
        return self.es.kvectors()

    @property
    def n_pairs(self):
        """Real-space pairs inside the cutoff (periodic cells)."""
        return self.es.real_pairs()

    cdef _vector(self, v, name):
        a = np.ascontiguousarray(v, dtype=np.float64)
        if a.shape != (self.n_atoms,):
            raise ValueError(f"{name} must have shape ({self.n_atoms},)")
        return a

    def apply(self, v):
        """A v in eV/e for charges v (N,) or (m, N) in e."""
        a = np.ascontiguousarray(v, dtype=np.float64)
        if a.ndim == 2:
            return np.stack([self.apply(row) for row in a]) if len(a) else a.copy()
        a = self._vector(a, "v")
        y = np.zeros(self.n_atoms)
        cdef const double[::1] av = a
        cdef double[::1] yv = y
        if self.n_atoms:
            with nogil:
                self.es.apply(&av[0], &yv[0])
        return y

    def diagonal(self):
        """Diagonal A_ii (N,) in eV/e^2."""
        return np.array(self.es.diagonal(), dtype=np.float64).reshape(self.n_atoms)

    def energy(self, q):
        """1/2 q^T A q in eV."""
        q = self._vector(q, "q")
        return 0.5 * float(q @ self.apply(q))

    def forces(self, a, b=None, per_atom=False):
        """Forces (N, 3) and virial (3, 3) of 1/2 a^T A b (and per-atom virials (N, 3, 3))."""
        a = self._vector(a, "a")
        b = a if b is None else self._vector(b, "b")
        n = self.n_atoms
        f = np.zeros((max(n, 1), 3))
        vir = np.zeros(6)
        va = np.zeros((max(n, 1), 6)) if per_atom else None
        cdef const double[::1] avw = a
        cdef const double[::1] bvw = b
        cdef double[:, ::1] fv = f
        cdef double[::1] virv = vir
        cdef double[:, ::1] vav
        cdef double* vap = NULL
        if per_atom:
            vav = va
            vap = &vav[0, 0]
        if n:
            with nogil:
                self.es.forces(&avw[0], &bvw[0], &fv[0, 0], &virv[0], vap)
        f = f[:n]

        def tensor(v):  # xx yy zz xy xz yz -> 3 x 3
            return np.array([[v[0], v[3], v[4]], [v[3], v[1], v[5]], [v[4], v[5], v[2]]])

        if per_atom:
            return f, tensor(vir), np.stack([tensor(row) for row in va[:n]]) if n else \
                np.zeros((0, 3, 3))
        return f, tensor(vir)


def solve_qeq(GaussianElectrostatics es, hardness, chi, double total_charge=0.0, initial=None,
              double tol=1e-10, int maxiter=1000):
    """(charges, multiplier, iterations, converged) of the constrained charge equilibration;
    see the module docstring."""
    n = es.n_atoms
    h = np.array(np.broadcast_to(np.asarray(hardness, dtype=np.float64), (n,)))
    c = np.ascontiguousarray(chi, dtype=np.float64)
    if c.shape != (n,):
        raise ValueError(f"chi must have shape ({n},)")
    if not np.all(h > 0.0):
        raise ValueError("hardness must be positive")
    if not (tol > 0.0):
        raise ValueError("tol must be positive")
    if initial is None:
        x = -c / (h + es.diagonal()) if n else np.zeros(0)
    else:
        x = np.array(initial, dtype=np.float64).reshape(-1)
        if x.shape != (n,):
            raise ValueError(f"initial must have shape ({n},)")
    x = np.ascontiguousarray(x)
    if n == 0:
        return x, 0.0, 0, True
    cdef const double[::1] hv = h
    cdef const double[::1] cv = c
    cdef double[::1] xv = x
    cdef SolveStats st
    with nogil:
        st = solve_constrained(es.es[0], &hv[0], &cv[0], total_charge, &xv[0], tol, maxiter,
                               NULL)
    return x, st.multiplier, st.iterations, bool(st.converged)

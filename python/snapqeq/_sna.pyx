# distutils: language = c++
# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Cython binding of the C++ bispectrum kernel (kernel/sna.h).

Works on a neighbour list in CSR form: the neighbours of site i are the pairs
offsets[i] .. offsets[i+1]-1, with displacement rij = r_j - r_i (Angstrom) and per-pair
cutoff, weight, element block and inner-switch parameters.  Sites are processed in
parallel with OpenMP, the GIL released; every thread owns one kernel workspace.
"""

import numpy as np

cimport numpy as cnp
from cython.parallel cimport prange, threadid
from libcpp.vector cimport vector

cimport openmp

cnp.import_array()


cdef extern from "sna.h" namespace "snapqeq" nogil:
    cdef cppclass SNAOptions:
        int twojmax
        double rfac0
        double rmin0
        bint switchflag
        bint bzeroflag
        bint chemflag
        bint bnormflag
        bint wselfallflag
        bint switchinnerflag
        int nelements

    cdef cppclass SNA:
        SNA(const SNAOptions&) except +
        SNA(const SNA&) except +
        int ncoeff()
        int nbase()
        void triple(int, int&, int&, int&)
        void set_neighbors(int, const double*, const double*, const double*, const int*,
                           const double*, const double*)
        void compute_ui(int)
        void compute_zi()
        void compute_bi(int, double*)
        void compute_yi(const double*)
        void compute_deidrj(int, double*)
        void compute_dbidrj(int, double*)


cdef class SNAKernel:
    """Bispectrum engine for one parameter set (see snapqeq.Bispectrum for the API)."""

    cdef SNA* proto
    cdef vector[SNA*] workers
    cdef readonly int ncoeff
    cdef readonly int nbase
    cdef readonly bint switchinner

    def __cinit__(self, int twojmax, double rfac0, double rmin0, bint switchflag,
                  bint bzeroflag, bint chemflag, bint bnormflag, bint wselfallflag,
                  bint switchinnerflag, int nelements):
        cdef SNAOptions o
        o.twojmax = twojmax
        o.rfac0 = rfac0
        o.rmin0 = rmin0
        o.switchflag = switchflag
        o.bzeroflag = bzeroflag
        o.chemflag = chemflag
        o.bnormflag = bnormflag
        o.wselfallflag = wselfallflag
        o.switchinnerflag = switchinnerflag
        o.nelements = nelements
        self.proto = new SNA(o)
        self.ncoeff = self.proto.ncoeff()
        self.nbase = self.proto.nbase()
        self.switchinner = switchinnerflag

    def __dealloc__(self):
        for w in self.workers:
            del w
        del self.proto

    def triples(self):
        """(nbase, 3) array of the doubled angular momenta (j1, j2, j) of each component."""
        cdef int k, j1 = 0, j2 = 0, j = 0
        out = np.empty((self.nbase, 3), dtype=np.int64)
        for k in range(self.nbase):
            self.proto.triple(k, j1, j2, j)
            out[k, 0] = j1
            out[k, 1] = j2
            out[k, 2] = j
        return out

    cdef int _prepare_workers(self) except -1:
        cdef int n = openmp.omp_get_max_threads()
        while <int>self.workers.size() < n:
            self.workers.push_back(new SNA(self.proto[0]))
        return n

    def bispectrum(self, const long[::1] offsets, const int[::1] ielem,
                   const double[:, ::1] rij, const double[::1] rcut, const double[::1] wj,
                   const int[::1] elem, const double[::1] sinner, const double[::1] dinner):
        """B of every site: (nsites, ncoeff)."""
        cdef Py_ssize_t n = ielem.shape[0], i
        cdef int nthreads = self._prepare_workers()
        cdef double[:, ::1] b = np.zeros((n, self.ncoeff))
        cdef SNA* w
        cdef long start, cnt
        cdef const double* si = &sinner[0] if self.switchinner and sinner.shape[0] else NULL
        cdef const double* di = &dinner[0] if self.switchinner and dinner.shape[0] else NULL
        if n == 0:
            return np.asarray(b)
        for i in prange(n, nogil=True, schedule="dynamic", num_threads=nthreads):
            w = self.workers[threadid()]
            start = offsets[i]
            cnt = offsets[i + 1] - start
            w.set_neighbors(cnt, &rij[start, 0] if cnt else NULL, &rcut[start] if cnt else NULL,
                            &wj[start] if cnt else NULL, &elem[start] if cnt else NULL,
                            si + start if si != NULL else NULL,
                            di + start if di != NULL else NULL)
            w.compute_ui(ielem[i])
            w.compute_zi()
            w.compute_bi(ielem[i], &b[i, 0])
        return np.asarray(b)

    def pair_forces(self, const long[::1] offsets, const int[::1] ielem,
                    const double[:, ::1] rij, const double[::1] rcut, const double[::1] wj,
                    const int[::1] elem, const double[::1] sinner, const double[::1] dinner,
                    const double[:, ::1] beta):
        """dE_i/drij of every pair for E = sum_i beta_i . B_i: (npairs, 3)."""
        cdef Py_ssize_t n = ielem.shape[0], i
        cdef long npairs = rij.shape[0], start, cnt, jj
        cdef int nthreads = self._prepare_workers()
        cdef double[:, ::1] dedr = np.zeros((npairs, 3))
        cdef SNA* w
        cdef const double* si = &sinner[0] if self.switchinner and sinner.shape[0] else NULL
        cdef const double* di = &dinner[0] if self.switchinner and dinner.shape[0] else NULL
        if beta.shape[0] != n or beta.shape[1] != self.ncoeff:
            raise ValueError(f"beta must have shape ({n}, {self.ncoeff})")
        if npairs == 0:
            return np.asarray(dedr)
        for i in prange(n, nogil=True, schedule="dynamic", num_threads=nthreads):
            start = offsets[i]
            cnt = offsets[i + 1] - start
            if cnt == 0:
                continue
            w = self.workers[threadid()]
            w.set_neighbors(cnt, &rij[start, 0], &rcut[start], &wj[start], &elem[start],
                            si + start if si != NULL else NULL,
                            di + start if di != NULL else NULL)
            w.compute_ui(ielem[i])
            w.compute_zi()
            w.compute_yi(&beta[i, 0])
            for jj in range(cnt):
                w.compute_deidrj(jj, &dedr[start + jj, 0])
        return np.asarray(dedr)

    def snap(self, const long[::1] offsets, const int[::1] ielem,
             const double[:, ::1] rij, const double[::1] rcut, const double[::1] wj,
             const int[::1] elem, const double[::1] sinner, const double[::1] dinner,
             const int[::1] species, const double[::1] beta0, const double[:, ::1] beta,
             quadratic=None):
        """Energies and pair forces of a SNAP potential in one pass (Z computed once).

        E_i = beta0[s] + beta[s] . B_i (+ 1/2 B_i . Q[s] . B_i), s = species[i].
        Returns (energies (nsites,), dedr (npairs, 3)).
        """
        cdef Py_ssize_t n = ielem.shape[0], i, a, c
        cdef long npairs = rij.shape[0], start, cnt, jj
        cdef int nthreads = self._prepare_workers()
        cdef int K = self.ncoeff, s
        cdef double[::1] energy = np.zeros(n)
        cdef double[:, ::1] dedr = np.zeros((npairs, 3))
        cdef double[:, ::1] bbuf = np.zeros((nthreads, K))
        cdef double[:, ::1] betabuf = np.zeros((nthreads, K))
        cdef const double[:, :, ::1] q
        cdef bint has_q = quadratic is not None
        cdef double e, qb
        cdef SNA* w
        cdef int t
        cdef const double* si = &sinner[0] if self.switchinner and sinner.shape[0] else NULL
        cdef const double* di = &dinner[0] if self.switchinner and dinner.shape[0] else NULL
        if beta.shape[1] != K:
            raise ValueError(f"beta must have {K} columns")
        if has_q:
            q = np.ascontiguousarray(quadratic, dtype=np.float64)
        else:
            q = np.zeros((1, 1, 1))
        if n == 0:
            return np.asarray(energy), np.asarray(dedr)
        for i in prange(n, nogil=True, schedule="dynamic", num_threads=nthreads):
            t = threadid()
            w = self.workers[t]
            start = offsets[i]
            cnt = offsets[i + 1] - start
            s = species[i]
            w.set_neighbors(cnt, &rij[start, 0] if cnt else NULL, &rcut[start] if cnt else NULL,
                            &wj[start] if cnt else NULL, &elem[start] if cnt else NULL,
                            si + start if si != NULL else NULL,
                            di + start if di != NULL else NULL)
            w.compute_ui(ielem[i])
            w.compute_zi()
            w.compute_bi(ielem[i], &bbuf[t, 0])
            e = beta0[s]
            for a in range(K):
                betabuf[t, a] = beta[s, a]
                e = e + beta[s, a] * bbuf[t, a]
            if has_q:
                for a in range(K):
                    qb = 0.0
                    for c in range(K):
                        qb = qb + q[s, a, c] * bbuf[t, c]
                    betabuf[t, a] = betabuf[t, a] + qb
                    e = e + 0.5 * bbuf[t, a] * qb
            energy[i] = e
            if cnt == 0:
                continue
            w.compute_yi(&betabuf[t, 0])
            for jj in range(cnt):
                w.compute_deidrj(jj, &dedr[start + jj, 0])
        return np.asarray(energy), np.asarray(dedr)

    def pair_gradients(self, const long[::1] offsets, const int[::1] ielem,
                       const double[:, ::1] rij, const double[::1] rcut, const double[::1] wj,
                       const int[::1] elem, const double[::1] sinner, const double[::1] dinner):
        """dB_i/drij of every pair: (npairs, ncoeff, 3)."""
        cdef Py_ssize_t n = ielem.shape[0], i
        cdef long npairs = rij.shape[0], start, cnt, jj
        cdef int nthreads = self._prepare_workers()
        cdef double[:, :, ::1] db = np.zeros((npairs, self.ncoeff, 3))
        cdef SNA* w
        cdef const double* si = &sinner[0] if self.switchinner and sinner.shape[0] else NULL
        cdef const double* di = &dinner[0] if self.switchinner and dinner.shape[0] else NULL
        if npairs == 0:
            return np.asarray(db)
        for i in prange(n, nogil=True, schedule="dynamic", num_threads=nthreads):
            start = offsets[i]
            cnt = offsets[i + 1] - start
            if cnt == 0:
                continue
            w = self.workers[threadid()]
            w.set_neighbors(cnt, &rij[start, 0], &rcut[start], &wj[start], &elem[start],
                            si + start if si != NULL else NULL,
                            di + start if di != NULL else NULL)
            w.compute_ui(ielem[i])
            w.compute_zi()
            for jj in range(cnt):
                w.compute_dbidrj(jj, &db[start + jj, 0, 0])
        return np.asarray(db)


def accumulate_pair_forces(const double[:, ::1] dedr, const long[::1] pair_i,
                           const long[::1] pair_j, const double[:, ::1] rij, Py_ssize_t natoms):
    """Forces (natoms, 3) and dE/dstrain (3, 3) from per-pair dE_i/drij.

    dE/dr_j += dedr, dE/dr_i -= dedr, so F_i += dedr and F_j -= dedr;
    dE/dstrain_ab = sum_pairs rij_a dedr_b.
    """
    cdef double[:, ::1] f = np.zeros((natoms, 3))
    cdef double[:, ::1] w = np.zeros((3, 3))
    cdef Py_ssize_t p, a, b
    with nogil:
        for p in range(dedr.shape[0]):
            for a in range(3):
                f[pair_i[p], a] += dedr[p, a]
                f[pair_j[p], a] -= dedr[p, a]
                for b in range(3):
                    w[a, b] += rij[p, a] * dedr[p, b]
    return np.asarray(f), np.asarray(w)


def set_num_threads(int n):
    """Number of OpenMP threads used by the kernel (like OMP_NUM_THREADS)."""
    if n < 1:
        raise ValueError("the number of threads must be >= 1")
    openmp.omp_set_num_threads(n)


def get_num_threads() -> int:
    """Number of OpenMP threads the kernel will use."""
    return openmp.omp_get_max_threads()

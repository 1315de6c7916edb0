// snapqeq electrostatics kernel: Gaussian-charge electrostatics (free boundaries or Ewald
// sums with a uniform background for charged cells) and the constrained charge
// equilibration solver of SPEC section 5.  Compiled into the Python extension
// snapqeq._electrostatics and into the LAMMPS plugin; it is the only C++ implementation of
// this math in the project.  Independent of LAMMPS and of MPI: the few collective
// operations go through Communicator, whose default is the serial (one process) one.
//
// A_es is the Hessian of the electrostatic energy, E_es(q) = 1/2 q^T A_es q:
//   free boundaries: A_ij = k_e erf(g_ij r_ij)/r_ij,  A_ii = 2 k_e g_ii/sqrt(pi)
//   periodic cells:  the Ewald sum of the same Gaussian charges with splitting parameter
//                    beta <= min g_ij: real space + reciprocal space + self + uniform
//                    background (the k = 0-free sum; net charge sits in a neutralizing
//                    background, and the result does not depend on beta),
// with g_ij = 1/sqrt(alpha_i^2 + alpha_j^2), g_ii = 1/(sqrt(2) alpha_i).
// Units: Angstrom, e, eV (eV/e for potentials, eV/Angstrom for forces, eV for virials).
//
// Distribution.  The n atoms of the charge equilibration have global indices 0..n-1; rank
// r owns the contiguous block [first, first + count) (rank order).  Vectors of length n
// (charges, potentials, solver vectors) are replicated on every rank; work on pairs,
// reciprocal vectors and forces is split by ownership and combined with allreduce.
//
// Cost.  Periodic cells: the real-space part runs over an explicit pair list restricted
// to the real-space cutoff (O(N) pairs), the reciprocal part over the Ewald k vectors with
// per-rank partial structure factors (O(N^1.5) with the balanced beta of
// ewald_parameters()).  Free boundaries: all pairs, O(N^2), split between the ranks.
#pragma once

#include <algorithm>
#include <cstddef>
#include <vector>

namespace snapqeq {

// Physical constants, CODATA 2018 (the edition of snapqeq.units, which tests/test_units.py
// checks against these through the Cython binding).
// k_e = e^2/(4 pi eps0) in eV Angstrom / e^2 (e = 1.602176634e-19 C, eps0 = 8.8541878128e-12 F/m)
constexpr double kCoulomb = 14.399645478425672;
constexpr double kHartree = 27.211386245988;  // eV
constexpr double kBohr = 0.529177210903;      // Angstrom

// The collective operations of the kernel.  Every rank calls them in the same order.
// The defaults are those of a single process; the LAMMPS plugin derives an MPI version.
class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const { return 0; }
  virtual int size() const { return 1; }
  // data[k] <- sum over ranks of data[k], k < n
  virtual void allreduce_sum(double* data, int n) { (void)data, (void)n; }
  // data[k] <- max over ranks of data[k], k < n
  virtual void allreduce_max(double* data, int n) { (void)data, (void)n; }
  // recv[displs[r] .. displs[r] + counts[r]) <- the count values send of rank r
  virtual void allgatherv(const double* send, int count, double* recv, const int* counts,
                          const int* displs) {
    (void)counts;
    std::copy(send, send + count, recv + displs[0]);
  }
};

// Ewald parameters of a periodic cell: the one rule of the project
// (snapqeq.electrostatics.ewald and the LAMMPS plugin both take their parameters from here).  Each sum is truncated where its
// terms fall below eps' = accuracy/10, i.e. the real-space cutoff
// real_cutoff = erfcinv(eps')/beta and the reciprocal cutoff kcut = 2 beta sqrt(-ln eps');
// the relative error of energies and potentials is then below accuracy.
struct EwaldParameters {
  double beta = 0.0;         // splitting parameter, 1/Angstrom
  double real_cutoff = 0.0;  // Angstrom
  double kcut = 0.0;         // 1/Angstrom
  double accuracy = 0.0;     // relative truncation error the values come from
};

// The truncation of both sums for a given splitting parameter beta (1/Angstrom, > 0) and
// accuracy in (0, 1): real_cutoff and kcut as above.
EwaldParameters ewald_truncation(double beta, double accuracy);

// Ewald parameters for natoms atoms in a cell of volume (Angstrom^3) with largest Gaussian
// width max_width (Angstrom).  cutoff > 0 fixes the real-space cutoff (beta = s/cutoff;
// throws std::invalid_argument if that beta would exceed min g = 1/(sqrt(2) max_width));
// cutoff <= 0 balances the real-space against the reciprocal-space cost,
// beta = 2.3 (N/V^2)^(1/6), capped at min g.  accuracy in (0, 1).
EwaldParameters ewald_parameters(double natoms, double volume, double max_width,
                                 double accuracy, double cutoff = 0.0);

// Real-space pairs of a periodic cell, borrowed by Electrostatics::setup_periodic() until
// the next setup.  A pair is two atoms i, j (global indices) and the displacement
// d = r_j + n - r_i (Angstrom) of the periodic image n of j; i == j with n != 0 is the
// interaction of an atom with its own image.  Pairs farther apart than the real-space
// cutoff are ignored, so a neighbour list with a skin can be passed as it is.
//   half = true:  every unordered pair (every image) appears once over all ranks;
//   half = false: it appears twice, as (i, j, n) and (j, i, -n), each on the rank that
//                 owns its first atom.
//   d: size x 3 displacements, or nullptr: then shift (3 per pair) gives the image as
//      integer multiples of the cell vectors, d = r_j - r_i + sum_k shift_k a_k (which
//      needs only the positions of setup_periodic(), not a copy per pair).
// Pairs are processed fastest when those of one atom i are consecutive (as in neighbour
// lists).
struct PairList {
  long size = 0;
  const int* i = nullptr;
  const int* j = nullptr;
  const double* d = nullptr;
  const signed char* shift = nullptr;
  bool half = true;
};

class Electrostatics {
 public:
  // comm: the collectives (nullptr: a single process); borrowed, must outlive this object.
  explicit Electrostatics(Communicator* comm = nullptr);
  ~Electrostatics();
  Electrostatics(const Electrostatics&) = delete;
  Electrostatics& operator=(const Electrostatics&) = delete;

  // Free boundaries (a cluster in vacuum).  n atoms in all; this rank owns the global
  // indices [first, first + count).  x: n x 3 positions (Angstrom) and alpha: n Gaussian
  // widths (Angstrom), identical on every rank.  owned_slot[k]: force slot of owned atom
  // first + k (nullptr: its global index).  Collective; the arrays are borrowed until the
  // next setup.
  void setup_free(int n, int first, int count, const double* x, const double* alpha,
                  const int* owned_slot = nullptr);

  // Fully periodic cell.  x: n x 3 positions and alpha: n widths, identical on every rank
  // (atoms may lie outside the cell), cell: the three lattice vectors as rows (Angstrom,
  // any orientation, right- or left-handed), params: from ewald_parameters() (beta must
  // not exceed min g_ij of these widths), pairs: the real-space pairs within
  // params.real_cutoff.  Collective; all arrays are borrowed until the next setup.
  void setup_periodic(int n, int first, int count, const double* x, const double* alpha,
                      const double* cell, const EwaldParameters& params, const PairList& pairs,
                      const int* owned_slot = nullptr);

  int size() const { return n_; }
  int first() const { return first_; }  // global index of the first owned atom
  int count() const { return count_; }  // number of owned atoms
  bool periodic() const { return periodic_; }
  const EwaldParameters& parameters() const { return params_; }
  int kvectors() const { return int(kcoef_.size()); }  // half-space reciprocal vectors
  long real_pairs() const { return nkept_; }  // pairs inside the cutoff on this rank
  int preconditioner_kvectors() const { return nlow_; }  // see prepare_preconditioner()
  double memory_bytes() const;  // this rank's storage

  // y = A_es v (v, y: n values, eV/e for v in e).  Collective; y is complete on every rank.
  void apply(const double* v, double* y);

  // Diagonal of A_es (n values, eV/e^2, every rank).
  const std::vector<double>& diagonal() const { return diag_; }

  // Forces (eV/Angstrom) and virial (eV) of E = 1/2 a^T A_es b at fixed a and b (n values
  // each, every rank).  With b = a this is the electrostatic energy at fixed charges;
  // b != a gives the bilinear term of the adjoint (short-range) force.
  // f: force array (3 values per slot); the complete forces on the owned atoms are added
  // to their slots (owned_slot).  virial: 6 values (xx yy zz xy xz yz, W = sum r (x) F),
  // this rank's share added to; vatom: per-slot virials (6 per slot, owned atoms, which
  // sum to the virial over all ranks) or nullptr.  Collective.
  void forces(const double* a, const double* b, double* f, double* virial, double* vatom);

  // Preconditioner of the constrained solver for the matrix diag(hardness) + A_es
  // (hardness: n values, eV/e^2): Jacobi, plus for periodic cells the long-wavelength
  // reciprocal vectors exactly (M = D + sum_{small k} A_rec,k, inverted with the Woodbury
  // identity), which remove the Coulomb stiffness of long charge waves that makes Jacobi
  // alone slow (30 -> 13 iterations for a cold 2k-atom NaCl solve); for clusters (from 64
  // atoms) Jacobi with a coarse level over spatial blocks of ~16 atoms, solved exactly
  // (48 -> 21 iterations for a cold 2k-atom cluster solve).  Collective; cheap to call
  // again with the same hardness.
  void prepare_preconditioner(const double* hardness);
  // Let prepare_preconditioner() keep a preconditioner built up to max_age setups ago
  // (default 0: rebuilt for every geometry) for the same hardness and cell.  The caller
  // promises that the atoms kept their global indices since (in LAMMPS: no reneighbouring).
  // A preconditioner of a slightly older geometry is still a fixed symmetric positive
  // definite operator: the solve converges to the same charges, in about as many
  // iterations, and its set-up (O(n m^2), a few % of an MD step) is skipped.
  void allow_preconditioner_reuse(int max_age) { pc_max_age_ = max_age; }
  // z = M^-1 r (n values each, every rank).  Needs no communication: every rank holds
  // the whole (small) preconditioner.
  void precondition(const double* r, double* z);

 private:
  struct Table;
  struct KGroup {  // reciprocal vectors first .. first + hi - lo, i.e. (m1, m2, lo..hi)
    int m1, m2, lo, hi, first;
  };

  void reset(int n, int first, int count, const double* alpha, const int* owned_slot);
  // sum the partial n-vectors of all ranks.  The solver relies on every rank receiving the
  // same bits (MPI allreduce returns one result to all ranks), so that its replicated
  // vectors and its convergence decisions stay identical everywhere.
  void reduce_replicated(double* v);
  void build_tables(double beta, double rmax, bool free);
  // k_e g(r) and k_e g'(r) of the pair kernel of atoms i and j at distance r
  void kernel(int i, int j, double r, double& g, double& dg) const;
  void setup_reciprocal(const double* cell);
  void structure_factors(const double* v, double* s) const;  // owned part, not reduced
  void back_project(const double* s, double scale, double* y_owned) const;
  void background(const double* v, double* y_owned) const;
  void reciprocal_forces(const double* a, const double* b, double* fo, double* virial,
                         double* vo);
  void free_pair(int i, int j, double& v, double& dv) const;  // k_e g, k_e g'/r
  // the runs of consecutive partners j of row i: [start[s], start[s] + len[s]), s < return
  int free_segments(int i, int start[2], int len[2]) const;
  // values (k_e g) and derivatives (k_e g'/r) of the half_ pairs of owned row li
  void free_row(int li, double* val, double* dval) const;
  // body(i, values, derivatives) for every owned row i (stored or computed values)
  template <class Body>
  void for_free_rows(Body&& body) const;
  void prepare_coarse(const double* hardness);  // see prepare_preconditioner()
  void precondition_coarse(const double* r, double* z) const;

  Communicator* comm_;
  Communicator serial_;
  int n_ = 0, first_ = 0, count_ = 0;
  std::vector<int> counts_, displs_;
  const double* alpha_ = nullptr;
  const int* owned_slot_ = nullptr;
  bool periodic_ = false;
  EwaldParameters params_;
  std::vector<double> diag_;
  std::vector<double> self_;  // owned: Gaussian self term (minus the beta part if periodic)

  // kernel g(r) per pair of width classes, tabulated (or evaluated directly when the
  // widths take too many different values)
  std::vector<int> wclass_;      // width class of every atom
  std::vector<double> cwidth_;   // width of each class
  std::vector<Table> tables_;    // [ca * nclass + cb]
  std::vector<double> table_coef_;     // all tables' coefficients, one after the other
  std::vector<int> table_offset_;      // [ca * nclass + cb]: offset in table_coef_
  double table_hinv_ = 0.0;
  int table_kmax_ = 0;                 // last interval common to all tables
  std::vector<double> table_widths_;
  double table_beta_ = -1.0, table_rmax_ = -1.0;
  double table_rsat_scale_ = 0.0;  // free boundaries: 1/min gamma (reach / kErfSaturation)
  bool table_free_ = false;

  // all positions; free boundaries: owned row li pairs with j = (first + li + t) % n,
  // t = 1 .. half_ (dense values when they fit)
  const double* x_ = nullptr;
  int half_ = 0;
  bool stored_free_ = false;
  std::vector<double> fval_, fdval_;

  // periodic real space: the pairs in rows of one atom i (consecutive pairs with the same
  // i) and their kernel values (zero beyond the cutoff)
  PairList pairs_;
  std::vector<int> row_i_, row_start_;  // row_start_ has one more entry
  std::vector<double> pval_, pdval_;    // k_e g(r), k_e g'(r)/r (arrays only grow)
  long nkept_ = 0;                      // pairs inside the cutoff
  void pair_d(int src, double out[3]) const;  // displacement of pair src of pairs_
  const double* shift_table();                 // see the definition
  std::vector<double> shift_table_;

  // reciprocal space
  const double* x_owned_ = nullptr;  // x + 3 first
  double cell_[3][3] = {}, inv_[3][3] = {}, recip_[3][3] = {};
  double volume_ = 0.0;
  int axis_[3] = {0, 1, 2};  // cell axis of phase table d (see setup_reciprocal)
  int mmax_[3] = {0, 0, 0};  // largest |m| per phase table
  std::vector<KGroup> kgroups_;
  std::vector<double> kvec_, kcoef_;  // nk x 3; exp(-k^2/4 beta^2)/k^2
  std::vector<int> km_;               // nk x 3: (m1, m2, m3) of every vector
  // phase tables exp(2 pi i m s) of the owned atoms along cell axis axis_[d], [m][atom]:
  // m = 0..M1 (d = 0), -M2..M2 (d = 1), -M3..M3 (d = 2)
  std::vector<double> ph_re_[3], ph_im_[3];
  mutable std::vector<double> work_;  // scratch, 2 x count

  // preconditioner
  std::vector<double> pc_hardness_, dinv_;
  int nlow_ = 0;                       // reciprocal vectors in the preconditioner
  std::vector<float> lowe_;            // n x 2 nlow: cos, sin of every atom (float: the
                                       // preconditioner needs no more, and it stays in L2)
  std::vector<double> lowchol_;        // Cholesky factor of C^-1 + E^T D^-1 E, or of the
                                       // coarse matrix P^T (J + A_es) P (free boundaries)
  int nblocks_ = 0;                    // free boundaries: blocks of the coarse level
  std::vector<int> block_;             // block of every atom
  std::vector<double> hp_;             // n x nblocks_: (J + A_es) P
  int pc_setup_ = -1, setup_id_ = 0, pc_max_age_ = 0;
  bool pc_periodic_ = false;
  double pc_cell_[9] = {0, 0, 0, 0, 0, 0, 0, 0, 0};
};

struct SolveStats {
  int iterations = 0;       // applications of the matrix inside the iteration
  double residual = 0.0;    // relative projected residual at exit (see solve_constrained)
  double multiplier = 0.0;  // Lagrange multiplier lambda of the constraint (eV/e)
  bool converged = true;
};

// Minimize 1/2 x^T (diag(hardness) + A_es) x + c^T x subject to sum x = total, i.e. solve
// the bordered system [A 1; 1^T 0][x; -lambda] = [-c; total] of SPEC section 5, by
// projected preconditioned conjugate gradients: every search direction sums to zero, so
// the constraint holds throughout (Gould, Hribar & Nocedal, SIAM J. Sci. Comput. 23
// (2001) 1376).  hardness in eV/e^2, c in eV/e, total in e.  x holds the initial guess on
// entry (shifted to sum total) and the solution on exit.  Converged when
// |P r| <= tol |P r_u|, r = A x + c the gradient, P the projection that removes the mean,
// r_u the gradient at uniform x = total/n.  potential (n values or nullptr) receives
// A_es x (eV/e) without another product.  Collective; every rank gets the same x.
SolveStats solve_constrained(Electrostatics& es, const double* hardness, const double* c,
                             double total, double* x, double tol, int maxiter,
                             double* potential = nullptr);

}  // namespace snapqeq

// Electrostatics of Gaussian charges and the charge equilibration solver of the LAMMPS pair
// style snapqeq (SPEC section 5).  Independent of LAMMPS; uses MPI only.
//
// Every rank holds the positions of all n atoms of the charge equilibration (the pair
// style gathers them each step); rank r "owns" the contiguous block of counts[r] atoms
// that are its local atoms.  Work on rows of the n x n matrices and on forces is split by
// ownership, vectors of length n are replicated on every rank.
//
// A_es is the Hessian of the electrostatic energy, E_es(q) = 1/2 q^T A_es q:
//   free boundaries: A_ij = k_e erf(g_ij r_ij)/r_ij,  A_ii = 2 k_e g_ii/sqrt(pi)
//   periodic cells:  Ewald sum of the same Gaussian charges with splitting parameter
//                    beta <= min g_ij (real + reciprocal + self + uniform background),
// with g_ij = 1/sqrt(alpha_i^2 + alpha_j^2).  Energies in eV, lengths in Angstrom,
// charges in e.
#pragma once

#include <mpi.h>

#include <vector>

namespace snapqeq {

constexpr double kCoulomb = 14.399645;  // k_e in eV Angstrom / e^2 (SPEC section 3)

class GaussianElectrostatics {
 public:
  explicit GaussianElectrostatics(MPI_Comm comm);

  // Geometry of one configuration.  x: n x 3 positions and alpha: n widths, identical on
  // every rank; counts[r]: atoms owned by rank r (rank order, sum n).  cell: the three
  // lattice vectors as rows (lower triangular, as LAMMPS boxes are: a along x, b in the
  // xy plane) for a cell periodic in all directions, nullptr for free boundaries.
  // accuracy: relative truncation error of the Ewald sums.  Collective; the arrays must
  // stay valid until the next setup().
  void setup(int n, const double* x, const double* alpha, const std::vector<int>& counts,
             const double* cell, double accuracy);

  int size() const { return n_; }
  int first() const { return first_; }  // global index of the first owned atom
  int count() const { return count_; }  // number of owned atoms
  bool periodic() const { return periodic_; }
  double ewald_beta() const { return beta_; }
  double real_cutoff() const { return rcut_; }
  int kvectors() const { return int(kcoef_.size()); }  // half-space reciprocal vectors

  // y = A_es v for m vectors of length n stored one after the other (v[k*n + i]); the
  // result is complete on every rank.  Collective.
  void apply(int m, const double* v, double* y);

  // Diagonal of A_es (length n, every rank).
  const std::vector<double>& diagonal() const { return diag_; }

  // Forces on the owned atoms, this rank's share of the virial and the per-atom virial
  // of E = 1/2 a^T A_es b at fixed a and b (global vectors).  With b = a this is the
  // electrostatic energy at fixed charges; b != a gives the extra term of the adjoint
  // (short-range) force.  f: count x 3, virial: 6 (LAMMPS order xx yy zz xy xz yz),
  // vatom: count x 6 or nullptr; all are added to.  Collective.
  void forces(const double* a, const double* b, double* f, double* virial, double* vatom);

 private:
  struct KGroup {  // consecutive reciprocal vectors [first, first + size) sharing (m1, m2)
    int m1, m2, first, size;
  };

  static constexpr int kGeo = 9;        // force geometry per pair, see pair_terms()
  double pair_terms(int i, int j, double* geo) const;  // real-space element (i, j)
  template <class F>
  void for_each_image(const double d[3], F&& body) const;  // images within the cutoff
  void reduce(double d[3]) const;      // nearest periodic image of a difference vector
  void phase_tables();                 // exp(2 pi i m s_d) of the owned atoms
  // structure factors S_v(k) = sum_owned v_j exp(i k.r_j) of m vectors, summed over ranks
  void structure_factors(int m, const double* v, std::vector<double>& s);
  // body(k, re, im): exp(i k.r_j) of the owned atoms for every half-space vector k
  template <class F>
  void for_each_k(F&& body) const;
  void background(int m, const double* v, double* y_owned) const;

  MPI_Comm comm_;
  int me_ = 0, nprocs_ = 1;
  int n_ = 0, first_ = 0, count_ = 0;
  std::vector<int> counts_, displs_;
  const double* x_ = nullptr;
  const double* alpha_ = nullptr;
  bool periodic_ = false;

  // dense owned rows of the real-space matrix (count x n) and the force geometry of these
  // pairs (count x n x kGeo), when they fit in memory
  std::vector<double> rows_, geometry_;
  bool stored_rows_ = false, stored_geometry_ = false;
  std::vector<double> diag_;
  mutable std::vector<double> scratch_;

  // Ewald
  double cell_[3][3] = {}, inv_[3][3] = {}, recip_[3][3] = {};  // rows a_d; a^-1; b_d
  double volume_ = 0.0, beta_ = 0.0, rcut_ = 0.0, kmax_ = 0.0;
  double gamma_cut_ = 6.0;      // erfc(g r) is dropped beyond g r = 6 (erfc(6) = 2e-17)
  int mmax_[3] = {0, 0, 0};     // reciprocal index range per direction
  std::vector<double> kx_, ky_, kz_, kcoef_;  // half-space k vectors, exp(-k^2/4b^2)/k^2
  std::vector<int> km3_;                      // m3 index of each k vector
  std::vector<KGroup> kgroups_;
  std::vector<double> phase_re_[3], phase_im_[3];  // [d][(m + mmax_d) * count + i]
  mutable std::vector<double> e12_re_, e12_im_, e_re_, e_im_;
  double rec_diag_ = 0.0;
};

struct SolveStats {
  int iterations = 0;       // applications of the matrix
  double residual = 0.0;    // relative projected residual at exit (see solve_constrained)
  double multiplier = 0.0;  // Lagrange multiplier lambda of the constraint (eV/e)
  bool converged = true;
};

// Minimize 1/2 x^T (diag(hardness) + A_es) x + c^T x subject to sum x = total, i.e. solve
// the bordered system [A 1; 1^T 0][x; -lambda] = [-c; total] of SPEC section 5, by
// projected conjugate gradients with a constraint (Jacobi) preconditioner: every search
// direction sums to zero, so the constraint holds throughout (Gould, Hribar & Nocedal,
// SIAM J. Sci. Comput. 23 (2001) 1376).  x holds the initial guess on entry (shifted to
// sum total).  Converged when |P r| <= tol |P r_u|, r = A x + c the gradient, P the
// projection that removes the mean, r_u the gradient at uniform x = total/n.  Collective;
// every rank gets the same x.
SolveStats solve_constrained(GaussianElectrostatics& es, const double* hardness,
                             const double* c, double total, double* x, double tol,
                             int maxiter);

}  // namespace snapqeq

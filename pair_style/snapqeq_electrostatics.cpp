// Gaussian-charge electrostatics and charge equilibration for pair style snapqeq; see the
// header for the conventions and SPEC section 5 for the formulas.
#include "snapqeq_electrostatics.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <stdexcept>

namespace snapqeq {

namespace {

constexpr double kPi = 3.14159265358979323846;
constexpr double kTwoOverSqrtPi = 1.12837916709551257390;  // 2/sqrt(pi)
// Dense owned rows of the real-space matrix (8 bytes per pair) and the pair geometry of
// the forces (72 bytes per pair) are kept when they fit in this many bytes per rank;
// otherwise they are recomputed where needed (same numbers, slower).
constexpr double kMaxStoredBytes = 1024.0 * 1024.0 * 1024.0;
// beta = kBetaScale (N/V^2)^(1/6) balances the real-space work (once per step: matrix rows
// and force geometry, O(N^2 rc^3/V)) against the reciprocal work (every solver iteration,
// O(N kmax^3 V)); the classic Ewald optimum has sqrt(pi) ~ 1.8.  The cost is flat between
// 1.6 and 2.2 for 1728-atom NaCl MD (about 20 iterations per step).  Capped at min g_ij
// (SPEC: beta <= min gamma_ij) so that erfc(beta r) governs the real-space cutoff.
constexpr double kBetaScale = 1.9;

inline int sum_of(const std::vector<int>& v) {
  int s = 0;
  for (int c : v) s += c;
  return s;
}

}  // namespace

GaussianElectrostatics::GaussianElectrostatics(MPI_Comm comm) : comm_(comm) {
  MPI_Comm_rank(comm_, &me_);
  MPI_Comm_size(comm_, &nprocs_);
}

void GaussianElectrostatics::setup(int n, const double* x, const double* alpha,
                                   const std::vector<int>& counts, const double* cell,
                                   double accuracy) {
  if (int(counts.size()) != nprocs_ || sum_of(counts) != n)
    throw std::invalid_argument("GaussianElectrostatics: counts do not add up to n");
  if (!(accuracy > 0.0 && accuracy < 1.0))
    throw std::invalid_argument("GaussianElectrostatics: accuracy must lie in (0, 1)");
  n_ = n;
  x_ = x;
  alpha_ = alpha;
  counts_ = counts;
  displs_.assign(nprocs_, 0);
  for (int r = 1; r < nprocs_; ++r) displs_[r] = displs_[r - 1] + counts_[r - 1];
  first_ = displs_[me_];
  count_ = counts_[me_];
  periodic_ = cell != nullptr;

  kx_.clear();
  ky_.clear();
  kz_.clear();
  kcoef_.clear();
  km3_.clear();
  kgroups_.clear();
  rec_diag_ = 0.0;
  beta_ = rcut_ = kmax_ = 0.0;

  if (periodic_) {
    for (int d = 0; d < 3; ++d)
      for (int k = 0; k < 3; ++k) cell_[d][k] = cell[3 * d + k];
    const double(&h)[3][3] = cell_;
    // inverse by cofactors; volume = det
    double c[3][3];
    c[0][0] = h[1][1] * h[2][2] - h[1][2] * h[2][1];
    c[0][1] = h[0][2] * h[2][1] - h[0][1] * h[2][2];
    c[0][2] = h[0][1] * h[1][2] - h[0][2] * h[1][1];
    c[1][0] = h[1][2] * h[2][0] - h[1][0] * h[2][2];
    c[1][1] = h[0][0] * h[2][2] - h[0][2] * h[2][0];
    c[1][2] = h[0][2] * h[1][0] - h[0][0] * h[1][2];
    c[2][0] = h[1][0] * h[2][1] - h[1][1] * h[2][0];
    c[2][1] = h[0][1] * h[2][0] - h[0][0] * h[2][1];
    c[2][2] = h[0][0] * h[1][1] - h[0][1] * h[1][0];
    volume_ = h[0][0] * c[0][0] + h[0][1] * c[1][0] + h[0][2] * c[2][0];
    if (!(volume_ > 0.0))
      throw std::invalid_argument("GaussianElectrostatics: cell must be right-handed");
    if (h[0][1] != 0.0 || h[0][2] != 0.0 || h[1][2] != 0.0)
      throw std::invalid_argument("GaussianElectrostatics: cell must be lower triangular "
                                  "(a along x, b in the xy plane), as LAMMPS boxes are");
    for (int a = 0; a < 3; ++a)
      for (int b = 0; b < 3; ++b) inv_[a][b] = c[a][b] / volume_;
    // reciprocal vectors b_d (rows) with a_d . b_e = 2 pi delta_de
    for (int d = 0; d < 3; ++d)
      for (int k = 0; k < 3; ++k) recip_[d][k] = 2.0 * kPi * inv_[k][d];

    double amax = 0.0;
    for (int i = 0; i < n_; ++i) amax = std::max(amax, alpha_[i]);
    const double gamma_min = 1.0 / (std::sqrt(2.0) * amax);
    const double s = std::sqrt(-std::log(accuracy));
    beta_ = std::min(gamma_min, kBetaScale * std::pow(double(n_) / (volume_ * volume_), 1.0 / 6.0));
    rcut_ = s / beta_;
    kmax_ = 2.0 * s * beta_;
    for (int d = 0; d < 3; ++d) {
      const double anorm = std::sqrt(h[d][0] * h[d][0] + h[d][1] * h[d][1] + h[d][2] * h[d][2]);
      mmax_[d] = int(std::floor(kmax_ * anorm / (2.0 * kPi)));
    }

    // half space of k vectors (k and -k give the same contribution), grouped by (m1, m2)
    const double ksq_max = kmax_ * kmax_;
    for (int m1 = 0; m1 <= mmax_[0]; ++m1)
      for (int m2 = (m1 == 0 ? 0 : -mmax_[1]); m2 <= mmax_[1]; ++m2) {
        KGroup g{m1, m2, int(kcoef_.size()), 0};
        for (int m3 = (m1 == 0 && m2 == 0 ? 1 : -mmax_[2]); m3 <= mmax_[2]; ++m3) {
          double k[3];
          for (int a = 0; a < 3; ++a)
            k[a] = m1 * recip_[0][a] + m2 * recip_[1][a] + m3 * recip_[2][a];
          const double ksq = k[0] * k[0] + k[1] * k[1] + k[2] * k[2];
          if (ksq > ksq_max) continue;
          kx_.push_back(k[0]);
          ky_.push_back(k[1]);
          kz_.push_back(k[2]);
          kcoef_.push_back(std::exp(-ksq / (4.0 * beta_ * beta_)) / ksq);
          km3_.push_back(m3);
          ++g.size;
        }
        if (g.size > 0) kgroups_.push_back(g);
      }
    double csum = 0.0;
    for (double c2 : kcoef_) csum += c2;
    rec_diag_ = 8.0 * kPi * kCoulomb / volume_ * csum;
    phase_tables();
  }

  // owned rows of the real-space part, and the pair geometry of the forces
  const double pairs = double(count_) * double(n_);
  stored_rows_ = pairs * sizeof(double) <= kMaxStoredBytes;
  stored_geometry_ = pairs * (1 + kGeo) * sizeof(double) <= kMaxStoredBytes;
  // (every element is written below: resize, no fill)
  rows_.resize(stored_rows_ ? size_t(count_) * n_ : 0);
  geometry_.resize(stored_geometry_ ? size_t(count_) * n_ * kGeo : 0);
  scratch_.assign(n_, 0.0);
  std::vector<double> own_diag(count_);
  for (int li = 0; li < count_; ++li) {
    const int i = first_ + li;
    double* out = stored_rows_ ? &rows_[size_t(li) * n_] : scratch_.data();
    for (int j = 0; j < n_; ++j) {
      double* geo = stored_geometry_ ? &geometry_[(size_t(li) * n_ + j) * kGeo] : nullptr;
      const int lj = j - first_;
      if (stored_rows_ && lj >= 0 && lj < li) {
        // both atoms are ours and row j is done: A is symmetric, rvec_ji = -rvec_ij
        const size_t src = size_t(lj) * n_ + i;
        out[j] = rows_[src];
        if (geo) {
          const double* g = &geometry_[src * kGeo];
          for (int k = 0; k < 3; ++k) geo[k] = -g[k];
          for (int k = 3; k < kGeo; ++k) geo[k] = g[k];
        }
      } else {
        out[j] = pair_terms(i, j, geo);
      }
    }
    own_diag[li] = out[i];
  }
  diag_.assign(n_, 0.0);
  MPI_Allgatherv(own_diag.data(), count_, MPI_DOUBLE, diag_.data(), counts_.data(),
                 displs_.data(), MPI_DOUBLE, comm_);
  if (periodic_) {
    const double bg = -kPi * kCoulomb / volume_;
    for (int i = 0; i < n_; ++i)
      diag_[i] += rec_diag_ + bg * (1.0 / (beta_ * beta_) - 2.0 * alpha_[i] * alpha_[i]);
  }
}

void GaussianElectrostatics::reduce(double d[3]) const {
  double s[3];
  for (int k = 0; k < 3; ++k) {
    s[k] = d[0] * inv_[0][k] + d[1] * inv_[1][k] + d[2] * inv_[2][k];
    s[k] -= std::nearbyint(s[k]);
  }
  for (int k = 0; k < 3; ++k) d[k] = s[0] * cell_[0][k] + s[1] * cell_[1][k] + s[2] * cell_[2][k];
}

// Every periodic image r = d + n1 a + n2 b + n3 c (d already reduced) with |r| <= rcut,
// enumerated directly: for the lower-triangular cell, z fixes the range of n3, then y that
// of n2, then x that of n1.  body(rvec, r^2).
template <class F>
void GaussianElectrostatics::for_each_image(const double d[3], F&& body) const {
  const double rc2 = rcut_ * rcut_;
  const double ax = cell_[0][0], bx = cell_[1][0], by = cell_[1][1];
  const double cx = cell_[2][0], cy = cell_[2][1], cz = cell_[2][2];
  const int n3lo = int(std::ceil((-rcut_ - d[2]) / cz)), n3hi = int(std::floor((rcut_ - d[2]) / cz));
  for (int n3 = n3lo; n3 <= n3hi; ++n3) {
    const double z = d[2] + n3 * cz;
    const double rem = rc2 - z * z;
    if (rem < 0.0) continue;
    const double ry = std::sqrt(rem), y0 = d[1] + n3 * cy;
    const int n2lo = int(std::ceil((-ry - y0) / by)), n2hi = int(std::floor((ry - y0) / by));
    for (int n2 = n2lo; n2 <= n2hi; ++n2) {
      const double y = y0 + n2 * by;
      const double rem2 = rem - y * y;
      if (rem2 < 0.0) continue;
      const double rx = std::sqrt(rem2), x0 = d[0] + n3 * cx + n2 * bx;
      const int n1lo = int(std::ceil((-rx - x0) / ax)), n1hi = int(std::floor((rx - x0) / ax));
      for (int n1 = n1lo; n1 <= n1hi; ++n1) {
        const double rv[3] = {x0 + n1 * ax, y, z};
        const double r2 = rv[0] * rv[0] + y * y + z * z;
        if (r2 <= rc2) body(rv, r2);
      }
    }
  }
}

// Element (i, j) of the real-space matrix and, if geo is given, the geometry of its force:
// with the pair kernel g(r) (all images), geo = sum g'(r)/r rvec (3 values; zero for j = i)
// followed by sum g'(r)/r rvec (x) rvec (6 values, LAMMPS order), rvec = r_j + n - r_i.
//   free boundaries: g = k_e erf(g_ij r)/r; diagonal the Gaussian self energy
//                    2 k_e g_ii/sqrt(pi)
//   periodic cells:  g = k_e [erfc(beta r) - erfc(g_ij r)]/r, summed over the images
//                    (not the atom itself); diagonal plus 2 k_e (g_ii - beta)/sqrt(pi)
double GaussianElectrostatics::pair_terms(int i, int j, double* geo) const {
  const double* xi = x_ + 3 * i;
  const double g = 1.0 / std::sqrt(alpha_[i] * alpha_[i] + alpha_[j] * alpha_[j]);
  double d[3] = {x_[3 * j] - xi[0], x_[3 * j + 1] - xi[1], x_[3 * j + 2] - xi[2]};
  if (geo) std::fill(geo, geo + kGeo, 0.0);
  auto add_geometry = [&](const double rv[3], double f) {  // f = g'(r)/r / k_e
    if (j != i)
      for (int k = 0; k < 3; ++k) geo[k] += f * rv[k];
    geo[3] += f * rv[0] * rv[0];
    geo[4] += f * rv[1] * rv[1];
    geo[5] += f * rv[2] * rv[2];
    geo[6] += f * rv[0] * rv[1];
    geo[7] += f * rv[0] * rv[2];
    geo[8] += f * rv[1] * rv[2];
  };
  double sum = 0.0;
  if (!periodic_) {
    if (j == i) return kCoulomb * kTwoOverSqrtPi * g;
    const double r2 = d[0] * d[0] + d[1] * d[1] + d[2] * d[2];
    const double r = std::sqrt(r2);
    const double e = std::erf(g * r);
    sum = e / r;
    // d/dr [erf(g r)/r] = 2g/sqrt(pi) exp(-g^2 r^2)/r - erf(g r)/r^2
    if (geo) add_geometry(d, (kTwoOverSqrtPi * g * std::exp(-g * g * r2) / r - e / r2) / r);
  } else {
    reduce(d);
    for_each_image(d, [&](const double rv[3], double r2) {
      if (r2 == 0.0) return;  // the atom itself (j = i, n = 0)
      const double r = std::sqrt(r2);
      const double eb = std::erfc(beta_ * r);
      double v = eb;
      double dv = -kTwoOverSqrtPi * beta_ * std::exp(-beta_ * beta_ * r2) / r - eb / r2;
      if (g * r < gamma_cut_) {
        const double eg = std::erfc(g * r);
        v -= eg;
        if (geo) dv += kTwoOverSqrtPi * g * std::exp(-g * g * r2) / r + eg / r2;
      }
      sum += v / r;
      if (geo) add_geometry(rv, dv / r);
    });
    if (j == i) sum += kTwoOverSqrtPi * (g - beta_);
  }
  if (geo)
    for (int k = 0; k < kGeo; ++k) geo[k] *= kCoulomb;
  return kCoulomb * sum;
}

void GaussianElectrostatics::phase_tables() {
  for (int d = 0; d < 3; ++d) {
    const int width = 2 * mmax_[d] + 1;
    phase_re_[d].assign(size_t(width) * count_, 0.0);
    phase_im_[d].assign(size_t(width) * count_, 0.0);
  }
  for (int li = 0; li < count_; ++li) {
    const double* xi = x_ + 3 * (first_ + li);
    for (int d = 0; d < 3; ++d) {
      const double s = xi[0] * inv_[0][d] + xi[1] * inv_[1][d] + xi[2] * inv_[2][d];
      for (int m = -mmax_[d]; m <= mmax_[d]; ++m) {
        const double arg = 2.0 * kPi * m * (s - std::floor(s));
        const size_t at = size_t(m + mmax_[d]) * count_ + li;
        phase_re_[d][at] = std::cos(arg);
        phase_im_[d][at] = std::sin(arg);
      }
    }
  }
  e12_re_.assign(count_, 0.0);
  e12_im_.assign(count_, 0.0);
  e_re_.assign(count_, 0.0);
  e_im_.assign(count_, 0.0);
}

template <class F>
void GaussianElectrostatics::for_each_k(F&& body) const {
  const int c = count_;
  for (const KGroup& g : kgroups_) {
    const double* p1r = &phase_re_[0][size_t(g.m1 + mmax_[0]) * c];
    const double* p1i = &phase_im_[0][size_t(g.m1 + mmax_[0]) * c];
    const double* p2r = &phase_re_[1][size_t(g.m2 + mmax_[1]) * c];
    const double* p2i = &phase_im_[1][size_t(g.m2 + mmax_[1]) * c];
    for (int i = 0; i < c; ++i) {
      e12_re_[i] = p1r[i] * p2r[i] - p1i[i] * p2i[i];
      e12_im_[i] = p1r[i] * p2i[i] + p1i[i] * p2r[i];
    }
    for (int t = 0; t < g.size; ++t) {
      const int k = g.first + t;
      const double* p3r = &phase_re_[2][size_t(km3_[k] + mmax_[2]) * c];
      const double* p3i = &phase_im_[2][size_t(km3_[k] + mmax_[2]) * c];
      for (int i = 0; i < c; ++i) {
        e_re_[i] = e12_re_[i] * p3r[i] - e12_im_[i] * p3i[i];
        e_im_[i] = e12_re_[i] * p3i[i] + e12_im_[i] * p3r[i];
      }
      body(k, e_re_.data(), e_im_.data());
    }
  }
}

// s[(k*m + v)*2 + {0,1}] = Re, Im of sum_j v_j exp(i k.r_j) over all atoms
void GaussianElectrostatics::structure_factors(int m, const double* v, std::vector<double>& s) {
  const int nk = kvectors();
  s.assign(size_t(nk) * m * 2, 0.0);
  for_each_k([&](int k, const double* er, const double* ei) {
    for (int c = 0; c < m; ++c) {
      const double* vc = v + size_t(c) * n_ + first_;
      double sr = 0.0, si = 0.0;
#pragma omp simd reduction(+ : sr, si)
      for (int i = 0; i < count_; ++i) {
        sr += vc[i] * er[i];
        si += vc[i] * ei[i];
      }
      s[(size_t(k) * m + c) * 2] = sr;
      s[(size_t(k) * m + c) * 2 + 1] = si;
    }
  });
  if (nprocs_ > 1)
    MPI_Allreduce(MPI_IN_PLACE, s.data(), int(s.size()), MPI_DOUBLE, MPI_SUM, comm_);
}

// Uniform compensating background (SPEC section 5):
// (A_bg v)_i = -(pi k_e/V) [(1/beta^2 - alpha_i^2) sum_j v_j - sum_j alpha_j^2 v_j]
void GaussianElectrostatics::background(int m, const double* v, double* y_owned) const {
  const double pref = -kPi * kCoulomb / volume_;
  for (int c = 0; c < m; ++c) {
    const double* vc = v + size_t(c) * n_;
    double sv = 0.0, sa = 0.0;
    for (int j = 0; j < n_; ++j) {
      sv += vc[j];
      sa += alpha_[j] * alpha_[j] * vc[j];
    }
    for (int i = 0; i < count_; ++i) {
      const double ai = alpha_[first_ + i];
      y_owned[size_t(c) * count_ + i] += pref * ((1.0 / (beta_ * beta_) - ai * ai) * sv - sa);
    }
  }
}

void GaussianElectrostatics::apply(int m, const double* v, double* y) {
  std::vector<double> own(size_t(m) * count_, 0.0);
  for (int li = 0; li < count_; ++li) {
    const double* r = scratch_.data();
    if (stored_rows_)
      r = &rows_[size_t(li) * n_];
    else
      for (int j = 0; j < n_; ++j) scratch_[j] = pair_terms(first_ + li, j, nullptr);
    for (int c = 0; c < m; ++c) {
      const double* vc = v + size_t(c) * n_;
      double sum = 0.0;
#pragma omp simd reduction(+ : sum)
      for (int j = 0; j < n_; ++j) sum += r[j] * vc[j];
      own[size_t(c) * count_ + li] = sum;
    }
  }
  if (periodic_) {
    std::vector<double> s;
    structure_factors(m, v, s);
    // (A_rec v)_i = (8 pi k_e/V) sum_{half k} coef_k Re[exp(-i k.r_i) S_v(k)]
    const double pref = 8.0 * kPi * kCoulomb / volume_;
    for_each_k([&](int k, const double* er, const double* ei) {
      for (int c = 0; c < m; ++c) {
        const double sr = pref * kcoef_[k] * s[(size_t(k) * m + c) * 2];
        const double si = pref * kcoef_[k] * s[(size_t(k) * m + c) * 2 + 1];
        double* oc = &own[size_t(c) * count_];
        for (int i = 0; i < count_; ++i) oc[i] += er[i] * sr + ei[i] * si;
      }
    });
    background(m, v, own.data());
  }
  for (int c = 0; c < m; ++c)
    MPI_Allgatherv(&own[size_t(c) * count_], count_, MPI_DOUBLE, y + size_t(c) * n_,
                   counts_.data(), displs_.data(), MPI_DOUBLE, comm_);
}

// Forces and virial of E = 1/2 a^T A_es b.  A pair term c g(r) with c = (a_i b_j + a_j b_i)/2
// gives F_i = c g'(r) rvec/r (rvec = r_j + n - r_i) and, visited from both ends, half of the
// pair virial -c g'(r) rvec (x) rvec / r at each end (pair_terms() sums the geometry over
// the images).  Reciprocal space: see SPEC section 5 and the comments below.
void GaussianElectrostatics::forces(const double* a, const double* b, double* f,
                                    double* virial, double* vatom) {
  double geo_scratch[kGeo];
  for (int li = 0; li < count_; ++li) {
    const int i = first_ + li;
    double fi[3] = {0.0, 0.0, 0.0};
    double vi[6] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
    for (int j = 0; j < n_; ++j) {
      const double c = 0.5 * (a[i] * b[j] + a[j] * b[i]);
      if (c == 0.0) continue;
      const double* geo = geo_scratch;
      if (stored_geometry_)
        geo = &geometry_[(size_t(li) * n_ + j) * kGeo];
      else
        pair_terms(i, j, geo_scratch);
      for (int k = 0; k < 3; ++k) fi[k] += c * geo[k];
      for (int k = 0; k < 6; ++k) vi[k] -= 0.5 * c * geo[3 + k];
    }
    for (int k = 0; k < 3; ++k) f[3 * li + k] += fi[k];
    for (int k = 0; k < 6; ++k) virial[k] += vi[k];
    if (vatom)
      for (int k = 0; k < 6; ++k) vatom[6 * li + k] += vi[k];
  }
  if (!periodic_) return;

  // Reciprocal space.  E_rec = (2 pi k_e/V) sum_{k != 0} coef_k Re[S_a(k) conj S_b(k)];
  // over the half space (factor 2):
  //   F_i = (4 pi k_e/V) sum_k coef_k k (a_i Im[e_i conj S_b] + b_i Im[e_i conj S_a]),
  // atom i's share of the energy of k is
  //   eps_i = (2 pi k_e/V) coef_k Re[a_i e_i conj S_b + b_i e_i conj S_a],
  // and its virial eps_i [delta_ab - 2 k_a k_b (1/k^2 + 1/(4 beta^2))].
  std::vector<double> ab(size_t(2) * n_);
  std::copy(a, a + n_, ab.begin());
  std::copy(b, b + n_, ab.begin() + n_);
  std::vector<double> s;
  structure_factors(2, ab.data(), s);
  const double fpref = 4.0 * kPi * kCoulomb / volume_;
  const double epref = 2.0 * kPi * kCoulomb / volume_;
  const double inv4b2 = 1.0 / (4.0 * beta_ * beta_);
  for_each_k([&](int k, const double* er, const double* ei) {
    const double kv[3] = {kx_[k], ky_[k], kz_[k]};
    const double ksq = kv[0] * kv[0] + kv[1] * kv[1] + kv[2] * kv[2];
    const double w = 2.0 * (1.0 / ksq + inv4b2);
    const double t[6] = {1.0 - w * kv[0] * kv[0], 1.0 - w * kv[1] * kv[1],
                         1.0 - w * kv[2] * kv[2], -w * kv[0] * kv[1],
                         -w * kv[0] * kv[2],      -w * kv[1] * kv[2]};
    const double sar = s[size_t(k) * 4], sai = s[size_t(k) * 4 + 1];
    const double sbr = s[size_t(k) * 4 + 2], sbi = s[size_t(k) * 4 + 3];
    const double fc = fpref * kcoef_[k], ec = epref * kcoef_[k];
    double vk[6] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
    for (int li = 0; li < count_; ++li) {
      const double ai = a[first_ + li], bi = b[first_ + li];
      // e conj(S) = (er + i ei)(sr - i si)
      const double im = ai * (ei[li] * sbr - er[li] * sbi) + bi * (ei[li] * sar - er[li] * sai);
      const double re = ai * (er[li] * sbr + ei[li] * sbi) + bi * (er[li] * sar + ei[li] * sai);
      const double fk = fc * im;
      for (int c = 0; c < 3; ++c) f[3 * li + c] += fk * kv[c];
      const double eps = ec * re;
      for (int c = 0; c < 6; ++c) vk[c] += eps * t[c];
      if (vatom)
        for (int c = 0; c < 6; ++c) vatom[6 * li + c] += eps * t[c];
    }
    for (int c = 0; c < 6; ++c) virial[c] += vk[c];
  });

  // Background: E_bg = 1/2 a^T A_bg b scales as 1/V, so its virial is E_bg on the diagonal;
  // atom i's share is (a_i (A_bg b)_i + b_i (A_bg a)_i)/4.
  std::vector<double> bg(size_t(2) * count_, 0.0);
  background(2, ab.data(), bg.data());  // rows: A_bg a, then A_bg b
  for (int li = 0; li < count_; ++li) {
    const double eps = 0.25 * (a[first_ + li] * bg[count_ + li] + b[first_ + li] * bg[li]);
    for (int c = 0; c < 3; ++c) {
      virial[c] += eps;
      if (vatom) vatom[6 * li + c] += eps;
    }
  }
}

SolveStats solve_constrained(GaussianElectrostatics& es, const double* hardness,
                             const double* c, double total, double* x, double tol,
                             int maxiter) {
  const int n = es.size();
  SolveStats stats;
  if (n == 0) return stats;
  const std::vector<double>& diag = es.diagonal();
  std::vector<double> minv(n);
  double sum_minv = 0.0;
  for (int i = 0; i < n; ++i) {
    minv[i] = 1.0 / (hardness[i] + diag[i]);
    sum_minv += minv[i];
  }
  auto dot = [n](const double* u, const double* v) {
    double s = 0.0;
    for (int i = 0; i < n; ++i) s += u[i] * v[i];
    return s;
  };
  // gradient r = (J + A_es) x + c
  auto gradient = [&](const double* v, double* out) {
    es.apply(1, v, out);
    for (int i = 0; i < n; ++i) out[i] += hardness[i] * v[i];
  };
  // norm of r without its component along 1 (what the constraint can absorb)
  auto projected_norm = [&](const double* r) {
    double mean = 0.0;
    for (int i = 0; i < n; ++i) mean += r[i];
    mean /= n;
    double s = 0.0;
    for (int i = 0; i < n; ++i) s += (r[i] - mean) * (r[i] - mean);
    return std::sqrt(s);
  };
  // g = M^-1 (r - mu 1) with mu such that sum g = 0: preconditioned and feasible.  r is
  // shifted by -mu 1 as well: that changes nothing on the constraint surface, but keeps
  // the large lambda 1 part out of r, without which the recurrences lose their accuracy
  // and the iteration diverges below ~1e-8 (Gould et al., "residual update")
  double shift = 0.0;
  auto precondition = [&](double* r, double* g) {
    double mu = 0.0;
    for (int i = 0; i < n; ++i) mu += minv[i] * r[i];
    mu /= sum_minv;
    for (int i = 0; i < n; ++i) {
      r[i] -= mu;
      g[i] = minv[i] * r[i];
    }
    shift += mu;
  };

  std::vector<double> r(n), g(n), p(n), ap(n);
  // scale of the residual: the projected gradient at uniform charges Q/n
  std::vector<double> uniform(n, total / n);
  gradient(uniform.data(), r.data());
  for (int i = 0; i < n; ++i) r[i] += c[i];
  double scale = projected_norm(r.data());

  // feasible start: shift the guess uniformly to sum Q
  double sx = 0.0;
  for (int i = 0; i < n; ++i) sx += x[i];
  for (int i = 0; i < n; ++i) x[i] += (total - sx) / n;
  gradient(x, r.data());
  for (int i = 0; i < n; ++i) r[i] += c[i];
  if (!(scale > 0.0)) scale = 1.0;  // uniform charges are exact: any residual is absolute

  precondition(r.data(), g.data());
  for (int i = 0; i < n; ++i) p[i] = -g[i];
  double rg = dot(r.data(), g.data());
  for (;;) {
    stats.residual = projected_norm(r.data()) / scale;
    if (stats.residual <= tol) break;
    if (stats.iterations >= maxiter) {
      stats.converged = false;
      break;
    }
    es.apply(1, p.data(), ap.data());
    for (int i = 0; i < n; ++i) ap[i] += hardness[i] * p[i];
    ++stats.iterations;
    const double pap = dot(p.data(), ap.data());
    if (!(pap > 0.0)) {  // (J + A_es) is positive definite on sum q = 0: breakdown
      stats.converged = false;
      break;
    }
    const double step = rg / pap;
    for (int i = 0; i < n; ++i) {
      x[i] += step * p[i];
      r[i] += step * ap[i];
    }
    precondition(r.data(), g.data());
    const double rg_new = dot(r.data(), g.data());
    const double ratio = rg_new / rg;
    rg = rg_new;
    for (int i = 0; i < n; ++i) p[i] = -g[i] + ratio * p[i];
  }
  // the Lagrange multiplier: at the solution the gradient is lambda 1; r was shifted by
  // -shift in total
  double mean = 0.0;
  for (int i = 0; i < n; ++i) mean += r[i];
  stats.multiplier = shift + mean / n;
  return stats;
}

}  // namespace snapqeq

// snapqeq bispectrum kernel; see sna.h for the conventions.
//
// Method: Wigner U functions of the 4D hyperspherical mapping (Varshalovich, Moskalev &
// Khersonskii, "Quantum Theory of Angular Momentum", sec. 4.8.2 recursion and 4.4
// inversion symmetry), Clebsch-Gordan coefficients by the Racah formula (VMK 8.2.1),
// and the adjoint ("Y array") force evaluation of Thompson et al., J. Comput. Phys. 285
// (2015) 316 and Wood & Thompson, J. Chem. Phys. 148 (2018) 241721.
#include "sna.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

namespace snapqeq {

namespace {

constexpr double kPi = 3.14159265358979323846;
constexpr double kHalfPi = 1.57079632679489661923;

// Everything needed to compute Z^j_{j1 j2}(ma, mb) for one (j1, j2, j, ma, mb) with
// 2*mb <= j: the ranges of the CG sums and where the result goes in the U/Y layout.
struct ZIndex {
  int j1, j2, j;
  int ma1min, ma2max, na;
  int mb1min, mb2max, nb;
  int jju;  // position of (j, ma, mb) in the U layout
  int cg;   // offset of the (j1, j2, j) CG block
};

// One contribution of a stored Z^j_{e1 e2} to Y^j_{e3}: weight factor * beta[triple, jjb]
// with the element triple chosen by perm: 0 -> (e1,e2,e3), 1 -> (e3,e2,e1), 2 -> (e2,e3,e1).
struct YTerm {
  int jjb;
  int perm;
  double factor;
};

double factorial(int n) {
  double f = 1.0;
  for (int i = 2; i <= n; ++i) f *= i;
  return f;
}

}  // namespace

struct SNATables {
  SNAOptions opt;
  int tj = 0;     // twojmax
  int ne = 1;     // element blocks
  int jdim = 1;   // twojmax + 1
  int idxu_max = 0, idxz_max = 0, idxb_max = 0;
  std::vector<int> idxu_block;                 // [j]
  std::vector<int> idxcg_block, idxz_block, idxb_block;  // [j1][j2][j]
  std::vector<double> cglist;
  std::vector<ZIndex> idxz;
  std::vector<int> idxb_j1, idxb_j2, idxb_j;   // [jjb]
  std::vector<double> rootpq;                  // [p][q] = sqrt(p/q), (tj+2)^2
  std::vector<double> bzero;                   // [j]
  std::vector<int> yterm_begin;                // [jjz], CSR into yterms
  std::vector<YTerm> yterms;

  int id3(int a, int b, int c) const { return (a * jdim + b) * jdim + c; }
  double rpq(int p, int q) const { return rootpq[p * (tj + 2) + q]; }

  explicit SNATables(const SNAOptions& o) : opt(o) {
    if (o.twojmax < 0) throw std::invalid_argument("twojmax must be >= 0");
    if (o.nelements < 1) throw std::invalid_argument("nelements must be >= 1");
    if (!(o.rfac0 > 0.0 && o.rfac0 <= 1.0))
      throw std::invalid_argument("rfac0 must lie in (0, 1]");
    tj = o.twojmax;
    jdim = tj + 1;
    ne = o.chemflag ? o.nelements : 1;
    opt.nelements = ne;
    build_indices();
    build_clebsch_gordan();
    rootpq.assign((tj + 2) * (tj + 2), 0.0);
    for (int p = 1; p <= tj + 1; ++p)
      for (int q = 1; q <= tj + 1; ++q) rootpq[p * (tj + 2) + q] = std::sqrt(double(p) / q);
    bzero.assign(jdim, 0.0);
    for (int j = 0; j <= tj; ++j) bzero[j] = o.bnormflag ? 1.0 : double(j + 1);  // wself = 1
    build_yterms();
  }

  void build_indices() {
    idxu_block.resize(jdim);
    idxu_max = 0;
    for (int j = 0; j <= tj; ++j) {
      idxu_block[j] = idxu_max;
      idxu_max += (j + 1) * (j + 1);
    }
    idxcg_block.assign(jdim * jdim * jdim, -1);
    idxz_block.assign(jdim * jdim * jdim, -1);
    idxb_block.assign(jdim * jdim * jdim, -1);
    int ncg = 0;
    for (int j1 = 0; j1 <= tj; ++j1)
      for (int j2 = 0; j2 <= j1; ++j2)
        for (int j = j1 - j2; j <= std::min(tj, j1 + j2); j += 2) {
          idxcg_block[id3(j1, j2, j)] = ncg;
          ncg += (j1 + 1) * (j2 + 1);
          if (j >= j1) {
            idxb_block[id3(j1, j2, j)] = idxb_max++;
            idxb_j1.push_back(j1);
            idxb_j2.push_back(j2);
            idxb_j.push_back(j);
          }
        }
    cglist.assign(ncg, 0.0);
    for (int j1 = 0; j1 <= tj; ++j1)
      for (int j2 = 0; j2 <= j1; ++j2)
        for (int j = j1 - j2; j <= std::min(tj, j1 + j2); j += 2) {
          idxz_block[id3(j1, j2, j)] = int(idxz.size());
          for (int mb = 0; 2 * mb <= j; ++mb)
            for (int ma = 0; ma <= j; ++ma) {
              ZIndex z;
              z.j1 = j1;
              z.j2 = j2;
              z.j = j;
              z.ma1min = std::max(0, (2 * ma - j - j2 + j1) / 2);
              z.ma2max = (2 * ma - j - (2 * z.ma1min - j1) + j2) / 2;
              z.na = std::min(j1, (2 * ma - j + j2 + j1) / 2) - z.ma1min + 1;
              z.mb1min = std::max(0, (2 * mb - j - j2 + j1) / 2);
              z.mb2max = (2 * mb - j - (2 * z.mb1min - j1) + j2) / 2;
              z.nb = std::min(j1, (2 * mb - j + j2 + j1) / 2) - z.mb1min + 1;
              z.jju = idxu_block[j] + (j + 1) * mb + ma;
              z.cg = idxcg_block[id3(j1, j2, j)];
              idxz.push_back(z);
            }
        }
    idxz_max = int(idxz.size());
  }

  // C^{j m}_{j1 m1 j2 m2} stored as cg[block + m1*(j2+1) + m2], zero unless m = m1 + m2.
  void build_clebsch_gordan() {
    int idx = 0;
    for (int j1 = 0; j1 <= tj; ++j1)
      for (int j2 = 0; j2 <= j1; ++j2)
        for (int j = j1 - j2; j <= std::min(tj, j1 + j2); j += 2) {
          const double delta =
              std::sqrt(factorial((j1 + j2 - j) / 2) * factorial((j1 - j2 + j) / 2) *
                        factorial((-j1 + j2 + j) / 2) / factorial((j1 + j2 + j) / 2 + 1));
          for (int m1 = 0; m1 <= j1; ++m1) {
            const int aa2 = 2 * m1 - j1;
            for (int m2 = 0; m2 <= j2; ++m2, ++idx) {
              const int bb2 = 2 * m2 - j2;
              const int m = (aa2 + bb2 + j) / 2;
              if (m < 0 || m > j) continue;
              const int cc2 = 2 * m - j;
              const int zmin = std::max({0, -(j - j2 + aa2) / 2, -(j - j1 - bb2) / 2});
              const int zmax = std::min({(j1 + j2 - j) / 2, (j1 - aa2) / 2, (j2 + bb2) / 2});
              double sum = 0.0;
              for (int z = zmin; z <= zmax; ++z) {
                const double sign = (z % 2) ? -1.0 : 1.0;
                sum += sign / (factorial(z) * factorial((j1 + j2 - j) / 2 - z) *
                               factorial((j1 - aa2) / 2 - z) * factorial((j2 + bb2) / 2 - z) *
                               factorial((j - j2 + aa2) / 2 + z) *
                               factorial((j - j1 - bb2) / 2 + z));
              }
              const double norm = std::sqrt(
                  factorial((j1 + aa2) / 2) * factorial((j1 - aa2) / 2) *
                  factorial((j2 + bb2) / 2) * factorial((j2 - bb2) / 2) *
                  factorial((j + cc2) / 2) * factorial((j - cc2) / 2) * (j + 1));
              cglist[idx] = sum * delta * norm;
            }
          }
        }
  }

  // dB_{j1 j2 j}/du follows from B = sum conj(u^j) Z^j_{j1 j2} and the symmetry
  // conj(u^j) Z^j_{j1 j2} = (j+1)/(j1+1) conj(u^j1) Z^j1_{j j2} (same for j2), so every
  // stored Z^j_{j1 j2} feeds Y^j with the weights of up to three canonical triples.  For
  // several elements the three triples carry different element orders; they are kept
  // separate so that the forces are exact for any beta (LAMMPS' compute_yi lumps them).
  void build_yterms() {
    yterm_begin.assign(idxz_max + 1, 0);
    for (int jjz = 0; jjz < idxz_max; ++jjz) {
      const ZIndex& z = idxz[jjz];
      const int j1 = z.j1, j2 = z.j2, j = z.j;
      std::vector<YTerm> t;
      const double f = opt.bnormflag ? 1.0 : (j1 + 1) / (j + 1.0);
      if (j >= j1) {
        const int jjb = idxb_block[id3(j1, j2, j)];
        t.push_back({jjb, 0, 1.0});
        if (j1 == j) t.push_back({jjb, 1, 1.0});
        if (j1 == j && j2 == j) t.push_back({jjb, 2, 1.0});
      } else if (j >= j2) {
        const int jjb = idxb_block[id3(j, j2, j1)];
        t.push_back({jjb, 1, f});
        if (j2 == j) t.push_back({jjb, 2, f});
      } else {
        t.push_back({idxb_block[id3(j2, j, j1)], 2, f});
      }
      if (ne == 1) {  // one element: all permutations address the same beta
        double sum = 0.0;
        for (const YTerm& y : t) sum += y.factor;
        t.assign(1, {t[0].jjb, 0, sum});
      }
      yterms.insert(yterms.end(), t.begin(), t.end());
      yterm_begin[jjz + 1] = int(yterms.size());
    }
  }
};

namespace {

// Visit the unique half of a (j+1)x(j+1) layer stored row by row (rows mb with 2*mb <= j,
// the layout of Z and of the used part of U, dU and Y): f(offset, weight).  The middle row
// of an even layer maps onto itself under the inversion symmetry, so only its left half
// counts, with weight 1/2 on the centre element.
template <class F>
inline void for_half_layer(int j, F&& f) {
  int idx = 0;
  for (int mb = 0; 2 * mb < j; ++mb)
    for (int ma = 0; ma <= j; ++ma) f(idx++, 1.0);
  if (j % 2 == 0) {
    const int mb = j / 2;
    for (int ma = 0; ma < mb; ++ma) f(idx++, 1.0);
    f(idx, 0.5);
  }
}

inline Complex cmul(Complex a, Complex b) {
  return {a.re * b.re - a.im * b.im, a.re * b.im + a.im * b.re};
}
inline Complex conj_mul(Complex a, Complex b) {  // conj(a) * b
  return {a.re * b.re + a.im * b.im, a.re * b.im - a.im * b.re};
}

}  // namespace

SNA::SNA(const SNAOptions& options) : t_(std::make_shared<const SNATables>(options)) {
  ulisttot_.resize(size_t(t_->ne) * t_->idxu_max);
  zlist_.resize(size_t(t_->ne) * t_->ne * t_->idxz_max);
  ylist_.resize(size_t(t_->ne) * t_->idxu_max);
  dulist_.resize(size_t(t_->idxu_max) * 3);
}

SNA::SNA(const SNA& other) : t_(other.t_) {
  ulisttot_.resize(size_t(t_->ne) * t_->idxu_max);
  zlist_.resize(size_t(t_->ne) * t_->ne * t_->idxz_max);
  ylist_.resize(size_t(t_->ne) * t_->idxu_max);
  dulist_.resize(size_t(t_->idxu_max) * 3);
}

SNA::~SNA() = default;

const SNAOptions& SNA::options() const { return t_->opt; }
int SNA::nbase() const { return t_->idxb_max; }
int SNA::ncoeff() const { return t_->idxb_max * t_->ne * t_->ne * t_->ne; }

void SNA::triple(int k, int& j1, int& j2, int& j) const {
  j1 = t_->idxb_j1[k];
  j2 = t_->idxb_j2[k];
  j = t_->idxb_j[k];
}

void SNA::set_neighbors(int n, const double* rij, const double* rcut, const double* wj,
                        const int* elem, const double* sinner, const double* dinner) {
  nnbr_ = n;
  rij_ = rij;
  rcut_ = rcut;
  wj_ = wj;
  elem_ = elem;
  sinner_ = sinner;
  dinner_ = dinner;
  if (ulist_.size() < size_t(n) * t_->idxu_max) ulist_.resize(size_t(n) * t_->idxu_max);
  if (z0_.size() < size_t(n)) z0_.resize(n);
}

double SNA::sfac(double r, double rcut, double sinner, double dinner) const {
  const SNAOptions& o = t_->opt;
  double s;
  if (!o.switchflag || r <= o.rmin0)
    s = 1.0;
  else if (r > rcut)
    s = 0.0;
  else
    s = 0.5 * (std::cos((r - o.rmin0) * kPi / (rcut - o.rmin0)) + 1.0);
  if (o.switchinnerflag && r < sinner + dinner) {
    if (r > sinner - dinner)
      s *= 0.5 * (1.0 - std::cos(kHalfPi + (r - sinner) * kHalfPi / dinner));
    else
      s = 0.0;
  }
  return s;
}

double SNA::dsfac(double r, double rcut, double sinner, double dinner) const {
  const SNAOptions& o = t_->opt;
  double s = 1.0, ds = 0.0;
  if (o.switchflag && r > o.rmin0) {
    if (r > rcut) {
      s = 0.0;
    } else {
      const double k = kPi / (rcut - o.rmin0);
      s = 0.5 * (std::cos((r - o.rmin0) * k) + 1.0);
      ds = -0.5 * std::sin((r - o.rmin0) * k) * k;
    }
  }
  if (o.switchinnerflag && r < sinner + dinner) {
    if (r <= sinner - dinner) return 0.0;
    const double k = kHalfPi / dinner;
    const double arg = kHalfPi + (r - sinner) * k;
    const double si = 0.5 * (1.0 - std::cos(arg));
    const double dsi = 0.5 * std::sin(arg) * k;
    return ds * si + s * dsi;
  }
  return ds;
}

// U^j(r) of one neighbour, unscaled, all layers, both halves.
void SNA::compute_uarray(int jj) {
  const SNATables& t = *t_;
  const double x = rij_[3 * jj], y = rij_[3 * jj + 1], z = rij_[3 * jj + 2];
  const double r = std::sqrt(x * x + y * y + z * z);
  const double theta0 = (r - t.opt.rmin0) * t.opt.rfac0 * kPi / (rcut_[jj] - t.opt.rmin0);
  const double z0 = r / std::tan(theta0);
  z0_[jj] = z0;
  const double r0inv = 1.0 / std::sqrt(r * r + z0 * z0);
  const Complex a{r0inv * z0, -r0inv * z};
  const Complex b{r0inv * y, -r0inv * x};

  Complex* u = &ulist_[size_t(jj) * t.idxu_max];
  u[0] = {1.0, 0.0};
  for (int j = 1; j <= t.tj; ++j) {
    int jju = t.idxu_block[j];
    int jjup = t.idxu_block[j - 1];
    for (int mb = 0; 2 * mb <= j; ++mb) {
      u[jju] = {0.0, 0.0};
      for (int ma = 0; ma < j; ++ma) {
        const Complex ca = conj_mul(a, u[jjup]);
        const Complex cb = conj_mul(b, u[jjup]);
        const double pa = t.rpq(j - ma, j - mb), pb = t.rpq(ma + 1, j - mb);
        u[jju].re += pa * ca.re;
        u[jju].im += pa * ca.im;
        u[jju + 1] = {-pb * cb.re, -pb * cb.im};
        ++jju;
        ++jjup;
      }
      ++jju;
    }
    // inversion symmetry: u(j-ma, j-mb) = (-1)^(ma-mb) conj(u(ma, mb))
    jju = t.idxu_block[j];
    jjup = jju + (j + 1) * (j + 1) - 1;
    int mbpar = 1;
    for (int mb = 0; 2 * mb <= j; ++mb) {
      int mapar = mbpar;
      for (int ma = 0; ma <= j; ++ma) {
        u[jjup] = mapar == 1 ? Complex{u[jju].re, -u[jju].im} : Complex{-u[jju].re, u[jju].im};
        mapar = -mapar;
        ++jju;
        --jjup;
      }
      mbpar = -mbpar;
    }
  }
}

void SNA::compute_ui(int ielem) {
  const SNATables& t = *t_;
  const SNAOptions& o = t.opt;
  std::fill(ulisttot_.begin(), ulisttot_.end(), Complex{});
  for (int e = 0; e < t.ne; ++e) {
    if (e != ielem && !o.wselfallflag) continue;
    Complex* ut = &ulisttot_[size_t(e) * t.idxu_max];
    for (int j = 0; j <= t.tj; ++j)
      for (int ma = 0; ma <= j; ++ma) ut[t.idxu_block[j] + (j + 1) * ma + ma].re = 1.0;  // wself
  }
  for (int jj = 0; jj < nnbr_; ++jj) {
    compute_uarray(jj);
    const double x = rij_[3 * jj], y = rij_[3 * jj + 1], z = rij_[3 * jj + 2];
    const double r = std::sqrt(x * x + y * y + z * z);
    const double s = sfac(r, rcut_[jj], sinner_ ? sinner_[jj] : 0.0,
                          dinner_ ? dinner_[jj] : 0.0) * wj_[jj];
    const int e = o.chemflag ? elem_[jj] : 0;
    Complex* ut = &ulisttot_[size_t(e) * t.idxu_max];
    const Complex* u = &ulist_[size_t(jj) * t.idxu_max];
    for (int k = 0; k < t.idxu_max; ++k) {
      ut[k].re += s * u[k].re;
      ut[k].im += s * u[k].im;
    }
  }
}

void SNA::compute_zi() {
  const SNATables& t = *t_;
  const bool bnorm = t.opt.bnormflag;
  for (int e1 = 0; e1 < t.ne; ++e1)
    for (int e2 = 0; e2 < t.ne; ++e2) {
      const Complex* u1 = &ulisttot_[size_t(e1) * t.idxu_max];
      const Complex* u2 = &ulisttot_[size_t(e2) * t.idxu_max];
      Complex* zout = &zlist_[size_t(e1 * t.ne + e2) * t.idxz_max];
      for (int jjz = 0; jjz < t.idxz_max; ++jjz) {
        const ZIndex& zi = t.idxz[jjz];
        const double* cg = &t.cglist[zi.cg];
        const int j1 = zi.j1, j2 = zi.j2;
        int jju1 = t.idxu_block[j1] + (j1 + 1) * zi.mb1min;
        int jju2 = t.idxu_block[j2] + (j2 + 1) * zi.mb2max;
        int icgb = zi.mb1min * (j2 + 1) + zi.mb2max;
        double zr = 0.0, zim = 0.0;
        for (int ib = 0; ib < zi.nb; ++ib) {
          double sr = 0.0, si = 0.0;
          const Complex* a1 = u1 + jju1;
          const Complex* a2 = u2 + jju2;
          int ma1 = zi.ma1min, ma2 = zi.ma2max;
          int icga = zi.ma1min * (j2 + 1) + zi.ma2max;
          for (int ia = 0; ia < zi.na; ++ia) {
            const Complex p = cmul(a1[ma1], a2[ma2]);
            sr += cg[icga] * p.re;
            si += cg[icga] * p.im;
            ++ma1;
            --ma2;
            icga += j2;
          }
          zr += cg[icgb] * sr;
          zim += cg[icgb] * si;
          jju1 += j1 + 1;
          jju2 -= j2 + 1;
          icgb += j2;
        }
        if (bnorm) {
          zr /= (zi.j + 1);
          zim /= (zi.j + 1);
        }
        zout[jjz] = {zr, zim};
      }
    }
}

void SNA::compute_bi(int ielem, double* blist) const {
  const SNATables& t = *t_;
  const int ne = t.ne, nb = t.idxb_max;
  for (int e1 = 0; e1 < ne; ++e1)
    for (int e2 = 0; e2 < ne; ++e2) {
      const Complex* zb = &zlist_[size_t(e1 * ne + e2) * t.idxz_max];
      for (int e3 = 0; e3 < ne; ++e3) {
        const Complex* ub = &ulisttot_[size_t(e3) * t.idxu_max];
        double* out = blist + size_t((e1 * ne + e2) * ne + e3) * nb;
        for (int jjb = 0; jjb < nb; ++jjb) {
          const int j1 = t.idxb_j1[jjb], j2 = t.idxb_j2[jjb], j = t.idxb_j[jjb];
          const Complex* z = zb + t.idxz_block[t.id3(j1, j2, j)];
          const Complex* u = ub + t.idxu_block[j];
          double sum = 0.0;
          for_half_layer(j, [&](int k, double w) { sum += w * (u[k].re * z[k].re + u[k].im * z[k].im); });
          out[jjb] = 2.0 * sum;
        }
      }
    }
  if (t.opt.bzeroflag) {
    for (int e1 = 0; e1 < ne; ++e1)
      for (int e2 = 0; e2 < ne; ++e2)
        for (int e3 = 0; e3 < ne; ++e3) {
          const bool self = (e1 == ielem && e2 == ielem && e3 == ielem);
          if (!self && !t.opt.wselfallflag) continue;
          double* out = blist + size_t((e1 * ne + e2) * ne + e3) * nb;
          for (int jjb = 0; jjb < nb; ++jjb) out[jjb] -= t.bzero[t.idxb_j[jjb]];
        }
  }
}

void SNA::compute_yi(const double* beta) {
  const SNATables& t = *t_;
  const int ne = t.ne, nb = t.idxb_max;
  std::fill(ylist_.begin(), ylist_.end(), Complex{});
  for (int e1 = 0; e1 < ne; ++e1)
    for (int e2 = 0; e2 < ne; ++e2) {
      const Complex* zb = &zlist_[size_t(e1 * ne + e2) * t.idxz_max];
      for (int e3 = 0; e3 < ne; ++e3) {
        const int tri[3] = {(e1 * ne + e2) * ne + e3, (e3 * ne + e2) * ne + e1,
                            (e2 * ne + e3) * ne + e1};
        Complex* y = &ylist_[size_t(e3) * t.idxu_max];
        for (int jjz = 0; jjz < t.idxz_max; ++jjz) {
          double w = 0.0;
          for (int k = t.yterm_begin[jjz]; k < t.yterm_begin[jjz + 1]; ++k) {
            const YTerm& yt = t.yterms[k];
            w += yt.factor * beta[size_t(tri[yt.perm]) * nb + yt.jjb];
          }
          const int jju = t.idxz[jjz].jju;
          y[jju].re += w * zb[jjz].re;
          y[jju].im += w * zb[jjz].im;
        }
      }
    }
}

// dU/drij of neighbour jj for the rows 2*mb <= j, including the switching function and
// weight, stored as dulist_[jju*3 + k].
void SNA::compute_duarray(int jj) {
  const SNATables& t = *t_;
  const SNAOptions& o = t.opt;
  const double x = rij_[3 * jj], y = rij_[3 * jj + 1], z = rij_[3 * jj + 2];
  const double rsq = x * x + y * y + z * z;
  const double r = std::sqrt(rsq);
  const double rscale0 = o.rfac0 * kPi / (rcut_[jj] - o.rmin0);
  const double z0 = z0_[jj];
  const double dz0dr = z0 / r - (r * rscale0) * (rsq + z0 * z0) / rsq;
  const double rinv = 1.0 / r;
  const double uvec[3] = {x * rinv, y * rinv, z * rinv};
  const double r0inv = 1.0 / std::sqrt(rsq + z0 * z0);
  const Complex a{z0 * r0inv, -z * r0inv};
  const Complex b{y * r0inv, -x * r0inv};
  const double dr0invdr = -r0inv * r0inv * r0inv * (r + z0 * dz0dr);
  Complex da[3], db[3];
  for (int k = 0; k < 3; ++k) {
    const double dr0inv = dr0invdr * uvec[k];
    da[k] = {dz0dr * uvec[k] * r0inv + z0 * dr0inv, -z * dr0inv};
    db[k] = {y * dr0inv, -x * dr0inv};
  }
  da[2].im += -r0inv;
  db[0].im += -r0inv;
  db[1].re += r0inv;

  const Complex* u = &ulist_[size_t(jj) * t.idxu_max];
  Complex* du = dulist_.data();
  du[0] = du[1] = du[2] = Complex{};
  for (int j = 1; j <= t.tj; ++j) {
    int jju = t.idxu_block[j];
    int jjup = t.idxu_block[j - 1];
    for (int mb = 0; 2 * mb <= j; ++mb) {
      for (int k = 0; k < 3; ++k) du[3 * jju + k] = Complex{};
      for (int ma = 0; ma < j; ++ma) {
        const double pa = t.rpq(j - ma, j - mb), pb = t.rpq(ma + 1, j - mb);
        for (int k = 0; k < 3; ++k) {
          const Complex up = u[jjup], dup = du[3 * jjup + k];
          const Complex ta1 = conj_mul(da[k], up), ta2 = conj_mul(a, dup);
          du[3 * jju + k].re += pa * (ta1.re + ta2.re);
          du[3 * jju + k].im += pa * (ta1.im + ta2.im);
          const Complex tb1 = conj_mul(db[k], up), tb2 = conj_mul(b, dup);
          du[3 * (jju + 1) + k] = {-pb * (tb1.re + tb2.re), -pb * (tb1.im + tb2.im)};
        }
        ++jju;
        ++jjup;
      }
      ++jju;
    }
    jju = t.idxu_block[j];
    jjup = jju + (j + 1) * (j + 1) - 1;
    int mbpar = 1;
    for (int mb = 0; 2 * mb <= j; ++mb) {
      int mapar = mbpar;
      for (int ma = 0; ma <= j; ++ma) {
        for (int k = 0; k < 3; ++k) {
          const Complex d = du[3 * jju + k];
          du[3 * jjup + k] = mapar == 1 ? Complex{d.re, -d.im} : Complex{-d.re, d.im};
        }
        mapar = -mapar;
        ++jju;
        --jjup;
      }
      mbpar = -mbpar;
    }
  }

  const double si = sinner_ ? sinner_[jj] : 0.0, di = dinner_ ? dinner_[jj] : 0.0;
  const double s = sfac(r, rcut_[jj], si, di) * wj_[jj];
  const double ds = dsfac(r, rcut_[jj], si, di) * wj_[jj];
  for (int j = 0; j <= t.tj; ++j) {
    int jju = t.idxu_block[j];
    for (int mb = 0; 2 * mb <= j; ++mb)
      for (int ma = 0; ma <= j; ++ma, ++jju)
        for (int k = 0; k < 3; ++k) {
          Complex& d = du[3 * jju + k];
          d = {ds * u[jju].re * uvec[k] + s * d.re, ds * u[jju].im * uvec[k] + s * d.im};
        }
  }
}

void SNA::compute_deidrj(int jj, double dedr[3]) {
  const SNATables& t = *t_;
  compute_duarray(jj);
  const int e = t.opt.chemflag ? elem_[jj] : 0;
  const Complex* y = &ylist_[size_t(e) * t.idxu_max];
  double acc[3] = {0.0, 0.0, 0.0};
  for (int j = 0; j <= t.tj; ++j) {
    const int base = t.idxu_block[j];
    for_half_layer(j, [&](int k, double w) {
      const Complex yk = y[base + k];
      const Complex* d = &dulist_[3 * (base + k)];
      for (int c = 0; c < 3; ++c) acc[c] += w * (d[c].re * yk.re + d[c].im * yk.im);
    });
  }
  for (int c = 0; c < 3; ++c) dedr[c] = 2.0 * acc[c];
}

void SNA::compute_dbidrj(int jj, double* dblist) {
  const SNATables& t = *t_;
  const int ne = t.ne, nb = t.idxb_max;
  compute_duarray(jj);
  const int e3 = t.opt.chemflag ? elem_[jj] : 0;
  std::fill(dblist, dblist + size_t(ncoeff()) * 3, 0.0);

  // 2 * sum over the unique half of layer j of Re(conj(dU^j) Z), into out[3]
  auto contract = [&](int j, const Complex* z, double scale, double* out) {
    const int base = t.idxu_block[j];
    double acc[3] = {0.0, 0.0, 0.0};
    for_half_layer(j, [&](int k, double w) {
      const Complex* d = &dulist_[3 * (base + k)];
      for (int c = 0; c < 3; ++c) acc[c] += w * (d[c].re * z[k].re + d[c].im * z[k].im);
    });
    for (int c = 0; c < 3; ++c) out[c] += 2.0 * scale * acc[c];
  };

  for (int jjb = 0; jjb < nb; ++jjb) {
    const int j1 = t.idxb_j1[jjb], j2 = t.idxb_j2[jjb], j = t.idxb_j[jjb];
    const double f1 = t.opt.bnormflag ? 1.0 : (j + 1) / (j1 + 1.0);
    const double f2 = t.opt.bnormflag ? 1.0 : (j + 1) / (j2 + 1.0);
    for (int e1 = 0; e1 < ne; ++e1)
      for (int e2 = 0; e2 < ne; ++e2) {
        // B(e1,e2,e3): the neighbour's element in the conj(u^j) slot
        const Complex* z12 = &zlist_[size_t(e1 * ne + e2) * t.idxz_max];
        contract(j, z12 + t.idxz_block[t.id3(j1, j2, j)], 1.0,
                 dblist + 3 * (size_t((e1 * ne + e2) * ne + e3) * nb + jjb));
        // B(e3,e2,e1): the neighbour in the u^j1 slot
        contract(j1, z12 + t.idxz_block[t.id3(j, j2, j1)], f1,
                 dblist + 3 * (size_t((e3 * ne + e2) * ne + e1) * nb + jjb));
        // B(e1,e3,e2): the neighbour in the u^j2 slot
        const Complex* z21 = &zlist_[size_t(e2 * ne + e1) * t.idxz_max];
        contract(j2, z21 + t.idxz_block[t.id3(j, j1, j2)], f2,
                 dblist + 3 * (size_t((e1 * ne + e3) * ne + e2) * nb + jjb));
      }
  }
}

}  // namespace snapqeq

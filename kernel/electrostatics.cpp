// snapqeq electrostatics kernel; see electrostatics.h for the conventions and SPEC
// section 5 for the formulas.
#include "electrostatics.h"

#include <climits>
#include <cmath>
#include <numeric>
#include <stdexcept>
#include <string>

namespace snapqeq {

namespace {

constexpr double kPi = 3.14159265358979323846;
constexpr double kTwoOverSqrtPi = 1.12837916709551257390;  // 2/sqrt(pi)
constexpr double kSqrt2 = 1.41421356237309504880;

// beta = kBetaScale (N/V^2)^(1/6) balances the real-space work (pairs within r_c ~ 1/beta,
// each a kernel evaluation, a force and one product per solver iteration) against the
// reciprocal work (k vectors within k_c ~ beta times the atoms, per iteration and for the
// forces); the classic Ewald optimum is (pi^3 c_pair/c_k)^(1/6) (N/V^2)^(1/6).  Measured in
// LAMMPS MD of 2048 rattled NaCl atoms at accuracy 1e-12 (steady state, ~9 solver
// iterations per step), step times for real-space cutoffs of 19, 21, 23, 26.4 and 30 A:
// 1.08, 1.03, 1.00, 1.03, 1.2; 23 A is this scale.  At accuracy 1e-6 (16.5 A) the `perf`
// shares of the real-space (~15 %) and reciprocal (~17 %) work of a step put the optimum
// within 3 % of this scale.
constexpr double kBetaScale = 2.3;
// Free boundaries keep the pair values and derivatives (16 bytes per pair) when this rank's
// share fits in this many bytes; otherwise they are recomputed where needed.
constexpr double kMaxStoredBytes = 1024.0 * 1024.0 * 1024.0;
// Widths taking at most this many different values get tabulated pair kernels (one table
// per pair of values); more (unusual: widths are per element) are evaluated directly.
constexpr int kMaxWidthClasses = 8;
// erf(x) = 1 to double precision beyond x = 6 (erfc(6) = 2e-17)
constexpr double kErfSaturation = 6.0;
// Ewald truncations aim at this fraction of the requested accuracy (see ewald_parameters)
constexpr double kTruncationSafety = 0.1;
// Preconditioner: reciprocal vectors whose long-wave stiffness, the eigenvalue
// 8 pi k_e coef_k / V * n / 2 of their cos/sin rank-2 term, is at least kLowThreshold times
// the mean diagonal, at most kMaxLow of them.  Measured on rattled NaCl (256 - 2k atoms):
// cold solves 30 -> 13 CG iterations; in MD (2k atoms, warm start) 7 iterations per step
// with the threshold 0.2, 5-6 with 0.05, no fewer below; the set-up costs O(n kMaxLow^2).
constexpr double kLowThreshold = 0.05;
constexpr int kMaxLow = 96;
// Free boundaries: a coarse space of spatial blocks of about kAtomsPerBlock atoms (at
// most kMaxBlocks), used from kMinCoarseAtoms atoms on.
constexpr int kAtomsPerBlock = 16;
constexpr int kMaxBlocks = 256;
constexpr int kMinCoarseAtoms = 64;

// g(r) = [erfc(beta r) - erfc(gamma r)]/r and its first two derivatives (beta = 0: free
// boundaries, erf(gamma r)/r).  Near r = 0 the difference cancels, so the even power series
// is used there; it converges fast for gamma r < 1 (beta <= gamma).
void exact_kernel(double beta, double gamma, double r, double out[3]) {
  if (gamma * r < 1.0) {
    const double r2 = r * r;
    double g = 0.0, g1 = 0.0, g2 = 0.0;
    double gp = gamma, bp = beta, fact = 1.0, sign = 1.0, pw = 1.0;  // pw = r^(2n-2)
    for (int k = 0; k < 40; ++k) {
      const double t = kTwoOverSqrtPi * sign * (gp - bp) / (fact * (2 * k + 1));
      if (k == 0) {
        g += t;
      } else {
        g += t * pw * r2;
        g1 += 2.0 * k * t * pw * r;
        g2 += 2.0 * k * (2.0 * k - 1.0) * t * pw;
        pw *= r2;
      }
      gp *= gamma * gamma;
      bp *= beta * beta;
      fact *= (k + 1);
      sign = -sign;
    }
    out[0] = g;
    out[1] = g1;
    out[2] = g2;
    return;
  }
  const double eb = beta > 0.0 ? std::erfc(beta * r) : 1.0;
  const double h = eb - std::erfc(gamma * r);
  const double xb = std::exp(-beta * beta * r * r), xg = std::exp(-gamma * gamma * r * r);
  const double h1 = kTwoOverSqrtPi * (gamma * xg - beta * xb);
  const double h2 = kTwoOverSqrtPi * 2.0 * r * (beta * beta * beta * xb - gamma * gamma * gamma * xg);
  const double g = h / r;
  const double g1 = (h1 - g) / r;  // from g r = h
  out[0] = g;
  out[1] = g1;
  out[2] = (h2 - 2.0 * g1) / r;
}

// in-place Cholesky factor (lower triangle) of the symmetric m x m matrix a; false if a
// is not numerically positive definite
bool cholesky(std::vector<double>& a, int m) {
  for (int j = 0; j < m; ++j) {
    double d = a[size_t(j) * m + j];
    for (int k = 0; k < j; ++k) d -= a[size_t(j) * m + k] * a[size_t(j) * m + k];
    if (!(d > 0.0)) return false;
    d = std::sqrt(d);
    a[size_t(j) * m + j] = d;
    for (int i = j + 1; i < m; ++i) {
      double s = a[size_t(i) * m + j];
      for (int k = 0; k < j; ++k) s -= a[size_t(i) * m + k] * a[size_t(j) * m + k];
      a[size_t(i) * m + j] = s / d;
    }
  }
  return true;
}

// solve L L^T u = t in place (L from cholesky())
void cholesky_solve(const std::vector<double>& l, int m, double* t) {
  for (int i = 0; i < m; ++i) {
    double s = t[i];
    for (int k = 0; k < i; ++k) s -= l[size_t(i) * m + k] * t[k];
    t[i] = s / l[size_t(i) * m + i];
  }
  for (int i = m - 1; i >= 0; --i) {
    double s = t[i];
    for (int k = i + 1; k < m; ++k) s -= l[size_t(k) * m + i] * t[k];
    t[i] = s / l[size_t(i) * m + i];
  }
}

// The hot loops over atoms are compiled twice, for AVX2 + FMA and for the baseline ISA,
// and the loader picks one per machine: the extension and the plugin stay portable (a
// build on a login node runs on older compute nodes) and still get 4-wide FMA.
#if defined(__x86_64__) && defined(__GNUC__) && defined(__has_attribute)
#if __has_attribute(target_clones)
#define SNAPQEQ_SIMD __attribute__((target_clones("arch=x86-64-v3", "default")))
#endif
#endif
#ifndef SNAPQEQ_SIMD
#define SNAPQEQ_SIMD
#endif

// w = v e12 with e12 = a b (complex, per atom)
SNAPQEQ_SIMD void weighted_phase(int c, const double* v, const double* ar, const double* ai,
                                 const double* br, const double* bi, double* wr, double* wi) {
#pragma omp simd
  for (int i = 0; i < c; ++i) {
    wr[i] = v[i] * (ar[i] * br[i] - ai[i] * bi[i]);
    wi[i] = v[i] * (ar[i] * bi[i] + ai[i] * br[i]);
  }
}

// Within a run of a group the inner phase is p_i(t) = p_i(0) u_i^t (u: the unit phase of
// the innermost axis, t = 0 .. nrun-1).  Sums of the form sum_t c_t p_i(t) are
// polynomials in u_i, evaluated below by Horner's rule on registers instead of reading a
// phase table row per t (the rounding error grows like nrun eps).

// s[2t], s[2t+1] = sum_i w_i p_i(t) for the nrun phase rows p(t) = (pr, pi) + t c of a
// run, read from the tables (a recurrence would add a store per term here); two rows per
// pass over the atoms, which halves the loads of w
SNAPQEQ_SIMD void structure_run(int c, int nrun, const double* wr, const double* wi,
                                const double* pr, const double* pim, double* s) {
  int t = 0;
  for (; t + 1 < nrun; t += 2) {
    const double* c0r = pr + size_t(t) * c;
    const double* c0i = pim + size_t(t) * c;
    const double* c1r = c0r + c;
    const double* c1i = c0i + c;
    double s0r = 0.0, s0i = 0.0, s1r = 0.0, s1i = 0.0;
#pragma omp simd reduction(+ : s0r, s0i, s1r, s1i)
    for (int i = 0; i < c; ++i) {
      s0r += wr[i] * c0r[i] - wi[i] * c0i[i];
      s0i += wr[i] * c0i[i] + wi[i] * c0r[i];
      s1r += wr[i] * c1r[i] - wi[i] * c1i[i];
      s1i += wr[i] * c1i[i] + wi[i] * c1r[i];
    }
    s[2 * t] = s0r;
    s[2 * t + 1] = s0i;
    s[2 * t + 2] = s1r;
    s[2 * t + 3] = s1i;
  }
  if (t < nrun) {
    const double* c0r = pr + size_t(t) * c;
    const double* c0i = pim + size_t(t) * c;
    double s0r = 0.0, s0i = 0.0;
#pragma omp simd reduction(+ : s0r, s0i)
    for (int i = 0; i < c; ++i) {
      s0r += wr[i] * c0r[i] - wi[i] * c0i[i];
      s0i += wr[i] * c0i[i] + wi[i] * c0r[i];
    }
    s[2 * t] = s0r;
    s[2 * t + 1] = s0i;
  }
}

// y_i += sum_t Re[conj(e12_i p_i(t)) S'(t)] = Re[conj(e12_i p_i(0)) sum_t conj(u_i)^t S'(t)],
// the polynomial in conj(u_i) by Horner's rule; ss: S' (2 per row).  Horner is a chain
// of dependent multiply-adds per atom: kLanes atoms advance together, so that the
// vector units have independent chains to interleave.
constexpr int kLanes = 16;
SNAPQEQ_SIMD void project_run(int c, int nrun, const double* ss, const double* p0r,
                              const double* p0i, const double* ur, const double* ui,
                              const double* ar, const double* ai, const double* br,
                              const double* bi, double* y) {
  const double hr = ss[2 * (nrun - 1)], hi = ss[2 * (nrun - 1) + 1];
  for (int i0 = 0; i0 < c; i0 += kLanes) {
    const int nb = std::min(kLanes, c - i0);
    double zr[kLanes], zi[kLanes], accr[kLanes], acci[kLanes];
    for (int b = 0; b < kLanes; ++b) {
      zr[b] = b < nb ? ur[i0 + b] : 0.0;
      zi[b] = b < nb ? -ui[i0 + b] : 0.0;
      accr[b] = hr;
      acci[b] = hi;
    }
    for (int t = nrun - 2; t >= 0; --t) {
      const double sr = ss[2 * t], si = ss[2 * t + 1];
#pragma omp simd
      for (int b = 0; b < kLanes; ++b) {
        const double nr = accr[b] * zr[b] - acci[b] * zi[b] + sr;
        acci[b] = accr[b] * zi[b] + acci[b] * zr[b] + si;
        accr[b] = nr;
      }
    }
    for (int b = 0; b < nb; ++b) {
      const int i = i0 + b;
      const double e12r = ar[i] * br[i] - ai[i] * bi[i];
      const double e12i = ar[i] * bi[i] + ai[i] * br[i];
      const double er = e12r * p0r[i] - e12i * p0i[i];
      const double ei = e12r * p0i[i] + e12i * p0r[i];
      y[i] += er * accr[b] + ei * acci[b];
    }
  }
}

// Reciprocal forces of a run, added to fo (3 per atom).  With c_t = fc_t conj(S_b(t)):
// U_i = p_i(0) P(u_i), P(z) = sum_t c_t z^t, and UM_i = sum_t (m0 + t) p_i(t) c_t
// = p_i(0) (m0 P + u P'(u)) (Horner with derivative); then, with e12 = a b,
// sum_t fc_t k_t a_i Im[e_i(t) conj S_b(t)] = a_i (Im[e12 U] k12 + Im[e12 UM] b3), and the
// same with S_a and b_i (ca = nullptr when a = b: factor 2).
constexpr int kForceLanes = 8;
SNAPQEQ_SIMD void force_run(int c, int nrun, int m0, const double* cb, const double* ca,
                            const double* p0r, const double* p0i, const double* ur,
                            const double* ui, const double* ar, const double* ai,
                            const double* br, const double* bi, const double* ao,
                            const double* bo, const double* k12, const double* b3,
                            double* fo) {
  constexpr int L = kForceLanes;
  const int last = nrun - 1;
  for (int i0 = 0; i0 < c; i0 += L) {
    const int nb = std::min(L, c - i0);
    double zr[L], zi[L], pr[L], pi[L], qr[L], qi[L], sr[L], si[L], tr[L], ti[L];
    for (int b = 0; b < L; ++b) {
      zr[b] = b < nb ? ur[i0 + b] : 0.0;
      zi[b] = b < nb ? ui[i0 + b] : 0.0;
      pr[b] = cb[2 * last];
      pi[b] = cb[2 * last + 1];
      sr[b] = ca ? ca[2 * last] : 0.0;
      si[b] = ca ? ca[2 * last + 1] : 0.0;
      qr[b] = qi[b] = tr[b] = ti[b] = 0.0;
    }
    for (int t = last - 1; t >= 0; --t) {
      const double cr = cb[2 * t], ci = cb[2 * t + 1];
#pragma omp simd
      for (int b = 0; b < L; ++b) {
        const double nq = qr[b] * zr[b] - qi[b] * zi[b] + pr[b];
        qi[b] = qr[b] * zi[b] + qi[b] * zr[b] + pi[b];
        qr[b] = nq;
        const double np = pr[b] * zr[b] - pi[b] * zi[b] + cr;
        pi[b] = pr[b] * zi[b] + pi[b] * zr[b] + ci;
        pr[b] = np;
      }
      if (ca) {
        const double dr = ca[2 * t], di = ca[2 * t + 1];
#pragma omp simd
        for (int b = 0; b < L; ++b) {
          const double nt = tr[b] * zr[b] - ti[b] * zi[b] + sr[b];
          ti[b] = tr[b] * zi[b] + ti[b] * zr[b] + si[b];
          tr[b] = nt;
          const double ns = sr[b] * zr[b] - si[b] * zi[b] + dr;
          si[b] = sr[b] * zi[b] + si[b] * zr[b] + di;
          sr[b] = ns;
        }
      }
    }
    for (int b = 0; b < nb; ++b) {
      const int i = i0 + b;
      const double e12r = ar[i] * br[i] - ai[i] * bi[i];
      const double e12i = ar[i] * bi[i] + ai[i] * br[i];
      const double er = e12r * p0r[i] - e12i * p0i[i];  // e(0) = e12 p(0)
      const double ei = e12r * p0i[i] + e12i * p0r[i];
      // Im[e P] and Im[e (m0 P + z P')]
      const double zqr = zr[b] * qr[b] - zi[b] * qi[b], zqi = zr[b] * qi[b] + zi[b] * qr[b];
      double x = er * pi[b] + ei * pr[b];
      double xm = er * (m0 * pi[b] + zqi) + ei * (m0 * pr[b] + zqr);
      if (ca) {
        const double zsr = zr[b] * tr[b] - zi[b] * ti[b], zsi = zr[b] * ti[b] + zi[b] * tr[b];
        x = ao[i] * x + bo[i] * (er * si[b] + ei * sr[b]);
        xm = ao[i] * xm + bo[i] * (er * (m0 * si[b] + zsi) + ei * (m0 * sr[b] + zsr));
      } else {
        x *= 2.0 * ao[i];
        xm *= 2.0 * ao[i];
      }
      fo[3 * i] += x * k12[0] + xm * b3[0];
      fo[3 * i + 1] += x * k12[1] + xm * b3[1];
      fo[3 * i + 2] += x * k12[2] + xm * b3[2];
    }
  }
}

// Kernel values of all pairs from the tabulated quintics (all tables share the grid
// spacing 1/hinv and the last interval kmax): val = k_e g(r), dval = k_e g'(r)/r inside the
// cutoff (and not the atom itself), zero elsewhere; returns the pairs inside.  The
// displacement is d, or r_j - r_i plus the image offsets off (see shift_table()).  One
// branch-free loop, so that sqrt, division and the table reads vectorize (gathers).
SNAPQEQ_SIMD long tabulated_pairs(long np, const int* pi, const int* pj, const double* d,
                                  const signed char* sh, const double* x, const double* off,
                                  const int* wcl, const int* toff, int nc, const double* coef,
                                  double hinv, int kmax, double rc2, double* val,
                                  double* dval) {
  long inside = 0;
#pragma omp simd reduction(+ : inside)
  for (long p = 0; p < np; ++p) {
    const int i = pi[p], j = pj[p];
    double dx, dy, dz;
    if (d) {
      dx = d[3 * p];
      dy = d[3 * p + 1];
      dz = d[3 * p + 2];
    } else {
      const double* o0 = off + 3 * (128 + sh[3 * p]);
      const double* o1 = off + 3 * (384 + sh[3 * p + 1]);
      const double* o2 = off + 3 * (640 + sh[3 * p + 2]);
      dx = x[3 * size_t(j)] - x[3 * size_t(i)] + (o0[0] + o1[0] + o2[0]);
      dy = x[3 * size_t(j) + 1] - x[3 * size_t(i) + 1] + (o0[1] + o1[1] + o2[1]);
      dz = x[3 * size_t(j) + 2] - x[3 * size_t(i) + 2] + (o0[2] + o1[2] + o2[2]);
    }
    const double r2 = dx * dx + dy * dy + dz * dz;
    const double r = std::sqrt(r2);
    const double xs = r * hinv;
    const int k = std::min(int(xs), kmax);
    const double t = xs - k;
    const double* c = coef + toff[wcl[i] * nc + wcl[j]] + 6 * k;
    const double g = c[0] + t * (c[1] + t * (c[2] + t * (c[3] + t * (c[4] + t * c[5]))));
    const double dg = c[1] + t * (2.0 * c[2] + t * (3.0 * c[3] + t * (4.0 * c[4] + t * 5.0 * c[5])));
    const bool in = r2 <= rc2 && (r2 > 0.0 || i != j);
    val[p] = in ? kCoulomb * g : 0.0;
    dval[p] = (in && r2 > 0.0) ? kCoulomb * dg * hinv / r : 0.0;
    inside += in ? 1 : 0;
  }
  return inside;
}

// Free-boundary kernel values of atom i (position xi) with the m atoms at x (3 per atom,
// width classes wc): k_e g(r) and k_e g'(r)/r, from the tables below r_sat and exactly
// 1/r beyond (erf saturated); coincident atoms get the finite Gaussian value and no
// derivative.  tab: table offsets of the row of i's class.  Branch-free, so it vectorizes.
SNAPQEQ_SIMD void free_pairs(int m, const double* xi, const double* x, const int* wc,
                             const int* tab, const double* coef, double hinv, int kmax,
                             double rsat, double* val, double* dval) {
#pragma omp simd
  for (int p = 0; p < m; ++p) {
    const double dx = x[3 * p] - xi[0], dy = x[3 * p + 1] - xi[1], dz = x[3 * p + 2] - xi[2];
    const double r2 = dx * dx + dy * dy + dz * dz;
    const double r = std::sqrt(r2);
    const double xs = r * hinv;
    const int k = std::min(int(xs), kmax);
    const double t = xs - k;
    const double* c = coef + tab[wc[p]] + 6 * k;
    const double gt = c[0] + t * (c[1] + t * (c[2] + t * (c[3] + t * (c[4] + t * c[5]))));
    const double dgt =
        (c[1] + t * (2.0 * c[2] + t * (3.0 * c[3] + t * (4.0 * c[4] + t * 5.0 * c[5])))) * hinv;
    const bool near = r < rsat;
    const double inv = 1.0 / r;  // inf for coincident atoms, which take the table
    val[p] = kCoulomb * (near ? gt : inv);
    dval[p] = r2 > 0.0 ? kCoulomb * (near ? dgt : -inv * inv) * inv : 0.0;
  }
}

// y[p] += a[p] vi for p < m; returns sum_p a[p] v[p] (one row segment of a symmetric
// product)
SNAPQEQ_SIMD double row_product(int m, const double* a, const double* __restrict v,
                                double* __restrict y, double vi) {
  double acc = 0.0;
#pragma omp simd reduction(+ : acc)
  for (int p = 0; p < m; ++p) {
    acc += a[p] * v[p];
    y[p] += a[p] * vi;
  }
  return acc;
}

// Forces of a free-boundary row segment: atom i (xi, ai, bi) with the m atoms at x
// (a, b, dval per atom): fac = (ai b_j + a_j bi)/2 dval; fi += fac d, fg_j -= fac d,
// w -= fac d (x) d (xx yy zz xy xz yz), d = x_j - x_i
SNAPQEQ_SIMD void row_forces(int m, const double* xi, double ai, double bi, const double* x,
                             const double* a, const double* b, const double* dval,
                             double* __restrict fg, double* fi, double* w) {
  double fx = 0.0, fy = 0.0, fz = 0.0, w0 = 0.0, w1 = 0.0, w2 = 0.0, w3 = 0.0, w4 = 0.0,
         w5 = 0.0;
#pragma omp simd reduction(+ : fx, fy, fz, w0, w1, w2, w3, w4, w5)
  for (int p = 0; p < m; ++p) {
    const double dx = x[3 * p] - xi[0], dy = x[3 * p + 1] - xi[1], dz = x[3 * p + 2] - xi[2];
    const double fac = 0.5 * (ai * b[p] + a[p] * bi) * dval[p];
    fx += fac * dx;
    fy += fac * dy;
    fz += fac * dz;
    fg[3 * p] -= fac * dx;
    fg[3 * p + 1] -= fac * dy;
    fg[3 * p + 2] -= fac * dz;
    w0 -= fac * dx * dx;
    w1 -= fac * dy * dy;
    w2 -= fac * dz * dz;
    w3 -= fac * dx * dy;
    w4 -= fac * dx * dz;
    w5 -= fac * dy * dz;
  }
  fi[0] += fx;
  fi[1] += fy;
  fi[2] += fz;
  w[0] += w0;
  w[1] += w1;
  w[2] += w2;
  w[3] += w3;
  w[4] += w4;
  w[5] += w5;
}

// g (lower triangle of m x m) += sum_i w_i e_i e_i^T, rows e_i of length m
SNAPQEQ_SIMD void weighted_gram(int c, int m, const double* e, const double* w, double* g) {
  for (int i = 0; i < c; ++i) {
    const double* ei = e + size_t(i) * m;
    for (int p = 0; p < m; ++p) {
      const double we = w[i] * ei[p];
      double* row = g + size_t(p) * m;
#pragma omp simd
      for (int q = 0; q <= p; ++q) row[q] += we * ei[q];
    }
  }
}

}  // namespace

// Quintic Hermite interpolation of g on a uniform grid (value, first and second derivative
// at the nodes): error ~ h^6 g^(6)/46080, far below 1e-13 relative for the grid spacing
// used, at the cost of a few multiply-adds instead of erfc and exp per pair.  Beyond rmax
// (free boundaries only) erf(gamma r) = 1 and g = 1/r.
struct Electrostatics::Table {
  double h = 0.0, hinv = 0.0, rmax = 0.0;
  std::vector<double> c;  // 6 polynomial coefficients in t = (r - r_k)/h per interval

  void build(double beta, double gamma, double range, double spacing) {
    const int nint = int(std::ceil(range / spacing)) + 1;
    h = spacing;
    hinv = 1.0 / spacing;
    rmax = nint * spacing;
    c.assign(size_t(6) * nint, 0.0);
    double lo[3], hi[3];
    exact_kernel(beta, gamma, 0.0, lo);
    for (int k = 0; k < nint; ++k) {
      exact_kernel(beta, gamma, (k + 1) * h, hi);
      // p(t) with p, p', p'' matching (g, h g', h^2 g'') at t = 0 and t = 1
      const double f0 = lo[0], d0 = h * lo[1], s0 = h * h * lo[2];
      const double f1 = hi[0], d1 = h * hi[1], s1 = h * h * hi[2];
      const double a = f1 - f0 - d0 - 0.5 * s0, b = d1 - d0 - s0, q = s1 - s0;
      double* p = &c[size_t(6) * k];
      p[0] = f0;
      p[1] = d0;
      p[2] = 0.5 * s0;
      p[3] = 10.0 * a - 4.0 * b + 0.5 * q;
      p[4] = -15.0 * a + 7.0 * b - q;
      p[5] = 6.0 * a - 3.0 * b + 0.5 * q;
      std::copy(hi, hi + 3, lo);
    }
  }

  void eval(double r, double& g, double& dg) const {
    if (r >= rmax) {
      g = 1.0 / r;
      dg = -g / r;
      return;
    }
    const double x = r * hinv;
    const int k = int(x);
    const double t = x - k;
    const double* p = &c[size_t(6) * k];
    g = p[0] + t * (p[1] + t * (p[2] + t * (p[3] + t * (p[4] + t * p[5]))));
    dg = (p[1] + t * (2.0 * p[2] + t * (3.0 * p[3] + t * (4.0 * p[4] + t * 5.0 * p[5])))) * hinv;
  }
};

// x with erfc(x) = y, 0 < y < 1, by Newton's method on ln erfc (quadratic convergence
// from the asymptote x ~ sqrt(-ln y); a few steps reach double precision)
static double erfc_inverse(double y) {
  double x = std::sqrt(std::max(-std::log(y), 0.0));
  for (int it = 0; it < 50; ++it) {
    const double e = std::erfc(x);
    const double step = (std::log(e) - std::log(y)) / (-kTwoOverSqrtPi * std::exp(-x * x) / e);
    x -= step;
    if (std::fabs(step) <= 1e-15 * std::max(1.0, std::fabs(x))) break;
  }
  return x;
}

EwaldParameters ewald_truncation(double beta, double accuracy) {
  if (!(accuracy > 0.0 && accuracy < 1.0))
    throw std::invalid_argument("Ewald accuracy must lie in (0, 1)");
  if (!(beta > 0.0 && std::isfinite(beta)))
    throw std::invalid_argument("Ewald beta must be positive and finite");
  // each truncation aims at accuracy/10 because the errors of the many terms near a
  // cutoff add up
  const double target = kTruncationSafety * accuracy;
  EwaldParameters p;
  p.accuracy = accuracy;
  p.beta = beta;
  p.real_cutoff = erfc_inverse(target) / beta;          // erfc(beta r_c) = target
  p.kcut = 2.0 * std::sqrt(-std::log(target)) * beta;  // exp(-k_c^2 / 4 beta^2) = target
  return p;
}

EwaldParameters ewald_parameters(double natoms, double volume, double max_width,
                                 double accuracy, double cutoff) {
  if (!(accuracy > 0.0 && accuracy < 1.0))
    throw std::invalid_argument("Ewald accuracy must lie in (0, 1)");
  if (!(volume > 0.0)) throw std::invalid_argument("Ewald sums need a cell of positive volume");
  if (!(max_width > 0.0)) throw std::invalid_argument("Gaussian widths must be positive");
  const double gamma_min = 1.0 / (kSqrt2 * max_width);
  if (cutoff > 0.0) {
    const double s = ewald_truncation(1.0, accuracy).real_cutoff;  // beta r_c
    if (s / cutoff > gamma_min * (1.0 + 1e-12))
      throw std::invalid_argument(
          "real-space cutoff " + std::to_string(cutoff) + " A is too short for widths up to " +
          std::to_string(max_width) + " A: it needs at least " +
          std::to_string(s / gamma_min) + " A");
    return ewald_truncation(s / cutoff, accuracy);
  }
  return ewald_truncation(
      std::min(gamma_min,
               kBetaScale * std::pow(std::max(natoms, 1.0) / (volume * volume), 1.0 / 6.0)),
      accuracy);
}

Electrostatics::Electrostatics(Communicator* comm) : comm_(comm ? comm : &serial_) {}

Electrostatics::~Electrostatics() = default;

double Electrostatics::memory_bytes() const {
  double b = 0.0;
  b += 8.0 * (fval_.capacity() + fdval_.capacity() + pval_.capacity() + pdval_.capacity());
  b += 4.0 * (row_i_.capacity() + row_start_.capacity());
  for (int d = 0; d < 3; ++d) b += 8.0 * (ph_re_[d].capacity() + ph_im_[d].capacity());
  b += 8.0 * (kvec_.capacity() + kcoef_.capacity() + lowchol_.capacity()) + 4.0 * lowe_.capacity();
  for (const Table& t : tables_) b += 8.0 * t.c.capacity();
  b += 8.0 * (diag_.capacity() + dinv_.capacity() + work_.capacity() + hp_.capacity());
  return b;
}

void Electrostatics::reset(int n, int first, int count, const double* alpha,
                           const int* owned_slot) {
  if (n < 0 || first < 0 || count < 0 || first + count > n)
    throw std::invalid_argument("Electrostatics: owned block outside 0..n-1");
  const int nprocs = comm_->size();
  std::vector<double> c(nprocs, 0.0);
  c[comm_->rank()] = count;
  comm_->allreduce_sum(c.data(), nprocs);
  counts_.assign(nprocs, 0);
  displs_.assign(nprocs, 0);
  for (int r = 0; r < nprocs; ++r) {
    counts_[r] = int(c[r]);
    if (r > 0) displs_[r] = displs_[r - 1] + counts_[r - 1];
  }
  if (displs_[nprocs - 1] + counts_[nprocs - 1] != n || displs_[comm_->rank()] != first)
    throw std::invalid_argument("Electrostatics: the owned blocks of the ranks must tile 0..n-1 "
                                "in rank order");
  n_ = n;
  first_ = first;
  count_ = count;
  alpha_ = alpha;
  owned_slot_ = owned_slot;
  for (int i = 0; i < n; ++i)
    if (!(alpha[i] > 0.0)) throw std::invalid_argument("Gaussian widths must be positive");
  ++setup_id_;

  // width classes: the widths are per element, so a handful of values
  wclass_.assign(n, 0);
  cwidth_.clear();
  bool classes = true;
  for (int i = 0; i < n && classes; ++i) {
    auto it = std::find(cwidth_.begin(), cwidth_.end(), alpha[i]);
    if (it == cwidth_.end()) {
      if (int(cwidth_.size()) == kMaxWidthClasses) {
        classes = false;
        break;
      }
      cwidth_.push_back(alpha[i]);
      it = cwidth_.end() - 1;
    }
    wclass_[i] = int(it - cwidth_.begin());
  }
  if (!classes) {
    cwidth_.clear();
    wclass_.clear();
  }
  work_.assign(size_t(2) * std::max(count, 1), 0.0);
}

void Electrostatics::reduce_replicated(double* v) { comm_->allreduce_sum(v, n_); }

void Electrostatics::build_tables(double beta, double rmax, bool free) {
  if (cwidth_.empty()) {
    tables_.clear();
    return;
  }
  const int nc = int(cwidth_.size());
  if (int(tables_.size()) == nc * nc && table_beta_ == beta && table_rmax_ == rmax &&
      table_free_ == free && table_widths_ == cwidth_)
    return;  // same kernels as last time (fixed cutoff: beta is constant during a run)
  double gamma_max = 0.0;
  for (double a : cwidth_) gamma_max = std::max(gamma_max, 1.0 / (kSqrt2 * a));
  const double spacing = 0.02 / std::max(1.0, gamma_max);
  // free boundaries: all tables reach the saturation of the widest pair (beyond its own
  // saturation a table holds 1/r), so that one range test serves every pair
  double gamma_min = gamma_max;
  for (double a : cwidth_) gamma_min = std::min(gamma_min, 1.0 / (kSqrt2 * a));
  table_rsat_scale_ = 1.0 / gamma_min;
  tables_.assign(size_t(nc) * nc, Table());
  for (int a = 0; a < nc; ++a)
    for (int b = a; b < nc; ++b) {
      const double gamma = 1.0 / std::sqrt(cwidth_[a] * cwidth_[a] + cwidth_[b] * cwidth_[b]);
      Table& t = tables_[size_t(a) * nc + b];
      t.build(beta, gamma, free ? kErfSaturation / gamma_min : rmax, spacing);
      if (b != a) tables_[size_t(b) * nc + a] = t;
    }
  // all coefficients in one array for the vectorized evaluation (tabulated_pairs)
  table_coef_.clear();
  table_offset_.assign(size_t(nc) * nc, 0);
  for (size_t t = 0; t < tables_.size(); ++t) {
    table_offset_[t] = int(table_coef_.size());
    table_coef_.insert(table_coef_.end(), tables_[t].c.begin(), tables_[t].c.end());
  }
  table_hinv_ = tables_[0].hinv;
  table_kmax_ = int(tables_[0].c.size() / 6) - 1;
  for (const Table& t : tables_) table_kmax_ = std::min(table_kmax_, int(t.c.size() / 6) - 1);
  table_widths_ = cwidth_;
  table_beta_ = beta;
  table_rmax_ = rmax;
  table_free_ = free;
}

void Electrostatics::kernel(int i, int j, double r, double& g, double& dg) const {
  if (!tables_.empty()) {
    tables_[size_t(wclass_[i]) * cwidth_.size() + wclass_[j]].eval(r, g, dg);
  } else {
    const double gamma = 1.0 / std::sqrt(alpha_[i] * alpha_[i] + alpha_[j] * alpha_[j]);
    const double beta = periodic_ ? params_.beta : 0.0;
    if (!periodic_ && gamma * r >= kErfSaturation) {
      g = 1.0 / r;
      dg = -g / r;
    } else {
      double out[3];
      exact_kernel(beta, gamma, r, out);
      g = out[0];
      dg = out[1];
    }
  }
  g *= kCoulomb;
  dg *= kCoulomb;
}

/* ------------------------------------------------------------------ free boundaries */

// Pairs of the free-boundary sum: owned atom i with j = (i + t) % n, t = 1 .. n/2, except
// t = n/2 for i >= n/2 when n is even (its value is stored as zero); this visits every
// pair once and gives every row the same work, so the ranks are balanced.  In memory a
// row is two runs of consecutive j: i+1 .. and, past n-1, 0 .. (see free_segments()).
void Electrostatics::setup_free(int n, int first, int count, const double* x,
                                const double* alpha, const int* owned_slot) {
  reset(n, first, count, alpha, owned_slot);
  periodic_ = false;
  params_ = EwaldParameters();
  x_ = x;
  x_owned_ = nullptr;
  pairs_ = PairList();
  row_i_.clear();
  row_start_.assign(1, 0);
  nkept_ = 0;
  pval_.clear();
  pdval_.clear();
  kgroups_.clear();
  kvec_.clear();
  kcoef_.clear();
  km_.clear();
  build_tables(0.0, 0.0, true);

  half_ = n / 2;
  stored_free_ = double(count) * half_ * 2.0 * sizeof(double) <= kMaxStoredBytes;
  fval_.assign(stored_free_ ? size_t(count) * half_ : 0, 0.0);
  fdval_.assign(stored_free_ ? size_t(count) * half_ : 0, 0.0);
  if (stored_free_)
    for (int li = 0; li < count; ++li)
      free_row(li, &fval_[size_t(li) * half_], &fdval_[size_t(li) * half_]);

  self_.assign(count, 0.0);
  std::vector<double> d(n, 0.0);
  for (int li = 0; li < count; ++li) {
    const double a = alpha[first + li];
    self_[li] = kCoulomb * kTwoOverSqrtPi / (kSqrt2 * a);  // 2 k_e g_ii / sqrt(pi)
    d[first + li] = self_[li];
  }
  reduce_replicated(d.data());
  diag_ = std::move(d);
}

int Electrostatics::free_segments(int i, int start[2], int len[2]) const {
  start[0] = i + 1;
  len[0] = std::min(half_, n_ - 1 - i);
  start[1] = 0;
  len[1] = half_ - len[0];
  return len[1] > 0 ? 2 : 1;
}

void Electrostatics::free_row(int li, double* val, double* dval) const {
  const int i = first_ + li;
  int start[2], len[2];
  const int nseg = free_segments(i, start, len);
  for (int s = 0, at = 0; s < nseg; at += len[s], ++s) {
    if (!tables_.empty()) {
      const int nc = int(cwidth_.size());
      free_pairs(len[s], x_ + 3 * size_t(i), x_ + 3 * size_t(start[s]), &wclass_[start[s]],
                 &table_offset_[size_t(wclass_[i]) * nc], table_coef_.data(), table_hinv_,
                 table_kmax_, kErfSaturation * table_rsat_scale_, val + at, dval + at);
    } else {
      for (int p = 0; p < len[s]; ++p) free_pair(i, start[s] + p, val[at + p], dval[at + p]);
    }
  }
  if (2 * half_ == n_ && i >= half_) val[half_ - 1] = dval[half_ - 1] = 0.0;  // counted by i - n/2
}

template <class Body>
void Electrostatics::for_free_rows(Body&& body) const {
  std::vector<double> rv, rd;  // a row's values when they are not stored
  if (!stored_free_) rv.resize(half_), rd.resize(half_);
  for (int li = 0; li < count_; ++li) {
    const double *val = rv.data(), *dval = rd.data();
    if (stored_free_) {
      val = &fval_[size_t(li) * half_];
      dval = &fdval_[size_t(li) * half_];
    } else {
      free_row(li, rv.data(), rd.data());
    }
    body(first_ + li, val, dval);
  }
}

void Electrostatics::free_pair(int i, int j, double& v, double& dv) const {
  const double d[3] = {x_[3 * j] - x_[3 * i], x_[3 * j + 1] - x_[3 * i + 1],
                       x_[3 * j + 2] - x_[3 * i + 2]};
  const double r = std::sqrt(d[0] * d[0] + d[1] * d[1] + d[2] * d[2]);
  if (r == 0.0) {  // coincident atoms: finite Gaussian interaction, no direction
    double out[3];
    exact_kernel(0.0, 1.0 / std::sqrt(alpha_[i] * alpha_[i] + alpha_[j] * alpha_[j]), 0.0, out);
    v = kCoulomb * out[0];
    dv = 0.0;
    return;
  }
  double g, dg;
  kernel(i, j, r, g, dg);
  v = g;
  dv = dg / r;
}

/* ----------------------------------------------------------------------- periodic */

void Electrostatics::setup_periodic(int n, int first, int count, const double* x,
                                    const double* alpha, const double* cell,
                                    const EwaldParameters& params, const PairList& pairs,
                                    const int* owned_slot) {
  reset(n, first, count, alpha, owned_slot);
  periodic_ = true;
  params_ = params;
  x_ = x;
  x_owned_ = x + 3 * size_t(first);
  fval_.clear();
  fdval_.clear();
  double amax = 0.0;
  for (int i = 0; i < n; ++i) amax = std::max(amax, alpha[i]);
  if (!(params.beta > 0.0 && params.real_cutoff > 0.0 && params.kcut > 0.0))
    throw std::invalid_argument("Electrostatics: Ewald parameters not set");
  if (n > 0 && params.beta > (1.0 + 1e-12) / (kSqrt2 * amax))
    throw std::invalid_argument("Electrostatics: Ewald beta exceeds min gamma of the widths; "
                                "derive the parameters from the largest width");
  if (pairs.size > INT_MAX) throw std::invalid_argument("Electrostatics: too many pairs");

  setup_reciprocal(cell);
  const double rc = params.real_cutoff;
  build_tables(params.beta, rc * (1.0 + 1e-9) + 0.1, false);

  // real space: the kernel values of every pair of the list, zero beyond the cutoff (a
  // neighbour list with a skin has ~25% such pairs; carrying them is cheaper than
  // compacting the list with unpredictable branches every step)
  pairs_ = pairs;
  if (pairs.size > 0 && !pairs.d && !pairs.shift)
    throw std::invalid_argument("Electrostatics: pairs need displacements or cell shifts");
  if (long(pval_.size()) < pairs.size) {  // grow only: rewritten every step
    pval_.resize(pairs.size);
    pdval_.resize(pairs.size);
  }
  // rows (runs of one atom i), index checks, pairs of an atom with its own image
  row_i_.clear();
  row_start_.assign(1, 0);
  std::vector<long> images;
  {
    const int* pis = pairs.i;
    const int* pjs = pairs.j;
    int last_row = -1;
    for (long p = 0; p < pairs.size; ++p) {
      const int i = pis[p], j = pjs[p];
      if (i >= n || j >= n || i < 0 || j < 0)
        throw std::invalid_argument("Electrostatics: pair index outside 0..n-1");
      if (i != last_row) {
        if (last_row >= 0) row_start_.push_back(int(p));
        row_i_.push_back(i);
        last_row = i;
      }
      if (i == j) images.push_back(p);
    }
    if (!row_i_.empty()) row_start_.push_back(int(pairs.size));
  }
  const double rc2 = rc * rc;
  const int nc = int(cwidth_.size());
  if (nc > 0) {
    nkept_ = tabulated_pairs(pairs.size, pairs.i, pairs.j, pairs.d, pairs.shift, x,
                             shift_table(), wclass_.data(), table_offset_.data(), nc,
                             table_coef_.data(), table_hinv_, table_kmax_, rc2, pval_.data(),
                             pdval_.data());
  } else {  // many different widths: direct evaluation
    nkept_ = 0;
    for (long p = 0; p < pairs.size; ++p) {
      double dv[3];
      pair_d(int(p), dv);
      const int i = pairs.i[p], j = pairs.j[p];
      const double r2 = dv[0] * dv[0] + dv[1] * dv[1] + dv[2] * dv[2];
      pval_[p] = pdval_[p] = 0.0;
      if (r2 > rc2 || (r2 == 0.0 && i == j)) continue;
      const double r = std::sqrt(r2);
      double g, dg;
      kernel(i, j, r, g, dg);
      pval_[p] = g;
      pdval_[p] = r > 0.0 ? dg / r : 0.0;
      ++nkept_;
    }
  }
  std::vector<double> d(n, 0.0);  // this rank's share of the diagonal
  for (long p : images) d[pairs.i[p]] += pairs.half ? 2.0 * pval_[p] : pval_[p];

  // diagonal terms of the owned atoms: Gaussian self energy minus the beta part, the
  // reciprocal sum of the atom with itself (position independent), the background
  double csum = 0.0;
  for (double c : kcoef_) csum += c;
  const double rec_diag = 8.0 * kPi * kCoulomb / volume_ * csum;
  const double bg = -kPi * kCoulomb / volume_;
  const double beta = params.beta;
  self_.assign(count, 0.0);
  for (int li = 0; li < count; ++li) {
    const double a = alpha[first + li];
    self_[li] = kCoulomb * kTwoOverSqrtPi * (1.0 / (kSqrt2 * a) - beta);
    d[first + li] += self_[li] + rec_diag + bg * (1.0 / (beta * beta) - 2.0 * a * a);
  }
  reduce_replicated(d.data());
  diag_ = std::move(d);
}

void Electrostatics::pair_d(int src, double out[3]) const {
  if (pairs_.d) {
    for (int k = 0; k < 3; ++k) out[k] = pairs_.d[3 * size_t(src) + k];
    return;
  }
  const signed char* s = pairs_.shift + 3 * size_t(src);
  const double* xi = x_ + 3 * size_t(pairs_.i[src]);
  const double* xj = x_ + 3 * size_t(pairs_.j[src]);
  for (int k = 0; k < 3; ++k)
    out[k] = xj[k] - xi[k] + s[0] * cell_[0][k] + s[1] * cell_[1][k] + s[2] * cell_[2][k];
}

// s a_d for every shift s in -128..127 of each cell vector d: [d][s + 128][xyz].  Looking
// the image offset up beats converting three small integers to double per pair.
const double* Electrostatics::shift_table() {
  if (shift_table_.size() != 3 * 256 * 3) shift_table_.resize(3 * 256 * 3);
  for (int d = 0; d < 3; ++d)
    for (int s = -128; s < 128; ++s)
      for (int k = 0; k < 3; ++k) shift_table_[(size_t(d) * 256 + s + 128) * 3 + k] = s * cell_[d][k];
  return shift_table_.data();
}

void Electrostatics::setup_reciprocal(const double* cell) {
  for (int d = 0; d < 3; ++d)
    for (int k = 0; k < 3; ++k) cell_[d][k] = cell[3 * d + k];
  const double(&h)[3][3] = cell_;
  double c[3][3];  // cofactors: inverse = c / det
  c[0][0] = h[1][1] * h[2][2] - h[1][2] * h[2][1];
  c[0][1] = h[0][2] * h[2][1] - h[0][1] * h[2][2];
  c[0][2] = h[0][1] * h[1][2] - h[0][2] * h[1][1];
  c[1][0] = h[1][2] * h[2][0] - h[1][0] * h[2][2];
  c[1][1] = h[0][0] * h[2][2] - h[0][2] * h[2][0];
  c[1][2] = h[0][2] * h[1][0] - h[0][0] * h[1][2];
  c[2][0] = h[1][0] * h[2][1] - h[1][1] * h[2][0];
  c[2][1] = h[0][1] * h[2][0] - h[0][0] * h[2][1];
  c[2][2] = h[0][0] * h[1][1] - h[0][1] * h[1][0];
  const double det = h[0][0] * c[0][0] + h[0][1] * c[1][0] + h[0][2] * c[2][0];
  if (!(std::fabs(det) > 0.0) || !std::isfinite(det))
    throw std::invalid_argument("Electrostatics: the cell is singular");
  volume_ = std::fabs(det);
  for (int a = 0; a < 3; ++a)
    for (int b = 0; b < 3; ++b) inv_[a][b] = c[a][b] / det;
  // reciprocal vectors b_d (rows) with a_d . b_e = 2 pi delta_de; k.x = 2 pi m.s for
  // k = sum m_d b_d and fractional coordinates s = x inv
  for (int d = 0; d < 3; ++d)
    for (int k = 0; k < 3; ++k) recip_[d][k] = 2.0 * kPi * inv_[k][d];

  const double kcut = params_.kcut, beta = params_.beta;
  int mcell[3];
  for (int d = 0; d < 3; ++d) {
    const double len = std::sqrt(h[d][0] * h[d][0] + h[d][1] * h[d][1] + h[d][2] * h[d][2]);
    mcell[d] = int(std::floor(kcut * len / (2.0 * kPi)));
  }
  // the loops below run over the m of the three cell axes nested; the innermost axis gets
  // the most values, so that the per-(m1, m2) overhead spreads over long runs
  axis_[0] = 0;
  axis_[1] = 1;
  axis_[2] = 2;
  std::sort(axis_, axis_ + 3, [&](int x, int y) { return mcell[x] < mcell[y]; });
  for (int t = 0; t < 3; ++t) mmax_[t] = mcell[axis_[t]];
  const double* b0 = recip_[axis_[0]];
  const double* b1 = recip_[axis_[1]];
  const double* b2 = recip_[axis_[2]];
  // half space (k and -k contribute alike): m1 > 0; m1 = 0, m2 > 0; m1 = m2 = 0, m3 > 0.
  // For fixed (m1, m2) |k|^2 is convex in m3, so the vectors inside the sphere are one
  // run of m3: a group.
  kgroups_.clear();
  kvec_.clear();
  kcoef_.clear();
  km_.clear();
  const double kc2 = kcut * kcut;
  for (int m1 = 0; m1 <= mmax_[0]; ++m1)
    for (int m2 = (m1 == 0 ? 0 : -mmax_[1]); m2 <= mmax_[1]; ++m2) {
      KGroup g{m1, m2, 0, -1, int(kcoef_.size())};
      for (int m3 = (m1 == 0 && m2 == 0 ? 1 : -mmax_[2]); m3 <= mmax_[2]; ++m3) {
        double k[3];
        for (int a = 0; a < 3; ++a) k[a] = m1 * b0[a] + m2 * b1[a] + m3 * b2[a];
        const double k2 = k[0] * k[0] + k[1] * k[1] + k[2] * k[2];
        if (k2 > kc2) {
          if (g.hi >= g.lo) break;  // past the run
          continue;
        }
        if (g.hi < g.lo) g.lo = m3;
        g.hi = m3;
        kvec_.insert(kvec_.end(), k, k + 3);
        kcoef_.push_back(std::exp(-k2 / (4.0 * beta * beta)) / k2);
        km_.insert(km_.end(), {m1, m2, m3});
      }
      if (g.hi >= g.lo) kgroups_.push_back(g);
    }

  // phase tables of the owned atoms by recurrence in m (error ~ m eps, m <= mmax)
  const int c0 = count_;
  const int lo[3] = {0, -mmax_[1], -mmax_[2]};
  for (int d = 0; d < 3; ++d) {
    const int rows = mmax_[d] - lo[d] + 1;
    ph_re_[d].assign(size_t(rows) * c0, 0.0);
    ph_im_[d].assign(size_t(rows) * c0, 0.0);
  }
  for (int li = 0; li < c0; ++li) {
    const double* xi = x_owned_ + 3 * li;
    for (int d = 0; d < 3; ++d) {
      const int ax = axis_[d];
      double s = xi[0] * inv_[0][ax] + xi[1] * inv_[1][ax] + xi[2] * inv_[2][ax];
      s -= std::floor(s);
      const double cr = std::cos(2.0 * kPi * s), ci = std::sin(2.0 * kPi * s);
      double er = 1.0, ei = 0.0;
      for (int m = 0; m <= mmax_[d]; ++m) {
        const size_t at = size_t(m - lo[d]) * c0 + li;
        ph_re_[d][at] = er;
        ph_im_[d][at] = ei;
        if (lo[d] < 0 && m > 0) {  // exp(-i m theta) = conj
          const size_t neg = size_t(-m - lo[d]) * c0 + li;
          ph_re_[d][neg] = er;
          ph_im_[d][neg] = -ei;
        }
        const double nr = er * cr - ei * ci;
        ei = er * ci + ei * cr;
        er = nr;
      }
    }
  }
}

// s[2k], s[2k+1] = Re, Im of sum over the owned atoms of v_i exp(i k.r_i)
void Electrostatics::structure_factors(const double* v, double* s) const {
  const int c = count_;
  double* wr = &work_[0];
  double* wi = &work_[size_t(c)];
  for (const KGroup& g : kgroups_) {
    weighted_phase(c, v, &ph_re_[0][size_t(g.m1) * c], &ph_im_[0][size_t(g.m1) * c],
                   &ph_re_[1][size_t(g.m2 + mmax_[1]) * c],
                   &ph_im_[1][size_t(g.m2 + mmax_[1]) * c], wr, wi);
    structure_run(c, g.hi - g.lo + 1, wr, wi, &ph_re_[2][size_t(g.lo + mmax_[2]) * c],
                  &ph_im_[2][size_t(g.lo + mmax_[2]) * c], s + 2 * size_t(g.first));
  }
}

// y_owned[i] += scale sum_k coef_k Re[exp(-i k.r_i) S(k)] over the half space
void Electrostatics::back_project(const double* s, double scale, double* y) const {
  const int c = count_;
  const size_t unit = size_t(std::min(1, mmax_[2]) + mmax_[2]) * c;
  std::vector<double> ss;
  for (const KGroup& g : kgroups_) {
    const int nrun = g.hi - g.lo + 1;
    ss.resize(2 * size_t(nrun));
    for (int t = 0; t < nrun; ++t) {
      const double f = scale * kcoef_[g.first + t];
      ss[2 * t] = f * s[2 * size_t(g.first + t)];
      ss[2 * t + 1] = f * s[2 * size_t(g.first + t) + 1];
    }
    project_run(c, nrun, ss.data(), &ph_re_[2][size_t(g.lo + mmax_[2]) * c],
                &ph_im_[2][size_t(g.lo + mmax_[2]) * c], &ph_re_[2][unit], &ph_im_[2][unit],
                &ph_re_[0][size_t(g.m1) * c], &ph_im_[0][size_t(g.m1) * c],
                &ph_re_[1][size_t(g.m2 + mmax_[1]) * c], &ph_im_[1][size_t(g.m2 + mmax_[1]) * c],
                y);
  }
}

// Uniform compensating background (SPEC section 5):
// (A_bg v)_i = -(pi k_e/V) [(1/beta^2 - alpha_i^2) sum_j v_j - sum_j alpha_j^2 v_j]
void Electrostatics::background(const double* v, double* y) const {
  const double pref = -kPi * kCoulomb / volume_;
  double sv = 0.0, sa = 0.0;
  for (int j = 0; j < n_; ++j) {
    sv += v[j];
    sa += alpha_[j] * alpha_[j] * v[j];
  }
  const double b2 = 1.0 / (params_.beta * params_.beta);
  for (int li = 0; li < count_; ++li) {
    const double a = alpha_[first_ + li];
    y[li] += pref * ((b2 - a * a) * sv - sa);
  }
}

void Electrostatics::apply(const double* v, double* y) {
  std::fill(y, y + n_, 0.0);
  for (int li = 0; li < count_; ++li) y[first_ + li] = self_[li] * v[first_ + li];
  if (periodic_) {
    std::vector<double> s(2 * kcoef_.size());
    structure_factors(v + first_, s.data());
    comm_->allreduce_sum(s.data(), int(s.size()));
    back_project(s.data(), 8.0 * kPi * kCoulomb / volume_, y + first_);
    background(v, y + first_);
    // row by row, so that y_i collects in a register: updating y_i in memory for every
    // pair chains the additions through store-to-load forwarding
    const int nrows = int(row_i_.size());
    const int* pj = pairs_.j;
    const double* val = pval_.data();
    const bool half = pairs_.half;
    for (int r = 0; r < nrows; ++r) {
      const int i = row_i_[r];
      const double vi = v[i];
      double acc = 0.0;
      const int end = row_start_[r + 1];
      if (half) {
        for (int p = row_start_[r]; p < end; ++p) {
          acc += val[p] * v[pj[p]];
          y[pj[p]] += val[p] * vi;
        }
      } else {
        for (int p = row_start_[r]; p < end; ++p) acc += val[p] * v[pj[p]];
      }
      y[i] += acc;
    }
  } else {
    for_free_rows([&](int i, const double* a, const double*) {
      int start[2], len[2];
      const int nseg = free_segments(i, start, len);
      double yi = 0.0;
      for (int sg = 0, at = 0; sg < nseg; at += len[sg], ++sg)
        yi += row_product(len[sg], a + at, v + start[sg], y + start[sg], v[i]);
      y[i] += yi;
    });
  }
  reduce_replicated(y);
}

// Forces and virial of E = 1/2 a^T A_es b.  A pair term c g(r) with c = (a_i b_j + a_j b_i)/2
// gives F_i = c g'(r) d/r and F_j = -F_i (d = r_j + n - r_i) and the pair virial
// -c g'(r) d (x) d / r, shared equally by the two atoms.  Forces and per-atom virials are
// collected by global index (j may belong to any rank; a buffer of n atoms also stays in
// cache, unlike ghost slots), summed over the ranks and handed to the owned slots.
void Electrostatics::forces(const double* a, const double* b, double* f, double* virial,
                            double* vatom) {
  double vir[6] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
  std::vector<double> fg(size_t(3) * n_, 0.0), vg(vatom ? size_t(6) * n_ : 0, 0.0);
  // one pair: fac = c g'(r)/r; visit = the share of the pair virial of this visit
  auto pair = [&](int i, int j, const double* d, double fac, bool both, double visit) {
    for (int k = 0; k < 3; ++k) fg[3 * size_t(i) + k] += fac * d[k];
    if (both)
      for (int k = 0; k < 3; ++k) fg[3 * size_t(j) + k] -= fac * d[k];
    const double w[6] = {-fac * d[0] * d[0], -fac * d[1] * d[1], -fac * d[2] * d[2],
                         -fac * d[0] * d[1], -fac * d[0] * d[2], -fac * d[1] * d[2]};
    for (int k = 0; k < 6; ++k) vir[k] += visit * w[k];
    if (vatom) {
      if (both) {
        for (int k = 0; k < 6; ++k) {
          vg[6 * size_t(i) + k] += 0.5 * w[k];
          vg[6 * size_t(j) + k] += 0.5 * w[k];
        }
      } else {
        for (int k = 0; k < 6; ++k) vg[6 * size_t(i) + k] += 0.5 * w[k];
      }
    }
  };
  if (!periodic_) {
    for_free_rows([&](int i, const double*, const double* dv) {
      int start[2], len[2];
      const int nseg = free_segments(i, start, len);
      for (int sg = 0, at = 0; sg < nseg; at += len[sg], ++sg) {
        if (!vatom) {
          const size_t j0 = size_t(start[sg]);
          row_forces(len[sg], x_ + 3 * size_t(i), a[i], b[i], x_ + 3 * j0, a + j0, b + j0,
                     dv + at, fg.data() + 3 * j0, &fg[3 * size_t(i)], vir);
          continue;
        }
        for (int p = 0; p < len[sg]; ++p) {
          const int j = start[sg] + p;
          const double d[3] = {x_[3 * j] - x_[3 * i], x_[3 * j + 1] - x_[3 * i + 1],
                               x_[3 * j + 2] - x_[3 * i + 2]};
          pair(i, j, d, 0.5 * (a[i] * b[j] + a[j] * b[i]) * dv[at + p], true, 1.0);
        }
      }
    });
  } else if (!vatom) {
    // the common case, written out: F_i collects in registers along a row, and all
    // arrays are locals (no reloads of members after the stores into fg)
    const bool half = pairs_.half;
    const double visit = half ? 1.0 : 0.5;
    const int nrows = int(row_i_.size());
    const int* rows = row_i_.data();
    const int* starts = row_start_.data();
    const int* pj = pairs_.j;
    const double* dval = pdval_.data();
    const double* pd = pairs_.d;
    const signed char* sh = pairs_.shift;
    const double* xp = x_;
    const double* off = sh ? shift_table() : nullptr;
    double* fgp = fg.data();
    double w0 = 0.0, w1 = 0.0, w2 = 0.0, w3 = 0.0, w4 = 0.0, w5 = 0.0;
    for (int r = 0; r < nrows; ++r) {
      const int i = rows[r];
      const double ai = a[i], bi = b[i];
      double fx = 0.0, fy = 0.0, fz = 0.0;
      for (int p = starts[r]; p < starts[r + 1]; ++p) {
        const int j = pj[p];
        const long q = p;
        double dx, dy, dz;
        if (pd) {
          dx = pd[3 * size_t(q)];
          dy = pd[3 * size_t(q) + 1];
          dz = pd[3 * size_t(q) + 2];
        } else {
          const double* o0 = off + 3 * (128 + sh[3 * size_t(q)]);
          const double* o1 = off + 3 * (384 + sh[3 * size_t(q) + 1]);
          const double* o2 = off + 3 * (640 + sh[3 * size_t(q) + 2]);
          dx = xp[3 * size_t(j)] - xp[3 * size_t(i)] + (o0[0] + o1[0] + o2[0]);
          dy = xp[3 * size_t(j) + 1] - xp[3 * size_t(i) + 1] + (o0[1] + o1[1] + o2[1]);
          dz = xp[3 * size_t(j) + 2] - xp[3 * size_t(i) + 2] + (o0[2] + o1[2] + o2[2]);
        }
        const double fac = 0.5 * (ai * b[j] + a[j] * bi) * dval[p];
        fx += fac * dx;
        fy += fac * dy;
        fz += fac * dz;
        if (half) {
          fgp[3 * size_t(j)] -= fac * dx;
          fgp[3 * size_t(j) + 1] -= fac * dy;
          fgp[3 * size_t(j) + 2] -= fac * dz;
        }
        const double vf = visit * fac;
        w0 -= vf * dx * dx;
        w1 -= vf * dy * dy;
        w2 -= vf * dz * dz;
        w3 -= vf * dx * dy;
        w4 -= vf * dx * dz;
        w5 -= vf * dy * dz;
      }
      fgp[3 * size_t(i)] += fx;
      fgp[3 * size_t(i) + 1] += fy;
      fgp[3 * size_t(i) + 2] += fz;
    }
    vir[0] += w0;
    vir[1] += w1;
    vir[2] += w2;
    vir[3] += w3;
    vir[4] += w4;
    vir[5] += w5;
  }
  if (periodic_) {
    if (vatom) {
      const bool half = pairs_.half;
      const int nrows = int(row_i_.size());
      for (int r = 0; r < nrows; ++r) {
        const int i = row_i_[r];
        for (int p = row_start_[r]; p < row_start_[r + 1]; ++p) {
          const int j = pairs_.j[p];
          const double c = 0.5 * (a[i] * b[j] + a[j] * b[i]);
          double dv[3];
          pair_d(p, dv);
          pair(i, j, dv, c * pdval_[p], half, half ? 1.0 : 0.5);
        }
      }
    }
    reciprocal_forces(a, b, fg.data() + 3 * size_t(first_), virial,
                      vatom ? vg.data() + 6 * size_t(first_) : nullptr);

    // Background: E_bg = 1/2 a^T A_bg b scales as 1/V, so its virial is E_bg on the
    // diagonal; atom i's share is (a_i (A_bg b)_i + b_i (A_bg a)_i)/4.
    std::vector<double> bga(count_, 0.0), bgb(count_, 0.0);
    background(a, bga.data());
    background(b, bgb.data());
    for (int li = 0; li < count_; ++li) {
      const double eps = 0.25 * (a[first_ + li] * bgb[li] + b[first_ + li] * bga[li]);
      for (int k = 0; k < 3; ++k) vir[k] += eps;
      if (vatom)
        for (int k = 0; k < 3; ++k) vg[6 * size_t(first_ + li) + k] += eps;
    }
  }
  for (int k = 0; k < 6; ++k) virial[k] += vir[k];
  comm_->allreduce_sum(fg.data(), 3 * n_);
  if (vatom) comm_->allreduce_sum(vg.data(), 6 * n_);
  for (int li = 0; li < count_; ++li) {
    const int i = first_ + li;
    const int slot = owned_slot_ ? owned_slot_[li] : i;
    for (int k = 0; k < 3; ++k) f[3 * size_t(slot) + k] += fg[3 * size_t(i) + k];
    if (vatom)
      for (int k = 0; k < 6; ++k) vatom[6 * size_t(slot) + k] += vg[6 * size_t(i) + k];
  }
}

// Reciprocal space, added to fo (owned atoms, 3 each) and vo (6 each, or nullptr).
// E_rec = (4 pi k_e/V) sum_{half k} coef_k Re[S_a(k) conj S_b(k)];
//   F_i = (4 pi k_e/V) sum_k coef_k k (a_i Im[e_i conj S_b] + b_i Im[e_i conj S_a]),
// the energy E_k of a vector is shared as
//   eps_i = (2 pi k_e/V) coef_k Re[a_i e_i conj S_b + b_i e_i conj S_a],
// and its virial is E_k [delta_ab - 2 k_a k_b (1/k^2 + 1/(4 beta^2))].
// Within a run of a group, k = k12 + m3 b3 and e = e12 p3, so the force needs per atom
// only sum_k fc p3 conj S and sum_k fc m3 p3 conj S (force_run()).
void Electrostatics::reciprocal_forces(const double* a, const double* b, double* fo,
                                       double* virial, double* vo) {
  const int nk = int(kcoef_.size());
  const int c = count_;
  const bool same = a == b || std::equal(a, a + n_, b);
  std::vector<double> sa(2 * size_t(nk)), sb(same ? 0 : 2 * size_t(nk));
  structure_factors(a + first_, sa.data());
  if (!same) structure_factors(b + first_, sb.data());
  {  // one reduction for both
    std::vector<double> both(sa);
    both.insert(both.end(), sb.begin(), sb.end());
    comm_->allreduce_sum(both.data(), int(both.size()));
    std::copy(both.begin(), both.begin() + sa.size(), sa.begin());
    std::copy(both.begin() + sa.size(), both.end(), sb.begin());
  }
  const double* Sa = sa.data();
  const double* Sb = same ? sa.data() : sb.data();
  const double fpref = 4.0 * kPi * kCoulomb / volume_;
  const double epref = 2.0 * kPi * kCoulomb / volume_;
  const double inv4b2 = 1.0 / (4.0 * params_.beta * params_.beta);
  auto tensor = [&](int k, double t[6]) {
    const double* kv = &kvec_[3 * size_t(k)];
    const double k2 = kv[0] * kv[0] + kv[1] * kv[1] + kv[2] * kv[2];
    const double w = 2.0 * (1.0 / k2 + inv4b2);
    t[0] = 1.0 - w * kv[0] * kv[0];
    t[1] = 1.0 - w * kv[1] * kv[1];
    t[2] = 1.0 - w * kv[2] * kv[2];
    t[3] = -w * kv[0] * kv[1];
    t[4] = -w * kv[0] * kv[2];
    t[5] = -w * kv[1] * kv[2];
  };
  // the global virial needs only the summed structure factors: rank 0 adds it
  if (comm_->rank() == 0)
    for (int k = 0; k < nk; ++k) {
      const double ek = 2.0 * epref * kcoef_[k] * (Sa[2 * k] * Sb[2 * k] + Sa[2 * k + 1] * Sb[2 * k + 1]);
      double t[6];
      tensor(k, t);
      for (int q = 0; q < 6; ++q) virial[q] += ek * t[q];
    }
  if (c == 0) return;

  const double* ao = a + first_;
  const double* bo = b + first_;
  const size_t unit = size_t(std::min(1, mmax_[2]) + mmax_[2]) * c;
  std::vector<double> cb, ca;
  const double* b3 = recip_[axis_[2]];
  for (const KGroup& g : kgroups_) {
    const int nrun = g.hi - g.lo + 1;
    const double* pr = &ph_re_[2][size_t(g.lo + mmax_[2]) * c];
    const double* pim = &ph_im_[2][size_t(g.lo + mmax_[2]) * c];
    cb.resize(2 * size_t(nrun));
    ca.resize(same ? 0 : 2 * size_t(nrun));
    for (int t = 0; t < nrun; ++t) {  // fc conj(S)
      const size_t k = g.first + t;
      const double fc = fpref * kcoef_[k];
      cb[2 * t] = fc * Sb[2 * k];
      cb[2 * t + 1] = -fc * Sb[2 * k + 1];
      if (!same) {
        ca[2 * t] = fc * Sa[2 * k];
        ca[2 * t + 1] = -fc * Sa[2 * k + 1];
      }
    }
    double k12[3];  // m1 b_0 + m2 b_1 of the group
    for (int q = 0; q < 3; ++q)
      k12[q] = g.m1 * recip_[axis_[0]][q] + g.m2 * recip_[axis_[1]][q];
    const double* ar = &ph_re_[0][size_t(g.m1) * c];
    const double* ai = &ph_im_[0][size_t(g.m1) * c];
    const double* br = &ph_re_[1][size_t(g.m2 + mmax_[1]) * c];
    const double* bi = &ph_im_[1][size_t(g.m2 + mmax_[1]) * c];
    force_run(c, nrun, g.lo, cb.data(), same ? nullptr : ca.data(), pr, pim, &ph_re_[2][unit],
              &ph_im_[2][unit], ar, ai, br, bi, ao, bo, k12, b3, fo);
    if (vo) {  // per-atom virials: every (k, atom) term (only when asked for)
      for (int t = 0; t < nrun; ++t) {
        const int k = g.first + t;
        double tk[6];
        tensor(k, tk);
        const double ec = epref * kcoef_[k];
        const double sar = Sa[2 * k], sai = Sa[2 * k + 1], sbr = Sb[2 * k], sbi = Sb[2 * k + 1];
        for (int i = 0; i < c; ++i) {
          const double e12r = ar[i] * br[i] - ai[i] * bi[i];
          const double e12i = ar[i] * bi[i] + ai[i] * br[i];
          const double cr = pr[size_t(t) * c + i], ci = pim[size_t(t) * c + i];
          const double er = e12r * cr - e12i * ci, ei = e12r * ci + e12i * cr;
          const double eps =
              ec * (ao[i] * (er * sbr + ei * sbi) + bo[i] * (er * sar + ei * sai));
          for (int q = 0; q < 6; ++q) vo[6 * size_t(i) + q] += eps * tk[q];
        }
      }
    }
  }
}

/* ------------------------------------------------------------------ preconditioner */

void Electrostatics::prepare_preconditioner(const double* hardness) {
  const bool same = int(pc_hardness_.size()) == n_ && pc_periodic_ == periodic_ &&
                    std::equal(pc_hardness_.begin(), pc_hardness_.end(), hardness) &&
                    (!periodic_ || std::equal(&cell_[0][0], &cell_[0][0] + 9, pc_cell_));
  if (same && setup_id_ - pc_setup_ <= std::max(pc_max_age_, 0)) return;
  pc_hardness_.assign(hardness, hardness + n_);
  pc_setup_ = setup_id_;
  pc_periodic_ = periodic_;
  std::copy(&cell_[0][0], &cell_[0][0] + 9, pc_cell_);
  dinv_.assign(n_, 0.0);
  double dmean = 0.0;
  for (int i = 0; i < n_; ++i) {
    const double d = hardness[i] + diag_[i];
    if (!(d > 0.0))
      throw std::invalid_argument("charge equilibration: non-positive diagonal; check the "
                                  "hardness and widths");
    dinv_[i] = 1.0 / d;
    dmean += d;
  }
  nlow_ = 0;
  lowe_.clear();
  lowchol_.clear();
  nblocks_ = 0;
  if (!periodic_) {
    if (n_ >= kMinCoarseAtoms) prepare_coarse(hardness);
    return;
  }
  if (kcoef_.empty() || n_ < 2) return;
  dmean /= n_;

  // the reciprocal vectors with the stiffest long waves (largest coefficients)
  const double pref = 8.0 * kPi * kCoulomb / volume_;
  std::vector<int> order(kcoef_.size());
  std::iota(order.begin(), order.end(), 0);
  const int take = std::min(int(order.size()), kMaxLow);
  std::partial_sort(order.begin(), order.begin() + take, order.end(),
                    [&](int x, int y) { return kcoef_[x] > kcoef_[y]; });
  int nlow = 0;
  while (nlow < take && pref * kcoef_[order[nlow]] * 0.5 * n_ >= kLowThreshold * dmean) ++nlow;
  if (nlow == 0) return;
  const int m = 2 * nlow;

  // E: cos and sin of k.r_i, computed for the owned atoms (from the phase tables) and then
  // gathered, so that every rank can apply the preconditioner to its replicated vectors
  // without communication in the solver iterations
  const int c = count_;
  std::vector<double> own(size_t(c) * m, 0.0);
  for (int q = 0; q < nlow; ++q) {
    const int k = order[q];
    const int m1 = km_[3 * size_t(k)], m2 = km_[3 * size_t(k) + 1], m3 = km_[3 * size_t(k) + 2];
    const double* ar = &ph_re_[0][size_t(m1) * c];
    const double* ai = &ph_im_[0][size_t(m1) * c];
    const double* br = &ph_re_[1][size_t(m2 + mmax_[1]) * c];
    const double* bi = &ph_im_[1][size_t(m2 + mmax_[1]) * c];
    const double* pr = &ph_re_[2][size_t(m3 + mmax_[2]) * c];
    const double* pim = &ph_im_[2][size_t(m3 + mmax_[2]) * c];
    for (int i = 0; i < c; ++i) {
      const double er = ar[i] * br[i] - ai[i] * bi[i];
      const double ei = ar[i] * bi[i] + ai[i] * br[i];
      // rounded to float, the precision of lowe_: the Woodbury factor below is computed
      // from the same numbers, so M stays exactly symmetric positive definite
      own[size_t(i) * m + q] = float(er * pr[i] - ei * pim[i]);
      own[size_t(i) * m + nlow + q] = float(er * pim[i] + ei * pr[i]);
    }
  }
  // C^-1 + E^T D^-1 E (symmetric m x m), summed over the ranks
  std::vector<double> g(size_t(m) * m, 0.0);
  weighted_gram(c, m, own.data(), dinv_.data() + first_, g.data());
  comm_->allreduce_sum(g.data(), m * m);
  {
    std::vector<int> cm(counts_.size()), dm(displs_.size());
    for (size_t r = 0; r < counts_.size(); ++r) {
      cm[r] = counts_[r] * m;
      dm[r] = displs_[r] * m;
    }
    std::vector<double> all(size_t(n_) * m, 0.0);
    comm_->allgatherv(own.data(), c * m, all.data(), cm.data(), dm.data());
    lowe_.assign(all.begin(), all.end());
  }
  for (int q = 0; q < nlow; ++q) {
    const double cinv = 1.0 / (pref * kcoef_[order[q]]);
    g[size_t(q) * m + q] += cinv;
    g[size_t(nlow + q) * m + nlow + q] += cinv;
  }
  if (!cholesky(g, m)) {  // cannot happen for a positive D; fall back to Jacobi
    lowe_.clear();
    return;
  }
  lowchol_ = std::move(g);
  nlow_ = nlow;
}

// Free boundaries: a two-level "balancing" preconditioner
//   M^-1 = Q + (I - Q H) D^-1 (I - H Q),  Q = P H_c^-1 P^T,  H = J + A_es,  H_c = P^T H P,
// with P the indicator of spatial blocks (a grid over the bounding box).  Jacobi alone
// leaves the stiff long charge waves across a cluster to the iteration (largest eigenvalue
// of D^-1 H ~ 24 for a 2k-atom NaCl cluster, condition number 42); the coarse level solves
// them exactly (condition 4.4 with 16 atoms per block).  H P (n x m) is kept, so that
// applying M^-1 costs O(n m) and no communication.  Every rank builds the same blocks from
// the replicated positions; H P is summed over the ranks.
void Electrostatics::prepare_coarse(const double* hardness) {
  double lo[3], hi[3];
  for (int k = 0; k < 3; ++k) lo[k] = hi[k] = x_[k];
  for (int i = 1; i < n_; ++i)
    for (int k = 0; k < 3; ++k) {
      lo[k] = std::min(lo[k], x_[3 * size_t(i) + k]);
      hi[k] = std::max(hi[k], x_[3 * size_t(i) + k]);
    }
  const int want = std::min(kMaxBlocks, std::max(1, n_ / kAtomsPerBlock));
  double ext[3], vol = 1.0;
  for (int k = 0; k < 3; ++k) {
    ext[k] = std::max(hi[k] - lo[k], 1e-3);
    vol *= ext[k];
  }
  // cubic grid cells; flat or linear clusters (an extent near zero) would get far too many
  // cells along their long axes, so the edge grows until the grid has at most want cells
  int dims[3];
  for (double edge = std::cbrt(vol / want);; edge *= 1.1) {
    for (int k = 0; k < 3; ++k) dims[k] = std::max(1, int(std::lround(ext[k] / edge)));
    if (double(dims[0]) * dims[1] * dims[2] <= want) break;
  }
  // grid cells -> consecutive block numbers of the occupied cells
  std::vector<int> number(size_t(dims[0]) * dims[1] * dims[2], -1);
  int m = 0;
  block_.assign(n_, 0);
  for (int i = 0; i < n_; ++i) {
    int c[3];
    for (int k = 0; k < 3; ++k)
      c[k] = std::min(dims[k] - 1, int((x_[3 * size_t(i) + k] - lo[k]) / ext[k] * dims[k]));
    int& id = number[(size_t(c[0]) * dims[1] + c[1]) * dims[2] + c[2]];
    if (id < 0) id = m++;
    block_[i] = id;
  }
  if (m < 2) return;

  // H P: row i holds sum over the atoms j of block b of H_ij
  hp_.assign(size_t(n_) * m, 0.0);
  for_free_rows([&](int i, const double* a, const double*) {
    const int bi = block_[i];
    double* row = &hp_[size_t(i) * m];
    row[bi] += hardness[i] + diag_[i];
    int start[2], len[2];
    const int nseg = free_segments(i, start, len);
    for (int sg = 0, at = 0; sg < nseg; at += len[sg], ++sg)
      for (int p = 0; p < len[sg]; ++p) {
        const int j = start[sg] + p;
        row[block_[j]] += a[at + p];
        hp_[size_t(j) * m + bi] += a[at + p];
      }
  });
  comm_->allreduce_sum(hp_.data(), n_ * m);
  std::vector<double> hc(size_t(m) * m, 0.0);  // H_c = P^T (H P)
  for (int i = 0; i < n_; ++i) {
    double* out = &hc[size_t(block_[i]) * m];
    const double* row = &hp_[size_t(i) * m];
    for (int b = 0; b < m; ++b) out[b] += row[b];
  }
  if (!cholesky(hc, m)) {  // cannot happen for a positive definite H
    hp_.clear();
    return;
  }
  lowchol_ = std::move(hc);
  nblocks_ = m;
}

// z = M^-1 r of the balancing preconditioner above
void Electrostatics::precondition_coarse(const double* r, double* z) const {
  const int m = nblocks_;
  std::vector<double> t(m, 0.0), s(m, 0.0);
  for (int i = 0; i < n_; ++i) t[block_[i]] += r[i];
  cholesky_solve(lowchol_, m, t.data());  // t = H_c^-1 P^T r
  for (int i = 0; i < n_; ++i) {          // z = D^-1 (r - H P t), s = (H P)^T z
    const double* row = &hp_[size_t(i) * m];
    double u = 0.0;
#pragma omp simd reduction(+ : u)
    for (int b = 0; b < m; ++b) u += row[b] * t[b];
    const double zi = dinv_[i] * (r[i] - u);
    z[i] = zi;
#pragma omp simd
    for (int b = 0; b < m; ++b) s[b] += row[b] * zi;
  }
  cholesky_solve(lowchol_, m, s.data());
  for (int i = 0; i < n_; ++i) z[i] += t[block_[i]] - s[block_[i]];
}

// M^-1 r = D^-1 r - D^-1 E (C^-1 + E^T D^-1 E)^-1 E^T D^-1 r (Woodbury), on every rank
// for all atoms (O(n nlow), no communication)
void Electrostatics::precondition(const double* r, double* z) {
  if (nblocks_ > 0) return precondition_coarse(r, z);
  for (int i = 0; i < n_; ++i) z[i] = dinv_[i] * r[i];
  if (nlow_ == 0) return;
  const int m = 2 * nlow_;
  std::vector<double> t(m, 0.0);
  for (int i = 0; i < n_; ++i) {
    const double zi = z[i];
    const float* e = &lowe_[size_t(i) * m];
#pragma omp simd
    for (int p = 0; p < m; ++p) t[p] += e[p] * zi;
  }
  cholesky_solve(lowchol_, m, t.data());
  for (int i = 0; i < n_; ++i) {
    const float* e = &lowe_[size_t(i) * m];
    double s = 0.0;
#pragma omp simd reduction(+ : s)
    for (int p = 0; p < m; ++p) s += e[p] * t[p];
    z[i] -= dinv_[i] * s;
  }
}

/* ------------------------------------------------------------------------- solver */

SolveStats solve_constrained(Electrostatics& es, const double* hardness, const double* c,
                             double total, double* x, double tol, int maxiter,
                             double* potential) {
  const int n = es.size();
  SolveStats stats;
  if (n == 0) return stats;
  es.prepare_preconditioner(hardness);
  auto dot = [n](const double* u, const double* v) {
    double s = 0.0;
    for (int i = 0; i < n; ++i) s += u[i] * v[i];
    return s;
  };
  // norm of r without its component along 1 (what the constraint can absorb)
  auto projected_norm = [n](const double* r) {
    double mean = 0.0;
    for (int i = 0; i < n; ++i) mean += r[i];
    mean /= n;
    double s = 0.0;
    for (int i = 0; i < n; ++i) s += (r[i] - mean) * (r[i] - mean);
    return std::sqrt(s);
  };
  std::vector<double> r(n), g(n), p(n), ap(n), ax(n), z1(n), ones(n, 1.0);
  // g = M^-1 (r - mu 1) with mu such that sum g = 0: preconditioned and feasible.  r is
  // shifted by -mu 1 as well: that changes nothing on the constraint surface, but keeps
  // the large lambda 1 part out of r, without which the recurrences lose their accuracy
  // and the iteration stalls below ~1e-8 (Gould et al., "residual update")
  es.precondition(ones.data(), z1.data());
  double sz1 = 0.0;
  for (int i = 0; i < n; ++i) sz1 += z1[i];
  double shift = 0.0;
  auto precondition = [&](double* rr, double* gg) {
    es.precondition(rr, gg);
    double sg = 0.0;
    for (int i = 0; i < n; ++i) sg += gg[i];
    const double mu = sg / sz1;
    for (int i = 0; i < n; ++i) {
      gg[i] -= mu * z1[i];
      rr[i] -= mu;
    }
    shift += mu;
  };

  // scale of the residual: the projected gradient at uniform charges total/n
  if (total != 0.0) {
    std::vector<double> uniform(n, total / n);
    es.apply(uniform.data(), r.data());
    for (int i = 0; i < n; ++i) r[i] += hardness[i] * uniform[i] + c[i];
  } else {
    std::copy(c, c + n, r.begin());
  }
  double scale = projected_norm(r.data());
  if (!(scale > 0.0)) scale = 1.0;  // uniform charges are exact: any residual is absolute

  // feasible start: shift the guess uniformly to sum total
  double sx = 0.0;
  for (int i = 0; i < n; ++i) sx += x[i];
  for (int i = 0; i < n; ++i) x[i] += (total - sx) / n;
  es.apply(x, ax.data());
  for (int i = 0; i < n; ++i) r[i] = ax[i] + hardness[i] * x[i] + c[i];

  precondition(r.data(), g.data());
  for (int i = 0; i < n; ++i) p[i] = -g[i];
  double rg = dot(r.data(), g.data());
  for (;;) {
    stats.residual = projected_norm(r.data()) / scale;
    if (stats.residual <= tol) break;
    if (stats.iterations >= maxiter || !std::isfinite(stats.residual)) {
      stats.converged = false;
      break;
    }
    es.apply(p.data(), ap.data());
    ++stats.iterations;
    double pap = 0.0;
    for (int i = 0; i < n; ++i) pap += p[i] * (ap[i] + hardness[i] * p[i]);
    if (!(pap > 0.0)) {  // (J + A_es) is positive definite on sum q = 0: breakdown
      stats.converged = false;
      break;
    }
    const double step = rg / pap;
    for (int i = 0; i < n; ++i) {
      x[i] += step * p[i];
      ax[i] += step * ap[i];
      r[i] += step * (ap[i] + hardness[i] * p[i]);
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
  if (potential) std::copy(ax.begin(), ax.end(), potential);
  return stats;
}

}  // namespace snapqeq

// snapqeq bispectrum kernel: SNAP-compatible bispectrum components of one site,
// their derivatives with respect to neighbour positions, and the adjoint (Y array)
// evaluation of dE/dr for E = sum_k beta_k B_k.
//
// Definitions, index conventions and column order are those of LAMMPS
// `compute sna/atom` (ML-SNAP).  Angular momenta are stored doubled (j = 2J) so all
// labels are integers.  This file is compiled into the Cython extension and into the
// LAMMPS plugin; it is the only implementation of this math in the project.
#pragma once

#include <memory>
#include <vector>

namespace snapqeq {

struct SNAOptions {
  int twojmax = 6;
  // no default here: every caller sets it (the one default is snapqeq.io.snap_files.SNA_DEFAULTS);
  // an unset 0 fails the check of the SNA constructor
  double rfac0 = 0.0;
  double rmin0 = 0.0;
  bool switchflag = true;
  bool bzeroflag = true;
  bool chemflag = false;
  bool bnormflag = false;
  bool wselfallflag = false;
  bool switchinnerflag = false;
  int nelements = 1;  // number of chemical element blocks (1 unless chemflag)
};

struct Complex {
  double re = 0.0;
  double im = 0.0;
};

struct SNATables;  // immutable index lists and coefficients, shared between workspaces

// One workspace per thread.  Copying shares the (read-only) tables and allocates a fresh
// workspace, so `SNA copy(other)` is the way to get per-thread engines.
//
// Per site the calling sequence is
//   set_neighbors -> compute_ui -> compute_zi -> compute_bi        (descriptors)
//                                          \-> compute_yi(beta) -> compute_deidrj(jj)
//                                          \-> compute_dbidrj(jj)  (per-pair dB/dr)
// Neighbour displacements are rij = r_j - r_i (Angstrom); all derivatives are taken with
// respect to rij, i.e. they are dX_i/dr_j, and dX_i/dr_i = -sum_j dX_i/dr_j.
class SNA {
 public:
  explicit SNA(const SNAOptions& options);
  SNA(const SNA& other);
  SNA& operator=(const SNA&) = delete;
  ~SNA();

  const SNAOptions& options() const;
  int ncoeff() const;  // components per site, all element blocks: nelements^3 * nbase
  int nbase() const;   // components per element triple: (j1, j2, j) with j2 <= j1 <= j
  // (j1, j2, j) of base component k (doubled angular momenta)
  void triple(int k, int& j1, int& j2, int& j) const;

  // Neighbours of the current site.  Arrays have length n and must stay valid until the
  // next call; rij is n x 3 row-major.  rcut is the pair cutoff, wj the neighbour weight,
  // elem its element block (0 unless chemflag), sinner/dinner the inner switching
  // parameters of the pair (ignored unless switchinnerflag; may be null then).
  void set_neighbors(int n, const double* rij, const double* rcut, const double* wj,
                     const int* elem, const double* sinner, const double* dinner);

  void compute_ui(int ielem);
  void compute_zi();
  // B of the current site (ncoeff values, bzero shift applied).
  void compute_bi(int ielem, double* blist) const;
  // Adjoint array Y for the weights beta (ncoeff values, same layout as B).
  void compute_yi(const double* beta);
  // dE/drij for neighbour jj, E = sum_k beta_k B_k (after compute_yi).
  void compute_deidrj(int jj, double dedr[3]);
  // dB_k/drij for neighbour jj: ncoeff x 3 row-major (after compute_zi).
  void compute_dbidrj(int jj, double* dblist);

  // Switching function of a pair and its radial derivative.
  double sfac(double r, double rcut, double sinner, double dinner) const;
  double dsfac(double r, double rcut, double sinner, double dinner) const;

 private:
  void compute_uarray(int jj);
  void compute_duarray(int jj);

  std::shared_ptr<const SNATables> t_;
  // neighbour data (borrowed)
  int nnbr_ = 0;
  const double* rij_ = nullptr;
  const double* rcut_ = nullptr;
  const double* wj_ = nullptr;
  const int* elem_ = nullptr;
  const double* sinner_ = nullptr;
  const double* dinner_ = nullptr;
  // workspace
  std::vector<Complex> ulist_;     // nnbr x idxu_max, unscaled U of each neighbour
  std::vector<double> z0_;         // nnbr, Cayley-Klein z0 of each neighbour
  std::vector<Complex> ulisttot_;  // nelements x idxu_max
  std::vector<Complex> zlist_;     // nelements^2 x idxz_max
  std::vector<Complex> ylist_;     // nelements x idxu_max
  std::vector<Complex> dulist_;    // idxu_max x 3
};

}  // namespace snapqeq

/* -*- c++ -*- ----------------------------------------------------------
   snapqeq: per-atom outputs of pair_style snapqeq as a LAMMPS compute

   compute ID group snapqeq/atom value ...
     value = q | chi | phi | force_std | olcao | olcao_std

   q (e), chi (eV/e), phi (eV/e = V): one column each; force_std (eV/Angstrom): one
   column, committee model files only; olcao, olcao_std (Hartree): D columns each, the
   mean and the standard deviation of the OLCAO potential coefficients (models with an
   OLCAO head; NaN beyond an element's exponent series).  A per-atom vector for a single
   column, else a per-atom array with the columns in the order given.  Atoms outside the
   group get 0.

   Asking for olcao or olcao_std makes the pair style cover the head's neighbour cutoff
   from the next run on and evaluate the head on exactly the steps this compute is invoked
   (LAMMPS' timeflag/matchstep mechanism, as pair styles tally per-atom energies for
   compute pe/atom).  GPL-2.0-or-later, like LAMMPS.
------------------------------------------------------------------------- */

#ifdef COMPUTE_CLASS
// clang-format off
ComputeStyle(snapqeq/atom,ComputeSNAPQEqAtom);
// clang-format on
#else

#ifndef LMP_COMPUTE_SNAPQEQ_ATOM_H
#define LMP_COMPUTE_SNAPQEQ_ATOM_H

#include "compute.h"

#include <string>
#include <vector>

namespace LAMMPS_NS {

class PairSNAPQEq;

class ComputeSNAPQEqAtom : public Compute {
 public:
  ComputeSNAPQEqAtom(class LAMMPS *, int, char **);
  ~ComputeSNAPQEqAtom() override;
  void init() override;
  void compute_peratom() override;
  double memory_usage() override;

  // true if one of the values is olcao or olcao_std (read by the pair style)
  bool wants_olcao() const { return olcao; }

 private:
  std::vector<std::string> values;
  std::vector<int> ncols;    // columns of each value
  bool olcao;
  int nmax;
  PairSNAPQEq *pair;

  PairSNAPQEq *find_pair() const;
  void count_columns();
};

}    // namespace LAMMPS_NS

#endif
#endif

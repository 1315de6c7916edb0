// Plugin entry point: registers pair style snapqeq and compute snapqeq/atom with LAMMPS
// (`plugin load`, or automatically from a folder in LAMMPS_PLUGIN_PATH since the file name
// ends in plugin.so).
#include "lammpsplugin_api.h"

#include "compute_snapqeq_atom.h"
#include "pair_snapqeq.h"

#ifndef SNAPQEQ_LAMMPS_VERSION
#error "SNAPQEQ_LAMMPS_VERSION (e.g. \"22 Jul 2025\") must be defined by the build"
#endif

using namespace LAMMPS_NS;

// LAMMPS calls this as Pair *(*)(LAMMPS *): hand back the Pair base pointer
static void *pair_snapqeq_creator(void *lmp)
{
  Pair *pair = new PairSNAPQEq(static_cast<LAMMPS *>(lmp));
  return pair;
}

// and this as Compute *(*)(LAMMPS *, int, char **)
static void *compute_snapqeq_atom_creator(void *lmp, int argc, char **argv)
{
  Compute *compute = new ComputeSNAPQEqAtom(static_cast<LAMMPS *>(lmp), argc, argv);
  return compute;
}

extern "C" void lammpsplugin_init(void *lmp, void *handle, void *regfunc)
{
  auto register_plugin = reinterpret_cast<snapqeq_plugin_regfunc>(regfunc);
  snapqeq_plugin_t plugin;
  // LAMMPS only compares this string with its own version to print a note on mismatch
  plugin.version = SNAPQEQ_LAMMPS_VERSION;
  plugin.style = "pair";
  plugin.name = "snapqeq";
  plugin.info = "snapqeq pair style (CENT charge-equilibration neural-network potential) v0.1";
  plugin.author = "snapqeq developers";
  plugin.creator.v1 = &pair_snapqeq_creator;
  plugin.handle = handle;
  (*register_plugin)(&plugin, lmp);

  plugin.style = "compute";
  plugin.name = "snapqeq/atom";
  plugin.info = "snapqeq per-atom outputs (charges, chi, phi, OLCAO coefficients) v0.1";
  plugin.creator.v2 = &compute_snapqeq_atom_creator;
  (*register_plugin)(&plugin, lmp);
}

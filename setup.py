"""Build the Cython extensions: the C++ kernels (kernel/) plus their bindings.

A built package (wheel, non-editable install) also carries the sources of the LAMMPS
plugin, ``plugin/``, ``pair_style/`` and ``kernel/``, as ``snapqeq/plugin_src/...``, so that
``snapqeq build-lammps-plugin`` works outside a checkout (snapqeq.lammps.plugin.source_dir).
"""

from pathlib import Path

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_py import build_py

COMMON = dict(
    include_dirs=["kernel", np.get_include()],
    language="c++",
    extra_compile_args=["-O3", "-std=c++17", "-fopenmp", "-fno-math-errno"],
    extra_link_args=["-fopenmp"],
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
)

extensions = [
    Extension("snapqeq._sna", sources=["python/snapqeq/_sna.pyx", "kernel/sna.cpp"], **COMMON),
    # electrostatics and the charge equilibration solver, serial (the LAMMPS plugin runs the
    # same kernel under MPI)
    Extension("snapqeq._electrostatics",
              sources=["python/snapqeq/_electrostatics.pyx", "kernel/electrostatics.cpp"],
              **COMMON),
]

# the plugin's CMake project and the C++ it compiles (no build outputs)
PLUGIN_SOURCES = {"plugin": ("CMakeLists.txt", "*.cpp", "*.h"),
                  "pair_style": ("*.cpp", "*.h"), "kernel": ("*.cpp", "*.h")}


class BuildPyWithPluginSources(build_py):
    """build_py that also copies the plugin sources into snapqeq/plugin_src/."""

    def run(self):
        super().run()
        if self.editable_mode:  # an editable install builds from the checkout itself
            return
        for folder, patterns in PLUGIN_SOURCES.items():
            for pattern in patterns:
                for src in sorted(Path(folder).glob(pattern)):
                    dst = Path(self.build_lib) / "snapqeq" / "plugin_src" / folder / src.name
                    self.mkpath(str(dst.parent))
                    self.copy_file(str(src), str(dst))


setup(ext_modules=cythonize(extensions, language_level=3, build_dir="build/cython",
                            compiler_directives={"boundscheck": False, "wraparound": False}),
      cmdclass={"build_py": BuildPyWithPluginSources})

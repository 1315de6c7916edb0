"""Training samples: reference structures with their bispectrum and its derivatives.

Descriptors are cached on disk, one file per structure, keyed by a hash of the descriptor
parameters and the structure, so that repeated training runs skip the kernel.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from tqdm import tqdm

from snapqeq.descriptors.bispectrum import Bispectrum
from snapqeq.io.structures import DataKeys, reference_values, total_charge
from snapqeq.neighbors import build_pairs, shortest_distances


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
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")  # processes may share the cache
        np.savez(tmp, b=b, i=g.i, j=g.j, db=g.dB)
        tmp.replace(path)
    return b, g.i, g.j, g.dB


def make_sample(atoms: Atoms, descriptor: Bispectrum, keys: DataKeys = DataKeys(),
                cache_dir: Path | None = None) -> Sample:
    """Prepare one structure (descriptors from the cache when available)."""
    species = descriptor.species(atoms)
    b, i, j, db = _descriptors(descriptor, atoms, cache_dir)
    energy, forces, charges = reference_values(atoms, keys)
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

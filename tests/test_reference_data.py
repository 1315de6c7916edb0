"""Reference-data generation: NaCl cluster structures and GFN2-xTB labels (SPEC §8)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.io import read
from conftest import load_script

from snapqeq.datasets import clusters
from snapqeq.datasets.clusters import (
    CLUSTER_SIZES,
    KINDS,
    BornMayerNaCl,
    check_cluster,
    compression_series,
    generate_clusters,
    min_pair_distances,
    nacl_cube,
)

# tblite runs OpenMP-parallel in this process; one thread avoids oversubscribing shared
# machines (as `make test` does).
os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
MAKE_DATA = ROOT / "examples" / "nacl_clusters" / "make_data.py"

needs_tblite = pytest.mark.skipif(
    importlib.util.find_spec("tblite") is None, reason="tblite not installed"
)


# ----------------------------------------------------------------------------------------
# Structures
# ----------------------------------------------------------------------------------------


def test_cluster_sizes_follow_cent_protocol():
    assert CLUSTER_SIZES == tuple(range(8, 84, 4))
    assert CLUSTER_SIZES[0] == 8 and CLUSTER_SIZES[-1] == 80


@pytest.mark.parametrize("n_atoms", [8, 20, 44, 80])
def test_generated_clusters_are_sensible(n_atoms):
    images = generate_clusters(n_atoms, count=len(KINDS), seed=3)
    assert sorted(a.info["generator"] for a in images) == sorted(KINDS)
    for atoms in images:
        assert len(atoms) == n_atoms
        assert (atoms.numbers == 11).sum() == n_atoms // 2
        assert (atoms.numbers == 17).sum() == n_atoms // 2
        assert not atoms.pbc.any()
        d = min_pair_distances(atoms)
        assert d["Na-Cl"] > 2.0
        assert d["Na-Na"] > 2.5 and d["Cl-Cl"] > 2.5
        assert check_cluster(atoms)
        np.testing.assert_allclose(atoms.positions.mean(axis=0), 0.0, atol=1e-9)


def test_generation_is_deterministic_and_extendable():
    a = generate_clusters(12, count=3, seed=7, tag=1)
    b = generate_clusters(12, count=4, seed=7, tag=1)
    for x, y in zip(a, b[:3], strict=True):
        assert np.array_equal(x.numbers, y.numbers)
        assert np.array_equal(x.positions, y.positions)  # bit for bit
    other_seed = generate_clusters(12, count=3, seed=8, tag=1)
    other_tag = generate_clusters(12, count=3, seed=7, tag=2)
    assert not np.allclose(a[0].positions, other_seed[0].positions)
    assert not np.allclose(a[0].positions, other_tag[0].positions)
    # info["seed"] reproduces a single structure
    kind = b[3].info["generator"]
    again = clusters.random_nacl_cluster(12, np.random.default_rng(b[3].info["seed"]), kind)
    assert np.array_equal(again.positions, b[3].positions)


def test_invalid_sizes_are_rejected():
    with pytest.raises(ValueError):
        generate_clusters(9, count=1)
    with pytest.raises(ValueError):
        clusters.random_nacl_cluster(8, np.random.default_rng(0), kind="nope")


def test_check_cluster_detects_overlap_and_fragments():
    atoms = nacl_cube(2)
    assert check_cluster(atoms)
    close = atoms.copy()
    close.positions[1] = close.positions[0] + [1.5, 0, 0]
    assert not check_cluster(close)
    apart = atoms.copy()
    apart.positions[:4] += [20.0, 0, 0]
    assert not check_cluster(apart)


def test_nacl_cube_and_compression_series():
    cube = nacl_cube(4, a=5.6)
    assert len(cube) == 64
    assert (cube.numbers == 11).sum() == 32
    assert min_pair_distances(cube)["Na-Cl"] == pytest.approx(2.8)
    ratios = [0.85, 1.0, 1.2]
    series = compression_series(cube, ratios)
    assert [s.info["compression_ratio"] for s in series] == ratios
    for ratio, scaled in zip(ratios, series, strict=True):
        assert min_pair_distances(scaled)["Na-Cl"] == pytest.approx(2.8 * ratio)
        np.testing.assert_allclose(
            scaled.positions.mean(axis=0), cube.positions.mean(axis=0), atol=1e-12
        )
    assert cube.positions is not series[0].positions
    with pytest.raises(ValueError):
        compression_series(cube, [0.0])


def test_born_mayer_forces_match_finite_differences():
    atoms = nacl_cube(2)
    atoms.rattle(0.1, seed=1)
    atoms.calc = BornMayerNaCl(repulsion_scale=0.6)
    forces = atoms.get_forces()
    h = 1e-5
    for i, k in [(0, 0), (5, 2)]:
        energies = []
        for step in (h, -h):
            displaced = atoms.copy()
            displaced.calc = BornMayerNaCl(repulsion_scale=0.6)
            displaced.positions[i, k] += step
            energies.append(displaced.get_potential_energy())
        assert forces[i, k] == pytest.approx(-(energies[0] - energies[1]) / (2 * h), abs=1e-6)


# ----------------------------------------------------------------------------------------
# GFN2-xTB labels
# ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def na4cl4() -> Atoms:
    return generate_clusters(8, count=1, seed=0)[0]


@needs_tblite
@pytest.mark.parametrize("charge", [0, 1])
def test_xtb_labels(na4cl4, charge):
    from snapqeq.datasets.xtb import label_atoms, unpaired_electrons, xtb_singlepoint

    labelled = label_atoms(na4cl4, charge)
    assert labelled is not na4cl4 and "energy" not in na4cl4.info
    energy = labelled.info["energy"]
    forces = labelled.arrays["forces"]
    q = labelled.arrays["ref_charges"]
    assert labelled.info["charge"] == charge
    assert np.isfinite(energy) and -560.0 < energy < -480.0  # eV, Na4Cl4 in GFN2-xTB
    assert forces.shape == (8, 3) and np.isfinite(forces).all()
    np.testing.assert_allclose(forces.sum(axis=0), 0.0, atol=1e-6)  # free cluster
    assert q.sum() == pytest.approx(charge, abs=1e-8)
    assert np.all(q[na4cl4.numbers == 11] > 0) and np.all(q[na4cl4.numbers == 17] < 0)
    assert unpaired_electrons(na4cl4.numbers, charge) == charge % 2

    # forces are -dE/dr of the same energy (SCF converged to ~1e-5 eV/Å)
    h = 1e-3
    for i, k in [(0, 0), (5, 2)]:
        energies = []
        for step in (h, -h):
            displaced = na4cl4.copy()
            displaced.positions[i, k] += step
            energies.append(xtb_singlepoint(displaced, charge).energy)
        fd = -(energies[0] - energies[1]) / (2 * h)
        assert forces[i, k] == pytest.approx(fd, abs=2e-3)


@needs_tblite
def test_ionization_raises_energy(na4cl4):
    from snapqeq.datasets.xtb import xtb_singlepoint

    energies = [xtb_singlepoint(na4cl4, q).energy for q in (0, 1, 2)]
    assert energies[0] < energies[1] < energies[2]
    assert 5.0 < energies[1] - energies[0] < 15.0  # vertical ionization energy, eV


@needs_tblite
def test_total_charge_sources(na4cl4):
    from snapqeq.datasets.xtb import total_charge

    atoms = na4cl4.copy()
    assert total_charge(atoms) == 0
    atoms.set_initial_charges([1] + [0] * 7)
    assert total_charge(atoms) == 1
    atoms.info["charge"] = 2
    assert total_charge(atoms) == 2
    assert total_charge(atoms, 0) == 0
    with pytest.raises(ValueError):
        total_charge(atoms, 0.5)


@needs_tblite
def test_extxyz_round_trip(na4cl4, tmp_path):
    from snapqeq.datasets.xtb import label_atoms, read_extxyz, reference_energy_forces, write_extxyz

    labelled = [label_atoms(na4cl4, 0), label_atoms(na4cl4, 1)]
    labelled[1].info["split"] = "train"
    path = tmp_path / "data.extxyz"
    write_extxyz(path, labelled)

    back = read_extxyz(path)
    assert len(back) == 2
    for orig, new in zip(labelled, back, strict=True):
        assert new.calc is None
        assert new.info["energy"] == orig.info["energy"]  # full precision
        assert new.info["charge"] == orig.info["charge"]
        assert isinstance(new.info["charge"], int)
        np.testing.assert_allclose(new.arrays["forces"], orig.arrays["forces"], atol=1e-8)
        np.testing.assert_allclose(new.arrays["ref_charges"], orig.arrays["ref_charges"], atol=1e-8)
        np.testing.assert_allclose(new.positions, orig.positions, atol=1e-8)
    assert back[1].info["split"] == "train"

    # plain ase.io.read: energy/forces sit in a SinglePointCalculator
    plain = read(path, index=":")
    assert "energy" not in plain[0].info
    for orig, new in zip(labelled, plain, strict=True):
        energy, forces = reference_energy_forces(new)
        assert energy == orig.info["energy"]
        np.testing.assert_allclose(forces, orig.arrays["forces"], atol=1e-8)
        assert new.info["charge"] == orig.info["charge"]

    # files read either way can be written again
    write_extxyz(tmp_path / "again.extxyz", plain)
    assert read_extxyz(tmp_path / "again.extxyz")[1].info["energy"] == labelled[1].info["energy"]


@needs_tblite
def test_cache_hit_and_parallel_labelling(tmp_path):
    from snapqeq.datasets.xtb import XTBCache, cache_key, label_structures

    images = generate_clusters(8, count=2, seed=5) + generate_clusters(12, count=1, seed=5)
    charges = [0, 1, 2]
    cache = XTBCache(tmp_path / "cache")

    first = label_structures(images, charges, n_workers=2, cache=cache, progress=False)
    assert first.n_cached == 0 and not first.failed
    assert first.indices == [0, 1, 2]
    assert [a.info["charge"] for a in first.structures] == charges
    assert len(list((tmp_path / "cache").rglob("*.npz"))) == 3

    second = label_structures(images, charges, n_workers=2, cache=cache, progress=False)
    assert second.n_cached == 3 and second.cpu_time == 0.0
    for a, b in zip(first.structures, second.structures, strict=True):
        assert a.info["energy"] == b.info["energy"]
        assert np.array_equal(a.arrays["forces"], b.arrays["forces"])
        assert np.array_equal(a.arrays["ref_charges"], b.arrays["ref_charges"])

    # the key depends on geometry and total charge
    assert cache_key(images[0], 0) != cache_key(images[0], 1)
    moved = images[0].copy()
    moved.positions[0, 0] += 1e-6
    assert cache_key(moved, 0) != cache_key(images[0], 0)


@needs_tblite
def test_scf_failure_is_skipped_and_counted(monkeypatch, tmp_path):
    import snapqeq.datasets.xtb as xtb

    images = generate_clusters(8, count=2, seed=0)
    monkeypatch.setattr(xtb, "SCF_FALLBACKS", ({"max_iterations": 1},))
    with pytest.warns(xtb.SCFConvergenceWarning, match="skipping structure"):
        result = xtb.label_structures(
            images, 1, n_workers=1, cache=tmp_path / "cache", progress=False
        )
    assert result.failed == [0, 1] and result.structures == []
    with pytest.raises(xtb.SCFConvergenceError):
        xtb.xtb_singlepoint(images[0], 1)
    # failures are cached for the same SCF settings ...
    with pytest.warns(xtb.SCFConvergenceWarning):
        again = xtb.label_structures(
            images, 1, n_workers=1, cache=tmp_path / "cache", progress=False
        )
    assert again.n_cached == 2 and again.failed == [0, 1]
    # ... and recomputed once the settings tried change
    monkeypatch.undo()
    with warnings.catch_warnings():
        warnings.simplefilter("error", xtb.SCFConvergenceWarning)
        fixed = xtb.label_structures(
            images, 1, n_workers=1, cache=tmp_path / "cache", progress=False
        )
    assert fixed.n_cached == 0 and fixed.failed == [] and len(fixed.structures) == 2


# ----------------------------------------------------------------------------------------
# make_data.py command line
# ----------------------------------------------------------------------------------------


def _load_make_data():
    return load_script(MAKE_DATA, "make_data")


def test_make_data_splits():
    make_data = _load_make_data()
    sizes = make_data.sizes_by_split()
    assert sizes["train"] == (8, 12, 16, 20, 24, 28, 32, 36, 40)
    assert sizes["test"] == (64,)
    assert sizes["validation"] == (44, 48, 52, 56, 60, 68, 72, 76, 80)


def test_make_data_refuses_to_overwrite(tmp_path):
    (tmp_path / "train.extxyz").write_text("keep me")
    proc = subprocess.run(
        [sys.executable, str(MAKE_DATA), "--small", "--out", str(tmp_path), "--no-cache"],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT / "python"), "PATH": ""},
        timeout=60,
    )
    assert proc.returncode == 1
    assert "--force" in proc.stderr and "train.extxyz" in proc.stderr
    assert (tmp_path / "train.extxyz").read_text() == "keep me"

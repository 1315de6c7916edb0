"""Pieces of examples/si_olcao/run.py that its numbers rest on: the stratified held-out split,
the cross-validation folds, and the cached-Gaussian evaluation of V(r) (against
snapqeq.io.olcao.gaussian_potential_grid)."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import load_script

from snapqeq.io import olcao

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "si_olcao"


@pytest.fixture(scope="module")
def run():
    sys.path.insert(0, str(EXAMPLE))
    try:
        module = load_script(EXAMPLE / "run.py", "si_olcao_run")
    finally:
        sys.path.remove(str(EXAMPLE))
    return module


@pytest.fixture(scope="module")
def images(run):
    return olcao.read_site_targets(run.DATA)[0]


def test_split_is_stratified_fixed_and_disjoint(run, images):
    kinds = [a.info["kind"] for a in images]
    train, test = run.stratified_split(kinds, run.TEST_FRACTION, run.SPLIT_SEED)
    assert sorted(train + test) == list(range(len(images))) and not set(train) & set(test)
    per_kind = Counter(kinds[k] for k in test)
    assert per_kind == {k: round(0.25 * n) for k, n in Counter(kinds).items()}
    assert (train, test) == run.stratified_split(kinds, run.TEST_FRACTION, run.SPLIT_SEED)
    names = [images[k].info["structure_name"] for k in test]
    assert "crystal_08_ideal" in names  # the structure of the shipped OLCAO run is held out


def test_folds_partition_each_kind_evenly(run):
    kinds = ["a"] * 9 + ["b"] * 4 + ["c"] * 2
    parts = run.folds(kinds, 4, 0)
    assert sorted(k for p in parts for k in p) == list(range(len(kinds)))
    for kind, n in Counter(kinds).items():
        counts = [sum(kinds[k] == kind for k in p) for p in parts]
        assert max(counts) - min(counts) <= 1 and sum(counts) == n


def test_cached_gaussians_give_the_grid_potential(run, images):
    atoms = next(a for a in images if a.info["structure_name"] == "vacancy_07_00")
    alphas = olcao.exponent_series("Si")
    delta = atoms.arrays["start_coefficients"] - atoms.arrays["potential_coefficients"]
    grids = run.Grids.of(atoms, alphas, 1.5)
    (v,), _ = olcao.gaussian_potential_grid(atoms, [delta], alphas, spacing=1.5)
    got = grids.potential_errors(delta)
    assert got["rms"] == pytest.approx(np.sqrt(np.mean(v**2)), rel=1e-5)
    assert got["max"] == pytest.approx(np.abs(v).max(), rel=1e-5)
    assert got["rms_shift_removed"] == pytest.approx(np.std(v), rel=1e-5)
    # the radial points: at r = 0 of site s the own Gaussians give sum_i dA_si (+ neighbours)
    radial = grids.radial_errors(delta)
    assert radial.shape == (len(run.RADII), 6 * len(atoms))
    at_nuclei = radial[0].reshape(len(atoms), 6)
    np.testing.assert_allclose(at_nuclei, np.repeat(at_nuclei[:, :1], 6, axis=1), rtol=1e-6)
    assert np.all(np.abs(at_nuclei[:, 0] - delta.sum(1)) < 0.05 * np.abs(delta.sum(1)))

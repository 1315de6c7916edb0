"""The minima-hopping example runs end to end with the shipped model (ASE MinimaHopping)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from ase.io import read
from conftest import load_script

from snapqeq.calculators.cent import SnapQEqCalculator

ROOT = Path(__file__).resolve().parents[1]


def load_example():
    return load_script(ROOT / "examples" / "minima_hopping" / "run.py", "minima_hopping_example")


def test_cluster_names_and_fingerprint():
    example = load_example()
    assert example.parse_cluster("Na4Cl4") == (4, 4, 0)
    assert example.parse_cluster("Na4Cl4+") == (4, 4, 1)
    assert example.parse_cluster("Na4Cl4-") == (4, 4, -1)
    assert example.parse_cluster("Na6Cl4") == (6, 4, 0)
    assert example.parse_cluster("Na6Cl4(2+)") == (6, 4, 2)
    for bad in ("NaCl", "Na4Cl4++", "K4Cl4", "Na4Cl4(2)", "Na4Cl4 +"):
        with pytest.raises(ValueError, match="cluster"):
            example.parse_cluster(bad)
    atoms, _ = example.start_structure("Na4Cl4", seed=0)
    moved = atoms.copy()
    moved.rotate(37, (1, 2, 3), center="COP")
    moved.translate((1.0, -2.0, 0.5))
    moved = moved[np.random.default_rng(0).permutation(len(moved))]
    assert example.fingerprint_distance(atoms, moved) < 1e-10
    moved.positions[0] += 0.3
    assert example.fingerprint_distance(atoms, moved) > 0.1


@pytest.mark.slow
def test_minima_hopping_example(tmp_path):
    example = load_example()
    collected = tmp_path / "collected.extxyz"
    summary = example.main(["--out", str(tmp_path), "--clusters", "Na4Cl4", "Na4Cl4+",
                            "--minima", "2", "--collect", str(collected)])
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert (tmp_path / "history.png").stat().st_size > 10_000
    assert (tmp_path / "Na4Cl4" / "history.png").exists()  # ASE's MHPlot
    calc = SnapQEqCalculator(example.DEFAULT_MODEL)
    for name, charge in (("Na4Cl4", 0), ("Na4Cl4+", 1)):
        s = summary[name]
        assert s["total_charge"] == charge and s["n_atoms"] == 8
        assert len(s["history"]) == 3  # initial relaxation + 2 hops
        minima = read(tmp_path / f"minima_{name}.extxyz", ":")
        assert len(minima) == s["n_minima"] >= 1
        energies = [m.get_potential_energy() for m in minima]  # extxyz -> calc results
        assert energies == sorted(energies) and energies[0] == s["lowest_energy_eV"]
        assert np.all(np.isfinite(s["reference_energies_eV"]))
        for m, energy in zip(minima, energies, strict=True):
            assert m.get_charges().sum() == pytest.approx(charge, abs=1e-8)
            m.calc = SnapQEqCalculator(calc.model, total_charge=charge)
            assert m.get_potential_energy() == pytest.approx(energy, abs=1e-8)
            assert np.abs(m.get_forces()).max() < 0.03  # relaxed to fmax 0.02 eV/A
    # --collect: GFN2-xTB-labelled minima and MD frames in the training-data format
    frames = read(collected, ":")
    assert len(frames) >= sum(s["n_minima"] for s in summary.values())
    for atoms in frames:
        assert atoms.info["split"] == "train" and atoms.info["charge"] in (0, 1)
        assert np.isfinite(atoms.get_potential_energy())
        assert atoms.get_forces().shape == (8, 3)
        assert atoms.arrays["ref_charges"].sum() == pytest.approx(atoms.info["charge"], abs=1e-6)
    with pytest.raises(SystemExit):  # never overwrites
        example.main(["--out", str(tmp_path / "again"), "--collect", str(collected)])


@pytest.mark.slow
def test_hop_that_leaves_the_model_domain_is_rejected_not_fatal(tmp_path, monkeypatch):
    """With the distance floor at 1.02 x the training minimum, hot MD trips the
    calculator's check; the search logs a rejected hop and carries on."""
    example = load_example()
    atoms, _ = example.start_structure("Na4Cl4", seed=0)
    atoms.calc = SnapQEqCalculator(example.DEFAULT_MODEL, min_distance_factor=1.02)
    monkeypatch.chdir(tmp_path)
    with example.tqdm(disable=True) as bar:
        search = example.ClusterMinimaHopping(atoms, bar, rng=np.random.RandomState(0),
                                              **dict(example.SETTINGS, T0=3000.0))
        search(totalsteps=3)
    log = (tmp_path / "hop.log").read_text()
    assert "hop rejected" in log
    assert log.count("ene:") >= 3  # every step still ends in a relaxed structure

"""RuNNer/n2p2 input.data reading, reference-data checks and configuration validation,
through the library and the `snapqeq` command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from ase.io import write

from snapqeq.io.structures import DataKeys, check_reference_keys, read_structures
from snapqeq.training.trainer import validate_config
from snapqeq.units import BOHR, HARTREE

ROOT = Path(__file__).resolve().parents[1]
CARBON = ROOT / "examples" / "ko2021_carbon_chain" / "data" / "input.data"


def _first_frame_raw(path: Path) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Positions (bohr), forces (Ha/bohr), energy (Ha) and total charge of frame 0, parsed
    here independently of ASE."""
    pos, forces, energy, charge = [], [], None, None
    for line in path.read_text().splitlines():
        w = line.split()
        if w and w[0] == "atom":
            pos.append([float(x) for x in w[1:4]])
            forces.append([float(x) for x in w[7:10]])
        elif w and w[0] == "energy":
            energy = float(w[1])
        elif w and w[0] == "charge":
            charge = float(w[1])
        elif w and w[0] == "end":
            break
    return np.array(pos), np.array(forces), energy, charge


def test_runner_data_in_angstrom_ev_with_charges():
    frames = read_structures(CARBON)
    assert len(frames) == 102
    pos, forces, energy, charge = _first_frame_raw(CARBON)
    a = frames[0]
    # ase.units follows an older CODATA edition than these constants: 6e-10 relative
    np.testing.assert_allclose(a.positions, pos * BOHR, rtol=1e-8)
    np.testing.assert_allclose(a.arrays["forces"], forces * HARTREE / BOHR, rtol=1e-6)
    assert a.info["energy"] == pytest.approx(energy * HARTREE, rel=1e-7)
    assert a.info["charge"] == charge == 0.0
    charges = [f.info["charge"] for f in frames]
    assert set(charges) == {0.0, 1.0}
    for f in frames:  # Hirshfeld charges sum to the total charge
        assert f.arrays["ref_charges"].sum() == pytest.approx(f.info["charge"], abs=1e-3)
        assert not f.get_initial_charges().any()


def test_missing_total_charge_and_unknown_keys_are_errors(tmp_path):
    frames = read_structures(CARBON)[:6]
    check_reference_keys(frames, DataKeys(), "ok", need_energy=True)
    del frames[2].info["charge"]
    with pytest.raises(ValueError, match="structure 2 has no total charge"):
        check_reference_keys(frames, DataKeys(), "f")
    for f in frames:
        f.info.pop("charge", None)
    cation = next(k for k, f in enumerate(frames) if abs(f.arrays["ref_charges"].sum()) > 0.5)
    with pytest.raises(ValueError, match=f"structure {cation} .* sum to 1"):
        check_reference_keys(frames, DataKeys(), "f")
    with pytest.raises(ValueError, match="no structure has the key 'chrg'"):
        check_reference_keys(read_structures(CARBON)[:3], DataKeys(charge="chrg"), "f")
    no_energy = read_structures(CARBON)[:3]
    del no_energy[1].info["energy"]
    with pytest.raises(ValueError, match="1 of 3 structures have no reference energy"):
        check_reference_keys(no_energy, DataKeys(), "f", need_energy=True)


@pytest.mark.parametrize("raw, match", [
    ({"loss_weights": {"energy": 1.0, "forcse": 0.1}}, "section 'loss_weights': unknown key "
     "'forcse'; allowed: energy, forces, charges"),
    ({"descriptor": {"twojmax": 6, "rcutfac": 1, "radii": {}, "weights": {}, "twojmx": 2}},
     "section 'descriptor': unknown key 'twojmx'"),
    ({"descriptor": {"twojmax": 6}}, "section 'descriptor' lacks rcutfac, radii, weights"),
    ({"keys": {"charg": "q"}}, "section 'keys': unknown key 'charg'"),
    ({"data": {"train": "a", "tset": "b"}}, "section 'data': unknown key 'tset'"),
    ({"epoch": 3}, "unknown key 'epoch'"),
    ({"lr_schedule": "step"}, "lr_schedule must be one of constant, cosine"),
])
def test_config_validation_names_the_key(raw, match):
    with pytest.raises(ValueError, match=match):
        validate_config({"data": "x.extxyz", **raw}, "c.yaml")


def _cli(*args, cwd):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "snapqeq.cli.main", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def _config(tmp_path, data, **extra) -> Path:
    cfg = {"data": str(data), "split": "random", "output": str(tmp_path / "out"),
           "descriptor": {"twojmax": 2, "rcutfac": 1.0, "radii": {"C": 2.1, "H": 2.1},
                          "weights": {"C": 1.0, "H": 0.5}},
           "widths": {"C": 0.73, "H": 0.31}, "hardness": {"C": 10.0, "H": 10.0},
           "epochs": 1, "progress": False, **extra}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_cli_train_refuses_silent_misreads(tmp_path):
    frames = read_structures(CARBON)[:8]
    for f in frames:
        f.info.pop("charge")
    data = tmp_path / "no_charge.extxyz"
    write(data, frames)
    r = _cli("train", str(_config(tmp_path, data)), cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "has no total charge" in r.stderr and "sum to 1" in r.stderr
    r = _cli("train", str(_config(tmp_path, CARBON, keys={"charge": "chrg"})), cwd=tmp_path)
    assert r.returncode == 2 and "no structure has the key 'chrg'" in r.stderr
    r = _cli("train", str(_config(tmp_path, CARBON, loss_weights={"forcse": 1.0})),
             cwd=tmp_path)
    assert r.returncode == 2 and "unknown key 'forcse'" in r.stderr


@pytest.mark.slow
def test_cli_trains_and_tests_on_runner_data(tmp_path):
    """`snapqeq train` and `snapqeq test` on input.data directly; test refuses data
    without energies instead of printing NaN."""
    frames = read_structures(CARBON)[:12]
    data = tmp_path / "input.data"
    data.write_text(_runner_subset(CARBON, 12))
    r = _cli("train", str(_config(tmp_path, data)), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    model = tmp_path / "out" / "model.pt"
    r = _cli("test", str(data), "--model", str(model), "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    metrics = json.loads(r.stdout)
    assert metrics["all"]["count"] == 12 and np.isfinite(metrics["all"]["energy_rmse_mev"])
    assert {"neutral", "ionized"} <= set(metrics)
    for f in frames:
        del f.info["energy"]
    write(tmp_path / "no_energy.extxyz", frames)
    r = _cli("test", str(tmp_path / "no_energy.extxyz"), "--model", str(model), cwd=tmp_path)
    assert r.returncode == 2 and "have no reference energy" in r.stderr and "nan" not in r.stdout


def _runner_subset(path: Path, n: int) -> str:
    out, count = [], 0
    for line in path.read_text().splitlines(keepends=True):
        out.append(line)
        if line.startswith("end"):
            count += 1
            if count == n:
                break
    return "".join(out)


@pytest.mark.slow
def test_carbon_chain_example_interface(tmp_path):
    """The benchmark example: a few epochs on a few structures (a committee of 2 trained in
    two processes), files and the JSON line."""
    out = tmp_path / "cc"
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "ko2021_carbon_chain" / "run.py"),
                        "--train", str(CARBON), "--out", str(out), "--epochs", "2",
                        "--limit", "12", "--committee", "2", "--jobs", "2"],
                       capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr
    last = json.loads(r.stdout.strip().splitlines()[-1])
    assert set(last) == {"E_meV_atom", "F_meV_A", "q_e", "train_s"}
    assert all(np.isfinite(v) and v > 0 for v in last.values())
    for name in ("report.md", "metrics.json", "parity_energy.png", "parity_forces_charges.png",
                 "training/learning_curve.png", "training/model.pt"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["sizes"]["test"] == 20  # the stated fixed 20 % of the 102 structures
    assert "4G-HDNNP (paper)" in (out / "report.md").read_text()

"""The README runs as written: its Python snippet, its LAMMPS deck (serial and with the
mpirun it names), its training commands with examples/train.yaml; the package metadata a
user expects (LICENSE, CITATION.cff, the pair style page) and the API reference build."""

from __future__ import annotations

import dataclasses
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from snapqeq import __version__
from snapqeq.lammps.runtime import lammps_environment

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def section(title: str) -> str:
    """The README text from heading ``## title`` to the next level-2 heading."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, re.S | re.M)
    assert match, f"README has no section {title!r}"
    return match.group(1)


def code_blocks(text: str, language: str = "") -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, re.S | re.M)


@pytest.fixture
def user_dir(tmp_path) -> Path:
    """A folder that looks like the repository root to the README's relative paths
    (examples/ and .venv/), so that nothing is written into the checkout."""
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))
    return tmp_path


def run(command: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(shlex.split(command), cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=lammps_environment())
    assert proc.returncode == 0, (command, proc.stdout[-3000:], proc.stderr[-3000:])
    return proc


def test_python_snippet_runs_as_written(user_dir):
    (snippet,) = code_blocks(section("Python API"), "python")
    (user_dir / "snippet.py").write_text(snippet)
    proc = run(".venv/bin/python snippet.py", user_dir)
    energy = float(proc.stdout.strip().splitlines()[-1])  # the SNAP energy it prints (eV)
    assert np.isfinite(energy) and energy < 0


def test_lammps_deck_runs_as_written(plugin, user_dir):
    """The deck with the serial and the MPI command lines the README gives."""
    text = section("LAMMPS")
    deck = next(b for b in code_blocks(text) if "pair_style snapqeq" in b)
    assert "plugin load" not in deck
    name, serial = re.search(r"Saved as `(\S+)` and run from the repository root with "
                             r"`([^`]+)`", text).groups()
    (parallel,) = re.findall(r"`(\.venv/bin/mpirun [^`]+)`", text)
    (user_dir / name).write_text(deck)
    energies = []
    for command in (serial, parallel):
        out = run(command, user_dir).stdout
        rows = re.findall(r"^\s+100\s+(\S+)\s+(\S+)\s+\S+\s+\S+\s*$", out, flags=re.M)
        assert rows, out[-2000:]
        energies.append(float(rows[-1][1]))
    assert energies[0] == pytest.approx(energies[1], rel=1e-8)
    dump = (user_dir / "dump.nacl").read_text().splitlines()
    last = dump[-64:]  # the final frame: id type x y z q of 64 atoms
    assert sum(float(line.split()[-1]) for line in last) == pytest.approx(1.0, abs=1e-8)


@pytest.mark.slow
def test_training_commands_run_as_written(user_dir):
    (block,) = [b for b in code_blocks(section("Training a CENT model"))
                if "snapqeq train" in b]
    bin_dir = Path(sys.prefix) / "bin"
    for line in block.strip().splitlines():
        command = line.split("#")[0].strip().replace(" [--json]", "")
        run(f"{bin_dir}/{command}", user_dir)
    # the exported model carries the training data's envelope (the guard's ranges)
    from snapqeq.io.model_file import load_model

    meta = load_model(user_dir / "model.pt").metadata
    assert meta["total_charge_range"] == [0.0, 2.0]
    assert set(meta["descriptor_range"]) == {"Na", "Cl"}


def test_train_yaml_documents_every_config_key():
    from snapqeq.training.trainer import TrainConfig

    raw = yaml.safe_load((ROOT / "examples" / "train.yaml").read_text())
    fields = [f.name for f in dataclasses.fields(TrainConfig)]
    assert sorted(raw) == sorted(fields)
    text = section("Training a CENT model")
    assert all(f"`{name}`" in text for name in fields), [n for n in fields
                                                          if f"`{n}`" not in text]
    assert TrainConfig.from_yaml(ROOT / "examples" / "train.yaml").epochs == raw["epochs"]


def test_license_citation_and_pair_style_page():
    license_text = (ROOT / "LICENSE").read_text()
    assert "GNU GENERAL PUBLIC LICENSE" in license_text and "Version 2, June 1991" in license_text
    assert "or (at your option) any later version" in license_text
    assert 'license = "GPL-2.0-or-later"' in (ROOT / "pyproject.toml").read_text()
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["version"] == __version__
    assert cff["license"] == "GPL-2.0-or-later"
    dois = {ref["doi"] for ref in cff["references"]}
    assert {"10.1103/PhysRevB.92.045131", "10.1145/3569951.3597581"} <= dois
    page = (ROOT / "doc" / "pair_snapqeq.md").read_text()
    for heading in ("Syntax", "Examples", "Description", "Restrictions", "Related commands",
                    "Default"):
        assert re.search(rf"^## {heading}$", page, re.M), heading
    # every keyword of the pair style is documented on its page
    for keyword in ("total_charge", "tol", "ewald_accuracy", "maxiter", "olcao", "guard",
                    "min_distance_factor"):
        assert f"`{keyword}" in page, keyword


@pytest.mark.slow
def test_api_reference_builds_without_warnings(tmp_path):
    """What `make docs` runs; -W turns every warning into a failure."""
    proc = subprocess.run([sys.executable, "-m", "sphinx", "-E", "-q", "-W", "--keep-going",
                           "-b", "html", str(ROOT / "docs"), str(tmp_path / "html")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-5000:]
    api = (tmp_path / "html" / "api.html").read_text()
    for name in ("SnapQEqCalculator", "training_envelope", "build_plugin", "TrainConfig"):
        assert name in api, name
    assert "\ndocs: install\n" in (ROOT / "Makefile").read_text()

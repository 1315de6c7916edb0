"""The ``snapqeq`` command line as a user meets it: run as a subprocess, every bad input is
one line ``snapqeq: error: ...`` with exit code 2 and no traceback; ``--version``; help
text for every option; the wheel carries the LAMMPS plugin sources."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from snapqeq import __version__
from snapqeq.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[1]
SNAPQEQ = [sys.executable, "-m", "snapqeq.cli.main"]


def run(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*SNAPQEQ, *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300, env=env)


def assert_clear_error(proc: subprocess.CompletedProcess, pattern: str) -> None:
    """Exit code 2, one stderr line naming the problem, no traceback."""
    import re

    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("snapqeq: error: "), proc.stderr
    assert re.search(pattern, lines[0]), lines[0]


def test_version(tmp_path):
    proc = run("--version", cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == f"snapqeq {__version__}"


def test_train_with_a_missing_config(tmp_path):
    assert_clear_error(run("train", "nope.yaml", cwd=tmp_path),
                       r"configuration file not found: nope.yaml")


def test_export_of_a_missing_training_folder(tmp_path):
    assert_clear_error(run("export", "nonexist", "--out", "m.pt", cwd=tmp_path),
                       r"nonexist does not exist: pass the output folder of `snapqeq train`")
    (tmp_path / "empty").mkdir()
    assert_clear_error(run("export", "empty", "--out", "m.pt", cwd=tmp_path),
                       r"empty has no config.yaml")


def test_checkpoint_passed_as_model(tmp_path):
    """A torch.save checkpoint (what snapqeq train writes next to model.pt) is named as
    such, with the command that turns it into a model file."""
    torch.save({"model": {"w": torch.zeros(2)}, "epoch": 3}, tmp_path / "checkpoint_best.pt")
    (tmp_path / "d.extxyz").write_text(  # complete reference data: only the model is wrong
        "2\nProperties=species:S:1:pos:R:3:forces:R:3 energy=-10.0 charge=0 pbc=\"F F F\"\n"
        "Na 0 0 0 0 0 0\nCl 2.5 0 0 0 0 0\n")
    assert_clear_error(run("test", "d.extxyz", "--model", "checkpoint_best.pt", cwd=tmp_path),
                       r"checkpoint_best.pt is a training checkpoint, not a model file: run "
                       r"`snapqeq export")


def test_missing_structure_file(tmp_path):
    assert_clear_error(run("descriptors", "nope.xyz", cwd=tmp_path),
                       r"nope.xyz: No such file or directory")


def test_build_plugin_without_sources_is_a_clear_error(tmp_path):
    """A copy of the package outside a checkout and without plugin_src/ (a broken
    install) says what is missing instead of a traceback."""
    shutil.copytree(ROOT / "python" / "snapqeq", tmp_path / "pkg" / "snapqeq",
                    ignore=shutil.ignore_patterns("*.so", "__pycache__", "plugin_src"))
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path / "pkg"),
           "XDG_CACHE_HOME": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-c", "import sys; from snapqeq.cli.main import main; "
                           "sys.exit(main(['build-lammps-plugin']))"], capture_output=True,
                          text=True, cwd=tmp_path, env=env, timeout=120)
    assert_clear_error(proc, r"the LAMMPS plugin sources are missing: .*plugin_src/plugin/"
                             r"CMakeLists.txt")


def _options(parser: argparse.ArgumentParser, prefix: str = "snapqeq"):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _options(sub, f"{prefix} {name}")
        elif not isinstance(action, argparse._HelpAction):
            yield prefix, action


def test_every_option_has_help_text():
    missing = [f"{cmd} {a.dest}" for cmd, a in _options(build_parser())
               if not a.help or a.help == argparse.SUPPRESS]
    assert not missing, missing
    assert len(list(_options(build_parser()))) > 20


@pytest.mark.slow
def test_wheel_carries_the_plugin_sources(tmp_path):
    """pip wheel of the checkout: every plugin/kernel source is inside, and the installed
    package finds them outside the checkout (what `snapqeq build-lammps-plugin` builds)."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps",
                    "-q", str(ROOT), "-w", str(tmp_path)], check=True, cwd=ROOT, timeout=900)
    (wheel,) = tmp_path.glob("snapqeq-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"snapqeq/plugin_src/{p.relative_to(ROOT)}"
                for folder in ("plugin", "pair_style", "kernel")
                for p in (ROOT / folder).iterdir()
                if p.is_file() and (p.suffix in (".cpp", ".h") or p.name == "CMakeLists.txt")}
    assert "snapqeq/plugin_src/plugin/CMakeLists.txt" in expected
    assert expected <= names, sorted(expected - names)
    assert not any("plugin/build" in n for n in names)
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(target), str(wheel)], check=True, timeout=300)
    proc = subprocess.run([sys.executable, "-c", "import snapqeq.lammps.plugin as p; "
                           "print(p.source_dir()); print(p.default_build_dir())"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120,
                          env={"PYTHONPATH": str(target), "HOME": str(tmp_path),
                               "PATH": "/usr/bin:/bin"})
    src, build = proc.stdout.split()
    assert Path(src) == target / "snapqeq" / "plugin_src" / "plugin"
    assert Path(build) == tmp_path / ".cache" / "snapqeq" / f"plugin-{__version__}"

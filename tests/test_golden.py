"""The golden reference (tests/golden/reference.yaml), in the manner of LAMMPS' unittest
force-style YAMLs: one committed model, four configurations (free cluster and periodic
cell, neutral and charged +1), energies, forces, charges and stress before and after five
velocity-Verlet steps.  Every engine meets it to the YAML's ``epsilon`` (1e-9 relative):

- the ASE calculator (which wrote it; a changed number here is a changed result);
- the differentiable training path (:func:`snapqeq.training.potential.predict` on the model built
  afresh from its seed, so the committed TorchScript file is the model's export);
- ``pair_style snapqeq`` in ``lmp`` (newton on) on 1 and 2 MPI ranks, with ``fix nve``.

The YAML is regenerated only by ``python tests/golden/make_golden.py --write --force``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import load_script
from test_lammps_plugin import write_data

from snapqeq.descriptors.bispectrum import Bispectrum
from snapqeq.io.model_file import load_model
from snapqeq.lammps.runtime import lammps_environment
from snapqeq.training.data import make_sample
from snapqeq.training.potential import predict

HERE = Path(__file__).resolve().parent
VENV_BIN = Path(sys.prefix) / "bin"
LAMMPS_TO_ASE = [0, 1, 2, 5, 4, 3]  # xx yy zz xy xz yz -> xx yy zz yz xz xy
NKTV2P = 1.6021765e6  # LAMMPS' metal units: eV/Angstrom^3 -> bar (force->nktv2p)


golden = load_script(HERE / "golden" / "make_golden.py", "make_golden")
REFERENCE = golden.load_reference()
EPSILON = REFERENCE["epsilon"]
CONFIGURATIONS = sorted(REFERENCE["configurations"])


def assert_matches(got: dict, entry: dict, prefix: str, what: str) -> None:
    """Every quantity of ``got`` within EPSILON (relative to its largest reference value)."""
    for key, value in got.items():
        ref = entry[f"{prefix}_{key}"]
        err = golden.max_relative(value, ref)
        assert err < EPSILON, f"{what}: {prefix}_{key} differs by {err:.2e} relative"


def test_reference_is_complete():
    """Four configurations, each with every quantity it must carry."""
    assert CONFIGURATIONS == ["cluster_charged", "cluster_neutral", "periodic_charged",
                              "periodic_neutral"]
    for name, entry in REFERENCE["configurations"].items():
        keys = ["energy", "forces", "charges"] + (["stress"] if entry["cell"] else [])
        for prefix in ("init", "run"):
            for key in keys:
                assert f"{prefix}_{key}" in entry, (name, prefix, key)
        assert abs(sum(entry["init_charges"]) - entry["total_charge"]) < 1e-10
        assert abs(sum(entry["run_charges"]) - entry["total_charge"]) < 1e-10
        # the five steps moved the system: the check after them is not the initial one
        assert golden.max_relative(entry["run_forces"], entry["init_forces"]) > 1e-3


def test_committed_model_file_is_the_seeded_model():
    """The committed TorchScript file carries the metadata and the network of
    make_golden.build_model() (the same electronegativities to 1e-14)."""
    loaded = load_model(golden.MODEL)
    assert loaded.metadata["elements"] == golden.ELEMENTS
    model = golden.build_model()
    entry = REFERENCE["configurations"]["periodic_charged"]
    atoms = golden.structure(entry)
    b = torch.tensor(Bispectrum.from_dict(golden.descriptor()).compute(atoms))
    species = torch.tensor([golden.ELEMENTS.index(s) for s in atoms.get_chemical_symbols()])
    chi_file = loaded.module(b, species).detach().numpy()
    chi_seed = model.electronegativity(b, species).detach().numpy()
    assert np.abs(chi_file - chi_seed).max() < 1e-14 * np.abs(chi_seed).max()


@pytest.mark.parametrize("name", CONFIGURATIONS)
def test_ase_calculator(name):
    entry = REFERENCE["configurations"][name]
    atoms = golden.structure(entry)
    first, last, _ = golden.ase_run(golden.MODEL, atoms, entry["total_charge"],
                                    np.array(entry["velocities"]))
    assert_matches(first, entry, "init", "ASE calculator")
    assert_matches(last, entry, "run", "ASE calculator")


@pytest.mark.parametrize("name", CONFIGURATIONS)
def test_training_path(name):
    """snapqeq.training.potential.predict (torch autograd through the bispectrum and the QEq layer)
    on the initial configuration."""
    entry = REFERENCE["configurations"][name]
    atoms = golden.structure(entry)
    atoms.info["charge"] = entry["total_charge"]
    sample = make_sample(atoms, Bispectrum.from_dict(golden.descriptor()))
    out = predict(golden.build_model(), sample, accuracy=1e-13)
    got = {"energy": float(out["energy"].detach()), "forces": out["forces"].detach().numpy(),
           "charges": out["charges"].detach().numpy()}
    assert_matches(got, entry, "init", "training path")


# ----------------------------------------------------------------------------- LAMMPS
DECK = """\
plugin load {plugin}
units metal
atom_style charge
newton on
boundary {boundary}
read_data golden.data
pair_style snapqeq {model} total_charge {charge} {options}
pair_coeff * * {elements}
neighbor 1.0 bin
timestep {timestep}
fix nve all nve
compute virial all pressure NULL virial
thermo_style custom step pe c_virial[*]
thermo_modify format float %.17g
thermo {steps}
dump out all custom {steps} out.dump id fx fy fz q
dump_modify out sort id format float %.17g
run {steps}
"""


def _lammps_snapshots(run_dir: Path, stdout: str, periodic: bool) -> dict[str, dict]:
    """{'init': ..., 'run': ...} from the thermo rows and the dump of steps 0 and STEPS."""
    lines = stdout.splitlines()
    head = next(k for k, line in enumerate(lines) if line.split()[:2] == ["Step", "PotEng"])
    rows = [np.array(lines[head + k].split(), dtype=float) for k in (1, 2)]
    frames = run_dir.joinpath("out.dump").read_text().split("ITEM: TIMESTEP")[1:]
    out = {}
    for prefix, row, frame in zip(("init", "run"), rows, frames, strict=True):
        n = int(frame.split("ITEM: NUMBER OF ATOMS")[1].split()[0])
        # after the step: NUMBER OF ATOMS, n, BOX BOUNDS and its 3 rows, ATOMS header
        table = np.array(frame.split("\n", 9)[-1].split(), dtype=float).reshape(n, 5)
        snap = {"energy": row[1], "forces": table[:, 1:4], "charges": table[:, 4]}
        if periodic:  # pressure (bar) of the virial alone -> ASE stress (eV/Angstrom^3)
            snap["stress"] = -row[2:8][LAMMPS_TO_ASE] / NKTV2P
        out[prefix] = snap
    return out


@pytest.mark.parametrize("nprocs", [1, 2])
@pytest.mark.parametrize("name", CONFIGURATIONS)
def test_lammps_plugin(plugin, tmp_path, name, nprocs):
    entry = REFERENCE["configurations"][name]
    periodic = entry["cell"] is not None
    write_data(tmp_path / "golden.data", golden.structure(entry), golden.ELEMENTS,
               masses=golden.MASSES, velocities=entry["velocities"])
    (tmp_path / "in.lmp").write_text(DECK.format(
        plugin=plugin, boundary=entry["boundary"], model=golden.MODEL,
        charge=entry["total_charge"], options=REFERENCE["pair_style_options"],
        elements=" ".join(golden.ELEMENTS), timestep=REFERENCE["timestep"],
        steps=REFERENCE["steps"]))
    cmd = [str(VENV_BIN / "mpirun"), "-np", str(nprocs), str(VENV_BIN / "lmp"),
           "-in", "in.lmp", "-log", "none"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600,
                         env=lammps_environment())
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert f"on {nprocs} procs" in out.stdout
    snapshots = _lammps_snapshots(tmp_path, out.stdout, periodic)
    for prefix, snap in snapshots.items():
        assert_matches(snap, entry, prefix, f"pair_style snapqeq, np {nprocs}")

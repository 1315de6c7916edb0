"""Committee models (``committee: n``): one file, the members' mean and spread.

A 3-member committee (CENT + short-range network, learned hardness, so the members differ
in every per-member quantity) is trained through ``snapqeq train`` on the small NaCl set.
The oracle of the committee results is the members' own single-model files
(``member_k/model.pt``, written by each member's training run and evaluated by the
single-model code path): the committee mean and spread must follow from them exactly.
The LAMMPS plugin (Python module, and ``mpirun -np 1/2``) must agree with the ASE
calculator.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from ase.calculators.calculator import CalculatorSetupError
from conftest import assert_close, rewrite_model_metadata
from test_lammps_plugin import (
    VOIGT_TO_LAMMPS,
    _expect_error,
    _run_np1_np2,
    boundary_of,
    nacl_cell,
    nacl_cluster,
    setup_commands,
    write_data,
)

from snapqeq.calculators.cent import SnapQEqCalculator
from snapqeq.cli.main import main as cli_main
from snapqeq.io.model_file import load_model
from snapqeq.lammps.plugin import load_plugin
from snapqeq.lammps.runtime import open_lammps
from snapqeq.models.cent import CENT
from snapqeq.models.committee import CommitteeCheck, committee_statistics
from snapqeq.training.export import export_committee, export_model

N_MEMBERS = 3
ROOT = Path(__file__).resolve().parents[1]
SOLVER = {"method": "dense", "tol": 1e-13, "accuracy": 1e-13}
RTOL = 1e-8  # LAMMPS vs ASE


def _train_committee(root: Path, status: int = 0, **changes) -> Path:
    """``snapqeq train`` of a 3-member committee in ``root`` (exit ``status``); returns its
    output folder."""
    data = ROOT / "examples" / "nacl_small"
    config = {
        "data": {k: str(data / f"{k}.extxyz") for k in ("train", "validation", "test")},
        "output": str(root / "run"), "cache": str(root / "cache"),
        "descriptor": {"twojmax": 2, "rcutfac": 1.0, "radii": {"Na": 3.0, "Cl": 3.0},
                       "weights": {"Na": 1.0, "Cl": 0.5}},
        "hidden": [3, 3], "short_hidden": [3], "learn_hardness": True,
        "epochs": 2, "batch_size": 8, "progress": False, "committee": N_MEMBERS,
        **changes,
    }
    path = root / "committee.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    assert cli_main(["train", str(path)]) == status
    return root / "run"


@pytest.fixture(scope="module")
def committee(tmp_path_factory) -> Path:
    """The output folder of a 3-member committee trained one member after the other."""
    return _train_committee(tmp_path_factory.mktemp("committee"))


def _calc(path, **kw) -> SnapQEqCalculator:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # descriptor-range warnings of a tiny training set
        return SnapQEqCalculator(path, guard="warn", **SOLVER, **kw)


def _evaluate(calc, atoms, prop: str = "forces") -> dict:
    """The calculator's results for ``prop`` ("forces": everything; "energy": no forces)."""
    atoms = atoms.copy()
    atoms.calc = calc
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="snapqeq guard")
        calc.get_property(prop, atoms)
    return dict(calc.results)


def _structures():
    cluster = nacl_cluster(seed=1)
    cluster.info["charge"] = 1.0
    return {"cluster": cluster, "periodic": nacl_cell(seed=2)}


# ------------------------------------------------------------------- file and training
def test_training_writes_one_committee_file(committee):
    loaded = load_model(committee / "model.pt")
    meta = loaded.metadata
    assert loaded.committee == meta["committee"] == N_MEMBERS
    assert loaded.module.members() == N_MEMBERS
    singles = [load_model(committee / f"member_{k}" / "model.pt") for k in range(N_MEMBERS)]
    for k, single in enumerate(singles):
        assert single.committee == single.metadata["committee"] == 1
        assert single.metadata["members"] is None
        m = meta["members"][k]
        for key in ("hardness", "widths", "e0"):
            assert m[key] == single.metadata[key]
        assert loaded.module.member_hardness(k).tolist() == single.metadata["hardness"]
        assert loaded.module.member_e0(k).tolist() == single.metadata["e0"]
    # the members really differ (seeds), and member 0 is the single-model face of the file
    assert meta["members"][0]["e0"] != meta["members"][1]["e0"]
    assert meta["hardness"] == meta["members"][0]["hardness"]
    # the envelope is the union of the members' (same data here: equal)
    assert meta["min_distances"] == singles[0].metadata["min_distances"]
    assert meta["total_charge_range"] == singles[0].metadata["total_charge_range"]
    metrics = (committee / "metrics.json").read_text()
    assert "committee_spread" in metrics and "energy std" in (committee /
                                                              "metrics.txt").read_text()
    # snapqeq export of the committee folder points to the members
    assert cli_main(["export", str(committee), "--out", str(committee / "x.pt")]) == 2
    assert not (committee / "x.pt").exists()


def test_members_trained_in_parallel_processes_are_the_same(committee, tmp_path, capsys):
    parallel = _train_committee(tmp_path, jobs=2)
    for k in range(N_MEMBERS):
        serial = torch.load(committee / f"member_{k}" / "checkpoint_best.pt")["model"]
        other = torch.load(parallel / f"member_{k}" / "checkpoint_best.pt")["model"]
        assert serial.keys() == other.keys()
        for name, value in serial.items():
            assert_close(other[name].numpy(), value.numpy(), rtol=1e-9, what=name)
    (tmp_path / "none").mkdir()
    _train_committee(tmp_path / "none", status=2, jobs=0)
    assert "jobs must be a whole number >= 1 (processes), got 0" in capsys.readouterr().err
    meta, other = (load_model(path / "model.pt").metadata for path in (committee, parallel))
    for k in range(N_MEMBERS):
        assert_close(np.array(other["members"][k]["e0"]), np.array(meta["members"][k]["e0"]),
                     rtol=1e-9)


@pytest.mark.parametrize("structure", ["cluster", "periodic"])
def test_calculator_mean_and_spread_equal_the_members(committee, structure):
    atoms = _structures()[structure]
    got = _evaluate(_calc(committee / "model.pt"), atoms)
    members = [_evaluate(_calc(committee / f"member_{k}" / "model.pt"), atoms)
               for k in range(N_MEMBERS)]
    e = np.array([m["energy"] for m in members])
    f = np.array([m["forces"] for m in members])
    ea = np.array([m["energies"] for m in members])
    assert abs(got["energy"] - e.mean()) <= 1e-10 * abs(e.mean())
    assert_close(got["forces"], f.mean(0), rtol=1e-10, what="mean forces")
    assert_close(got["charges"], np.mean([m["charges"] for m in members], 0), rtol=1e-10,
                 floor=1e-3, what="mean charges")
    assert_close(got["energies"], ea.mean(0), rtol=1e-10, what="mean per-atom energies")
    if structure == "periodic":
        assert_close(got["stress"], np.mean([m["stress"] for m in members], 0), rtol=1e-10,
                     what="mean stress")
    # spreads by their definitions (population std; force std: RMS of the vector deviation)
    e_std = np.sqrt(np.mean((e - e.mean()) ** 2))
    f_std = np.sqrt(np.mean(np.sum((f - f.mean(0)) ** 2, axis=2), axis=0))
    assert e_std > 1e-3 and f_std.min() > 1e-4  # the members differ
    assert abs(got["energy_std"] - e_std) <= 1e-10 * e_std
    assert_close(got["forces_std"], f_std, rtol=1e-10, what="force std")
    assert_close(got["energies_std"], ea.std(0), rtol=1e-10, what="per-atom energy std")
    assert_close(got["committee_energy"], e, rtol=1e-10, what="member energies")


def test_committee_forces_are_the_gradient_of_the_mean_energy(committee):
    """Central differences (h = 1e-4 A) of the committee's mean energy, and of its
    energy std's definition through the members' forces."""
    calc = _calc(committee / "model.pt")
    for atoms in _structures().values():
        ref = _evaluate(calc, atoms)
        h = 1e-4
        for i in (0, 5):
            for k in range(3):
                e = []
                for sign in (1, -1):
                    moved = atoms.copy()
                    moved.positions[i, k] += sign * h
                    e.append(_evaluate(calc, moved, "energy")["energy"])
                fd = -(e[0] - e[1]) / (2 * h)
                assert abs(ref["forces"][i, k] - fd) < 2e-6 * max(1.0, abs(fd)), (i, k)
        if atoms.pbc.all():  # stress: strain derivative of the mean energy
            eps = 1e-5
            cell = atoms.cell.array.copy()
            e = []
            for sign in (1, -1):
                moved = atoms.copy()
                moved.set_cell(cell @ (np.eye(3) + sign * eps * np.diag([1, 0, 0])),
                               scale_atoms=True)
                e.append(_evaluate(calc, moved, "energy")["energy"])
            fd = (e[0] - e[1]) / (2 * eps) / atoms.get_volume()
            assert abs(ref["stress"][0] - fd) < 1e-6 * max(1.0, abs(fd))


# ---------------------------------------------------------------------------- threshold
def test_calculator_threshold_warns_or_stops(committee):
    atoms = _structures()["cluster"]
    spread = _evaluate(_calc(committee / "model.pt"), atoms)
    per_atom = spread["energy_std"] / len(atoms)
    fmax = float(spread["forces_std"].max())
    # below both thresholds: silent
    quiet = _calc(committee / "model.pt", committee_threshold=(2 * per_atom, 2 * fmax),
                  committee_action="stop")
    _evaluate(quiet, atoms)
    with pytest.raises(ValueError, match=r"energy std .* eV/atom .* exceeds "
                                         r"committee_threshold 1e-06 eV/atom"):
        _evaluate(_calc(committee / "model.pt", committee_threshold=(1e-6, None),
                        committee_action="stop"), atoms)
    worst = int(np.argmax(spread["forces_std"]))
    with pytest.raises(ValueError, match=rf"force std {fmax:.6g} eV/Angstrom of atom "
                                         rf"{worst} \(\w+\) exceeds committee_threshold"):
        _evaluate(_calc(committee / "model.pt", committee_threshold=(None, fmax / 2),
                        committee_action="stop"), atoms)
    calc = _calc(committee / "model.pt", committee_threshold=(None, fmax / 2))
    with pytest.warns(UserWarning, match="force std .* exceeds committee_threshold"):
        _evaluate(calc, atoms)
    assert np.isfinite(calc.results["energy"])
    for bad in ((0.0, 1.0), (1.0,), "x"):
        with pytest.raises(ValueError, match="committee_threshold"):
            CommitteeCheck(bad)
    with pytest.raises(ValueError, match="committee_action"):
        CommitteeCheck((1.0, 1.0), "ignore")


# ------------------------------------------------------------------ single models unchanged
def test_single_models_are_unchanged(committee, tmp_path):
    torch.manual_seed(0)
    model = CENT(2, 5, [3], [0.53, 1.06], [5.4, 2.7], [-1.0, -2.0], short_hidden=[2])
    meta = load_model(committee / "model.pt").metadata
    desc, elements = meta["descriptor"], meta["elements"]
    one = export_committee([model], elements, desc, tmp_path / "one.pt")
    plain = export_model(model, elements, desc, tmp_path / "plain.pt")
    assert load_model(one).metadata == load_model(plain).metadata
    atoms = _structures()["cluster"]
    a, b = _evaluate(_calc(one), atoms), _evaluate(_calc(plain), atoms)
    assert a["energy"] == b["energy"] and np.array_equal(a["forces"], b["forces"])
    assert "energy_std" not in a
    with pytest.raises(CalculatorSetupError, match="single model"):
        _calc(plain, committee_threshold=(1.0, None))
    # members must share the widths; a file announcing members it lacks is refused
    other = CENT(2, 5, [3], [0.6, 1.06], [5.4, 2.7], [-1.0, -2.0], short_hidden=[2])
    with pytest.raises(ValueError, match="widths"):
        export_committee([model, other], elements, desc, tmp_path / "bad.pt")
    broken = rewrite_model_metadata(committee / "model.pt", tmp_path / "broken.pt",
                                    lambda m: m["members"].pop())
    with pytest.raises(ValueError, match="committee of 3"):
        load_model(broken)
    assert committee_statistics([1.0, 3.0])["energy_std"] == 1.0


# ------------------------------------------------------------------------------ LAMMPS
def _lammps(plugin, model, atoms, tmp_path, options: str = "") -> dict:
    data = write_data(tmp_path / "in.data", atoms)
    total = float(atoms.info.get("charge", 0.0))
    lmp = open_lammps()
    try:
        load_plugin(lmp, plugin)
        lmp.commands_list(setup_commands(data, model, boundary_of(atoms), total,
                                         options=options) + [
            "compute virial all pressure NULL virial",
            "compute extras all pair snapqeq",
            "compute pe_atom all pe/atom",
            "compute stress_atom all stress/atom NULL virial",
            "fix out all pair 1 snapqeq q 0 force_std 0",
            "thermo_style custom step pe c_virial[*] c_extras[*]", "run 0"])
        n = lmp.extract_global("nlocal")
        volume = lmp.get_thermo("vol")
        nktv2p = lmp.extract_global("nktv2p")
        fix = lmp.numpy.extract_fix("out", 1, 2)[:n].copy()
        return {
            "energy": lmp.get_thermo("pe"),
            "forces": lmp.numpy.extract_atom("f")[:n].copy(),
            "charges": lmp.numpy.extract_atom("q")[:n].copy(),
            "fix_q": fix[:, 0], "forces_std": fix[:, 1],
            "energies": lmp.numpy.extract_compute("pe_atom", 1, 1)[:n].copy(),
            "virials": -lmp.numpy.extract_compute("stress_atom", 1, 2)[:n].copy() / nktv2p,
            "virial": np.array([lmp.extract_compute("virial", 0, 1)[k] for k in range(6)])
            * volume / nktv2p,
            "extras": np.array([lmp.extract_compute("extras", 0, 1)[k] for k in range(5)]),
        }
    finally:
        lmp.close()


@pytest.mark.parametrize("structure", ["cluster", "periodic"])
def test_plugin_matches_the_calculator(plugin, committee, tmp_path, structure):
    atoms = _structures()[structure]
    model = committee / "model.pt"
    ref = _evaluate(_calc(model), atoms)
    got = _lammps(plugin, model, atoms, tmp_path, options="guard warn")
    assert abs(got["energy"] - ref["energy"]) < RTOL * abs(ref["energy"])
    assert_close(got["forces"], ref["forces"], rtol=RTOL, what="mean forces")
    assert_close(got["charges"], ref["charges"], rtol=RTOL, floor=1e-3, what="mean charges")
    assert_close(got["fix_q"], ref["charges"], rtol=RTOL, floor=1e-3, what="fix q")
    assert_close(got["energies"], ref["energies"], rtol=RTOL, what="mean per-atom energies")
    assert abs(got["extras"][3] - ref["energy_std"]) < RTOL * ref["energy_std"]
    assert_close(got["forces_std"], ref["forces_std"], rtol=RTOL, what="force std")
    assert abs(got["extras"][4] - ref["forces_std"].max()) < RTOL * ref["forces_std"].max()
    # the per-atom energies and virials (means over the members) add up to the totals
    assert abs(got["energies"].sum() - got["energy"]) < 1e-10 * abs(got["energy"])
    assert np.abs(got["virials"].sum(0) - got["virial"]).max() < 1e-10 * \
        np.abs(got["virial"]).max()
    if structure == "periodic":
        virial = -ref["stress"] * atoms.get_volume()
        assert np.abs(got["virial"] - virial[VOIGT_TO_LAMMPS]).max() < \
            RTOL * np.abs(virial).max()


MPI_DECK = """\
plugin load {plugin}
{setup}
compute extras all pair snapqeq
fix out all pair 1 snapqeq force_std 0
thermo_style custom step pe c_extras[4] c_extras[5]
thermo_modify format float %.17g
dump forces all custom 1 forces.dump id fx fy fz q f_out
dump_modify forces sort id format float %.17g
run 0
"""


@pytest.mark.parametrize("structure", ["cluster", "periodic"])
def test_plugin_mpi_and_threshold_messages(plugin, committee, tmp_path, structure):
    """np 1 and np 2 agree (mean energy and forces, charges, spreads); committee_action
    warn prints the calculator's message; stop stops the run."""
    atoms = _structures()[structure]
    total = float(atoms.info.get("charge", 0.0))
    model = committee / "model.pt"
    ref = _evaluate(_calc(model), atoms)
    per_atom = ref["energy_std"] / len(atoms)
    data = write_data(tmp_path / "mpi.data", atoms)
    setup = "\n".join(setup_commands(data, model, boundary_of(atoms), total, options=(
        f"guard warn committee_threshold {per_atom / 2:.6g} none committee_action warn")))
    threshold = float(f"{per_atom / 2:.6g}")
    with pytest.raises(ValueError) as info:
        _evaluate(_calc(model, committee_threshold=(threshold, None), committee_action="stop"),
                  atoms)
    rows = {}
    for nprocs, (run_dir, stdout) in _run_np1_np2(
            tmp_path, MPI_DECK.format(plugin=plugin, setup=setup)):
        lines = stdout.splitlines()
        head = next(k for k, line in enumerate(lines) if line.split()[:2] == ["Step", "PotEng"])
        rows[nprocs] = (np.array(lines[head + 1].split()[1:], dtype=float),
                        np.loadtxt(run_dir / "forces.dump", skiprows=9))
        warned = re.findall(r"WARNING: (snapqeq committee: energy std .*there)", stdout)
        assert len(warned) == 1, stdout[-3000:]
        assert str(info.value).startswith(warned[0])  # the same text as the calculator
    (t1, d1), (t2, d2) = rows[1], rows[2]
    assert abs(t1[0] - ref["energy"]) < RTOL * abs(ref["energy"])
    assert abs(t1[1] - ref["energy_std"]) < RTOL * ref["energy_std"]
    assert np.abs(t2 - t1).max() < 1e-10 * np.abs(t1).max()
    assert np.abs(d2[:, 1:] - d1[:, 1:]).max() < 1e-10 * np.abs(d1[:, 1:4]).max()
    assert_close(d1[:, 5], ref["forces_std"], rtol=RTOL, what="force std (np 1)")

    _expect_error(setup_commands(data, model, boundary_of(atoms), total, options=(
        "guard warn committee_threshold none 1e-6 committee_action stop")) + ["run 0"],
        r"snapqeq committee: force std .* exceeds committee_threshold 1e-06 eV/Angstrom",
        plugin)


def test_plugin_refuses_committee_keywords_for_single_models(plugin, committee, tmp_path):
    single = committee / "member_0" / "model.pt"
    data = write_data(tmp_path / "s.data", _structures()["cluster"])
    _expect_error(setup_commands(data, single, "f f f", 1.0,
                                 options="committee_threshold 0.1 0.1"),
                  "holds a single model", plugin)
    _expect_error(setup_commands(data, single, "f f f", 1.0) +
                  ["fix out all pair 1 snapqeq force_std 0", "run 0"],
                  "holds a single model", plugin)
    _expect_error(setup_commands(data, committee / "model.pt", "f f f", 1.0,
                                 options="committee_action maybe"),
                  "committee_action must be warn or stop", plugin)


# ------------------------------------------------------------------------------ README
def test_readme_snippet_runs_as_written(tmp_path):
    """The Python block of the README section "Committee uncertainty", run from a folder
    that looks like the repository root."""
    import subprocess
    import sys

    text = (ROOT / "README.md").read_text()
    section = re.search(r"^## Committee uncertainty\n(.*?)(?=^## )", text, re.S | re.M)
    (snippet,) = re.findall(r"^```python\n(.*?)^```", section.group(1), re.S | re.M)
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    (tmp_path / "snippet.py").write_text(snippet)
    proc = subprocess.run([sys.executable, "snippet.py"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    energy_std, force_std = map(float, proc.stdout.split()[-2:])
    assert energy_std > 0 and force_std > 0
    assert load_model(tmp_path / "committee_output" / "model.pt").committee == 2


def test_committee_of_finished_runs_and_fine_tuning_start(committee, tmp_path):
    """``export_committee_of_runs`` of the members' runs gives the committee file's
    predictions, and ``init_from`` starts a run from a member's weights, feature scaling and
    reference energies (zero epochs: that member's model)."""
    from snapqeq.training.trainer import TrainConfig, export_committee_of_runs, train

    members = [committee / f"member_{k}" for k in range(N_MEMBERS)]
    rebuilt = export_committee_of_runs(members, tmp_path / "committee.pt")
    atoms = nacl_cluster()
    a, b = (_evaluate(_calc(p), atoms) for p in (committee / "model.pt", rebuilt))
    for key in ("energy", "forces", "charges", "energy_std", "forces_std"):
        assert_close(b[key], a[key], rtol=1e-12, what=key)

    config = TrainConfig.from_yaml(members[1] / "config.yaml")
    config = TrainConfig(**{**config.__dict__, "output": str(tmp_path / "tuned"),
                            "init_from": str(members[1]), "epochs": 0})
    tuned = train(config).model_path
    a, b = (_evaluate(_calc(p), atoms) for p in (members[1] / "model.pt", tuned))
    for key in ("energy", "forces", "charges"):
        assert_close(b[key], a[key], rtol=1e-12, what=key)

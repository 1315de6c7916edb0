"""SnapQEqCalculator and ASE's calculator protocol: default_parameters, set(), todict(),
ASE's own keywords, only the requested properties computed; one total-charge rule for
``snapqeq train`` and ``snapqeq test``."""

from __future__ import annotations

import contextlib
import inspect
import io
import json

import numpy as np
import pytest
import torch
from ase.calculators.calculator import CalculatorSetupError
from ase.io import write
from test_calculator import DESCRIPTOR, nacl

import snapqeq.calculators.cent as calculator_module
from snapqeq import Bispectrum
from snapqeq.calculators.cent import SnapQEqCalculator
from snapqeq.cli.evaluation import evaluate_structures
from snapqeq.cli.main import main as cli_main
from snapqeq.datasets.clusters import generate_clusters
from snapqeq.electrostatics.qeq import equilibrate
from snapqeq.io.model_file import load_model
from snapqeq.io.structures import DataKeys, read_structures, total_charge
from snapqeq.models.cent import CENT
from snapqeq.training.data import make_sample
from snapqeq.training.export import export_committee, export_model

SETTINGS = {"model", "total_charge", "device", "min_distance_factor", "guard",
            "committee_threshold", "committee_action"}
SOLVER = {"method", "tol", "accuracy", "max_iter"}
# the small model files written here have no training envelope
pytestmark = pytest.mark.filterwarnings("ignore:.*the guard skips those checks")
RESULTS = ("energy", "energies", "forces", "stress", "charges", "electronegativities")


def _cent(seed: int, bs: Bispectrum, short: bool, hardness=(5.44, 2.72)) -> CENT:
    torch.manual_seed(seed)
    model = CENT(2, bs.n_components, [3, 3], [0.53, 1.06], list(hardness), [-1.0, -2.0],
                 chi_scale=2.0, short_hidden=[4] if short else None)
    refs = [nacl(periodic=p, seed=s) for p in (True, False) for s in range(3)]
    model.set_feature_scaling(torch.tensor(np.concatenate([bs.compute(a) for a in refs])),
                              torch.tensor(np.concatenate([bs.species(a) for a in refs])))
    return model


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    """CENT and 4G model files, and a 3-member 4G committee."""
    root = tmp_path_factory.mktemp("protocol")
    bs = Bispectrum(**DESCRIPTOR)
    out = {kind: export_model(_cent(1, bs, kind == "4g"), ["Na", "Cl"], bs.to_dict(),
                              root / f"{kind}.pt") for kind in ("cent", "4g")}
    members = [_cent(k, bs, True, (5.44 + 0.3 * k, 2.72)) for k in range(3)]
    out["committee"] = export_committee(members, ["Na", "Cl"], bs.to_dict(),
                                        root / "committee.pt")
    return out


def _results(calc, atoms, order) -> dict:
    atoms = atoms.copy()
    atoms.calc = calc
    for prop in order:
        calc.get_property(prop, atoms)
    return dict(calc.results)


def test_default_parameters_list_every_setting(models):
    defaults = SnapQEqCalculator.default_parameters
    assert set(defaults) == SETTINGS | SOLVER
    signature = inspect.signature(equilibrate).parameters
    for key in SOLVER:  # the solver's own defaults
        assert defaults[key] == signature[key].default
    calc = SnapQEqCalculator(models["cent"], total_charge=1.0, tol=1e-12)
    assert set(calc.parameters) == set(defaults)
    assert calc.parameters["total_charge"] == 1.0 and calc.parameters["tol"] == 1e-12
    assert calc.parameters["model"] == str(models["cent"])
    assert calc.solver_options == {"method": "auto", "tol": 1e-12, "accuracy": None,
                                   "max_iter": None}
    # no copies of the settings besides calc.parameters
    assert not hasattr(calc, "total_charge")


def test_unknown_or_bad_keywords_are_refused(models):
    with pytest.raises(TypeError, match=r"'tolerance'.*the parameters are .*\btol\b"):
        SnapQEqCalculator(models["cent"], tolerance=1e-8)
    calc = SnapQEqCalculator(models["cent"])
    with pytest.raises(TypeError, match="'total_chrage'"):
        calc.set(total_chrage=1.0)
    with pytest.raises(ValueError, match="method must be one of"):
        calc.set(method="lu")
    with pytest.raises(CalculatorSetupError, match="needs a committee model file"):
        calc.set(committee_threshold=(0.1, None))
    with pytest.raises(ValueError, match="guard must be one of"):
        calc.set(guard="ignore")
    # nothing changed
    assert dict(calc.parameters) == {**SnapQEqCalculator.default_parameters,
                                     "model": str(models["cent"])}
    assert calc.guard.mode == "stop"


@pytest.mark.parametrize("kind", ["cent", "4g"])
def test_set_changes_the_next_calculation(models, kind):
    atoms = nacl(False)
    calc = SnapQEqCalculator(models[kind], total_charge=0.0)
    atoms.calc = calc
    e0 = atoms.get_potential_energy()
    assert calc.set(total_charge=0.0) == {}  # unchanged: the results stay
    assert "energy" in calc.results
    assert calc.set(total_charge=1.0) == {"total_charge": 1.0}
    assert calc.results == {}
    e1 = atoms.get_potential_energy()
    assert atoms.get_charges().sum() == pytest.approx(1.0, abs=1e-10)
    fresh = atoms.copy()
    fresh.calc = SnapQEqCalculator(models[kind], total_charge=1.0)
    assert e1 == fresh.get_potential_energy() and e1 != e0
    # solver options: the next call uses them
    calc.set(method="cg", tol=1e-4)
    assert calc.solver_options["tol"] == 1e-4
    rough = atoms.get_potential_energy()
    assert rough != e1 and rough == pytest.approx(e1, abs=1e-2)
    # a new model file is loaded
    other = "cent" if kind == "4g" else "4g"
    assert set(calc.set(model=models[other], method="auto", tol=1e-10)) == {
        "model", "method", "tol"}
    assert calc.model.path == models[other] and calc.has_short == (other == "4g")
    fresh.calc = SnapQEqCalculator(models[other], total_charge=1.0)
    assert atoms.get_potential_energy() == fresh.get_potential_energy()
    # a loaded model file as the value: stored as its path
    calc.set(model=load_model(models[kind]))
    assert calc.parameters["model"] == str(models[kind]) and calc.has_short == (kind == "4g")


def test_committee_threshold_set_on_a_committee(models):
    atoms = nacl(False)
    calc = SnapQEqCalculator(models["committee"])
    atoms.calc = calc
    atoms.get_potential_energy()
    calc.set(committee_threshold=(None, 1e-9), committee_action="stop")
    with pytest.raises(ValueError, match="force std"):
        atoms.get_potential_energy()


@pytest.mark.parametrize("kind", ["cent", "4g"])
def test_todict_round_trip(models, kind):
    atoms = nacl(True, triclinic=True)
    atoms.info["charge"] = 1.0
    calc = SnapQEqCalculator(load_model(models[kind]), tol=1e-12, guard="warn",
                             accuracy=1e-8)
    d = calc.todict()
    assert d == {"model": str(models[kind]), "tol": 1e-12, "guard": "warn", "accuracy": 1e-8}
    again = SnapQEqCalculator(**json.loads(json.dumps(d)))
    a = _results(calc, atoms, ["forces"])
    b = _results(again, atoms, ["forces"])
    for key in RESULTS:
        assert np.array_equal(a[key], b[key]), key
    full = calc.todict(skip_default=False)
    assert set(full) == set(SnapQEqCalculator.default_parameters)
    c = SnapQEqCalculator(models["committee"], committee_threshold=(0.5, None))
    assert c.todict()["committee_threshold"] == [0.5, None]
    assert SnapQEqCalculator(**c.todict()).committee_check.energy == 0.5


def test_ase_keywords_label_directory_atoms(models, tmp_path):
    atoms = nacl(False)
    calc = SnapQEqCalculator(models["cent"], label="run1", directory=tmp_path / "work",
                             atoms=atoms, total_charge=1.0)
    assert atoms.calc is calc
    assert calc.label == f"{tmp_path / 'work'}/run1" and calc.directory == str(tmp_path / "work")
    assert calc.parameters["total_charge"] == 1.0
    assert atoms.get_charges().sum() == pytest.approx(1.0, abs=1e-10)
    assert SnapQEqCalculator(models["cent"], label="x").prefix == "x"


@pytest.mark.parametrize("kind", ["cent", "4g", "committee"])
@pytest.mark.parametrize("periodic,method", [(False, "auto"), (False, "kernel"),
                                             (True, "auto"), (True, "cg")])
def test_only_the_requested_properties_are_computed(models, monkeypatch, kind, periodic,
                                                    method):
    """An energy (or charges) call computes no forces; a later forces call for the same
    geometry adds them to the same solve: the results equal one forces call's, bit for
    bit, with no second charge equilibration."""
    atoms = nacl(periodic)
    atoms.info["charge"] = 1.0
    options = {"method": method, "tol": 1e-12}
    n_members = 3 if kind == "committee" else 1
    reference = _results(SnapQEqCalculator(models[kind], **options), atoms, ["forces"])

    calls = {"equilibrate": 0, "pair_forces": 0}

    def counting(name, function):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(calculator_module, "equilibrate",
                        counting("equilibrate", calculator_module.equilibrate))
    calc = SnapQEqCalculator(models[kind], **options)
    monkeypatch.setattr(calc.descriptor, "pair_forces",
                        counting("pair_forces", calc.descriptor.pair_forces))
    work = atoms.copy()
    work.calc = calc
    work.get_charges()
    work.get_potential_energy()
    assert "forces" not in calc.results and "stress" not in calc.results
    assert "forces_std" not in calc.results
    assert calls == {"equilibrate": n_members, "pair_forces": 0}
    work.get_forces()
    adjoint = n_members if kind != "cent" else 0
    assert calls == {"equilibrate": n_members + adjoint, "pair_forces": n_members}
    if periodic:
        work.get_stress()
    assert calls["equilibrate"] == n_members + adjoint
    keys = set(RESULTS) | ({"forces_std", "energy_std", "energies_std", "committee_energy",
                            "committee_forces", "committee_charges"}
                           if kind == "committee" else set())
    if not periodic:
        keys.discard("stress")
    assert keys <= set(calc.results)
    for key in keys:
        assert np.array_equal(calc.results[key], reference[key]), key


# ------------------------------------------------------------------ the total charge
def test_total_charge_rule():
    atoms = nacl(False)
    assert total_charge(atoms) == 0.0
    atoms.arrays["ref_charges"] = np.where(atoms.numbers == 11, 0.8, -0.8)
    assert total_charge(atoms) == 0.0  # neutral per-atom charges
    atoms.arrays["ref_charges"][0] += 1.0
    with pytest.raises(ValueError, match="no total charge .* sum to 1"):
        total_charge(atoms)
    assert total_charge(atoms, override=2.0) == 2.0  # the calculator's parameter first
    atoms.info["charge"] = 1.0
    assert total_charge(atoms) == 1.0
    with pytest.raises(ValueError, match=r"info\['q'\]"):  # another key: not declared
        total_charge(atoms, DataKeys(charge="q"))
    plain = nacl(False)
    plain.set_initial_charges([1.0] + [0.0] * (len(plain) - 1))
    with pytest.raises(ValueError, match="sum to 1"):
        total_charge(plain)
    plain.info["q"] = 1.0
    assert total_charge(plain, DataKeys(charge="q")) == 1.0


def test_train_and_test_read_the_same_total_charges(models, tmp_path):
    """``snapqeq train`` (training metrics) and ``snapqeq test`` (the calculator) on the same
    file with a non-default charge key: the same neutral/ionized groups and energies; the
    calculator's ``total_charge`` parameter comes first in evaluate_structures."""
    teacher = SnapQEqCalculator(models["cent"])
    frames = []
    for charge in (0, 1):
        for atoms in generate_clusters(8, 3, seed=1, tag=charge):
            atoms.info.update(q=float(charge))
            atoms.calc = teacher
            teacher.set(total_charge=float(charge))
            atoms.info["energy"] = atoms.get_potential_energy()
            atoms.arrays["forces"] = atoms.get_forces()
            atoms.calc = None
            frames.append(atoms)
    data = tmp_path / "train.extxyz"
    write(data, frames)
    config = {"data": {"train": str(data), "validation": str(data)},
              "output": str(tmp_path / "run"), "descriptor": DESCRIPTOR, "epochs": 1,
              "batch_size": 3, "progress": False, "keys": {"charge": "q"}}
    (tmp_path / "c.json").write_text(json.dumps(config))
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli_main(["train", str(tmp_path / "c.json")]) == 0
    trained = json.loads((tmp_path / "run" / "metrics.json").read_text())["train"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli_main(["test", str(data), "--model", str(tmp_path / "run" / "model.pt"),
                         "--key", "charge=q", "--json"]) == 0
    tested = json.loads(out.getvalue())
    for group in ("all", "neutral", "ionized"):
        assert tested[group]["count"] == trained[group]["count"] == 3 * (1 + (group == "all"))
        assert tested[group]["energy_rmse_mev"] == pytest.approx(
            trained[group]["energy_rmse_mev"], rel=1e-8)
    assert cli_main(["test", str(data), "--model", str(tmp_path / "run" / "model.pt"),
                     "--key", "chrge=q"]) == 2
    # one function for both: the sample's and the record's total charge
    keys = DataKeys(charge="q")
    structures = read_structures(data)
    bs = Bispectrum(**DESCRIPTOR)
    calc = SnapQEqCalculator(tmp_path / "run" / "model.pt")
    records = evaluate_structures(calc, structures, keys, progress=False)
    assert [r.total_charge for r in records] == [
        make_sample(a, bs, keys).total_charge for a in structures]
    calc.set(total_charge=1.0)  # on structures with q = 0
    records = evaluate_structures(calc, structures[:2], keys, progress=False)
    assert [r.total_charge for r in records] == [1.0, 1.0]
    assert [r.charges.sum() for r in records] == pytest.approx([1.0, 1.0], abs=1e-10)

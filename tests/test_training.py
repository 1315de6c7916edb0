"""Training pipeline: exact training-path forces, determinism, resume, export, CLI test.

Reference data come from a "teacher" CENT model evaluated with the ASE calculator on NaCl
clusters, so the tests are fast and the student has a target it can represent.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from ase.calculators.calculator import PropertyNotImplementedError
from ase.io import write

from snapqeq import Bispectrum
from snapqeq.calculators.cent import SnapQEqCalculator
from snapqeq.cli.olcao import predict_command
from snapqeq.datasets.clusters import generate_clusters
from snapqeq.io.model_file import load_model
from snapqeq.io.olcao import exponent_series, set_site_targets
from snapqeq.io.structures import read_structures
from snapqeq.models.cent import CENT
from snapqeq.models.site_features import FeatureRecipe, SiteFeaturizer
from snapqeq.training.data import make_sample
from snapqeq.training.export import export_model
from snapqeq.training.potential import predict
from snapqeq.training.trainer import TrainConfig, export_checkpoint, train
from snapqeq.units import BOHR, HARTREE

DESCRIPTOR = {"twojmax": 4, "rcutfac": 1.0, "radii": {"Na": 3.0, "Cl": 3.0},
              "weights": {"Na": 1.0, "Cl": 0.5}}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Teacher-labelled clusters of 8 and 12 atoms, neutral and +1, split by info."""
    torch.manual_seed(7)
    bs = Bispectrum(**DESCRIPTOR)
    teacher = CENT(2, bs.n_components, [3, 3], [BOHR, 2 * BOHR],
                   [0.2 * HARTREE, 0.1 * HARTREE], [-5.0, -7.0], chi_scale=3.0)
    root = tmp_path_factory.mktemp("teacher")
    meta = bs.to_dict()
    calc = SnapQEqCalculator(export_model(teacher, ["Na", "Cl"], meta, root / "teacher.pt"))
    frames = []
    for n, split in ((8, "train"), (12, "validation")):
        for charge in (0, 1):
            for atoms in generate_clusters(n, 4 if split == "train" else 2, seed=1, tag=charge):
                atoms.info.update(charge=float(charge), split=split)
                atoms.calc = calc
                atoms.info["energy"] = atoms.get_potential_energy()
                atoms.arrays["forces"] = atoms.get_forces()
                atoms.arrays["ref_charges"] = atoms.get_charges()
                atoms.calc = None
                frames.append(atoms)
    path = root / "data.extxyz"
    write(path, frames)
    return path


def config(data, out, **changes) -> TrainConfig:
    base = dict(data=str(data), output=str(out), split="info", descriptor=DESCRIPTOR,
                epochs=4, batch_size=2, lr=1e-2, progress=False,
                loss_weights={"energy": 1.0, "forces": 0.1, "charges": 0.1})
    base.update(changes)
    return TrainConfig(**base)


@pytest.mark.parametrize("short", [None, [4]])
def test_training_path_forces_are_exact(dataset, short):
    bs = Bispectrum(**DESCRIPTOR)
    torch.manual_seed(0)
    model = CENT(2, bs.n_components, [3, 3], [BOHR, 2 * BOHR], [5.4, 2.7], [0.0, 0.0],
                 short_hidden=short)
    atoms = read_structures(dataset)[5]
    atoms.info["charge"] = 1.0
    f = predict(model, make_sample(atoms, bs))["forces"].detach().numpy()

    def energy(a):
        return float(predict(model, make_sample(a, bs), forces=False)["energy"].detach())

    fd = np.zeros_like(f)
    for i in range(len(atoms)):
        for c in range(3):
            e = []
            for step in (1e-5, -1e-5):
                a = atoms.copy()
                a.positions[i, c] += step
                e.append(energy(a))
            fd[i, c] = -(e[0] - e[1]) / 2e-5
    assert np.abs(f - fd).max() < 1e-7


def test_deterministic_resumable_and_exported(dataset, tmp_path):
    r1 = train(config(dataset, tmp_path / "a"))
    r2 = train(config(dataset, tmp_path / "b"))
    h1 = [h["train_loss"] for h in r1.history]
    assert h1 == [h["train_loss"] for h in r2.history]
    assert h1[-1] < h1[0]
    # resume: 2 epochs, then continue to 4 = the same as 4 in one go
    train(config(dataset, tmp_path / "c", epochs=2))
    r3 = train(config(dataset, tmp_path / "c", epochs=4, resume=True))
    assert [h["train_loss"] for h in r3.history] == pytest.approx(h1, rel=1e-10)
    for name in ("learning_curve.png", "parity.png", "metrics.txt", "model.pt"):
        assert (tmp_path / "a" / name).stat().st_size > 0
    loaded = load_model(r1.model_path)
    assert loaded.elements == ["Na", "Cl"]
    again = export_checkpoint(tmp_path / "a", tmp_path / "again.pt")
    atoms = read_structures(dataset)[0]
    e = []
    for path in (r1.model_path, again):
        a = atoms.copy()
        a.calc = SnapQEqCalculator(path)
        e.append(a.get_potential_energy())
    assert e[0] == pytest.approx(e[1], rel=1e-12)


def test_cli_test_reports_metrics(dataset, tmp_path):
    result = train(config(dataset, tmp_path / "run", epochs=2))
    out = subprocess.run([sys.executable, "-m", "snapqeq.cli.main", "test", str(dataset),
                          "--model", str(result.model_path), "--json"],
                         capture_output=True, text=True, check=True)
    metrics = json.loads(out.stdout)
    assert metrics["all"]["count"] == 12
    assert {"neutral", "ionized", "split=train", "split=validation"} <= set(metrics)
    assert metrics["all"]["energy_rmse_mha"] == pytest.approx(
        metrics["all"]["energy_rmse_mev"] / HARTREE, rel=1e-9)
    assert metrics["all"]["force_rmse_mev"] > 0
    bad = subprocess.run([sys.executable, "-m", "snapqeq.cli.main", "test", str(dataset),
                          "--model", str(tmp_path / "missing.pt")], capture_output=True,
                         text=True)
    assert bad.returncode == 2 and "not found" in bad.stderr


def with_coefficient_targets(frames, exponents: dict) -> list:
    """Synthetic OLCAO targets (Hartree) from the teacher charges and the coordination:
    A_ik = -(1 + q_i / 2 + 0.05 n_i) / (1 + k), NaN-padded to the longest series."""
    width = max(len(a) for a in exponents.values())
    out = []
    for frame in frames:
        atoms = frame.copy()  # copy() drops the calculator that holds the reference data
        atoms.info["energy"] = frame.get_potential_energy()
        atoms.arrays["forces"] = frame.get_forces()
        q = atoms.arrays["ref_charges"]
        n = (atoms.get_all_distances() < 3.2).sum(1) - 1
        target = np.full((len(atoms), width), np.nan)
        for i, symbol in enumerate(atoms.get_chemical_symbols()):
            k = np.arange(len(exponents[symbol]))
            target[i, k] = -(1.0 + q[i] / 2 + 0.05 * n[i]) / (1.0 + k)
        set_site_targets(atoms, target)
        out.append(atoms)
    return out


def test_olcao_head_trained_and_stored_in_the_model_file(dataset, tmp_path):
    """`olcao` section: the head is trained on the model's own q and phi, stored in
    model.pt, and the calculator, the OLCAO writer and plain TorchScript all use it."""
    frames = with_coefficient_targets(read_structures(dataset),
                                      {e: exponent_series(e) for e in ("Na", "Cl")})
    data = tmp_path / "with_targets.extxyz"
    write(data, frames)
    out = tmp_path / "run"
    result = train(config(data, out, olcao={"epochs": 40, "hidden": [8], "n_components": 2,
                                             "batch_size": 16, "patience": 40}))
    loaded = load_model(result.model_path)
    recipe = FeatureRecipe.from_dict(loaded.olcao["features"])
    assert recipe.local == loaded.metadata["descriptor"] and recipe.chi_source == "energy_model"
    assert recipe.medium["rcutfac"] == pytest.approx(5.0 / 3.0)
    metrics = json.loads((out / "metrics.json").read_text())["olcao"]
    assert metrics["validation"]["n_sites"] > 0  # one data file: the head's own split
    assert (out / "olcao" / "history.json").exists()

    atoms = frames[-1]
    calc = SnapQEqCalculator(result.model_path)
    mean = calc.get_property("potential_coefficients", atoms)
    std = calc.results["potential_coefficients_std"]
    assert calc.results["energy"] is not None  # one solve serves both
    target = atoms.arrays["potential_coefficients"]
    assert mean.shape == target.shape and np.array_equal(np.isnan(mean), np.isnan(target))
    valid = ~np.isnan(target)
    assert np.all(std[valid] > 0)
    # predictions on the targets' scale (learning quality: tests/test_olcao_model.py)
    spread = np.nanstd(target, axis=0).mean()
    assert np.sqrt(np.mean((mean - target)[valid] ** 2)) < 2 * spread
    # the same numbers from the separate feature path (its own QEq solve)
    feats = SiteFeaturizer(recipe, energy_model=loaded)(atoms)
    with torch.no_grad():
        m2, s2 = loaded.module.potential_coefficients(
            torch.as_tensor(feats.for_recipe(recipe)), torch.as_tensor(feats.species))
    np.testing.assert_allclose(m2.numpy()[valid], mean[valid], rtol=0, atol=1e-8)
    np.testing.assert_allclose(s2.numpy()[valid], std[valid], rtol=1e-8)
    assert calc.potential_exponents["Na"].tolist() == exponent_series("Na").tolist()

    # a plain torch process sees the head
    code = (f"import torch; m = torch.jit.load({str(result.model_path)!r}); "
            "print(hasattr(m, 'potential_coefficients'))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "True"
    structure = tmp_path / "one.extxyz"
    boxed = atoms.copy()
    boxed.center(vacuum=6.0)  # OLCAO needs a cell; pbc stays off (a cluster)
    write(structure, boxed)
    paths = predict_command(result.model_path, structure, tmp_path / "olcao_files")
    assert all(p.exists() for p in paths.values())

    # a model without a head says so
    plain = export_model(result.model.cpu(), ["Na", "Cl"], Bispectrum(**DESCRIPTOR).to_dict(),
                         tmp_path / "plain.pt")
    with pytest.raises(PropertyNotImplementedError):
        SnapQEqCalculator(plain).get_property("potential_coefficients", atoms)
    with pytest.raises(ValueError, match="no OLCAO head"):
        predict_command(plain, structure, tmp_path / "nope")


def test_weight_decay_shrinks_only_network_weights(dataset, tmp_path):
    """AdamW decays the networks' weight matrices; biases, chi0 and hardness follow the
    gradient alone, and weight_decay 0 is plain Adam (the default)."""
    from snapqeq.training.trainer import _optimizer

    plain = train(config(dataset, tmp_path / "plain", learn_hardness=True))
    decayed = train(config(dataset, tmp_path / "wd", learn_hardness=True, weight_decay=20.0))
    norm = {name: float(sum(p.norm() ** 2 for n, p in r.model.named_parameters()
                            if n.endswith(".weight")))
            for name, r in (("plain", plain), ("wd", decayed))}
    assert norm["wd"] < 0.9 * norm["plain"]
    model = decayed.model
    opt = _optimizer(model, config(dataset, tmp_path, learn_hardness=True, weight_decay=1.0))
    groups = {g["weight_decay"]: {id(p) for p in g["params"]} for g in opt.param_groups}
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[i] for i in groups[1.0]} == {
        n for n in names.values() if n.startswith(("chi_net.", "short_net."))
        and n.endswith(".weight")}
    assert {"chi0", "log_hardness"} <= {names[i] for i in groups[0.0]}
    assert type(_optimizer(model, config(dataset, tmp_path))) is torch.optim.Adam
    with pytest.raises(ValueError, match="weight_decay"):
        _optimizer(model, config(dataset, tmp_path, weight_decay=-1.0))

"""OLCAO potential-coefficient model: site features, MDN training, model file, predict command.

The learning tests use synthetic targets on real structures: rattled, strained rock-salt NaCl
cells, each with its own total charge and its own per-element electronegativities (standing
in for chemistry the geometry does not show).  Charge equilibration turns those into charges
q_i and site potentials phi_i; the per-site target is

    A_i = f_i(local bispectrum) + g_i(phi) + Gaussian noise

so a model without the long-range inputs cannot know g and must do clearly worse.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.io import read, write
from conftest import rewrite_model_metadata

from snapqeq.cli.olcao import add_parser, predict_command, train_command
from snapqeq.io import olcao
from snapqeq.models.olcao_head import (
    FORMAT_VERSION,
    OLCAOModel,
    export_olcao_model,
    load_olcao_model,
    predict_sites,
)
from snapqeq.models.site_features import (
    FeatureRecipe,
    SiteFeaturizer,
    compute_site_features,
    recipe_from_energy_model,
)
from snapqeq.training.olcao import (
    OLCAOTrainConfig,
    evaluate_olcao_model,
    site_targets,
    train_olcao_model,
)

ROOT = Path(__file__).resolve().parents[1]
HARDNESS = {"Na": 5.4, "Cl": 2.7}      # eV/e^2 (0.2 and 0.1 Ha/e^2, the CENT NaCl values)
WIDTHS = {"Na": 0.53, "Cl": 1.06}      # Angstrom (1 and 2 bohr)
EXPONENTS = {"Na": (4, 0.1, 10.0), "Cl": (3, 0.2, 10.0)}  # short series: 4 and 3 A_i
NOISE = {"Na": 0.08, "Cl": 0.12}       # Hartree
N_STRUCTURES, N_TEST = 84, 24


def nacl_recipe(long_range: bool = True) -> FeatureRecipe:
    return FeatureRecipe.default(
        ["Na", "Cl"], cutoff=4.5, medium_cutoff=7.0, twojmax=4, medium_twojmax=2,
        weights={"Na": 1.0, "Cl": 0.5}, long_range=long_range,
        chi={"Na": -2.0, "Cl": 2.0}, hardness=HARDNESS, widths=WIDTHS)


def nacl_cell(rng: np.random.Generator) -> Atoms:
    a = bulk("NaCl", "rocksalt", a=5.64 * rng.uniform(0.96, 1.04), cubic=True)
    a.rattle(0.15, rng=rng)
    a.wrap()
    a.info["charge"] = float(rng.integers(-2, 3))
    return a


def per_structure_chi(atoms: Atoms, rng: np.random.Generator) -> np.ndarray:
    """Electronegativities (eV/e) drawn per structure and element."""
    chi = {"Na": rng.uniform(-3.0, -1.0), "Cl": rng.uniform(1.0, 3.0)}
    return np.array([chi[s] for s in atoms.get_chemical_symbols()])


@pytest.fixture(scope="module")
def synthetic():
    """Structures with targets, their features (long range on) and a held-out test split."""
    rng = np.random.default_rng(7)
    recipe = nacl_recipe()
    structures = [nacl_cell(rng) for _ in range(N_STRUCTURES)]
    chis = [per_structure_chi(a, rng) for a in structures]
    features = SiteFeaturizer(recipe).many(structures, chis=chis)
    b_all = np.concatenate([f.local for f in features])
    b_mean, b_std = b_all.mean(0), b_all.std(0) + 1e-12
    phi_all = np.concatenate([f.potential for f in features])
    p_mean, p_std = phi_all.mean(), phi_all.std()
    weights = rng.normal(size=(recipe.n_local, 4)) / np.sqrt(recipe.n_local)
    for atoms, f in zip(structures, features, strict=True):
        local = np.tanh(((f.local - b_mean) / b_std) @ weights)
        p = (f.potential - p_mean) / p_std
        g = np.stack([p, 0.5 * p**2, -p, np.sin(p)], axis=1)
        noise = np.array([NOISE[s] for s in atoms.get_chemical_symbols()])[:, None]
        target = local + g + noise * rng.normal(size=(len(atoms), 4))
        target[f.species == 1, 3] = np.nan   # Cl has a 3-term series: NaN padding
        olcao.set_site_targets(atoms, target)
    train = slice(0, N_STRUCTURES - N_TEST)
    test = slice(N_STRUCTURES - N_TEST, None)
    return {"recipe": recipe, "structures": structures, "features": features,
            "train": train, "test": test, "phi_std": p_std}


def config(recipe: FeatureRecipe, **kw) -> OLCAOTrainConfig:
    base = dict(features=recipe, exponents=EXPONENTS, hidden=[32, 32], n_components=3,
                epochs=300, batch_size=64, lr=3e-3, patience=30, progress=False, seed=0,
                num_threads=1)
    base.update(kw)
    return OLCAOTrainConfig(**base)


@pytest.fixture(scope="module")
def trained(synthetic):
    """One model with and one without the long-range inputs, same data and seed."""
    s = synthetic
    out = {}
    for name, recipe in (("with", s["recipe"]), ("without", s["recipe"].without_long_range())):
        t0 = time.perf_counter()
        model = train_olcao_model(s["structures"][s["train"]], config(recipe),
                                  features=s["features"][s["train"]])
        test = s["structures"][s["test"]]
        metrics = evaluate_olcao_model(model, s["features"][s["test"]],
                                       [site_targets(a, model) for a in test])
        out[name] = {"model": model, "metrics": metrics, "seconds": time.perf_counter() - t0}
    return out


# --------------------------------------------------------------------------------------------
# Site features
# --------------------------------------------------------------------------------------------


def test_features_layout_and_long_range_physics(synthetic):
    s = synthetic
    recipe = s["recipe"]
    f = s["features"][0]
    atoms = s["structures"][0]
    assert f.local.shape == (8, recipe.n_local) and f.medium.shape == (8, recipe.n_medium)
    assert f.matrix().shape == (8, recipe.n_features) == (8, 14 + 5 + 2)
    assert f.matrix(long_range=False).shape == (8, 19)
    assert np.sum(f.charges) == pytest.approx(atoms.info["charge"], abs=1e-8)
    # the long-range block varies between structures far beyond round-off
    assert s["phi_std"] > 0.5
    # the medium-range block is a genuinely different (larger-cutoff) descriptor
    assert not np.allclose(f.medium, f.local[:, : recipe.n_medium])


def test_pure_si_with_fixed_chi_has_zero_long_range():
    atoms = bulk("Si", "diamond", a=5.43, cubic=True)
    atoms.rattle(0.05, rng=np.random.default_rng(0))
    recipe = FeatureRecipe.default(["Si"], cutoff=4.0, medium_cutoff=6.5)
    f = compute_site_features(atoms, recipe)
    assert np.all(f.charges == 0.0) and np.all(f.potential == 0.0)
    # a net charge is shared out even with equal chi
    f2 = compute_site_features(atoms, recipe, total_charge=1.0)
    assert f2.charges.sum() == pytest.approx(1.0, abs=1e-10)
    assert f2.charges == pytest.approx(np.full(8, 1 / 8), abs=0.01)
    # features made without the long-range block cannot feed a model that uses it
    local_only = compute_site_features(atoms, recipe.without_long_range())
    assert local_only.for_recipe(recipe.without_long_range()).shape == (8, 30 + 14)
    with pytest.raises(ValueError, match="without the long-range"):
        local_only.for_recipe(recipe)


def test_recipe_roundtrip_and_validation():
    recipe = nacl_recipe()
    again = FeatureRecipe.from_dict(json.loads(json.dumps(recipe.to_dict())))
    assert again == recipe and again.n_features == recipe.n_features
    assert recipe.elements == ["Na", "Cl"]
    assert recipe.without_long_range().n_features == recipe.n_features - 2
    with pytest.raises(ValueError, match="hardness"):
        FeatureRecipe(local=recipe.local, chi={"Na": 0.0, "Cl": 0.0}, hardness=None,
                      widths=WIDTHS)
    with pytest.raises(ValueError, match="lacks elements"):
        FeatureRecipe(local=recipe.local, chi={"Na": 0.0}, hardness=HARDNESS, widths=WIDTHS)
    with pytest.raises(ValueError, match="chi_source"):
        replace(recipe, chi_source="oracle")
    with pytest.raises(ValueError, match="energy model"):
        SiteFeaturizer(replace(recipe, chi_source="energy_model"))
    with pytest.raises(ValueError, match="elements"):
        SiteFeaturizer(recipe)(bulk("Si", "diamond", a=5.43))


def test_chi_from_energy_model(tmp_path):
    """chi_source="energy_model": chi, J and alpha come from a snapqeq model file."""
    from snapqeq.models.cent import CENT
    from snapqeq.training.export import export_model

    descriptor = {"twojmax": 2, "rcutfac": 1.0, "radii": {"Na": 2.0, "Cl": 2.0},
                  "weights": {"Na": 1.0, "Cl": 0.5}}
    from snapqeq.calculators.cent import SnapQEqCalculator

    descriptor = {"twojmax": 2, "rcutfac": 1.0, "radii": {"Na": 2.0, "Cl": 2.0},
                  "weights": {"Na": 1.0, "Cl": 0.5}}
    torch.manual_seed(0)
    cent = CENT(2, 5, [3], [0.53, 1.06], [5.4, 2.7], [0.0, 0.0], chi_scale=0.5)
    with torch.no_grad():
        cent.chi0.copy_(torch.tensor([-2.0, 2.0], dtype=torch.float64))
    energy = export_model(cent, ["Na", "Cl"], descriptor, tmp_path / "energy.pt")
    recipe = replace(nacl_recipe(), chi_source="energy_model", chi=None, hardness=None,
                     widths=None)
    atoms = nacl_cell(np.random.default_rng(3))
    atoms.info["charge"] = 0.0
    f = compute_site_features(atoms, recipe, energy_model=energy)
    # the same charges as the energy model's own ASE calculator
    atoms.calc = SnapQEqCalculator(energy)
    assert f.charges == pytest.approx(atoms.get_charges(), abs=1e-9)
    # Na (lower chi) ends up positive, Cl negative
    assert np.all(f.charges[f.species == 0] > 0) and np.all(f.charges[f.species == 1] < 0)
    # a recipe built on the energy model's own descriptor gives the same long-range block
    own = recipe_from_energy_model(energy)
    assert own.local["twojmax"] == 2 and own.elements == ["Na", "Cl"]
    assert compute_site_features(atoms, own, energy).charges == pytest.approx(f.charges)


# --------------------------------------------------------------------------------------------
# Learning
# --------------------------------------------------------------------------------------------


def test_long_range_inputs_reduce_error(trained):
    with_lr = trained["with"]["metrics"]["rmse"]
    without = trained["without"]["metrics"]["rmse"]
    ratio = with_lr / without
    print(f"\nheld-out RMSE with long range {with_lr:.4f} Ha, without {without:.4f} Ha, "
          f"ratio {ratio:.3f} (train {trained['with']['seconds']:.1f} s + "
          f"{trained['without']['seconds']:.1f} s)")
    assert ratio < 0.5
    # with the long-range inputs the error approaches the noise floor
    assert with_lr < 2.0 * max(NOISE.values())


def test_calibration_one_sigma(trained):
    cover = trained["with"]["metrics"]["coverage_1sigma"]
    print(f"\nheld-out fraction within one predicted sigma: {cover:.3f}")
    assert 0.58 <= cover <= 0.78


def test_training_records(trained):
    model = trained["with"]["model"]
    assert model.history and {"epoch", "train_nll", "validation_nll"} <= set(model.history[0])
    assert {"train", "validation"} <= set(model.summary)
    meta = json.loads(model.metadata())
    assert meta["training"]["epochs_run"] == len(model.history)
    assert meta["n_inputs"] == 21 and meta["elements"] == ["Na", "Cl"]
    assert len(meta["exponents"]["Na"]) == 4 and len(meta["exponents"]["Cl"]) == 3


def test_training_is_deterministic(synthetic):
    s = synthetic
    kw = dict(features=s["features"][:20])
    a = train_olcao_model(s["structures"][:20], config(s["recipe"], epochs=4), **kw)
    b = train_olcao_model(s["structures"][:20], config(s["recipe"], epochs=4), **kw)
    c = train_olcao_model(s["structures"][:20], config(s["recipe"], epochs=4, seed=1), **kw)
    x = s["features"][30]
    assert np.array_equal(a.predict_features(x)[0], b.predict_features(x)[0], equal_nan=True)
    assert not np.allclose(a.predict_features(x)[0], c.predict_features(x)[0])


def test_ensemble_is_the_mixture_of_its_networks(synthetic, tmp_path):
    """config.ensemble trains one network per seed; the model's prediction is their
    equal-weight mixture (mean of means; mean variance + variance of the means) times
    ensemble_std_scale, also through the TorchScript file; NaN padding survives."""
    s = synthetic
    kw = dict(features=s["features"][:20])
    cfg = config(s["recipe"], epochs=4, seed=3)
    ens = train_olcao_model(s["structures"][:20], replace(cfg, ensemble=3), **kw)
    singles = [train_olcao_model(s["structures"][:20], replace(cfg, seed=3 + k), **kw)
               for k in range(3)]
    assert len(ens.members) == 2 and json.loads(ens.metadata())["ensemble_members"] == 3
    assert json.loads(ens.metadata())["training"]["config"]["ensemble"] == 3
    # the recorded metrics are the ensemble's, on all 20 training structures
    assert ens.summary["train"]["n_sites"] == sum(len(a) for a in s["structures"][:20])
    f = s["features"][30]
    means, stds = zip(*(m.predict_features(f) for m in singles), strict=True)
    means, stds = np.array(means), np.array(stds)
    with torch.no_grad():
        ens.ensemble_std_scale.fill_(1.5)
    mean, std = ens.predict_features(f)
    np.testing.assert_allclose(mean, means.mean(0), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(std, 1.5 * np.sqrt((stds**2).mean(0) + means.var(0)),
                               rtol=1e-12, atol=1e-14)
    assert np.array_equal(np.isnan(mean), np.isnan(means[0]))  # Cl's padded 4th term
    assert np.all(std[np.isfinite(std)] > 1.5 * np.sqrt((stds**2).mean(0))[np.isfinite(std)])
    loaded = load_olcao_model(export_olcao_model(ens, tmp_path / "ensemble.pt"))
    got = loaded(torch.as_tensor(f.matrix()), torch.as_tensor(f.species))
    for a, b in zip(got, (mean, std), strict=True):
        np.testing.assert_allclose(a.detach().numpy(), b, rtol=1e-12, atol=1e-14)
    other = train_olcao_model(s["structures"][:20], config(s["recipe"].without_long_range(),
                                                           epochs=2),
                              features=s["features"][:20])
    with pytest.raises(ValueError, match="same feature recipe"):
        ens.add_members([other])
    with pytest.raises(ValueError, match="ensemble must be >= 1"):
        config(s["recipe"], ensemble=0)


def test_padding_and_target_validation(synthetic):
    s = synthetic
    model = OLCAOModel(s["recipe"], EXPONENTS)
    mean, std = model.predict_features(s["features"][0])
    cl = s["features"][0].species == 1
    assert np.all(np.isnan(mean[cl, 3])) and np.all(np.isfinite(mean[~cl]))
    assert np.all(std[np.isfinite(std)] > 0)
    bad = s["structures"][0].copy()
    olcao.set_site_targets(bad, np.ones((8, 2)))
    with pytest.raises(ValueError, match="exponent series has 4 terms"):
        site_targets(bad, model)
    olcao.set_site_targets(bad, np.ones((8, 5)))
    with pytest.raises(ValueError, match="must be NaN"):
        site_targets(bad, model)


# --------------------------------------------------------------------------------------------
# Model file and prediction
# --------------------------------------------------------------------------------------------


def test_export_load_roundtrip(trained, synthetic, tmp_path):
    model = trained["with"]["model"]
    path = export_olcao_model(model, tmp_path / "olcao.pt")
    loaded = load_olcao_model(path)
    f = synthetic["features"][-1]
    x = torch.as_tensor(f.matrix())
    sp = torch.as_tensor(f.species)
    for got, ref in zip(loaded(x, sp), model(x, sp), strict=True):
        assert torch.equal(torch.isnan(got), torch.isnan(ref))
        assert torch.allclose(got.nan_to_num(), ref.nan_to_num(), rtol=1e-12, atol=0)
    assert loaded.elements == ["Na", "Cl"]
    assert loaded.recipe == synthetic["recipe"]
    assert loaded.exponents["Cl"] == pytest.approx(olcao.exponent_series("Cl", *EXPONENTS["Cl"]))
    with torch.no_grad():
        target = torch.as_tensor(site_targets(synthetic["structures"][-1], model))
        assert float(loaded.module.nll(x, sp, target)) < 10.0
    with pytest.raises(FileExistsError):
        export_olcao_model(model, path)
    export_olcao_model(model, path, overwrite=True)


def test_load_rejects_bad_files(trained, tmp_path):
    path = export_olcao_model(trained["with"]["model"], tmp_path / "good.pt")
    newer = tmp_path / "newer.pt"
    rewrite_model_metadata(path, newer, lambda m: m.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(ValueError, match="format version 2"):
        load_olcao_model(newer)
    partial = tmp_path / "partial.pt"
    rewrite_model_metadata(path, partial, lambda m: m.pop("exponents"))
    with pytest.raises(ValueError, match="lacks"):
        load_olcao_model(partial)
    energy = tmp_path / "energy.pt"
    rewrite_model_metadata(path, energy, lambda m: m.update(format="snapqeq-model"))
    with pytest.raises(ValueError, match="energy model"):
        load_olcao_model(energy)
    junk = tmp_path / "junk.pt"
    junk.write_text("not a model")
    with pytest.raises(ValueError, match="TorchScript"):
        load_olcao_model(junk)
    with pytest.raises(ValueError, match="not found"):
        load_olcao_model(tmp_path / "missing.pt")


def test_predict_command_writes_olcao_files(trained, synthetic, tmp_path):
    model_path = export_olcao_model(trained["with"]["model"], tmp_path / "olcao.pt")
    atoms = synthetic["structures"][-1].copy()
    del atoms.arrays[olcao.TARGETS_KEY]
    structure = tmp_path / "cell.extxyz"
    write(structure, atoms)
    atoms = read(structure)  # extxyz rounds positions to 1e-8 Angstrom
    out = tmp_path / "run"
    paths = predict_command(model_path, structure, out)
    assert {p.name for p in paths.values()} == set(olcao.PREDICTION_FILES.values())
    assert all(p.is_file() for p in paths.values())
    # the files hold the model's prediction, one potential type per site in OLCAO's order
    skl = olcao.read_skl(paths["skeleton"])
    assert len(skl) == len(atoms)
    mean, std, _ = predict_sites(model_path, atoms)
    tags = olcao.species_tags(atoms, per_site_species=True)
    site_of_type = np.argsort(olcao.potential_type_order(tags))
    for key, values in (("mean", mean), ("std", std)):
        pot = olcao.read_scfv(paths[key])
        assert pot.num_types == len(atoms)
        for t, site in enumerate(site_of_type):
            n = len(pot.up[t])
            assert pot.up[t] == pytest.approx(values[site, :n], rel=1e-8, abs=1e-9)
            assert n == (4 if atoms[site].symbol == "Na" else 3)
    with pytest.raises(FileExistsError):
        predict_command(model_path, structure, out)
    predict_command(model_path, structure, out, overwrite=True)


def test_cli_train_and_predict(synthetic, tmp_path, capsys):
    import argparse

    import yaml

    s = synthetic
    data = tmp_path / "train.extxyz"
    write(data, s["structures"][:16])
    test = tmp_path / "test.extxyz"
    write(test, s["structures"][-4:])
    cfg = {"data": str(data), "test": str(test), "output": str(tmp_path / "out"),
           "features": nacl_recipe().without_long_range().to_dict(),
           "exponents": {k: list(v) for k, v in EXPONENTS.items()},
           "hidden": [8], "epochs": 5, "progress": False, "split": "site"}
    cfg_path = tmp_path / "olcao.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    model_path = train_command(cfg_path)
    for name in ("olcao_model.pt", "history.json", "metrics.json", "parity.png"):
        assert (tmp_path / "out" / name).is_file()
    assert "test" in json.loads((tmp_path / "out" / "metrics.json").read_text())
    with pytest.raises(FileExistsError):
        train_command(cfg_path)

    parser = argparse.ArgumentParser(prog="snapqeq")
    add_parser(parser.add_subparsers(dest="command", required=True))
    argv = ["olcao", "predict", "--model", str(model_path), str(test), "--out",
            str(tmp_path / "pred")]
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    assert (tmp_path / "pred" / "gs_scfV-fb.dat").is_file()
    args = parser.parse_args(argv)
    assert args.func(args) == 2                       # refuses to overwrite
    err = capsys.readouterr().err
    # the command-line user is told about --force, not the Python keyword
    assert "refusing to overwrite" in err and "--force" in err and "overwrite=True" not in err
    args = parser.parse_args(argv + ["--force"])
    assert args.func(args) == 0


# --------------------------------------------------------------------------------------------
# The Si example
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_si_example_small_end_to_end(tmp_path):
    """The Si example trains on the real OLCAO data and writes the physical metrics."""
    import json

    out = tmp_path / "si_output"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "si_olcao" / "run.py"), "--small",
         "--output", str(out)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "SURROGATE" not in proc.stdout
    run_dir = out / "olcao_crystal_08_ideal"
    for name in olcao.PREDICTION_FILES.values():
        assert (run_dir / name).is_file()
    for plot in ("parity.png", "potential_error.png"):
        assert (out / plot).stat().st_size > 10_000
    pot = olcao.read_scfv(run_dir / "gs_scfV-fb.dat")
    assert pot.num_types == len(olcao.read_skl(run_dir / "olcao.skl")) == 8
    assert pot.alphas[0] == pytest.approx(olcao.exponent_series("Si"))
    metrics = json.loads((out / "metrics.json").read_text())
    v = metrics["main"]["potential"]
    # the prediction beats both naive starts on held-out real structures, by a margin
    assert v["predicted"]["rms"] < 0.8 * v["mean_start"]["rms"] < v["olcao_start"]["rms"]
    assert metrics["main"]["fraction_of_start_distance"]["mean"] < 0.10
    assert set(metrics["main"]["by_kind"]) == {"crystal", "strained", "vacancy",
                                               "interstitial", "amorphous"}
    assert len(metrics["ablation"]) == 4
    assert "| **predicted (this model)** |" in (out / "metrics.md").read_text()

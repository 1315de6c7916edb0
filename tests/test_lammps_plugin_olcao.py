"""Per-atom OLCAO potential coefficients from ``pair_style snapqeq``.

A model file with an OLCAO head gives, through ``compute ID all snapqeq/atom olcao
olcao_std`` (or ``fix pair`` with ``pair_style ... olcao yes``), the mean and standard
deviation of every atom's potential coefficients (Hartree; NaN beyond an element's exponent
series).  They are compared with the ASE calculator's
``potential_coefficients`` / ``potential_coefficients_std`` (same model file, its own
bispectra and charge equilibration), serially through the LAMMPS Python module and with
``mpirun -np 2 lmp``.  The heads have random weights (no training: this checks the plumbing,
not the learning), with input scaling from sample structures so that every feature block
(bispectrum, medium-range bispectrum, q, phi) moves the outputs.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_close
from test_lammps_plugin import (
    ELEMENTS,
    EXAMPLES,
    _descriptor,
    _expect_error,
    _run_lmp,
    boundary_of,
    make_model,
    nacl_cell,
    nacl_cluster,
    random_cent,
    setup_commands,
    write_data,
)

from snapqeq.calculators.cent import SnapQEqCalculator
from snapqeq.lammps.plugin import load_plugin
from snapqeq.lammps.runtime import open_lammps
from snapqeq.models.olcao_head import OLCAOModel
from snapqeq.models.site_features import FeatureRecipe, SiteFeaturizer, energy_model_fingerprint
from snapqeq.training.export import build_metadata, export_model

RTOL = 1e-8  # plugin vs calculator
TOL = 1e-13  # charge equilibration residual, plugin (tol) and calculator (tol)
ACCURACY = 1e-13  # Ewald truncation, plugin (ewald_accuracy) and calculator (accuracy)
VALUES = "olcao olcao_std"


def make_olcao_model(path: Path, desc: dict, medium: dict | None, seed: int,
                     rotated: bool = False) -> Path:
    """A random CENT with a random OLCAO head on [B | medium B | q phi]; ``rotated`` gives
    the head a random non-identity output basis."""
    cent = random_cent(desc, seed=seed)
    recipe = FeatureRecipe(local=desc, medium=medium, chi_source="energy_model")
    fingerprint = energy_model_fingerprint(build_metadata(cent, ELEMENTS, desc))
    torch.manual_seed(seed)
    head = OLCAOModel(recipe, hidden=[8], n_components=2, energy_fingerprint=fingerprint)
    featurizer = SiteFeaturizer(recipe.without_long_range())
    x = np.concatenate([featurizer(a).matrix(long_range=False)
                        for a in (nacl_cluster(), nacl_cell())])
    mean = np.append(x.mean(0), [0.0, 0.0])
    scale = np.append(np.maximum(x.std(0), 1e-2 * (np.abs(x.mean(0)) + 1.0)), [0.3, 3.0])
    with torch.no_grad():
        head.head.in_mean.copy_(torch.as_tensor(mean).expand_as(head.head.in_mean))
        head.head.in_std.copy_(torch.as_tensor(scale).expand_as(head.head.in_std))
        if rotated:  # a rotated output basis (as trained heads have) lives in the module
            gen = torch.Generator().manual_seed(seed)
            for e in range(len(ELEMENTS)):
                n = int(head.head.mask[e].sum())
                q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
                basis = q * torch.linspace(0.5, 2.0, n, dtype=torch.float64)
                head.head.out_basis[e, :n, :n] = basis
                head.head.out_basis_inv[e, :n, :n] = torch.linalg.inv(basis)
    return export_model(cent, ELEMENTS, desc, path, overwrite=True, olcao=head)


@pytest.fixture(scope="session")
def olcao_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("olcao_models")
    return {
        # medium-range block with its own cutoff, radii, weights, twojmax, quadratic terms
        "medium": make_olcao_model(
            root / "medium.pt", _descriptor(),
            _descriptor(twojmax=2, rcutfac=1.6, radii={"Na": 2.7, "Cl": 3.0},
                        weights={"Na": 0.8, "Cl": 1.0}, quadraticflag=True), seed=3,
            rotated=True),
        # the model's quadratic chem descriptor only (+ q, phi)
        "local": make_olcao_model(
            root / "local.pt", _descriptor(twojmax=2, quadraticflag=True, chemflag=True,
                                           bzeroflag=False), None, seed=4),
        "no-head": make_model(root / "no_head.pt", _descriptor(twojmax=2), seed=5),
    }


def calculator_coefficients(atoms, model: Path, total_charge: float):
    calc = SnapQEqCalculator(str(model), total_charge=total_charge, method="dense", tol=TOL,
                             accuracy=ACCURACY)
    mean = calc.get_property("potential_coefficients", atoms)
    return mean, calc.results["potential_coefficients_std"]


def lammps_coefficients(atoms, model: Path, plugin: Path, tmp_path: Path,
                        total_charge: float, output: str = f"compute olcao all snapqeq/atom "
                        f"{VALUES}", options: str = ""):
    """run 0 with ``output`` (a compute snapqeq/atom or a fix pair with ID olcao); its
    columns in atom order."""
    data = write_data(tmp_path / "in.data", atoms)
    lmp = open_lammps()
    try:
        load_plugin(lmp, plugin)
        lmp.commands_list(
            setup_commands(data, model, boundary_of(atoms), total_charge, tol=TOL,
                           accuracy=ACCURACY, options=options) + [output, "run 0"])
        n = lmp.extract_global("nlocal")
        if output.startswith("compute"):
            return lmp.numpy.extract_compute("olcao", 1, 2)[:n].copy()
        return lmp.numpy.extract_fix("olcao", 1, 2)[:n].copy()
    finally:
        lmp.close()


def assert_coefficients_close(got, ref, rtol: float, what: str) -> float:
    """Same NaN pattern, then the finite entries within rtol (per-column scale)."""
    nan = np.isnan(ref)
    assert nan.any() and not nan.all()  # both elements' series lengths are exercised
    assert np.array_equal(np.isnan(got), nan), f"{what}: NaN positions differ"
    return assert_close(np.where(nan, 0.0, got), np.where(nan, 0.0, ref), rtol=rtol,
                        what=what)


STRUCTURES = {"cluster": (nacl_cluster, 1.0), "periodic": (nacl_cell, 0.0)}


@pytest.mark.parametrize("model_name", ["medium", "local"])
@pytest.mark.parametrize("structure", sorted(STRUCTURES))
def test_coefficients_match_calculator(plugin, olcao_models, tmp_path, model_name, structure):
    make, total_charge = STRUCTURES[structure]
    atoms = make()
    model = olcao_models[model_name]
    got = lammps_coefficients(atoms, model, plugin, tmp_path, total_charge)
    mean, std = calculator_coefficients(atoms, model, total_charge)
    d = mean.shape[1]
    assert got.shape == (len(atoms), 2 * d)
    assert_coefficients_close(got[:, :d], mean, RTOL, "olcao")
    assert_coefficients_close(got[:, d:], std, RTOL, "olcao_std")
    assert np.nanmin(std) > 0


def test_keyword_every_step_serves_fix_pair(plugin, olcao_models, tmp_path):
    """pair_style ... olcao yes serves fix pair (with other fields)."""
    atoms, model = nacl_cluster(), olcao_models["medium"]
    got = lammps_coefficients(atoms, model, plugin, tmp_path, 1.0,
                              output="fix olcao all pair 1 snapqeq q 0 olcao 0 olcao_std 0",
                              options="olcao yes")
    mean, std = calculator_coefficients(atoms, model, 1.0)
    d = mean.shape[1]
    assert abs(got[:, 0].sum() - 1.0) < 1e-10  # the charges come first
    assert_coefficients_close(got[:, 1:1 + d], mean, RTOL, "olcao")
    assert_coefficients_close(got[:, 1 + d:], std, RTOL, "olcao_std")


ERRORS = {
    "no-head": ("no-head", "", f"compute olcao all snapqeq/atom {VALUES}",
                r"cannot provide per-atom olcao: model file .* has no OLCAO head"),
    "no-head-keyword": ("no-head", "olcao yes", "",
                        r"olcao yes: model file .* has no OLCAO head"),
    "fix-pair-without-keyword": ("medium", "", "fix olcao all pair 1 snapqeq olcao 0",
                                 r"per-atom olcao through fix pair needs pair_style keyword "
                                 r"olcao yes"),
    "unknown-value": ("medium", "", "compute olcao all snapqeq/atom q charge",
                      r"Compute snapqeq/atom: unknown value charge"),
    "no-committee": ("medium", "", "compute olcao all snapqeq/atom force_std",
                     r"cannot provide per-atom force_std: model file .* holds a single model"),
    "compute-before-pair-style": ("medium", "", None,
                                  r"Compute snapqeq/atom requires pair_style snapqeq"),
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_clear_errors(plugin, olcao_models, tmp_path, case):
    model_name, keyword, output, pattern = ERRORS[case]
    data = write_data(tmp_path / "c.data", nacl_cluster())
    commands = setup_commands(data, olcao_models[model_name], "f f f", tol=TOL,
                              accuracy=ACCURACY, options=keyword)
    if output is None:  # the compute before any pair style
        at = next(k for k, c in enumerate(commands) if c.startswith("pair_style"))
        commands.insert(at, f"compute olcao all snapqeq/atom {VALUES}")
    elif output:
        commands.append(output)
    _expect_error(commands + ["run 0"], pattern, plugin)


MPI_DECK = """\
plugin load {plugin}
{setup}
compute olcao all snapqeq/atom olcao olcao_std
dump coefficients all custom 1 olcao.dump id c_olcao[*]
dump_modify coefficients sort id format float %.17g
run 0
"""


@pytest.mark.parametrize("structure", sorted(STRUCTURES))
def test_mpi_np1_np2_agree(plugin, olcao_models, tmp_path, structure):
    """The medium-range neighbours (9 A, beyond the model's cutoff) reach across ranks."""
    make, total_charge = STRUCTURES[structure]
    atoms = make(repeat=(2, 2, 2))
    model = olcao_models["medium"]
    data = write_data(tmp_path / "mpi.data", atoms)
    setup = "\n".join(setup_commands(data, model, boundary_of(atoms), total_charge, tol=TOL,
                                     accuracy=ACCURACY))
    dumps = {}
    for nprocs in (1, 2):
        run_dir = tmp_path / f"np{nprocs}"
        run_dir.mkdir()
        (run_dir / "in.lmp").write_text(MPI_DECK.format(plugin=plugin, setup=setup))
        out = _run_lmp(["-in", "in.lmp", "-log", "none"], run_dir, nprocs=nprocs)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        assert f"on {nprocs} procs" in out.stdout
        dumps[nprocs] = np.loadtxt(run_dir / "olcao.dump", skiprows=9)[:, 1:]
    assert_coefficients_close(dumps[2], dumps[1], 1e-10, "np 2 vs np 1")
    mean, std = calculator_coefficients(atoms, model, total_charge)
    assert_coefficients_close(dumps[1], np.concatenate([mean, std], axis=1), RTOL,
                              "np 1 vs calculator")


def test_evaluated_on_the_compute_steps_in_md(plugin, olcao_models, tmp_path):
    """A dump every 2 steps invokes the compute on even steps; after 4 MD steps its values
    are those of the final positions."""
    atoms, model = nacl_cluster(seed=11), olcao_models["medium"]
    data = write_data(tmp_path / "md.data", atoms)
    lmp = open_lammps()
    try:
        load_plugin(lmp, plugin)
        lmp.commands_list(
            setup_commands(data, model, "f f f", 1.0, tol=TOL, accuracy=ACCURACY)
            + ["mass * 30.0", "velocity all create 600 12345 mom yes rot yes",
               "fix nve all nve", "timestep 0.002",
               f"compute olcao all snapqeq/atom {VALUES}",
               f"dump coefficients all custom 2 {tmp_path / 'md.dump'} id c_olcao[1]",
               "run 4"])
        n = lmp.extract_global("nlocal")
        got = lmp.numpy.extract_compute("olcao", 1, 2)[:n].copy()
        moved = atoms.copy()
        moved.positions = lmp.numpy.extract_atom("x")[:n].copy()
    finally:
        lmp.close()
    assert np.abs(moved.positions - atoms.positions).max() > 1e-3
    mean, std = calculator_coefficients(moved, model, 1.0)
    assert_coefficients_close(got, np.concatenate([mean, std], axis=1), RTOL, "step 4")


def test_example_deck_dumps_coefficients(plugin, tmp_path):
    """examples/lammps/in.nacl_olcao with the head of make_example_model.py --olcao, np 2."""
    for f in EXAMPLES.iterdir():
        if f.is_file() and (f.name.startswith("in.") or f.suffix in (".lmp", ".py")):
            shutil.copy(f, tmp_path)
    made = subprocess.run([sys.executable, "make_example_model.py", "--twojmax", "4",
                           "--olcao"], cwd=tmp_path, capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    out = _run_lmp(["-in", "in.nacl_olcao", "-log", "none", "-var", "steps", "50",
                    "-var", "plugin", str(plugin)], tmp_path, nprocs=2)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    lines = (tmp_path / "output" / "olcao_coefficients.dump").read_text().splitlines()
    header = lines[8].split()[2:]
    rows = [line.split() for line in lines[9:] if len(line.split()) == len(header)]
    assert len(rows) == 2 * 64  # steps 0 and 50
    values = np.array(rows, dtype=float)
    coefficients = values[:, header.index("c_olcao[1]"):]
    assert coefficients.shape[1] % 2 == 0 and np.isnan(coefficients).any()
    assert np.isfinite(values[:, header.index("q")]).all()

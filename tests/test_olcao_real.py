"""snapqeq.io.olcao against the files of a real OLCAO run (examples/si_olcao/data).

The run directory ``olcao_run_crystal_08_ideal`` holds what OLCAO (commit fb50d73) wrote for
the ideal 8-atom diamond cell with one species per site: ``inputs/olcao.dat``,
``inputs/structure.dat``, ``inputs/datSkl.map``, the atomic start ``inputs/scfV.dat`` and the
converged ``gs_scfV-fb.dat``.  Each bug fix of issue 14 has a test here that failed before it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk
from ase.io import read

from snapqeq.io import olcao

DATA = Path(__file__).resolve().parents[1] / "examples" / "si_olcao" / "data"
RUN = DATA / "olcao_run_crystal_08_ideal"


def si_alphas() -> dict[str, np.ndarray]:
    return {"Si": olcao.exponent_series("Si")}


def test_real_run_reads_back_in_extxyz_order_and_values():
    atoms, coeffs = olcao.read_site_coefficients(RUN)
    frames = read(DATA / "olcao_si.extxyz", ":")
    ref = next(a for a in frames if a.info["structure_name"] == "crystal_08_ideal")
    np.testing.assert_allclose(atoms.positions, ref.positions, atol=1e-6)
    # the extxyz stores 8 decimals of the same numbers
    np.testing.assert_allclose(coeffs, ref.arrays["potential_coefficients"], atol=6e-9)
    start = olcao.read_scfv(RUN / "inputs" / "scfV.dat")
    np.testing.assert_allclose(start.up[0], ref.arrays["start_coefficients"][0], atol=6e-9)
    # OLCAO's own start file has non-zero density columns (the docstring no longer says zeros)
    assert np.abs(start.up_rho[0][:, :2]).max() > 0.0


def test_read_site_coefficients_relative_run_dir(tmp_path, monkeypatch):
    # the default coefficient path was prefixed with run_dir twice ('run/run/gs_scfV-fb.dat')
    shutil.copytree(RUN, tmp_path / "run")
    monkeypatch.chdir(tmp_path)
    atoms, coeffs = olcao.read_site_coefficients("run")
    _, ref = olcao.read_site_coefficients(tmp_path / "run")
    np.testing.assert_array_equal(coeffs, ref)
    _, explicit = olcao.read_site_coefficients("run", coefficient_file="inputs/scfV.dat")
    assert explicit.shape == (8, 16) and not np.allclose(explicit, ref)


def test_read_olcao_dat_exponents_of_the_real_run():
    types = olcao.read_olcao_dat_exponents(RUN / "inputs" / "olcao.dat")
    assert [label for label, _ in types] == [f"si{k}_1" for k in range(1, 9)]
    for _, alphas in types:
        np.testing.assert_allclose(alphas, olcao.exponent_series("Si"), rtol=1e-12)


def test_check_exponents_against_run(tmp_path):
    atoms, _ = olcao.read_site_coefficients(RUN)
    olcao.check_exponents_against_run(RUN, atoms, si_alphas())  # the real series: accepted
    wrong_alpha = {"Si": olcao.exponent_series("Si", alpha_max=1e5)}
    with pytest.raises(ValueError, match=r"type 1 \(si1_1\) uses alpha = 0.15 .. 1e\+06.*"
                                         "wrong exponents"):
        olcao.check_exponents_against_run(RUN, atoms, wrong_alpha)
    with pytest.raises(ValueError, match="has 16 terms, the model's Si series 20"):
        olcao.check_exponents_against_run(RUN, atoms, {"Si": olcao.exponent_series("Si", n=20)})
    with pytest.raises(ValueError, match="8 potential types, the prediction one per site"):
        olcao.check_exponents_against_run(RUN, atoms[:4], si_alphas())
    with pytest.raises(FileNotFoundError, match="no olcao.dat"):
        olcao.check_exponents_against_run(tmp_path, atoms, si_alphas())


@pytest.mark.parametrize("line", [
    "fractional coordinates from ase", "cart 8", "space 227", "supercell 2 2 2", "full",
    "prim", "cell", "cellxyz", "cell fixed", "end of title", "END_TITLE", "title"])
def test_write_skl_refuses_titles_olcao_reads_as_keywords(tmp_path, line):
    atoms = bulk("Si", "diamond", a=5.431, cubic=True)
    with pytest.raises(ValueError, match="title line .*would"):
        olcao.write_skl(tmp_path / "x.skl", atoms, title=f"my structure\n{line}")
    safe = olcao.safe_skl_title(f"my structure\n{line}")
    olcao.write_skl(tmp_path / "x.skl", atoms, title=safe)
    back = olcao.read_skl(tmp_path / "x.skl")
    assert back.info["olcao_title"].splitlines() == ["my structure", f"- {line}"]
    # and the real keywords are the ones that follow the title
    assert len(back) == 8 and back.info["olcao_space_group"] == "1_a"


def test_harmless_titles_are_kept(tmp_path):
    title = "cell of a-Si\nspace group P1 from ASE\nfrac"  # not keyword-shaped for OLCAO
    assert olcao.safe_skl_title(title) == title
    olcao.write_skl(tmp_path / "x.skl", bulk("Si", cubic=True), title=title)


def test_write_prediction_sanitizes_title_and_writes_site_extxyz(tmp_path):
    atoms, coeffs = olcao.read_site_coefficients(RUN)
    atoms = atoms[[3, 0, 5, 1, 2, 7, 6, 4]]  # any input order
    coeffs = coeffs[[3, 0, 5, 1, 2, 7, 6, 4]]
    std = np.full_like(coeffs, 0.01) * np.arange(1, 9)[:, None]
    paths = olcao.write_prediction(tmp_path, atoms, coeffs, std, si_alphas(),
                                   title="fractional coordinates from ase")
    skl = olcao.read_skl(paths["skeleton"])
    assert skl.info["olcao_title"] == "- fractional coordinates from ase"
    sites = read(paths["sites"])
    np.testing.assert_allclose(sites.positions, atoms.positions, atol=1e-12)
    # extxyz keeps 8 decimals (1e-8 Ha); the OLCAO files keep full precision
    np.testing.assert_allclose(sites.arrays["potential_coefficients"], coeffs, atol=6e-9)
    np.testing.assert_allclose(sites.arrays["potential_coefficients_std"], std, atol=6e-9)
    alphas = json.loads(sites.info["potential_alphas"])
    np.testing.assert_allclose(alphas["Si"], olcao.exponent_series("Si"))


def test_write_prediction_carries_plus_u_terms_of_a_template(tmp_path):
    template = olcao.read_scfv(RUN / "inputs" / "scfV.dat")
    template.plusuj_count = 1
    template.plusuj_lines = ("TOTAL__OR__SPIN_UP", "  1  0.1 0.2", "SPIN_DN", "  1  0.1 0.2")
    olcao.write_scfv(tmp_path / "scfV.dat", template)
    atoms, coeffs = olcao.read_site_coefficients(RUN)
    paths = olcao.write_prediction(tmp_path / "pred", atoms, coeffs, 0 * coeffs + 0.01,
                                   si_alphas(), template=tmp_path / "scfV.dat")
    for key in ("mean", "std"):
        got = olcao.read_scfv(paths[key])
        assert got.plusuj_count == 1
        assert got.plusuj_lines == template.plusuj_lines
    # without a template: OLCAO's empty stub, as in its own files
    bare = olcao.write_prediction(tmp_path / "bare", atoms, coeffs, 0 * coeffs + 0.01,
                                  si_alphas())
    assert olcao.read_scfv(bare["mean"]).plusuj_count == 0
    assert (bare["mean"].read_text().splitlines()[-3:]
            == (RUN / "gs_scfV-fb.dat").read_text().splitlines()[-3:])


def test_prediction_of_the_converged_coefficients_reproduces_olcaos_file(tmp_path):
    # OLCAO started from its own converged file converges in one iteration; the handoff
    # must write the same numbers in the same type order
    atoms, coeffs = olcao.read_site_coefficients(RUN)
    paths = olcao.write_prediction(tmp_path, atoms, coeffs, 0 * coeffs + 0.01, si_alphas(),
                                   template=RUN / "inputs" / "scfV.dat")
    mine, theirs = olcao.read_scfv(paths["mean"]), olcao.read_scfv(RUN / "gs_scfV-fb.dat")
    assert mine.num_types == theirs.num_types
    for a, b, x, y in zip(mine.up, theirs.up, mine.alphas, theirs.alphas, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12)
        np.testing.assert_allclose(x, y, rtol=1e-9)


def test_gaussian_potential_grid_matches_a_direct_sum():
    atoms, coeffs = olcao.read_site_coefficients(RUN)
    alphas = olcao.exponent_series("Si")
    (v, dv), points = olcao.gaussian_potential_grid(atoms, [coeffs, coeffs + 1e-3], alphas,
                                                    spacing=2.0)
    cell = atoms.cell.array / olcao.BOHR
    sites = atoms.positions / olcao.BOHR
    shifts = np.array([[i, j, k] for i in range(-3, 4) for j in range(-3, 4)
                       for k in range(-3, 4)]) @ cell
    for m in (0, 17, len(points) - 1):
        d2 = ((points[m] - sites[:, None, :] - shifts[None]) ** 2).sum(-1)  # (N, images)
        direct = np.sum(coeffs[:, :, None] * np.exp(-alphas[None, :, None] * d2[:, None]))
        assert v[m] == pytest.approx(direct, rel=1e-10, abs=1e-12)
    # linear in the coefficients: a uniform shift of A_i shifts V by sum_i of the Gaussians
    assert np.all(dv > v)
    with pytest.raises(ValueError, match="coefficients must be finite"):
        olcao.gaussian_potential_grid(atoms, [coeffs[:4]], alphas)


def test_shipped_si_model_predicts_olcao_ready_files(tmp_path, capsys):
    """examples/models/si_olcao.pt (trained on the real data) through `snapqeq olcao
    predict --olcao-run`: exponent check against the real olcao.dat, +U section from its
    scfV.dat, files that read back in OLCAO's layout, and a clear error for a run whose
    series differs."""
    from snapqeq.cli.main import main
    from snapqeq.models.olcao_head import load_olcao_model

    model = DATA.parents[1] / "models" / "si_olcao.pt"
    loaded = load_olcao_model(model)
    assert loaded.elements == ["Si"] and loaded.recipe.long_range is False
    np.testing.assert_allclose(loaded.exponents["Si"], olcao.exponent_series("Si"))
    atoms, ref = olcao.read_site_coefficients(RUN)
    structure = tmp_path / "crystal.extxyz"
    atoms.write(structure)
    out = tmp_path / "pred"
    argv = ["olcao", "predict", "--model", str(model), str(structure), "--out", str(out),
            "--olcao-run", str(RUN)]
    assert main(argv) == 0
    mean = olcao.read_scfv(out / "gs_scfV-fb.dat")
    assert mean.num_types == 8 and all(len(a) == 16 for a in mean.alphas)
    sites = read(out / "site_coefficients.extxyz")
    pred, std = sites.arrays["potential_coefficients"], sites.arrays["potential_coefficients_std"]
    assert np.all(std > 0)
    # a held-out structure of the model's split: closer to OLCAO's SCF than the atomic start
    start = np.array(olcao.read_scfv(RUN / "inputs" / "scfV.dat").up)
    (v_ref, v_pred, v_start), _ = olcao.gaussian_potential_grid(
        atoms, [ref, pred, start], olcao.exponent_series("Si"), spacing=1.5)
    assert np.sqrt(np.mean((v_pred - v_ref) ** 2)) < 0.1 * np.sqrt(np.mean((v_start - v_ref) ** 2))
    # a run directory whose olcao.dat has another series is refused before anything is written
    bad = tmp_path / "bad_run"
    shutil.copytree(RUN, bad)
    dat = bad / "inputs" / "olcao.dat"
    text = dat.read_text().replace("1.500000e-01 1.000000e+06", "1.500000e-01 1.000000e+05")
    dat.write_text(text)
    capsys.readouterr()
    assert main(argv[:-1] + [str(bad), "--force"]) == 2
    assert "wrong exponents" in capsys.readouterr().err


def test_check_structure_against_run():
    atoms, _ = olcao.read_site_coefficients(RUN)
    olcao.check_structure_against_run(RUN, atoms)
    with pytest.raises(ValueError, match="from the structure's site"):
        olcao.check_structure_against_run(RUN, atoms[[1, 0, 2, 3, 4, 5, 6, 7]])
    wrapped = atoms.copy()
    wrapped.positions[2] += atoms.cell[0]  # a lattice vector away: the same site
    olcao.check_structure_against_run(RUN, wrapped)
    strained = atoms.copy()
    strained.set_cell(atoms.cell * 1.01, scale_atoms=True)
    with pytest.raises(ValueError, match="the cell differs"):
        olcao.check_structure_against_run(RUN, strained)
    with pytest.raises(ValueError, match="has 8 sites, the structure 7"):
        olcao.check_structure_against_run(RUN, atoms[:7])

"""examples/si_olcao/make_olcao_data.py up to the files it writes (OLCAO itself is not
installable here): skeletons and command lines (--dry-run), and collecting a real OLCAO run
(--collect-only on examples/si_olcao/data/olcao_run_crystal_08_ideal)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from ase.io import read
from conftest import load_script

from snapqeq.io import olcao

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "si_olcao"
DATA = EXAMPLE / "data"


@pytest.fixture(scope="module")
def script():
    return load_script(EXAMPLE / "make_olcao_data.py", "make_olcao_data")


def frames(names):
    images = read(DATA / "olcao_si.extxyz", ":")
    return [next(a for a in images if a.info["structure_name"] == n) for n in names]


def test_dry_run_writes_one_species_per_site_skeletons_and_commands(script, tmp_path):
    picked = frames(["vacancy_07_00", "vacancy_15_50"])
    structures = tmp_path / "in.extxyz"
    for a in picked:
        a.write(structures, append=True)
    out = tmp_path / "runs"
    assert script.main([str(structures), "--out", str(out), "--dry-run"]) == 0
    for atoms in picked:
        skl = olcao.read_skl(out / atoms.info["structure_name"] / "olcao.skl")
        tags = list(skl.arrays["olcao_tags"])
        assert tags == [f"si{k + 1}" for k in range(len(atoms))]  # one species per site
        assert len(set(olcao.potential_type_order(tags))) == len(atoms)
        frac = skl.get_scaled_positions() - atoms.get_scaled_positions()
        assert np.abs(frac - np.round(frac)).max() < 1e-10
    commands = (out / "commands.sh").read_text().splitlines()
    # the k-point options of each structure (info["kpoints"]), then the SCF
    assert commands[-2].endswith("vacancy_07_00 && makeinput.py -kp 2 2 2 && uolcao.py)")
    assert commands[-1].endswith(
        "vacancy_15_50 && makeinput.py -kp 2 2 1 -kpshift 0.5 0.5 0.0 && uolcao.py)")
    with pytest.raises(FileExistsError, match="pass --force"):
        script.main([str(structures), "--out", str(out), "--dry-run"])
    with pytest.raises(SystemExit):  # no OLCAO: a clear usage error, nothing run
        script.main([str(structures), "--out", str(out), "--force",
                     "--olcao-dir", str(tmp_path / "nowhere")])


def test_collect_only_reads_the_real_run(script, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(DATA / "olcao_run_crystal_08_ideal", runs / "crystal_08_ideal")
    out = tmp_path / "collected.extxyz"
    assert script.main(["--collect-only", str(runs), "--collect", str(out)]) == 0
    (got,) = read(out, ":")
    (ref,) = frames(["crystal_08_ideal"])
    np.testing.assert_allclose(got.arrays["potential_coefficients"],
                               ref.arrays["potential_coefficients"], atol=2e-8)
    np.testing.assert_allclose(got.arrays["start_coefficients"],
                               ref.arrays["start_coefficients"], atol=2e-8)
    assert got.info["scf_iterations"] == ref.info["scf_iterations"] == 5
    assert got.info["olcao_total_energy"] == pytest.approx(ref.info["olcao_total_energy"],
                                                           abs=1e-8)
    # a run that did not reach CONVERGENCE_TEST is skipped, not collected
    iters = runs / "crystal_08_ideal" / "gs_iter-fb.dat"
    iters.write_text(iters.read_text().replace("0.00004257", "0.00104257"))
    assert script.collect(runs / "crystal_08_ideal") is None

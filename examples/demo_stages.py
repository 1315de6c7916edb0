"""The stages of the demo (``examples/demo.py``), one function each.

Every stage returns a JSON-serialisable dict of what the report shows; the examples and the
library do the work (NaCl example: data, training, metrics; minima-hopping example; LAMMPS
decks; Si OLCAO example; ``snapqeq`` command line). Units: Å, eV, e, fs/ps; energy errors
in mHa/atom beside meV/atom as in the CENT paper.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from types import ModuleType

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from ase import Atoms, units
from ase.io import write
from ase.md.velocitydistribution import Stationary, ZeroRotation, thermalize_momenta
from ase.md.verlet import VelocityVerlet
from tqdm.auto import tqdm

from snapqeq.calculators.cent import SnapQEqCalculator
from snapqeq.cli import main as cli
from snapqeq.datasets.clusters import nacl_cube
from snapqeq.datasets.xtb import xtb_singlepoint
from snapqeq.io.model_file import load_model
from snapqeq.io.olcao import read_scfv
from snapqeq.io.structures import read_structures
from snapqeq.lammps.plugin import load_plugin, plugin_path
from snapqeq.lammps.runtime import lammps_environment, open_lammps

EXAMPLES = Path(__file__).resolve().parent
VENV_BIN = Path(sys.prefix) / "bin"
SPLITS = ("train", "validation", "test")
DATA_FILES = (*SPLITS, "compression")
LAMMPS_DECK = "in.nacl_cluster"
LAMMPS_DECK_FILES = (LAMMPS_DECK, "nacl_common.lmp", "nacl_pair.lmp")
LAMMPS_TIMESTEP_PS = 0.001  # the deck's timestep (metal units)


class StageError(RuntimeError):
    """A stage could not run (a missing example, a failed command); the message says why."""


def load_example(relative: str, name: str) -> ModuleType:
    """Import an example script (``examples/<relative>``) as a module named ``name``."""
    path = EXAMPLES / relative
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise StageError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


NACL = load_example("nacl_clusters/run.py", "nacl_example")
AL = load_example("nacl_clusters/active_learning.py", "nacl_active_learning")


def run_command(cmd: list[str], what: str, cwd: Path | None = None) -> None:
    """Run a command with its output on the terminal; StageError on failure."""
    result = subprocess.run([str(c) for c in cmd], cwd=cwd, env=lammps_environment())
    if result.returncode != 0:
        raise StageError(f"{what} failed (exit code {result.returncode}): "
                         + " ".join(str(c) for c in cmd))


def run_cli(argv: list[str]) -> None:
    """``snapqeq ARGV`` in this process (the installed command line, same code)."""
    print("$ snapqeq " + " ".join(argv))
    code = cli.main(argv)
    if code != 0:
        raise StageError(f"snapqeq {' '.join(argv)} failed (exit code {code})")


# ------------------------------------------------------------------------------- 1. data
def reference_data(data_dir: Path, cache_dir: Path, options: tuple[str, ...],
                   force: bool) -> dict:
    """GFN2-xTB NaCl clusters by the CENT protocol (examples/nacl_clusters/make_data.py).

    ``options`` are make_data.py options (counts, ratios); the generated structures and
    tblite results are cached in ``cache_dir``. Returns counts per split and charge.
    """
    NACL.make_data(data_dir, small=False, options=[*options, "--cache", str(cache_dir)],
                   force=force)
    return {"splits": {name: split_summary(read_structures(data_dir / f"{name}.extxyz"))
                       for name in DATA_FILES}}


def split_summary(structures: list[Atoms]) -> dict:
    """Number of structures, cluster sizes (atoms) and total charges (e) of a data set."""
    sizes = sorted({len(a) for a in structures})
    charges = Counter(int(round(a.info.get("charge", 0.0))) for a in structures)
    return {"structures": len(structures), "sizes": sizes,
            "charges": {f"{q:+d}" if q else "0": n for q, n in sorted(charges.items())}}


def data_sets(data_dir: Path) -> tuple[dict[str, list[Atoms]], list[Atoms]]:
    """The train/validation/test structures and the compression series."""
    sets = {k: read_structures(data_dir / f"{k}.extxyz") for k in SPLITS}
    return sets, read_structures(data_dir / "compression.extxyz")


# ---------------------------------------------------------------------------- 2. models
def train_model(config) -> dict:
    """Train one model of the NaCl example (a ``snapqeq.training.trainer.TrainConfig``)."""
    model, throughput = NACL.trained(config, retrain=True)
    history = json.loads((Path(config.output) / "history.json").read_text())
    return {"model": str(model), "throughput": throughput, "epochs": len(history),
            "final_train_loss": history[-1]["train_loss"] if history else None}


def evaluate_models(models: dict[str, Path], data_dir: Path, root: Path) -> dict:
    """Paper metrics of every model through the ASE calculator (NaCl example code);
    parity plots ``parity_<name>.png`` and ``compression.png`` in ``root``."""
    sets, compression = data_sets(data_dir)
    results = {name: NACL.evaluate_model(path, sets, compression, root / f"parity_{name}.png",
                                         progress=True)
               for name, path in models.items()}
    NACL.compression_plot(compression, results, root / "compression.png")
    ratios, reference = NACL.compression_reference(compression)
    return {"models": results, "compression_ratios": ratios.tolist(),
            "compression_reference": reference.tolist()}


def choose_model(metrics: dict[str, dict]) -> str:
    """The model with the lowest validation energy RMSE (train RMSE without validation)."""
    def score(name: str) -> float:
        m = metrics[name]
        value = m.get("validation")
        return value if value is not None else m["train/validation"]

    return min(metrics, key=score)


def active_learning(training_dir: Path, out: Path, settings, cache: Path, data_dir: Path,
                    root: Path, name: str) -> dict:
    """One active-learning round (examples/nacl_clusters/active_learning.py) on the run in
    ``training_dir``, in a fresh ``out``; the retrained model's paper metrics (parity plot
    ``parity_<name>_al.png`` in ``root``) beside the round's summary."""
    shutil.rmtree(out, ignore_errors=True)
    summary = AL.run_round(training_dir, out, settings, cache)
    sets, compression = data_sets(data_dir)
    summary["metrics"] = NACL.evaluate_model(Path(summary["model"]), sets, compression,
                                             root / f"parity_{name}_al.png", progress=True)
    return summary


# ---------------------------------------------------------------------------- 3. export
def export_model_file(training_dir: Path, out: Path, check: Atoms) -> dict:
    """``snapqeq export`` of a training run's best checkpoint to ``out``, reloaded and
    checked against the model file written by training (energy of ``check``, eV)."""
    run_cli(["export", str(training_dir), "--out", str(out), "--force"])
    meta = load_model(out).metadata
    energies = [single_energy(path, check) for path in (out, training_dir / "model.pt")]
    return {"path": str(out), "bytes": out.stat().st_size, "elements": meta["elements"],
            "format": meta["format"], "format_version": meta["format_version"],
            "short_range": meta["has_short_range"],
            "twojmax": meta["descriptor"]["twojmax"],
            "energy_difference_eV": abs(energies[0] - energies[1])}


def single_energy(model: Path, atoms: Atoms) -> float:
    """Energy (eV) of ``atoms`` (total charge ``info["charge"]``) with a model file."""
    work = atoms.copy()
    work.calc = SnapQEqCalculator(model)
    return float(work.get_potential_energy())


# ---------------------------------------------------------------------- 4a. minima hopping
def minima_hopping(model: Path, out_dir: Path, clusters: tuple[str, ...], minima: int,
                   plot: Path) -> dict:
    """examples/minima_hopping/run.py (ASE MinimaHopping with the model, GFN2-xTB energies
    of the minima found) in a fresh ``out_dir``; its history plot is copied to ``plot``.
    Returns the per-cluster table of :func:`minima_table`."""
    script = EXAMPLES / "minima_hopping" / "run.py"
    if not script.is_file():
        raise StageError(f"{script} is missing (the minima-hopping example is not in this "
                         "checkout)")
    shutil.rmtree(out_dir, ignore_errors=True)  # the example resumes what it finds there
    run_command([sys.executable, script, "--model", model, "--out", out_dir,
                 "--clusters", *clusters, "--minima", str(minima)], "minima hopping")
    shutil.copyfile(out_dir / "history.png", plot)
    summary = json.loads((out_dir / "summary.json").read_text())
    return {"clusters": {name: minima_table(entry) for name, entry in summary.items()},
            "out": str(out_dir)}


def minima_table(entry: dict) -> dict:
    """One cluster of the minima-hopping summary: the minima energies (eV, lowest first),
    wall time (s), and the check against GFN2-xTB: whether it has the same lowest minimum
    and the largest error of the energies above the lowest minimum (meV/atom)."""
    energies = np.array(entry["minima_energies_eV"])
    row = {"atoms": entry["n_atoms"], "charge": entry["total_charge"],
           "minima": energies.tolist(), "lowest": entry["lowest_energy_eV"],
           "force_calls": entry["force_calls"], "wall_time": entry["wall_s"]}
    reference = entry.get("reference_energies_eV")
    if reference:
        ref = np.array(reference)
        error = (energies - energies[0]) - (ref - ref[0])
        row["same_lowest_as_xtb"] = int(entry["reference_lowest_index"]) == 0
        row["max_relative_error_meV_per_atom"] = float(
            1e3 * np.abs(error).max() / entry["n_atoms"])
    return row


# ------------------------------------------------------------------------------ 4b. NVE
def nve_run(model: Path, steps: int, plot: Path, final: Path, temperature: float = 300.0,
            timestep_fs: float = 1.0, every: int = 10, seed: int = 7) -> dict:
    """NVE MD (ASE VelocityVerlet) of the 64-atom rock-salt cube from ``temperature`` (K).

    Returns the drift of the total energy (linear fit, meV/atom/ps), its largest excursion
    from the start (meV/atom), the mean temperature (K), the speed (ms per step), and the
    potential-energy change from the first to the last frame (meV/atom) with the model and
    with GFN2-xTB; plots the energies to ``plot`` and writes the last frame to ``final``.
    """
    atoms = nacl_cube(4)
    atoms.info["charge"] = 0.0
    atoms.calc = SnapQEqCalculator(model)
    thermalize_momenta(atoms, temperature, rng=np.random.default_rng(seed))
    Stationary(atoms)
    ZeroRotation(atoms)
    start_frame = atoms.copy()
    dyn = VelocityVerlet(atoms, timestep=timestep_fs * units.fs)
    rows = [(0.0, atoms.get_potential_energy(), atoms.get_kinetic_energy())]
    start = time.perf_counter()
    with tqdm(total=steps, desc="NVE (ASE)", unit="step") as bar:
        for _ in range(steps // every):
            dyn.run(every)
            rows.append((dyn.get_time() / (1000 * units.fs), atoms.get_potential_energy(),
                         atoms.get_kinetic_energy()))
            bar.update(every)
    seconds_per_step = (time.perf_counter() - start) / max(steps, 1)
    write(final, atoms)
    t, epot, ekin = np.array(rows).T
    n = len(atoms)
    etot = (epot + ekin) / n * 1e3  # meV/atom
    dof = 3 * n - 6  # isolated cluster without translation and rotation
    md_energy_plot(t, {"potential": epot / n - etot[0] / 1e3, "kinetic": ekin / n},
                   {"ASE VelocityVerlet": etot - etot[0]}, plot,
                   f"NVE, {n}-atom NaCl cluster, {timestep_fs:g} fs steps (ASE)",
                   "eV/atom (potential: E - E_total(0))")
    xtb = [xtb_singlepoint(frame, 0).energy for frame in (start_frame, atoms)]
    return {"atoms": n, "steps": steps, "timestep_fs": timestep_fs,
            "duration_ps": float(t[-1]), "start_temperature_K": temperature,
            "mean_temperature_K": float(np.mean(2 * ekin / (dof * units.kB))),
            "drift_meV_per_atom_ps": float(np.polyfit(t, etot, 1)[0]),
            "max_excursion_meV_per_atom": float(np.max(np.abs(etot - etot[0]))),
            "ms_per_step": 1e3 * seconds_per_step,
            "model_energy_change_meV_per_atom": float(1e3 * (epot[-1] - epot[0]) / n),
            "xtb_energy_change_meV_per_atom": float(1e3 * (xtb[1] - xtb[0]) / n)}


# ---------------------------------------------------------------------------- 5. LAMMPS
def build_plugin() -> Path:
    """``snapqeq build-lammps-plugin`` (a no-op when up to date); the plugin's path."""
    run_cli(["build-lammps-plugin"])
    return plugin_path()


def lammps_single_point(model: Path, atoms: Atoms, workdir: Path, plugin: Path
                        ) -> tuple[float, np.ndarray, np.ndarray]:
    """Energy (eV), forces (eV/Å) and charges (e) of a cluster from ``pair_style snapqeq``
    in the LAMMPS Python module (free boundaries, total charge ``info["charge"]``)."""
    elements = load_model(model).elements
    data = workdir / "single_point.data"
    write(data, atoms, format="lammps-data", atom_style="charge", specorder=elements,
          masses=True)
    lmp = open_lammps()
    try:
        load_plugin(lmp, plugin)
        lmp.commands_string(f"""
units metal
atom_style charge
atom_modify map array sort 0 0.0
boundary f f f
read_data {data}
pair_style snapqeq {model} total_charge {atoms.info.get("charge", 0.0)} tol 1e-12
pair_coeff * * {" ".join(elements)}
run 0
""")
        n = len(atoms)
        order = np.argsort(lmp.numpy.extract_atom("id")[:n])
        energy = float(lmp.get_thermo("pe"))
        forces = np.array(lmp.numpy.extract_atom("f")[:n])[order]
        charges = np.array(lmp.numpy.extract_atom("q")[:n])[order]
    finally:
        lmp.close()
    return energy, forces, charges


def compare_lammps_ase(model: Path, atoms: Atoms, workdir: Path, plugin: Path) -> dict:
    """LAMMPS versus the ASE calculator on one cluster: energy, forces, charges."""
    box = atoms.copy()
    box.pbc = False
    box.center(vacuum=10.0)
    e_lmp, f_lmp, q_lmp = lammps_single_point(model, box, workdir, plugin)
    box.calc = SnapQEqCalculator(model, tol=1e-12)
    e_ase, f_ase, q_ase = box.get_potential_energy(), box.get_forces(), box.get_charges()
    return {"atoms": len(box), "charge": float(box.info.get("charge", 0.0)),
            "energy_ase_eV": float(e_ase), "energy_lammps_eV": e_lmp,
            "energy_difference_eV": abs(e_lmp - float(e_ase)),
            "max_force_difference_eV_per_A": float(np.abs(f_lmp - f_ase).max()),
            "max_force_eV_per_A": float(np.abs(f_ase).max()),
            "max_charge_difference_e": float(np.abs(q_lmp - q_ase).max())}


def run_deck(model: Path, plugin: Path, steps: int, workdir: Path, nprocs: int) -> dict:
    """NVE MD with examples/lammps/in.nacl_cluster (64-atom cube, 300 K, trained model: no
    repulsion overlay) in ``workdir``, serial or under the venv's ``mpirun -np nprocs``.
    Returns the thermo table (time in ps, energies in eV) and the wall time (s)."""
    workdir.mkdir(parents=True, exist_ok=True)
    for name in LAMMPS_DECK_FILES:
        shutil.copyfile(EXAMPLES / "lammps" / name, workdir / name)
    cmd = [VENV_BIN / "lmp", "-in", LAMMPS_DECK, "-log", "log.lammps", "-var", "model", model,
           "-var", "plugin", plugin, "-var", "repulsion", "0", "-var", "steps", str(steps)]
    if nprocs > 1:
        cmd = [VENV_BIN / "mpirun", "-np", str(nprocs), *cmd]
    label = "LAMMPS serial" if nprocs == 1 else f"LAMMPS mpirun -np {nprocs}"
    seconds = stream_lammps([str(c) for c in cmd], workdir, steps, label)
    thermo = parse_thermo((workdir / "log.lammps").read_text())
    if not thermo or thermo["Step"][-1] != steps:
        raise StageError(f"{label}: no complete thermo output in {workdir / 'log.lammps'}")
    return {"nprocs": nprocs, "seconds": seconds, "thermo": thermo}


def stream_lammps(cmd: list[str], cwd: Path, steps: int, label: str) -> float:
    """Run LAMMPS with a progress bar fed by its thermo lines; wall time (s)."""
    with tqdm(total=steps, desc=label, unit="step") as bar:
        proc = subprocess.Popen(cmd, cwd=cwd, env=lammps_environment(), text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        tail: list[str] = []
        for line in proc.stdout:
            tail = (tail + [line])[-20:]
            fields = line.split()
            if fields and fields[0].isdigit() and len(fields) > 3:
                bar.update(min(int(fields[0]), steps) - bar.n)
        code = proc.wait()
        seconds = bar.format_dict["elapsed"]
    if code != 0:
        raise StageError(f"{label} failed (exit code {code}):\n{''.join(tail)}")
    return seconds


def parse_thermo(log: str) -> dict[str, list[float]]:
    """The last thermo table of a LAMMPS log: column name -> values."""
    blocks = re.findall(r"^\s*(Step\s.*?)\n(.*?)^Loop time", log, flags=re.M | re.S)
    if not blocks:
        return {}
    header, body = blocks[-1]
    names = header.split()
    rows = [line.split() for line in body.splitlines()]
    rows = [r for r in rows if len(r) == len(names) and r[0].isdigit()]
    return {name: [float(r[k]) for r in rows] for k, name in enumerate(names)}


def md_summary(run: dict, n_atoms: int) -> dict:
    """Total-energy drift (linear fit, meV/atom/ps) and speed of a LAMMPS run."""
    thermo = run["thermo"]
    t = np.array(thermo["Step"]) * LAMMPS_TIMESTEP_PS
    etot = np.array(thermo["TotEng"]) / n_atoms * 1e3
    return {"nprocs": run["nprocs"], "seconds": run["seconds"],
            "steps": int(thermo["Step"][-1]),
            "ms_per_step": 1e3 * run["seconds"] / max(thermo["Step"][-1], 1),
            "drift_meV_per_atom_ps": float(np.polyfit(t, etot, 1)[0]),
            "max_excursion_meV_per_atom": float(np.max(np.abs(etot - etot[0]))),
            "mean_temperature_K": float(np.mean(thermo["Temp"]))}


def lammps_energy_plot(runs: list[dict], n_atoms: int, path: Path) -> Path:
    """Potential energy (eV/atom) and total-energy change (meV/atom) of the LAMMPS runs."""
    thermo = runs[0]["thermo"]
    t = np.array(thermo["Step"]) * LAMMPS_TIMESTEP_PS
    shift = thermo["TotEng"][0] / n_atoms
    top, bottom = {}, {}
    for run in runs:
        label = "serial" if run["nprocs"] == 1 else f"mpirun -np {run['nprocs']}"
        top[f"potential, {label}"] = np.array(run["thermo"]["PotEng"][:len(t)]) / n_atoms - shift
        bottom[label] = 1e3 * (np.array(run["thermo"]["TotEng"][:len(t)]) / n_atoms - shift)
    return md_energy_plot(t, top, bottom, path,
                          f"LAMMPS pair_style snapqeq, {n_atoms}-atom NaCl cluster, NVE")


def md_energy_plot(t: np.ndarray, energies: dict[str, np.ndarray],
                   total_change: dict[str, np.ndarray], path: Path, title: str,
                   ylabel: str = "E - E_total(0) (eV/atom)") -> Path:
    """Two panels over time (ps): energies (eV/atom) above, and below the change of the
    total energy (meV/atom), which shows the conservation that the top panel cannot."""
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(6.5, 5.5), sharex=True,
                                   gridspec_kw={"height_ratios": [3, 2]})
    for k, (label, y) in enumerate(energies.items()):
        ax1.plot(t, y, ls="--" if k % 2 else "-", label=label)
    for k, (label, y) in enumerate(total_change.items()):
        ax2.plot(t, y, ls="--" if k % 2 else "-", label=label)
    ax1.set_ylabel(ylabel)
    ax2.set_ylabel("E_total - E_total(0)\n(meV/atom)")
    ax2.set_xlabel("time (ps)")
    ax1.set_title(title, fontsize=10)
    for ax in (ax1, ax2):
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def identical_until(runs: list[dict]) -> int:
    """Last thermo step up to which all runs print the same potential energy."""
    steps = runs[0]["thermo"]["Step"]
    values = np.array([r["thermo"]["PotEng"][:len(steps)] for r in runs])
    differs = np.flatnonzero(np.ptp(values, axis=0) > 0)
    last = len(steps) - 1 if len(differs) == 0 else differs[0] - 1
    return int(steps[max(last, 0)])


def lammps_stage(model: Path, structure: Atoms, steps: int, workdir: Path,
                 plot: Path) -> dict:
    """Build the plugin, compare LAMMPS with ASE on ``structure``, run the cluster deck
    serially and under ``mpirun -np 2``, plot the energy traces."""
    workdir.mkdir(parents=True, exist_ok=True)
    plugin = build_plugin()
    single = compare_lammps_ase(model, structure, workdir, plugin)
    runs = [run_deck(model, plugin, steps, workdir / name, nprocs)
            for name, nprocs in (("serial", 1), ("mpi2", 2))]
    n_atoms = 64  # the deck's 2x2x2 rock-salt cube
    lammps_energy_plot(runs, n_atoms, plot)
    serial, mpi = (np.array(r["thermo"]["PotEng"]) for r in runs)
    m = min(len(serial), len(mpi))
    return {"plugin": str(plugin), "single_point": single,
            "md": [md_summary(r, n_atoms) for r in runs],
            "serial_vs_mpi_initial_eV": float(abs(serial[0] - mpi[0])),
            "serial_vs_mpi_max_eV": float(np.abs(serial[:m] - mpi[:m]).max()),
            "serial_vs_mpi_identical_until_step": identical_until(runs),
            "thermo_interval_steps": int(runs[0]["thermo"]["Step"][1]
                                         - runs[0]["thermo"]["Step"][0])}


# ----------------------------------------------------------------------------- 6. OLCAO
def shorter(arg: str) -> str:
    """A path argument relative to the working directory when it lies below it."""
    path = Path(arg)
    if path.is_absolute() and path.is_relative_to(Path.cwd()):
        return str(path.relative_to(Path.cwd()))
    return arg


def olcao_stage(workdir: Path, out_dir: Path, quick: bool) -> dict:
    """Real OLCAO potentials: the Si example (its quick mode unless ``quick`` is False)
    trains the OLCAO model on OLCAO's own SCF results for Si (examples/si_olcao/data) and
    measures V(r) on held-out cells; ``snapqeq olcao predict`` then writes the OLCAO files of
    the held-out ideal crystal to ``out_dir`` (A_i in Hartree), checked against that
    structure's real OLCAO run directory."""
    example = workdir / "si_olcao"
    run_command([sys.executable, EXAMPLES / "si_olcao" / "run.py", "--output", example,
                 "--force", *(["--small"] if quick else [])], "Si OLCAO example")
    metrics = json.loads((example / "metrics.json").read_text())
    run_dir = EXAMPLES / "si_olcao" / "data" / "olcao_run_crystal_08_ideal"
    argv = ["olcao", "predict", "--model", str(example / "si_olcao_model.pt"),
            str(example / "crystal_08_ideal.extxyz"), "--out", str(out_dir),
            "--olcao-run", str(run_dir), "--force"]
    run_cli(argv)
    mean = read_scfv(out_dir / "gs_scfV-fb.dat")
    std = read_scfv(out_dir / "gs_scfV-fb.std.dat")
    coeffs = np.concatenate(mean.up)
    main = metrics["main"]
    return {"surrogate": False, "data": "real OLCAO SCF results (examples/si_olcao/data)",
            "command": "snapqeq " + " ".join(shorter(a) for a in argv),
            "sites": mean.num_types, "terms_per_site": len(mean.alphas[0]),
            "coefficient_range_Ha": [float(coeffs.min()), float(coeffs.max())],
            "mean_sigma_mHa": 1e3 * float(np.mean(np.concatenate(std.up))),
            "split": metrics["split"], "potential": main["potential"],
            "fraction_of_start_distance": main["fraction_of_start_distance"],
            "coefficients": main["coefficients"], "ablation": metrics["ablation"],
            "metrics_table": (example / "metrics.md").read_text(),
            "plots": [str(example / "parity.png"), str(example / "potential_error.png")],
            "files": sorted(str(p) for p in out_dir.iterdir())}

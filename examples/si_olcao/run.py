"""Real OLCAO SCF potentials of Si -> OLCAO potential-coefficient model -> OLCAO input files.

    python examples/si_olcao/run.py                 # about 1 minute on 2 cores
    python examples/si_olcao/run.py --small         # < 30 s (used by the test suite)
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
   basis; mapped back to A_i inside the TorchScript model), trained on the likelihood.
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
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.neighborlist import neighbor_list

from snapqeq.olcao import (
    gaussian_potential_grid,
    read_scfv,
    read_site_coefficients,
    read_site_targets,
    write_site_targets,
)
from snapqeq.olcao_cli import predict_command
from snapqeq.olcao_model import (
    OLCAOTrainConfig,
    export_olcao_model,
    site_targets,
    train_olcao_model,
)
from snapqeq.plots import coefficient_parity_plot
from snapqeq.site_features import FeatureRecipe, SiteFeaturizer

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
CHI_PER_BOND = 1.0  # eV/e per missing/extra neighbour: the ablation's long-range chi


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
    return OLCAOTrainConfig(features=features, hidden=[64, 64], n_components=2,
                            epochs=200 if small else 600, batch_size=64, lr=3e-3,
                            patience=60, validation_fraction=0.3, split="structure",
                            output_basis="potential", seed=seed, progress=False,
                            num_threads=1)


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def potential_errors(atoms: Atoms, reference: np.ndarray, candidates: dict[str, np.ndarray],
                     alphas: np.ndarray, spacing: float) -> dict[str, dict]:
    """V_candidate - V_reference on the grid of the cell: RMS, max |.|, RMS about the cell
    average (a constant shift only moves all eigenvalues), all Hartree."""
    names = list(candidates)
    values, _ = gaussian_potential_grid(atoms, [reference, *candidates.values()], alphas,
                                        spacing)
    out = {}
    for k, name in enumerate(names):
        dv = values[k + 1] - values[0]
        out[name] = {"rms": float(np.sqrt(np.mean(dv**2))), "max": float(np.abs(dv).max()),
                     "rms_shift_removed": float(np.std(dv)), "mean_shift": float(dv.mean())}
    out["grid_points"] = int(values.shape[1])
    return out


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


def evaluate(model, test: list[Atoms], features, train_mean: np.ndarray, spacing: float,
             progress: bool) -> dict:
    """All held-out metrics of one model (see the module docstring)."""
    from tqdm import tqdm

    alphas = model.alphas["Si"]
    per_structure, preds = [], []
    for atoms, feats in tqdm(list(zip(test, features, strict=True)), desc="V(r) on grids",
                             unit="structure", disable=not progress):
        mean, std = model.predict_features(feats)
        ref = site_targets(atoms, model)
        start = np.asarray(atoms.arrays["start_coefficients"], dtype=float)
        errors = potential_errors(atoms, ref, {"predicted": mean,
                                               "mean_start": np.broadcast_to(train_mean,
                                                                             ref.shape),
                                               "olcao_start": start}, alphas, spacing)
        per_structure.append({"name": atoms.info["structure_name"], "kind": atoms.info["kind"],
                              "atoms": len(atoms),
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
    return {"potential": pooled, "per_structure": per_structure,
            "fraction_of_start_distance": {"mean": float(np.mean(fraction)),
                                           "max": float(np.max(fraction))},
            "fraction_of_mean_start_distance": {"mean": float(np.mean(fraction_mean)),
                                                "max": float(np.max(fraction_mean))},
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
    f, fm = e["fraction_of_start_distance"], e["fraction_of_mean_start_distance"]
    c = e["coefficients"]
    lines += ["",
              f"Prediction error / start-to-SCF distance (RMS, per structure): mean "
              f"{100 * f['mean']:.1f} %, worst {100 * f['max']:.1f} % (target <= 10 %). "
              f"Against the per-element-mean start: mean {100 * fm['mean']:.0f} %, worst "
              f"{100 * fm['max']:.0f} %.",
              f"Sigma calibration (all held-out coefficients): {100 * c['within_1sigma']:.1f} %"
              f" within 1 sigma (target 60-76 %), {100 * c['within_2sigma']:.1f} % within "
              "2 sigma (Gaussian: 95.4 %).", "",
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
    lines += ["", "| ablation (same split, same training) | inputs per site | V RMS (Ha) | "
              "fraction of start distance | within 1 sigma |", "|---|---|---|---|---|"]
    for name, a in metrics["ablation"].items():
        lines.append(f"| {name} | {a['n_inputs']} | {a['v_rms']:.4f} | "
                     f"{100 * a['fraction']:.1f} % | {100 * a['within_1sigma']:.0f} % |")
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
    parser.add_argument("--seed", type=int, default=1, help="training seed")
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

    # 3-4. ablation: local / + medium / + long range; the second one is the model
    variants = {"local (4.2 A bispectrum)": recipe(medium=False),
                "local + medium (7.0 A bispectrum)": recipe(),
                "local + medium + long range (q, phi; chi from coordination)":
                    recipe(long_range=True)}
    ablation, models = {}, {}
    for name, r in variants.items():
        featurizer = SiteFeaturizer(r)
        chis = [coordination_chi(a) for a in images] if r.long_range else None
        feats = featurizer.many(images, chis=chis)
        model = train_olcao_model(train, train_config(args.small, r, args.seed),
                                  features=[feats[k] for k in train_idx])
        result = evaluate(model, test, [feats[k] for k in test_idx], train_mean, spacing,
                          progress=not args.small)
        models[name] = (model, result)
        ablation[name] = {"n_inputs": r.n_features, "epochs": len(model.history),
                          "v_rms": result["potential"]["predicted"]["rms"],
                          "fraction": result["fraction_of_start_distance"]["mean"],
                          "within_1sigma": result["coefficients"]["within_1sigma"]}
        print(f"[{time.perf_counter() - t0:5.1f} s] {name}: {r.n_features} inputs, "
              f"{len(model.history)} epochs; V RMS {1000 * ablation[name]['v_rms']:.2f} mHa")
    main_name = "local + medium (7.0 A bispectrum)"
    model, result = models[main_name]
    mean, std, ref = result.pop("_arrays")
    for _, r in models.values():
        r.pop("_arrays", None)

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
    predicted = read_scfv(paths["mean"])
    a_pred = np.array(predicted.up)
    start = np.array(read_scfv(RUN_DIR / "inputs" / "scfV.dat").up)
    v = potential_errors(run_atoms, run_coeffs, {"predicted": a_pred, "olcao_start": start},
                         model.alphas["Si"], spacing)
    metrics["handoff_crystal_08_ideal"] = {
        "files": {k: str(p.relative_to(out)) for k, p in paths.items()},
        "v_rms_predicted": v["predicted"]["rms"], "v_rms_olcao_start": v["olcao_start"]["rms"],
        "scf_iterations_from_atomic_start": 5}
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

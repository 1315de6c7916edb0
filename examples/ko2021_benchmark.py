"""Shared driver of the 4G-HDNNP benchmark examples (real DFT data of Ko et al. 2021).

``examples/ko2021_carbon_chain/run.py`` and ``examples/ko2021_au2_mgo/run.py`` call
:func:`main` with their system's recipe. The driver

1. reads RuNNer/n2p2 ``input.data`` files (:func:`snapqeq.io.structures.read_structures`);
2. without ``--test``, holds out a fixed, stated part of ``--train`` as the test set
   (numpy seed 0 permutation); a further part of the training structures is the
   validation set for early stopping and checkpoint selection;
3. trains the recipe with :func:`snapqeq.training.trainer.train` (energies, forces and Hirshfeld
   charges in the loss);
4. evaluates the exported model file on the test set through the ASE calculator (the code
   users run, not the training path), prints the metrics beside the published 4G-HDNNP,
   SpookyNet and n2p2 figures, writes ``metrics.json``, ``report.md``, parity plots
   (energies; forces and charges) and the learning curve, and prints as its last line
   one JSON object ``{"E_meV_atom", "F_meV_A", "q_e", "train_s", ...}`` (test RMSEs).

Units: energies meV/atom, forces meV/Angstrom (the papers give meV/bohr: x 1.8897 here),
charges e.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from ase.io import write

from snapqeq.analysis.metrics import Record, compute_metrics, grouped_metrics
from snapqeq.analysis.plots import parity_plot
from snapqeq.calculators.cent import SnapQEqCalculator
from snapqeq.cli.evaluation import evaluate_structures
from snapqeq.io.structures import read_structures
from snapqeq.training.trainer import TrainConfig, train
from snapqeq.units import BOHR, HARTREE

#: training settings both benchmark recipes share (TrainConfig keys): trainable hardness,
#: energies, forces and Hirshfeld charges in the loss, cosine learning-rate decay over 300
#: epochs; the best validation checkpoint is kept (no early stop)
COMMON_RECIPE = {
    "learn_hardness": True,
    "epochs": 300,
    "lr": 3e-3,
    "lr_schedule": "cosine",
    "patience": 1000,
    "loss_weights": {"energy": 300.0, "forces": 10.0, "charges": 1000.0},
}


def _split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, held out) of a fixed permutation: the first round(fraction * n)."""
    order = np.random.default_rng(seed).permutation(n)
    n_out = max(1, int(round(fraction * n)))
    return np.sort(order[n_out:]), np.sort(order[:n_out])


def force_charge_parity(records: list[Record], path: Path, title: str) -> Path:
    """Test-set parity of force components (eV/Angstrom) and charges (e), RMSE in the
    panel titles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f = np.concatenate([r.forces.ravel() for r in records])
    f_ref = np.concatenate([r.forces_ref.ravel() for r in records])
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2))
    panels = [(axes[0], f_ref, f, "force component", "eV/Å", 1e3, "meV/Å")]
    if all(r.charges_ref is not None for r in records):
        q = np.concatenate([r.charges for r in records])
        q_ref = np.concatenate([r.charges_ref for r in records])
        panels.append((axes[1], q_ref, q, "charge", "e", 1.0, "e"))
    else:
        axes[1].set_visible(False)
    for ax, ref, pred, name, unit, scale, rmse_unit in panels:
        rmse = float(np.sqrt(np.mean((pred - ref) ** 2))) * scale
        ax.scatter(ref, pred, s=6, alpha=0.6)
        lo, hi = float(min(ref.min(), pred.min())), float(max(ref.max(), pred.max()))
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.set_xlabel(f"DFT {name} ({unit})")
        ax.set_ylabel(f"model {name} ({unit})")
        ax.set_title(f"{name}: test RMSE {rmse:.4g} {rmse_unit}")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _row(name: str, m) -> str:
    f = "-" if m.force_rmse_mev is None else f"{m.force_rmse_mev:.1f}"
    q = "-" if m.charge_rmse is None else f"{m.charge_rmse:.4f}"
    return (f"| {name} | {m.count} | {m.energy_rmse_mev:.3f} | {m.energy_rmse_mha:.4f} | "
            f"{f} | {q} |")


def report(system: dict, metrics: dict, sizes: dict, train_s: float,
           structures_per_s: float, split_note: str) -> str:
    """Markdown table of this run beside the published figures."""
    lines = [f"# {system['title']}: snapqeq vs published results", "",
             f"Data: {split_note}", "",
             f"Training: {train_s:.0f} s wall on this machine "
             f"({structures_per_s:.1f} structures/s with forces in the loss).", "",
             "| model / test set | n | E RMSE (meV/atom) | E RMSE (mHa/atom) | "
             "F RMSE (meV/Å) | q RMSE (e) |", "|---|---|---|---|---|---|"]
    for name, m in metrics.items():
        lines.append(_row(f"snapqeq, {name}", m))
    for name, (e, f_bohr, q) in system["published"].items():
        f = "-" if f_bohr is None else f"{f_bohr / BOHR:.1f}"
        lines.append(f"| {name} | | {e:.3f} | {e / HARTREE:.4f} | {f} | "
                     f"{'-' if q is None else f'{q:.4f}'} |")
    lines += ["", "Published figures: test RMSEs on the full data sets of the papers "
              "(forces converted from meV/bohr); "
              "the n2p2 row, where given, was trained on exactly the structures given here. "
              f"Structures: {sizes}."]
    return "\n".join(lines) + "\n"


def main(system: dict, argv: list[str] | None = None) -> dict:
    """Run the benchmark of ``system`` (recipe, published figures); returns the summary."""
    p = argparse.ArgumentParser(description=system["title"])
    p.add_argument("--train", required=True, help="RuNNer input.data (or extxyz) to train on")
    p.add_argument("--test", help="held-out structures (default: a fixed "
                   f"{system['test_fraction']:.0%} of --train, numpy seed 0)")
    p.add_argument("--out", required=True, help="output folder")
    epochs = system["config"].get("epochs", COMMON_RECIPE["epochs"])
    p.add_argument("--epochs", type=int, default=epochs,
                   help=f"training epochs (default {epochs})")
    p.add_argument("--limit", type=int, help="use only the first N training structures "
                   "(quick checks)")
    p.add_argument("--seed", type=int, default=0, help="network initialisation and "
                   "batch order (default 0)")
    committee = system["config"].get("committee", 1)
    p.add_argument("--committee", type=int, default=committee,
                   help=f"committee members whose mean is the model (default {committee})")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                   help="committee members trained at once (default: the CPU count)")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data_dir = out / "data"
    data_dir.mkdir(exist_ok=True)

    structures = read_structures(args.train)
    if args.test:
        test = read_structures(args.test)
        split_note = (f"trained on {args.train} ({len(structures)} structures), tested on "
                      f"{args.test} ({len(test)} structures)")
    else:
        keep, held = _split(len(structures), system["test_fraction"], 0)
        test = [structures[i] for i in held]
        structures = [structures[i] for i in keep]
        split_note = (f"{args.train}: a fixed {system['test_fraction']:.0%} "
                      f"({len(test)} structures, numpy seed 0 permutation) held out as the "
                      f"test set, {len(structures)} for training")
    if args.limit:
        structures = structures[:args.limit]
    keep, held = _split(len(structures), system["validation_fraction"], 1)
    sets = {"train": [structures[i] for i in keep],
            "validation": [structures[i] for i in held], "test": test}
    for name, frames in sets.items():
        write(data_dir / f"{name}.extxyz", frames)
    split_note += (f"; of the training structures {len(sets['validation'])} (numpy seed 1) "
                   "are the validation set for early stopping")

    recipe = {**COMMON_RECIPE, **system["config"], "epochs": args.epochs, "seed": args.seed,
              "committee": args.committee, "jobs": args.jobs}
    config = TrainConfig(data={k: str(data_dir / f"{k}.extxyz") for k in sets},
                         output=str(out / "training"), cache=str(out / "descriptor_cache"),
                         split="info", **recipe)
    t0 = time.perf_counter()
    result = train(config)
    train_s = time.perf_counter() - t0

    calc = SnapQEqCalculator(result.model_path)
    records = evaluate_structures(calc, read_structures(data_dir / "test.extxyz"),
                                  progress=False)
    groups = grouped_metrics(records)
    metrics = {"test, all": compute_metrics(records)}
    metrics.update({f"test, {k}": groups[k] for k in ("neutral", "ionized") if k in groups})
    sizes = {k: len(v) for k, v in sets.items()}
    text = report(system, metrics, sizes, train_s, result.structures_per_second, split_note)
    (out / "report.md").write_text(text)
    parity_plot({"test": records}, out / "parity_energy.png")
    force_charge_parity(records, out / "parity_forces_charges.png", system["title"])
    m = metrics["test, all"]
    summary = {"E_meV_atom": m.energy_rmse_mev, "F_meV_A": m.force_rmse_mev,
               "q_e": m.charge_rmse, "train_s": train_s,
               "structures_per_s": result.structures_per_second, "sizes": sizes,
               "groups": {k: v.as_dict() for k, v in metrics.items()},
               "model": str(result.model_path)}
    (out / "metrics.json").write_text(json.dumps(summary, indent=1))
    print(text)
    print(f"files in {out}: report.md, metrics.json, parity_energy.png, "
          "parity_forces_charges.png, training/learning_curve.png, training/model.pt")
    print(json.dumps({k: summary[k] for k in ("E_meV_atom", "F_meV_A", "q_e", "train_s")}))
    return summary

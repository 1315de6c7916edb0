"""NaCl clusters, the CENT paper's protocol, with GFN2-xTB reference data.

    python examples/nacl_clusters/run.py [--small] [--out DIR]

1. reference data (make_data.py: sizes 8-80, total charge 0/+1/+2, train < 44 atoms,
   test = 64 atoms, validation the rest, plus a compression series of a 64-atom cube);
2. trains the CENT model (paper hyperparameters: 3-3 hidden tanh units, widths 1 and 2 bohr,
   J = 0.2 and 0.1 Ha/e^2) and a 4G variant with a short-range energy network;
3. evaluates both with the ASE calculator and writes the metrics beside the paper's numbers,
   a parity plot and energy versus compression, and ``report.md``.

Cached: the data, descriptors and trained models are reused when present.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from snapqeq.analysis.metrics import HARTREE, grouped_metrics
from snapqeq.analysis.plots import energy_curves, parity_plot
from snapqeq.calculators.cent import SnapQEqCalculator
from snapqeq.cli.evaluation import evaluate_structures
from snapqeq.io.structures import read_structures
from snapqeq.training.trainer import TrainConfig, train
from snapqeq.units import BOHR

HERE = Path(__file__).resolve().parent
PAPER = {"train/validation": 0.26, "test neutral": 0.13, "test ionized": 0.44}  # mHa/atom

DESCRIPTOR = {"twojmax": 6, "rcutfac": 1.0, "radii": {"Na": 3.25, "Cl": 3.25},
              "weights": {"Na": 1.0, "Cl": 0.5}}


def make_data(data_dir: Path, small: bool, options: Sequence[str] = (),
              force: bool = False) -> None:
    """Run make_data.py into ``data_dir`` unless its four files exist (or ``force``).

    ``options`` are further make_data.py options (counts, ratios, ``--cache``).
    """
    names = ("train.extxyz", "validation.extxyz", "test.extxyz", "compression.extxyz")
    if not force and all((data_dir / n).exists() for n in names):
        print(f"== reference data: cached in {data_dir}")
        return
    print("== reference data: GFN2-xTB (tblite)")
    cmd = [sys.executable, str(HERE / "make_data.py"), "--out", str(data_dir)]
    cmd += (["--small"] if small else []) + list(options) + (["--force"] if force else [])
    subprocess.run(cmd, check=True)


def config(name: str, data_dir: Path, out: Path, small: bool, short: bool) -> TrainConfig:
    return TrainConfig(
        data={k: str(data_dir / f"{k}.extxyz") for k in ("train", "validation", "test")},
        output=str(out / name),
        cache=str(out / "descriptor_cache"),
        descriptor=DESCRIPTOR,
        widths={"Na": 1.0 * BOHR, "Cl": 2.0 * BOHR},
        hardness={"Na": 0.2 * HARTREE, "Cl": 0.1 * HARTREE},
        hidden=[3, 3],
        chi_scale=10.0,
        short_hidden=[8, 8] if short else None,
        epochs=60 if small else (300 if short else 40),
        batch_size=4,
        lr=1e-2,
        # 4G: cosine decay over all epochs (no early stop) and a force weight of 0.1, chosen
        # on the validation set of the demo's data (BENCHMARKS.md)
        lr_schedule="cosine" if short else "constant",
        patience=1000 if short else 15,
        # Mulliken charges are only loosely comparable to QEq charges: a weak pull
        loss_weights={"energy": 1.0, "forces": 0.1 if short else 0.0, "charges": 0.1},
        lbfgs_steps=0,
        seed=0,
    )


def trained(cfg: TrainConfig, retrain: bool) -> tuple[Path, float]:
    model = Path(cfg.output) / "model.pt"
    if model.exists() and not retrain:
        print(f"== {Path(cfg.output).name}: cached model {model}")
        return model, float("nan")
    print(f"== training {Path(cfg.output).name}")
    result = train(cfg)
    return result.model_path, result.structures_per_second


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="quick mode for tests")
    parser.add_argument("--out", type=Path, default=HERE / "output")
    parser.add_argument("--retrain", action="store_true", help="ignore cached models")
    args = parser.parse_args(argv)
    out = args.out / ("small" if args.small else "full")
    data_dir = out / "data"
    t0 = time.perf_counter()
    make_data(data_dir, args.small)
    timings = {"data": time.perf_counter() - t0}
    sets = {k: read_structures(data_dir / f"{k}.extxyz")
            for k in ("train", "validation", "test")}
    compression = read_structures(data_dir / "compression.extxyz")

    results = {}
    for name, short in (("cent", False), ("4g", True)):
        t = time.perf_counter()
        model, throughput = trained(config(name, data_dir, out, args.small, short),
                                    args.retrain)
        timings[f"train {name}"] = time.perf_counter() - t
        t = time.perf_counter()
        results[name] = evaluate_model(model, sets, compression, out / f"parity_{name}.png")
        results[name]["training throughput (structures/s)"] = throughput
        timings[f"evaluate {name}"] = time.perf_counter() - t
    compression_plot(compression, results, out / "compression.png")
    timings["total"] = time.perf_counter() - t0
    write_report(out, results, timings)
    (out / "results.json").write_text(json.dumps({"results": results, "timings": timings},
                                                 indent=1, default=float))
    return results


def evaluate_model(model: Path, sets: dict[str, list], compression: list, parity: Path,
                   progress: bool = False) -> dict:
    """Metrics of a model file through the ASE calculator, as in the CENT paper.

    ``sets`` maps ``train``/``validation``/``test`` to structures with GFN2-xTB references;
    ``compression`` is the 64-atom cube series. Returns energy RMSEs (mHa/atom) keyed like
    :data:`PAPER`, the test force RMSE (meV/Å) and charge RMSE (e), and the model energy per
    atom (eV/atom) along the compression series; writes the parity plot to ``parity``.
    """
    calc = SnapQEqCalculator(model)
    records = {k: evaluate_structures(calc, v, progress=progress) for k, v in sets.items()}
    test = grouped_metrics(records["test"])
    trainval = grouped_metrics(records["train"] + records["validation"])
    curve = []
    for atoms in compression:
        work = atoms.copy()
        work.info["charge"] = 0.0
        calc.reset()
        work.calc = calc
        curve.append(work.get_potential_energy() / len(work))
    parity_plot(records, parity)
    return {
        "train/validation": trainval["all"].energy_rmse_mha,
        "validation": (grouped_metrics(records["validation"])["all"].energy_rmse_mha
                       if records["validation"] else None),
        "test neutral": test["neutral"].energy_rmse_mha if "neutral" in test else None,
        "test ionized": test["ionized"].energy_rmse_mha if "ionized" in test else None,
        "test force RMSE (meV/Å)": test["all"].force_rmse_mev,
        "test charge RMSE (e)": test["all"].charge_rmse,
        "compression": curve,
    }


def compression_reference(compression: list) -> tuple[np.ndarray, np.ndarray]:
    """Compression ratios (NaN where unknown) and GFN2-xTB energies per atom (eV/atom)."""
    ratios = np.array([a.info.get("compression_ratio", np.nan) for a in compression])
    reference = np.array([float(a.info["energy"] if "energy" in a.info
                                else a.get_potential_energy()) / len(a) for a in compression])
    return ratios, reference


def compression_plot(compression: list, results: dict, path: Path) -> Path:
    """Energy per atom (eV/atom, relative to each curve's minimum) versus compression ratio
    of the 64-atom cube: GFN2-xTB and every model of ``results`` (CENT paper Fig. 3)."""
    ratios, reference = compression_reference(compression)
    curves = {"GFN2-xTB": reference - reference.min()}
    for name in results:
        c = np.array(results[name]["compression"])
        curves[name.upper()] = c - c.min()
    x = ratios if np.all(np.isfinite(ratios)) else np.arange(len(compression))
    return energy_curves(x, curves, path, "compression ratio (length scale)",
                         "E - E_min (eV/atom)")


def metrics_table(results: dict) -> list[str]:
    """Markdown rows: the paper's RMSEs beside those of every model in ``results``."""
    rows = ["| energy RMSE (mHa/atom) | paper (LDA) | " + " | ".join(
        n.upper() for n in results) + " |", "|---|---|" + "---|" * len(results)]

    def cells(key: str) -> str:
        return " | ".join(f"{results[n][key]:.3f}" if results[n].get(key) is not None
                          else "-" for n in results)

    for key, paper in PAPER.items():
        rows.append(f"| {key} | {paper:.2f} | {cells(key)} |")
    for key in ("test force RMSE (meV/Å)", "test charge RMSE (e)",
                "training throughput (structures/s)"):
        rows.append(f"| {key} | - | {cells(key)} |")
    return rows


def write_report(out: Path, results: dict, timings: dict) -> None:
    text = ["# NaCl clusters: CENT and 4G models on GFN2-xTB data", "",
            *metrics_table(results), "",
            "Timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()), "",
            "Plots: parity_cent.png, parity_4g.png, compression.png", ""]
    (out / "report.md").write_text("\n".join(text))
    print("\n".join(text))

if __name__ == "__main__":
    main()

"""``snapqeq olcao ...``: train the OLCAO potential-coefficient model and write OLCAO inputs.

    snapqeq olcao train CONFIG.yaml [--force]
    snapqeq olcao predict --model OLCAO_MODEL.pt STRUCTURE --out DIR [--energy-model M.pt]

``predict`` writes ``olcao.skl`` (one species per site), ``gs_scfV-fb.dat`` (predicted mean
coefficients, Hartree, in OLCAO's potential-file layout) and ``gs_scfV-fb.std.dat`` (their
standard deviations, same layout) with :func:`snapqeq.olcao.write_prediction`.  OLCAO then
runs post-SCF directly on the predicted potential::

    makeinput ...                # in DIR: builds inputs/ from olcao.skl
    uolcao -scf no -dos          # post-SCF job; reads gs_scfV-fb.dat from DIR, no SCF

(``uolcao``'s potential search takes ``gs_scfV-fb.dat`` from the project directory before
the atomic starting potential, so the same file also serves as the starting point of an SCF
run, ``uolcao -dos``, whose iteration count then measures the SCF work saved.)

This module is hooked into :mod:`snapqeq.cli` through :func:`add_parser`.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np

__all__ = ["add_parser", "parity_plot", "predict_command", "train_command"]

MODEL_NAME = "olcao_model.pt"


def predict_command(model_path: str | Path, structure_path: str | Path, out_dir: str | Path,
                    overwrite: bool = False, energy_model: str | Path | None = None,
                    index: str | int = -1) -> dict[str, Path]:
    """Predict the OLCAO potential of a structure file and write the OLCAO input set.

    Parameters
    ----------
    model_path : OLCAO model file (:func:`snapqeq.olcao_model.export_olcao_model`).
    structure_path : any file ``ase.io.read`` understands (frame ``index``); the total
        charge is ``atoms.info["charge"]`` when present.
    out_dir : folder for ``olcao.skl``, ``gs_scfV-fb.dat`` and ``gs_scfV-fb.std.dat``.
    overwrite : replace existing files (otherwise FileExistsError before writing anything).
    energy_model : snapqeq energy model file; needed when the OLCAO model takes chi from one.

    Returns
    -------
    dict
        Paths keyed ``skeleton``, ``mean``, ``std`` (see :data:`snapqeq.olcao.PREDICTION_FILES`).
    """
    from ase.io import read

    from snapqeq.olcao import write_prediction
    from snapqeq.olcao_model import load_olcao_model, predict_sites

    model = load_olcao_model(model_path)
    atoms = read(structure_path, index=index)
    mean, std, exponents = predict_sites(model, atoms, energy_model=energy_model)
    title = (f"snapqeq predicted OLCAO potential: {Path(structure_path).name}, "
             f"model {Path(model_path).name}; sigma(A_i) in gs_scfV-fb.std.dat")
    return write_prediction(out_dir, atoms, mean, std, exponents, overwrite=overwrite,
                            title=title)


def parity_plot(mean: np.ndarray, std: np.ndarray, target: np.ndarray, path: str | Path,
                title: str = "", center: bool = True) -> Path:
    """Two panels: predicted vs reference A_i (Hartree; one colour per coefficient index)
    and the histogram of z = (A - mean) / std against N(0, 1).

    With ``center`` both axes of the parity panel show A_i minus the reference mean of
    coefficient i: the coefficients span orders of magnitude, and the environment-dependent
    part the model has to learn would otherwise be invisible.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    valid = np.isfinite(target) & np.isfinite(mean) & np.isfinite(std) & (std > 0)
    shift = np.zeros(mean.shape[1])
    if center:
        shift = np.array([target[valid[:, d], d].mean() if valid[:, d].any() else 0.0
                          for d in range(mean.shape[1])])
    ref, pred = (target - shift)[valid], (mean - shift)[valid]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(9.5, 4.2))
    cols = np.broadcast_to(np.arange(mean.shape[1]), mean.shape)
    sc = ax.scatter(ref, pred, c=cols[valid], s=6, cmap="viridis")
    lo, hi = float(min(ref.min(), pred.min())), float(max(ref.max(), pred.max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    r2 = 1.0 - np.sum((pred - ref) ** 2) / np.sum(ref**2) if center else np.nan
    label = "$A_i - \\langle A_i \\rangle$" if center else "$A_i$"
    ax.set_xlabel(f"reference {label} (Hartree)")
    ax.set_ylabel(f"predicted mean {label} (Hartree)")
    if center:
        ax.text(0.04, 0.94, f"$R^2$ = {r2:.3f}", transform=ax.transAxes)
    fig.colorbar(sc, ax=ax, label="coefficient index i")
    z = ((target - mean) / std)[valid]
    cover = float(np.mean(np.abs(z) <= 1.0))
    bx.hist(np.clip(z, -5, 5), bins=60, range=(-5, 5), density=True, alpha=0.7,
            label=f"{100 * cover:.0f}% within 1$\\sigma$")
    g = np.linspace(-5, 5, 201)
    bx.plot(g, np.exp(-0.5 * g**2) / np.sqrt(2 * np.pi), "k-", lw=1, label="N(0, 1): 68%")
    bx.set_xlabel("z = (reference - mean) / $\\sigma$")
    bx.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def _read_images(spec) -> list:
    from ase.io import read

    paths = [spec] if isinstance(spec, (str, Path)) else list(spec)
    images = []
    for p in paths:
        got = read(p, index=":")
        images += got if isinstance(got, list) else [got]
    return images


def train_command(config_path: str | Path, force: bool = False) -> Path:
    """``snapqeq olcao train CONFIG.yaml``: train, evaluate, plot and export.

    The YAML has the keys of :class:`snapqeq.olcao_model.OLCAOTrainConfig` plus

    - ``data``: extended-XYZ file(s) with ``potential_coefficients`` per site (Hartree);
    - ``validation`` (optional): file(s) used for early stopping and calibration instead of
      a split of ``data``;
    - ``test`` (optional): file(s) evaluated at the end (metrics and parity plot);
    - ``output``: folder (default ``olcao_training``);
    - ``energy_model`` (optional): snapqeq energy model supplying chi.

    Paths are relative to the working directory.  Writes ``olcao_model.pt``,
    ``history.json``, ``metrics.json`` (train / validation / test) and, with a ``test`` set,
    ``parity.png`` in ``output``; refuses to replace a model file without ``force``.
    """
    import yaml

    from snapqeq.olcao_model import (
        OLCAOTrainConfig,
        evaluate_olcao_model,
        export_olcao_model,
        site_targets,
        train_olcao_model,
    )
    from snapqeq.site_features import SiteFeaturizer

    raw = yaml.safe_load(Path(config_path).read_text()) or {}
    extra = {"data", "validation", "test", "output", "energy_model"}
    known = {f.name for f in fields(OLCAOTrainConfig)} | extra
    unknown = set(raw) - known
    if unknown:
        raise ValueError(f"{config_path}: unknown keys {sorted(unknown)}")
    for key in ("data", "features"):
        if key not in raw:
            raise ValueError(f"{config_path}: {key!r} is required")
    out = Path(raw.get("output", "olcao_training"))
    model_path = out / MODEL_NAME
    if model_path.exists() and not force:
        raise FileExistsError(f"{model_path} exists; pass --force to replace it")
    config = OLCAOTrainConfig(**{k: v for k, v in raw.items() if k not in extra})
    energy_model = raw.get("energy_model")
    train = _read_images(raw["data"])
    validation = _read_images(raw["validation"]) if raw.get("validation") else None
    model = train_olcao_model(train, config, energy_model=energy_model, validation=validation)
    metrics = dict(model.summary)
    plot_set = None
    if raw.get("test"):
        test = _read_images(raw["test"])
        feats = SiteFeaturizer(config.features, energy_model).many(test, config.progress)
        targets = [site_targets(a, model) for a in test]
        metrics["test"] = evaluate_olcao_model(model, feats, targets)
        plot_set = ("test", feats, targets)
    out.mkdir(parents=True, exist_ok=True)
    (out / "history.json").write_text(json.dumps(model.history))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    if plot_set is not None:
        name, feats, targets = plot_set
        pred = [model.predict_features(f) for f in feats]
        parity_plot(np.concatenate([p[0] for p in pred]), np.concatenate([p[1] for p in pred]),
                    np.concatenate(targets), out / "parity.png", title=f"{name} set")
    export_olcao_model(model, model_path, overwrite=True)
    for name, m in metrics.items():
        print(f"[{name}] sites {m['n_sites']}  RMSE {m['rmse']:.4g} Ha  MAE {m['mae']:.4g} Ha"
              f"  within 1 sigma {100 * m['coverage_1sigma']:.1f}%")
    print(f"wrote {model_path}")
    return model_path


def _cmd_predict(args: argparse.Namespace) -> int:
    try:
        paths = predict_command(args.model, args.structure, args.out, overwrite=args.force,
                                energy_model=args.energy_model, index=args.index)
    except (FileExistsError, FileNotFoundError) as err:
        print(f"snapqeq: error: {err}", file=sys.stderr)
        return 2
    for key, p in paths.items():
        print(f"{key:9s} {p}")
    print("OLCAO: run makeinput in that folder, then 'uolcao -scf no -dos' (post-SCF on the "
          "predicted potential)")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    try:
        train_command(args.config, force=args.force)
    except (FileExistsError, FileNotFoundError) as err:
        print(f"snapqeq: error: {err}", file=sys.stderr)
        return 2
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``olcao`` (with ``predict`` and ``train``) on the subparsers of the main
    ``snapqeq`` parser; each sub-command sets ``func(args) -> int``."""
    p = subparsers.add_parser("olcao", help="OLCAO potential coefficients: train, predict")
    sub = p.add_subparsers(dest="olcao_command", required=True)
    pr = sub.add_parser("predict", help="write olcao.skl + predicted gs_scfV-fb.dat (+ std)")
    pr.add_argument("structure", help="any file ase.io.read understands")
    pr.add_argument("--model", required=True, help="OLCAO model file (snapqeq olcao train)")
    pr.add_argument("--out", required=True, help="output folder")
    pr.add_argument("--energy-model", default=None,
                    help="snapqeq energy model (when the OLCAO model takes chi from one)")
    pr.add_argument("--index", default="-1", help="frame (ase.io index syntax)")
    pr.add_argument("--force", action="store_true", help="overwrite existing files")
    pr.set_defaults(func=_cmd_predict)
    tr = sub.add_parser("train", help="train an OLCAO model from a YAML config")
    tr.add_argument("config", help="YAML file (see snapqeq.olcao_cli.train_command)")
    tr.add_argument("--force", action="store_true", help="replace an existing model file")
    tr.set_defaults(func=_cmd_train)
    return p

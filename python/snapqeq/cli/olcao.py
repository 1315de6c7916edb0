"""``snapqeq olcao ...``: train the OLCAO potential-coefficient model and write OLCAO inputs.

Usage::

    snapqeq olcao train CONFIG.yaml [--force]
    snapqeq olcao predict --model MODEL.pt STRUCTURE --out DIR [--olcao-run RUN]
                          [--template scfV.dat] [--energy-model M.pt] [--force]

``MODEL.pt`` is a snapqeq model file with an OLCAO head, or a separate OLCAO model file
(then ``--energy-model`` names the energy model when its features take chi from one).

``predict`` writes ``olcao.skl`` (one species per site), ``gs_scfV-fb.dat`` (predicted mean
coefficients, Hartree, in OLCAO's potential-file layout), ``gs_scfV-fb.std.dat`` (their
standard deviations, same layout) and ``site_coefficients.extxyz`` (means and sigma per site
in the input atom order) with :func:`snapqeq.io.olcao.write_prediction`.  With ``--olcao-run``
(an OLCAO run directory of that skeleton, after makeinput) the structure is checked against
its ``inputs/structure.dat`` (cell, one type per site, positions) and the model's exponent
series against its ``inputs/olcao.dat`` (term counts and alpha values; OLCAO itself checks
only the counts), and its ``inputs/scfV.dat`` is the template for the +U/J section.

With OLCAO (see examples/si_olcao/README.md)::

    makeinput -kp ...                   # in DIR: builds inputs/ from olcao.skl
    cp gs_scfV-fb.dat predicted.dat     # OLCAO overwrites gs_scfV-fb.dat during an SCF
    uolcao                              # SCF started from the prediction (uolcao takes
                                        #   gs_scfV-fb.dat when present); count iterations
    cp predicted.dat gs_scfV-fb.dat     # or, instead of the SCF:
    uolcao -scf no -dos                 # post-SCF on the predicted potential, no iterations

This module is hooked into :mod:`snapqeq.cli.main` through :func:`add_parser`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["add_parser", "predict_command", "train_command"]

MODEL_NAME = "olcao_model.pt"


def predict_command(model_path: str | Path, structure_path: str | Path, out_dir: str | Path,
                    overwrite: bool = False, energy_model: str | Path | None = None,
                    index: str | int = -1, olcao_run: str | Path | None = None,
                    template: str | Path | None = None) -> dict[str, Path]:
    """Predict the OLCAO potential of a structure file and write the OLCAO input set.

    Parameters
    ----------
    model_path : OLCAO model file (:func:`snapqeq.models.olcao_head.export_olcao_model`) or a
        snapqeq model file with an OLCAO head (``snapqeq train`` with an ``olcao`` section).
    structure_path : any file ``ase.io.read`` understands (frame ``index``); the total
        charge is ``atoms.info["charge"]`` when present.
    out_dir : folder for ``olcao.skl``, ``gs_scfV-fb.dat`` and ``gs_scfV-fb.std.dat``.
    overwrite : replace existing files (otherwise FileExistsError before writing anything).
    energy_model : snapqeq energy model file; needed when the OLCAO model takes chi from one.
    olcao_run : OLCAO run directory of this structure's one-species-per-site skeleton
        (after makeinput): its ``inputs/structure.dat`` must hold this structure, one
        potential type per site in the order the prediction writes, and the exponent series
        must equal those of its ``inputs/olcao.dat`` (ValueError otherwise); its
        ``inputs/scfV.dat`` is the default template.
    template : OLCAO potential file whose +U/J section is copied (see
        :func:`snapqeq.io.olcao.write_prediction`).

    Returns
    -------
    dict
        Paths keyed ``skeleton``, ``mean``, ``std``, ``sites`` (see
        :data:`snapqeq.io.olcao.PREDICTION_FILES`).
    """
    from ase.io import read

    from snapqeq.io.archive import archive_format
    from snapqeq.io.olcao import (
        check_exponents_against_run,
        check_structure_against_run,
        write_prediction,
    )
    from snapqeq.models.olcao_head import predict_sites

    atoms = read(structure_path, index=index)
    if archive_format(model_path) == "snapqeq-model":  # the head inside the energy model
        from snapqeq.calculators.cent import SnapQEqCalculator

        calc = SnapQEqCalculator(model_path)
        if not calc.model.olcao:
            raise ValueError(f"{model_path} has no OLCAO head: train one with an 'olcao' "
                             f"section in the snapqeq train config, or pass an OLCAO model")
        mean = calc.get_property("potential_coefficients", atoms)
        std, exponents = calc.results["potential_coefficients_std"], calc.potential_exponents
    else:
        mean, std, exponents = predict_sites(model_path, atoms, energy_model=energy_model)
    if olcao_run is not None:
        check_structure_against_run(olcao_run, atoms)
        check_exponents_against_run(olcao_run, atoms, exponents)
        default = Path(olcao_run) / "inputs" / "scfV.dat"
        if template is None and default.is_file():
            template = default
    title = (f"snapqeq predicted OLCAO potential: {Path(structure_path).name}, "
             f"model {Path(model_path).name}; sigma(A_i) in gs_scfV-fb.std.dat")
    return write_prediction(out_dir, atoms, mean, std, exponents, overwrite=overwrite,
                            title=title, template=template)


def train_command(config_path: str | Path, force: bool = False) -> Path:
    """``snapqeq olcao train CONFIG.yaml``: train, evaluate, plot and export.

    The YAML has the keys of :class:`snapqeq.training.olcao.OLCAOTrainConfig`, the data keys of
    :func:`snapqeq.training.olcao.train_olcao_run` (``data``, ``validation``, ``test``) and

    - ``output``: folder (default ``olcao_training``);
    - ``energy_model`` (optional): snapqeq energy model supplying chi.

    Paths are relative to the working directory.  Writes ``olcao_model.pt``,
    ``history.json``, ``metrics.json`` (train / validation / test) and, with a ``test`` set,
    ``parity.png`` in ``output``; refuses to replace a model file without ``force``.
    """
    import yaml

    from snapqeq.models.olcao_head import export_olcao_model
    from snapqeq.training.olcao import train_olcao_run

    raw = yaml.safe_load(Path(config_path).read_text()) or {}
    if "features" not in raw:
        raise ValueError(f"{config_path}: 'features' is required")
    out = Path(raw.pop("output", "olcao_training"))
    energy_model = raw.pop("energy_model", None)
    model_path = out / MODEL_NAME
    if model_path.exists() and not force:
        raise FileExistsError(f"{model_path} exists; pass --force to replace it")
    try:
        model = train_olcao_run(raw, out, energy_model=energy_model)
    except ValueError as err:
        raise ValueError(f"{config_path}: {err}") from None
    export_olcao_model(model, model_path, overwrite=True)
    print(f"wrote {model_path}")
    return model_path


def _cmd_predict(args: argparse.Namespace) -> int:
    from snapqeq.io.olcao import OutputExistsError

    try:
        paths = predict_command(args.model, args.structure, args.out, overwrite=args.force,
                                energy_model=args.energy_model, index=args.index,
                                olcao_run=args.olcao_run, template=args.template)
    except OutputExistsError as err:
        print(f"snapqeq: error: refusing to overwrite {', '.join(map(str, err.paths))}; "
              "pass --force to replace them, or choose another --out", file=sys.stderr)
        return 2
    except (FileExistsError, FileNotFoundError, ValueError) as err:
        print(f"snapqeq: error: {err}", file=sys.stderr)
        return 2
    for key, p in paths.items():
        print(f"{key:9s} {p}")
    print("OLCAO: run makeinput in that folder; keep a copy of gs_scfV-fb.dat (an SCF "
          "overwrites it); then 'uolcao' (SCF from the prediction) or 'uolcao -scf no -dos' "
          "(post-SCF on the predicted potential)")
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
    pr.add_argument("--model", required=True,
                    help="snapqeq model file with an OLCAO head, or an OLCAO model file")
    pr.add_argument("--out", required=True, help="output folder")
    pr.add_argument("--energy-model", default=None,
                    help="snapqeq energy model (when the OLCAO model takes chi from one)")
    pr.add_argument("--index", default="-1", help="frame (ase.io index syntax)")
    pr.add_argument("--olcao-run", default=None,
                    help="OLCAO run directory (after makeinput) to check the exponent series "
                         "against its inputs/olcao.dat and take +U terms from inputs/scfV.dat")
    pr.add_argument("--template", default=None,
                    help="OLCAO potential file whose +U/J section is copied")
    pr.add_argument("--force", action="store_true", help="overwrite existing files")
    pr.set_defaults(func=_cmd_predict)
    tr = sub.add_parser("train", help="train an OLCAO model from a YAML config")
    tr.add_argument("config", help="YAML file (see snapqeq.cli.olcao.train_command)")
    tr.add_argument("--force", action="store_true", help="replace an existing model file")
    tr.set_defaults(func=_cmd_train)
    return p

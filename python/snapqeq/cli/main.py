"""Command line interface: ``snapqeq <command> ...``.

Every command exits 0 on success and 2 with one line ``snapqeq: error: ...`` on bad input
(a missing or unreadable file, an invalid configuration or model file, a failed plugin
build); ``SNAPQEQ_TRACEBACK=1`` shows the Python traceback as well.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import zipfile
from pathlib import Path

import numpy as np
import yaml

from snapqeq import __version__

#: what counts as bad input (a clear message, exit code 2) rather than a bug (traceback)
INPUT_ERRORS = (ValueError, OSError, RuntimeError, KeyError, yaml.YAMLError,
                zipfile.BadZipFile)


def _cmd_descriptors(args: argparse.Namespace) -> int:
    from ase.io import read

    from snapqeq.descriptors.bispectrum import Bispectrum

    atoms = read(args.structure, index=args.index)
    if args.snapparam:
        if not args.snapcoeff:
            raise SystemExit("--snapparam needs --snapcoeff")
        bs = Bispectrum.from_snapparam(args.snapparam, args.snapcoeff)
    else:
        elements = list(dict.fromkeys(atoms.get_chemical_symbols()))
        bs = Bispectrum(args.twojmax, args.rcutfac, {e: args.radius for e in elements},
                        {e: 1.0 for e in elements})
    b = bs.compute(atoms)
    if args.out:
        np.save(args.out, b)
    summary = {"atoms": len(atoms), "components": bs.n_components,
               "mean": b.mean(0).tolist(), "std": b.std(0).tolist()}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{len(atoms)} atoms, {bs.n_components} components ({bs})")
        for k in range(min(bs.n_components, 10)):
            print(f"  B[{k:3d}] mean {b[:, k].mean():12.6f}  std {b[:, k].std():12.6f}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from snapqeq.training.trainer import TrainConfig, train

    if not Path(args.config).is_file():
        raise ValueError(f"configuration file not found: {args.config} (an example: "
                         "examples/train.yaml)")
    config = TrainConfig.from_yaml(args.config)
    if args.output:
        config.output = args.output
    if args.resume:
        config.resume = True
    result = train(config)
    print((Path(config.output) / "metrics.txt").read_text())
    print(f"model written to {result.model_path} ({result.structures_per_second:.1f} "
          "structures/s in training)")
    return 0


def _data_keys(pairs: list[str] | None):
    """DataKeys from ``NAME=KEY`` words (the ``keys`` section of a training config)."""
    from snapqeq.io.structures import DataKeys

    allowed = tuple(DataKeys.__dataclass_fields__)
    keys = {}
    for pair in pairs or []:
        name, sep, key = pair.partition("=")
        if not sep or not key or name not in allowed:
            raise ValueError(f"--key {pair!r}: expected NAME=KEY with NAME one of "
                             f"{', '.join(allowed)}")
        keys[name] = key
    return DataKeys(**keys)


def _cmd_test(args: argparse.Namespace) -> int:
    from snapqeq.analysis.metrics import format_table
    from snapqeq.cli.evaluation import evaluate_file

    metrics = evaluate_file(args.model, args.data, keys=_data_keys(args.key),
                            progress=not args.json, format=args.format)
    if args.json:
        print(json.dumps({k: m.as_dict() for k, m in metrics.items()}, indent=1))
    else:
        print(format_table(metrics))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from snapqeq.training.export import copy_training_envelope
    from snapqeq.training.trainer import export_checkpoint

    folder = Path(args.training_dir)
    if not (folder / "config.yaml").is_file():
        what = "does not exist" if not folder.exists() else "has no config.yaml"
        raise ValueError(f"{folder} {what}: pass the output folder of `snapqeq train` "
                         "(it holds config.yaml and checkpoint_best.pt)")
    committee = (yaml.safe_load((folder / "config.yaml").read_text()) or {}).get("committee")
    if committee and committee > 1:
        raise ValueError(f"{folder} is the run of a committee of {committee}: its model.pt "
                         f"holds all members; a member's checkpoint is exported with "
                         f"`snapqeq export {folder / 'member_0'} --out member.pt`")
    path = export_checkpoint(args.training_dir, args.out, overwrite=args.force,
                             which=args.checkpoint)
    # the training data's envelope (guard) from the run's own model.pt, if it has one
    if (folder / "model.pt").is_file():
        copy_training_envelope(folder / "model.pt", path)
    print(f"wrote {path}")
    return 0


def _cmd_build_plugin(args: argparse.Namespace) -> int:
    from snapqeq.lammps.plugin import build_plugin

    path = build_plugin(args.build_dir, jobs=args.jobs, verbose=args.verbose)
    print(f"built {path}\nload it with `plugin load {path}` or "
          f"export LAMMPS_PLUGIN_PATH={path.parent}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="snapqeq",
        description="Charge-equilibration neural-network potentials on SNAP bispectrum "
                    "descriptors: descriptors, training, testing, export, the LAMMPS plugin "
                    "and OLCAO potential coefficients.",
        epilog="Bad input ends with one line 'snapqeq: error: ...' and exit code 2 "
               "(SNAPQEQ_TRACEBACK=1 shows the traceback). `snapqeq COMMAND --help` lists "
               "a command's options.")
    parser.add_argument("--version", action="version", version=f"snapqeq {__version__}",
                        help="print the snapqeq version and exit")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("descriptors", help="bispectrum components of a structure file")
    p.add_argument("structure", help="any file ase.io.read understands")
    p.add_argument("--index", default="-1", help="frame (ase.io index syntax; default -1)")
    p.add_argument("--twojmax", type=int, default=6,
                   help="twice the highest angular momentum j (default 6)")
    p.add_argument("--rcutfac", type=float, default=4.67637,
                   help="cutoff scale: pair cutoff rcutfac x (R_i + R_j) (default 4.67637)")
    p.add_argument("--radius", type=float, default=0.5,
                   help="radius R of every element (dimensionless, default 0.5)")
    p.add_argument("--snapparam", help="take the parameters from a LAMMPS .snapparam file")
    p.add_argument("--snapcoeff", help="... and radii/weights from its .snapcoeff file")
    p.add_argument("--out", help="save the (N, K) array as .npy")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(func=_cmd_descriptors)

    from snapqeq.cli.olcao import add_parser as add_olcao_parser

    add_olcao_parser(sub)

    p = sub.add_parser("train", help="train a CENT model from a YAML configuration")
    p.add_argument("config", help="YAML file (keys of snapqeq.training.trainer.TrainConfig; "
                   "example: examples/train.yaml)")
    p.add_argument("--output", help="output folder (overrides the config's 'output')")
    p.add_argument("--resume", action="store_true",
                   help="continue from checkpoint_last.pt of the output folder")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("test", help="metrics of a model file on reference data")
    p.add_argument("data", help="reference data with energies (forces, charges optional): "
                   "extended XYZ or RuNNer/n2p2 input.data")
    p.add_argument("--format", help="ase.io format of the data file (default: by content; "
                   "'runnerdata' for RuNNer input.data)")
    p.add_argument("--model", required=True,
                   help="model file (snapqeq export / training output model.pt)")
    p.add_argument("--key", action="append", metavar="NAME=KEY",
                   help="where the reference values live, as in the 'keys' section of the "
                   "training config (e.g. --key charge=total_charge; repeatable): the total "
                   "charge is read by the same rule as in training")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_test)

    p = sub.add_parser("export", help="model file from a training run's checkpoint")
    p.add_argument("training_dir", help="output folder of `snapqeq train`")
    p.add_argument("--out", required=True, help="model file to write")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best",
                   help="lowest validation loss (best, default) or the last epoch")
    p.add_argument("--force", action="store_true", help="replace an existing file")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("build-lammps-plugin", help="build the LAMMPS pair style plugin")
    p.add_argument("--build-dir", type=Path, default=None,
                   help="CMake build folder (default: plugin/build of a source checkout, "
                   "else ~/.cache/snapqeq/plugin-VERSION; SNAPQEQ_PLUGIN_DIR overrides)")
    p.add_argument("--jobs", type=int, default=2, help="parallel compile jobs (default 2)")
    p.add_argument("--verbose", action="store_true", help="echo the CMake output")
    p.set_defaults(func=_cmd_build_plugin)
    return parser


def _message(err: BaseException) -> str:
    """One line for an input error (OSError's filename included, no errno prefix)."""
    if isinstance(err, OSError) and err.filename and err.strerror:
        return f"{err.filename}: {err.strerror}"
    if isinstance(err, KeyError):
        return f"missing key {err}"
    text = " ".join(str(err).split())
    return text or type(err).__name__


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit code (0, or 2 after a one-line error)."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except INPUT_ERRORS as err:
        if os.environ.get("SNAPQEQ_TRACEBACK"):
            raise
        print(f"snapqeq: error: {_message(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("snapqeq: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())

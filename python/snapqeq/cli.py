"""Command line interface: ``snapqeq <command> ...``."""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np


def _cmd_descriptors(args: argparse.Namespace) -> int:
    from ase.io import read

    from snapqeq.bispectrum import Bispectrum

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="snapqeq", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("descriptors", help="bispectrum components of a structure file")
    p.add_argument("structure", help="any file ase.io.read understands")
    p.add_argument("--index", default="-1", help="frame (ase.io index syntax)")
    p.add_argument("--twojmax", type=int, default=6)
    p.add_argument("--rcutfac", type=float, default=4.67637)
    p.add_argument("--radius", type=float, default=0.5, help="radius R of every element (Å)")
    p.add_argument("--snapparam", help="take the parameters from a LAMMPS .snapparam file")
    p.add_argument("--snapcoeff", help="... and radii/weights from its .snapcoeff file")
    p.add_argument("--out", help="save the (N, K) array as .npy")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(func=_cmd_descriptors)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as err:
        print(f"snapqeq: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())

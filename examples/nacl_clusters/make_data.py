#!/usr/bin/env python
"""Make the NaCl-cluster reference data of the CENT paper with GFN2-xTB (tblite).

Protocol (Ghasemi et al., CENT; SPEC §8): Na(N/2)Cl(N/2) clusters with N = 8, 12, ..., 80
and total charges 0, +1, +2 (a doublet for +1). Clusters with fewer than 44 atoms form the
training set, the 64-atom clusters the test set and all other sizes the validation set.
In addition, the energy-versus-compression curve of the 64-atom rock-salt cube (CENT Fig. 3;
compression ratio 1 = GFN2-xTB isotropic equilibrium) is written to ``compression.extxyz``.

Output (``--out``, default ``examples/nacl_clusters/data``)::

    train.extxyz  validation.extxyz  test.extxyz  compression.extxyz

Each structure carries ``info["energy"]`` (eV), ``arrays["forces"]`` (eV/Å),
``arrays["ref_charges"]`` (e), ``info["charge"]`` (total charge, e), ``info["split"]``,
``info["generator"]`` and ``info["seed"]`` (or ``info["compression_ratio"]``). Read the
files with :func:`snapqeq.datasets.xtb.read_extxyz` (``ase.io.read`` moves energy and forces into a
SinglePointCalculator; see :mod:`snapqeq.datasets.xtb`).

Generated structures and xTB results are cached (``--cache``, default
``examples/nacl_clusters/cache``), so a re-run is fast. Existing data files are never
overwritten unless ``--force`` is given.

Usage::

    python examples/nacl_clusters/make_data.py            # 627 structures, ~8 min on 2 cores
    python examples/nacl_clusters/make_data.py --small    # a few structures, < 1 min
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.io import read, write

from snapqeq.datasets.clusters import (
    CLUSTER_SIZES,
    GENERATOR_VERSION,
    compression_series,
    generate_clusters,
    nacl_cube,
)
from snapqeq.datasets.xtb import XTBCache, label_structures, write_extxyz

HERE = Path(__file__).resolve().parent
SPLITS = ("train", "validation", "test")
OUTPUTS = (*SPLITS, "compression")

#: Structures per (size, total charge) and split of the default (full) run: 627 structures,
#: about 850 s of tblite CPU time plus ~1 min of structure generation, i.e. about 8 minutes
#: on 2 idle cores. tblite time per structure grows as N³ and with the charge (more SCF
#: cycles): about 0.01/0.02/0.04 s for N = 8, 0.7/1.4/1.8 s for N = 40 and 6/16/17 s for
#: N = 80 (charge 0/+1/+2). A structure whose SCF fails costs up to 550 SCF cycles (about a
#: minute for N = 80); the default set has one.
DEFAULT_COUNTS = {"train": 20, "validation": 2, "test": 6}
SMALL_COUNTS = {"train": 3, "validation": 1, "test": 1}
SMALL_SIZES = {"train": (8, 12, 16, 20), "validation": (44,), "test": (64,)}
DEFAULT_RATIOS = tuple(np.round(np.linspace(0.85, 1.20, 15), 4))
SMALL_RATIOS = (0.9, 0.95, 1.0, 1.05, 1.1)


def split_of(n_atoms: int) -> str:
    """CENT split of a cluster size: train < 44 atoms, test = 64 atoms, else validation."""
    if n_atoms < 44:
        return "train"
    return "test" if n_atoms == 64 else "validation"


def sizes_by_split() -> dict[str, tuple[int, ...]]:
    out: dict[str, list[int]] = defaultdict(list)
    for n in CLUSTER_SIZES:
        out[split_of(n)].append(n)
    return {split: tuple(out[split]) for split in SPLITS}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Existing data files are only overwritten with --force.",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=HERE / "data",
        metavar="DIR",
        help="output directory (default: %(default)s)",
    )
    p.add_argument(
        "--cache",
        type=Path,
        default=HERE / "cache",
        metavar="DIR",
        help="cache of generated structures and xTB results (default: %(default)s)",
    )
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    p.add_argument("--force", action="store_true", help="overwrite existing data files")
    p.add_argument(
        "--small",
        action="store_true",
        help="quick set for tests: train sizes 8-20, validation 44, test 64; "
        f"{SMALL_COUNTS['train']}/{SMALL_COUNTS['validation']}/{SMALL_COUNTS['test']} "
        f"structures per (size, charge); {len(SMALL_RATIOS)} compression ratios",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the structure generator (default: 0)"
    )
    p.add_argument(
        "--workers",
        type=int,
        default=min(2, os.cpu_count() or 1),
        metavar="N",
        help="worker processes (default: %(default)s)",
    )
    p.add_argument(
        "--charges",
        type=int,
        nargs="+",
        default=[0, 1, 2],
        metavar="Q",
        help="total charges in e (default: 0 1 2)",
    )
    for split in SPLITS:
        p.add_argument(
            f"--n-{split}",
            type=int,
            default=None,
            metavar="N",
            help=f"structures per (size, charge) in the {split} set "
            f"(default: {DEFAULT_COUNTS[split]}; --small: {SMALL_COUNTS[split]})",
        )
    p.add_argument(
        "--ratios",
        type=float,
        nargs="+",
        default=None,
        metavar="R",
        help="compression ratios (linear scale factors) of the 64-atom cube "
        "(default: 15 values 0.85-1.20; --small: 0.9-1.1)",
    )
    p.add_argument(
        "--compression-charges",
        type=int,
        nargs="+",
        default=[0],
        metavar="Q",
        help="total charges in e of the compression curve (default: 0)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    if args.seed < 0:
        p.error("--seed must be non-negative")
    if any(q < 0 for q in args.charges):
        p.error("--charges must be non-negative (cations, as in the CENT paper)")
    return args


# ----------------------------------------------------------------------------------------
# Structure generation (parallel, cached)
# ----------------------------------------------------------------------------------------


def _generate(n_atoms: int, count: int, seed: int, tag: int) -> list[Atoms]:
    return generate_clusters(n_atoms, count, seed, tag=tag)


def generate_all(
    tasks: list[tuple[int, int, int, int]], cache: Path | None, workers: int, progress: bool
) -> dict[tuple[int, int, int, int], list[Atoms]]:
    """Clusters for each ``(n_atoms, count, seed, charge)`` task; cached as ASE .traj
    files, which keep the float64 positions bit for bit (so xTB cache keys still match)."""
    from tqdm.auto import tqdm

    def path(task: tuple[int, int, int, int]) -> Path | None:
        if cache is None:
            return None
        n, count, seed, tag = task
        return cache / "structures" / f"v{GENERATOR_VERSION}-seed{seed}-q{tag}-n{n}-{count}.traj"

    out = {}
    todo = []
    for task in tasks:
        p = path(task)
        if p is not None and p.is_file():
            out[task] = read(p, index=":")
        else:
            todo.append(task)
    todo.sort(key=lambda t: t[0] ** 2 * t[1], reverse=True)
    with tqdm(total=len(tasks), initial=len(out), desc="structures", disable=not progress) as bar:

        def store(task: tuple[int, int, int, int], images: list[Atoms]) -> None:
            out[task] = images
            p = path(task)
            if p is not None:
                p.parent.mkdir(parents=True, exist_ok=True)
                tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
                write(tmp, images, format="traj")
                os.replace(tmp, p)
            bar.update()

        if workers <= 1 or len(todo) <= 1:
            for task in todo:
                store(task, _generate(*task))
        else:
            with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
                for task, images in zip(
                    todo, pool.map(_generate, *zip(*todo, strict=True)), strict=True
                ):
                    store(task, images)
    return out


# ----------------------------------------------------------------------------------------
# Summary
# ----------------------------------------------------------------------------------------


def summarize(
    data: dict[str, list[Atoms]], times: dict[int, list[float]], failed: list[Atoms]
) -> str:
    lines = [
        f"{'split':<12}{'charge':>7}{'count':>7}{'sizes':>10}"
        f"{'E/N min':>11}{'E/N max':>11}{'|F| max':>10}{'sum q':>8}",
        f"{'':<12}{'(e)':>7}{'':>7}{'(atoms)':>10}{'(eV)':>11}{'(eV)':>11}{'(eV/Å)':>10}{'(e)':>8}",
    ]
    for split in OUTPUTS:
        by_charge: dict[int, list[Atoms]] = defaultdict(list)
        for atoms in data.get(split, []):
            by_charge[int(atoms.info["charge"])].append(atoms)
        for charge in sorted(by_charge):
            images = by_charge[charge]
            e_per_atom = np.array([a.info["energy"] / len(a) for a in images])
            sizes = sorted({len(a) for a in images})
            f_max = max(np.abs(a.arrays["forces"]).max() for a in images)
            q_err = max(abs(a.arrays["ref_charges"].sum() - charge) for a in images)
            size_text = f"{sizes[0]}-{sizes[-1]}" if len(sizes) > 1 else str(sizes[0])
            lines.append(
                f"{split:<12}{charge:>+7d}{len(images):>7d}{size_text:>10}"
                f"{e_per_atom.min():>11.4f}{e_per_atom.max():>11.4f}{f_max:>10.3f}"
                f"{q_err:>8.0e}"
            )
    lines.append("(sum q: largest |Σ ref_charges − charge|)")
    if failed:
        kinds = defaultdict(int)
        for atoms in failed:
            kinds[(len(atoms), int(atoms.info["charge"]))] += 1
        detail = ", ".join(f"N={n} q={q:+d}: {c}" for (n, q), c in sorted(kinds.items()))
        lines.append(f"skipped (SCF not converged): {len(failed)} ({detail})")
    computed = {n: t for n, t in times.items() if t}
    if computed:
        lines.append(
            "mean tblite CPU time per new structure (s): "
            + ", ".join(f"N={n}: {np.mean(t):.2f}" for n, t in sorted(computed.items()))
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    counts = dict(SMALL_COUNTS if args.small else DEFAULT_COUNTS)
    for split in SPLITS:
        value = getattr(args, f"n_{split}")
        if value is not None:
            counts[split] = value
    sizes = SMALL_SIZES if args.small else sizes_by_split()
    ratios = args.ratios or (SMALL_RATIOS if args.small else DEFAULT_RATIOS)

    paths = {name: args.out / f"{name}.extxyz" for name in OUTPUTS}
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing and not args.force:
        print(
            "error: refusing to overwrite existing data files:\n  "
            + "\n  ".join(existing)
            + "\nUse --force to overwrite them, or --out to write elsewhere.",
            file=sys.stderr,
        )
        return 1

    cache = None if args.no_cache else args.cache
    progress = not args.quiet
    start = time.perf_counter()

    # 1. Structures: clusters per (size, charge) and the compression curve of the cube.
    tasks = [
        (n, counts[split], args.seed, q)
        for split in SPLITS
        for n in sizes[split]
        for q in args.charges
        if counts[split] > 0
    ]
    generated = generate_all(tasks, cache, args.workers, progress)
    images: list[Atoms] = []
    charges: list[int] = []
    for task in tasks:
        n, _, _, q = task
        for atoms in generated[task]:
            atoms.info["split"] = split_of(n)
            images.append(atoms)
            charges.append(q)
    for q in args.compression_charges:
        for atoms in compression_series(nacl_cube(4), ratios):
            atoms.info["split"] = "compression"
            images.append(atoms)
            charges.append(q)
    t_generate = time.perf_counter() - start

    # 2. GFN2-xTB labels.
    result = label_structures(
        images,
        charges,
        n_workers=args.workers,
        cache=XTBCache(cache / "xtb") if cache is not None else None,
        progress=progress,
    )

    # 3. Write the splits.
    data: dict[str, list[Atoms]] = defaultdict(list)
    times: dict[int, list[float]] = defaultdict(list)
    for atoms, t in zip(result.structures, result.times, strict=True):
        data[atoms.info["split"]].append(atoms)
        if t > 0:
            times[len(atoms)].append(t)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, path in paths.items():
        tmp = path.with_name(f".{path.name}.tmp")
        write_extxyz(tmp, data.get(name, []))
        os.replace(tmp, path)

    # 4. Summary.
    failed = [images[i].copy() for i in result.failed]
    for i, atoms in zip(result.failed, failed, strict=True):
        atoms.info["charge"] = charges[i]
    print()
    print(summarize(data, times, failed))
    total = time.perf_counter() - start
    print(
        f"structures: {len(images)} ({len(result.structures)} labelled, "
        f"{len(result.failed)} skipped, {result.n_cached} from cache)"
    )
    print(
        f"time: {total:.1f} s total = {t_generate:.1f} s structure generation + "
        f"{result.wall_time:.1f} s xTB with {args.workers} worker(s) "
        f"(summed over workers: {result.compute_time:.1f} s tblite wall, "
        f"{result.cpu_time:.1f} s tblite CPU time)"
    )
    for name, path in paths.items():
        print(f"wrote {path} ({len(data.get(name, []))} structures)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

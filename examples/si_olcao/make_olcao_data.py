"""Make per-site OLCAO training data: skeletons -> makeinput + uolcao -> extended XYZ.

    python examples/si_olcao/make_olcao_data.py STRUCTURES.extxyz --out runs/ \\
        --olcao-dir $OLCAO_DIR [--kp "-kp 2 2 2"] [--collect data.extxyz]
    python examples/si_olcao/make_olcao_data.py STRUCTURES.extxyz --out runs/ --dry-run
    python examples/si_olcao/make_olcao_data.py --collect-only runs/ --collect data.extxyz

For every structure (any file ``ase.io.read`` understands, all frames) it

1. writes ``OUT/<name>/olcao.skl`` in P1 with **one species per site** (tags ``si1 ... siN``
   in the input order), so makeinput gives every site its own potential type and the SCF
   gives every site its own coefficient vector A_i;
2. runs ``makeinput.py <k-point options>`` and ``uolcao.py`` (an SCF from OLCAO's atomic
   superposition potential ``inputs/scfV.dat``, all other settings makeinput's defaults)
   in that folder, one structure at a time;
3. collects, per structure, the converged A_i of every site in the input order
   (``arrays["potential_coefficients"]``, Hartree, through ``inputs/datSkl.map``), OLCAO's
   atomic start (``arrays["start_coefficients"]``), the total energy (Hartree, last row of
   ``gs_iter-fb.dat``), the SCF iteration count and the final convergence into one extended
   XYZ file (``--collect``), the layout of ``data/olcao_si.extxyz``.  Runs whose final
   convergence is not below ``CONVERGENCE_TEST`` of their ``inputs/olcao.dat`` are skipped
   with a message.

The name of a structure is ``info["structure_name"]`` when present, else ``s0000``, ...
k-points: ``info["kpoints"]`` (makeinput options) when present, else ``--kp``.

OLCAO is not installable from package registries; the continuous-integration tests run this
script with ``--dry-run`` (skeletons and ``commands.sh``, nothing executed) and
``--collect-only`` on the real OLCAO run in ``data/``.  The environment of OLCAO's
``.olcao/olcaorc`` (OLCAO_BIN, OLCAO_DATA, OLCAO_RC, OLCAO_TEMP, PATH, PYTHONPATH, ...) is
derived from ``--olcao-dir`` where it is not already set.  uolcao.py shares its scratch
directory between runs of the same ``$USER``: run one instance of this script at a time.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.io import read, write

from snapqeq.io.olcao import (
    TARGETS_KEY,
    read_site_coefficients,
    safe_skl_title,
    write_skl,
)

DEFAULT_KP = "-kp 2 2 2"
COMMANDS_FILE = "commands.sh"


@dataclass
class Job:
    """One OLCAO run: its folder, structure and command lines."""

    name: str
    folder: Path
    atoms: Atoms
    commands: list[list[str]]


def structure_name(atoms: Atoms, index: int) -> str:
    name = str(atoms.info.get("structure_name", f"s{index:04d}"))
    if not name or any(c in name for c in "/\\ \t\n") or name.startswith("."):
        raise ValueError(f"structure {index}: name {name!r} is not a plain folder name")
    return name


def write_jobs(structures: list[Atoms], out: Path, kp: str, force: bool = False) -> list[Job]:
    """Skeletons (one species per site) and the command lines of every structure."""
    jobs, names = [], set()
    for k, atoms in enumerate(structures):
        name = structure_name(atoms, k)
        if name in names:
            raise ValueError(f"two structures are named {name!r}")
        names.add(name)
        folder = out / name
        skeleton = folder / "olcao.skl"
        if skeleton.exists() and not force:
            raise FileExistsError(f"{skeleton} exists; pass --force or choose another --out")
        folder.mkdir(parents=True, exist_ok=True)
        title = safe_skl_title(f"snapqeq make_olcao_data: {name}, {len(atoms)} atoms, "
                               "one species per site")
        write_skl(skeleton, atoms, title=title, per_site_species=True)
        options = shlex.split(str(atoms.info.get("kpoints", kp)))
        jobs.append(Job(name, folder, atoms, [["makeinput.py", *options], ["uolcao.py"]]))
    lines = ["#!/bin/sh", "# written by make_olcao_data.py: one OLCAO SCF per folder", "set -e"]
    for job in jobs:
        cmds = " && ".join(shlex.join(c) for c in job.commands)
        lines.append(f"(cd {shlex.quote(str(job.folder))} && {cmds})")
    (out / COMMANDS_FILE).write_text("\n".join(lines) + "\n")
    return jobs


def olcao_environment(olcao_dir: Path, scratch: Path) -> dict[str, str]:
    """os.environ plus the variables of OLCAO's .olcao/olcaorc that are not already set."""
    env = dict(os.environ)
    binary = olcao_dir / "bin"
    defaults = {"OLCAO_DIR": str(olcao_dir), "OLCAO_RC": str(olcao_dir / ".olcao"),
                "OLCAO_BIN": str(binary), "OLCAO_DATA": str(olcao_dir / "share"),
                "OLCAO_TEMP": str(scratch), "OLCAO_EXE": "", "OLCAO_TAR": "linux",
                "OLCAO_TOUCH": "0", "OLCAO_DOUBLE": "16", "OLCAO_QUEUE": "3"}
    for key, value in defaults.items():
        env.setdefault(key, value)
    env["PATH"] = f"{env['OLCAO_BIN']}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = f"{env['OLCAO_BIN']}{os.pathsep}{env.get('PYTHONPATH', '')}"
    env["PERL5LIB"] = f"{env['OLCAO_BIN']}/perl5{os.pathsep}{env.get('PERL5LIB', '')}"
    return env


def run_job(job: Job, env: dict[str, str]) -> float:
    """Run makeinput and uolcao in the job's folder; wall time of uolcao (s)."""
    for name in ("gs_scfV-fb.dat", "gs_iter-fb.dat"):  # uolcao would start from / append to
        (job.folder / name).unlink(missing_ok=True)
    wall = 0.0
    for cmd in job.commands:
        t0 = time.perf_counter()
        with open(job.folder / f"{cmd[0]}.log", "w") as log:
            proc = subprocess.run(cmd, cwd=job.folder, env=env, stdout=log,
                                  stderr=subprocess.STDOUT)
        if proc.returncode != 0:
            raise RuntimeError(f"{job.name}: {shlex.join(cmd)} failed (exit "
                               f"{proc.returncode}); see {job.folder / (cmd[0] + '.log')}")
        wall = time.perf_counter() - t0
    return wall


def read_iterations(path: Path) -> tuple[int, float, float]:
    """(iterations, final convergence, final total energy in Hartree) of ``gs_iter-fb.dat``
    (header line, then 'Iter. Occ.Energy El.Error Convergence TotalEnergy' rows)."""
    rows = []
    for line in path.read_text().splitlines():
        words = line.split()
        if words and words[0].isdigit():
            try:
                rows.append([float(w) for w in words[:5]])
            except ValueError:
                raise ValueError(f"{path}: malformed iteration row {line!r}") from None
    if not rows:
        raise ValueError(f"{path}: no iteration rows")
    return len(rows), rows[-1][3], rows[-1][4]


def convergence_test(olcao_dat: Path) -> float:
    """CONVERGENCE_TEST of an ``inputs/olcao.dat``."""
    lines = olcao_dat.read_text().splitlines()
    for k, line in enumerate(lines[:-1]):
        if line.split() and line.split()[0] == "CONVERGENCE_TEST":
            return float(lines[k + 1].split()[0])
    raise ValueError(f"{olcao_dat}: no CONVERGENCE_TEST")


def collect(folder: Path, atoms: Atoms | None = None) -> Atoms | None:
    """The per-site result of one finished run (None, with a message, if not converged).

    ``atoms`` (input order) is checked against OLCAO's structure (positions < 1e-5 A modulo
    the cell); without it the skeleton order of the run is used."""
    run_atoms, coeffs = read_site_coefficients(folder)
    _, start = read_site_coefficients(folder, coefficient_file="inputs/scfV.dat")
    iterations, final, energy = read_iterations(folder / "gs_iter-fb.dat")
    limit = convergence_test(folder / "inputs" / "olcao.dat")
    if not final < limit:
        print(f"{folder.name}: not converged (final {final:.3g} >= {limit:g}); skipped",
              file=sys.stderr)
        return None
    if atoms is not None:
        frac = run_atoms.cell.scaled_positions(atoms.positions) - run_atoms.get_scaled_positions()
        frac -= np.round(frac)
        if len(atoms) != len(run_atoms) or np.abs(frac @ run_atoms.cell.array).max() > 1e-5:
            raise ValueError(f"{folder}: OLCAO's structure differs from the input structure")
    out = (atoms if atoms is not None else run_atoms).copy()
    out.arrays[TARGETS_KEY] = coeffs
    out.arrays["start_coefficients"] = start
    out.arrays["olcao_type"] = run_atoms.arrays["olcao_type"]
    out.info.update(structure_name=folder.name, olcao_total_energy=energy,
                    scf_iterations=iterations, scf_final_convergence=final)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("structures", nargs="?", help="structure file (all frames are used)")
    parser.add_argument("--out", type=Path, default=Path("olcao_runs"),
                        help="folder for the run directories")
    parser.add_argument("--olcao-dir", type=Path, default=os.environ.get("OLCAO_DIR"),
                        help="OLCAO installation (default $OLCAO_DIR)")
    parser.add_argument("--kp", default=DEFAULT_KP,
                        help="makeinput k-point options when a structure has no "
                             "info['kpoints'] (default %(default)r)")
    parser.add_argument("--collect", type=Path, default=None,
                        help="extended XYZ file for the collected per-site results")
    parser.add_argument("--dry-run", action="store_true",
                        help="write the skeletons and commands.sh only; run nothing")
    parser.add_argument("--collect-only", type=Path, default=None, metavar="RUNS",
                        help="collect every finished run directory below RUNS; run nothing")
    parser.add_argument("--force", action="store_true", help="replace existing skeletons")
    args = parser.parse_args(argv)

    if args.collect_only is not None:
        folders = sorted(p.parent for p in args.collect_only.glob("*/gs_iter-fb.dat"))
        if not folders:
            parser.error(f"no finished OLCAO runs (*/gs_iter-fb.dat) below {args.collect_only}")
        results = [r for r in (collect(f) for f in folders) if r is not None]
    else:
        if args.structures is None:
            parser.error("give a structure file (or --collect-only RUNS)")
        structures = list(read(args.structures, ":"))
        jobs = write_jobs(structures, args.out, args.kp, force=args.force)
        print(f"wrote {len(jobs)} skeletons and {args.out / COMMANDS_FILE}")
        if args.dry_run:
            return 0
        if args.olcao_dir is None or not (Path(args.olcao_dir) / "bin").is_dir():
            parser.error("need --olcao-dir (or $OLCAO_DIR) with OLCAO's bin/ folder, or "
                         "--dry-run")
        env = olcao_environment(Path(args.olcao_dir).resolve(), args.out.resolve() / "scratch")
        results = []
        for k, job in enumerate(jobs):
            wall = run_job(job, env)
            result = collect(job.folder, job.atoms)
            print(f"[{k + 1}/{len(jobs)}] {job.name}: uolcao {wall:.0f} s"
                  + ("" if result is None else f", {result.info['scf_iterations']} "
                     f"iterations, E = {result.info['olcao_total_energy']:.8f} Ha"))
            if result is not None:
                result.info["scf_wall_s"] = wall
                results.append(result)
    if args.collect is not None:
        write(args.collect, results, format="extxyz")
        print(f"wrote {len(results)} structures with per-site coefficients to {args.collect}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

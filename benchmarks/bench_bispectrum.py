"""Bispectrum and SNAP speed: snapqeq beside LAMMPS in one process.

2000-atom rattled bcc Ta (10x10x10 cubic cells), Ta06A-style parameters, twojmax 6 and 8.
(a) descriptors only: LAMMPS ``compute sna/atom`` vs ``Bispectrum.compute``;
(b) energy + forces of a linear SNAP potential: LAMMPS ``pair_style snap`` vs
``SNAPCalculator``.  Both on one thread; then snapqeq's thread scaling.

Run:  make bench     (or: .venv/bin/python benchmarks/bench_bispectrum.py [--repeat N])
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from ase.build import bulk
from ase.io import write

from snapqeq import Bispectrum
from snapqeq._sna import set_num_threads
from snapqeq.calculators.snap import SNAPCalculator
from snapqeq.lammps.runtime import open_lammps

RCUTFAC, RFAC0, RADIUS = 4.67637, 0.99363, 0.5


def structure(seed: int = 7):
    atoms = bulk("Ta", "bcc", a=3.316, cubic=True).repeat(10)
    atoms.rattle(0.05, seed=seed)
    atoms.wrap()
    return atoms


def write_linear_snap(dirname: Path, twojmax: int, ncoeff: int) -> tuple[Path, Path]:
    """A linear SNAP potential with smooth random coefficients (Ta06A for twojmax 6)."""
    rng = np.random.default_rng(1)
    coeff = np.concatenate([[-2.0], rng.normal(scale=1e-3, size=ncoeff)])
    cfile, pfile = dirname / f"bench{twojmax}.snapcoeff", dirname / f"bench{twojmax}.snapparam"
    cfile.write_text(f"1 {ncoeff + 1}\nTa {RADIUS} 1.0\n" + "\n".join(f"{c:.16e}" for c in coeff))
    pfile.write_text(f"rcutfac {RCUTFAC}\ntwojmax {twojmax}\nrfac0 {RFAC0}\nrmin0 0\n"
                     "bzeroflag 0\nquadraticflag 0\n")
    return cfile, pfile


def lammps_time(data: Path, body: str, steps: int, boundary: str = "p p p") -> float:
    """Seconds per step of `run steps` (after a warm-up run); ``body`` sets masses and
    the pair style."""
    lmp = open_lammps()
    lmp.commands_string(f"units metal\natom_style atomic\nboundary {boundary}\n"
                        f"read_data {data}\n{body}\nthermo 1\nrun 1\n")
    t0 = time.perf_counter()
    lmp.command(f"run {steps}")
    dt = (time.perf_counter() - t0) / steps
    lmp.close()
    return dt


def best_time(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    atoms = structure()
    n = len(atoms)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = tmp / "ta.data"
        write(data, atoms, format="lammps-data", specorder=["Ta"])
        for twojmax in (6, 8):
            set_num_threads(1)
            bs = Bispectrum(twojmax, RCUTFAC, {"Ta": RADIUS}, {"Ta": 1.0}, rfac0=RFAC0,
                            bzeroflag=False)
            sna = (f"mass 1 180.88\npair_style zero {2 * RCUTFAC * RADIUS:.6f}\npair_coeff * *\n"
                   f"compute b all sna/atom {RCUTFAC} {RFAC0} {twojmax} {RADIUS} 1.0 "
                   "bzeroflag 0\ncompute s all reduce sum c_b[1]\nthermo_style custom step c_s")
            # `thermo 1` below makes LAMMPS evaluate the compute on every step
            t_lmp_b = lammps_time(data, sna, args.repeat)
            t_us_b = best_time(lambda bs=bs: bs.compute(atoms), args.repeat)
            cfile, pfile = write_linear_snap(tmp, twojmax, bs.n_linear)
            snap = (f"mass 1 180.88\npair_style snap\npair_coeff * * {cfile} {pfile} Ta\n"
                    "velocity all create 300 1 loop geom\nfix 1 all nve")
            t_lmp_f = lammps_time(data, snap, args.repeat)
            calc = SNAPCalculator(cfile, pfile)

            def energy_forces(calc=calc):
                calc.reset()
                calc.calculate(atoms, ["energy", "forces"])

            t_us_f = best_time(energy_forces, args.repeat)
            scaling = []
            for threads in (1, 2, os.cpu_count() or 1):
                set_num_threads(threads)
                scaling.append((threads, best_time(energy_forces, args.repeat)))
            rows.append((twojmax, t_lmp_b, t_us_b, t_lmp_f, t_us_f, scaling))
    set_num_threads(1)
    print(f"\n{n} atoms bcc Ta, rattled; one thread; microseconds per atom (per step)")
    print(f"{'twojmax':>7} | {'sna/atom':>9} {'snapqeq':>9} {'ratio':>6} | "
          f"{'pair snap':>9} {'snapqeq':>9} {'ratio':>6}")
    for twojmax, lb, ub, lf, uf, _ in rows:
        us = 1e6 / n
        print(f"{twojmax:>7} | {lb * us:9.1f} {ub * us:9.1f} {ub / lb:6.2f} | "
              f"{lf * us:9.1f} {uf * us:9.1f} {uf / lf:6.2f}")
    print("\nsnapqeq energy+forces thread scaling (microseconds per atom)")
    for twojmax, *_, scaling in rows:
        cells = "  ".join(f"{t} thr: {s * 1e6 / n:7.1f}" for t, s in scaling)
        print(f"twojmax {twojmax}: {cells}")


if __name__ == "__main__":
    main()

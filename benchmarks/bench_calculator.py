"""ASE calculator speed: time per energy+forces call versus size, beside LAMMPS pair snap.

Model: the CENT example model ``examples/models/nacl_cent.pt`` (twojmax 6, 30 bispectrum
components, pair cutoff 6.5 Å) or ``--model``.  Peer: LAMMPS ``pair_style snap`` with the
same descriptor (twojmax, radii, weights, rcutfac) and random linear coefficients, i.e. the
cost of the descriptor part alone, run in the same process.  Structures: rattled rock-salt
NaCl cubes (free clusters, 8 to 1000 atoms) and periodic supercells (64 to 10648 atoms).
One thread everywhere.  Each snapqeq call follows a small displacement of all atoms, as in
MD (the charges warm-start from the previous call).

Run:  .venv/bin/python benchmarks/bench_calculator.py [--repeat N] [--max-periodic N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from ase.build import bulk
from ase.io import write

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_bispectrum import lammps_time  # noqa: E402

from snapqeq import Bispectrum, SnapQEqCalculator  # noqa: E402
from snapqeq._sna import set_num_threads  # noqa: E402
from snapqeq.datasets.clusters import nacl_cube  # noqa: E402
from snapqeq.electrostatics.qeq import DENSE_MAX_ATOMS, KERNEL_MAX_PERIODIC  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MASSES = {"Na": 22.99, "Cl": 35.45}


def structures(max_periodic: int) -> list[tuple[str, object]]:
    out = []
    for n_side in (2, 4, 6, 8, 10):
        atoms = nacl_cube(n_side)
        atoms.rattle(0.05, seed=n_side)
        out.append(("cluster", atoms))
    for rep in (2, 4, 6, 8, 11):
        atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat(rep)
        if len(atoms) > max_periodic:
            break
        atoms.rattle(0.05, seed=rep)
        out.append(("periodic", atoms))
    return out


def write_snap(folder: Path, bs: Bispectrum) -> tuple[Path, Path]:
    """Linear SNAP files with the model's descriptor and small random coefficients."""
    rng = np.random.default_rng(1)
    lines = [f"{len(bs.elements)} {bs.n_linear + 1}"]
    for e in bs.elements:
        lines.append(f"{e} {bs.radii[e]} {bs.weights[e]}")
        lines += [f"{c:.16e}" for c in np.concatenate([[-2.0],
                                                        rng.normal(scale=1e-3, size=bs.n_linear)])]
    coeff, param = folder / "bench.snapcoeff", folder / "bench.snapparam"
    coeff.write_text("\n".join(lines) + "\n")
    p = bs.params
    param.write_text(f"rcutfac {p['rcutfac']}\ntwojmax {p['twojmax']}\nrfac0 {p['rfac0']}\n"
                     f"rmin0 {p['rmin0']}\nbzeroflag {int(p['bzeroflag'])}\n"
                     f"quadraticflag {int(p['quadraticflag'])}\n")
    return coeff, param


def pair_snap_time(atoms, folder: Path, bs: Bispectrum, steps: int) -> float:
    """LAMMPS pair snap seconds per MD step (energy + forces) of ``atoms``."""
    data = folder / "bench.data"
    atoms = atoms.copy()
    if not atoms.pbc.all():  # a cluster: LAMMPS shrink-wrapped box
        atoms.center(vacuum=10.0)
    write(data, atoms, format="lammps-data", specorder=list(bs.elements))
    coeff, param = write_snap(folder, bs)
    boundary = "p p p" if atoms.pbc.all() else "s s s"
    masses = "\n".join(f"mass {k + 1} {MASSES[e]}" for k, e in enumerate(bs.elements))
    body = (f"{masses}\npair_style snap\npair_coeff * * {coeff} {param} "
            f"{' '.join(bs.elements)}\nvelocity all create 300 1 loop geom\nfix 1 all nve")
    return lammps_time(data, body, steps, boundary=boundary)


def calculator_time(atoms, model: Path, repeat: int) -> tuple[float, str]:
    """Best seconds per energy+forces call and the QEq method the solver picked."""
    atoms = atoms.copy()
    atoms.calc = SnapQEqCalculator(model)
    atoms.get_forces()
    rng = np.random.default_rng(0)
    times = []
    for _ in range(repeat):
        atoms.positions += rng.normal(scale=0.002, size=atoms.positions.shape)
        t0 = time.perf_counter()
        atoms.get_forces()
        times.append(time.perf_counter() - t0)
    periodic = bool(atoms.pbc.any())
    if len(atoms) <= DENSE_MAX_ATOMS["periodic" if periodic else "free"]:
        method = "dense"
    else:  # the C++ kernel's conjugate gradients, or torch's with PME for large cells
        method = "cg" if periodic and len(atoms) > KERNEL_MAX_PERIODIC else "kernel"
    return min(times), method


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "examples/models/nacl_cent.pt")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--max-periodic", type=int, default=11000)
    args = parser.parse_args()
    set_num_threads(1)
    calc = SnapQEqCalculator(args.model)
    bs = calc.descriptor
    print(f"model {args.model.name}: twojmax {bs.params['twojmax']}, {bs.n_components} "
          f"components, short-range network: {calc.has_short}; one thread")
    print(f"{'system':>9} {'atoms':>6} {'QEq':>5} | {'snapqeq':>10} {'pair snap':>10} "
          f"{'ratio':>6}   (microseconds per atom per call/step)")
    with tempfile.TemporaryDirectory() as tmp:
        for kind, atoms in structures(args.max_periodic):
            n = len(atoms)
            ours, method = calculator_time(atoms, args.model, args.repeat)
            theirs = pair_snap_time(atoms, Path(tmp), bs, args.repeat)
            print(f"{kind:>9} {n:>6} {method:>5} | {ours / n * 1e6:10.1f} "
                  f"{theirs / n * 1e6:10.1f} {ours / theirs:6.2f}", flush=True)


if __name__ == "__main__":
    main()

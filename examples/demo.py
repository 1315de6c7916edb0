"""The main job (`make demo`).

Until the end-to-end CENT pipeline lands, the demo computes SNAP bispectrum descriptors of
example structures, checks them against LAMMPS ``compute sna/atom`` and ``pair_style snap``
in the same process, and writes a summary and a plot to demo_output/.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from ase.build import bulk  # noqa: E402
from ase.io import write  # noqa: E402

from snapqeq import Bispectrum  # noqa: E402
from snapqeq.lammps_runtime import lammps_potentials_dir, open_lammps  # noqa: E402
from snapqeq.snap import SNAPCalculator  # noqa: E402

OUT = Path("demo_output")


def lammps_reference(atoms, potdir: Path, workdir: Path):
    """sna/atom descriptors and pair snap energy/forces of Ta06A from LAMMPS."""
    data = workdir / "ta.data"
    write(data, atoms, format="lammps-data", specorder=["Ta"])
    lmp = open_lammps()
    lmp.commands_string(f"""
units metal
atom_style atomic
boundary p p p
read_data {data}
mass 1 180.88
pair_style snap
pair_coeff * * {potdir}/Ta06A.snapcoeff {potdir}/Ta06A.snapparam Ta
compute b all sna/atom 4.67637 0.99363 6 0.5 1.0 rmin0 0 bzeroflag 0
run 0
""")
    n = len(atoms)
    ids = lmp.numpy.extract_atom("id")[:n] - 1
    b = np.empty((n, 30))
    b[ids] = lmp.numpy.extract_compute("b", 1, 2)[:n]
    f = np.empty((n, 3))
    f[ids] = lmp.numpy.extract_atom("f")[:n]
    energy = lmp.get_thermo("pe")
    lmp.close()
    return b, energy, f


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="larger structure")
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    potdir = lammps_potentials_dir()
    atoms = bulk("Ta", "bcc", a=3.316, cubic=True).repeat(8 if args.full else 5)
    atoms.rattle(0.05, seed=3)
    atoms.wrap()
    print(f"== snapqeq demo: bispectrum of {len(atoms)}-atom rattled bcc Ta")
    bs = Bispectrum.from_snapparam(potdir / "Ta06A.snapparam", potdir / "Ta06A.snapcoeff")
    t0 = time.perf_counter()
    b = bs.compute(atoms)
    t_b = time.perf_counter() - t0
    atoms.calc = SNAPCalculator(potdir / "Ta06A.snapcoeff", potdir / "Ta06A.snapparam")
    t0 = time.perf_counter()
    energy, forces = atoms.get_potential_energy(), atoms.get_forces()
    t_f = time.perf_counter() - t0
    b_ref, e_ref, f_ref = lammps_reference(atoms, potdir, OUT)
    scale = np.maximum(np.abs(b_ref).max(0), 1e-300)
    dev_b = float(np.max(np.abs(b - b_ref) / scale))
    dev_e = abs(energy - e_ref) / abs(e_ref)
    dev_f = float(np.abs(forces - f_ref).max())
    lines = [
        "# snapqeq demo: SNAP bispectrum",
        "",
        f"- structure: {len(atoms)} atoms of rattled bcc Ta, Ta06A parameters (twojmax 6)",
        f"- descriptors: {bs.n_components} components, {t_b * 1e3:.1f} ms",
        f"- max deviation from LAMMPS compute sna/atom (relative per component): {dev_b:.2e}",
        f"- Ta06A energy {energy:.8f} eV (LAMMPS {e_ref:.8f} eV, relative deviation "
        f"{dev_e:.1e}); max force deviation {dev_f:.1e} eV/Å; energy+forces {t_f * 1e3:.1f} ms",
    ]
    (OUT / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[2:]))
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.boxplot(b / scale, showfliers=False)
    ax.set_xlabel("bispectrum component")
    ax.set_ylabel("B / max |B| over atoms")
    ax.set_title(f"Ta06A bispectrum, {len(atoms)} atoms")
    fig.tight_layout()
    fig.savefig(OUT / "bispectrum.png", dpi=120)
    print(f"wrote {OUT / 'report.md'} and {OUT / 'bispectrum.png'}")


if __name__ == "__main__":
    main()

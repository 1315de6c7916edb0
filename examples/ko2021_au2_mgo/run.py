"""Au2 on MgO(001) with and without Al dopants (4G-HDNNP paper, real DFT data).

    python examples/ko2021_au2_mgo/run.py --train FILE.data [--test FILE.data] --out DIR

Without ``--test`` a fixed 20 % of ``--train`` (4 of the 18 shipped slabs) is the test set.
The shipped data (``data/input.data``, 18 periodic 110-atom slabs, see ``data/README.md``)
is the n2p2 example subset of the paper's data; the paper's test is non-local charge
transfer: Al dopants in the slab change the charge of the Au2 cluster on top. The last
line printed is one JSON object with the test RMSEs ``E_meV_atom``, ``F_meV_A``, ``q_e``
and ``train_s``; see :mod:`ko2021_benchmark`.

Recipe: bispectrum cutoff 4.2 Angstrom (8 bohr), 2J = 6; Gaussian widths = covalent radii;
trainable hardness; 15-15 networks for chi and the short-range energy; energies, forces
and Hirshfeld charges in the loss; cosine learning-rate decay; AdamW with weight decay 0.1;
the model is the mean of a committee of 4 members (seeds 0-3, trained ``--jobs`` at a
time).
"""

from __future__ import annotations

import sys
from pathlib import Path

from ase.data import atomic_numbers, covalent_radii

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ko2021_benchmark import BOHR, main  # noqa: E402

ELEMENTS = ("Mg", "O", "Au", "Al")
SYSTEM = {
    "title": "Au2 on MgO(001), Al-doped and undoped",
    "test_fraction": 0.2,
    "validation_fraction": 0.1,
    # E meV/atom, F meV/bohr, q e: Ko et al. 2021 and SpookyNet (Unke et al. 2021), full
    # data set; n2p2 trained on the same slabs
    "published": {
        "2G-HDNNP (paper)": (2.287, 153.1, None),
        "4G-HDNNP (paper)": (0.219, 66.0, 0.005698),
        "SpookyNet (paper)": (0.107, 5.337, 0.001013),
        # n2p2 61daa0df with its AlAuMgO_4G example settings trained on the same 13 + 1
        # slabs, mean of 3 seeds (BENCHMARKS.md)
        "n2p2 4G on the same slabs": (5.21, 712.0 * BOHR, 0.020),
        "n2p2 2G on the same slabs": (3.16, 381.0 * BOHR, None),
    },
    "config": {  # with ko2021_benchmark.COMMON_RECIPE
        "descriptor": {"twojmax": 6, "rcutfac": 1.0, "radii": {e: 2.1 for e in ELEMENTS},
                       "weights": {"Mg": 1.0, "O": 0.8, "Au": 1.2, "Al": 0.9}},
        "widths": {e: float(covalent_radii[atomic_numbers[e]]) for e in ELEMENTS},
        "hardness": {e: 10.0 for e in ELEMENTS},
        "hidden": [15, 15],
        "short_hidden": [15, 15],
        "batch_size": 2,
        # chosen on the carbon chain's inner split and this system's 3-fold cross-validation
        # of the 14 non-test slabs (BENCHMARKS.md)
        "weight_decay": 0.1,
        "committee": 4,
    },
}

if __name__ == "__main__":
    main(SYSTEM)

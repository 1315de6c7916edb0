"""Export a small CENT model with random weights for trying the LAMMPS input decks.

    python examples/lammps/make_example_model.py   # -> examples/lammps/output/example_model.pt

The networks are untrained: the charges and energies it gives are smooth and physically
shaped (Gaussian charges, NaCl widths and hardnesses of the CENT paper) but meaningless.
A trained model comes from the NaCl example (``snapqeq train``); the decks take any model
file through ``-var model PATH``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from snapqeq.bispectrum import Bispectrum
from snapqeq.export import export_model
from snapqeq.model import CENT

BOHR = 0.529177210903  # Angstrom
HARTREE = 27.211386245988  # eV


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "output" / "example_model.pt"))
    parser.add_argument("--twojmax", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="overwrite an existing file")
    args = parser.parse_args(argv)

    elements = ["Na", "Cl"]
    bs = Bispectrum(args.twojmax, 1.0, {"Na": 2.6, "Cl": 3.0}, {"Na": 1.0, "Cl": 0.8})
    torch.manual_seed(args.seed)
    # CENT paper (NaCl): widths 1 and 2 bohr, hardness 0.2 and 0.1 Ha/e^2, 51-3-3-1 networks
    model = CENT(len(elements), bs.n_components, [3, 3],
                 widths=[1.0 * BOHR, 2.0 * BOHR], hardness=[0.2 * HARTREE, 0.1 * HARTREE],
                 e0=[-4.0, -3.0], chi_scale=1.0)
    with torch.no_grad():  # Na gives electrons to Cl
        model.chi0.copy_(torch.tensor([-2.0, 2.0], dtype=torch.float64))
    path = export_model(model, elements, bs.to_dict(), args.out, overwrite=args.force)
    print(f"wrote {path} (elements {elements}, twojmax {args.twojmax}, "
          f"{bs.n_components} descriptor components, random weights)")
    return path


if __name__ == "__main__":
    main()

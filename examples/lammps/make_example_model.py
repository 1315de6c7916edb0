"""Export a small CENT model with random weights for trying the LAMMPS input decks.

    python examples/lammps/make_example_model.py   # -> examples/lammps/output/example_model.pt
    python examples/lammps/make_example_model.py --olcao   # -> .../example_model_olcao.pt

The networks are untrained: the charges and energies it gives are smooth and physically
shaped (Gaussian charges, NaCl widths and hardnesses of the CENT paper) but meaningless.
A trained model comes from the NaCl example (``snapqeq train``); the decks take any model
file through ``-var model PATH``.

``--olcao`` attaches an equally untrained OLCAO potential-coefficient head (site features:
the model's bispectrum, a medium-range one with twojmax 4 and 5/3 of the cutoff, q and phi),
only to try ``in.nacl_olcao``: its coefficients are random numbers on OLCAO's exponent
series.  A real head is trained on OLCAO coefficients with an ``olcao:`` section in the
``snapqeq train`` config (see the main README).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from snapqeq.descriptors.bispectrum import Bispectrum
from snapqeq.models.cent import CENT
from snapqeq.models.olcao_head import OLCAOModel
from snapqeq.models.site_features import FeatureRecipe, energy_model_fingerprint
from snapqeq.training.export import build_metadata, export_model
from snapqeq.units import BOHR, HARTREE


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="model file (default output/example_model.pt, "
                        "output/example_model_olcao.pt with --olcao)")
    parser.add_argument("--twojmax", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="overwrite an existing file")
    parser.add_argument("--olcao", action="store_true",
                        help="attach an untrained OLCAO head (for in.nacl_olcao)")
    args = parser.parse_args(argv)
    out = args.out or str(Path(__file__).parent / "output" /
                          ("example_model_olcao.pt" if args.olcao else "example_model.pt"))

    elements = ["Na", "Cl"]
    bs = Bispectrum(args.twojmax, 1.0, {"Na": 2.6, "Cl": 3.0}, {"Na": 1.0, "Cl": 0.8})
    torch.manual_seed(args.seed)
    # CENT paper (NaCl): widths 1 and 2 bohr, hardness 0.2 and 0.1 Ha/e^2, 51-3-3-1 networks
    model = CENT(len(elements), bs.n_components, [3, 3],
                 widths=[1.0 * BOHR, 2.0 * BOHR], hardness=[0.2 * HARTREE, 0.1 * HARTREE],
                 e0=[-4.0, -3.0], chi_scale=1.0)
    with torch.no_grad():  # Na gives electrons to Cl
        model.chi0.copy_(torch.tensor([-2.0, 2.0], dtype=torch.float64))
    head = None
    if args.olcao:  # the recipe snapqeq train uses (medium range: twojmax 4, 5/3 the cutoff)
        desc = bs.to_dict()
        recipe = FeatureRecipe(local=desc, medium=dict(desc, twojmax=4, rcutfac=5.0 / 3.0),
                               chi_source="energy_model")
        fingerprint = energy_model_fingerprint(build_metadata(model, elements, desc))
        head = OLCAOModel(recipe, hidden=[16], n_components=2, energy_fingerprint=fingerprint)
    path = export_model(model, elements, bs.to_dict(), out, overwrite=args.force, olcao=head)
    print(f"wrote {path} (elements {elements}, twojmax {args.twojmax}, "
          f"{bs.n_components} descriptor components{', OLCAO head' if head else ''}, "
          f"random weights)")
    return path


if __name__ == "__main__":
    main()

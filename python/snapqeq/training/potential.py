"""Energy, forces and charges of a CENT model for one prepared structure (training path).

    E = sum_i E0_i + E_es(q) + sum_i [chi_i q_i + J_i q_i^2 / 2] (+ sum_i E_short(b_i, q_i))

with q the constrained minimiser of the QEq energy.  Everything is a torch function of the
positions (through :func:`snapqeq.descriptors.autograd.bispectrum_of_positions` and
:func:`snapqeq.electrostatics.qeq.qeq_energy`) and of the network parameters: forces come from
autograd (Hellmann-Feynman for CENT, the adjoint term of SPEC §5 with a short-range network) and can
themselves be differentiated for force training.

For large systems and MD use the calculator (iterative solver and adjoint kernel forces).
"""

from __future__ import annotations

import torch

from snapqeq.descriptors.autograd import bispectrum_of_positions
from snapqeq.electrostatics.qeq import qeq_energy
from snapqeq.models.cent import CENT
from snapqeq.training.data import Sample


def predict(model: CENT, s: Sample, forces: bool = True, create_graph: bool = False,
            accuracy: float | None = None) -> dict[str, torch.Tensor]:
    """Energy (eV), charges (e), electronegativities (eV/e) and optionally forces (eV/Å);
    ``accuracy``: the relative accuracy of the Ewald sums of a periodic cell (default
    :data:`snapqeq.electrostatics.ewald.DEFAULT_ACCURACY`)."""
    pos = s.positions.detach().clone().requires_grad_(forces)
    b = bispectrum_of_positions(pos, s.b, s.pair_i, s.pair_j, s.db) if forces else s.b
    species = s.species
    chi = model.electronegativity(b, species)
    periodic = bool(s.pbc.all())
    u, q = qeq_energy(chi, pos, s.cell if periodic else None, s.pbc.tolist(),
                      model.hardness()[species], model.widths[species], s.total_charge,
                      accuracy=accuracy)
    energy = model.e0[species].sum() + u + model.short_energy(b, q, species).sum()
    out = {"energy": energy, "charges": q, "chi": chi}
    if forces:
        (grad,) = torch.autograd.grad(energy, pos, create_graph=create_graph)
        out["forces"] = -grad
    return out

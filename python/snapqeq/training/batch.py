"""Batched evaluation of a CENT model on many clusters at once (training path).

:func:`snapqeq.training.potential.predict` treats one structure per call; for the small clusters
training sets consist of, its cost is Python and autograd overhead, not arithmetic. Here
the atoms of a batch of clusters run through the networks and the descriptor-derivative
contraction in one call each, and the charge equilibrations of all clusters are one
batched Cholesky solve of the padded matrices

    A_s = diag(J) + A_es,   A_es,ij = k_e erf(r_ij / sqrt(alpha_i^2 + alpha_j^2)) / r_ij,
    A_es,ii = 2 k_e gamma_ii / sqrt(pi)

with the constrained minimiser of U = chi.q + q.A.q / 2 subject to sum q = Q,

    q = A^-1 (mu 1 - chi),   mu = (Q + 1.A^-1 chi) / (1.A^-1 1).

Everything is an ordinary differentiable torch expression of the positions and the
network parameters, so forces and their parameter gradients (force training) are exact
to round-off, the same numbers as :func:`~snapqeq.training.potential.predict` (tested to 1e-10).
Padding atoms are decoupled (unit diagonal, zero charge, excluded from the constraint).

Periodic structures and clusters above :data:`BATCH_MAX_ATOMS` atoms go through
:func:`~snapqeq.training.potential.predict` one by one (:func:`batch_loss` mixes both).
Units: eV, e, Angstrom.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from snapqeq.descriptors.autograd import bispectrum_of_positions
from snapqeq.electrostatics.ewald import gaussian_coulomb, self_coefficient
from snapqeq.models.cent import CENT
from snapqeq.training.data import Sample
from snapqeq.training.potential import predict

__all__ = ["BATCH_MAX_ATOMS", "Batch", "batch_loss", "batch_losses", "batchable", "collate",
           "equilibrate_batch", "free_coulomb_matrix", "predict_batch", "structure_loss"]

#: largest cluster evaluated in a padded batch (dense N^2 matrices per structure)
BATCH_MAX_ATOMS = 300


def batchable(s: Sample) -> bool:
    """Whether ``s`` can go into a padded batch: a cluster of at most BATCH_MAX_ATOMS."""
    return not bool(s.pbc.any()) and s.n_atoms <= BATCH_MAX_ATOMS


@dataclass
class Batch:
    """Clusters concatenated atom by atom, with the padded (B, N_max) layout of QEq."""

    samples: list[Sample]
    species: torch.Tensor     # (N_tot,)
    positions: torch.Tensor   # (N_tot, 3) Angstrom
    b: torch.Tensor           # (N_tot, K)
    pair_i: torch.Tensor      # (P_tot,) offset into the concatenation
    pair_j: torch.Tensor
    db: torch.Tensor          # (P_tot, K, 3)
    structure: torch.Tensor   # (N_tot,) index of the structure of each atom
    slot: torch.Tensor        # (N_tot,) flat index s * N_max + k in the padded layout
    n_max: int
    total_charge: torch.Tensor  # (B,) e
    n_atoms: torch.Tensor       # (B,)

    @property
    def size(self) -> int:
        return len(self.samples)


def collate(samples: list[Sample]) -> Batch:
    """Concatenate clusters (all must satisfy :func:`batchable`)."""
    if not samples or not all(batchable(s) for s in samples):
        raise ValueError("collate takes a non-empty list of clusters of at most "
                         f"{BATCH_MAX_ATOMS} atoms")
    counts = [s.n_atoms for s in samples]
    n_max = max(counts)
    offsets = torch.cumsum(torch.tensor([0] + counts[:-1]), 0).tolist()
    structure = torch.cat([torch.full((n,), k, dtype=torch.long)
                           for k, n in enumerate(counts)])
    local = torch.cat([torch.arange(n) for n in counts])
    return Batch(
        samples=samples,
        species=torch.cat([s.species for s in samples]),
        positions=torch.cat([s.positions for s in samples]),
        b=torch.cat([s.b for s in samples]),
        pair_i=torch.cat([s.pair_i + o for s, o in zip(samples, offsets, strict=True)]),
        pair_j=torch.cat([s.pair_j + o for s, o in zip(samples, offsets, strict=True)]),
        db=torch.cat([s.db for s in samples]),
        structure=structure,
        slot=structure * n_max + local,
        n_max=n_max,
        total_charge=torch.tensor([s.total_charge for s in samples], dtype=torch.float64),
        n_atoms=torch.tensor(counts),
    )


def free_coulomb_matrix(positions: torch.Tensor, widths: torch.Tensor,
                        mask: torch.Tensor) -> torch.Tensor:
    """Gaussian-charge Coulomb matrices A_es (B, M, M) (eV/e^2) of padded clusters.

    ``positions`` (B, M, 3) Angstrom, ``widths`` (B, M) Angstrom, ``mask`` (B, M) True for
    real atoms; rows and columns of padding atoms are zero. The pair and self terms are
    those of :class:`snapqeq.electrostatics.ewald.Electrostatics` with free boundaries.
    """
    m = positions.shape[1]
    excluded = ~(mask[:, :, None] & mask[:, None, :]) | torch.eye(m, dtype=torch.bool)[None]
    a = gaussian_coulomb(positions, positions, widths, widths, excluded)
    diag = torch.where(mask, 2.0 * self_coefficient(widths), torch.zeros_like(widths))
    return a + torch.diag_embed(diag)


def _padded(values: torch.Tensor, batch: Batch, fill: float) -> torch.Tensor:
    """(N_tot, ...) -> (B, N_max, ...) with ``fill`` in the padding slots."""
    shape = (batch.size * batch.n_max,) + tuple(values.shape[1:])
    out = torch.full(shape, fill, dtype=values.dtype)
    out = out.index_copy(0, batch.slot, values)
    return out.reshape((batch.size, batch.n_max) + tuple(values.shape[1:]))


def equilibrate_batch(chi: torch.Tensor, positions: torch.Tensor, hardness: torch.Tensor,
                      widths: torch.Tensor, batch: Batch
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """QEq energies U_s (B,) (eV) and charges q (N_tot,) (e) of the clusters of ``batch``.

    Differentiable in every argument (per-atom chi eV/e, positions Angstrom, hardness
    eV/e^2, widths Angstrom); exact to round-off.
    """
    mask = _padded(torch.ones_like(chi), batch, 0.0)                    # (B, M)
    a = free_coulomb_matrix(_padded(positions, batch, 0.0),
                            _padded(widths, batch, 1.0), mask > 0)      # (B, M, M)
    diag = _padded(hardness, batch, 0.0) + (1.0 - mask)                 # padding: A_ii = 1
    a = a + torch.diag_embed(diag)
    chol = torch.linalg.cholesky(a)
    chi_p = _padded(chi, batch, 0.0)
    sol = torch.cholesky_solve(torch.stack([chi_p, mask], dim=2), chol)  # A^-1 [chi, 1]
    a_chi, a_one = sol[..., 0], sol[..., 1]
    mu = (batch.total_charge + torch.sum(mask * a_chi, 1)) / torch.sum(mask * a_one, 1)
    q = mu[:, None] * a_one - a_chi                                      # (B, M)
    energy = torch.sum(chi_p * q, 1) + 0.5 * torch.einsum("bi,bij,bj->b", q, a, q)
    return energy, q.reshape(-1).index_select(0, batch.slot)


def predict_batch(model: CENT, batch: Batch, forces: bool = True,
                  create_graph: bool = False) -> dict[str, torch.Tensor]:
    """Energies (B,) (eV), charges (N_tot,) (e), chi (N_tot,) (eV/e) and optionally forces
    (N_tot, 3) (eV/Angstrom) of the clusters of ``batch`` (concatenated atom order)."""
    pos = batch.positions.detach().clone().requires_grad_(forces)
    b = (bispectrum_of_positions(pos, batch.b, batch.pair_i, batch.pair_j, batch.db)
         if forces else batch.b)
    species = batch.species
    chi = model.electronegativity(b, species)
    u, q = equilibrate_batch(chi, pos, model.hardness()[species], model.widths[species],
                             batch)
    per_atom = model.e0[species] + model.short_energy(b, q, species)
    energy = u + torch.zeros_like(u).index_add(0, batch.structure, per_atom)
    out = {"energy": energy, "charges": q, "chi": chi}
    if forces:
        (grad,) = torch.autograd.grad(energy.sum(), pos, create_graph=create_graph)
        out["forces"] = -grad
    return out


def _per_structure_mean(values: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Mean over each structure's rows of ``values`` (N_tot, ...) -> (B,)."""
    rows = values.reshape(values.shape[0], -1)
    sums = torch.zeros(batch.size, dtype=values.dtype).index_add(
        0, batch.structure, rows.sum(1))
    return sums / (batch.n_atoms * rows.shape[1])


def _cat_reference(batch: Batch, name: str) -> torch.Tensor | None:
    values = [getattr(s, name) for s in batch.samples]
    return None if any(v is None for v in values) else torch.cat(values)


def batch_losses(model: CENT, batch: Batch, w: dict, create_graph: bool) -> torch.Tensor:
    """Per-structure weighted squared errors (B,), the terms of :func:`structure_loss`
    (per-atom energy, mean squared force
    component, mean squared charge error)."""
    samples = batch.samples
    ref_f = _cat_reference(batch, "forces")
    need_f = w.get("forces", 0.0) > 0 and ref_f is not None
    out = predict_batch(model, batch, forces=need_f, create_graph=create_graph)
    loss = torch.zeros(batch.size, dtype=torch.float64)
    if w.get("energy", 0.0) > 0:
        has_e = torch.tensor([s.energy is not None for s in samples])
        ref_e = torch.tensor([s.energy if s.energy is not None else 0.0 for s in samples],
                             dtype=torch.float64)
        err = (out["energy"] - ref_e) / batch.n_atoms
        loss = loss + w["energy"] * torch.where(has_e, err * err, torch.zeros_like(err))
    if need_f:
        loss = loss + w["forces"] * _per_structure_mean((out["forces"] - ref_f) ** 2, batch)
    ref_q = _cat_reference(batch, "ref_charges")
    if ref_q is not None and w.get("charges", 0.0) > 0:
        loss = loss + w["charges"] * _per_structure_mean((out["charges"] - ref_q) ** 2,
                                                         batch)
    return loss


def structure_loss(model: CENT, s: Sample, w: dict, create_graph: bool) -> torch.Tensor:
    """Weighted squared errors of one structure (per-atom energy, force components, q)."""
    need_f = w.get("forces", 0.0) > 0 and s.forces is not None
    out = predict(model, s, forces=need_f, create_graph=create_graph)
    loss = torch.zeros((), dtype=torch.float64)
    if s.energy is not None and w.get("energy", 0.0) > 0:
        loss = loss + w["energy"] * ((out["energy"] - s.energy) / s.n_atoms) ** 2
    if need_f:
        loss = loss + w["forces"] * torch.mean((out["forces"] - s.forces) ** 2)
    if s.ref_charges is not None and w.get("charges", 0.0) > 0:
        loss = loss + w["charges"] * torch.mean((out["charges"] - s.ref_charges) ** 2)
    return loss


def batch_loss(model: CENT, samples: list[Sample], w: dict,
               create_graph: bool) -> torch.Tensor:
    """Sum of the per-structure losses (:func:`structure_loss`) of ``samples``: clusters
    in padded batches of equal reference content, the rest one by one."""
    total = torch.zeros((), dtype=torch.float64)
    groups: dict[tuple, list[Sample]] = {}
    for s in samples:
        if batchable(s):
            key = (s.forces is not None, s.ref_charges is not None)
            groups.setdefault(key, []).append(s)
        else:
            total = total + structure_loss(model, s, w, create_graph)
    for group in groups.values():
        total = total + batch_losses(model, collate(group), w, create_graph).sum()
    return total

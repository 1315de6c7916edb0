"""Bispectrum components as a differentiable function of positions for torch training.

The values and the sparse derivatives dB_i/dr_j come from the C++ kernel
(:meth:`snapqeq.Bispectrum.gradients`); the backward pass contracts them with the incoming
gradient using torch operations, so that forces obtained by ``torch.autograd.grad(E, r,
create_graph=True)`` can themselves be differentiated with respect to network parameters
(force training).  Second derivatives of B with respect to positions are not available
(never needed for training).
"""

from __future__ import annotations

import torch


class _BispectrumOfPositions(torch.autograd.Function):
    @staticmethod
    def forward(ctx, positions, b, pair_i, pair_j, db):  # noqa: D401 - torch signature
        ctx.save_for_backward(pair_i, pair_j, db)
        ctx.natoms = positions.shape[0]
        return b.clone()

    @staticmethod
    def backward(ctx, grad_b):
        pair_i, pair_j, db = ctx.saved_tensors
        contrib = torch.einsum("pk,pkc->pc", grad_b[pair_i], db)
        grad_pos = torch.zeros(ctx.natoms, 3, dtype=grad_b.dtype, device=grad_b.device)
        grad_pos = grad_pos.index_add(0, pair_j, contrib)
        return grad_pos, None, None, None, None


def bispectrum_of_positions(positions: torch.Tensor, b: torch.Tensor, pair_i: torch.Tensor,
                            pair_j: torch.Tensor, db: torch.Tensor) -> torch.Tensor:
    """B (N, K) whose gradient with respect to ``positions`` (N, 3) is sum_i dB_i/dr_j.

    ``pair_i``, ``pair_j`` (P,) and ``db`` (P, K, 3) are the unique pairs of
    :class:`snapqeq.descriptors.bispectrum.BispectrumGradients` (1/Angstrom).
    """
    return _BispectrumOfPositions.apply(positions, b, pair_i, pair_j, db)

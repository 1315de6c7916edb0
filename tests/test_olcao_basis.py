"""The potential-metric output basis of the OLCAO head (mdn.MixtureDensityHead.set_scaling
with a metric): principal axes of the training coefficients in the L2 norm of the site
potential, mapped back to A_i (Hartree) inside the (scripted) module."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from snapqeq.io.olcao import exponent_series
from snapqeq.models.mdn import MixtureDensityHead
from snapqeq.models.olcao_head import gaussian_overlap

F64 = torch.float64


def correlated_targets(n: int, alphas: np.ndarray, seed: int = 0) -> torch.Tensor:
    """Coefficient vectors like OLCAO's: large, oscillating, strongly correlated."""
    rng = np.random.default_rng(seed)
    base = 10.0 * np.sin(np.arange(len(alphas)))
    mix = rng.normal(size=(4, len(alphas))) * np.linspace(0.1, 3.0, len(alphas))
    return torch.as_tensor(base + rng.normal(size=(n, 4)) @ mix
                           + 1e-3 * rng.normal(size=(n, len(alphas))))


def rotated_head(seed: int = 0) -> tuple[MixtureDensityHead, torch.Tensor, torch.Tensor,
                                          torch.Tensor, np.ndarray]:
    alphas = exponent_series("Si")
    torch.manual_seed(seed)
    h = MixtureDensityHead(1, 3, [16], [8], 2)
    x = torch.randn(300, 3, dtype=F64)
    sp = torch.zeros(300, dtype=torch.long)
    y = correlated_targets(300, alphas, seed)
    h.set_scaling(x, sp, y, [torch.as_tensor(gaussian_overlap(alphas))])
    return h, x, sp, y, alphas


def test_overlap_matrix_is_the_l2_norm_of_the_site_potential():
    alphas = np.array([0.3, 1.0, 5.0])
    da = np.array([0.5, -1.0, 2.0])
    # radial quadrature of |sum_i dA_i exp(-alpha_i r^2)|^2 4 pi r^2 dr
    r = np.linspace(0.0, 12.0, 200001)
    v = (da[:, None] * np.exp(-alphas[:, None] * r**2)).sum(0)
    integral = np.sum(v**2 * 4 * np.pi * r**2) * (r[1] - r[0])
    assert da @ gaussian_overlap(alphas) @ da == pytest.approx(integral, rel=1e-6)


@torch.no_grad()
def test_basis_round_trip_decorrelates_and_orders_by_potential_norm():
    h, _, _, y, alphas = rotated_head()
    basis, inv = h.out_basis[0], h.out_basis_inv[0]
    assert torch.allclose(basis @ inv, torch.eye(16, dtype=F64), atol=1e-6)
    coords = (y - h.out_mean[0]) @ inv.T / h.out_std[0]
    cov = torch.cov(coords.T)
    assert torch.allclose(cov, torch.eye(16, dtype=F64), atol=1e-6)  # whitened coordinates
    # the metric norm of a unit step along coordinate j equals its training spread there
    s = torch.as_tensor(gaussian_overlap(alphas))
    norms = torch.einsum("ij,ik,kj->j", basis, s, basis).sqrt() * h.out_std[0]
    assert torch.all(norms[:-1] >= norms[1:] * (1 - 1e-9))  # largest potential change first
    assert not h.identity_basis()


@torch.no_grad()
def test_predict_maps_the_mixture_through_the_basis():
    h, x, sp, _, _ = rotated_head()
    log_w, mu, sigma = h.mixture(x, sp)
    w = log_w.exp()
    s, b = h.out_std[0], h.out_basis[0]
    c_mean = (w.unsqueeze(2) * mu).sum(1) * s
    cov = torch.zeros(len(x), 16, 16, dtype=F64)
    for k in range(h.k):  # full mixture covariance of the coordinates, then B C B^T
        d = mu[:, k] * s - c_mean
        cov += w[:, k, None, None] * (torch.diag_embed((sigma[:, k] * s) ** 2)
                                      + d[:, :, None] * d[:, None, :])
    mean, std = h.predict(x, sp)
    assert torch.allclose(mean, c_mean @ b.T + h.out_mean[0], rtol=1e-12, atol=1e-10)
    var = torch.einsum("ij,njk,ik->ni", b, cov, b)
    assert torch.allclose(std, var.sqrt(), rtol=1e-10)


@pytest.mark.filterwarnings("ignore:.*torch.jit.*:DeprecationWarning")
def test_rotated_head_scripts_and_ignores_incomplete_sites():
    class Wrap(torch.nn.Module):
        def __init__(self, head: MixtureDensityHead):
            super().__init__()
            self.head = head

        def forward(self, x: torch.Tensor, sp: torch.Tensor) -> tuple[torch.Tensor,
                                                                       torch.Tensor]:
            return self.head.predict(x, sp)

        @torch.jit.export
        def nll(self, x: torch.Tensor, sp: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return self.head.nll(x, sp, y)

    h, x, sp, y, _ = rotated_head()
    scripted = torch.jit.script(Wrap(h))
    with torch.no_grad():
        for a, b in zip(scripted(x, sp), h.predict(x, sp), strict=True):
            assert torch.allclose(a, b, rtol=1e-14)
        assert float(scripted.nll(x, sp, y)) == pytest.approx(float(h.nll(x, sp, y)),
                                                              rel=1e-12)
        # a NaN coefficient removes the whole site (all coordinates mix all coefficients)
        y2 = y.clone()
        y2[0, 3] = float("nan")
        rest = float(h.nll(x[1:], sp[1:], y[1:])) * (len(y) - 1) / len(y)
        assert float(h.nll(x, sp, y2)) == pytest.approx(rest, rel=1e-12)

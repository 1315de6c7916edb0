"""Mixture density network head for per-site OLCAO potential coefficients A_i.

Per element a network maps the site features (local bispectrum, medium-range bispectrum,
QEq charge q_i and site potential phi_i) to a mixture of K diagonal Gaussians over the
standardised coefficient vector (Bishop 1994).  Elements with fewer exponents than the
longest series use the leading dimensions; the rest are masked out of the loss.
Coefficients are in Hartree, standardised per element and dimension.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from snapqeq.model import mlp

SIGMA_FLOOR = 1e-3  # in standardised units: keeps the likelihood bounded


class MixtureDensityHead(nn.Module):
    """K-component Gaussian mixture over D coefficients for every site.

    Parameters
    ----------
    n_elements, n_in : int
        Elements and input features per site.
    n_out : list of int
        Number of coefficients of each element (D_e <= D = max n_out).
    hidden : list of int
        Hidden layer sizes.
    n_components : int
        Mixture components K.
    """

    def __init__(self, n_elements: int, n_in: int, n_out: list[int], hidden: list[int],
                 n_components: int = 3):
        super().__init__()
        self.k = n_components
        self.d = max(n_out)
        self.nets = nn.ModuleList(
            [mlp(n_in, hidden, n_components * (1 + 2 * self.d)) for _ in range(n_elements)])
        mask = torch.zeros(n_elements, self.d, dtype=torch.bool)
        for e, n in enumerate(n_out):
            mask[e, :n] = True
        self.register_buffer("mask", mask)
        f64 = torch.float64
        self.register_buffer("in_mean", torch.zeros(n_elements, n_in, dtype=f64))
        self.register_buffer("in_std", torch.ones(n_elements, n_in, dtype=f64))
        self.register_buffer("out_mean", torch.zeros(n_elements, self.d, dtype=f64))
        self.register_buffer("out_std", torch.ones(n_elements, self.d, dtype=f64))

    def mixture(self, x: torch.Tensor,
                species: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """log weights (N, K), means (N, K, D), widths (N, K, D), standardised units."""
        z = (x - self.in_mean[species]) / self.in_std[species]
        raw = torch.zeros(x.shape[0], self.k * (1 + 2 * self.d), dtype=x.dtype, device=x.device)
        for e, net in enumerate(self.nets):
            rows = torch.nonzero(species == e).flatten()
            if rows.numel() > 0:
                raw = raw.index_copy(0, rows, net(z.index_select(0, rows)))
        logits = raw[:, : self.k]
        mu = raw[:, self.k: self.k * (1 + self.d)].reshape(-1, self.k, self.d)
        s = raw[:, self.k * (1 + self.d):].reshape(-1, self.k, self.d)
        sigma = nn.functional.softplus(s) + SIGMA_FLOOR
        return torch.log_softmax(logits, dim=1), mu, sigma

    def nll(self, x: torch.Tensor, species: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean negative log-likelihood per site of targets (N, D) in Hartree.

        Padded dimensions (beyond an element's series, or NaN targets) are ignored.
        """
        log_w, mu, sigma = self.mixture(x, species)
        y = (target - self.out_mean[species]) / self.out_std[species]
        valid = self.mask[species] & torch.isfinite(y)
        y = torch.where(valid, y, torch.zeros_like(y)).unsqueeze(1)
        log_n = -0.5 * ((y - mu) / sigma) ** 2 - torch.log(sigma) - 0.5 * math.log(2 * math.pi)
        log_n = torch.where(valid.unsqueeze(1), log_n, torch.zeros_like(log_n))
        return -torch.logsumexp(log_w + log_n.sum(dim=2), dim=1).mean()

    def predict(self, x: torch.Tensor,
                species: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixture mean and standard deviation of the coefficients (Hartree), (N, D) each;
        padded dimensions are NaN."""
        log_w, mu, sigma = self.mixture(x, species)
        w = torch.exp(log_w).unsqueeze(2)
        mean = (w * mu).sum(1)
        var = (w * (sigma**2 + mu**2)).sum(1) - mean**2
        scale = self.out_std[species]
        mean = mean * scale + self.out_mean[species]
        std = torch.sqrt(var.clamp_min(0.0)) * scale
        nan = torch.full_like(mean, float("nan"))
        valid = self.mask[species]
        return torch.where(valid, mean, nan), torch.where(valid, std, nan)

    def set_scaling(self, x: torch.Tensor, species: torch.Tensor, target: torch.Tensor) -> None:
        """Standardise inputs and targets per element from training data."""
        with torch.no_grad():
            for e in range(self.mask.shape[0]):
                rows = species == e
                if int(rows.sum()) < 2:
                    continue
                self.in_mean[e] = x[rows].mean(0)
                self.in_std[e] = x[rows].std(0).clamp_min(1e-8)
                t = target[rows]
                for d in range(self.d):
                    col = t[:, d][torch.isfinite(t[:, d])]
                    if len(col) > 1:
                        self.out_mean[e, d] = col.mean()
                        self.out_std[e, d] = col.std().clamp_min(1e-8)

"""Mixture density network head for per-site OLCAO potential coefficients A_i.

Per element a network maps the site features (local bispectrum, medium-range bispectrum,
QEq charge q_i and site potential phi_i) to a mixture of K diagonal Gaussians over the
standardised coefficient vector (Bishop 1994).  Elements with fewer exponents than the
longest series use the leading dimensions; the rest are masked out of the loss.
Coefficients are in Hartree, standardised per element and dimension.

The module is TorchScript-compatible: :class:`snapqeq.olcao_model.OLCAOModel` scripts it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from snapqeq.model import mlp

SIGMA_FLOOR = 1e-3  # in standardised units: keeps the likelihood bounded
ONE_SIGMA_COVERAGE = math.erf(1.0 / math.sqrt(2.0))  # 0.6827: P(|z| < 1) of a normal


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

    Buffers (float64)
    -----------------
    in_mean, in_std : (E, n_in)
        Input standardisation per element (feature units).
    out_mean, out_std : (E, D)
        Target standardisation per element and coefficient (Hartree).
    std_scale : (E, D)
        Post-hoc recalibration factor of the predicted standard deviation (1 = none); set
        by :meth:`calibrate_std` from held-out data.
    """

    def __init__(self, n_elements: int, n_in: int, n_out: list[int], hidden: list[int],
                 n_components: int = 3):
        super().__init__()
        if n_components < 1 or n_in < 1 or not n_out or min(n_out) < 1:
            raise ValueError("need n_components >= 1, n_in >= 1 and n_out entries >= 1")
        if len(n_out) != n_elements:
            raise ValueError(f"n_out has {len(n_out)} entries for {n_elements} elements")
        self.k = n_components
        self.d = max(n_out)
        # plain attributes, not module globals: TorchScript cannot close over Python floats
        self.sigma_floor = SIGMA_FLOOR
        self.half_log_2pi = 0.5 * math.log(2.0 * math.pi)
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
        self.register_buffer("std_scale", torch.ones(n_elements, self.d, dtype=f64))

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
        # softplus grows linearly (no exp overflow); the floor bounds the density from above
        sigma = nn.functional.softplus(s) + self.sigma_floor
        return torch.log_softmax(logits, dim=1), mu, sigma

    def nll(self, x: torch.Tensor, species: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean negative log-likelihood per site of targets (N, D) in Hartree.

        Evaluated on the standardised targets (so it is comparable across elements and
        coefficients of very different magnitude) with log-sum-exp over the components.
        Padded dimensions (beyond an element's series, or NaN targets) are ignored.
        """
        log_w, mu, sigma = self.mixture(x, species)
        y = (target - self.out_mean[species]) / self.out_std[species]
        valid = self.mask[species] & torch.isfinite(y)
        y = torch.where(valid, y, torch.zeros_like(y)).unsqueeze(1)
        log_n = -0.5 * ((y - mu) / sigma) ** 2 - torch.log(sigma) - self.half_log_2pi
        log_n = torch.where(valid.unsqueeze(1), log_n, torch.zeros_like(log_n))
        return -torch.logsumexp(log_w + log_n.sum(dim=2), dim=1).mean()

    def predict(self, x: torch.Tensor,
                species: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixture mean and standard deviation of the coefficients (Hartree), (N, D) each;
        padded dimensions are NaN.

        The standard deviation is that of the whole mixture (law of total variance: the
        spread of the component means plus their widths), times :attr:`std_scale`.
        """
        log_w, mu, sigma = self.mixture(x, species)
        w = torch.exp(log_w).unsqueeze(2)
        mean = (w * mu).sum(1)
        var = (w * (sigma**2 + (mu - mean.unsqueeze(1)) ** 2)).sum(1)
        scale = self.out_std[species]
        mean = mean * scale + self.out_mean[species]
        std = torch.sqrt(var) * scale * self.std_scale[species]
        nan = torch.full_like(mean, float("nan"))
        valid = self.mask[species]
        return torch.where(valid, mean, nan), torch.where(valid, std, nan)

    def set_scaling(self, x: torch.Tensor, species: torch.Tensor, target: torch.Tensor) -> None:
        """Standardise inputs and targets per element from training data.

        Constant input columns (e.g. q = phi = 0 of a one-element system) keep a unit
        scale, so that they map to zero without amplifying round-off.
        """
        with torch.no_grad():
            for e in range(self.mask.shape[0]):
                rows = species == e
                if int(rows.sum()) < 2:
                    continue
                self.in_mean[e] = x[rows].mean(0)
                std = x[rows].std(0)
                tiny = std <= 1e-10 * x[rows].abs().amax(0).clamp_min(1.0)
                self.in_std[e] = torch.where(tiny, torch.ones_like(std), std)
                t = target[rows]
                for d in range(self.d):
                    col = t[:, d][torch.isfinite(t[:, d])]
                    if len(col) > 1:
                        self.out_mean[e, d] = col.mean()
                        self.out_std[e, d] = col.std().clamp_min(1e-8)

    def calibrate_std(self, x: torch.Tensor, species: torch.Tensor, target: torch.Tensor,
                      min_count: int = 20) -> torch.Tensor:
        """Recalibrate the predicted standard deviations on held-out data.

        Per element and coefficient, ``std_scale`` becomes the factor c for which a fraction
        erf(1/sqrt 2) = 68.27 % of the held-out |A - mean| / (c std) lies below 1, i.e. the
        68.27 % quantile of the z-scores (the empirical version of the normal one-sigma
        interval; robust to tails, unlike matching the variance).  Networks trained on
        small data sets tend to be over-confident; this is the standard post-hoc fix.
        Entries with fewer than ``min_count`` held-out values keep 1.

        Returns the new ``std_scale`` (E, D).
        """
        with torch.no_grad():
            self.std_scale.fill_(1.0)
            mean, std = self.predict(x, species)
            z = ((target - mean) / std).abs()
            for e in range(self.mask.shape[0]):
                rows = species == e
                for d in range(self.d):
                    col = z[rows, d]
                    col = col[torch.isfinite(col)]
                    if bool(self.mask[e, d]) and len(col) >= min_count:
                        c = torch.quantile(col, ONE_SIGMA_COVERAGE)
                        self.std_scale[e, d] = c.clamp(1e-3, 1e3)
        return self.std_scale.clone()

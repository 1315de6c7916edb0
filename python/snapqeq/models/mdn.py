"""Mixture density network head for per-site OLCAO potential coefficients A_i.

Per element a network maps the site features (local bispectrum, medium-range bispectrum,
QEq charge q_i and site potential phi_i) to a mixture of K diagonal Gaussians over the
standardised coefficient vector (Bishop 1994), optionally in a rotated, well-conditioned
output basis (principal axes of the training coefficients in a chosen metric, see
:meth:`MixtureDensityHead.set_scaling`) that is mapped back to coefficients inside the
module.  Elements with fewer exponents than the
longest series use the leading dimensions; the rest are masked out of the loss.
Coefficients are in Hartree, standardised per element and dimension.

The module is TorchScript-compatible: :class:`snapqeq.models.olcao_head.OLCAOModel` scripts it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from snapqeq.models.cent import mlp

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
        Target standardisation per element: the mean coefficients (Hartree) and the scale of
        each output coordinate.
    out_basis, out_basis_inv : (E, D, D)
        Output basis: the network predicts coordinates c (standardised by ``out_std``) with
        A = out_mean + out_basis @ c.  The identity (default) predicts every coefficient on
        its own; :meth:`set_scaling` with a ``metric`` sets principal axes in that metric,
        decorrelated and well conditioned (the Gaussian coefficients themselves are
        strongly correlated and ill conditioned).  Inputs and outputs stay in Hartree.
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
        eye = torch.eye(self.d, dtype=f64).expand(n_elements, self.d, self.d).clone()
        self.register_buffer("out_basis", eye)
        self.register_buffer("out_basis_inv", eye.clone())

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
        mask = self.mask[species]
        delta = target - self.out_mean[species]
        finite = torch.isfinite(delta)
        # a rotated basis mixes all coefficients of a site: it counts only when all are known
        if not self.identity_basis():
            finite = (finite | ~mask).all(dim=1, keepdim=True).expand_as(finite)
        valid = mask & finite
        delta = torch.where(valid, delta, torch.zeros_like(delta))
        coords = torch.bmm(self.out_basis_inv[species], delta.unsqueeze(2)).squeeze(2)
        y = torch.where(valid, coords / self.out_std[species], torch.zeros_like(coords))
        y = y.unsqueeze(1)
        log_n = -0.5 * ((y - mu) / sigma) ** 2 - torch.log(sigma) - self.half_log_2pi
        log_n = torch.where(valid.unsqueeze(1), log_n, torch.zeros_like(log_n))
        return -torch.logsumexp(log_w + log_n.sum(dim=2), dim=1).mean()

    def predict(self, x: torch.Tensor,
                species: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixture mean and standard deviation of the coefficients (Hartree), (N, D) each;
        padded dimensions are NaN.

        The standard deviation is that of the whole mixture (law of total variance: the
        spread of the component means plus their widths), mapped through the output basis
        (diagonal of B C B^T for the mixture covariance C of the coordinates), times
        :attr:`std_scale`.
        """
        log_w, mu, sigma = self.mixture(x, species)
        w = torch.exp(log_w).unsqueeze(2)
        scale = self.out_std[species].unsqueeze(1)
        basis = self.out_basis[species]                           # (N, D, D)
        mean_c = (w * mu).sum(1) * self.out_std[species]          # coordinates, Hartree
        spread = (mu * scale - mean_c.unsqueeze(1)) @ basis.transpose(1, 2)  # (N, K, D)
        width = (sigma * scale) ** 2 @ (basis**2).transpose(1, 2)
        var = (w * (width + spread**2)).sum(1)
        mean = torch.bmm(basis, mean_c.unsqueeze(2)).squeeze(2) + self.out_mean[species]
        std = torch.sqrt(var) * self.std_scale[species]
        nan = torch.full_like(mean, float("nan"))
        valid = self.mask[species]
        return torch.where(valid, mean, nan), torch.where(valid, std, nan)

    @torch.jit.export
    def identity_basis(self) -> bool:
        """True when the outputs are the coefficients themselves (no rotated basis)."""
        eye = torch.eye(self.d, dtype=self.out_basis.dtype, device=self.out_basis.device)
        return bool(torch.equal(self.out_basis, eye.expand_as(self.out_basis)))

    def set_scaling(self, x: torch.Tensor, species: torch.Tensor, target: torch.Tensor,
                    metric: list[torch.Tensor | None] | None = None) -> None:
        """Standardise inputs and targets per element from training data.

        Constant input columns (e.g. q = phi = 0 of a one-element system) keep a unit
        scale, so that they map to zero without amplifying round-off.

        ``metric`` (one (D_e, D_e) symmetric positive semi-definite matrix or None per
        element) switches the output basis of that element to the principal axes of the
        training deviations A - <A> in the norm |dA|^2 = dA^T M dA (sites with all
        coefficients known).  With M the overlap matrix of the Gaussians this is the L2 norm
        of the site potential, so the first coordinates are the potential changes that
        matter most and all coordinates are uncorrelated over the training set.  Without a
        metric each coefficient is standardised on its own.
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
                m = None if metric is None else metric[e]
                self.out_basis[e] = torch.eye(self.d, dtype=self.out_basis.dtype)
                self.out_basis_inv[e] = self.out_basis[e]
                if m is not None:
                    self._principal_basis(e, t, m.to(self.out_basis.dtype))

    def _principal_basis(self, e: int, target: torch.Tensor, metric: torch.Tensor) -> None:
        """Principal axes of the deviations of element ``e`` in ``metric`` (see
        :meth:`set_scaling`); the coordinates are scaled to unit variance."""
        n = int(self.mask[e].sum())
        if metric.shape != (n, n):
            raise ValueError(f"metric of element {e} has shape {tuple(metric.shape)}, "
                             f"expected ({n}, {n})")
        t = target[:, :n]
        t = t[torch.isfinite(t).all(1)]
        if len(t) < 2:
            return
        dev = t - t.mean(0)
        # M = Q L Q^T; the overlap matrix of a wide exponent range is nearly singular, so
        # its square root is taken on the eigenvalues above a relative floor
        lam, q = torch.linalg.eigh(0.5 * (metric + metric.T))
        lam = lam.clamp_min(1e-14 * float(lam.max()))
        root = q @ torch.diag(lam.sqrt()) @ q.T
        root_inv = q @ torch.diag(1.0 / lam.sqrt()) @ q.T
        y = dev @ root                                   # |y| = the metric norm of dA
        var, u = torch.linalg.eigh(y.T @ y / (len(y) - 1))
        var, u = var.flip(0), u.flip(1)                  # largest variance first
        basis = root_inv @ u                             # dA = basis @ c
        inv = u.T @ root
        self.out_basis[e, :n, :n] = basis
        self.out_basis_inv[e, :n, :n] = inv
        coords = dev @ inv.T
        self.out_std[e, :n] = coords.std(0).clamp_min(1e-12 * float(coords.std(0).max()))

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

"""The CENT model: per-element electronegativity networks on the bispectrum, charges from a
global charge equilibration, and an optional 4G-style short-range energy network.

    chi_i = chi0_e + chi_scale * tanh(NN_e(b_i)),   b_i = (B_i - mean_e) / std_e
    E     = sum_i E0_e + U_QEq(q*; chi, J, alpha) [+ sum_i E_short,e(b_i, q_i)]

Units: eV, e, Angstrom (chi in eV/e, J in eV/e^2, alpha in Angstrom).  The modules here
are TorchScript-compatible; :mod:`snapqeq.training.export` writes them into the model file.
"""

from __future__ import annotations

import torch
from torch import nn


def mlp(n_in: int, hidden: list[int], n_out: int) -> nn.Sequential:
    """Fully connected network with tanh hidden activations and a linear output."""
    layers: list[nn.Module] = []
    sizes = [n_in] + list(hidden)
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(a, b), nn.Tanh()]
    layers.append(nn.Linear(sizes[-1], n_out))
    net = nn.Sequential(*layers)
    return net.to(torch.float64)


class PerElement(nn.Module):
    """One network per element; row i of the input goes through the network of its
    element."""

    def __init__(self, n_elements: int, n_in: int, hidden: list[int], n_out: int):
        super().__init__()
        self.nets = nn.ModuleList([mlp(n_in, hidden, n_out) for _ in range(n_elements)])
        self.n_out = n_out

    def forward(self, x: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(x.shape[0], self.n_out, dtype=x.dtype, device=x.device)
        for e, net in enumerate(self.nets):
            rows = torch.nonzero(species == e).flatten()
            if rows.numel() > 0:
                out = out.index_copy(0, rows, net(x.index_select(0, rows)))
        return out


class CENT(nn.Module):
    """Electronegativity (and optional short-range energy) networks of a CENT model.

    Parameters
    ----------
    n_elements, n_features : int
        Number of elements and of bispectrum components per atom.
    hidden : list of int
        Hidden layer sizes of the chi networks (CENT: [3, 3]).
    widths, hardness, e0 : sequences per element
        Gaussian widths alpha (Angstrom), hardness J (eV/e^2), reference energies (eV).
    learn_hardness : bool
        Train J (kept positive through J = exp(log J)).
    chi_scale : float
        Bound of the environment-dependent part of chi (eV/e).
    short_hidden : list of int or None
        Hidden sizes of the short-range energy network on (b_i, q_i); None disables it.
    """

    def __init__(self, n_elements: int, n_features: int, hidden: list[int],
                 widths: list[float], hardness: list[float], e0: list[float],
                 learn_hardness: bool = True, chi_scale: float = 5.0,
                 short_hidden: list[int] | None = None):
        super().__init__()
        if any(w <= 0 for w in widths) or any(j <= 0 for j in hardness):
            raise ValueError("widths and hardness must be positive")
        f64 = torch.float64
        self.n_elements = n_elements
        self.n_features = n_features
        self.chi_net = PerElement(n_elements, n_features, hidden, 1)
        self.chi0 = nn.Parameter(torch.zeros(n_elements, dtype=f64))
        self.register_buffer("chi_scale", torch.tensor(float(chi_scale), dtype=f64))
        log_j = torch.log(torch.tensor(hardness, dtype=f64))
        if learn_hardness:
            self.log_hardness = nn.Parameter(log_j)
        else:
            self.register_buffer("log_hardness", log_j)
        self.register_buffer("widths", torch.tensor(widths, dtype=f64))
        self.register_buffer("e0", torch.tensor(e0, dtype=f64))
        self.register_buffer("feature_mean", torch.zeros(n_elements, n_features, dtype=f64))
        self.register_buffer("feature_std", torch.ones(n_elements, n_features, dtype=f64))
        self.has_short = short_hidden is not None
        self.short_net = PerElement(n_elements, n_features + 1,
                                    list(short_hidden) if short_hidden else [1], 1)

    def hardness(self) -> torch.Tensor:
        """J per element (eV/e^2)."""
        return torch.exp(self.log_hardness)

    def normalized(self, b: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        return (b - self.feature_mean[species]) / self.feature_std[species]

    def electronegativity(self, b: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        """chi_i (eV/e) from the bispectrum B (N, K) and element indices (N,)."""
        x = self.normalized(b, species)
        return self.chi0[species] + self.chi_scale * torch.tanh(self.chi_net(x, species)[:, 0])

    def short_energy(self, b: torch.Tensor, q: torch.Tensor,
                     species: torch.Tensor) -> torch.Tensor:
        """Per-atom short-range energies (eV); zeros when the model has none."""
        if not self.has_short:
            return torch.zeros_like(q)
        x = torch.cat([self.normalized(b, species), q.unsqueeze(1)], dim=1)
        return self.short_net(x, species)[:, 0]

    def set_feature_scaling(self, b: torch.Tensor, species: torch.Tensor) -> None:
        """Standardise the inputs per element from training descriptors.

        A component that barely varies in the data (std below 0.1 % of its mean) is scaled
        by that floor instead: dividing by a vanishing std would make the network, and so
        the forces, hypersensitive to it.
        """
        with torch.no_grad():
            for e in range(self.n_elements):
                rows = b[species == e]
                if len(rows) > 1:
                    mean = rows.mean(0)
                    floor = torch.clamp_min(1e-3 * mean.abs(), 1e-8)
                    self.feature_mean[e] = mean
                    self.feature_std[e] = torch.maximum(rows.std(0), floor)

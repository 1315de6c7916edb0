"""The mixture density head: stable likelihood, masking, mixture moments, calibration,
TorchScript, and that a mixture captures a two-valued target a single Gaussian cannot."""

from __future__ import annotations

import math

import pytest
import torch

from snapqeq.models.mdn import ONE_SIGMA_COVERAGE, SIGMA_FLOOR, MixtureDensityHead

F64 = torch.float64


def head(n_out=(3, 2), k=3, n_in=4, seed=0) -> MixtureDensityHead:
    torch.manual_seed(seed)
    return MixtureDensityHead(len(n_out), n_in, list(n_out), [8], k)


def test_nll_is_finite_for_extreme_targets_and_outputs():
    h = head()
    x = torch.randn(6, 4, dtype=F64)
    sp = torch.tensor([0, 1, 0, 1, 0, 1])
    y = torch.randn(6, 3, dtype=F64)
    y[0, 0] = 1e8          # a wild outlier
    with torch.no_grad():  # push logits and widths to extremes
        last = h.nets[0][-1]
        last.bias.fill_(-200.0)
        last.bias[:3] = torch.tensor([300.0, -300.0, 0.0])
    loss = h.nll(x, sp, y)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in h.parameters() if p.grad is not None)
    # the width floor bounds the density: NLL >= log(floor) - ... per dimension
    with torch.no_grad():
        _, _, sigma = h.mixture(x, sp)
    assert float(sigma.min()) >= SIGMA_FLOOR


@torch.no_grad()
def test_padding_and_nan_targets_are_ignored():
    h = head()
    x = torch.randn(4, 4, dtype=F64)
    sp = torch.tensor([0, 1, 1, 0])
    y = torch.randn(4, 3, dtype=F64)
    base = float(h.nll(x, sp, y))
    y2 = y.clone()
    y2[sp == 1, 2] = 1e6            # element 1 has two coefficients: column 2 is padding
    assert float(h.nll(x, sp, y2)) == pytest.approx(base, rel=1e-14)
    y3 = y.clone()
    y3[0, 1] = float("nan")        # a missing target drops out
    assert math.isfinite(float(h.nll(x, sp, y3)))
    mean, std = h.predict(x, sp)
    assert torch.isnan(mean[sp == 1, 2]).all() and torch.isnan(std[sp == 1, 2]).all()
    assert torch.isfinite(mean[sp == 0]).all() and (std[sp == 0] > 0).all()


@torch.no_grad()
def test_predict_returns_mixture_moments_in_target_units():
    h = head(n_out=(2,), k=2)
    with torch.no_grad():
        h.out_mean.copy_(torch.tensor([[10.0, -1.0]], dtype=F64))
        h.out_std.copy_(torch.tensor([[2.0, 0.5]], dtype=F64))
    x = torch.randn(5, 4, dtype=F64)
    sp = torch.zeros(5, dtype=torch.long)
    log_w, mu, sigma = h.mixture(x, sp)
    w = log_w.exp().unsqueeze(2)
    m = (w * mu).sum(1)
    var = (w * (sigma**2 + mu**2)).sum(1) - m**2       # law of total variance
    mean, std = h.predict(x, sp)
    assert torch.allclose(mean, m * h.out_std[0] + h.out_mean[0])
    assert torch.allclose(std, var.sqrt() * h.out_std[0])


def test_calibrate_std_hits_one_sigma_coverage():
    h = head(n_out=(2,), k=1)
    torch.manual_seed(1)
    x = torch.randn(4000, 4, dtype=F64)
    sp = torch.zeros(4000, dtype=torch.long)
    mean, std = h.predict(x, sp)
    # residuals three times wider than predicted: badly over-confident
    y = mean + 3.0 * std * torch.randn_like(mean)
    before = float(((y - mean).abs() <= std).double().mean())
    scale = h.calibrate_std(x, sp, y)
    mean2, std2 = h.predict(x, sp)
    after = float(((y - mean2).abs() <= std2).double().mean())
    assert before < 0.35
    assert after == pytest.approx(ONE_SIGMA_COVERAGE, abs=0.01)
    assert scale[0] == pytest.approx(torch.tensor([3.0, 3.0], dtype=F64), rel=0.08)
    assert torch.equal(mean, mean2)


@pytest.mark.filterwarnings("ignore:.*torch.jit.*:DeprecationWarning")
def test_scriptable():
    class Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.h = head()

        def forward(self, x: torch.Tensor, sp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.h.predict(x, sp)

    w = Wrap()
    s = torch.jit.script(w)
    x = torch.randn(5, 4, dtype=F64)
    sp = torch.tensor([0, 1, 0, 1, 1])
    for a, b in zip(s(x, sp), w(x, sp), strict=True):
        assert torch.allclose(a.nan_to_num(), b.nan_to_num())


def test_mixture_captures_two_valued_target():
    """y = +-1 at random (plus small noise) regardless of x: the mean is 0 either way, but a
    2-component mixture finds both branches and a far better likelihood than one Gaussian."""
    torch.manual_seed(0)
    n = 300
    x = torch.randn(n, 2, dtype=F64)
    y = (torch.randint(0, 2, (n, 1)) * 2 - 1).to(F64) + 0.05 * torch.randn(n, 1, dtype=F64)
    sp = torch.zeros(n, dtype=torch.long)
    nll = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny network: idle-spinning extra threads only slow it down
    try:
        for k in (1, 2):
            nll[k] = _fit_two_valued(k, x, sp, y)
    finally:
        torch.set_num_threads(threads)
    assert nll[2] < nll[1] - 1.0


def _fit_two_valued(k: int, x, sp, y) -> float:
    torch.manual_seed(0)
    h = MixtureDensityHead(1, 2, [1], [16], k)
    h.set_scaling(x, sp, y)
    opt = torch.optim.Adam(h.parameters(), lr=2e-2)
    for _ in range(100):
        opt.zero_grad()
        loss = h.nll(x, sp, y)
        loss.backward()
        opt.step()
    with torch.no_grad():
        mean, std = h.predict(x, sp)
        assert float(mean.abs().mean()) < 0.3                    # the mean is ~ 0 either way
        assert float(std.mean()) == pytest.approx(1.0, abs=0.3)  # and so is the full spread
        return float(h.nll(x, sp, y))

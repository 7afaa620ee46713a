"""MC estimates against exact moments of dropout on a linear layer.

For y = sum_i w_i x_i b_i / q with b_i ~ Bernoulli(q), q = 1 - p, the cumulants
add over independent terms: k_n(y) = sum_i (w_i x_i / q)^n k_n(Bernoulli(q)).
So E[y] = w.x, Var[y] = sum_i w_i^2 x_i^2 p / q, and the MC estimators over T
samples have standard errors sqrt(k2 / T) (mean) and sqrt((k4 + 2 k2^2) / T)
(variance, to first order). Every check allows five standard errors.
"""

import math

import pytest
import torch
from torch import nn

import mcdropout as mcd

T = 4000
P = 0.3


def _bernoulli_cumulants(q: float) -> tuple[float, float]:
    k2 = q * (1 - q)
    k4 = q * (1 - q) * (1 - 6 * q * (1 - q))
    return k2, k4


def _exact(w: torch.Tensor, x: torch.Tensor, p: float) -> tuple[float, float, float, float]:
    """Mean, variance and the standard errors of their T-sample MC estimates."""
    q = 1 - p
    c = (w * x / q).double()
    b2, b4 = _bernoulli_cumulants(q)
    k2 = float((c**2).sum() * b2)
    k4 = float((c**4).sum() * b4)
    return float((w * x).sum()), k2, math.sqrt(k2 / T), math.sqrt((k4 + 2 * k2**2) / T)


def _linear(w: torch.Tensor) -> nn.Linear:
    layer = nn.Linear(len(w), 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(w[None])
    return layer


@pytest.fixture
def wx():
    generator = torch.Generator().manual_seed(11)
    return torch.randn(16, generator=generator), torch.randn(16, generator=generator)


@pytest.mark.parametrize("masks", ["shared", "per_row"])
def test_dropout_before_linear_matches_exact_moments(wx, masks):
    w, x = wx
    model = nn.Sequential(nn.Dropout(P), _linear(w))
    mean, variance, se_mean, se_var = _exact(w, x, P)
    pred = mcd.predict(model, x[None], samples=T, seed=3, masks=masks)
    assert abs(float(pred.mean) - mean) < 5 * se_mean
    assert abs(float(pred.epistemic) - variance) < 5 * se_var
    assert float(pred.aleatoric) == 0.0


def test_dropconnect_on_linear_matches_exact_moments(wx):
    """Dropping weight w_i or input x_i gives the same distribution of y."""
    w, x = wx
    model = mcd.DropConnect(_linear(w), P)
    mean, variance, se_mean, se_var = _exact(w, x, P)
    pred = mcd.predict(model, x[None], samples=T, seed=5)
    assert abs(float(pred.mean) - mean) < 5 * se_mean
    assert abs(float(pred.epistemic) - variance) < 5 * se_var


def test_functional_dropout_is_sampled(wx):
    w, x = wx

    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.out = _linear(w)

        def forward(self, inputs):
            return self.out(nn.functional.dropout(inputs, P, self.training))

    mean, variance, se_mean, se_var = _exact(w, x, P)
    pred = mcd.predict(Functional(), x[None], samples=T, seed=7)
    assert abs(float(pred.mean) - mean) < 5 * se_mean
    assert abs(float(pred.epistemic) - variance) < 5 * se_var


def test_alpha_dropout_moments():
    """Alpha dropout maps x to a*x + a*alpha*p (kept) or -a*alpha*(1-p) (dropped):
    mean a*q*x and variance p*q*a^2*(x + alpha)^2 per element."""
    alpha = 1.7580993408473766
    a = 1 / math.sqrt((alpha**2 * P + 1) * (1 - P))
    q = 1 - P
    x = torch.linspace(-2, 2, 9)
    pred = mcd.predict(nn.Sequential(nn.AlphaDropout(P)), x[None], samples=T, seed=1)
    mean = a * q * x.double()
    variance = P * q * a**2 * (x.double() + alpha) ** 2
    b2, b4 = _bernoulli_cumulants(q)
    scale = a * (x.double() + alpha)
    se_mean = (variance / T).sqrt()
    se_var = ((scale**4 * b4 + 2 * (scale**2 * b2) ** 2) / T).sqrt()
    assert torch.all((pred.mean[0] - mean).abs() < 5 * se_mean)
    assert torch.all((pred.epistemic[0] - variance).abs() < 5 * se_var)


def test_tau_adds_aleatoric_variance(wx):
    w, x = wx
    pred = mcd.predict(nn.Sequential(nn.Dropout(P), _linear(w)), x[None], samples=200, seed=0, tau=4.0)
    assert torch.allclose(pred.aleatoric, torch.full_like(pred.aleatoric, 0.25))
    assert torch.allclose(pred.variance, pred.epistemic + 0.25)


def test_heteroscedastic_head_reports_mean_noise():
    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.mean = nn.Linear(8, 1)
            self.log_variance = nn.Parameter(torch.tensor(-1.0))

        def forward(self, h):
            mean = self.mean(h)
            return mean, self.log_variance.expand_as(mean)

    model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Dropout(0.5), Head())
    x = torch.randn(4, 3)
    pred = mcd.predict(model, x, samples=64, seed=2, return_samples=True)
    assert torch.allclose(pred.aleatoric, torch.full((4, 1), math.exp(-1.0), dtype=torch.float64))
    assert torch.allclose(pred.variance, pred.epistemic + pred.aleatoric)
    assert pred.samples.shape == (4, 64, 1)
    assert torch.allclose(pred.mean, pred.samples.double().mean(dim=1), atol=1e-6)
    assert torch.allclose(pred.epistemic, pred.samples.double().var(dim=1, unbiased=False), atol=1e-6)


def test_interval_uses_gaussian_quantiles(wx):
    w, x = wx
    pred = mcd.predict(nn.Sequential(nn.Dropout(P), _linear(w)), x[None], samples=100, seed=0, tau=2.0)
    lower, upper = pred.interval(0.9)
    z = 1.6448536269514722
    assert torch.allclose(lower, pred.mean - z * pred.std)
    assert torch.allclose(upper, pred.mean + z * pred.std)
    with pytest.raises(ValueError, match="interval level"):
        pred.interval(1.5)

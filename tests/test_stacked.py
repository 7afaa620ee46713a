"""The stacked trainer: masks at the right rate, exported networks equal to the stack, scores as defined."""

import math

import numpy as np
import torch

from mcdropout.stats import metrics
from mcdropout.training import _stacked as stacked


def _random_stack(count: int, sizes, dropout: float) -> stacked.StackedMLP:
    return stacked.initialise(count, sizes, torch.full((count,), dropout), torch.Generator().manual_seed(1))


def test_masks_keep_at_rate_one_minus_p_and_preserve_the_mean():
    """x = 1 through a one-layer stack with identity weights: the output is mask * scale per element."""
    count, width, rows = 3, 200, 5000
    p = torch.tensor([0.005, 0.1, 0.5])
    model = stacked.StackedMLP([torch.eye(width).expand(count, -1, -1)], [torch.zeros(count, 1, width)], p)
    out = model.forward(torch.ones(count, rows, width), torch.Generator().manual_seed(0))
    n = rows * width
    for i in range(count):
        kept = (out[i] != 0).double().mean().item()
        # 16-bit resolution: the rate is round(p * 2^16) / 2^16; five binomial sigmas of tolerance
        rate = round(p[i].item() * 65536) / 65536
        assert abs(kept - (1 - rate)) < 5 * math.sqrt(rate * (1 - rate) / n)
        assert torch.allclose(out[i][out[i] != 0], torch.tensor(1 / (1 - rate)), rtol=1e-6)


def test_selected_network_equals_its_slice_of_the_stack():
    model = _random_stack(4, [3, 7, 2], dropout=0.2)
    x = torch.randn(10, 3)
    for index in range(4):
        network = model.select(index)
        assert isinstance(network[0], torch.nn.Dropout) and network[0].p == model.dropout[index].item()
        no_dropout = stacked.StackedMLP(model.weights, model.biases, torch.zeros(4))
        expected = no_dropout.forward(x.expand(4, -1, -1))[index]
        torch.testing.assert_close(network.eval()(x), expected, rtol=1e-5, atol=1e-6)


def test_regression_scores_are_gal_and_ghahramanis_formulas():
    model = _random_stack(2, [3, 8, 1], dropout=0.1)
    x = torch.randn(2, 6, 3)
    y = torch.randn(2, 6, 1, dtype=torch.float64)
    mean, std = torch.tensor([[1.0], [-2.0]]), torch.tensor([[2.0], [0.5]])
    taus = torch.tensor([[0.5, 2.0], [1.0, 4.0]], dtype=torch.float64)
    scores = stacked.regression_scores(model, x, y, taus, 300, y_mean=mean, y_std=std, seed=5)
    draws = torch.cat(list(stacked.mc_outputs(model, x, 300, seed=5)), dim=1).double()  # same seed, same passes
    for m in range(2):
        samples = (draws[m] * std[m] + mean[m]).permute(1, 0, 2).numpy()  # (rows, T, 1)
        assert math.isclose(scores["rmse"][m].item(), metrics.rmse(y[m].numpy(), samples.mean(1)), rel_tol=1e-9)
        for k in range(2):
            expected = metrics.mc_log_likelihood(y[m].numpy(), samples, taus[m, k].item())
            assert math.isclose(scores["log_likelihood"][m, k].item(), expected, rel_tol=1e-9)


def test_training_fits_and_is_reproducible_with_processes():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(4, 200, 2)).astype(np.float32))
    y = (x[..., :1] * 2 - x[..., 1:]) + 0.05 * torch.randn(4, 200, 1)
    options = dict(hidden=[16], dropout=[0.05] * 4, weight_decay=[1e-6] * 4, epochs=150, batch_size=32, seed=3,
                   quiet=True)
    one = stacked.train(x, y, **options)
    again = stacked.train(x, y, **options)
    two = stacked.train(x, y, processes=2, **options)
    for a, b in zip(one.weights, again.weights):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert len(two.dropout) == 4 and two.weights[0].shape == one.weights[0].shape
    for model in (one, two):
        fitted = model.forward(x, torch.Generator().manual_seed(0))  # with dropout on, still close
        assert ((fitted - y) ** 2).mean().item() < 0.1 * y.var().item()

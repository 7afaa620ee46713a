"""A row's answer depends only on (model, row, T, seed).

Equal means equal to 1e-6 relative to the prediction's own scale: torch's
float32 kernels round differently for different batch sizes (about 1e-8 here),
so a mean near zero cannot be compared relative to itself.
"""

import pytest
import torch
from torch import nn

import mcdropout as mcd

RTOL = 1e-6


def _regressor() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(6, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 2)
    )


def _classifier() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Dropout2d(0.2), nn.Flatten(), nn.Linear(4 * 6 * 6, 16), nn.ReLU(),
        nn.Dropout(0.4), nn.Linear(16, 5),
    )


def _close(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor | None = None) -> bool:
    scale = a.abs() if scale is None else torch.maximum(a.abs(), scale)
    return bool(torch.all((a - b).abs() <= RTOL * scale))


@pytest.mark.parametrize(
    "options",
    [{"chunk_rows": 1}, {"chunk_rows": 7}, {"chunk_rows": 50}, {"memory_budget": "200KB"}, {"memory_budget": "1GB"}],
)
def test_regression_invariant_to_chunking_and_budget(options):
    model = _regressor()
    x = torch.randn(9, 6)
    reference = mcd.predict(model, x, samples=64, seed=42)
    other = mcd.predict(model, x, samples=64, seed=42, **options)
    assert _close(reference.mean, other.mean, reference.std)
    assert _close(reference.epistemic, other.epistemic)


def test_classification_invariant_to_batch_composition():
    model = _classifier()
    x = torch.randn(6, 1, 8, 8)
    alone = [mcd.predict(model, x[i : i + 1], samples=40, seed=9, task="classification") for i in range(6)]
    crowd = torch.cat([torch.randn(5, 1, 8, 8), x.flip(0), torch.randn(3, 1, 8, 8)])
    together = mcd.predict(model, crowd, samples=40, seed=9, task="classification", chunk_rows=11)
    for i, solo in enumerate(alone):
        row = 5 + (5 - i)
        assert _close(solo.probs[0], together.probs[row])
        assert _close(solo.mutual_information[0], together.mutual_information[row], solo.entropy[0])
        assert torch.equal(solo.variation_ratio[0], together.variation_ratio[row])


def test_same_seed_same_numbers_other_seed_other_numbers():
    model = _regressor()
    x = torch.randn(4, 6)
    a = mcd.predict(model, x, samples=32, seed=1)
    b = mcd.predict(model, x, samples=32, seed=1)
    c = mcd.predict(model, x, samples=32, seed=2)
    assert torch.equal(a.mean, b.mean) and torch.equal(a.epistemic, b.epistemic)
    assert not torch.allclose(a.mean, c.mean)


def test_unseeded_calls_report_their_seed():
    model = _regressor()
    x = torch.randn(3, 6)
    first = mcd.predict(model, x, samples=16)
    again = mcd.predict(model, x, samples=16, seed=first.seed)
    assert torch.equal(first.mean, again.mean)


def test_first_samples_of_a_longer_run_are_the_same_sub_networks():
    model = _regressor()
    x = torch.randn(3, 6)
    short = mcd.predict(model, x, samples=10, seed=4, return_samples=True)
    long = mcd.predict(model, x, samples=30, seed=4, return_samples=True, chunk_rows=7)
    assert torch.allclose(short.samples, long.samples[:, :10], rtol=0, atol=1e-6)


def test_shared_masks_are_one_sub_network_per_sample():
    """With shared masks, identical rows get the same sampled outputs in every sample."""
    model = _regressor()
    row = torch.randn(1, 6)
    pred = mcd.predict(model, row.repeat(3, 1), samples=8, seed=0, return_samples=True)
    assert torch.allclose(pred.samples[0], pred.samples[1], atol=1e-6)
    assert torch.allclose(pred.samples[1], pred.samples[2], atol=1e-6)
    per_row = mcd.predict(model, row.repeat(3, 1), samples=8, seed=0, return_samples=True, masks="per_row")
    assert not torch.allclose(per_row.samples[0], per_row.samples[1], atol=1e-3)


def test_auto_samples_per_row_and_independent_of_the_batch():
    model = _regressor()
    x = torch.randn(5, 6)
    together = mcd.predict(model, x, samples="auto", seed=3, tolerance=0.05, tau=1.0)
    alone = mcd.predict(model, x[2:3], samples="auto", seed=3, tolerance=0.05, tau=1.0)
    assert together.num_samples[2] == alone.num_samples[0]
    assert _close(together.mean[2], alone.mean[0], alone.std[0])
    assert torch.all(together.num_samples % 32 == 0)
    tight = mcd.predict(model, x, samples="auto", seed=3, tolerance=0.01, tau=1.0)
    assert torch.all(tight.num_samples >= together.num_samples)
    capped = mcd.predict(model, x, samples="auto", seed=3, tolerance=1e-9, max_samples=100)
    assert torch.all(capped.num_samples == 100)


def test_auto_meets_its_tolerance():
    model = _regressor()
    x = torch.randn(4, 6)
    pred = mcd.predict(model, x, samples="auto", seed=0, tolerance=0.05)
    standard_error = (pred.epistemic / pred.num_samples[:, None]).sqrt()
    assert torch.all(standard_error <= 0.05 * pred.std + 1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_and_cuda_give_the_same_answer():
    x = torch.randn(7, 6)
    cpu = mcd.predict(_regressor(), x, samples=50, seed=5, device="cpu")
    gpu = mcd.predict(_regressor(), x, samples=50, seed=5, device="cuda")
    assert torch.allclose(cpu.mean, gpu.mean, rtol=1e-4, atol=1e-6)
    assert torch.allclose(cpu.epistemic, gpu.epistemic, rtol=1e-3, atol=1e-8)

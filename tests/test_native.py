"""The compiled kernels: masks bit for bit as numpy draws them, applied as torch would; float64 moments.

Masked values are compared exactly: the kernel multiplies each element by the
same float32 mask value that numpy's table holds, so nothing may differ, not
even the sign of a zero. Moments are float64 sums in another order than
torch's, equal to float64 rounding.
"""

import math
import shutil

import numpy as np
import pytest
import torch
from torch import nn

import mcdropout as mcd
from mcdropout.engine import _masks as masks
from mcdropout import _kernels as native

needs_kernel = pytest.mark.skipif(native.kernels is None, reason="installed without the compiled kernels")


def test_kernel_is_built_where_a_compiler_is():
    """The extension is optional for users without a compiler; here (and in CI) one is at hand."""
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler on this machine")
    assert native.kernels is not None


def _numpy_masked(source: torch.Tensor, seed, layer, first, samples, units, inner, p) -> torch.Tensor:
    """What the sampler computes without the kernel: numpy's masks, then a torch product."""
    rows = source.shape[-2]
    keep = masks.generator().keep(seed, layer, first, samples, (units,), p, 1.0 / (1.0 - p))
    keep = torch.from_numpy(np.repeat(keep, inner, axis=1)).reshape(samples, 1, units * inner)
    return (source.reshape(-1, rows, units * inner) * keep).reshape(samples, rows, units * inner)


@needs_kernel
@pytest.mark.parametrize("p", [0.5, 0.25, 0.1])  # 1, 8 and 16 random bits per element
@pytest.mark.parametrize("units, inner", [(512, 1), (300, 1), (7, 1), (1, 1), (6, 5)])
def test_kernel_matches_numpy_masks_times_the_input(p, units, inner):
    generator = torch.Generator().manual_seed(0)
    samples, rows, seed, layer, first = 23, 3, 2**40 + 5, 3, 17
    features = units * inner
    rows_once = torch.randn(rows, features, generator=generator)
    special = torch.tensor([-1.0, float("inf"), -0.0, float("nan")])  # x * 0 keeps IEEE's answers
    rows_once.view(-1)[: len(special)] = special[: rows_once.numel()]
    replicas = torch.randn(samples, rows, features, generator=generator)

    expected = _numpy_masked(rows_once.expand(samples, rows, features), seed, layer, first, samples, units, inner, p)
    target = torch.empty(samples, rows, features)
    masks.apply(rows_once.data_ptr(), 0, target.data_ptr(), seed, layer, first, samples, rows, units, inner,
                p, 1.0 / (1.0 - p))
    assert torch.equal(target.isnan(), expected.isnan())
    assert torch.equal(target.nan_to_num(), expected.nan_to_num())
    assert torch.equal(target.signbit(), expected.signbit())

    expected = _numpy_masked(replicas, seed, layer, first, samples, units, inner, p)
    masks.apply(replicas.data_ptr(), rows * features, replicas.data_ptr(), seed, layer, first, samples, rows,
                units, inner, p, 1.0 / (1.0 - p))  # in place
    assert torch.equal(replicas, expected)


def _models() -> dict[str, tuple[nn.Module, torch.Tensor]]:
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Dropout(0.5), nn.Linear(64, 64), nn.ReLU(), nn.Dropout(0.2),
                        nn.Linear(64, 3))
    cnn = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Dropout2d(0.25), nn.Flatten(), nn.Linear(4 * 6 * 6, 16),
                        nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 5))
    sequence = nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.3), nn.Flatten(), nn.Linear(16 * 5, 1))
    return {"mlp": (mlp, torch.randn(6, 8)), "cnn": (cnn, torch.randn(6, 1, 8, 8)),
            "sequence": (sequence, torch.randn(6, 5, 4))}


@needs_kernel
@pytest.mark.parametrize("name", ["mlp", "cnn", "sequence"])
@pytest.mark.parametrize("options", [{}, {"chunk_rows": 16}, {"masks": "per_row"}])
def test_predictions_are_the_same_with_and_without_the_kernel(name, options, monkeypatch):
    model, x = _models()[name]
    task = "classification" if name == "cnn" else "regression"
    with_kernel = mcd.predict(model, x, samples=40, task=task, seed=7, return_samples=True, device="cpu", **options)
    monkeypatch.setattr(native, "kernels", None)
    without = mcd.predict(model, x, samples=40, task=task, seed=7, return_samples=True, device="cpu", **options)
    assert torch.equal(with_kernel.samples, without.samples)
    first = with_kernel.mean if task == "regression" else with_kernel.probs
    second = without.mean if task == "regression" else without.probs
    assert torch.allclose(first, second, rtol=1e-12, atol=1e-15)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(40, 3, 7), (2, 1), (1, 5)])
def test_moments_match_float64_torch(dtype, shape):
    values = torch.randn(*shape, generator=torch.Generator().manual_seed(1), dtype=dtype) * 1e3 + 7.0
    values[:, 0] = 4.0  # a column with no spread: variance exactly zero
    columns = math.prod(shape[1:])
    mean = torch.empty(columns, dtype=torch.float64)
    variance = torch.empty(columns, dtype=torch.float64)
    positive = native.kernels.moments(values.data_ptr(), dtype == torch.float64, shape[0], columns,
                                      mean.data_ptr(), variance.data_ptr())
    expected_variance, expected_mean = torch.var_mean(values.to(torch.float64).reshape(shape[0], -1), dim=0,
                                                      correction=0)
    assert positive == bool(expected_variance.any())
    assert variance.view(-1)[0] == 0.0
    # Two float64 passes over values of 1e3: rounding far below 1e-12 of the scale.
    assert torch.allclose(mean, expected_mean, rtol=1e-12, atol=1e-12 * 1e3)
    assert torch.allclose(variance, expected_variance, rtol=1e-12, atol=1e-12 * 1e6)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bad", [None, float("nan"), float("inf"), -float("inf")])
def test_all_finite_finds_any_nan_or_inf(dtype, bad):
    values = torch.full((37,), torch.finfo(dtype).max / 1.5, dtype=dtype)  # huge but finite: no overflow
    values[::2] *= -1
    for position in (0, 17, 36):
        probe = values.clone()
        if bad is not None:
            probe[position] = bad
        assert native.kernels.all_finite(probe.data_ptr(), dtype == torch.float64, probe.numel()) is (bad is None)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("value", [0.0, -0.0, 1e-300, 1.0, float("nan")])
def test_any_nonzero_answers_as_torch_any(dtype, value):
    values = torch.zeros(29, dtype=dtype)
    values[13] = value
    found = bool(values.any())  # torch's answer: float32 rounds 1e-300 to zero, NaN counts
    assert native.kernels.any_nonzero(values.data_ptr(), dtype == torch.float64, values.numel()) is found

"""The compiled mask kernel draws numpy's masks bit for bit and applies them as torch would.

Every comparison is exact: the kernel multiplies each element by the same
float32 mask value that numpy's table holds, so nothing may differ, not even
the sign of a zero.
"""

import shutil

import numpy as np
import pytest
import torch
from torch import nn

import mcdropout as mcd
from mcdropout import masks

needs_kernel = pytest.mark.skipif(not masks.COMPILED, reason="installed without the compiled mask kernel")


def test_kernel_is_built_where_a_compiler_is():
    """The extension is optional for users without a compiler; here (and in CI) one is at hand."""
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler on this machine")
    assert masks.COMPILED


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
    monkeypatch.setattr(masks, "COMPILED", False)
    without = mcd.predict(model, x, samples=40, task=task, seed=7, return_samples=True, device="cpu", **options)
    assert torch.equal(with_kernel.samples, without.samples)

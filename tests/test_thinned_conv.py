"""Channel dropout before convolutions, each sample run as its thinned sub-network: the dense masked
pass's answers, to float rounding."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mcdropout as mcd
from mcdropout.engine._thinned_conv import ThinnedConvChain
from tests.test_thinned import _dense

OPTIONS = dict(samples=30, seed=5, return_samples=True)


def _cnn(p: float, head: bool = True, inplace: bool = False) -> nn.Sequential:
    torch.manual_seed(0)
    layers = [
        nn.Conv2d(2, 6, 3, padding=1), nn.ReLU(inplace=inplace), nn.Dropout2d(p), nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(inplace=inplace), nn.Dropout2d(p),
        nn.Conv2d(8, 5, 3, stride=2), nn.Tanh(),
    ]
    if head:
        layers += [nn.Dropout2d(p), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(20, 12), nn.GELU(),
                   nn.Dropout(p), nn.Linear(12, 3)]
    return nn.Sequential(*layers)


def _agree(model: nn.Module, x: torch.Tensor, task: str = "regression") -> None:
    """The thinned pass gives the dense pass's samples. It is made to run whatever the cost model
    says (which, at p = 0.05, is that it never pays), and its calls are counted."""
    calls = []
    run, pays = ThinnedConvChain.__call__, ThinnedConvChain.pays

    def counted(self, *args, **kwargs):
        calls.append(1)
        return run(self, *args, **kwargs)

    ThinnedConvChain.__call__, ThinnedConvChain.pays = counted, lambda self, rows, shape=(): True
    try:
        thinned = mcd.predict(model, x, task=task, **OPTIONS)
    finally:
        ThinnedConvChain.__call__, ThinnedConvChain.pays = run, pays
    assert calls
    dense = _dense(model, x, task=task, **OPTIONS)
    torch.testing.assert_close(thinned.samples, dense.samples, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("p", [0.05, 0.25, 0.5, 0.9])
def test_thinned_convolutions_equal_the_dense_masked_pass(p):
    model = _cnn(p)
    assert ThinnedConvChain.find(model[2:]) is not None
    _agree(model, torch.randn(64, 2, 12, 12), task="classification")


def test_a_model_that_ends_with_its_convolutions():
    model = _cnn(0.3, head=False)
    assert ThinnedConvChain.find(model[2:]) is not None
    _agree(model, torch.randn(64, 2, 12, 12))


def test_samples_that_keep_no_channel_or_every_channel():
    """At p = 0.9 on 2 channels many samples keep none (the next convolution sees only its bias); at
    p = 0.05 most keep both."""
    for p in (0.9, 0.05):
        torch.manual_seed(2)
        model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Dropout2d(p), nn.Conv2d(2, 3, 3), nn.Flatten(),
                              nn.Linear(3 * 4 * 4, 2))
        assert ThinnedConvChain.find(model[2:]) is not None
        _agree(model, torch.randn(64, 1, 8, 8))


def test_in_place_layers_before_the_first_convolution_leave_the_rows_alone():
    model = _cnn(0.25, inplace=True)
    model[3] = nn.LeakyReLU(0.1, inplace=True)  # not idempotent: run twice on the rows, it would differ
    assert ThinnedConvChain.find(model[2:]) is not None
    _agree(model, torch.randn(64, 2, 12, 12), task="classification")


@pytest.mark.parametrize("layers", [
    [nn.Dropout2d(0.2), nn.GELU(), nn.Conv2d(4, 4, 3)],  # not homogeneous: the scale cannot pass it
    [nn.Dropout2d(0.2), nn.Conv2d(4, 4, 3, groups=2)],
    [nn.Dropout2d(0.2), nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect")],
    [nn.Dropout2d(0.2), nn.Conv2d(4, 4, 3), nn.Dropout2d(0.2)],  # ends with a dropout
    [nn.Dropout2d(0.2), nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4)],
    [nn.Dropout(0.2), nn.Conv2d(4, 4, 3)],
])
def test_what_is_not_a_thinned_convolution_chain(layers):
    assert ThinnedConvChain.find(nn.Sequential(*layers)) is None


def test_the_cost_model_keeps_one_row_and_light_dropout_dense():
    chain = ThinnedConvChain.find(_cnn(0.5)[2:])
    assert not chain.pays(1, (6, 12, 12)) and chain.pays(64, (6, 12, 12))
    assert not chain.pays(64, (6, 12))  # not an image: the dense pass
    assert not ThinnedConvChain.find(_cnn(0.05)[2:]).pays(10_000, (6, 12, 12))


def test_the_model_is_left_as_found():
    model = _cnn(0.25)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    mcd.predict(model, torch.randn(64, 2, 12, 12), samples=10, task="classification")
    after = model.state_dict()
    assert all(torch.equal(before[name], after[name]) and after[name].is_contiguous() for name in before)
    assert model.training

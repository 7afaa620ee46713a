"""Each MC sample run as its thinned sub-network: the answers of the dense masked pass, to float rounding."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

import mcdropout as mcd
from mcdropout.engine._thinned import ThinnedChain


def _chain(p: float, width: int = 24, activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(5, width), activation(), nn.Dropout(p),
        nn.Linear(width, width), activation(), nn.Dropout(p),
        nn.Linear(width, 3),
    )


def _dense(model: nn.Module, x: torch.Tensor, **options):
    """The same call through the model's own forward: a hook rules the thinned chain out."""
    handle = model[-1].register_forward_hook(lambda *_: None)
    try:
        return mcd.predict(model, x, **options)
    finally:
        handle.remove()


@pytest.mark.parametrize("p", [0.05, 0.25, 0.5, 0.9])
@pytest.mark.parametrize("activation", [nn.ReLU, nn.Tanh, nn.GELU])
def test_thinned_samples_equal_the_dense_masked_pass(p, activation):
    model = _chain(p, activation=activation)
    x = torch.randn(4000, 5)  # enough rows that thinning pays at every p (the cost model's choice)
    options = dict(samples=40, seed=3, return_samples=True)
    chain = ThinnedChain.find(model[2:])
    assert chain is not None and chain.pays(4000)
    thinned = mcd.predict(model, x, **options)
    dense = _dense(model, x, **options)
    torch.testing.assert_close(thinned.samples, dense.samples, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(thinned.variance, dense.variance, rtol=1e-4, atol=1e-6)


def test_samples_that_keep_nothing_or_everything():
    """At p = 0.9 on 4 units some samples keep no unit (the next layer sees only its bias); at p = 0.05
    many keep all of them; both agree with the dense pass."""
    for p in (0.9, 0.05):
        torch.manual_seed(1)
        model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Dropout(p), nn.Linear(4, 2))
        x = torch.randn(4000, 3)
        assert ThinnedChain.find(model[2:]).pays(4000)
        thinned = mcd.predict(model, x, samples=200, seed=0, return_samples=True)
        dense = _dense(model, x, samples=200, seed=0, return_samples=True)
        torch.testing.assert_close(thinned.samples, dense.samples, rtol=1e-5, atol=1e-6)
        bias_only = (thinned.samples == model[3].bias).all(dim=-1).any() if p == 0.9 else True
        assert bias_only


def test_an_input_dropout_and_no_bias():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Dropout(0.3), nn.Linear(8, 16, bias=False), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 1))
    x = torch.randn(1000, 8)
    torch.testing.assert_close(mcd.predict(model, x, samples=30, seed=5, return_samples=True).samples,
                               _dense(model, x, samples=30, seed=5, return_samples=True).samples, rtol=1e-5, atol=1e-6)


def test_the_cost_model_keeps_one_row_dense():
    chain = ThinnedChain.find(_chain(0.5, width=512)[2:])
    assert not chain.pays(1)
    assert chain.pays(256)


def test_a_hook_added_after_the_predictor_is_built_runs():
    model = _chain(0.5)
    predictor = mcd.MCPredictor(model, samples=20)
    seen = []
    model[3].register_forward_hook(lambda module, args, output: seen.append(output.shape[0]))
    predictor.predict(torch.randn(64, 5), seed=0)
    assert 20 * 64 in seen  # the sampled pass (after the probe's two replicas)


def test_four_threads_on_one_predictor_get_their_solo_answers():
    model = _chain(0.5)
    predictor = mcd.MCPredictor(model, samples=30)
    inputs = [torch.randn(n, 5) for n in (1, 7, 64, 200)]
    solo = [predictor.predict(x, seed=i).mean for i, x in enumerate(inputs)]
    answers: dict[int, list[torch.Tensor]] = {i: [] for i in range(4)}

    def work(i: int) -> None:
        for _ in range(15):
            answers[i].append(predictor.predict(inputs[i], seed=i).mean)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for i in range(4):
        assert all(torch.equal(answer, solo[i]) for answer in answers[i])


def test_auto_device_is_the_models_own_and_nothing_is_moved():
    model = _chain(0.5)
    predictor = mcd.MCPredictor(model, device="auto")
    assert predictor.device == torch.device("cpu") and next(model.parameters()).device.type == "cpu"


def test_auto_samples_return_only_drawn_samples():
    model = _chain(0.5)
    prediction = mcd.predict(model, torch.randn(5, 5), samples="auto", max_samples=96, seed=0, return_samples=True)
    assert prediction.samples.shape[1] <= 96
    drawn = (~torch.isnan(prediction.samples[..., 0])).sum(dim=1)
    assert int(drawn.max()) == prediction.samples.shape[1]


def test_a_chain_whose_first_dropout_is_off():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Dropout(0.0), nn.Linear(6, 12), nn.ReLU(), nn.Dropout(0.5), nn.Linear(12, 2))
    x = torch.randn(1000, 6)
    assert ThinnedChain.find(model).pays(1000)
    torch.testing.assert_close(mcd.predict(model, x, samples=30, seed=1, return_samples=True).samples,
                               _dense(model, x, samples=30, seed=1, return_samples=True).samples, rtol=1e-5, atol=1e-6)

"""Bad input and unsampleable models raise ValueError naming the problem."""

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import mcdropout as mcd


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 1))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"samples": 1}, "samples must be an int >= 2 or 'auto'"),
        ({"samples": 2.5}, "samples must be"),
        ({"samples": True}, "samples must be"),
        ({"task": "ranking"}, "unknown task 'ranking'; expected one of regression, classification"),
        ({"masks": "per_batch"}, "unknown masks"),
        ({"tau": -1.0}, "tau must be a positive number"),
        ({"memory_budget": "lots"}, "memory_budget must be bytes or a size"),
        ({"memory_budget": 0}, "memory_budget must be positive"),
        ({"seed": -3}, "seed must be an integer from 0 to 2\\^63-1"),
        ({"device": "cuda:7"} if not torch.cuda.is_available() else {"device": "tpu"}, "device|Expected one of"),
    ],
)
def test_bad_options(kwargs, message):
    with pytest.raises((ValueError, RuntimeError), match=message):
        mcd.predict(_model(), torch.randn(2, 3), **kwargs)


def test_bad_inputs():
    predictor = mcd.MCPredictor(_model(), samples=8, input_shape=(3,))
    with pytest.raises(ValueError, match=r"rows of shape \(4,\), expected \(3,\)"):
        predictor.predict(torch.randn(2, 4))
    with pytest.raises(ValueError, match="inputs are empty"):
        predictor.predict(np.zeros((0, 3)))
    with pytest.raises(ValueError, match="scalar"):
        predictor.predict(torch.tensor(1.0))
    with pytest.raises(ValueError, match="must be numeric"):
        predictor.predict([["a", "b", "c"]])
    bad = np.ones((12, 3))
    bad[2, 1] = np.nan
    bad[7, 0] = np.inf
    with pytest.raises(ValueError, match=r"NaN or inf in 2 row\(s\): 2, 7"):
        predictor.predict(bad)


def test_shape_error_from_the_model_is_a_value_error():
    with pytest.raises(ValueError, match=r"the model failed on inputs with rows of shape \(5,\)"):
        mcd.predict(_model(), torch.randn(2, 5), samples=4)


def test_numpy_lists_and_tensors_give_the_same_answer():
    model = _model()
    x = np.random.default_rng(0).normal(size=(4, 3))
    from_numpy = mcd.predict(model, x, samples=16, seed=0)
    from_list = mcd.predict(model, x.tolist(), samples=16, seed=0)
    from_tensor = mcd.predict(model, torch.from_numpy(x), samples=16, seed=0)
    assert torch.equal(from_numpy.mean, from_list.mean) and torch.equal(from_numpy.mean, from_tensor.mean)
    assert from_numpy.mean.device.type == "cpu" and from_numpy.mean.shape == (4, 1)


def test_model_without_dropout_is_refused():
    with pytest.raises(ValueError, match="no stochastic layer"):
        mcd.predict(nn.Sequential(nn.Linear(3, 1)), torch.randn(2, 3), samples=4)


def test_dropout_that_never_runs_is_named():
    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(3, 1)
            self.head_dropout = nn.Dropout(0.5)

        def forward(self, x):
            return self.body(x)

    with pytest.raises(ValueError, match="head_dropout, but none of them ran"):
        mcd.predict(Unused(), torch.randn(2, 3), samples=4)


def test_identical_samples_are_refused():
    class Cancels(nn.Module):
        def __init__(self):
            super().__init__()
            self.drop = nn.Dropout(0.5)

        def forward(self, x):
            return self.drop(x) * 0.0

    with pytest.raises(ValueError, match="all 16 MC samples came out identical"):
        mcd.predict(Cancels(), torch.randn(3, 2), samples=16)


def test_a_certain_classifier_is_answered_not_refused():
    """Logits at least 2,000 apart whichever units dropout keeps: every sample's softmax is exactly one-hot
    in float64, so the samples are identical because the model is certain, and dropout did act."""
    hidden = nn.Linear(2, 8)
    head = nn.Linear(8, 2)
    with torch.no_grad():
        hidden.weight.zero_(), hidden.bias.fill_(1.0)
        head.weight.copy_(torch.tensor([[1.0] * 8, [-1.0] * 8])), head.bias.copy_(torch.tensor([1000.0, -1000.0]))
    model = nn.Sequential(hidden, nn.Dropout(0.5), head)
    prediction = mcd.predict(model, torch.randn(3, 2), samples=16, task="classification", seed=0)
    assert torch.equal(prediction.probs, torch.tensor([[1.0, 0.0]] * 3, dtype=prediction.probs.dtype))
    assert torch.equal(prediction.entropy, torch.zeros(3, dtype=prediction.entropy.dtype))
    assert torch.equal(prediction.mutual_information, torch.zeros(3, dtype=prediction.entropy.dtype))


@pytest.mark.parametrize(
    "module",
    [
        nn.LSTM(4, 4, num_layers=2, dropout=0.3, batch_first=True),
        nn.GRU(4, 4, num_layers=2, dropout=0.3, batch_first=True),
        nn.MultiheadAttention(4, 2, dropout=0.1, batch_first=True),
    ],
)
def test_dropout_inside_fused_kernels_is_sampled_not_refused(module):
    """Stacked recurrent dropout and attention dropout are sampled (tests/test_every_dropout.py checks how)."""

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = module
            self.head = nn.Linear(4, 1)

        def forward(self, x):
            return self.head(self.encoder(x, x, x)[0] if isinstance(self.encoder, nn.MultiheadAttention)
                             else self.encoder(x)[0])

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prediction = mcd.predict(Model(), torch.randn(3, 5, 4), samples=8, seed=0)
    assert torch.all(prediction.epistemic > 0)


def test_classifier_must_return_logits_per_class():
    with pytest.raises(ValueError, match=r"logits of shape \(rows, classes\)"):
        mcd.predict(nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5), nn.Unflatten(1, (2, 2))), torch.randn(2, 3), task="classification")
    with pytest.raises(ValueError, match="must return a batch-first tensor"):
        mcd.predict(nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5), nn.Flatten(0)), torch.randn(2, 3))


def test_memory_budget_too_small_says_how_much_is_needed():
    with pytest.raises(ValueError, match="memory_budget of 100 bytes is too small"):
        mcd.predict(_model(), torch.randn(2, 3), samples=4, memory_budget=100)


def test_non_module_model():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        mcd.MCPredictor(lambda x: x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_huge_finite_inputs_are_not_mistaken_for_inf(dtype):
    """The finiteness check sums the inputs first, in their own dtype; a sum that overflows must not
    reject finite rows."""
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Dropout(0.5), torch.nn.Linear(3, 1)).to(dtype)
    huge = torch.finfo(dtype).max / 1.5  # finite; two of them sum past the largest float
    pred = mcd.predict(model, torch.tensor([[huge, huge], [1.0, 2.0]], dtype=dtype), samples=10, seed=0)
    assert pred.mean.shape == (2, 1)
    with pytest.raises(ValueError, match=r"NaN or inf in 1 row\(s\): 1"):
        mcd.predict(model, torch.tensor([[huge, huge], [float("inf"), 0.0]], dtype=dtype), samples=10)

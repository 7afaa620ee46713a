"""Every dropout that fires in train mode is sampled, with sample t's masks shared by the rows, or named.

References recompute each model by hand with the masks the engine draws for (seed, layer, sample)
(mcdropout.engine._masks; layers are numbered in call order within a forward pass), so a sampled
answer must equal them to float rounding.
"""

import math
import threading
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mcdropout as mcd
from mcdropout.engine._masks import generator

SEED = 11


def _masks(layer: int, samples: int, shape: tuple[int, ...], p: float) -> torch.Tensor:
    """The engine's keep-masks (scale 1/(1-p) where kept) of one layer for samples 0..samples-1."""
    return torch.from_numpy(generator().keep(SEED, layer, 0, samples, shape, p, 1.0 / (1.0 - p)))


class UserAttention(nn.Module):
    """A user's attention module that gates its dropout on its own flag, as Hugging Face's do."""

    def __init__(self, width: int = 8, heads: int = 2, p: float = 0.4) -> None:
        super().__init__()
        self.qkv = nn.Linear(width, 3 * width)
        self.heads, self.p = heads, p
        self.head = nn.Linear(width, 2)

    def split(self, x):
        rows, length, width = x.shape
        return self.qkv(x).view(rows, length, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)

    def forward(self, x):
        q, k, v = self.split(x)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.p if self.training else 0.0)
        return self.head(out.transpose(1, 2).flatten(2).mean(1))


def _user_attention_reference(model: UserAttention, x: torch.Tensor, samples: int) -> torch.Tensor:
    q, k, v = model.split(x)
    probabilities = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
    masks = _masks(0, samples, tuple(probabilities.shape[1:]), model.p)  # (T, heads, queries, keys)
    out = (probabilities[None] * masks[:, None]) @ v[None]  # (T, rows, heads, queries, width)
    return model.head(out.transpose(2, 3).flatten(3).mean(2)).transpose(0, 1)  # (rows, T, 2)


def test_sdpa_in_a_user_module_equals_plain_attention_with_the_same_masks():
    torch.manual_seed(0)
    model = UserAttention().eval()
    x = torch.randn(5, 6, 8)
    prediction = mcd.predict(model, x, samples=12, seed=SEED, return_samples=True)
    with torch.no_grad():
        reference = _user_attention_reference(model, x, 12)
    torch.testing.assert_close(prediction.samples, reference, rtol=1e-4, atol=1e-5)
    assert not model.training  # its flag was on for the passes only


def _mha_reference(attention: nn.MultiheadAttention, x, samples: int, padding=None) -> torch.Tensor:
    """Plain attention from the module's own weights, the engine's masks on the probabilities."""
    width, heads = attention.embed_dim, attention.num_heads
    rows, length, _ = x.shape
    q, k, v = F.linear(x, attention.in_proj_weight, attention.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (t.view(rows, length, heads, width // heads).transpose(1, 2) for t in (q, k, v))
    scores = q @ k.transpose(-2, -1) / math.sqrt(width // heads)
    if padding is not None:
        scores = scores.masked_fill(padding[:, None, None, :], float("-inf"))
    masks = _masks(0, samples, (heads, length, length), attention.dropout)
    out = (torch.softmax(scores, -1)[None] * masks[:, None]) @ v[None]  # (T, rows, heads, length, width/heads)
    return attention.out_proj(out.transpose(2, 3).reshape(samples, rows, length, width))


class _MHA(nn.Module):
    def __init__(self, batch_first: bool) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(8, 2, dropout=0.3, batch_first=batch_first)

    def forward(self, x):
        inputs = x if self.attention.batch_first else x.transpose(0, 1)
        padding = x[:, :, 0] > 1.0  # keys to ignore, rows' own
        out, _ = self.attention(inputs, inputs, inputs, key_padding_mask=padding)
        return (out if self.attention.batch_first else out.transpose(0, 1)).flatten(1)


@pytest.mark.parametrize("batch_first", [True, False])
def test_multihead_attention_equals_plain_attention_with_the_same_masks(batch_first):
    torch.manual_seed(1)
    model = _MHA(batch_first).eval()
    x = torch.randn(4, 5, 8)
    prediction = mcd.predict(model, x, samples=6, seed=SEED, return_samples=True)
    with torch.no_grad():
        reference = _mha_reference(model.attention, x, 6, padding=x[:, :, 0] > 1.0).flatten(2).transpose(0, 1)
    torch.testing.assert_close(prediction.samples, reference, rtol=1e-4, atol=1e-5)


def test_transformer_encoder_layer_samples_all_four_dropouts():
    """Attention dropout (layer 0), after attention (1), inside the feed-forward (2), after it (3)."""
    torch.manual_seed(2)
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.25, batch_first=True).eval()
    model = nn.Sequential(layer, nn.Flatten()).eval()
    x = torch.randn(3, 4, 8)
    samples = 5
    prediction = mcd.predict(model, x, samples=samples, seed=SEED, return_samples=True)
    with torch.no_grad():
        attended = _mha_reference(layer.self_attn, x, samples)  # (T, rows, length, width)
        h = layer.norm1(x[None] + attended * _masks(1, samples, (4, 8), 0.25)[:, None])
        inner = F.relu(layer.linear1(h)) * _masks(2, samples, (4, 16), 0.25)[:, None]
        out = layer.norm2(h + layer.linear2(inner) * _masks(3, samples, (4, 8), 0.25)[:, None])
    torch.testing.assert_close(prediction.samples, out.flatten(2).transpose(0, 1), rtol=1e-4, atol=1e-5)
    assert not any(module.training for module in model.modules())


class _Recurrent(nn.Module):
    def __init__(self, kind, batch_first=True, bidirectional=False) -> None:
        super().__init__()
        self.rnn = kind(3, 5, num_layers=3, dropout=0.4, batch_first=batch_first, bidirectional=bidirectional)

    def forward(self, x):
        out, _ = self.rnn(x if self.rnn.batch_first else x.transpose(0, 1))
        return (out if self.rnn.batch_first else out.transpose(0, 1)).flatten(1)


def _recurrent_reference(module: nn.RNNBase, x: torch.Tensor, samples: int) -> torch.Tensor:
    """Single-layer copies of each layer (test-only), the engine's masks on each output but the last."""
    kwargs = {"batch_first": True, "bidirectional": module.bidirectional}
    if isinstance(module, nn.RNN):
        kwargs["nonlinearity"] = module.nonlinearity
    directions = 2 if module.bidirectional else 1
    outputs = []
    for t in range(samples):
        h = x
        for layer in range(module.num_layers):
            if layer:
                h = h * _masks(layer - 1, samples, tuple(h.shape[1:]), module.dropout)[t]
            single = type(module)(h.shape[-1], module.hidden_size, **kwargs)
            for name, _ in single.named_parameters():
                setattr(single, name, nn.Parameter(getattr(module, name.replace("_l0", f"_l{layer}"))))
            h = single(h)[0]
        outputs.append(h.flatten(1))
    return torch.stack(outputs, dim=1)


@pytest.mark.parametrize(
    ("kind", "batch_first", "bidirectional"),
    [(nn.LSTM, True, False), (nn.GRU, False, False), (nn.RNN, True, False), (nn.LSTM, False, True)],
)
def test_stacked_recurrent_dropout_is_sampled_as_torch_defines_it(kind, batch_first, bidirectional):
    torch.manual_seed(3)
    model = _Recurrent(kind, batch_first, bidirectional).eval()
    parameters = {name: (p.data_ptr(), p.clone()) for name, p in model.named_parameters()}
    x = torch.randn(4, 6, 3)
    prediction = mcd.predict(model, x, samples=5, seed=SEED, return_samples=True)
    with torch.no_grad():
        reference = _recurrent_reference(model.rnn, x, 5)
    torch.testing.assert_close(prediction.samples, reference, rtol=1e-4, atol=1e-5)
    for name, p in model.named_parameters():  # the module ran on its own tensors and is as it was
        assert p.data_ptr() == parameters[name][0] and torch.equal(p, parameters[name][1])
    assert "forward" not in vars(model.rnn) and not model.training


def _models():
    torch.manual_seed(4)
    return {
        "sdpa": (UserAttention(), torch.randn(5, 6, 8)),
        "mha": (_MHA(True), torch.randn(5, 4, 8)),
        "encoder": (nn.Sequential(nn.TransformerEncoderLayer(8, 2, 16, dropout=0.2, batch_first=True),
                                  nn.Flatten()), torch.randn(5, 4, 8)),
        "lstm": (_Recurrent(nn.LSTM), torch.randn(5, 6, 3)),
    }


@pytest.mark.parametrize("name", ["sdpa", "mha", "encoder", "lstm"])
def test_answers_do_not_depend_on_batch_composition_and_the_model_is_untouched(name):
    model, x = _models()[name]
    model.train()  # left as the caller had it, whichever mode that is
    state = {key: value.clone() for key, value in model.state_dict().items()}
    predictor = mcd.MCPredictor(model, samples=16)
    whole = predictor.predict(x, seed=5, return_samples=True)
    alone = predictor.predict(x[3:4], seed=5, return_samples=True)
    some = predictor.predict(x[[1, 3]], seed=5, return_samples=True)
    torch.testing.assert_close(alone.samples[0], whole.samples[3], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(some.samples[1], whole.samples[3], rtol=1e-5, atol=1e-6)
    assert torch.all(whole.epistemic > 0)
    assert all(module.training for module in model.modules())
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    for module in model.modules():
        assert "forward" not in vars(module) and not module._forward_hooks and not module._forward_pre_hooks


class _OneQuery(nn.Module):
    """One query over 40 keys with scalar values: y = sum_j P_j m_j v_j / q, m_j ~ Bernoulli(q)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p
        self.keys = nn.Parameter(torch.randn(40, 4))
        self.values = nn.Parameter(torch.randn(40, 1))

    def forward(self, x):  # x: (rows, 4), the query
        rows = x.shape[0]
        out = F.scaled_dot_product_attention(
            x[:, None, None], self.keys.expand(rows, 1, 40, 4), self.values.expand(rows, 1, 40, 1),
            dropout_p=self.p if self.training else 0.0,
        )
        return out.reshape(rows, 1)


def test_attention_dropout_has_the_exact_predictive_mean_and_variance():
    """E[y] = sum_j P_j v_j and Var[y] = sum_j (P_j v_j)^2 p / q exactly (independent Bernoulli keeps); the
    T-sample estimates have standard errors sqrt(Var / T) and sqrt((k4 + 2 Var^2) / T), k4 the fourth
    cumulant, as in tests/test_exact_moments.py. Five standard errors allowed."""
    torch.manual_seed(5)
    p, samples = 0.3, 4000
    q = 1 - p
    model = _OneQuery(p)
    x = torch.randn(2, 4)
    prediction = mcd.predict(model, x, samples=samples, seed=SEED)
    with torch.no_grad():
        weights = torch.softmax(x @ model.keys.T / 2.0, dim=-1).double() * model.values.T.double()  # P_j v_j
    k2_bernoulli, k4_bernoulli = q * (1 - q), q * (1 - q) * (1 - 6 * q * (1 - q))
    for row in range(2):
        c = weights[row] / q
        mean, variance = float(weights[row].sum()), float((c**2).sum() * k2_bernoulli)
        k4 = float((c**4).sum() * k4_bernoulli)
        assert abs(float(prediction.mean[row, 0]) - mean) < 5 * math.sqrt(variance / samples)
        assert abs(float(prediction.variance[row, 0]) - variance) < 5 * math.sqrt((k4 + 2 * variance**2) / samples)


class _Noisy(nn.Module):
    def forward(self, x):
        return x + 0.1 * torch.randn_like(x) if self.training else x


class _GatedAndNoisy(UserAttention):
    def forward(self, x):
        if self.training:
            x = x + torch.rand(x.shape)
        return super().forward(x)


@pytest.mark.parametrize(
    ("model", "x", "named"),
    [
        (nn.Sequential(nn.Linear(3, 4), nn.RReLU(), nn.Dropout(0.3), nn.Linear(4, 1)).eval(), torch.randn(2, 3),
         r"1 \(RReLU\): draws random numbers in train mode that are not dropout \(F.rrelu"),
        (nn.Sequential(nn.Linear(3, 4), _Noisy(), nn.Dropout(0.3), nn.Linear(4, 1)).eval(), torch.randn(2, 3),
         r"1 \(_Noisy\): draws random numbers .*torch.randn_like"),
        (_GatedAndNoisy().eval(), torch.randn(2, 6, 8),
         r"<model> \(_GatedAndNoisy\): attention dropout, F.scaled_dot_product_attention\(dropout_p=0.4\) fires in"
         r" train mode but is not sampled: its forward also draws other random numbers"),
    ],
)
def test_randomness_that_is_not_sampled_is_named_with_its_cause(model, x, named):
    rng = torch.get_rng_state()
    with pytest.raises(ValueError, match=named):
        mcd.predict(model, x, samples=4, seed=0)
    assert torch.equal(torch.get_rng_state(), rng)  # the train-mode probe drew nothing from torch's generator
    if isinstance(model, _GatedAndNoisy):  # its attention dropout is all the model has: nothing left to sample
        with pytest.raises(ValueError, match="(?s)" + named + ".*nothing else in the model is sampled"):
            mcd.predict(model, x, samples=4, seed=0, strict=False)
    else:
        with pytest.warns(UserWarning, match=named):
            mcd.predict(model, x, samples=4, seed=0, strict=False)
    assert not any(module.training for module in model.modules())


def test_attention_dropout_alone_is_sampled_not_reported_missing():
    torch.manual_seed(6)
    prediction = mcd.predict(UserAttention(p=0.5), torch.randn(3, 5, 8), samples=16, task="classification", seed=0)
    assert torch.all(prediction.mutual_information > 0)


def test_a_gated_module_is_switched_back_after_an_error_and_under_concurrent_calls():
    torch.manual_seed(7)
    model = UserAttention().eval()
    predictor = mcd.MCPredictor(model, samples=8)
    x = torch.randn(6, 5, 8)
    expected = predictor.predict(x, seed=1).mean
    answers = {}

    def call(index):
        answers[index] = mcd.MCPredictor(model, samples=8).predict(x, seed=1).mean

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert all(torch.equal(answers[i], expected) for i in range(4))
    assert not model.training
    with pytest.raises(ValueError, match="must be numeric"):
        predictor.predict(np.array([["a"]]))
    with pytest.raises(Exception):
        predictor.predict(torch.randn(2, 5, 7))  # the wrong width fails inside the forward
    assert not model.training


def test_mc_dropout_switches_on_attention_and_stacked_recurrent_dropout():
    model = nn.ModuleDict({
        "attention": nn.MultiheadAttention(4, 2, dropout=0.1), "plain": nn.MultiheadAttention(4, 2),
        "stacked": nn.LSTM(4, 4, num_layers=2, dropout=0.2), "single": nn.LSTM(4, 4),
        "encoder": nn.TransformerEncoderLayer(4, 2, 8), "norm": nn.BatchNorm1d(4),
    }).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TransformerEncoderLayer's note about nested tensors
        with mcd.mc_dropout(model):
            on = {name for name, module in model.named_children() if module.training}
    assert on == {"attention", "stacked", "encoder"}
    assert not any(module.training for module in model.modules())

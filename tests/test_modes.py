"""MC mode switches on exactly the stochastic modules and restores every mode."""

import pytest
import torch
from torch import nn

import mcdropout as mcd

TORCH_DROPOUTS = [nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout]


def _zoo() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.Dropout2d(0.2),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 16),
        nn.BatchNorm1d(16),
        nn.ReLU(),
        nn.Dropout(0.3),
        nn.AlphaDropout(0.1),
        nn.FeatureAlphaDropout(0.1),
        mcd.DropConnect(nn.Linear(16, 3), 0.2),
    )


def test_mc_dropout_switches_exactly_the_stochastic_modules():
    model = _zoo().train()
    with mcd.mc_dropout(model):
        for module in model.modules():
            assert module.training == mcd.is_stochastic(module), type(module).__name__
    assert all(m.training for m in model.modules())


@pytest.mark.parametrize("kind", TORCH_DROPOUTS)
def test_every_torch_dropout_class_is_stochastic_and_sampled(kind):
    shape = {nn.Dropout1d: (3, 5), nn.Dropout2d: (3, 4, 4), nn.Dropout3d: (3, 2, 2, 2)}.get(kind, (6,))
    model = nn.Sequential(kind(0.5), nn.Flatten(), nn.Linear(int(torch.tensor(shape).prod()), 2))
    assert mcd.is_stochastic(model[0])
    pred = mcd.predict(model, torch.randn(2, *shape), samples=20, seed=0)
    assert torch.all(pred.epistemic > 0)


def test_batchnorm_statistics_unchanged_by_predictions():
    model = _zoo()
    model.train()
    model(torch.randn(8, 1, 6, 6))  # give the running statistics non-trivial values
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    predictor = mcd.MCPredictor(model, task="classification", samples=30)
    for seed in range(3):
        predictor.predict(torch.randn(5, 1, 6, 6), seed=seed)
    after = model.state_dict()
    for key, value in before.items():
        assert torch.equal(value, after[key]), key


def test_a_model_computed_layer_by_layer_answers_alike_in_either_mode_and_keeps_it():
    """Linear, ReLU and Dropout run as the engine's own steps, with no module called and so no mode
    switched; the answers do not depend on the mode the caller left the model in."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 2))
    x = torch.randn(3, 4)
    answers = {}
    for training in (True, False):
        model.train(training)
        predictor = mcd.MCPredictor(model, samples=16)
        predictor.predict(x, seed=0)  # the first call probes the model
        answers[training] = predictor.predict(x, seed=1).mean
        assert all(module.training == training for module in model.modules())
    assert torch.equal(answers[True], answers[False])


def test_modes_restored_after_an_error_inside_the_forward():
    class Exploding(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm1d(3)
            self.drop = nn.Dropout(0.5)
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            if self.calls > 2:  # the probe passes (train mode, then sampled), the real run fails
                raise RuntimeError("boom")
            return self.drop(self.bn(x))

    model = Exploding()
    model.train()
    modes = [m.training for m in model.modules()]
    with pytest.raises(RuntimeError, match="boom"):
        mcd.predict(model, torch.randn(4, 3), samples=10, seed=0)
    assert [m.training for m in model.modules()] == modes
    assert "forward" not in vars(model.drop)  # the sampler's replacement forward is gone
    model.eval()
    with pytest.raises(ZeroDivisionError):
        with mcd.mc_dropout(model):
            1 / 0
    assert not any(m.training for m in model.modules())
    from mcdropout.engine._sampler import active_sampler

    assert active_sampler() is None


class _Functional(nn.Module):
    """The same network as _modules_version(), its dropout called as F.dropout / F.dropout1d."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 2)

    def forward(self, x):
        x = nn.functional.dropout(torch.relu(self.a(x)), 0.3, self.training)
        x = nn.functional.dropout1d(torch.relu(self.b(x)).unsqueeze(-1), 0.2, self.training).squeeze(-1)
        return self.c(x)


class _SubclassedDropout(nn.Dropout):
    """A dropout subclass: its calls reach the sampler through the function mode."""


def _modules_version(functional: _Functional, first: type[nn.Module]) -> nn.Module:
    class Modules(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = functional.a, functional.b, functional.c
            self.drop_a, self.drop_b = first(0.3), nn.Dropout1d(0.2)

        def forward(self, x):
            x = self.drop_a(torch.relu(self.a(x)))
            return self.c(self.drop_b(torch.relu(self.b(x)).unsqueeze(-1)).squeeze(-1))

    return Modules()


@pytest.mark.parametrize("first", [nn.Dropout, _SubclassedDropout])
def test_module_functional_and_subclassed_dropout_draw_the_same_masks(first):
    """Modules get a replaced forward, functional calls and subclasses go through the function mode:
    the masks are numbered by call order either way, so the three networks answer alike."""
    torch.manual_seed(0)
    functional = _Functional()
    modules = _modules_version(functional, first)
    x = torch.randn(5, 6)
    expected = mcd.predict(functional, x, samples=40, seed=3)
    got = mcd.predict(modules, x, samples=40, seed=3)
    torch.testing.assert_close(got.mean, expected.mean, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(got.epistemic, expected.epistemic, rtol=1e-6, atol=1e-9)
    assert torch.all(got.epistemic > 0)
    assert all("forward" not in vars(m) for m in modules.modules())


def test_dropconnect_keeps_trained_weights_and_arguments():
    conv = nn.Conv2d(2, 4, 3, stride=2, padding=1, groups=2, bias=True)
    weight = conv.weight.detach().clone()
    wrapped = mcd.DropConnect(conv, 0.4).eval()
    assert torch.equal(wrapped.layer.weight, weight)
    x = torch.randn(3, 2, 7, 7)
    assert torch.equal(wrapped(x), conv(x))  # eval: the trained layer unchanged
    pred = mcd.predict(nn.Sequential(wrapped, nn.Flatten()), x, samples=200, seed=0)
    assert pred.mean.shape == (3, 4 * 4 * 4)
    # dropping weights with 1/(1-p) scaling leaves the mean output unbiased
    assert torch.allclose(pred.mean, conv(x).detach().flatten(1).double(), atol=5 * pred.std.max().item() / 200**0.5)
    with pytest.raises(TypeError, match="DropConnect wraps"):
        mcd.DropConnect(nn.ReLU())


class _TimeMajor(nn.Module):
    """Takes batch-first input like every engine input and runs LockedDropout on (time, batch, features)."""

    def __init__(self):
        super().__init__()
        self.drop = mcd.LockedDropout(0.5, batch_first=False)

    def forward(self, x):
        return self.drop(x.transpose(0, 1)).transpose(0, 1)


@pytest.mark.parametrize("model", [nn.Sequential(mcd.LockedDropout(0.5)), _TimeMajor()], ids=["batch_first", "time_major"])
def test_locked_dropout_shares_one_mask_across_time(model):
    x = torch.rand(3, 7, 5) + 1.0  # no zeros, so a dropped feature is exactly 0
    pred = mcd.predict(model, x, samples=16, seed=1, return_samples=True)
    dropped = pred.samples == 0  # (rows, T, time, features)
    assert dropped.any() and (~dropped).any()
    assert torch.equal(dropped, dropped[:, :, :1].expand_as(dropped))  # same features at every step
    assert torch.equal(dropped, dropped[:1].expand_as(dropped))  # shared masks: same for every row


def test_own_layers_behave_like_dropout_outside_the_engine():
    torch.manual_seed(0)
    locked = mcd.LockedDropout(0.5)
    x = torch.ones(4, 6, 8)
    assert torch.equal(locked.eval()(x), x)
    out = locked.train()(x)
    assert set(out.unique().tolist()) <= {0.0, 2.0}
    assert torch.equal(out, out[:, :1].expand_as(out))
    linear = nn.Linear(8, 3)
    connect = mcd.DropConnect(linear, 0.5).train()
    assert not torch.equal(connect(x[0]), linear(x[0]))

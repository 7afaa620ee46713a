"""How the engine runs: one batched computation, the prefix once, streaming statistics."""


import pytest
import torch
from torch import nn

import mcdropout as mcd
from mcdropout.engine._predictor import _split_sequential


class _CountRows(nn.Module):
    """Identity that counts the rows and calls it sees."""

    def __init__(self):
        super().__init__()
        self.rows = 0
        self.calls = 0

    def forward(self, x):
        self.rows += x.shape[0]
        self.calls += 1
        return x


def _mlp(counter: nn.Module) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Sequential(nn.Linear(5, 16), counter, nn.ReLU()),  # nested: the split descends into it
        nn.Dropout(0.3),
        nn.Linear(16, 16),
        nn.ReLU(),
        nn.Dropout(0.3),
        nn.Linear(16, 2),
    )


def test_samples_run_as_few_batched_passes_not_a_loop():
    after = _CountRows()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 16), nn.Dropout(0.3), after, nn.Linear(16, 1))
    mcd.predict(model, torch.randn(10, 5), samples=100, seed=0)
    assert after.rows == 1 + 2 + 100 * 10  # probes (train mode: 1 row; sampled: 2 replicas) + every replica once
    assert after.calls == 3  # probes + one pass: all 1000 replicas at once


def test_chunks_follow_the_row_budget():
    after = _CountRows()
    model = nn.Sequential(nn.Linear(5, 16), nn.Dropout(0.3), after, nn.Linear(16, 1))
    mcd.predict(model, torch.randn(10, 5), samples=100, seed=0, chunk_rows=250)
    assert after.rows == 1 + 2 + 1000
    assert after.calls == 2 + 4  # 25 samples x 10 rows per pass


def test_cpu_passes_are_cache_sized_by_default():
    """Without chunk_rows, a CPU pass holds as many replicas as keep the widest activation within 2 MiB."""
    after = _CountRows()
    model = nn.Sequential(nn.Linear(5, 4096), nn.Dropout(0.3), after, nn.Linear(4096, 1))  # 16 KiB per replica
    mcd.predict(model, torch.randn(10, 5), samples=100, seed=0, device="cpu")
    assert after.rows == 1 + 2 + 1000
    assert after.calls == 2 + 9  # 12 samples x 10 rows a pass (120 <= 2 MiB / 16 KiB = 128): 9 passes


def test_prefix_before_first_dropout_runs_once_per_row():
    """Layers before the first stochastic layer see each input row once, not T times (+1 probe row, +1 for
    the train-mode probe)."""
    counter = _CountRows()
    mcd.predict(_mlp(counter), torch.randn(12, 5), samples=200, seed=0)
    assert counter.rows == 1 + 1 + 12


def test_prefix_sharing_gives_the_answer_of_the_unsplit_model():
    counter = _CountRows()
    model = _mlp(counter)
    x = torch.randn(6, 5)

    class Unsplit(nn.Module):  # same layers, not a Sequential: shared module by module (mcdropout.prefix)
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, inputs):
            return self.inner(inputs)

    shared = mcd.predict(model, x, samples=50, seed=1)
    assert counter.rows == 1 + 1 + 6  # train-mode probe, probe, the rows once
    modules = mcd.predict(Unsplit(), x, samples=50, seed=1)
    assert counter.rows == 8 + 1 + 2 + 1 + 2 + 6  # train-mode probe, probe pass, the search (rows, replicas), the rows once
    model[0].register_forward_hook(lambda *_: None)  # a hooked module is not shared: every replica runs it
    whole = mcd.predict(Unsplit(), x, samples=50, seed=1)
    assert counter.rows == 20 + 1 + 2 + 1 + 50 * 6
    for other in (modules, whole):
        assert torch.allclose(shared.mean, other.mean, atol=1e-6 * float(shared.std.max()))
        assert torch.allclose(shared.epistemic, other.epistemic, rtol=1e-5)


class _Encoded(nn.Module):
    """Not a Sequential: an encoder, then dropout and a head; ``twice`` calls the encoder again after dropout."""

    def __init__(self, twice: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.encoder = nn.Sequential(nn.Linear(6, 32), nn.ReLU())
        self.counter = _CountRows()
        self.drop = nn.Dropout(0.4)
        self.head = nn.Linear(32, 3)
        self.twice = twice

    def forward(self, x):
        h = self.counter(self.encoder(x * 2.0))
        h = self.drop(h)
        if self.twice:
            h = h + self.encoder(x * 2.0)
        return self.head(torch.relu(h))


def test_modules_before_the_first_dropout_of_any_model_run_once_per_row():
    """A model that is not a Sequential shares the modules that finish before its first dropout: they see
    each row once per block, and the answers are those of running every replica through them."""
    x = torch.randn(9, 6)
    model = _Encoded()
    seen = []
    model.encoder[0].register_forward_hook(lambda _m, args, _o: seen.append(args[0].shape[0]))
    predictor = mcd.MCPredictor(model, samples=40, chunk_rows=100)  # 11 samples x 9 rows a pass: 4 passes
    shared = predictor.predict(x, seed=3, return_samples=True)
    assert predictor._probed[(6,)].shared.modules == (model.encoder,)
    assert seen == [1, 2, 1, 2, 9]  # probes (train mode: one row; two replicas), search (one row, two replicas), then 9 rows once
    model.counter.register_forward_hook(lambda *_: None)  # hooks on what follows change nothing
    reference = _Encoded()
    reference.encoder.register_forward_hook(lambda *_: None)  # hooked: every replica runs it
    whole = mcd.MCPredictor(reference, samples=40, chunk_rows=100)
    unshared = whole.predict(x, seed=3, return_samples=True)
    assert whole._probed[(6,)].shared is None
    torch.testing.assert_close(shared.samples, unshared.samples, rtol=1e-6, atol=1e-6)
    assert torch.equal(shared.num_samples, unshared.num_samples)


def test_a_module_called_again_after_dropout_is_not_shared():
    model = _Encoded(twice=True)
    predictor = mcd.MCPredictor(model, samples=20)
    answer = predictor.predict(torch.randn(4, 6), seed=0)
    assert predictor._probed[(6,)].shared is None
    assert model.counter.rows == 1 + 2 + 1 + 2 + 20 * 4  # probes (train mode, sampled), the search, every replica
    assert torch.all(answer.epistemic > 0)


def test_a_leading_dropout_with_hooks_still_runs_them():
    """A dropout that opens the sampled part is masked while replicating, unless it has hooks to run."""
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 1))
    x = torch.randn(3, 5)
    fused = mcd.predict(model, x, samples=20, seed=4)
    seen = []
    model[2].register_forward_hook(lambda module, args, output: seen.append(tuple(output.shape)))
    hooked = mcd.predict(model, x, samples=20, seed=4)
    assert (20 * 3, 8) in seen
    torch.testing.assert_close(hooked.mean, fused.mean, rtol=0, atol=0)
    torch.testing.assert_close(hooked.epistemic, fused.epistemic, rtol=0, atol=0)


def test_functional_dropout_in_a_leading_layer_turns_sharing_off():
    class Custom(nn.Module):
        def forward(self, x):
            return nn.functional.dropout(x, 0.5, self.training)

    counter = _CountRows()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), counter, Custom(), nn.Linear(8, 8), nn.Dropout(0.1), nn.Linear(8, 1))
    prefix, _ = _split_sequential(model)
    assert len(prefix) == 4  # nothing in the first four children is a stochastic module...
    pred = mcd.predict(model, torch.randn(4, 3), samples=20, seed=0)
    assert torch.all(pred.epistemic > 0)
    # ...but Custom drops out: after the probe found that, the Sequential split is off and every replica
    # runs the model; only the first Linear is shared, module by module (the counter holds no parameters:
    # train-mode probe 1 (which finds Custom, so the split is off from the start), probe 2, search 1 + 2,
    # the rows' pass 4, every replica)
    assert counter.rows == 1 + 2 + 1 + 2 + 4 + 20 * 4


def test_statistics_stream_without_keeping_samples():
    model = _mlp(_CountRows())
    pred = mcd.predict(model, torch.randn(3, 5), samples=500, seed=0, chunk_rows=64)
    assert pred.samples is None
    assert torch.equal(pred.num_samples, torch.full((3,), 500))
    kept = mcd.predict(model, torch.randn(3, 5), samples=500, seed=0, chunk_rows=64, return_samples=True)
    assert kept.samples.shape == (3, 500, 2)
    assert torch.allclose(kept.mean, kept.samples.double().mean(dim=1), atol=1e-6)
    assert torch.allclose(kept.epistemic, kept.samples.double().var(dim=1, unbiased=False), rtol=1e-5)


def test_classification_statistics_match_their_definitions():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3))
    pred = mcd.predict(model, torch.randn(5, 4) * 3, samples=300, seed=0, task="classification", return_samples=True)
    probs = pred.samples.double()  # (rows, T, classes)
    mean = probs.mean(dim=1)
    entropy = -(mean * mean.log()).sum(-1)
    expected = -(probs * probs.log()).sum(-1).mean(1)
    votes = torch.nn.functional.one_hot(probs.argmax(-1), 3).sum(1)
    assert torch.allclose(pred.probs, mean, atol=1e-6)
    assert torch.allclose(pred.probs.sum(-1), torch.ones(5, dtype=torch.float64))
    assert torch.equal(pred.label, mean.argmax(-1))
    assert torch.allclose(pred.entropy, entropy, atol=1e-6)
    assert torch.allclose(pred.expected_entropy, expected, atol=1e-6)
    assert torch.allclose(pred.mutual_information, entropy - expected, atol=1e-6)
    assert torch.all(pred.mutual_information >= 0)
    assert torch.allclose(pred.variation_ratio, 1 - votes.max(-1).values.double() / 300.0)


def test_single_logit_classifier_is_binary():
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 1))
    pred = mcd.predict(model, torch.randn(3, 4), samples=20, seed=0, task="classification")
    assert pred.probs.shape == (3, 2)
    assert torch.allclose(pred.probs.sum(-1), torch.ones(3, dtype=torch.float64))


def test_integer_inputs_reach_an_embedding_unchanged():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(10, 4), mcd.LockedDropout(0.3), nn.Flatten(), nn.Linear(12, 1))
    tokens = torch.tensor([[1, 2, 3], [4, 5, 6]])
    pred = mcd.predict(model, tokens, samples=30, seed=0)
    assert pred.mean.shape == (2, 1) and torch.all(pred.epistemic > 0)


def test_predictor_reuses_its_plan_and_restores_nothing_it_did_not_touch():
    model = _mlp(_CountRows()).train()
    predictor = mcd.MCPredictor(model, samples=16)
    first = predictor.predict(torch.randn(4, 5), seed=0)
    second = predictor.predict(torch.randn(4, 5), seed=0, samples=32)
    assert first.num_samples[0] == 16 and second.num_samples[0] == 32
    assert all(m.training for m in model.modules())


def test_single_channel_images_run_row_major_whatever_their_strides():
    """numpy gives (rows, 1, H, W) a channel stride of 1, which torch would read as channels-last.

    The engine hands the model row-major inputs, so the convolutions answer row-major and the
    Flatten after them is a view, not a copy per chunk; the answer is the same either way.
    """
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Dropout2d(0.25), nn.Flatten(), nn.Linear(64, 1))
    seen = []
    model[3].register_forward_hook(lambda _module, args, _output: seen.append(args[0].is_contiguous()))
    images = torch.randn(5, 4, 4)
    channels_last = images.unsqueeze(-1).permute(0, 3, 1, 2)  # shape (5, 1, 4, 4), strides (16, 1, 4, 1)
    assert channels_last.is_contiguous(memory_format=torch.channels_last)
    numpy_rows = channels_last.numpy()
    answers = [mcd.predict(model, x, samples=20, seed=3) for x in (channels_last, numpy_rows, images.unsqueeze(1))]
    assert all(seen)
    for answer in answers[1:]:
        assert torch.equal(answer.mean, answers[0].mean) and torch.equal(answer.epistemic, answers[0].epistemic)


def _channel_cnn(dropout: nn.Module) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), dropout, nn.Flatten(), nn.Linear(6 * 16, 8),
                         nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 3))


def test_channel_dropout_before_a_linear_is_folded_with_the_same_answer():
    """Dropout2d -> Flatten -> Linear is computed from per-channel shares, not per replica; the masks and
    the answers are those of the unfolded pass (a hook on the Flatten keeps it unfolded)."""
    x = torch.randn(7, 1, 4, 4)
    for dropout, masks in [(nn.Dropout2d(0.3), "shared"), (nn.Dropout2d(0.3), "per_row"), (nn.Dropout2d(0.0), "shared"),
                           (nn.Dropout2d(1.0), "shared")]:
        folded_model = _channel_cnn(dropout)
        flattened = []
        folded = mcd.MCPredictor(folded_model, samples=40, masks=masks, task="classification")
        assert folded._structure.head is not None
        plain_model = _channel_cnn(dropout)
        plain_model[3].register_forward_hook(lambda _m, args, _o, seen=flattened: seen.append(args[0].shape[0]))
        plain = mcd.MCPredictor(plain_model, samples=40, masks=masks, task="classification")
        assert plain._structure.head is None
        a, b = folded.predict(x, seed=5, return_samples=True), plain.predict(x, seed=5, return_samples=True)
        assert flattened and max(flattened) == 40 * 7  # the unfolded pass flattens every replica
        assert torch.allclose(a.samples, b.samples, atol=1e-6), (dropout, masks)
        assert torch.allclose(a.probs, b.probs, atol=1e-6)


def test_a_module_given_a_batch_dependent_input_is_not_shared():
    """The probe's sampled pass must hand a shared module its row input repeated; here forward scales the
    input by the batch size, so replaying the row pass's output would be wrong."""

    class BatchScaled(_Encoded):
        def forward(self, x):
            return super().forward(x * len(x))

    predictor = mcd.MCPredictor(BatchScaled(), samples=20)
    predictor.predict(torch.randn(3, 6), seed=0)
    assert predictor._probed[(6,)].shared is None


def test_a_predict_leaves_every_parameter_and_buffer_as_it_was(tmp_path):
    """Values, dtype, device, strides, requires_grad and the training flags are the user's after a call;
    the state dict still saves with safetensors (which refuses non-contiguous tensors)."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Dropout2d(0.25), nn.Flatten(), nn.Linear(32, 16), nn.ReLU(), nn.Dropout(0.25),
                          nn.Linear(16, 3))
    model.train()
    before = {name: (t.clone(), t.dtype, t.device, t.stride(), t.requires_grad) for name, t in model.state_dict(keep_vars=True).items()}
    modes = [m.training for m in model.modules()]
    mcd.MCPredictor(model, samples=30, task="classification").predict(torch.randn(6, 1, 4, 4), seed=1)
    for name, tensor in model.state_dict(keep_vars=True).items():
        value, dtype, device, stride, grad = before[name]
        assert torch.equal(tensor, value) and tensor.dtype == dtype and tensor.device == device, name
        assert tensor.stride() == stride and tensor.requires_grad == grad, name
    assert [m.training for m in model.modules()] == modes
    save_file(model.state_dict(), tmp_path / "weights.safetensors")


def test_a_class_with_minus_infinite_logits_has_probability_zero_and_finite_entropy():
    class Masked(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3))

        def forward(self, x):
            return self.body(x) + torch.tensor([0.0, 0.0, float("-inf")])

    torch.manual_seed(0)
    pred = mcd.predict(Masked(), torch.randn(5, 4), samples=50, seed=0, task="classification")
    assert torch.all(pred.probs[:, 2] == 0)
    assert torch.all(torch.isfinite(pred.entropy)) and torch.all(torch.isfinite(pred.expected_entropy))
    assert torch.all(pred.label != 2)


class _Constant(nn.Module):
    """Answers with its own buffer for every row: an output that the engine must not write into."""

    def __init__(self, width: int):
        super().__init__()
        self.register_buffer("value", torch.linspace(-1.0, 1.0, width))

    def forward(self, x):
        return x + self.value.expand(x.shape[0], -1) if x.shape[-1] == self.value.shape[0] else x


def _tail_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(6, 32), nn.ReLU(),
        nn.Sequential(nn.Dropout(0.3), nn.Linear(32, 32), nn.GELU(), nn.Identity()),
        nn.AlphaDropout(0.2), nn.Linear(32, 32), nn.ReLU(inplace=True), nn.Dropout(0.4), nn.Linear(32, 3),
    )


def test_the_tail_writes_into_no_tensor_of_the_model():
    """Layers the engine computes itself work in place on activations it made; a layer's own output
    (here a module that can return its buffer) is never written into."""
    constant = _Constant(8)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), constant, nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 2))
    before = constant.value.clone()
    mcd.predict(model, torch.randn(3, 4), samples=30, seed=0)
    assert torch.equal(constant.value, before)


@pytest.mark.parametrize("case", ["folded head", "thinned chain"])
def test_predictions_follow_weights_changed_between_calls(case):
    """The folded head keeps a per-channel copy of a weight between calls, and the thinned chain gathers
    from each Linear's weight on every call; changing the weight in place or replacing it must not leave
    an old copy in use."""
    if case == "folded head":
        make, task, x = (lambda: _channel_cnn(nn.Dropout2d(0.3))), "classification", torch.randn(4, 1, 4, 4)
    else:
        make, task, x = _tail_model, "regression", torch.randn(4, 6)

    def answer(predictor):
        prediction = predictor.predict(x, seed=2)
        return prediction.probs if task == "classification" else prediction.mean

    model = make()
    predictor = mcd.MCPredictor(model, samples=20, task=task)
    before = answer(predictor)
    with torch.no_grad():
        model[4].weight.mul_(3.0)
    in_place = answer(predictor)
    model[4].weight = nn.Parameter(model[4].weight.detach() * -1.0)
    replaced = answer(predictor)
    assert not torch.allclose(before, in_place)
    for got, scale in ((in_place, 3.0), (replaced, -3.0)):
        fresh = make()
        with torch.no_grad():
            fresh[4].weight.mul_(scale)
        torch.testing.assert_close(got, answer(mcd.MCPredictor(fresh, samples=20, task=task)), rtol=1e-5, atol=1e-6)


def test_hooks_on_a_tail_layer_still_run():
    model = _tail_model()
    seen = []
    model[4].register_forward_hook(lambda module, args, output: seen.append(tuple(output.shape)))
    mcd.predict(model, torch.randn(3, 6), samples=20, seed=0)
    assert (20 * 3, 32) in seen

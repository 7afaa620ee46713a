"""Hugging Face models in the engine: attention dropout sampled (eager and sdpa), named inputs, ModelOutput.

Tiny randomly initialised models from configs: nothing is downloaded. Hidden dropout is 0 and
attention dropout 0.5, so every bit of uncertainty comes from attention dropout, which each
attention class switches on through its own ``training`` flag. The eager path drops the
probabilities with ``F.dropout`` and the sdpa path asks ``F.scaled_dot_product_attention`` for
dropout; both get the engine's (heads, queries, keys) masks, so both answer the same numbers.
"""

import os

import pytest
import torch

import mcdropout as mcd

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

ROWS, LENGTH, SAMPLES = 3, 8, 8


def _build(arch: str, implementation: str, hidden: float = 0.0, attention: float = 0.5):
    torch.manual_seed(0)
    if arch == "bert":
        config = transformers.BertConfig(
            vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
            max_position_embeddings=16, num_labels=3, hidden_dropout_prob=hidden, attention_probs_dropout_prob=attention,
        )
        model_class = transformers.BertForSequenceClassification
    elif arch == "distilbert":
        config = transformers.DistilBertConfig(
            vocab_size=50, dim=16, n_layers=2, n_heads=2, hidden_dim=32, max_position_embeddings=16, num_labels=3,
            dropout=hidden, attention_dropout=attention, seq_classif_dropout=hidden,
        )
        model_class = transformers.DistilBertForSequenceClassification
    elif arch == "gpt2":
        config = transformers.GPT2Config(
            vocab_size=50, n_embd=16, n_layer=2, n_head=2, n_positions=16, num_labels=3, pad_token_id=0,
            resid_pdrop=hidden, embd_pdrop=hidden, attn_pdrop=attention, summary_first_dropout=hidden,
        )
        model_class = transformers.GPT2ForSequenceClassification
    else:
        config = transformers.ViTConfig(
            image_size=8, patch_size=4, num_channels=1, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=32, num_labels=3, hidden_dropout_prob=hidden, attention_probs_dropout_prob=attention,
        )
        model_class = transformers.ViTForImageClassification
    config._attn_implementation = implementation
    return model_class(config).eval()


def _inputs(arch: str):
    generator = torch.Generator().manual_seed(1)
    if arch == "vit":
        return torch.randn(ROWS, 1, 8, 8, generator=generator)
    ids = torch.randint(1, 50, (ROWS, LENGTH), generator=generator)
    mask = torch.ones(ROWS, LENGTH, dtype=torch.long)
    mask[1, 5:] = 0  # a padded row
    ids[1, 5:] = 0
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("arch", ["bert", "distilbert", "gpt2", "vit"])
def test_attention_dropout_is_sampled_alike_in_eager_and_sdpa(arch):
    answers = {}
    for implementation in ("eager", "sdpa"):
        model = _build(arch, implementation)
        state = {key: value.clone() for key, value in model.state_dict().items()}
        prediction = mcd.predict(model, _inputs(arch), samples=SAMPLES, task="classification", seed=3,
                                 return_samples=True)
        assert torch.all(prediction.mutual_information > 0), implementation  # attention dropout alone
        answers[implementation] = prediction.samples
        # the model is as it was: parameters and buffers, modes, attention implementation
        assert model.config._attn_implementation == implementation
        assert not any(module.training for module in model.modules())
        assert all(torch.equal(value, state[key]) for key, value in model.state_dict().items())
        assert all("forward" not in vars(module) and not module._forward_hooks for module in model.modules())
    torch.testing.assert_close(answers["eager"], answers["sdpa"], rtol=1e-4, atol=1e-5)


def test_padded_rows_are_answered_independently_of_their_batch():
    model = _build("bert", "sdpa", hidden=0.1)
    batch = _inputs("bert")
    predictor = mcd.MCPredictor(model, task="classification", samples=SAMPLES)
    whole = predictor.predict(batch, seed=4, return_samples=True)
    alone = predictor.predict({name: tensor[1:2] for name, tensor in batch.items()}, seed=4, return_samples=True)
    torch.testing.assert_close(alone.samples[0], whole.samples[1], rtol=1e-5, atol=1e-6)
    key = tuple(predictor.prepare_input(batch).shape[1:])
    shared = predictor._probed[key].shared  # the embeddings run once per row, not once per sample
    assert shared is not None and model.bert.embeddings.word_embeddings in shared.modules
    # padding is honoured: the padded positions' ids do not change the padded row's answer
    changed = {name: tensor.clone() for name, tensor in batch.items()}
    changed["input_ids"][1, 5:] = 7
    again = predictor.predict(changed, seed=4, return_samples=True)
    torch.testing.assert_close(again.samples[1], whole.samples[1], rtol=1e-5, atol=1e-6)


def test_model_outputs_are_read_by_the_documented_rule():
    model = _build("bert", "sdpa", hidden=0.1)
    batch = _inputs("bert")
    default = mcd.predict(model, batch, samples=SAMPLES, task="classification", seed=2)
    chosen = mcd.predict(model, batch, samples=SAMPLES, task="classification", seed=2, output="logits")
    assert torch.equal(default.probs, chosen.probs)
    with pytest.raises(ValueError, match=r"without 'scores' \(it has 'logits'\); pass one of them as output="):
        mcd.predict(model, batch, samples=SAMPLES, task="classification", seed=2, output="scores")

    class AsTuple(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, input_ids, attention_mask):
            return (self.inner(input_ids=input_ids, attention_mask=attention_mask).logits, input_ids)

    from_tuple = mcd.predict(AsTuple(), batch, samples=SAMPLES, task="classification", seed=2, output=0)
    torch.testing.assert_close(from_tuple.probs, default.probs)
    with pytest.raises(ValueError, match="output must be"):
        mcd.predict(model, batch, samples=SAMPLES, output=1.5)


def test_named_inputs_are_checked_name_by_name():
    model = _build("bert", "sdpa")
    batch = _inputs("bert")
    with pytest.raises(ValueError, match=r"same number of rows .*'input_ids': 3, 'attention_mask': 2"):
        mcd.predict(model, {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"][:2]})
    with pytest.raises(ValueError, match=r"input names must be keyword names"):
        mcd.predict(model, {"input ids": batch["input_ids"]})
    with pytest.raises(ValueError, match=r"inputs\['input_ids'\] must be numeric"):
        mcd.predict(model, {"input_ids": [["a", "b"]]})
    prepared = mcd.MCPredictor(model).prepare_input(batch)
    assert prepared.tensors["input_ids"].dtype == torch.int64  # token ids are not cast


def test_a_token_id_model_like_a_bundle_is_sampled_with_no_extra_step():
    """A module taking (rows, length) token ids and returning a ModelOutput, as a bundle wraps a model."""
    inner = _build("distilbert", "sdpa", hidden=0.1)

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = inner

        def forward(self, ids):
            return self.model(input_ids=ids, attention_mask=(ids != 0).long())

    ids = _inputs("distilbert")["input_ids"]
    predictor = mcd.MCPredictor(Wrapped().eval(), task="classification", samples=SAMPLES)
    whole = predictor.predict(ids, seed=9, return_samples=True)
    alone = predictor.predict(ids[2:3], seed=9, return_samples=True)
    torch.testing.assert_close(alone.samples[0], whole.samples[2], rtol=1e-5, atol=1e-6)
    assert torch.all(whole.mutual_information > 0)

"""Hugging Face models as text bundles: made from a save_pretrained folder, loaded with their tokenizer and no
network, built only from transformers' own classes, answering text with rows that do not depend on their batch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mcdropout.bundle import TOKENIZER, BundleError, TextError, create_pretrained, load_bundle
from tests.conftest import MODELS, ROOT, edit_manifest

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

WORDS = "the a good bad movie film great awful plot is was".split()
TEXTS = ["good movie", "the plot was awful", "a great film", "bad"]


def _save_pretrained(folder: Path) -> Path:
    """A tiny BERT classifier and a word-level tokenizer, as save_pretrained writes them (built here, no download)."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    folder.mkdir(parents=True)
    vocabulary = {word: index for index, word in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *WORDS])}
    tokenizer = Tokenizer(models.WordLevel(vocabulary, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                             special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tokenizer.save(str(folder / TOKENIZER))
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=len(vocabulary), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=32, num_labels=2, hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.3,
        pad_token_id=0, id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1})
    transformers.BertForSequenceClassification(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    return _save_pretrained(tmp_path_factory.mktemp("hf") / "pretrained")


@pytest.fixture(scope="module")
def made(pretrained, tmp_path_factory) -> Path:
    return create_pretrained(pretrained, tmp_path_factory.mktemp("bundles") / "tiny-bert", max_length=12).path


def _copy(made: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(made, tmp_path / made.name))


def test_a_save_pretrained_folder_becomes_a_text_bundle(made):
    assert sorted(p.name for p in made.iterdir()) == ["manifest.json", TOKENIZER, "weights.safetensors"]
    manifest = json.loads((made / "manifest.json").read_text())
    assert manifest["architecture"]["name"] == "transformers"
    assert manifest["architecture"]["config"]["model_class"] == "BertForSequenceClassification"
    assert manifest["input"] == {"shape": [12], "feature_names": None, "text": {"tokenizer": TOKENIZER, "pad_id": 0}}
    assert manifest["outputs"]["classes"] == ["negative", "positive"]
    bundle = load_bundle(made)
    result = bundle.answer(TEXTS, samples=16, seed=3)
    assert result.probs.shape == (4, 2) and np.allclose(result.probs.sum(axis=1), 1)
    assert (result.mutual_information > 0).all()  # the dropout is sampled
    assert not np.array_equal(result.probs, bundle.answer(TEXTS, samples=16, seed=4).probs)


def test_a_rows_answer_does_not_depend_on_the_rows_sent_with_it(made):
    """Rows are padded to the bundle's fixed length, never to the batch's longest, and the masks are shared."""
    bundle = load_bundle(made)
    together = bundle.answer(TEXTS, samples=16, seed=3)
    for row, text in enumerate(TEXTS):
        alone = bundle.answer([text], samples=16, seed=3)
        np.testing.assert_allclose(alone.probs[0], together.probs[row], rtol=1e-5, atol=1e-7)
    ids = bundle.text.encode(TEXTS)
    assert ids.shape == (4, 12) and (ids[:, -1] == 0).all()


@pytest.mark.parametrize("texts, row, words", [
    (["good", ""], 1, "is empty"),
    (["good", "   "], 1, "is empty"),
    (["good", 3], 1, "expected a string, got int"),
    (["good " * 11], 0, "13 tokens is over the limit of 12 (the model's length)"),
])
def test_text_it_cannot_take_is_refused_naming_the_row(made, texts, row, words):
    with pytest.raises(TextError, match=f"row {row}: .*{words.split('(')[0]}") as raised:
        load_bundle(made).answer(texts, samples=4)
    assert raised.value.row == row and words in str(raised.value)


@pytest.mark.parametrize("change, words", [
    (lambda c: c.update(model_class="BertModel"), "only transformers' own classes|ForSequenceClassification"),
    (lambda c: c.update(model_class="os.system"), "expected the name of a transformers"),
    (lambda c: c.update(model_class="EvilForSequenceClassification"), "is not a model class of transformers"),
    (lambda c: c["config"].update(auto_map={"AutoModel": "evil.Net"}), "config.auto_map: not allowed"),
    (lambda c: c["config"].update(trust_remote_code=True), "config.trust_remote_code: not allowed"),
    (lambda c: c["config"].update(_attn_implementation="kernels-community/evil"), "not allowed"),
    (lambda c: c.update(attn_implementation="flash_attention_2"), "expected one of sdpa, eager"),
])
def test_a_config_cannot_name_code(made, tmp_path, change, words):
    folder = edit_manifest(_copy(made, tmp_path), lambda m: change(m["architecture"]["config"]))
    with pytest.raises(BundleError, match=words):
        load_bundle(folder)


def test_the_tokenizer_is_the_bundles_own_file(made, tmp_path):
    folder = _copy(made, tmp_path)
    outside = tmp_path / "elsewhere.json"
    (folder / TOKENIZER).rename(outside)
    with pytest.raises(BundleError, match=f"{TOKENIZER}: missing"):
        load_bundle(folder)
    (folder / TOKENIZER).symlink_to(outside)
    with pytest.raises(BundleError, match="symbolic link"):
        load_bundle(folder)
    (folder / TOKENIZER).unlink()
    (folder / TOKENIZER).write_text("{not json")
    with pytest.raises(BundleError, match="not a tokenizers tokenizer.json"):
        load_bundle(folder)
    edit_manifest(folder, lambda m: m["input"]["text"].update(tokenizer="../../etc/passwd"))
    with pytest.raises(BundleError, match="field 'input.text.tokenizer'"):
        load_bundle(folder)


def test_create_refuses_remote_code_and_pickled_weights(pretrained, tmp_path):
    remote = Path(shutil.copytree(pretrained, tmp_path / "remote"))
    config = json.loads((remote / "config.json").read_text())
    (remote / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModel": "net.Net"}}))
    with pytest.raises(BundleError, match="auto_map.*never run"):
        create_pretrained(remote, tmp_path / "out")
    pickled = Path(shutil.copytree(pretrained, tmp_path / "pickled"))
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    with pytest.raises(BundleError, match="never unpickled"):
        create_pretrained(pickled, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_cli_makes_a_bundle_from_a_pretrained_folder(pretrained, tmp_path, capsys):
    from mcdropout.cli import main

    assert main(["bundle", "create", "--pretrained", str(pretrained), "--max-length", "10",
                 "--out", str(tmp_path / "cli-bert")]) == 0
    assert "BertForSequenceClassification" in capsys.readouterr().out
    assert load_bundle(tmp_path / "cli-bert").manifest.input_shape == [10]
    assert main(["bundle", "create", "--out", str(tmp_path / "neither")]) == 2
    assert "needs --architecture, --weights, --task, --input-shape (or --pretrained FOLDER)" in capsys.readouterr().err


def test_numeric_bundles_never_import_transformers():
    """A serve-only install needs no transformers: only a text bundle's architecture imports it."""
    code = ("import sys; from mcdropout.bundle import load_bundle\n"
            "load_bundle(sys.argv[1] + '/diabetes')\n"
            "print('transformers' in sys.modules, 'tokenizers' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code, str(MODELS)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False"]

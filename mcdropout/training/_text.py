"""Training a shipped text model: a word-level tokenizer made from the training rows, a small transformer
classifier with hidden and attention dropout, written as a text bundle.

The tokenizer knows the words of the training rows only; any other word is ``[UNK]``. Rows are padded to the
recipe's fixed length with ``[PAD]`` (id 0), as the bundle pads them when it serves.
"""

from __future__ import annotations

import dataclasses
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mcdropout.bundle import Bundle, Manifest, TextEncoder, TextInput, architectures, save_bundle
from mcdropout.training import _fit as training
from mcdropout.training import datasets

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")  # ids 0..3
PAD_ID = 0


def tokenizer_for(texts: np.ndarray) -> Any:
    """A lower-casing, whitespace-splitting word-level tokenizer over the words of ``texts``, in sorted order,
    that frames each row as ``[CLS] words [SEP]``."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    words = sorted({word for text in texts for word in str(text).lower().split()})
    vocabulary = {token: index for index, token in enumerate([*SPECIALS, *words])}
    tokenizer = Tokenizer(models.WordLevel(vocabulary, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocabulary["[CLS]"]), ("[SEP]", vocabulary["[SEP]"])])
    return tokenizer


def train(recipe: Any, split: datasets.Split, folder: Path, *, seed: int, epochs: int, quiet: bool,
          started: float, calibrated: Callable[..., Manifest]) -> tuple[Path, dict]:
    """Fit ``recipe``'s text classifier on ``split`` and write its text bundle to ``folder``, calibrated by
    ``calibrated`` (the recipes' own: held-out metrics before and after)."""
    from mcdropout.training import _baseline as baseline

    tokenizer = tokenizer_for(split.x_train)
    length = recipe.extra["max_length"]
    encoder = TextEncoder(tokenizer, length, PAD_ID)
    config = {"vocab_size": encoder.vocabulary, "length": length, "classes": len(split.class_names),
              "pad_id": PAD_ID, **recipe.config}
    torch.manual_seed(seed)
    model = architectures.build(recipe.architecture, config)
    history = training.fit(model, encoder.encode(split.x_train), split.y_train, loss=recipe.loss, epochs=epochs,
                           batch_size=recipe.batch_size, lr=recipe.lr, weight_decay=recipe.weight_decay, seed=seed,
                           description=f"training {recipe.name}", quiet=quiet)
    example = str(split.x_test[0])
    record = {
        "data": {"name": recipe.dataset, **split.record},
        "seed": seed, "epochs": epochs, "batch_size": recipe.batch_size,
        "optimizer": {"name": "adam", "lr": recipe.lr, "weight_decay": recipe.weight_decay},
        "loss": recipe.loss, "final_loss": history[-1],
        "tokenizer": f"word level over the {encoder.vocabulary - len(SPECIALS)} words of the training rows",
        "example": example, "outside_examples": [kind[0] for kind in datasets.REVIEW_OUTSIDE.values()],
        "torch": torch.__version__, "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
    }
    manifest = Manifest(
        name=recipe.name, description=recipe.description, task="classification", architecture=recipe.architecture,
        config=config, input_shape=[length], class_names=list(split.class_names), samples=recipe.samples,
        dropout=recipe.config.get("dropout"), training=record, text=TextInput(pad_id=PAD_ID),
    )
    manifest = calibrated(Bundle(manifest, model, device="cpu", text=encoder), split, seed=seed)
    metrics = dict(manifest.metrics)
    compared = baseline.compare(manifest.task, split, metrics)
    if compared is not None:
        metrics["baseline"] = compared
    record["wall_time_s"] = round(time.perf_counter() - started, 2)
    with tempfile.TemporaryDirectory() as scratch:
        file = Path(scratch) / "tokenizer.json"
        tokenizer.save(str(file))
        path = save_bundle(model, folder, dataclasses.replace(manifest, metrics=metrics, training=record),
                           tokenizer=file)
    return path, metrics

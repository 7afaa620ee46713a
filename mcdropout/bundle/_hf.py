"""Hugging Face transformers sequence classifiers as bundles, with text in.

The registry's ``transformers`` architecture builds one of transformers' own ``*ForSequenceClassification``
classes from the config a bundle's manifest holds, wrapped as :class:`TextClassifier`: token ids (rows,
length) in, logits out, the attention mask built from the pad id. Only transformers' own classes are
built (the class must live in ``transformers.models``); a config that names code (``auto_map``, remote
code, quantization backends, an attention implementation other than eager or sdpa) is refused, and every
module of the built network must be transformers' or torch's. Nothing is downloaded: the network is built
from its config and the bundle's safetensors weights, never ``from_pretrained`` of a hub name.

transformers is imported only when such a bundle is built (the ``hf`` extra), so a server without text
models never imports it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

ARCHITECTURE = "transformers"
SUFFIX = "ForSequenceClassification"
ATTENTION = ("sdpa", "eager")
# Keys of a config.json that make transformers run or fetch code beyond the named class: refused.
CODE_KEYS = ("auto_map", "custom_pipelines", "trust_remote_code", "quantization_config", "attn_implementation")


class TextClassifier(nn.Module):
    """A transformers sequence classifier that takes token ids (rows, length), pad id ``pad_id``, and returns
    its logits; padded positions are masked out of attention, so a row's answer ignores its padding."""

    def __init__(self, network: nn.Module, pad_id: int) -> None:
        super().__init__()
        self.network = network
        self.pad_id = pad_id

    @property
    def vocab_size(self) -> int:
        """Rows of the network's token embedding: the tokenizer's ids must stay below it."""
        return int(self.network.get_input_embeddings().num_embeddings)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.network(input_ids=ids, attention_mask=(ids != self.pad_id).long(), return_dict=True).logits


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise ValueError("architecture 'transformers' needs the transformers library: pip install"
                         " 'mcdropout[hf]'") from None
    return transformers


def transformers_class(name: Any) -> type:
    """transformers' own sequence-classification class called ``name``; ValueError for anything else."""
    if not isinstance(name, str) or not name.isidentifier() or not name.endswith(SUFFIX):
        raise ValueError(f"model_class {name!r}: expected the name of a transformers '...{SUFFIX}' class"
                         " (BertForSequenceClassification, ...)")
    transformers = _transformers()
    try:
        found = getattr(transformers, name)
    except (AttributeError, ImportError, RuntimeError):
        found = None
    if not (isinstance(found, type) and issubclass(found, transformers.PreTrainedModel)
            and found.__module__.startswith("transformers.models.")):
        raise ValueError(f"model_class {name!r} is not a model class of transformers {transformers.__version__};"
                         " only transformers' own classes are built (remote code never runs)")
    return found


def build(model_class: str, config: dict[str, Any], pad_id: int, attn_implementation: str = "sdpa"
          ) -> TextClassifier:
    """The registry's ``transformers`` builder: ``model_class`` from ``config`` (a config.json's fields)."""
    cls = transformers_class(model_class)
    if not isinstance(config, dict):
        raise ValueError(f"config: expected the model's config.json fields as an object, got {type(config).__name__}")
    named = [key for key in config if key in CODE_KEYS or key.startswith("_")]
    if named:
        raise ValueError(f"config.{named[0]}: not allowed; a bundle's transformers config may not name code,"
                         " remote code or an attention implementation (attn_implementation is eager or sdpa)")
    if attn_implementation not in ATTENTION:
        raise ValueError(f"attn_implementation {attn_implementation!r}: expected one of {', '.join(ATTENTION)}")
    if isinstance(pad_id, bool) or not isinstance(pad_id, int) or pad_id < 0:
        raise ValueError(f"pad_id: expected a token id (an int >= 0), got {pad_id!r}")
    kind = cls.config_class.model_type
    if config.get("model_type", kind) != kind:
        raise ValueError(f"config.model_type {config.get('model_type')!r} is not {model_class}'s ({kind!r})")
    fields = {key: value for key, value in config.items() if key != "model_type"}
    hf_config = cls.config_class(**fields, attn_implementation=attn_implementation)
    network = cls(hf_config)
    foreign = sorted({type(m).__module__ for m in network.modules()
                      if not type(m).__module__.startswith(("torch.", "transformers."))})
    if foreign:
        raise ValueError(f"model_class {model_class!r} built modules of {', '.join(foreign)}; only transformers'"
                         " and torch's modules are allowed")
    return TextClassifier(network, pad_id)

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

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from mcdropout.errors import BundleError

ARCHITECTURE = "transformers"
SUFFIX = "ForSequenceClassification"
ATTENTION = ("sdpa", "eager")
# Keys of a config.json that make transformers run or fetch code beyond the named class: refused.
CODE_KEYS = ("auto_map", "custom_pipelines", "trust_remote_code", "quantization_config", "attn_implementation")
# Keys of a config.json that say where the file came from or place the network (the loader places it).
DROPPED_KEYS = ("architectures", "transformers_version", "dtype", "torch_dtype", "_name_or_path")
DEFAULT_MAX_LENGTH = 128


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



def create_pretrained(folder: str | Path, out: str | Path, *, name: str | None = None,
                      max_length: int | None = None, samples: int = 100, description: str = "",
                      overwrite: bool = False) -> Any:
    """``mcdropout bundle create --pretrained``: a text bundle from a ``save_pretrained`` folder (config.json,
    model.safetensors, tokenizer.json), checked as :func:`mcdropout.bundle.create` checks a bundle."""
    from mcdropout.bundle import _create
    from mcdropout.bundle._bundle import NAME_PATTERN, bundle_file, load_bundle, move_into_place, save_bundle
    from mcdropout.bundle._text import TOKENIZER, TextInput

    source, target = Path(folder), Path(out)
    name = name or target.name
    if not NAME_PATTERN.match(name):
        raise BundleError(f"bundle name {name!r} must be lower-case letters, digits, '.', '_' or '-', starting with"
                          " a letter or digit")
    if target.exists() and not overwrite:
        raise BundleError(f"{target} exists; give --overwrite to replace it")
    if not source.is_dir():
        raise BundleError(f"{source}: no such folder (a save_pretrained folder: config.json, model.safetensors,"
                          f" {TOKENIZER})")
    if not (source / "model.safetensors").exists() and any(source.glob("*.bin")):
        raise BundleError(f"{source}: holds pickled weights (*.bin), which are never unpickled; save with"
                          " save_pretrained(..., safe_serialization=True) for model.safetensors")
    config, tensors = _read_config(bundle_file(source, "config.json")), _read_weights(bundle_file(source,
                                                                                              "model.safetensors"))
    tokenizer = bundle_file(source, TOKENIZER)
    classes = config.get("architectures") or []
    if len(classes) != 1:
        raise BundleError(f"{source / 'config.json'}: field 'architectures': expected one class name, got {classes!r}")
    if "auto_map" in config:
        raise BundleError(f"{source / 'config.json'}: field 'auto_map' names code of the model's own (remote code),"
                          " which is never run; only transformers' own classes are bundled")
    pad_id = config.get("pad_token_id")
    if pad_id is None:
        raise BundleError(f"{source / 'config.json'}: field 'pad_token_id' is missing; rows are padded with it")
    positions = int(config.get("max_position_embeddings") or DEFAULT_MAX_LENGTH)
    length = max_length or min(positions, DEFAULT_MAX_LENGTH)
    if not 0 < length <= positions:
        raise BundleError(f"--max-length {length}: expected 1 to {positions} (the model's max_position_embeddings)")
    fields = {key: value for key, value in config.items() if key not in DROPPED_KEYS}
    arch_config = {"model_class": classes[0], "config": fields, "pad_id": pad_id}
    labels = {int(k): v for k, v in (config.get("id2label") or {}).items()}
    regression = config.get("problem_type") == "regression"
    names = [str(labels.get(i, f"LABEL_{i}")) for i in range(len(labels) or int(config.get("num_labels", 2)))]
    from mcdropout.bundle import architectures

    try:
        model = architectures.build(ARCHITECTURE, arch_config)
    except ValueError as error:
        raise BundleError(f"{source / 'config.json'}: {error}") from None
    tensors = _create._matched(model.network, tensors, source / "model.safetensors", [],
                               f"{classes[0]} built from {source / 'config.json'}")
    model.network.load_state_dict(tensors, strict=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.create.", dir=target.parent))
    try:
        staged = save_bundle(model.eval(), staging / name, task="regression" if regression else "classification",
                             input_shape=[length], architecture=ARCHITECTURE, config=arch_config, name=name,
                             class_names=None if regression else names, output_names=names if regression else None,
                             samples=samples, text=TextInput(pad_id=int(pad_id)), tokenizer=tokenizer,
                             description=description or f"{classes[0]} from {source.name}.")
        try:
            bundle = load_bundle(staged, device="cpu")
            sample = _create._check_sampled(bundle)
        except BundleError as error:
            raise BundleError(str(error).replace(str(staged), str(target))) from None
        move_into_place(staged, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    bundle.path = target
    parameters = sum(t.numel() for t in bundle.model.state_dict().values())
    return _create.Created(target, bundle, parameters, [f"text in: {TOKENIZER}, rows padded to {length} tokens"],
                           sample)


def _read_config(file: Path) -> dict[str, Any]:
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BundleError(f"{file}: not a JSON config ({error})") from None
    if not isinstance(config, dict):
        raise BundleError(f"{file}: expected a JSON object")
    return config


def _read_weights(file: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(file)
    except (SafetensorError, OSError, ValueError) as error:
        raise BundleError(f"{file}: cannot read safetensors ({error})") from None

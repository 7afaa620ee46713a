"""``mcdropout bundle create --pretrained``: a text bundle from a Hugging Face ``save_pretrained`` folder.

The folder's config.json names the class (``architectures``), model.safetensors holds the weights (a pickled
``pytorch_model.bin`` is refused) and tokenizer.json becomes the bundle's own. The bundle's architecture is
the registry's ``transformers`` (:mod:`mcdropout.bundle._hf`, which says what a config may name); it is
checked as :func:`mcdropout.bundle.create` checks any bundle.
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

from mcdropout.bundle import _create, architectures
from mcdropout.bundle._bundle import NAME_PATTERN, bundle_file, load_bundle, move_into_place, save_bundle
from mcdropout.bundle._hf import ARCHITECTURE
from mcdropout.bundle._text import TOKENIZER, TextInput
from mcdropout.errors import BundleError

# Keys of a config.json that say where the file came from or place the network (the loader places it).
DROPPED_KEYS = ("architectures", "transformers_version", "dtype", "torch_dtype", "_name_or_path")
DEFAULT_MAX_LENGTH = 128


def create_pretrained(folder: str | Path, out: str | Path, *, name: str | None = None,
                      max_length: int | None = None, samples: int = 100, description: str = "",
                      overwrite: bool = False) -> _create.Created:
    """``mcdropout bundle create --pretrained``: a text bundle from a ``save_pretrained`` folder (config.json,
    model.safetensors, tokenizer.json), checked as :func:`mcdropout.bundle.create` checks a bundle."""
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

"""``mcdropout bundle create``: a bundle from the user's architecture and checkpoint.

The checkpoint is a safetensors file, or a ``.pt`` file read with ``torch.load(weights_only=True)`` as a
state dict of tensors (never as pickled objects; a dict holding it under ``state_dict`` or ``model`` is
unwrapped). The new bundle is staged beside ``--out`` and checked before it takes that name: it loads
(every soundness check of :func:`~mcdropout.bundle.load_bundle`), answers a probe, and its dropout is
sampled (two seeds give different predictions).
"""

from __future__ import annotations

import json
import pickle
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from mcdropout.bundle import _code, architectures
from mcdropout.bundle._bundle import (
    NAME_PATTERN,
    Bundle,
    _check_tensors,
    load_bundle,
    move_into_place,
    save_bundle,
)
from mcdropout.bundle._text import PROBE_TEXTS
from mcdropout.errors import BundleError
from mcdropout.stats import RegressionPrediction

SAFETENSORS = (".safetensors",)
TORCH_FILES = (".pt", ".pth", ".bin", ".ckpt")
WRAPPERS = ("state_dict", "model")  # keys under which training loops store the state dict
PREFIXES = ("module.", "_orig_mod.")  # DataParallel / DistributedDataParallel, torch.compile
CHECK_SAMPLES = 32


@dataclass
class Created:
    """What ``create`` wrote and what it saw: the bundle, its parameter count, notes and a sample prediction."""

    path: Path
    bundle: Bundle
    parameters: int
    notes: list[str]
    sample: str


def read_config(value: str | Path | None) -> dict[str, Any]:
    """The architecture's config from a JSON file (or inline JSON text); an object of keyword arguments."""
    if value is None:
        return {}
    text, where = (str(value), "--config") if str(value).lstrip().startswith("{") else (None, str(value))
    if text is None:
        try:
            text = Path(value).read_text()
        except OSError as error:
            raise BundleError(f"--config {value}: cannot read it ({error.strerror})") from None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise BundleError(f"{where}: invalid JSON at line {error.lineno}, column {error.colno}: {error.msg}") from None
    if not isinstance(config, dict):
        raise BundleError(f"{where}: expected a JSON object of keyword arguments, got {type(config).__name__}")
    return config


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The tensors of a checkpoint file, and notes on what was unwrapped; no pickled object is ever built."""
    file = Path(path)
    if not file.is_file():
        raise BundleError(f"{file}: no such checkpoint file")
    notes: list[str] = []
    if file.suffix in SAFETENSORS:
        try:
            return load_file(file), notes
        except (SafetensorError, OSError, ValueError) as error:
            raise BundleError(f"{file}: cannot read safetensors ({error})") from None
    if file.suffix not in TORCH_FILES:
        raise BundleError(f"{file}: unknown checkpoint type {file.suffix!r}; expected"
                          f" {', '.join(SAFETENSORS + TORCH_FILES)}")
    try:
        loaded = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
        what = f"a {found.group(1)}" if found else "objects other than tensors"
        raise BundleError(f"{file}: holds pickled Python objects ({what}), which are never unpickled (torch.load"
                          " with weights_only=True refused them); save the state dict instead:"
                          " torch.save(model.state_dict(), path), or safetensors") from None
    except (RuntimeError, OSError, EOFError) as error:
        raise BundleError(f"{file}: cannot read it as a torch checkpoint ({error})") from None
    if isinstance(loaded, dict) and not _is_state_dict(loaded):
        for key in WRAPPERS:
            if isinstance(loaded.get(key), dict) and _is_state_dict(loaded[key]):
                notes.append(f"read the state dict under the checkpoint's {key!r} key")
                loaded = loaded[key]
                break
    if not isinstance(loaded, dict) or not _is_state_dict(loaded):
        kind = type(loaded).__name__ if not isinstance(loaded, dict) else \
            f"dict with keys {', '.join(map(repr, list(loaded)[:8]))}"
        raise BundleError(f"{file}: expected a state dict (names to tensors), or a dict holding one under"
                          f" {' or '.join(map(repr, WRAPPERS))}; got a {kind}")
    return dict(loaded), notes


def _is_state_dict(value: dict) -> bool:
    return bool(value) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())


def _matched(model: nn.Module, tensors: dict[str, torch.Tensor], file: Path, notes: list[str],
             built: str) -> dict:
    """The checkpoint's tensors under the architecture's names and dtypes; mismatches named."""
    expected = model.state_dict()
    for prefix in PREFIXES:
        if set(tensors) != set(expected) and all(k.startswith(prefix) for k in tensors):
            tensors = {k.removeprefix(prefix): v for k, v in tensors.items()}
            notes.append(f"removed the prefix {prefix!r} from every tensor name")
    converted = []
    for key, tensor in list(tensors.items()):
        wanted = expected.get(key)
        if wanted is not None and tensor.is_floating_point() and wanted.is_floating_point() \
                and tensor.dtype != wanted.dtype and tensor.shape == wanted.shape:
            tensors[key] = tensor.to(wanted.dtype)
            converted.append(key)
    if converted:
        notes.append(f"converted {len(converted)} tensor(s) to the architecture's dtype: {', '.join(converted[:5])}"
                     + (", ..." if len(converted) > 5 else ""))
    try:
        _check_tensors(model, tensors, file)
    except BundleError as error:
        raise BundleError(str(error).replace("the manifest's architecture", built, 1)) from None
    return tensors


def create(*, architecture: str, weights: str | Path, task: str, input_shape: Sequence[int], out: str | Path,
           config: dict[str, Any] | None = None, code: str | Path | None = None, name: str | None = None,
           feature_names: Sequence[str] | None = None, classes: Sequence[str] | None = None,
           output_names: Sequence[str] | None = None, samples: int = 100, description: str = "",
           overwrite: bool = False) -> Created:
    """Build ``architecture`` from ``config``, load ``weights`` into it, check it, and write the bundle ``out``."""
    target = Path(out)
    name = name or target.name
    if not NAME_PATTERN.match(name):
        raise BundleError(f"bundle name {name!r} (from {'--name' if name != target.name else '--out'}) must be"
                          " lower-case letters, digits, '.', '_' or '-', starting with a letter or digit")
    if target.exists() and not overwrite:
        raise BundleError(f"{target} exists; give --overwrite to replace it")
    if architecture.startswith(f"{_code.BUNDLE_CODE}:") and code is None:
        raise BundleError(f"architecture {architecture!r} is the bundle's own {_code.BUNDLE_CODE}: give --code FILE")
    if code is not None and not Path(code).is_file():
        raise BundleError(f"--code {code}: no such file")
    if code is not None and not _code.is_code_path(architecture):
        architecture = f"{_code.BUNDLE_CODE}:{architecture}"
    config = dict(config or {})
    tensors, notes = read_state_dict(weights)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.create.", dir=target.parent))
    try:
        if code is not None:
            shutil.copyfile(code, staging / _code.BUNDLE_CODE)  # built as it will be served: from the bundle
        try:
            model = architectures.build(architecture, config, folder=staging, trust_code=True)
        except ValueError as error:
            raise BundleError(str(error)) from None
        model.load_state_dict(_matched(model, tensors, Path(weights), notes,
                                         f"architecture {architecture!r} built with config {config}"), strict=True)
        staged = save_bundle(model.eval(), staging / name, task=task, input_shape=input_shape,
                             architecture=architecture, config=config, code=code, name=name,
                             feature_names=feature_names, class_names=classes, output_names=output_names,
                             samples=samples, description=description or f"Created from {Path(weights).name}.")
        try:
            bundle = load_bundle(staged, device="cpu", trust_code=True)
            sample = _check_sampled(bundle)
        except BundleError as error:  # name the bundle as it would have been written, not the staging folder
            raise BundleError(str(error).replace(str(staged), str(target))) from None
        move_into_place(staged, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    module = architecture.partition(":")[0]
    if _code.is_code_path(architecture) and module != _code.BUNDLE_CODE:
        notes.append(f"the architecture is imported from {module!r}, which runs its code: load_bundle and the"
                     f" server import it only where allowed ({_code.ALLOWED_MODULES_ENV}={module},"
                     f" --allow-architecture-module {module}) or bundle code is trusted")
    parameters = sum(t.numel() for t in bundle.model.state_dict().values())
    bundle.path = target
    return Created(target, bundle, parameters, notes, sample)


def _check_sampled(bundle: Bundle) -> str:
    """Two seeds must give different predictions for one probe input; returns that prediction as text."""
    probe = bundle.probe_rows()[:1] if bundle.text is not None else torch.zeros(1, *bundle.manifest.input_shape)
    samples = min(CHECK_SAMPLES, bundle.manifest.samples)
    first = bundle.predict(probe, samples=samples, seed=0)
    second = bundle.predict(probe, samples=samples, seed=1)
    regression = isinstance(first, RegressionPrediction)
    values = (first.mean, second.mean) if regression else (first.probs, second.probs)
    if torch.equal(*values):
        raise BundleError(f"bundle {bundle.name!r}: seeds 0 and 1 give the same prediction, so nothing is"
                          " sampled: the network has no dropout layer that MC dropout switches on (torch's"
                          " dropout classes, mcdropout.DropConnect or LockedDropout), or its rate is 0")
    if regression:
        mean, std = first.mean.reshape(-1), first.std.reshape(-1)
        names = bundle.manifest.output_names or [f"output {i}" for i in range(len(mean))]
        shown = ", ".join(f"{n} {m:.4g} ± {s:.3g}" for n, m, s in list(zip(names, mean.tolist(), std.tolist()))[:5])
    else:
        probs = first.probs.reshape(-1)
        label = int(probs.argmax())
        shown = (f"class {bundle.manifest.class_names[label]!r} (p = {float(probs[label]):.3f}), entropy"
                 f" {float(first.entropy.reshape(-1)[0]):.3f}, mutual information"
                 f" {float(first.mutual_information.reshape(-1)[0]):.3g}")
    what = f"the text {PROBE_TEXTS[0]!r}" if bundle.text is not None else "an input of zeros"
    return f"{what}, T={samples}, seed 0: {shown}"

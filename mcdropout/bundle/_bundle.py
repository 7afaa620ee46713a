"""Model bundles on disk: ``manifest.json`` + ``weights.safetensors``.

A bundle is a folder. The manifest names the task, the architecture (built from
:mod:`mcdropout.bundle.architectures` by name), the input and output description, the
standardisation of features and target, inference defaults, and the training
and evaluation record. Weights are safetensors: no pickle is ever loaded.
:func:`load_bundle` returns a :class:`Bundle` whose ``predict`` takes and
returns values in the user's units.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import stat
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from mcdropout.answer import Options, Result
from mcdropout.bundle import _answering, _code, architectures
from mcdropout.bundle._text import TOKENIZER, TextEncoder, TextInput, is_text
from mcdropout.engine import ArrayLike, MCPredictor, Prediction, resolve_device
from mcdropout.errors import BundleError, InputError
from mcdropout.stats import ClassificationPrediction, RegressionPrediction
from mcdropout.stats.calibration import Calibration, CalibrationError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
WEIGHTS = "weights.safetensors"
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
MAX_ROW_VALUES = 1 << 24  # values in one input row (input.shape's product): the probe at load makes two rows
MAX_PARAMS = 50_000_000  # default limit of load_bundle: a bigger network is refused before it is allocated
PROBE_SAMPLES = 4  # T of the probe prediction made at load
_SHOWN_ROWS = 10  # row numbers listed in an error, at most


@dataclass(frozen=True)
class Standardisation:
    """x -> (x - mean) / std; mean and std broadcast against one row (or one target)."""

    mean: list[float]
    std: list[float]

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        return (values - self._tensor(self.mean, values)) / self._tensor(self.std, values)

    def _tensor(self, numbers: list[float], like: torch.Tensor) -> torch.Tensor:
        return torch.tensor(numbers, dtype=like.dtype, device=like.device)


@dataclass(frozen=True)
class Manifest:
    """What a bundle is; see the module docstring. ``to_dict`` gives the JSON form."""

    name: str
    task: str
    architecture: str
    config: dict[str, Any]
    input_shape: list[int]
    version: str = "1.0.0"
    feature_names: list[str] | None = None
    output_names: list[str] | None = None
    class_names: list[str] | None = None
    input_standardisation: Standardisation | None = None
    target_standardisation: Standardisation | None = None
    samples: int = 100
    max_samples: int = 10_000
    dropout: float | None = None
    tau: float | None = None
    description: str = ""
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    calibration: Calibration | None = None  # None: uncalibrated, the raw MC numbers
    # hex BLAKE2b-128 of weights.safetensors, the weights this manifest was written with (save_bundle records
    # it, load_bundle checks it); not part of what the manifest says, so two manifests compare without it
    weights_blake2b: str | None = field(default=None, compare=False)
    text: TextInput | None = None  # rows are strings, tokenised by the bundle's tokenizer.json (mcdropout.bundle._text)

    def to_dict(self) -> dict[str, Any]:
        data = {
            "schema_version": self.schema_version,
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "task": self.task,
            "architecture": {"name": self.architecture, "config": self.config},
            "input": {"shape": self.input_shape, "feature_names": self.feature_names},
            "outputs": {"names": self.output_names, "classes": self.class_names},
            "preprocessing": {
                "input": _standardisation_dict(self.input_standardisation),
                "target": _standardisation_dict(self.target_standardisation),
            },
            "inference": {"samples": self.samples, "max_samples": self.max_samples, "dropout": self.dropout,
                          "tau": self.tau},
            "training": self.training,
            "metrics": self.metrics,
            "calibration": None if self.calibration is None else self.calibration.to_dict(),
            "weights_blake2b": self.weights_blake2b,
        }
        if self.text is not None:
            data["input"]["text"] = self.text.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        """Validate the JSON form; errors name the field and what is wrong."""
        reader = _Reader(data)
        version = reader.get("schema_version", int)
        if version != SCHEMA_VERSION:
            raise BundleError(f"field 'schema_version': this mcdropout reads version {SCHEMA_VERSION}, got {version}")
        task = reader.get("task", str)
        if task not in ("regression", "classification"):
            raise BundleError(f"field 'task': expected 'regression' or 'classification', got {task!r}")
        name = reader.get("name", str)
        if not NAME_PATTERN.match(name):
            raise BundleError(f"field 'name': {name!r} must be lower-case letters, digits, '.', '_' or '-'")
        shape = reader.get("input.shape", list)
        if not shape or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape):
            raise BundleError(f"field 'input.shape': expected a list of positive ints, got {shape!r}")
        if math.prod(shape) > MAX_ROW_VALUES:
            raise BundleError(f"field 'input.shape': {math.prod(shape):,} values per row, over the limit of"
                              f" {MAX_ROW_VALUES:,}")
        manifest = cls(
            name=name,
            version=reader.get("version", str),
            description=reader.get("description", str, default=""),
            task=task,
            architecture=reader.get("architecture.name", str),
            config=reader.get("architecture.config", dict),
            input_shape=shape,
            feature_names=reader.names("input.feature_names"),
            output_names=reader.names("outputs.names"),
            class_names=reader.names("outputs.classes"),
            input_standardisation=reader.standardisation("preprocessing.input"),
            target_standardisation=reader.standardisation("preprocessing.target"),
            samples=reader.get("inference.samples", int),
            max_samples=reader.get("inference.max_samples", int),
            dropout=reader.number("inference.dropout"),
            tau=reader.number("inference.tau"),
            training=reader.get("training", dict, default={}),
            metrics=reader.get("metrics", dict, default={}),
            calibration=_calibration(reader.get("calibration", dict, optional=True)),
            weights_blake2b=reader.get("weights_blake2b", str, optional=True),
            text=_text_input(reader.get("input.text", dict, optional=True)),
        )
        if manifest.weights_blake2b is not None and not re.fullmatch(r"[0-9a-f]{32}", manifest.weights_blake2b):
            raise BundleError("field 'weights_blake2b': expected 32 lower-case hex digits (BLAKE2b-128 of"
                              f" {WEIGHTS})")
        manifest.check()
        return manifest

    def check(self) -> None:
        """Consistency between fields."""
        placed = _placement_key(self.config, "architecture.config")
        if placed is not None:
            raise BundleError(f"field '{placed}': an architecture's config may not choose a device or dtype (the"
                              " parameter count on the meta device must not allocate; the loader places the"
                              " network)")
        if self.feature_names is not None and (len(self.input_shape) != 1 or len(self.feature_names) != self.input_shape[0]):
            raise BundleError(
                f"field 'input.feature_names': {len(self.feature_names)} names for input shape {self.input_shape}"
            )
        if self.text is not None and (len(self.input_shape) != 1 or self.feature_names is not None
                                      or self.input_standardisation is not None):
            raise BundleError(f"field 'input.text': a text model's input is one row of token ids, input.shape [length]"
                              f" with no feature names or input standardisation; got shape {self.input_shape}")
        if self.task == "classification" and not self.class_names:
            raise BundleError("field 'outputs.classes': a classifier needs its class names")
        if self.task == "regression" and self.class_names:
            raise BundleError("field 'outputs.classes': a regression model has no classes")
        if self.task == "classification" and self.target_standardisation is not None:
            raise BundleError("field 'preprocessing.target': a classifier has no target standardisation")
        if not 2 <= self.samples <= self.max_samples:
            raise BundleError(f"field 'inference.samples': expected 2 <= samples <= max_samples, got {self.samples}")
        if self.tau is not None and self.tau <= 0:
            raise BundleError(f"field 'inference.tau': must be positive, got {self.tau}")
        if self.tau is not None and self.task != "regression":
            raise BundleError("field 'inference.tau': applies to regression only")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise BundleError(f"field 'inference.dropout': expected a rate in [0, 1), got {self.dropout}")
        if self.calibration is not None and self.calibration.task != self.task:
            raise BundleError(f"field 'calibration.task': {self.calibration.task!r} calibration for a {self.task} model")
        outputs = len(self.output_names) if self.output_names else None
        for name, values in (("sigma_scale", self.calibration and self.calibration.sigma_scale),
                             ("conformal.scores", self.calibration and self.calibration.conformal
                              and self.calibration.conformal.scores)):
            if values and outputs is not None and len(values) != outputs:
                raise BundleError(f"field 'calibration.{name}': {len(values)} values for {outputs} outputs")


_PLACEMENT_KEYS = ("device", "dtype")


def _placement_key(value: Any, where: str) -> str | None:
    """The dotted path of a ``device`` or ``dtype`` key anywhere in ``value`` (a config), else None."""
    if isinstance(value, dict):
        for key, inner in value.items():
            if key in _PLACEMENT_KEYS:
                return f"{where}.{key}"
            found = _placement_key(inner, f"{where}.{key}")
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            found = _placement_key(inner, f"{where}[{index}]")
            if found is not None:
                return found
    return None


def _text_input(data: dict | None) -> TextInput | None:
    return None if data is None else TextInput.from_dict(data)


def _calibration(data: dict | None) -> Calibration | None:
    """The manifest's calibration, checked as sound (:class:`CalibrationError` names the field)."""
    if data is None:
        return None
    try:
        return Calibration.from_dict(data)
    except CalibrationError as error:
        raise BundleError(str(error)) from None
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as error:
        raise BundleError(f"field 'calibration': cannot be read ({type(error).__name__}: {error})") from None


def _standardisation_dict(value: Standardisation | None) -> dict | None:
    return None if value is None else {"mean": value.mean, "std": value.std}


class _Reader:
    """Reads dotted fields from the manifest JSON with errors that name them."""

    _MISSING = object()

    def __init__(self, data: Any) -> None:
        if not isinstance(data, dict):
            raise BundleError(f"expected a JSON object, got {type(data).__name__}")
        self.data = data

    def get(self, dotted: str, kind, *, optional: bool = False, default: Any = _MISSING) -> Any:
        value: Any = self.data
        for part in dotted.split("."):
            value = value.get(part, self._MISSING) if isinstance(value, dict) else self._MISSING
        if value is self._MISSING or (value is None and optional):
            if default is not self._MISSING or optional:
                return None if default is self._MISSING else default
            raise BundleError(f"field '{dotted}' is missing")
        if isinstance(value, bool) or not isinstance(value, kind):
            names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise BundleError(f"field '{dotted}': expected {names}, got {type(value).__name__} {value!r}")
        return value

    def number(self, dotted: str) -> float | None:
        """An optional finite number, as a float."""
        value = self.get(dotted, (int, float), optional=True)
        if value is None:
            return None
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            raise BundleError(f"field '{dotted}': expected a finite number, got {value!r}")
        return number

    def names(self, dotted: str) -> list[str] | None:
        value = self.get(dotted, list, optional=True)
        if value is not None and not all(isinstance(v, str) for v in value):
            raise BundleError(f"field '{dotted}': expected a list of strings")
        return value

    def standardisation(self, dotted: str) -> Standardisation | None:
        value = self.get(dotted, dict, optional=True)
        if value is None:
            return None
        parts = {}
        for key in ("mean", "std"):
            numbers = value.get(key)
            if isinstance(numbers, (int, float)) and not isinstance(numbers, bool):
                numbers = [numbers]
            if not isinstance(numbers, list) or not numbers or not all(_finite(n) for n in numbers):
                raise BundleError(f"field '{dotted}.{key}': expected a non-empty list of finite numbers")
            parts[key] = [float(n) for n in numbers]
        if any(s <= 0 for s in parts["std"]):
            raise BundleError(f"field '{dotted}.std': standard deviations must be positive")
        return Standardisation(**parts)


def _finite(value: Any) -> bool:
    """A JSON number (not a bool) that is finite as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


class NonFiniteError(InputError):
    """A prediction whose statistics came out NaN or infinite for some rows (inputs so large that the
    network overflowed): ``model`` names it, ``rows`` (numbered from 0 in the call) are the rows."""

    def __init__(self, model: str, rows: np.ndarray) -> None:
        self.model, self.rows = model, rows
        super().__init__(f"model {model!r}: non-finite statistics (the network overflowed) for {len(rows)}"
                         f" row(s), rows numbered from 0: {_rows_text(rows)}")


class Bundle:
    """A loaded bundle: ``predict`` in the user's units, plus the ``manifest`` and ``model``."""

    def __init__(self, manifest: Manifest, model: nn.Module, path: Path | None = None, device: str = "auto",
                 memory_budget: int | str = "256MB", text: TextEncoder | None = None) -> None:
        self.manifest = manifest
        if manifest.text is not None and text is None:
            if path is None:
                raise BundleError(f"bundle {manifest.name!r} takes text: give its folder (the tokenizer's) or text=")
            text = TextEncoder.load(bundle_file(Path(path), TOKENIZER), manifest.input_shape[0], manifest.text)
        self.text = text  # strings to token ids, for a text bundle; None for numeric rows
        self.model = model.eval().to(resolve_device(device))  # the bundle's own model: "auto" is CUDA when present
        self.path = path
        self.predictor = MCPredictor(
            self.model,
            task=manifest.task,
            samples=manifest.samples,
            tau=manifest.tau,
            memory_budget=memory_budget,
            max_samples=manifest.max_samples,
            input_shape=manifest.input_shape,
        )

    @property
    def name(self) -> str:
        return self.manifest.name

    def model_inputs(self, x: ArrayLike) -> torch.Tensor:
        """Rows of ``x`` validated and standardised as the network was trained on them; a text bundle's
        strings tokenised (:class:`~mcdropout.bundle._text.TextError` names a row it cannot take)."""
        if self.text is not None:
            x = self.text.encode(list(x)) if is_text(x) else self.text.check_ids(x)
        inputs = self.predictor.prepare_input(x)
        if self.manifest.input_standardisation is not None:
            inputs = self.manifest.input_standardisation.forward(inputs.to(self.predictor.dtype))
            finite = torch.isfinite(inputs.reshape(len(inputs), -1)).all(dim=1)
            if not bool(finite.all()):
                bad = np.flatnonzero(~finite.cpu().numpy())
                raise InputError(f"model {self.name!r}: row(s) {_rows_text(bad)} (numbered from 0) hold values so"
                                 " far out that standardising them, (x - mean) / std, overflows"
                                 f" {str(self.predictor.dtype).removeprefix('torch.')}")
        return inputs

    def probe_rows(self) -> torch.Tensor:
        """Two rows of model inputs for a probe prediction: standardised -1 and +1, or two short texts' ids."""
        if self.text is not None:
            return torch.from_numpy(self.text.probe_rows())
        shape = (1, *self.manifest.input_shape)
        return torch.cat([torch.full(shape, -1.0), torch.full(shape, 1.0)]).to(self.predictor.dtype)

    def predict(self, x: ArrayLike, *, samples: int | str | None = None, seed: int | None = None,
                return_samples: bool = False, max_samples: int | None = None,
                tolerance: float | None = None, calibrated: bool = True) -> Prediction:
        """The MC prediction for rows of ``x`` in the user's units (standardisation applied and undone): the
        T passes with the bundle's temperature (classifiers) and its sigma-scaling (regression), or with
        ``calibrated=False`` the raw numbers that calibration is fitted on. :meth:`answer` gives the whole
        calibrated answer the service serves (conformal intervals, prediction sets, abstention).

        A statistic that comes out NaN or infinite (inputs so far out that the network overflows) is
        never returned: :class:`~mcdropout.errors.InputError` names the model and the rows.
        """
        prediction = self.predict_model_inputs(self.model_inputs(x), samples=samples, seed=seed,
                                               return_samples=return_samples, max_samples=max_samples,
                                               tolerance=tolerance, calibrated=calibrated)
        bad = nonfinite_rows(prediction)
        if len(bad):
            raise NonFiniteError(self.name, bad)
        return prediction

    def answer(self, x: ArrayLike, *, samples: int | str | None = None, seed: int | None = None,
               level: float = 0.95, options: Options | Mapping[str, Any] | None = None,
               tolerance: float | None = None, return_samples: bool = False,
               max_samples: int | None = None) -> Result:
        """The calibrated answer for rows of ``x``, as the service gives it for the same (rows, T, seed,
        options): temperature, sigma-scaling, conformal intervals (where calibrated), prediction sets
        (``set_level``) and abstention (``max_risk``, ``max_std``, ``max_interval_width``).

        ``options``: :class:`~mcdropout.answer.Options` or a dict of its fields; a value the bundle cannot
        honour raises :class:`~mcdropout.answer.OptionError` naming the option, before any pass runs.
        ``return_samples`` puts each row's draws in ``result.draws``.
        """
        checked = _answering.options_for(self.manifest, options, level)
        if not isinstance(return_samples, bool):
            raise InputError(f"return_samples must be True or False, got {return_samples!r}")
        prediction = self.predict(x, samples=samples, seed=seed, return_samples=return_samples,
                                  max_samples=max_samples, tolerance=tolerance)
        return _answering.summarise(self.manifest, prediction, level, checked)

    def predict_model_inputs(self, inputs: torch.Tensor, *, samples: int | str | None = None,
                             seed: int | None = None, return_samples: bool = False,
                             max_samples: int | None = None, tolerance: float | None = None,
                             calibrated: bool = True) -> Prediction:
        """:meth:`predict` for standardised rows, returned in the user's units; no finiteness check."""
        calibration = self.manifest.calibration if calibrated else None
        prediction = self.predictor.predict(inputs, samples=samples, seed=seed, return_samples=return_samples,
                                            max_samples=max_samples, tolerance=tolerance,
                                            temperature=None if calibration is None else calibration.temperature)
        return _answering.user_units(self.manifest, prediction, calibrated=calibrated)


def nonfinite_rows(prediction: Prediction) -> np.ndarray:
    """Indices of the rows of ``prediction`` with any NaN or infinite statistic (or returned sample)."""
    if isinstance(prediction, ClassificationPrediction):
        fields = [prediction.probs, prediction.entropy, prediction.expected_entropy, prediction.variation_ratio]
    else:
        fields = [prediction.mean, prediction.epistemic, prediction.aleatoric]
    if prediction.samples is not None:  # samples="auto": NaN past a row's own count is padding, not a value
        drawn = torch.arange(prediction.samples.shape[1]) < prediction.num_samples.reshape(-1, 1)
        fields.append(prediction.samples.masked_fill(~drawn.reshape(*drawn.shape, *[1] * (prediction.samples.dim() - 2)), 0.0))
    bad = torch.zeros(len(fields[0]), dtype=torch.bool)
    for values in fields:
        values = values.detach().cpu()
        bad |= ~torch.isfinite(values.reshape(len(values), -1)).all(dim=1)
    return np.flatnonzero(bad.numpy())


def _rows_text(rows: np.ndarray) -> str:
    """Row numbers for an error message, the first ten of them."""
    return ", ".join(str(r) for r in rows[:_SHOWN_ROWS]) + (", ..." if len(rows) > _SHOWN_ROWS else "")


def save_bundle(model: nn.Module, path: str | os.PathLike, manifest: Manifest | dict | None = None, *,
                task: str | None = None, input_shape: Sequence[int] | None = None, architecture: str | None = None,
                config: dict[str, Any] | None = None, code: str | os.PathLike | None = None, name: str | None = None,
                feature_names: Sequence[str] | None = None, output_names: Sequence[str] | None = None,
                class_names: Sequence[str] | None = None, samples: int = 100, dropout: float | None = None,
                tau: float | None = None, input_standardisation: Standardisation | None = None,
                target_standardisation: Standardisation | None = None, description: str = "",
                version: str = "1.0.0", text: TextInput | None = None,
                tokenizer: str | os.PathLike | None = None) -> Path:
    """Write ``model``'s weights and a manifest to the folder ``path``, atomically.

    Either pass a whole ``manifest``, or describe the model with keywords (``task`` and ``input_shape``
    at least) and let the manifest be made: the name is the folder's, the architecture is the import
    path of ``type(model)`` (``my_pkg.nets:Net``, built with ``config``, default no arguments) unless
    ``architecture`` names it; ``code`` is a Python file shipped as the bundle's ``model.py``, whose
    classes are then named ``model.py:Net``. The architecture is rebuilt from its name and config before
    anything is written, and must have the model's tensor names and shapes.

    A text model (``text``, or a manifest's ``input.text``) needs ``tokenizer``, the ``tokenizer.json`` file
    that becomes the bundle's own.

    The bundle is written to a temporary folder beside ``path`` and renamed into
    place, so a crash never leaves a half-written bundle.
    """
    target = Path(path)
    described = manifest is None
    source = None if code is None else Path(code).read_bytes()
    if described:
        if task is None or input_shape is None:
            raise BundleError("save_bundle: give a manifest, or task= and input_shape= (with architecture= and"
                              " config= where the model's class does not name its architecture)")
        if architecture is None:
            architecture = f"{_code.BUNDLE_CODE}:{type(model).__qualname__}" if code is not None else \
                _code.import_path_of(type(model))
        if architecture.startswith(f"{_code.BUNDLE_CODE}:") and source is None:
            source = _code.source_of(type(model), architecture)
        manifest = Manifest.from_dict(Manifest(
            name=name or target.name, task=task, architecture=architecture, config=dict(config or {}),
            input_shape=[int(s) for s in input_shape], version=version, description=description,
            feature_names=None if feature_names is None else list(feature_names),
            output_names=None if output_names is None else list(output_names),
            class_names=None if class_names is None else list(class_names),
            input_standardisation=input_standardisation, target_standardisation=target_standardisation,
            samples=samples, max_samples=max(10_000, samples), dropout=dropout, tau=tau, text=text,
        ).to_dict())
    elif any(v is not None for v in (task, input_shape, architecture, config, name, feature_names, output_names,
                                     class_names)):
        raise BundleError("save_bundle: give either a manifest or the keywords that describe one, not both")
    manifest = manifest if isinstance(manifest, Manifest) else Manifest.from_dict(manifest)
    manifest.check()
    if (manifest.text is None) != (tokenizer is None):
        raise BundleError("save_bundle: a text model (input.text) needs tokenizer=, its tokenizer.json; only a"
                          " text model takes one")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        tensors = flush_subnormals({key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()})
        if source is not None:
            (staging / _code.BUNDLE_CODE).write_bytes(source)
        if tokenizer is not None:
            shutil.copyfile(tokenizer, staging / TOKENIZER)
        if described:
            _check_rebuilds(manifest, tensors, staging)
        save_file(tensors, staging / WEIGHTS, metadata={"name": manifest.name, "version": manifest.version})
        manifest = dataclasses.replace(manifest, weights_blake2b=weights_hash(staging / WEIGHTS))
        (staging / MANIFEST).write_text(json.dumps(manifest.to_dict(), indent=2) + "\n")
        move_into_place(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def move_into_place(staging: Path, target: Path) -> None:
    """Rename the complete folder ``staging`` to ``target``, replacing an old ``target`` only once it is."""
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
        staging.rename(target)
        shutil.rmtree(old)
    else:
        staging.rename(target)


def _check_rebuilds(manifest: Manifest, tensors: dict[str, torch.Tensor], folder: Path) -> None:
    """The manifest's architecture, built on the meta device from its config, has the model's tensors."""
    try:
        with torch.device("meta"):
            skeleton = architectures.build(manifest.architecture, manifest.config, folder=folder, trust_code=True)
    except ValueError as error:
        raise BundleError(f"save_bundle: {error}") from None
    expected = {key: tuple(value.shape) for key, value in skeleton.state_dict().items()}
    problems = [f"missing in the rebuilt architecture: {', '.join(sorted(set(tensors) - set(expected)))}"] \
        if set(tensors) - set(expected) else []
    if set(expected) - set(tensors):
        problems.append(f"not in the model: {', '.join(sorted(set(expected) - set(tensors)))}")
    problems += [f"{key} is {tuple(tensors[key].shape)} in the model but {shape} rebuilt"
                 for key, shape in expected.items() if key in tensors and tuple(tensors[key].shape) != shape]
    if problems:
        raise BundleError(f"save_bundle: architecture {manifest.architecture!r} built with config"
                          f" {manifest.config} is not the model ({'; '.join(problems)}); pass config= with the"
                          " arguments the model was built with")


def read_manifest(path: str | os.PathLike) -> Manifest:
    """The validated manifest of the bundle folder ``path``."""
    folder = Path(path)
    file = folder / MANIFEST
    if not folder.is_dir():
        raise BundleError(f"{folder}: no such bundle folder")
    bundle_file(folder, MANIFEST)
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as error:
        raise BundleError(f"{file}: invalid JSON at line {error.lineno}, column {error.colno}: {error.msg}") from None
    except UnicodeDecodeError as error:
        raise BundleError(f"{file}: not UTF-8 text ({error.reason})") from None
    try:
        return Manifest.from_dict(data)
    except BundleError as error:
        raise BundleError(f"{file}: {error}") from None


def bundle_file(folder: Path, name: str) -> Path:
    """``folder / name`` when it is a regular file of the bundle folder itself; a symlink (which could lead
    anywhere), a folder, a device or a missing file is refused, naming the file and never its content."""
    file = folder / name
    try:
        mode = file.lstat().st_mode
    except FileNotFoundError:
        raise BundleError(f"{file}: missing (a bundle holds {MANIFEST} and {WEIGHTS})") from None
    except OSError as error:
        raise BundleError(f"{file}: cannot be read ({error.strerror})") from None
    if stat.S_ISLNK(mode):
        raise BundleError(f"{file}: is a symbolic link; a bundle's files must be regular files in its folder")
    if not stat.S_ISREG(mode):
        raise BundleError(f"{file}: not a regular file")
    return file


def weights_hash(file: Path) -> str:
    """The hex BLAKE2b-128 of a weights file, as the manifest's ``weights_blake2b`` records it."""
    from mcdropout.tables import file_blake2b  # lazily: mcdropout.tables imports pyarrow

    return file_blake2b(file)


def load_bundle(path: str | os.PathLike, *, device: str = "auto", memory_budget: int | str = "256MB",
                max_params: int = MAX_PARAMS, trust_code: bool = False,
                allowed_modules: Iterable[str] | str | None = None) -> Bundle:
    """Load a bundle folder into a ready :class:`Bundle`, only if it is sound.

    Sound: the manifest is valid and its standardisations fit the input shape and the outputs; the
    architecture has at most ``max_params`` values (counted on the meta device, before anything is
    allocated); every weight tensor has the architecture's name, shape and dtype (no conversion) and is
    finite; and a probe prediction (two rows at -1 and +1 standard deviations, T=4) gives finite
    statistics, which refuses weights so large (3e38) that float32 arithmetic overflows. Anything else
    is a :class:`BundleError` naming the file and the problem.

    An architecture in the bundle's own ``model.py`` is code the bundle carries: it runs only with
    ``trust_code=True`` and is refused otherwise. An import path (``my_pkg.nets:Net``) is code too: its
    module is imported only with ``trust_code=True`` or when it is in (or under) one of ``allowed_modules``
    (names, or one comma-separated string; None: ``MCD_ALLOWED_ARCHITECTURE_MODULES`` from the environment,
    none when unset). Registry names and installed entry points need neither.

    The bundle's files must be regular files in its folder (no symbolic links). The manifest's
    ``weights_blake2b`` must be the weights file's hash, so a manifest is never served with another
    bundle's weights (a half-copied bundle); a manifest without one loads with a logged warning.
    """
    folder = Path(path)
    allowed = _code.allowed_modules_from_env() if allowed_modules is None else _code.parse_modules(allowed_modules)
    manifest = read_manifest(folder)
    manifest_file = folder / MANIFEST
    weights = bundle_file(folder, WEIGHTS)
    _check_standardisation_shape(manifest, manifest_file)
    _check_size(manifest, manifest_file, max_params, trust_code, allowed)
    try:
        model = architectures.build(manifest.architecture, manifest.config, folder=folder, trust_code=trust_code,
                                    allowed_modules=allowed)
    except (ValueError, RuntimeError) as error:
        raise BundleError(f"{manifest_file}: architecture: {error}") from None
    try:
        tensors = load_file(weights)
    except (SafetensorError, OSError, ValueError) as error:
        raise BundleError(f"{weights}: cannot read safetensors ({error}); the file is truncated or not safetensors") from None
    _check_tensors(model, tensors, weights)
    model.load_state_dict(flush_subnormals(tensors), strict=True)
    text = None if manifest.text is None else _text_encoder(folder, manifest, model)
    resolve_device(device)  # the caller's device: its error is the caller's, not the bundle's
    try:
        bundle = Bundle(manifest, model, folder, device=device, memory_budget=memory_budget, text=text)
    except Exception as error:  # noqa: BLE001 - the engine refused what the manifest says
        raise BundleError(f"{manifest_file}: {error}") from None
    _probe(bundle, weights)
    _check_weights_hash(manifest, weights)  # after the checks that say what is wrong with the weights themselves
    return bundle


def _text_encoder(folder: Path, manifest: Manifest, model: nn.Module) -> TextEncoder:
    """The bundle's tokenizer, whose token ids must all be rows of the network's embedding (``vocab_size``)."""
    encoder = TextEncoder.load(bundle_file(folder, TOKENIZER), manifest.input_shape[0], manifest.text)
    embedded = getattr(model, "vocab_size", None)
    if isinstance(embedded, int) and encoder.vocabulary > embedded:
        raise BundleError(f"{folder / TOKENIZER}: {encoder.vocabulary} tokens, but the network embeds"
                          f" {embedded}; the tokenizer is not the model's")
    return encoder


def _check_standardisation_shape(manifest: Manifest, file: Path) -> None:
    """The input standardisation must broadcast to one row (``input.shape``), without changing its shape."""
    value = manifest.input_standardisation
    if value is None:
        return
    shape = tuple(manifest.input_shape)
    for key in ("mean", "std"):
        length = len(getattr(value, key))
        fits = length == 1 or length == shape[-1]
        if not fits:
            raise BundleError(f"{file}: field 'preprocessing.input.{key}': {length} values for input shape"
                              f" {list(shape)}; expected 1 or {shape[-1]} (one per value of the last dimension)")


def _check_weights_hash(manifest: Manifest, weights: Path) -> None:
    """The weights are the ones the manifest was written with (its ``weights_blake2b``), when it records them."""
    if manifest.weights_blake2b is None:
        log.warning("%s: the manifest records no weights_blake2b, so a manifest and weights from different"
                    " bundles (a half-copied folder) cannot be told apart; save or calibrate the bundle again to"
                    " record it", weights.parent / MANIFEST)
        return
    found = weights_hash(weights)
    if found != manifest.weights_blake2b:
        raise BundleError(f"{weights}: not the weights the manifest was written with (BLAKE2b {found}, the"
                          f" manifest's weights_blake2b is {manifest.weights_blake2b}); a bundle being copied is"
                          " loaded once both files are in place")


def _check_size(manifest: Manifest, file: Path, max_params: int, trust_code: bool,
                allowed_modules: Iterable[str] = ()) -> None:
    """Count the architecture's values on the meta device (no memory) before it is built for real."""
    try:
        with torch.device("meta"):
            skeleton = architectures.build(manifest.architecture, manifest.config, folder=file.parent,
                                           trust_code=trust_code, allowed_modules=allowed_modules)
    except BundleError as error:
        raise BundleError(f"{file}: {error}") from None
    except (ValueError, RuntimeError) as error:
        raise BundleError(f"{file}: architecture (built on the meta device to count its parameters): {error}") from None
    count = sum(tensor.numel() for tensor in skeleton.state_dict().values())
    if count > max_params:
        raise BundleError(f"{file}: architecture {manifest.architecture!r} has {count:,} parameters, over the"
                          f" limit of {max_params:,} (MCD_MAX_MODEL_PARAMS for the service)")


def _probe(bundle: Bundle, weights: Path) -> None:
    """Predict two rows (standardised -1 and +1) and check that every statistic is finite and that the
    target standardisation and output names fit the network's outputs."""
    manifest = bundle.manifest
    rows = bundle.probe_rows()
    try:
        raw = bundle.predictor.predict(rows, samples=PROBE_SAMPLES, seed=0)
    except Exception as error:  # noqa: BLE001 - whatever the probe meets is the bundle's failure
        raise BundleError(f"{weights}: the probe prediction at load failed: {error}") from None
    if isinstance(raw, RegressionPrediction):
        outputs = raw.mean.reshape(len(raw.mean), -1).shape[1]
        target = manifest.target_standardisation
        for key in ("mean", "std"):
            length = 0 if target is None else len(getattr(target, key))
            if length not in (0, 1, outputs):
                raise BundleError(f"{weights.parent / MANIFEST}: field 'preprocessing.target.{key}': {length}"
                                  f" values for a network with {outputs} output(s); expected 1 or {outputs}")
        if manifest.output_names is not None and len(manifest.output_names) != outputs:
            raise BundleError(f"{weights.parent / MANIFEST}: field 'outputs.names': {len(manifest.output_names)}"
                              f" names for a network with {outputs} output(s)")
    try:
        calibrated = bundle.predict_model_inputs(rows, samples=PROBE_SAMPLES, seed=0)
    except Exception as error:  # noqa: BLE001 - the calibration applied to the probe: the bundle's failure
        raise BundleError(f"{weights.parent / MANIFEST}: the calibrated probe prediction at load failed:"
                          f" {error}") from None
    if len(nonfinite_rows(calibrated)):
        raise BundleError(f"{weights}: the probe prediction at load gave NaN or infinite statistics: the"
                          " weights overflow float32 arithmetic")


def flush_subnormals(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Floating-point tensors with their subnormal values (nonzero, below the dtype's smallest normal,
    1.2e-38 in float32) set to zero.

    Training with weight decay leaves them behind (1,290 in the shipped digits CNN's first Linear), and
    on x86 CPUs every multiply that meets one takes a slow path: that one layer's products ran 7x
    slower. Zeroing them moves no output beyond float rounding, since any normal term of a sum
    outweighs them.
    """
    flushed = {}
    for key, tensor in tensors.items():
        if tensor.is_floating_point():
            subnormal = (tensor.abs() < torch.finfo(tensor.dtype).tiny) & (tensor != 0)
            if bool(subnormal.any()):
                tensor = tensor.masked_fill(subnormal, 0.0)
        flushed[key] = tensor
    return flushed


def _check_tensors(model: nn.Module, tensors: dict[str, torch.Tensor], weights: Path) -> None:
    expected = model.state_dict()
    problems, unsound = [], []
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing:
        problems.append("missing tensors: " + ", ".join(missing))
    if unexpected:
        problems.append("unexpected tensors: " + ", ".join(unexpected))
    for key in sorted(set(expected) & set(tensors)):
        tensor, wanted = tensors[key], expected[key]
        if tuple(wanted.shape) != tuple(tensor.shape):
            problems.append(f"{key} has shape {tuple(tensor.shape)} in the file but {tuple(wanted.shape)}"
                            " in the architecture")
        elif tensor.dtype != wanted.dtype:
            unsound.append(f"{key} has dtype {_dtype_name(tensor.dtype)} in the file but"
                            f" {_dtype_name(wanted.dtype)} in the architecture (weights are not converted)")
        elif tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            count = int((~torch.isfinite(tensor)).sum())
            unsound.append(f"{key} holds {count} NaN or infinite value(s)")
    if problems:
        raise BundleError(f"{weights}: does not match the manifest's architecture: " + "; ".join(problems))
    if unsound:
        raise BundleError(f"{weights}: unusable weights: " + "; ".join(unsound))


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")

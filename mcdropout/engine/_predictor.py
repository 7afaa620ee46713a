"""T stochastic forward passes as one batched computation.

For each block of input rows the deterministic prefix of the model (the layers
before the first stochastic one: an ``nn.Sequential``'s leading children, or in
any other model the modules that finish before it, :mod:`mcdropout.engine._prefix`)
runs once; its output is replicated along the batch dimension for a block of
MC samples and the rest of the model runs on ``samples x rows`` replicas at
once, in chunks sized to the memory budget. A channel dropout that opens the
rest and feeds a Linear through a Flatten is folded into per-channel shares
computed with the prefix (:mod:`mcdropout.engine._folding`).
Masks come from :class:`~mcdropout.engine._sampler.MaskSampler`, so a row's answer
depends only on (model, row, T, seed). Statistics stream into float64
accumulators (:mod:`mcdropout.stats`).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import re
import secrets
import threading
import warnings
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Union

import numpy as np
import torch
from torch import nn

from mcdropout.engine._coverage import ModuleStack, fired_in_train_mode, flag_gated, unsampled
from mcdropout.engine._folding import ChannelHead
from mcdropout.engine._inputs import RowDict, call_with_keywords, check_output_option, select_output
from mcdropout.engine._prefix import ModulePrefix, SharedRows
from mcdropout.engine._sampler import (
    ChunkLayout,
    MaskSampler,
    StochasticPrefixError,
    has_forward_hooks,
)
from mcdropout.engine._modes import (
    mc_modes,
    module_roles,
    stochastic_modules,
)
from mcdropout.vocabulary import TASKS as _TASKS
from mcdropout.stats import (
    ClassificationAccumulator,
    ClassificationPrediction,
    RegressionAccumulator,
    RegressionPrediction,
)
from mcdropout.engine._registry import is_torch_dropout, sampled_modules
from mcdropout.engine._thinned import ThinnedChain
from mcdropout.engine._thinned_conv import ThinnedConvChain
from mcdropout.errors import InputError

Prediction = Union[RegressionPrediction, ClassificationPrediction]
Task = Literal["regression", "classification"]
ArrayLike = Union[torch.Tensor, np.ndarray, Sequence]

TASKS = _TASKS  # mcdropout.vocabulary.Task
MASK_MODES = ("shared", "per_row")
AUTO_STEP = 32  # samples="auto" checks convergence every AUTO_STEP samples
PLANS_KEPT = 1024  # plans (per rows, T and input shape) kept before the cache starts over
CACHE_CHUNK_BYTES = 2 * 2**20  # on the CPU, a pass's widest activation stays within this (cache-sized)

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


def parse_bytes(size: int | str) -> int:
    """``268435456``, ``"256MB"`` or ``"256 MiB"`` -> bytes."""
    if isinstance(size, int) and not isinstance(size, bool):
        value = size
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(size))
        if not match or match.group(2).lower() not in _UNITS:
            raise InputError(f"memory_budget must be bytes or a size like '256MB' or '1GiB', got {size!r}")
        value = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if value <= 0:
        raise InputError(f"memory_budget must be positive, got {size!r}")
    return value


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` picks CUDA when present, else the CPU (what the service and ``mcdropout score`` run on)."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {str(device)!r} asked for, but CUDA is not available here; use 'auto' or 'cpu'")
    return resolved


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's parameters and buffers (the CPU for a model that has none)."""
    devices = {tensor.device for tensor in itertools.chain(model.parameters(), model.buffers())}
    if len(devices) > 1:
        raise InputError(f"the model's parameters are on several devices ({', '.join(sorted(map(str, devices)))});"
                         " MC dropout runs a model on one device")
    return devices.pop() if devices else torch.device("cpu")


_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def _model_lock(model: nn.Module) -> threading.RLock:
    """One lock per model: a pass switches its modules' modes and dropout forwards, so passes over one
    model from several threads take turns (torch parallelises inside each operation)."""
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.RLock()
        return lock


@dataclass(frozen=True)
class _Structure:
    """How the engine cuts a model's forward: the deterministic prefix (run once per row) and the sampled rest."""

    prefix: tuple[nn.Module, ...]  # leading children of a Sequential that hold no stochastic module
    suffix: Callable  # the rest of the model
    lead: nn.Module | None  # a torch dropout module opening a Sequential suffix, masked while replicating
    after_lead: Callable  # the suffix after ``lead``
    head: ChannelHead | None  # channel dropout -> Flatten -> Linear, folded into per-channel shares
    thinned: ThinnedChain | ThinnedConvChain | None  # a Linear or Conv2d chain run as thinned sub-networks

    @classmethod
    def of(cls, model: nn.Module) -> _Structure:
        prefix, suffix = _split_sequential(model)
        lead, after_lead = _leading_dropout(suffix)
        head = ChannelHead.find(lead, after_lead)
        thinned = None if head is not None else ThinnedChain.find(suffix) or ThinnedConvChain.find(suffix)
        return cls(tuple(prefix), suffix, lead, after_lead, head, thinned)

    @classmethod
    def whole(cls, model: nn.Module) -> _Structure:
        """Nothing shared: for an input shape whose leading layers call dropout functionally."""
        return cls((), model, None, model, None, None)

    @classmethod
    def keywords(cls, model: nn.Module) -> _Structure:
        """Named inputs (:class:`~mcdropout.engine._inputs.RowDict`): the model called with keywords."""
        forward = call_with_keywords(model)
        return cls((), forward, None, forward, None, None)


@dataclass(frozen=True, eq=False)  # hashed by identity: it keys the plans made from it
class _Probe:
    """What one small forward pass over an input shape tells the planner."""

    row_bytes: int  # working memory per replica row
    activation_bytes: int  # the widest activation of one replica row
    sample_bytes: int  # masks (and masked weights) per MC sample
    functional: bool  # dropout is called functionally: the passes need the function mode
    shared: ModulePrefix | None  # not a Sequential: the modules that run once per row
    structure: _Structure  # how the passes over this input shape cut the model
    hidden_shape: tuple[int, ...]  # each row's shape where the sampled part begins
    sequence: bool = False  # recurrent or attention layers: passes as wide as the budget allows (see _new_plan)


@dataclass(frozen=True)
class _Plan:
    rows: int  # input rows per block (prefix runs once per block)
    samples: int  # MC samples per forward pass
    functional: bool  # run the passes under the function mode that catches F.dropout calls
    shared: ModulePrefix | None  # modules that answer from their per-row outputs (see _Probe)
    structure: _Structure


class MCPredictor:
    """MC dropout predictions for one model.

    Args:
        model: a network with dropout: torch's ``nn.Dropout*``, ``AlphaDropout``,
            functional ``F.dropout`` calls, attention dropout (``F.scaled_dot_product_attention``,
            ``nn.MultiheadAttention``, transformer layers, Hugging Face attention), dropout
            between stacked ``nn.LSTM/GRU/RNN`` layers, or this project's layers. Every dropout
            that fires in train mode is sampled or named in an error.
        task: ``"regression"`` (outputs, or a ``(mean, log_variance)`` tuple from a
            heteroscedastic head) or ``"classification"`` (logits). A model that returns a
            mapping (a Hugging Face ``ModelOutput``) is read at its ``logits``.
        samples: T, an int >= 2, or ``"auto"``: sample until the MC standard error
            is below ``tolerance`` (relative to the predictive std for regression,
            absolute on class probabilities) or ``max_samples``, per row.
        tau: model precision for regression; aleatoric variance is 1/tau.
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda:0"``, ...
        memory_budget: working memory for one chunk of replicas (activations and
            masks), e.g. ``"256MB"``; the engine splits work to stay within it.
        masks: ``"shared"`` (default): sample t uses one mask per layer for every
            row, so rows are answered independently of their batch;
            ``"per_row"``: independent masks per (sample, row), for comparison.
        input_shape: the shape of one input row, checked when given.
        strict: raise (True) or warn (False) when the model fires, in train mode, dropout
            that cannot be sampled or randomness that is not dropout (found on the first
            call for each input shape).
        chunk_rows: the most replica rows per forward pass. Default: on the CPU,
            as many as keep the pass's widest activation within 2 MiB, which stays
            in cache (at batch 256, T=50 on a 64-512-512-10 MLP, 1,024-row chunks
            ran 25-35% faster than 4,096); on CUDA, as many as ``memory_budget`` allows.
        temperature: for a classifier, divides every MC sample's logits before the softmax (temperature
            scaling, fitted by :func:`mcdropout.stats.calibration.fit_temperature`); None: as they are.
        output: which of the model's outputs to read: a key of a returned mapping (default
            ``"logits"``) or an index of a returned tuple (default: the tuple as it is).
    """

    def __init__(
        self,
        model: nn.Module,
        task: Task = "regression",
        samples: int | Literal["auto"] = 100,
        *,
        tau: float | None = None,
        device: str | torch.device = "auto",
        memory_budget: int | str = "256MB",
        masks: Literal["shared", "per_row"] = "shared",
        tolerance: float = 0.01,
        max_samples: int = 10_000,
        input_shape: Sequence[int] | None = None,
        strict: bool = True,
        chunk_rows: int | None = None,
        temperature: float | None = None,
        output: str | int | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if task not in TASKS:
            raise InputError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
        if masks not in MASK_MODES:
            raise InputError(f"unknown masks {masks!r}; expected one of {', '.join(MASK_MODES)}")
        if tau is not None and not (isinstance(tau, (int, float)) and np.isfinite(tau) and tau > 0):
            raise InputError(f"tau must be a positive number, got {tau!r}")
        if tau is not None and task != "regression":
            raise InputError("tau applies to regression only")
        self.temperature = None if temperature is None else _check_temperature(temperature, task)
        _check_tolerance(tolerance)
        _check_samples(max_samples, "max_samples")
        if chunk_rows is not None and (not isinstance(chunk_rows, int) or chunk_rows < 1):
            raise InputError(f"chunk_rows must be a positive int or None, got {chunk_rows!r}")
        self.task = task
        self.samples = _check_samples(samples, "samples", allow_auto=True)
        self.tau = None if tau is None else float(tau)
        self.tolerance = float(tolerance)
        self.max_samples = max_samples
        self.masks = masks
        self.memory_budget = parse_bytes(memory_budget)
        self.chunk_rows = chunk_rows
        self.input_shape = None if input_shape is None else tuple(int(s) for s in input_shape)
        own = model_device(model)
        self.device = own if str(device) == "auto" else resolve_device(device)
        if self.device != own and not (self.device.type == own.type == "cuda" and self.device.index is None):
            raise InputError(f"the model is on {own}, device {str(device)!r} was asked for: the library runs a model"
                             f" where it is; move it first (model.to({str(device)!r})) or pass device='auto'")
        self.device = own
        self._on_cpu = self.device.type == "cpu"  # read once: each device.type is a call into torch
        self.model = model
        self.dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
        self.output = check_output_option(output)
        self.strict = strict
        self._structure = _Structure.of(model)
        self._gated: set[nn.Module] = set()  # modules found gating dropout on their own flag (the probe)
        self._roles = module_roles(model)
        self._dropout_modules = sampled_modules(model)
        self._lock = _model_lock(model)
        self._probed: dict[tuple[int, ...], _Probe] = {}
        self._plans: dict[tuple, _Plan] = {}

    # -- public --------------------------------------------------------------------

    def predict(
        self,
        x: ArrayLike,
        *,
        samples: int | Literal["auto"] | None = None,
        seed: int | None = None,
        return_samples: bool = False,
        max_samples: int | None = None,
        tolerance: float | None = None,
        temperature: float | None = None,
    ) -> Prediction:
        """Predictive distribution for each row of ``x`` (batch dimension first).

        ``max_samples`` caps ``samples="auto"`` for this call (at most the predictor's own), and
        ``tolerance`` replaces the predictor's own for this call. ``temperature`` (classifiers) divides
        each sample's logits for this call instead of the predictor's own temperature.

        ``seed`` picks the T sub-networks; None draws one, reported as ``.seed``.
        ``return_samples=True`` adds ``.samples`` of shape (rows, T, ...): the
        sampled outputs (regression) or probabilities (classification).
        """
        samples = self.samples if samples is None else _check_samples(samples, "samples", allow_auto=True)
        seed = _check_seed(seed)
        inputs = self.prepare_input(x)
        auto = samples == "auto"
        cap = self.max_samples if max_samples is None else min(self.max_samples, _check_samples(max_samples, "max_samples"))
        total = cap if auto else samples
        if tolerance is not None and not auto:
            raise InputError(f"tolerance applies with samples='auto'; got samples={samples!r}")
        tolerance = self.tolerance if tolerance is None else _check_tolerance(tolerance)
        temperature = self.temperature if temperature is None else _check_temperature(temperature, self.task)
        sampler = MaskSampler(self.device)  # active only inside forward passes, not around the statistics
        probe = self._probed.get(tuple(inputs.shape[1:]))
        with self._lock, torch.inference_mode():
            probe = probe or self._probe(inputs, sampler)
            with mc_modes(self._roles):
                plan = self._plan(inputs.shape[0], total, probe)
                accumulator, kept = self._run(inputs, sampler, plan, seed, total, auto, return_samples, tolerance,
                                              temperature)
        # spreads are variances: all zero, or some positive; a certain classifier is not refused
        if not bool(accumulator.spread().any()) and not accumulator.saturated():
            raise InputError(
                f"all {int(accumulator.moments.count.max())} MC samples came out identical for every row:"
                " the stochastic layers have no effect on the output (dropout p=0, or dropout placed where"
                " its effect cancels); MC dropout would report zero uncertainty"
            )
        return accumulator.result(seed, kept)

    # -- input and planning ------------------------------------------------------

    def prepare_input(self, x: ArrayLike | Mapping[str, ArrayLike]) -> torch.Tensor | RowDict:
        """Validate rows of ``x`` (numeric, finite, of ``input_shape``) as a tensor of the model's dtype;
        integer inputs (token ids) keep their dtype. A mapping of names to such arrays (a Hugging Face
        batch: ``input_ids``, ``attention_mask``, ...) is checked name by name, rows along dim 0."""
        if isinstance(x, Mapping):
            return self._prepare_named(x)
        return self._prepare_tensor(x, "inputs", self.input_shape)

    def _prepare_named(self, x: Mapping) -> RowDict:
        if not x:
            raise InputError("inputs are an empty mapping: name at least one input tensor (e.g. input_ids)")
        tensors = {}
        for name, value in x.items():
            if not isinstance(name, str) or not name.isidentifier():
                raise InputError(f"input names must be keyword names (e.g. 'input_ids'), got {name!r}")
            tensors[name] = self._prepare_tensor(value, f"inputs[{name!r}]", None)
        rows = {name: t.shape[0] for name, t in tensors.items()}
        if len(set(rows.values())) > 1:
            raise InputError(f"named inputs must have the same number of rows (dim 0); got {rows}")
        return RowDict(tensors)

    def _prepare_tensor(self, x: ArrayLike, field: str, input_shape: tuple[int, ...] | None) -> torch.Tensor:
        if isinstance(x, torch.Tensor):
            tensor = x.detach() if x.requires_grad else x
        else:
            array = np.asarray(x)
            if array.dtype.kind not in "biuf":
                raise InputError(f"{field} must be numeric, got an array of dtype {array.dtype}")
            tensor = torch.from_numpy(np.ascontiguousarray(array))
        dtype, shape = tensor.dtype, tensor.shape  # read once: each read is a call into torch
        if dtype.is_complex or dtype == torch.bool:
            raise InputError(f"{field} must be real numbers, got dtype {dtype}")
        if not shape:
            raise InputError(f"{field} must have a batch dimension first, got a scalar")
        if shape[0] == 0:
            raise InputError(f"{field} are empty: got 0 rows" if field == "inputs" else f"{field} is empty: got 0 rows")
        if input_shape is not None and tuple(shape[1:]) != input_shape:
            raise InputError(
                f"inputs have rows of shape {tuple(shape[1:])}, expected {input_shape}"
                f" (inputs of shape (rows, {', '.join(map(str, input_shape))}))"
            )
        if dtype.is_floating_point and dtype != self.dtype:  # first: a float64 past float32's range becomes inf
            tensor = tensor.to(self.dtype)
        if dtype.is_floating_point and not _all_finite(tensor):
            finite = torch.isfinite(tensor).reshape(shape[0], -1).all(dim=1)
            bad = torch.nonzero(~finite).flatten().tolist()
            if bad:
                shown = ", ".join(map(str, bad[:10])) + (", ..." if len(bad) > 10 else "")
                raise InputError(f"{field} contain NaN or inf in {len(bad)} row(s): {shown} (or values past the"
                                 f" range of the model's {str(self.dtype).removeprefix('torch.')})")
        if len(shape) >= 4:
            # Row-major strides, spelled out: a size-1 dimension may carry any stride, and numpy gives
            # (rows, 1, 8, 8) images a channel stride of 1, which torch reads as channels-last; the
            # convolutions then answer channels-last and every Flatten after them copies (a third of
            # a batched digits call).
            tensor = tensor.contiguous()
            tensor = tensor.view(tensor.shape)
        return tensor

    def _probe(self, inputs: torch.Tensor, sampler: MaskSampler) -> _Probe:
        """Memory per replica row and per MC sample, and whether dropout is called functionally.

        The probe pass runs under the function mode; a dropout call that reaches
        it (not a replaced module, not this project's layers) makes every later
        pass over this input shape run under the mode too.
        """
        key = tuple(inputs.shape[1:])
        if key in self._probed:
            return self._probed[key]
        first = inputs[:1].to(self.device)
        structure = _Structure.keywords(self.model) if isinstance(first, RowDict) else self._structure
        fired = self._fired_in_train_mode(structure, first, key)
        gated = flag_gated(fired) - self._gated
        if gated:  # modules that gate dropout on their own flag: switched on in every pass from now on
            self._gated |= gated
            self._roles = module_roles(self.model, self._gated)
            if any(module in gated for layer in structure.prefix for module in layer.modules()):
                structure = _Structure.whole(self.model)
        with mc_modes(self._roles):
            return self._probe_sampled(key, first, structure, sampler, fired)

    def _fired_in_train_mode(self, structure: _Structure, first: torch.Tensor | RowDict, key) -> list:
        """What the model fires on the probe row in train mode (BatchNorm-like modules in eval)."""
        whole = structure if isinstance(first, RowDict) else _Structure.whole(self.model)
        try:
            return fired_in_train_mode(self.model, lambda: whole.suffix(first))
        except (RuntimeError, IndexError, TypeError) as error:
            raise InputError(f"the model failed on inputs with rows of shape {key} (in train mode): {error}") from error

    def _probe_sampled(self, key, first, structure: _Structure, sampler: MaskSampler, fired: list) -> _Probe:
        """The engine's own probe pass, checked against what fired in train mode."""
        leaf_bytes = [0]  # the widest output of a leaf module in the sampled pass, per replica (2 replicas)
        in_suffix = [False]  # the prefix runs once per row, not per replica: its outputs do not count

        def record(_module, _args, output):
            if in_suffix[0] and isinstance(output, torch.Tensor):
                leaf_bytes[0] = max(leaf_bytes[0], output.numel() * output.element_size() // 2)

        hooks = [m.register_forward_hook(record) for m in self.model.modules() if not list(m.children())]
        calls_before = sampler.calls
        stack = ModuleStack(self.model)
        sampled_under: set[nn.Module] = set()  # the modules running when the pass drew masks
        try:
            try:
                hidden = self._run_prefix(structure, first, sampler, checked=False)
            except StochasticPrefixError:  # a leading layer drops out functionally on this shape: share nothing
                structure = _Structure.whole(self.model)
                hidden = first
            layout = ChunkLayout(seed=0, first_sample=0, num_samples=2, num_rows=1, row_ids=self._row_ids(range(1)))
            in_suffix[0] = True
            sampler.measuring = True
            sampler.trace = lambda: sampled_under.add(stack.innermost())
            with stack:
                outputs = self._run_suffix(structure, hidden, layout, sampler, functional=True)
        except (RuntimeError, IndexError, TypeError) as error:
            raise InputError(f"the model failed on inputs with rows of shape {key}: {error}") from error
        finally:
            sampler.measuring = False
            sampler.trace = None
            for hook in hooks:
                hook.remove()
        missed = unsampled(self.model, fired, sampled_under)
        if missed:
            message = ("the model fires, in train mode, randomness that MC sampling does not sample:\n  "
                       + "\n  ".join(missed))
            if sampler.calls == calls_before:
                raise InputError(message + "\n(and nothing else in the model is sampled)")
            if self.strict:
                raise InputError(message + "\n(pass strict=False to sample the rest and leave these as eval mode has them)")
            warnings.warn(message, stacklevel=4)
        if sampler.calls == calls_before:
            found = [name for name, _ in stochastic_modules(self.model)]
            detail = f" (it has {', '.join(found)}, but none of them ran)" if found else ""
            raise InputError(
                "the model has no stochastic layer that runs in its forward pass" + detail + ": MC dropout needs"
                " nn.Dropout (or Dropout1d/2d/3d, AlphaDropout, FeatureAlphaDropout, functional F.dropout,"
                " attention dropout, dropout between stacked LSTM/GRU/RNN layers, mcdropout.DropConnect,"
                " mcdropout.LockedDropout) with p > 0 to sample from"
            )
        self._check_outputs(outputs)
        hidden_bytes = hidden.numel() * hidden.element_size()
        row_bytes = hidden_bytes + 3 * leaf_bytes[0]
        if self.masks == "per_row":
            row_bytes += sampler.sample_bytes
            sample_bytes = 0
        else:
            sample_bytes = sampler.sample_bytes
        functional = sampler.functional_calls > 0
        shared = None
        if not structure.prefix and structure.lead is None:  # no Sequential prefix: look for modules to share
            shared = ModulePrefix.find(
                self.model, len(first), lambda: self._row_pass(structure, first, sampler, functional=True),
                lambda: self._run_suffix(structure, first, layout, sampler, functional=True), layout.num_samples,
            )
        sequence = sampler.attention_calls > 0 or bool(self._gated) or any(
            isinstance(module, (nn.RNNBase, nn.MultiheadAttention)) for module in self.model.modules())
        self._probed[key] = _Probe(max(row_bytes, 1), max(leaf_bytes[0], 1), sample_bytes, functional, shared,
                                   structure, tuple(hidden.shape[1:]), sequence)
        return self._probed[key]

    def _plan(self, rows: int, total: int, probe: _Probe) -> _Plan:
        """How a call over ``rows`` rows and ``total`` samples is cut into blocks and passes; kept,
        since a server asks for the same few plans again and again."""
        key = (rows, total, probe, self.memory_budget, self.chunk_rows)
        plan = self._plans.get(key)
        if plan is None:
            if len(self._plans) >= PLANS_KEPT:
                self._plans.clear()
            plan = self._plans[key] = self._new_plan(rows, total, probe)
        return plan

    def _new_plan(self, rows: int, total: int, probe: _Probe) -> _Plan:
        budget = self.memory_budget
        row_bytes, sample_bytes = probe.row_bytes, probe.sample_bytes
        if sample_bytes + row_bytes > budget:
            raise InputError(
                f"memory_budget of {budget} bytes is too small: one MC sample of one row needs about"
                f" {sample_bytes + row_bytes} bytes"
            )
        capacity = max(1, budget // row_bytes)
        if self.chunk_rows is not None:
            capacity = min(capacity, self.chunk_rows)
        elif self._on_cpu and not probe.sequence:
            # Recurrent and attention layers are left out: a recurrent kernel steps through time with one
            # small product per step, which needs many rows to be efficient (bench/transformers.py's 2-layer
            # LSTM took 49 s a call in cache-sized passes, 15 s in one pass of 960 replicas, on a loaded
            # 2-core machine), and an attention layer's rows are whole sequences, far wider than a cache.
            width = probe.activation_bytes
            thinned = probe.structure.thinned
            if thinned is not None and thinned.pays(min(rows, capacity), probe.hidden_shape):  # samples hold only their kept units
                width = thinned.activation_bytes(width, probe.hidden_shape)
            capacity = min(capacity, max(1, CACHE_CHUNK_BYTES // width))
        block_rows = min(rows, capacity, (budget - sample_bytes) // row_bytes)
        per_pass = min(total, max(1, capacity // block_rows), budget // (sample_bytes + block_rows * row_bytes))
        return _Plan(rows=block_rows, samples=max(1, per_pass), functional=probe.functional, shared=probe.shared,
                     structure=probe.structure)

    def _row_ids(self, rows: range | torch.Tensor) -> np.ndarray | None:
        """Each row's index in the caller's input, which per-row masks are drawn by; None for shared masks."""
        return np.asarray(rows) if self.masks == "per_row" else None

    # -- running -------------------------------------------------------------------

    def _run(self, inputs, sampler, plan, seed, total, auto, return_samples, tolerance, temperature):
        rows = inputs.shape[0]
        structure = plan.structure
        accumulator = None
        kept = None
        drawn = 0  # the most samples any row got (samples="auto" stops rows at different counts)
        for start in range(0, rows, plan.rows):
            stop = min(rows, start + plan.rows)
            block_inputs = inputs if stop - start == rows else inputs[start:stop]
            hidden = self._run_prefix(structure, self._on_device(block_inputs), sampler)
            if plan.shared is not None:
                shared = plan.shared.run(hidden, lambda rows: self._row_pass(structure, rows, sampler, plan.functional))
                if shared is not None:  # None: these rows took another path through forward; share nothing
                    hidden = shared
            active = None  # the block's rows still sampled (None: all); samples="auto" narrows it
            done = 0
            while done < total:
                window = min(total - done, AUTO_STEP) if auto else total - done
                block = hidden if active is None else hidden[(active - start).to(hidden.device)]
                memo: dict = {}  # what the thinned pass works out once for the block's rows
                index = slice(start, stop) if active is None else active.to(self.device)
                row_ids = self._row_ids(range(start, stop) if active is None else active)
                for first in range(done, done + window, plan.samples):
                    count = min(plan.samples, done + window - first)
                    layout = ChunkLayout(seed, first, count, stop - start if active is None else len(active), row_ids)
                    outputs = self._run_suffix(structure, block, layout, sampler, plan.functional, memo)
                    if accumulator is None:
                        accumulator = self._accumulator(rows, outputs, temperature)
                    values = accumulator.update(index, outputs, fresh=first == 0)
                    if return_samples:
                        rows_kept = torch.arange(start, stop) if active is None else active
                        kept = self._keep(kept, rows, total, rows_kept, first, values)
                done += window
                drawn = max(drawn, done)
                if auto:
                    active = torch.arange(start, stop) if active is None else active
                    active = active[~accumulator.converged(tolerance)[active.to(self.device)].cpu()]
                    if not len(active):
                        break
        if kept is not None and drawn < kept.shape[1]:
            kept = kept[:, :drawn].contiguous()  # samples="auto": no columns that no row reached
        return accumulator, kept

    def _on_device(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` on the model's device."""
        if self._on_cpu and x.is_cpu:
            return x
        return x if x.device == self.device else x.to(self.device)

    def _run_prefix(self, structure: _Structure, x: torch.Tensor, sampler: MaskSampler,
                    checked: bool = True) -> torch.Tensor:
        """The deterministic leading layers; ``checked=False`` (the probe) watches them for dropout calls."""
        if checked:
            return self._prefix_pass(structure, x)
        sampler.begin(None)  # a dropout call now raises StochasticPrefixError
        with sampler.applied((), functional=True):
            return self._prefix_pass(structure, x)

    @staticmethod
    def _prefix_pass(structure: _Structure, x: torch.Tensor) -> torch.Tensor:
        for layer in structure.prefix:
            x = layer(x)
        if structure.head is not None:
            x = structure.head.shares(x)
        return x

    def _row_pass(self, structure: _Structure, rows: torch.Tensor, sampler: MaskSampler, functional: bool):
        """The model on ``rows`` themselves, until its first stochastic call (StochasticPrefixError)."""
        sampler.begin(None)
        with sampler.applied(self._dropout_modules, functional):
            return structure.suffix(rows)

    def _run_suffix(self, structure: _Structure, hidden: torch.Tensor | SharedRows, layout: ChunkLayout,
                    sampler: MaskSampler, functional: bool, memo: dict | None = None):
        sampler.begin(layout)
        thinned = structure.thinned
        if (thinned is not None and not functional and layout.row_ids is None and not isinstance(hidden, SharedRows)
                and thinned.pays(layout.num_rows, tuple(hidden.shape[1:])) and thinned.unhooked()):
            return self._group(thinned(hidden, sampler, layout, {} if memo is None else memo), layout)  # each sample as its thinned network
        with sampler.applied(self._dropout_modules, functional):
            if structure.head is not None:  # channel dropout -> Flatten -> Linear: from per-channel shares
                outputs = structure.head(hidden, sampler, layout)
            elif structure.lead is not None:  # the suffix opens with dropout: mask while replicating
                outputs = structure.after_lead(sampler.module_dropout(structure.lead, hidden, replicated=False))
            else:  # sample-major replicas (row r of sample s at s*R + r): a stride-0 view for one row
                shared = hidden if isinstance(hidden, SharedRows) else None
                rows = hidden if shared is None else shared.inputs
                if len(rows) == 1:
                    replicas = rows.expand(layout.num_samples, *rows.shape[1:])
                else:
                    replicas = rows.repeat(layout.num_samples, *([1] * (rows.dim() - 1)))
                with contextlib.nullcontext() if shared is None else shared.replaying(layout.num_samples):
                    outputs = structure.suffix(replicas)
        return self._group(outputs, layout)

    def _group(self, outputs, layout: ChunkLayout):
        """(S*R, ...) model outputs -> (S, R, ...)."""
        outputs = select_output(outputs, self.output)
        parts = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
        grouped = []
        for part in parts:
            if not isinstance(part, torch.Tensor) or part.dim() == 0 or part.shape[0] != layout.batch:
                raise InputError(
                    "the model must return a batch-first tensor (or a (mean, log_variance) pair for"
                    f" heteroscedastic regression); got {_describe(outputs)}"
                )
            grouped.append(part.reshape(layout.num_samples, layout.num_rows, *part.shape[1:]))
        return grouped[0] if len(grouped) == 1 else tuple(grouped)

    def _check_outputs(self, outputs) -> None:
        if isinstance(outputs, tuple):
            if self.task != "regression" or len(outputs) != 2 or outputs[0].shape != outputs[1].shape:
                raise InputError(
                    f"a {self.task} model must return one tensor"
                    + (" or a (mean, log_variance) pair of equal shapes" if self.task == "regression" else "")
                    + f"; got {_describe(outputs)}"
                )
            if self.tau is not None:
                raise InputError("the model is heteroscedastic (returns mean and log-variance); do not pass tau too")
        elif self.task == "classification" and outputs.dim() != 3:  # (samples, rows, classes)
            raise InputError(f"a classifier must return logits of shape (rows, classes); got {_describe(outputs)}")

    def _accumulator(self, rows: int, outputs, temperature: float | None):
        if self.task == "classification":
            classes = outputs.shape[-1]
            return ClassificationAccumulator(rows, 2 if classes == 1 else classes, self.device, temperature)
        shape = tuple((outputs[0] if isinstance(outputs, tuple) else outputs).shape[2:])
        return RegressionAccumulator(rows, shape, self.device, self.tau)

    @staticmethod
    def _keep(kept, rows, total, active, first, values):
        if kept is None:
            kept = torch.full((rows, total, *values.shape[2:]), float("nan"), dtype=torch.float32)
        kept[active, first : first + values.shape[0]] = values.transpose(0, 1).to(torch.float32).cpu()
        return kept


def _check_tolerance(tolerance: Any) -> float:
    if isinstance(tolerance, bool) or not (isinstance(tolerance, (int, float)) and 0 < tolerance < 1):
        raise InputError(f"tolerance must be a number in (0, 1), got {tolerance!r}")
    return float(tolerance)


def _check_temperature(temperature: Any, task: str) -> float:
    if isinstance(temperature, bool) or not (isinstance(temperature, (int, float)) and np.isfinite(temperature)
                                             and temperature > 0 and task == "classification"):
        raise InputError(f"temperature must be a positive number, for classification only; got {temperature!r}")
    return float(temperature)


def predict(
    model: nn.Module,
    x: ArrayLike,
    samples: int | Literal["auto"] = 100,
    task: Task = "regression",
    seed: int | None = None,
    *,
    return_samples: bool = False,
    **options,
) -> Prediction:
    """One-off MC dropout prediction; ``options`` go to :class:`MCPredictor`."""
    predictor = MCPredictor(model, task=task, samples=samples, **options)
    return predictor.predict(x, seed=seed, return_samples=return_samples)


def _split_sequential(model: nn.Module) -> tuple[list[nn.Module], Callable]:
    """Leading children of an ``nn.Sequential`` (recursively) that hold no stochastic module, and the rest.

    A leading child may still call dropout functionally; the sampler raises
    :class:`StochasticPrefixError` then, and the engine stops sharing the prefix.
    """
    if not isinstance(model, nn.Sequential):
        return [], model
    children = list(model)
    for index, child in enumerate(children):
        if stochastic_modules(child):
            if isinstance(child, nn.Sequential):
                inner_prefix, inner_suffix = _split_sequential(child)
                if inner_prefix:
                    return children[:index] + inner_prefix, nn.Sequential(inner_suffix, *children[index + 1 :])
            return children[:index], nn.Sequential(*children[index:])
    return children, nn.Sequential()


def _leading_dropout(suffix: Callable) -> tuple[nn.Module | None, Callable]:
    """A torch dropout module that opens a Sequential suffix, and the rest of the suffix.

    The engine applies it to the prefix's output while replicating that output
    for the samples: one write of S x R rows instead of a copy and a masked copy.
    Not when the module has hooks (when the predictor is built), which only ``__call__`` runs.
    """
    if not isinstance(suffix, nn.Sequential) or not len(suffix):
        return None, suffix
    lead = suffix[0]
    if not is_torch_dropout(lead) or has_forward_hooks(lead):
        return None, suffix
    return lead, nn.Sequential(*list(suffix)[1:])


def _all_finite(tensor: torch.Tensor) -> bool:
    """True when ``tensor`` surely holds no NaN or inf; False sends the caller to its row check.

    One cheap reduction in the input's own dtype (torch.isfinite is several kernels): any NaN or inf
    makes the sum NaN or inf, and so may finite values that overflow it.
    """
    return math.isfinite(float(tensor.sum()))


def _check_samples(samples, name: str, allow_auto: bool = False):
    if allow_auto and samples == "auto":
        return samples
    if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or samples < 2:
        allowed = "an int >= 2" + (" or 'auto'" if allow_auto else "")
        raise InputError(f"{name} must be {allowed}, got {samples!r}")
    return int(samples)


def _check_seed(seed: int | None) -> int:
    if seed is None:
        return secrets.randbits(63)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**63:
        raise InputError(f"seed must be an integer from 0 to 2^63-1 or None, got {seed!r}")
    return int(seed)


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of " + ", ".join(_describe(v) for v in value)
    return type(value).__name__

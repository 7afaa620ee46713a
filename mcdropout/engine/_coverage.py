"""Every dropout that fires in train mode is sampled, or named with its cause: never silently off.

On the probe row the engine runs the model once in train mode (modules that hold
running statistics, :func:`~mcdropout.engine._registry.holds_state`, kept in
eval) under :class:`TrainModeRecorder`, a ``TorchFunctionMode`` scoped to that
pass and thread which notes which module was running when dropout, attention
dropout, dropout between stacked recurrent layers or other randomness fired,
and answers each such call without drawing a random number (so the process's
random state is untouched and nothing is learnt from it but *where*). Then:

- a module without a registry entry that called dropout itself (Hugging Face's
  attention classes pass ``dropout=0.0 if not self.training else p``) has its
  ``training`` flag switched on for the engine's passes, unless that would
  change something else: it holds buffers, or it draws other random numbers;
- the engine's own probe pass notes under which modules it drew masks; a module
  that fired dropout in train mode and got none is named, with why;
- randomness that is not dropout (RReLU, noise layers, a user's ``torch.rand``
  under ``self.training``) is named too: MC dropout keeps it in eval mode.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from mcdropout.engine._registry import (
    ATTENTION_FUNCTIONS,
    DROPOUT_FUNCTIONS,
    RANDOM_FUNCTIONS,
    entry,
    holds_state,
    is_stochastic,
)

_RECURRENT = (torch.lstm, torch.gru, torch.rnn_tanh, torch.rnn_relu)
_RRELU = (torch.nn.functional.rrelu, torch.nn.functional.rrelu_, torch.rrelu, torch.rrelu_)


@dataclass(frozen=True)
class Fired:
    """One stochastic call of the train-mode pass."""

    module: nn.Module  # the innermost module running when it fired (the model for a call in its own forward)
    kind: str  # "dropout" or "randomness"
    what: str  # the call, e.g. "F.scaled_dot_product_attention(dropout_p=0.5)"


class ModuleStack:
    """The module calls open at each moment of a forward pass, through hooks on every module while entered."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.open: list[nn.Module] = []
        self._hooks: list = []

    def innermost(self) -> nn.Module:
        return self.open[-1] if self.open else self.model

    def __enter__(self) -> ModuleStack:
        def enter(module, _args):
            self.open.append(module)

        def leave(module, _args, _output):
            if self.open and self.open[-1] is module:
                self.open.pop()

        for module in self.model.modules():
            self._hooks.append(module.register_forward_pre_hook(enter))
            self._hooks.append(module.register_forward_hook(leave, always_call=True))
        return self

    def __exit__(self, *exc_info) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        self.open.clear()


class TrainModeRecorder(TorchFunctionMode):
    """Notes every stochastic call with the module it ran in, and answers it without randomness: dropout
    as the identity, attention and recurrent kernels with their dropout off, random functions from a
    private generator, RReLU with its eval slope."""

    def __init__(self, stack: ModuleStack) -> None:
        super().__init__()
        self.stack = stack
        self.fired: list[Fired] = []
        self._generator = torch.Generator().manual_seed(0)

    def _note(self, kind: str, what: str) -> None:
        self.fired.append(Fired(self.stack.innermost(), kind, what))

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in DROPOUT_FUNCTIONS:
            p = float(args[1] if len(args) > 1 else kwargs.get("p", 0.5))
            training = args[2] if len(args) > 2 else kwargs.get("training", kwargs.get("train", True))
            if p > 0 and training:
                self._note("dropout", f"{_name(func)}(p={p:g})")
            return args[0] if args else kwargs["input"]
        if func in ATTENTION_FUNCTIONS:
            args, p = _replace(args, kwargs, 4, "dropout_p", 0.0, 0.0)
            if p:
                self._note("dropout", f"attention dropout, {_name(func)}(dropout_p={p:g})")
            return func(*args, **kwargs)
        if func is torch.nn.functional.multi_head_attention_forward:
            args, training = _replace(args, kwargs, 13, "training", False, True)
            p = args[10] if len(args) > 10 else kwargs.get("dropout_p", 0.0)
            if training and p:
                self._note("dropout", f"attention dropout, F.multi_head_attention_forward(dropout_p={p:g})")
            return func(*args, **kwargs)
        if func in _RECURRENT:
            offset = 0 if isinstance(args[3], bool) else 1  # packed sequences carry batch sizes second
            p, layers = args[5 + offset], args[4 + offset]
            args, training = _replace(args, kwargs, 6 + offset, "train", False, True)
            if training and p and layers > 1:
                self._note("dropout", f"dropout between stacked recurrent layers ({_name(func)}, dropout={p:g})")
            return func(*args, **kwargs)
        if func in RANDOM_FUNCTIONS:
            if func in _RRELU:
                args, training = _replace(args, kwargs, 3, "training", False, False)
                if training:
                    self._note("randomness", f"{_name(func)}(training=True) (random slopes)")
                return func(*args, **kwargs)
            self._note("randomness", _name(func))
            kwargs["generator"] = self._generator
        return func(*args, **kwargs)


def _replace(args: tuple, kwargs: dict, index: int, name: str, value, default):
    """``args`` with argument ``index`` (or keyword ``name``, in ``kwargs``) set to ``value``, and its value
    before (``default`` when it was not passed)."""
    if len(args) > index:
        return (*args[:index], value, *args[index + 1 :]), args[index]
    old = kwargs.get(name, default)
    kwargs[name] = value
    return args, old


def _name(func) -> str:
    """How a user calls ``func``: ``F.rrelu``, ``torch.rand_like``, ``Tensor.uniform_``."""
    module = getattr(func, "__module__", None) or ""
    qualname = getattr(func, "__qualname__", None) or getattr(func, "__name__", repr(func))
    short = qualname.rsplit(".", 1)[-1]
    if module.startswith("torch.nn.functional") or module == "torch._C._nn":
        return f"F.{short}"
    if qualname.startswith(("Tensor.", "TensorBase.")):
        return f"Tensor.{short}"
    return f"torch.{short}"


@contextlib.contextmanager
def train_mode(model: nn.Module) -> Iterator[None]:
    """Every module of ``model`` in train mode but those that hold state; every flag restored after, also on error."""
    changed = [module for module in model.modules() if module.training == holds_state(module)]
    try:
        for module in changed:
            vars(module)["training"] = not module.training
        yield
    finally:
        for module in changed:
            vars(module)["training"] = not module.training


def fired_in_train_mode(model: nn.Module, run: Callable[[], object]) -> list[Fired]:
    """What ``run`` (a forward pass of ``model`` on the probe row) fires in train mode."""
    with ModuleStack(model) as stack, train_mode(model), TrainModeRecorder(stack) as recorder:
        run()
    return recorder.fired


def flag_gated(fired: list[Fired]) -> set[nn.Module]:
    """The modules whose own ``training`` flag the engine switches on: they called dropout themselves (no
    registry entry), hold no state and draw no other random numbers."""
    random = {f.module for f in fired if f.kind == "randomness"}
    return {
        f.module for f in fired
        if f.kind == "dropout" and entry(f.module) is None and not is_stochastic(f.module)
        and not holds_state(f.module) and f.module not in random
    }


def unsampled(model: nn.Module, fired: list[Fired], sampled_under: set[nn.Module]) -> list[str]:
    """Messages naming each dropout that fired in train mode but not in the engine's pass, and each other
    randomness; empty when every dropout is sampled."""
    names = {module: name or "<model>" for name, module in model.named_modules()}
    random = {f.module for f in fired if f.kind == "randomness"}
    messages: dict[str, None] = {}  # ordered, without repeats (a module called once per layer)
    for f in fired:
        module = f.module
        if entry(module) is not None:  # a registry module: its forward is the sampler's whenever it runs
            continue
        label = f"{names.get(module, type(module).__name__)} ({type(module).__name__})"
        if f.kind == "randomness":
            messages[
                f"{label}: draws random numbers in train mode that are not dropout ({f.what}); MC dropout keeps"
                " it in eval mode, so a loop of train-mode passes would differ. Make it deterministic at"
                " inference (e.g. nn.LeakyReLU for nn.RReLU, no noise layer), or pass strict=False to sample"
                " the dropout with it in eval mode"
            ] = None
        elif module not in sampled_under:
            if module in random:
                why = ("its forward also draws other random numbers in train mode, so the engine does not switch"
                       " its training flag on")
            else:
                why = "the engine's pass did not reach it (it ran only in train mode, or under another path)"
            messages[f"{label}: {f.what} fires in train mode but is not sampled: {why}; use nn.Dropout"
                      " modules or F.dropout calls there instead"] = None
    return list(messages)

"""Prefix sharing for models that are not an ``nn.Sequential``: modules that finish before the first dropout.

In ``forward(x): h = self.body(x); return self.head(self.drop(h))`` the call to
``body`` ends before any stochastic layer runs, so its output for an input row
is the same in every MC sample. :class:`ModulePrefix` finds such modules with a
probe pass on one row that stops at the first stochastic call. Per block of
rows the engine then runs the model on the rows alone, up to that first call,
keeping each prefix module's output (:meth:`ModulePrefix.run`); in the sampled
passes the modules answer with those outputs repeated for the samples instead
of computing them again (:meth:`SharedRows.replaying`). The rest of
``forward`` runs as written, on the replicated input.

A module qualifies when it is the outermost call to finish before the first
stochastic call, holds parameters and no stochastic layer, has no hooks,
returns one batch-first tensor, is called once per forward pass, and in the
probe's sampled pass is given its row-pass input repeated for the samples (up
to float rounding: the ``forward`` around it does nothing batch-dependent).
Like the ``nn.Sequential`` prefix, it then runs once per row, not once per
replica.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from mcdropout.engine._sampler import (
    StochasticPrefixError,
    forwards_replaced,
    has_forward_hooks,
)
from mcdropout.engine._modes import is_stochastic


@dataclass(frozen=True)
class SharedRows:
    """A block's input rows and the prefix modules' outputs for them (rows first)."""

    modules: tuple[nn.Module, ...]
    inputs: torch.Tensor
    outputs: tuple[torch.Tensor, ...]

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, rows: torch.Tensor) -> SharedRows:
        return SharedRows(self.modules, self.inputs[rows], tuple(output[rows] for output in self.outputs))

    @property
    def device(self) -> torch.device:
        return self.inputs.device

    @contextlib.contextmanager
    def replaying(self, samples: int) -> Iterator[None]:
        """While active, each prefix module answers with its outputs for these rows, repeated for
        ``samples`` samples sample-major (row r of sample s at s*R + r): a fresh tensor, which later
        layers may write in place."""
        repeated = {
            module: output.repeat(samples, *([1] * (output.dim() - 1)))
            for module, output in zip(self.modules, self.outputs)
        }
        with forwards_replaced(self.modules, lambda module: lambda *_args, **_kwargs: repeated[module]):
            yield


@dataclass(frozen=True)
class _Call:
    module: nn.Module
    args: tuple
    output: object
    enclosing: tuple[nn.Module, ...]  # the module calls open around it, outermost first


class ModulePrefix:
    """The modules of a model that run once per input row, not once per replica."""

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        self.modules = tuple(modules)

    @classmethod
    def find(cls, model: nn.Module, rows: int, run_rows: Callable[[], object], run_replicas: Callable[[], object],
             samples: int) -> ModulePrefix | None:
        """Probe ``model``: ``run_rows`` runs it on ``rows`` input rows until its first stochastic call
        (which raises :class:`StochasticPrefixError`), ``run_replicas`` runs it whole on ``samples``
        replicas of them."""
        finished, still_open = _record(model, run_rows)
        if still_open is None:  # no stochastic call: nothing to share (the engine's probe reports it)
            return None
        calls = Counter(call.module for call in finished)
        candidates = {
            call.module: call.args[0] for call in finished
            if call.enclosing == still_open[: len(call.enclosing)]  # outermost: only open calls around it
            and calls[call.module] == 1 and _qualifies(call, rows)
        }
        if not candidates:
            return None
        replayed, _ = _record(model, run_replicas, only=candidates)
        inputs: dict[nn.Module, list] = {module: [] for module in candidates}
        for call in replayed:
            inputs[call.module].append(call.args[0] if call.args else None)
        shared = [module for module, row_input in candidates.items()
                  if len(inputs[module]) == 1 and _repeats(inputs[module][0], row_input, samples)]
        return cls(shared) if shared else None

    def run(self, rows: torch.Tensor, run_rows: Callable[[torch.Tensor], object]) -> SharedRows | None:
        """Run the model on ``rows`` up to its first stochastic call, keeping the prefix modules' outputs;
        None when one of them did not run (a forward pass that branches on its inputs' values)."""
        kept: dict[nn.Module, torch.Tensor] = {}
        with forwards_replaced(self.modules, lambda module: _keeping(module, kept)):
            try:
                run_rows(rows)
            except StochasticPrefixError:
                pass
        if len(kept) < len(self.modules):
            return None
        return SharedRows(self.modules, rows, tuple(kept[module] for module in self.modules))


def _record(model: nn.Module, run: Callable[[], object], only: Collection[nn.Module] | None = None):
    """Every module call of ``run`` that finished, and the calls still open when a stochastic layer
    stopped it (None when none did)."""
    open_calls: list[tuple[nn.Module, tuple]] = []
    finished: list[_Call] = []

    def enter(module, args):
        open_calls.append((module, args))

    def leave(module, _args, output):
        _, args = open_calls.pop()
        finished.append(_Call(module, args, output, tuple(m for m, _ in open_calls)))

    modules = [m for m in model.modules() if m is not model and (only is None or m in only)]
    hooks = [m.register_forward_pre_hook(enter) for m in modules] + [m.register_forward_hook(leave) for m in modules]
    try:
        try:
            run()
        except StochasticPrefixError:
            return finished, tuple(m for m, _ in open_calls)
    finally:
        for hook in hooks:
            hook.remove()
    return finished, None


def _qualifies(call: _Call, rows: int) -> bool:
    module, output = call.module, call.output
    return (
        isinstance(output, torch.Tensor) and output.dim() > 0 and output.shape[0] == rows
        and bool(call.args) and isinstance(call.args[0], torch.Tensor)
        and any(True for _ in module.parameters())  # worth sharing: it computes something
        and not any(is_stochastic(m) for m in module.modules())
        and not has_forward_hooks(module)  # __call__ would run them around a replay
    )


def _repeats(replicated: object, row: torch.Tensor, samples: int) -> bool:
    """``replicated`` is ``row`` repeated for the samples, sample-major, up to float rounding (a product
    over two rows may round differently from one over one row; a forward that treats the batch as a
    whole differs by far more)."""
    if not isinstance(replicated, torch.Tensor) or replicated.shape != (samples * row.shape[0], *row.shape[1:]):
        return False
    return torch.allclose(replicated, row.repeat(samples, *([1] * (row.dim() - 1))), rtol=1e-5, atol=1e-6)


def _keeping(module: nn.Module, kept: dict[nn.Module, torch.Tensor]) -> Callable:
    forward = type(module).forward

    def keep(*args, **kwargs):
        kept[module] = output = forward(module, *args, **kwargs)
        return output

    return keep


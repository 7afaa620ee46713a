"""A Sequential suffix run as a flat list of layers, its dropout applied by the sampler directly.

The usual sampled pass calls the suffix as the model wrote it, with each torch
dropout module's ``forward`` swapped for the sampler's for the length of the
pass. When the suffix is an ``nn.Sequential`` (nested ones flattened) of torch
dropout modules and layers that hold no stochastic module, none of that is
needed: the engine walks the layers itself. Each dropout's input goes to
:meth:`MaskSampler.module_dropout`, a Linear or ReLU without hooks is computed
by its torch function, and any other layer is called as it is. The masks are
drawn in the same order as in the usual pass, so the answers are the same.

Why: at batch 1 a call is a few small matrix products, and the Python around
them (module calls, forward swaps, context managers) costs about as much
again, more with cold caches. On the bench's MLP, called in random order after
the other contenders, the engine took 1.6-2.3x the deterministic floor. The
same steps written out inline took 1.04-1.16x.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from mcdropout.engine._sampler import MaskSampler, has_forward_hooks, is_dropout_module
from mcdropout.engine._modes import stochastic_modules


# What a step is: a Linear or ReLU without hooks (computed through its torch function), another
# deterministic layer (called), a torch dropout module.
_LINEAR, _RELU, _LAYER, _DROPOUT = range(4)


class FlatTail:
    """The layers of a Sequential suffix in call order, each with what kind of step it is."""

    def __init__(self, steps: list[tuple[nn.Module, int]]) -> None:
        self.steps = steps
        self.calls_modules = any(kind == _LAYER for _, kind in steps)  # False: no module's mode matters

    @classmethod
    def find(cls, suffix: object) -> FlatTail | None:
        """The flat tail of ``suffix`` when it opens with a torch dropout module and every other layer
        is free of stochastic modules; None otherwise. Hooks rule a dropout module or a Sequential out
        (only their ``__call__`` would run them); a deterministic layer is called with its hooks.
        """
        if not isinstance(suffix, nn.Sequential):
            return None
        steps = []
        for module in _flattened(suffix):
            if module is None:
                return None
            if is_dropout_module(module) and not has_forward_hooks(module):
                steps.append((module, _DROPOUT))
            elif stochastic_modules(module):
                return None
            else:
                steps.append((module, _kind(module)))
        if not steps or steps[0][1] != _DROPOUT:
            return None
        return cls(steps)

    def __call__(self, hidden: torch.Tensor, sampler: MaskSampler) -> torch.Tensor:
        """The suffix on ``hidden`` (each row once) for every sample of the sampler's pass, sample-major.

        A ReLU or a dropout whose input this pass made itself (a Linear's output, a masked copy)
        works in place, saving an activation's allocation and its trip through the cache.
        """
        x = hidden
        replicated = False  # the first dropout replicates the rows for the samples as it masks them
        owned = False  # x was made by this pass and nothing else holds it
        for step, kind in self.steps:
            if kind == _LINEAR:
                x, owned = F.linear(x, step.weight, step.bias), True
            elif kind == _RELU:
                x, owned = (x.relu_() if owned else torch.relu(x)), True
            elif kind == _LAYER:
                x, owned = step(x), False
            else:
                # p = 0 hands x back, or a view of it; any other p makes a fresh tensor or masks x in place
                x, owned = sampler.module_dropout(step, x, replicated=replicated, in_place=owned), owned or step.p != 0.0
                replicated = True
        return x


def direct(module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``module`` as the engine calls it: a Linear or ReLU without hooks (when the predictor is built)
    as the torch function its ``forward`` calls, skipping ``nn.Module.__call__``; anything else as is."""
    kind = _kind(module)
    if kind == _LINEAR:
        return lambda x: F.linear(x, module.weight, module.bias)
    return torch.relu if kind == _RELU else module


def _kind(module: nn.Module) -> int:
    """A deterministic layer's step: a Linear or ReLU without hooks is computed by its torch function."""
    if has_forward_hooks(module):
        return _LAYER
    return {nn.Linear: _LINEAR, nn.ReLU: _RELU}.get(type(module), _LAYER)


def _flattened(sequential: nn.Sequential) -> list[nn.Module | None]:
    """The leaves of nested Sequentials in call order; None stands for a Sequential with hooks."""
    layers: list[nn.Module | None] = []
    for module in sequential:
        if type(module) is nn.Sequential:
            layers.extend(_flattened(module) if not has_forward_hooks(module) else [None])
        else:
            layers.append(module)
    return layers

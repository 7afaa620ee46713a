"""Which modules are stochastic, and switching only them on."""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Iterator

from torch import nn

from mcdropout.engine._registry import FLAG_GATED_TYPES, STOCHASTIC_TYPES, is_stochastic

__all__ = ["STOCHASTIC_TYPES", "is_stochastic", "mc_dropout", "mc_modes", "module_roles", "stochastic_modules"]


def stochastic_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if is_stochastic(m)]


@contextlib.contextmanager
def mc_dropout(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode with only its stochastic modules in train mode.

    BatchNorm and every other module stay in eval, so no running statistic
    changes. Every module's previous mode is restored on exit, also on error.
    """
    with mc_modes(module_roles(model)):
        yield model


def module_roles(model: nn.Module, gated: Collection[nn.Module] = ()) -> list[tuple[nn.Module, bool]]:
    """Every module of ``model`` with whether MC mode trains it (stochastic, flag-gated, or in ``gated``:
    found calling dropout under its own flag) or not."""
    return [
        (module, is_stochastic(module) or isinstance(module, FLAG_GATED_TYPES) or module in gated)
        for module in model.modules()
    ]


class mc_modes:
    """:func:`mc_dropout` over a list from :func:`module_roles`, which a predictor walks once, not per call.

    A class rather than a contextlib generator: it runs on every prediction, and the generator's
    wrapper adds three Python calls to each.
    """

    def __init__(self, roles: list[tuple[nn.Module, bool]]) -> None:
        self.roles = roles
        self.changed: list[nn.Module] = []

    def __enter__(self) -> None:
        self.changed = [module for module, stochastic in self.roles if module.training != stochastic]
        _flip(self.changed)

    def __exit__(self, *exc_info) -> None:
        _flip(self.changed)


def _flip(modules: list[nn.Module]) -> None:
    # Straight into the instance dict, where nn.Module keeps ``training``: its
    # __setattr__ costs microseconds a call, and this runs on every prediction.
    for module in modules:
        vars(module)["training"] = not module.training

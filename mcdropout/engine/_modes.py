"""Which modules are stochastic, and switching only them on."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

from mcdropout.engine._registry import STOCHASTIC_TYPES, is_stochastic

__all__ = ["STOCHASTIC_TYPES", "is_stochastic", "mc_dropout", "mc_modes", "module_roles", "stochastic_modules"]


def stochastic_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if is_stochastic(m)]


def unsampled_dropout(model: nn.Module) -> list[str]:
    """Dropout that runs inside fused torch kernels, out of reach of per-sample masks.

    ``nn.LSTM(dropout=...)`` (and GRU/RNN) drop between layers inside one C++ call;
    ``nn.MultiheadAttention(dropout=...)`` drops attention weights inside its own
    kernel. MC sampling would silently leave these off, so they are named instead.
    """
    found = []
    for name, module in model.named_modules():
        label = name or "<model>"
        if isinstance(module, nn.RNNBase) and module.dropout > 0 and module.num_layers > 1:
            found.append(
                f"{label} ({type(module).__name__}(num_layers={module.num_layers}, dropout={module.dropout})):"
                " dropout between stacked layers runs inside torch's fused kernel; stack single-layer"
                " modules with mcdropout.LockedDropout between them instead"
            )
        if isinstance(module, nn.MultiheadAttention) and module.dropout > 0:
            found.append(
                f"{label} (MultiheadAttention(dropout={module.dropout})): attention dropout runs inside"
                " torch's attention kernel; set dropout=0 there and rely on the nn.Dropout layers"
            )
    return found


@contextlib.contextmanager
def mc_dropout(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode with only its stochastic modules in train mode.

    BatchNorm and every other module stay in eval, so no running statistic
    changes. Every module's previous mode is restored on exit, also on error.
    """
    with mc_modes(module_roles(model)):
        yield model


def module_roles(model: nn.Module) -> list[tuple[nn.Module, bool]]:
    """Every module of ``model`` with whether MC mode trains it (stochastic) or not."""
    return [(module, is_stochastic(module)) for module in model.modules()]


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

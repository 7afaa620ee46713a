"""Registry of buildable networks, looked up by name from a bundle's manifest.

Third-party packages add architectures through the entry-point group
``mcdropout.architectures``: each entry point names a callable that takes the
manifest's ``architecture.config`` as keyword arguments and returns a module.
A name with a colon is code instead: an import path (``my_pkg.nets:Net``) or a
class in the bundle's own ``model.py`` (``model.py:Net``, only when bundle code is
trusted); see :mod:`mcdropout.bundle._code`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mcdropout.bundle import _code
from mcdropout.bundle._text_transformer import TextTransformer
from mcdropout.layers import LockedDropout

ENTRY_POINT_GROUP = "mcdropout.architectures"

Builder = Callable[..., nn.Module]
_REGISTRY: dict[str, Builder] = {}


def register(name: str) -> Callable[[Builder], Builder]:
    """Decorator: make ``builder(**config)`` buildable as ``name``."""

    def decorate(builder: Builder) -> Builder:
        _REGISTRY[name] = builder
        return builder

    return decorate


def available() -> list[str]:
    _load_entry_points()
    return sorted(_REGISTRY)


def build(name: str, config: dict, *, folder: Path | None = None, trust_code: bool = False,
          allowed_modules: Iterable[str] = ()) -> nn.Module:
    """Build architecture ``name`` from its config; errors name what is unknown or wrong.

    ``folder`` is the bundle's, where a ``model.py:Class`` name is looked up (only with ``trust_code``);
    an import path is imported only with ``trust_code`` or when its module is in ``allowed_modules``.
    """
    if _code.is_code_path(name):
        builder = _code.resolve(name, folder, trust_code, allowed_modules)
        try:
            model = builder(**config)
        except (Exception, SystemExit) as error:  # the user's code: any failure is this architecture's
            raise ValueError(f"architecture {name!r} with config {config} failed: {type(error).__name__}:"
                             f" {error}") from error
        if not isinstance(model, nn.Module):
            raise ValueError(f"architecture {name!r} returned a {type(model).__name__}, not a torch.nn.Module")
        return model
    if name not in _REGISTRY:  # built-in names need no scan of the installed packages (about 10 ms)
        _load_entry_points()
    if name not in _REGISTRY:
        raise ValueError(f"unknown architecture {name!r}; known: {', '.join(sorted(_REGISTRY))}, an import path"
                         " ('my_pkg.nets:Net') or the bundle's own 'model.py:Net'")
    try:
        return _REGISTRY[name](**config)
    except (TypeError, ValueError, OverflowError, AttributeError, IndexError, KeyError, RuntimeError) as error:
        raise ValueError(f"architecture {name!r} does not take config {config}: {type(error).__name__}:"
                         f" {error}") from error


def _load_entry_points() -> None:
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        if entry.name not in _REGISTRY:
            _REGISTRY[entry.name] = entry.load()


def _activation(name: str) -> type[nn.Module]:
    choices = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "selu": nn.SELU}
    if name not in choices:
        raise ValueError(f"unknown activation {name!r}; known: {', '.join(choices)}")
    return choices[name]


def _mlp_builder(head: Callable[[int, int], nn.Module], doc: str) -> Builder:
    """An MLP builder whose hidden layers each end in dropout, finished by ``head(width, out_features)``."""

    def build(
        in_features: int,
        out_features: int,
        hidden: Sequence[int] = (50,),
        dropout: float = 0.05,
        activation: str = "relu",
        input_dropout: bool = False,
    ) -> nn.Sequential:
        layers: list[nn.Module] = [nn.Dropout(dropout)] if input_dropout else []
        width = in_features
        for size in hidden:
            layers += [nn.Linear(width, size), _activation(activation)(), nn.Dropout(dropout)]
            width = size
        return nn.Sequential(*layers, head(width, out_features))

    build.__doc__ = doc
    return build


class HeteroscedasticHead(nn.Module):
    """Two linear heads on shared features: the mean and the log of the noise variance."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.mean = nn.Linear(in_features, out_features)
        self.log_variance = nn.Linear(in_features, out_features)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mean(h), self.log_variance(h)


mlp = register("mlp")(_mlp_builder(
    nn.Linear, "Fully connected network with dropout after every hidden layer (regression with tau, or logits)."
))
heteroscedastic_mlp = register("heteroscedastic-mlp")(_mlp_builder(
    HeteroscedasticHead, "MLP returning (mean, log_variance): aleatoric noise that depends on the input."
))


@register("cnn")
def small_cnn(
    in_channels: int,
    height: int,
    width: int,
    classes: int,
    channels: Sequence[int] = (32, 64),
    hidden: int = 128,
    dropout: float = 0.25,
) -> nn.Sequential:
    """Two 3x3 convolutions, 2x2 pooling, channel dropout (Dropout2d), then a dropout MLP head."""
    first, second = channels
    return nn.Sequential(
        nn.Conv2d(in_channels, first, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(first, second, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Dropout2d(dropout),
        nn.Flatten(),
        nn.Linear(second * (height // 2) * (width // 2), hidden),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(hidden, classes),
    )


class SequenceRegressor(nn.Module):
    """LSTM over (batch, time, features) with variational dropout on its outputs (and optionally inputs).

    The last step's hidden state predicts ``out_features`` values. One dropout
    mask per sequence, shared across time steps (Gal & Ghahramani, 2016).
    Input dropout is off by default: with few input features it would blank
    whole sequences.
    """

    def __init__(self, in_features: int, out_features: int, hidden: int = 32, dropout: float = 0.1,
                 input_dropout: float = 0.0) -> None:
        super().__init__()
        self.input_dropout = LockedDropout(input_dropout)
        self.lstm = nn.LSTM(in_features, hidden, batch_first=True)
        self.output_dropout = LockedDropout(dropout)
        self.head = nn.Linear(hidden, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        states, _ = self.lstm(self.input_dropout(x))
        return self.head(self.output_dropout(states)[:, -1])


register("lstm")(SequenceRegressor)


register("text-transformer")(TextTransformer)


@register("transformers")
def transformers_classifier(**config: Any) -> nn.Module:
    """One of transformers' own ``*ForSequenceClassification`` classes, token ids in (mcdropout.bundle._hf);
    transformers is imported only here, when such a bundle is built."""
    from mcdropout.bundle import _hf

    return _hf.build(**config)

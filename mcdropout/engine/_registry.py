"""The one registry of stochastic layers: what counts as dropout, how its masks are shaped and drawn,
and which fast execution applies to it.

Every stochastic module type has one :class:`StochasticLayer` entry; every
functional dropout one :data:`DROPOUT_FUNCTIONS` entry. Masks are drawn by the
engine's :class:`~mcdropout.engine._sampler.MaskSampler` from (seed, layer,
sample) and shared by the rows of a pass:

- ``unit``: one mask element per feature (``nn.Dropout``, ``AlphaDropout``);
- ``channel``: one per channel, broadcast over positions (``Dropout1d/2d/3d``,
  ``FeatureAlphaDropout``);
- ``weight``: one per weight of the wrapped layer (:class:`~mcdropout.layers.DropConnect`);
- ``sequence``: one per feature, shared by every time step (:class:`~mcdropout.layers.LockedDropout`);
- ``attention``: one per (head, query, key) on the attention probabilities
  (``nn.MultiheadAttention``, and ``F.scaled_dot_product_attention(dropout_p=...)``
  through :data:`ATTENTION_FUNCTIONS`; :mod:`mcdropout.engine._attention`);
- ``between layers``: one per (time step, feature) on each stacked recurrent layer's output but the
  last (``nn.LSTM/GRU/RNN(num_layers > 1, dropout > 0)``; :mod:`mcdropout.engine._recurrent`).

Modules that gate dropout on their own ``training`` flag and have no entry
(Hugging Face attention classes, a user's module calling
``F.scaled_dot_product_attention(..., dropout_p=p if self.training else 0)``) are
found by the train-mode probe (:mod:`mcdropout.engine._coverage`) and get their
flag switched on for the pass; :data:`FLAG_GATED_TYPES` are torch's modules whose
flag does nothing but choose between their Python path (which calls their
dropout) and a fused inference path (which skips it). :data:`RANDOM_FUNCTIONS`
is the randomness that is not dropout: named in an error, never sampled.

During a pass the engine gives each registered module the entry's ``sample``
as its ``forward``; a subclass that keeps its parent's ``forward`` is sampled as
its parent, and one that overrides it is reached through the function mode
(its ``F.dropout`` calls). A new dropout variant is one entry here and its tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from mcdropout.engine._attention import multihead_attention, scaled_dot_product_attention
from mcdropout.engine._recurrent import samples_between_layers, stacked_recurrent
from mcdropout.layers import DropConnect, LockedDropout

Mask = Literal["unit", "channel", "weight", "sequence", "attention", "between layers"]


class MaskSampler(Protocol):
    """What a ``sample`` function asks of the engine's sampler (:class:`mcdropout.engine._sampler.MaskSampler`)."""

    def dropout(self, x: torch.Tensor, p: float, *, channelwise: bool, alpha: bool) -> torch.Tensor: ...

    def split(self, x: torch.Tensor, what: str) -> torch.Tensor: ...

    def keep(self, shape: tuple[int, ...], p: float, dtype: torch.dtype, scale: float = 1.0) -> torch.Tensor: ...


@dataclass(frozen=True)
class StochasticLayer:
    """How the engine samples one type of stochastic module."""

    mask: Mask
    alpha: bool  # alpha dropout: dropped units take SELU's saturation value, then an affine correction
    sample: Callable[[MaskSampler, Any, torch.Tensor], torch.Tensor]  # the module's forward inside a pass
    execution: str  # the fast path that applies (see the engine's README paragraph)
    applies: Callable[[nn.Module], bool] = lambda module: True  # this instance drops out (e.g. dropout > 0)

    @property
    def channelwise(self) -> bool:
        return self.mask == "channel"


def _torch_dropout(mask: Mask, alpha: bool, execution: str) -> StochasticLayer:
    def sample(sampler: MaskSampler, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return sampler.dropout(x, module.p, channelwise=mask == "channel", alpha=alpha)

    return StochasticLayer(mask, alpha, sample, execution)


def _drop_connect(sampler: MaskSampler, module: DropConnect, x: torch.Tensor) -> torch.Tensor:
    """Each sample's weight mask, shared by its rows: one batched product (Linear) or one grouped
    convolution (ConvNd) for all samples."""
    if module.p == 0:
        return module.layer(x)
    layer = module.layer
    grouped = sampler.split(x, "DropConnect")  # (S, R, ...)
    keep = sampler.keep(tuple(layer.weight.shape), module.p, layer.weight.dtype, 1.0 / (1.0 - module.p))
    weights = layer.weight * keep  # (S, 1|R, *weight.shape)
    samples, rows = grouped.shape[:2]
    if isinstance(layer, nn.Linear):
        if weights.shape[1] == 1:  # shared across rows: one batched matmul per sample
            flat = grouped.reshape(samples, -1, grouped.shape[-1])
            out = torch.bmm(flat, weights[:, 0].transpose(1, 2))
        else:
            flat = grouped.reshape(samples, rows, -1, grouped.shape[-1])
            out = torch.matmul(flat, weights.transpose(-1, -2))
        if layer.bias is not None:
            out = out + layer.bias
        return out.reshape(*x.shape[:-1], layer.out_features)
    # Convolutions: each weight set becomes a group of one grouped convolution.
    shared = weights.shape[1] == 1
    num_groups = samples if shared else samples * rows
    per_group = weights[:, 0] if shared else weights
    weight = per_group.reshape(num_groups * layer.weight.shape[0], *layer.weight.shape[1:])
    bias = layer.bias.repeat(num_groups) if layer.bias is not None else None
    spatial = x.shape[2:]
    if shared:  # (S, R, C, ...) -> (R, S*C, ...): every row sees all S weight sets
        inputs = grouped.transpose(0, 1).reshape(rows, samples * x.shape[1], *spatial)
    else:
        inputs = grouped.reshape(1, samples * rows * x.shape[1], *spatial)
    out = module.compute(inputs, weight, bias, groups=num_groups)
    out_spatial = out.shape[2:]
    if shared:
        out = out.reshape(rows, samples, layer.out_channels, *out_spatial).transpose(0, 1)
    return out.reshape(samples * rows, layer.out_channels, *out_spatial)


def _locked_dropout(sampler: MaskSampler, module: LockedDropout, x: torch.Tensor) -> torch.Tensor:
    """One mask per sample over the features, shared by every time step (and every row)."""
    module.check_input(x)
    if module.p == 0:
        return x
    seq_first = x if module.batch_first else x.transpose(0, 1)
    grouped = sampler.split(seq_first, "LockedDropout")  # (S, R, time, features)
    keep = sampler.keep((x.shape[2],), module.p, x.dtype, 1.0 / (1.0 - module.p))  # (S, 1|R, features)
    out = (grouped * keep.unsqueeze(2)).reshape(seq_first.shape)
    return out if module.batch_first else out.transpose(0, 1)


STOCHASTIC_LAYERS: dict[type[nn.Module], StochasticLayer] = {
    nn.Dropout: _torch_dropout("unit", False, "thinned: kept units of the Linear layers around it"),
    nn.Dropout1d: _torch_dropout("channel", False, "folded: per-channel shares of a following Flatten -> Linear"),
    nn.Dropout2d: _torch_dropout("channel", False, "folded: per-channel shares of a following Flatten -> Linear"),
    nn.Dropout3d: _torch_dropout("channel", False, "folded: per-channel shares of a following Flatten -> Linear"),
    nn.AlphaDropout: _torch_dropout("unit", True, "masked"),
    nn.FeatureAlphaDropout: _torch_dropout("channel", True, "masked"),
    DropConnect: StochasticLayer("weight", False, _drop_connect, "batched product / grouped convolution"),
    LockedDropout: StochasticLayer("sequence", False, _locked_dropout, "masked"),
    nn.MultiheadAttention: StochasticLayer(
        "attention", False, multihead_attention, "explicit attention", lambda module: module.dropout > 0
    ),
    nn.LSTM: StochasticLayer("between layers", False, stacked_recurrent, "layer by layer", samples_between_layers),
    nn.GRU: StochasticLayer("between layers", False, stacked_recurrent, "layer by layer", samples_between_layers),
    nn.RNN: StochasticLayer("between layers", False, stacked_recurrent, "layer by layer", samples_between_layers),
}

# Attention functions -> their sampled replacement (dropout_p is their fifth positional argument).
ATTENTION_FUNCTIONS: dict[Callable[..., Any], Callable[..., torch.Tensor]] = {
    F.scaled_dot_product_attention: scaled_dot_product_attention,
}

# Torch modules whose training flag only picks their Python path (calling their dropout) over a fused
# inference kernel that skips it: switched on in MC mode, nothing else about them changes.
FLAG_GATED_TYPES: tuple[type[nn.Module], ...] = (
    nn.TransformerEncoderLayer, nn.TransformerDecoderLayer, nn.TransformerEncoder, nn.TransformerDecoder,
    nn.Transformer,
)

# Randomness that is not dropout (noise, random slopes, a user's torch.rand under self.training).
RANDOM_FUNCTIONS: frozenset[Callable[..., Any]] = frozenset({
    torch.rand, torch.rand_like, torch.randn, torch.randn_like, torch.randint, torch.randint_like,
    torch.randperm, torch.bernoulli, torch.normal, torch.poisson, torch.multinomial,
    torch.Tensor.bernoulli, torch.Tensor.bernoulli_, torch.Tensor.uniform_, torch.Tensor.normal_,
    torch.Tensor.exponential_, torch.Tensor.geometric_, torch.Tensor.cauchy_, torch.Tensor.log_normal_,
    torch.Tensor.random_, torch.Tensor.multinomial, torch.rrelu, torch.rrelu_, F.rrelu, F.rrelu_,
})

# Functional dropout -> (mask, alpha); the probability is the second positional argument of each.
DROPOUT_FUNCTIONS: dict[Callable[..., Any], tuple[Mask, bool]] = {
    F.dropout: ("unit", False),
    F.dropout1d: ("channel", False),
    F.dropout2d: ("channel", False),
    F.dropout3d: ("channel", False),
    F.alpha_dropout: ("unit", True),
    F.feature_alpha_dropout: ("channel", True),
    torch.dropout: ("unit", False),
    torch.feature_dropout: ("channel", False),
    torch.alpha_dropout: ("unit", True),
    torch.feature_alpha_dropout: ("channel", True),
}

STOCHASTIC_TYPES: tuple[type[nn.Module], ...] = tuple(STOCHASTIC_LAYERS)
_TORCH_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


def entry(module: nn.Module) -> StochasticLayer | None:
    """The module's entry: its own type's, or its nearest registered parent's when it keeps that
    parent's ``forward``; None for any other module."""
    kind = type(module)
    found = STOCHASTIC_LAYERS.get(kind)
    if found is None:
        for parent in kind.__mro__[1:]:
            if parent in STOCHASTIC_LAYERS:
                found = STOCHASTIC_LAYERS[parent] if kind.forward is parent.forward else None
                break
    return found if found is not None and found.applies(module) else None


def is_stochastic(module: nn.Module) -> bool:
    """True for the modules that MC mode switches on (registered types and their subclasses that drop
    out: ``nn.MultiheadAttention`` with dropout, stacked recurrent modules with dropout between layers)."""
    if not isinstance(module, STOCHASTIC_TYPES):
        return False
    for kind in type(module).__mro__:
        if kind in STOCHASTIC_LAYERS:
            return STOCHASTIC_LAYERS[kind].applies(module)
    return True


def holds_state(module: nn.Module) -> bool:
    """BatchNorm-like: train mode may change the module's own persistent buffers (running statistics),
    so MC mode and the train-mode probe keep it in eval."""
    if isinstance(module, nn.modules.batchnorm._NormBase):
        return True
    return any(name not in module._non_persistent_buffers_set for name in module._buffers)


def is_torch_dropout(module: nn.Module) -> bool:
    """One of torch's six dropout modules itself (not a subclass, whose forward may differ)."""
    return type(module) in _TORCH_DROPOUT


def is_channel_dropout(module: nn.Module) -> bool:
    """Torch's ``Dropout1d/2d/3d`` itself: whole channels dropped, kept ones scaled (not alpha)."""
    found = STOCHASTIC_LAYERS.get(type(module))
    return is_torch_dropout(module) and found is not None and found.channelwise and not found.alpha


def sampled_modules(model: nn.Module) -> list[nn.Module]:
    """The modules of ``model`` whose ``forward`` a pass replaces with their entry's ``sample``."""
    return [module for module in model.modules() if entry(module) is not None]

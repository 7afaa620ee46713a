"""Stochastic layers from the dropout literature that torch does not ship.

Both behave like torch's dropout outside the engine (random masks in train
mode, identity in eval). Inside the engine each has its entry in the registry of
stochastic layers (:mod:`mcdropout.engine._registry`), which draws its
per-MC-sample masks; this module imports nothing of the engine.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mcdropout.errors import InputError, InputTypeError


_CONV_FUNCTIONS = {nn.Conv1d: F.conv1d, nn.Conv2d: F.conv2d, nn.Conv3d: F.conv3d}


def _check_p(p: float) -> float:
    if not 0.0 <= p < 1.0:
        raise InputError(f"p must be in [0, 1), got {p}")
    return float(p)


class DropConnect(nn.Module):
    """Drops individual weights of a wrapped Linear or ConvNd (Wan et al., 2013).

    The wrapped layer keeps its trained weights, bias and arguments (stride,
    padding, dilation, groups, padding mode). Kept weights are scaled by
    1/(1-p), so eval mode uses the weights unchanged. Inside the engine each
    MC sample gets its own weight mask, shared by the rows of the batch.
    """

    def __init__(self, layer: nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d, p: float = 0.5) -> None:
        super().__init__()
        if not isinstance(layer, (nn.Linear, *_CONV_FUNCTIONS)):
            raise InputTypeError(f"DropConnect wraps nn.Linear or nn.Conv1d/2d/3d, got {type(layer).__name__}")
        self.layer = layer
        self.p = _check_p(p)

    def extra_repr(self) -> str:
        return f"p={self.p}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return self.layer(x)
        keep = torch.rand_like(self.layer.weight) >= self.p
        return self.compute(x, self.layer.weight * keep / (1.0 - self.p), self.layer.bias)

    def compute(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, groups: int = 1) -> torch.Tensor:
        """The wrapped layer's operation with ``weight`` and ``bias`` in place of its own (``groups`` times its groups)."""
        layer = self.layer
        if isinstance(layer, nn.Linear):
            return F.linear(x, weight, bias)
        if layer.padding_mode != "zeros":
            x = F.pad(x, layer._reversed_padding_repeated_twice, mode=layer.padding_mode)
            padding = 0
        else:
            padding = layer.padding
        conv = _CONV_FUNCTIONS[type(layer)]
        return conv(x, weight, bias, layer.stride, padding, layer.dilation, layer.groups * groups)


class LockedDropout(nn.Module):
    """Variational dropout for sequences (Gal & Ghahramani, 2016; Merity et al., 2017).

    One mask per sequence over the feature dimension, shared by every time
    step. Input is (batch, time, features) with ``batch_first=True`` (the
    default) or (time, batch, features).
    """

    def __init__(self, p: float = 0.5, batch_first: bool = True) -> None:
        super().__init__()
        self.p = _check_p(p)
        self.batch_first = batch_first

    def extra_repr(self) -> str:
        return f"p={self.p}, batch_first={self.batch_first}"

    def check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 3:
            raise InputError(f"LockedDropout expects a 3-D (batch, time, features) tensor, got shape {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        if not self.training or self.p == 0:
            return x
        batch_dim = 0 if self.batch_first else 1
        mask_shape = [1, 1, x.shape[2]]
        mask_shape[batch_dim] = x.shape[batch_dim]
        keep = torch.rand(mask_shape, device=x.device) >= self.p
        return x * keep.to(x.dtype) / (1.0 - self.p)

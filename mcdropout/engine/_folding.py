"""Channel dropout feeding a linear layer, folded into per-channel shares.

``Dropout1d/2d/3d`` zero whole channels. When a ``Flatten`` and a ``Linear``
follow, a sample's output is ``W (x * m) + b = sum_c m_c (W_c x_c) + b``, and
``W_c x_c``, channel c's share of the product, is the same for every sample.
The engine computes the shares once per input row (rows x channels x outputs
values, one Linear's worth of work) and each sample adds them up under its
channel mask: channels x outputs multiply-adds per sample and row instead of
(channels x positions) x outputs. The shipped digits CNN (64 channels of 4 x 4
positions before a 1024-128 layer) does 16 times fewer. The masks are those
the unfolded pass would draw, so the answers agree to float rounding.
"""

from __future__ import annotations

import torch
from torch import nn

from mcdropout.engine._sampler import (
    ChunkLayout,
    MaskSampler,
    has_forward_hooks,
)
from mcdropout.engine._registry import is_channel_dropout
from mcdropout.engine._weight_layout import WeightLayout


class ChannelHead:
    """``channel dropout -> Flatten -> Linear`` opening a Sequential suffix, and the layers after it."""

    def __init__(self, dropout: nn.Module, linear: nn.Linear, rest: nn.Sequential) -> None:
        self.dropout = dropout
        self.linear = linear
        self.rest = rest
        self._by_channel: dict[int, WeightLayout] = {}  # channels -> the weight as (channels, positions, outputs)

    @classmethod
    def find(cls, lead: nn.Module | None, after: nn.Sequential) -> ChannelHead | None:
        """The folded head, when the suffix's leading dropout (the engine's ``_leading_dropout``, hooks
        already ruled out) is a channel dropout and ``after`` it come a Flatten and a Linear without
        hooks, which only their ``__call__`` would run."""
        if lead is None or not is_channel_dropout(lead) or len(after) < 2:
            return None
        flatten, linear = after[0], after[1]
        if not (
            type(flatten) is nn.Flatten and (flatten.start_dim, flatten.end_dim) == (1, -1)
            and type(linear) is nn.Linear
        ):
            return None
        if has_forward_hooks(flatten) or has_forward_hooks(linear):
            return None
        return cls(lead, linear, nn.Sequential(*list(after)[2:]))

    def shares(self, hidden: torch.Tensor) -> torch.Tensor:
        """(rows, channels, *positions) -> each channel's share of the Linear: (rows, channels, outputs),
        laid out channel-major in memory, so that the samples combine them in one matrix product."""
        rows, channels = hidden.shape[0], hidden.shape[1]
        by_channel = hidden.reshape(rows, channels, -1).transpose(0, 1).contiguous()  # (C, R, P)
        return torch.bmm(by_channel, self._weight_by_channel(channels)).transpose(0, 1)

    def _weight_by_channel(self, channels: int) -> torch.Tensor:
        """The Linear's weight as (channels, positions, outputs), contiguous for ``bmm``: laid out per
        call, or through ``einsum``, the product took 120-440 us for one row instead of 22, and
        420-625 us for 64 rows instead of 250."""
        laid_out = self._by_channel.get(channels)
        if laid_out is None:
            outputs = self.linear.out_features
            laid_out = WeightLayout(self.linear, lambda w: w.view(outputs, channels, -1).permute(1, 2, 0))
            self._by_channel[channels] = laid_out
        return laid_out.get()

    def __call__(self, shares: torch.Tensor, sampler: MaskSampler, layout: ChunkLayout) -> torch.Tensor:
        """The suffix's output for every replica of the pass, sample-major: (samples x rows, ...)."""
        rows, channels, outputs = shares.shape
        bias = self.linear.bias
        keep = sampler.layer_keep((channels,), self.dropout.p, shares.dtype)  # (S, 1 or R, C); None: p = 0
        if keep is None:  # every channel kept
            out = shares.sum(dim=1).expand(layout.num_samples, rows, outputs).reshape(layout.batch, outputs)
            return self.rest(out if bias is None else out + bias)
        if keep.shape[1] == 1:  # one product: (S, C) @ (C, R x O), sample-major as the pass wants
            by_channel = shares.permute(1, 0, 2).reshape(channels, rows * outputs)
            masks = keep.reshape(layout.num_samples, channels)
            out = torch.mm(masks, by_channel) if bias is None else torch.addmm(bias.repeat(rows), masks, by_channel)
            return self.rest(out.view(layout.batch, outputs))
        out = torch.bmm(keep.transpose(0, 1), shares).transpose(0, 1).reshape(layout.batch, outputs)
        return self.rest(out if bias is None else out + bias)

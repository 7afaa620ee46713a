"""Channel dropout before convolutions, each MC sample run as its thinned sub-network.

``Dropout2d`` keeps whole channels, and with shared masks every row of sample t
keeps the same ones. So sample t's convolution after a channel dropout reads
only its kept input channels and, when another channel dropout follows it,
computes only the output channels that one keeps. Every sample's kept block of
the weight is gathered (the dropout's ``1 / (1 - p)`` folded into it), and the
samples run as one grouped convolution, ``groups = samples``, over activations
laid out ``(rows, samples x kept channels, H, W)``; samples are padded to the
largest kept count with channels of zero weight.

Pooling and elementwise layers act on each channel alone, so they run on the
kept channels only; between a dropout and the convolution that reads it only
positively homogeneous ones (ReLU, max and average pooling) may stand, so that
the dropout's scale can move past them into the weight. Those after the opening
dropout run once per row, before any sample is made. A ``Flatten`` then hands
the kept channels' features to :class:`~mcdropout.engine._thinned.ThinnedChain`.

The masks are those of the dense masked pass (same layers, same order), so the
answers agree with it to float rounding.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mcdropout.engine._sampler import ChunkLayout, MaskSampler, has_forward_hooks
from mcdropout.engine._thinned import ELEMENTWISE, Kept, ThinnedChain, kept_units, leaves, rate

# Layers that act on each channel alone and commute with multiplying it by a positive number.
HOMOGENEOUS = (nn.ReLU, nn.LeakyReLU, nn.Identity, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
               nn.AdaptiveMaxPool2d)
PER_CHANNEL = (*ELEMENTWISE, *HOMOGENEOUS)

# A grouped convolution's multiply-add costs about this many of a dense one (oneDNN on the bench
# CNN's layers, 2-core CPU: 0.65-0.80 of the dense time for 0.56 of its multiply-adds), and a
# sample's gathered weight element (with its share of a pass's other fixed work) about
# GATHER_COST_CONV multiply-adds. Fitted on the bench CNN, T = 50, one thread: thinned took 1.39,
# 0.92 and 0.75 of the dense time at 1, 4 and 16 rows; the model says 1.58, 0.94 and 0.78.
GROUPED_COST = 1.3
GATHER_COST_CONV = 384.0


@dataclass(frozen=True)
class _Stage:
    """One Conv2d, the channel dropout on its input (None: every channel) and the layers around it."""

    dropout: nn.Dropout2d | None
    before: tuple[nn.Module, ...]  # between the dropout and the convolution (positively homogeneous)
    conv: nn.Conv2d
    after: tuple[nn.Module, ...]  # after the convolution, before the next dropout


class ThinnedConvChain:
    """A Sequential suffix ``Dropout2d, (per-channel*, Conv2d, per-channel*, Dropout2d?)+`` ending the model
    or followed by ``Flatten`` and a Linear chain, computed per thinned sample."""

    def __init__(self, stages: list[_Stage], last: nn.Dropout2d | None, last_before: tuple[nn.Module, ...],
                 tail: ThinnedChain | None) -> None:
        self.stages = stages
        self.last = last  # the channel dropout after the last convolution
        self.last_before = last_before  # between it and the Flatten
        self.tail = tail  # the Linear chain after the Flatten; None: the model ends with the convolutions
        self.modules = tuple(
            m for stage in stages for m in (stage.dropout, *stage.before, stage.conv, *stage.after) if m is not None
        ) + tuple(m for m in (last, *last_before) if m is not None) + (tail.modules if tail else ())
        self._spatial_sizes = functools.lru_cache(maxsize=16)(self._spatial)

    @classmethod
    def find(cls, suffix: object) -> ThinnedConvChain | None:
        if not isinstance(suffix, nn.Sequential):
            return None
        modules = list(leaves(suffix))
        stages: list[_Stage] = []
        dropout: nn.Dropout2d | None = None
        pending: list[nn.Module] = []  # layers since the last dropout or convolution
        for index, module in enumerate(modules):
            kind = type(module)
            if kind is nn.Dropout2d:
                if dropout is not None or (not stages and pending):
                    return None
                if stages:
                    stages[-1] = _Stage(stages[-1].dropout, stages[-1].before, stages[-1].conv, tuple(pending))
                dropout, pending = module, []
            elif kind is nn.Conv2d:
                if not _plain(module) or (dropout is None and not stages):
                    return None
                if dropout is not None and not all(type(m) in HOMOGENEOUS for m in pending):
                    return None
                if dropout is None:  # no dropout between two convolutions: the layers belong to the first
                    stages[-1] = _Stage(stages[-1].dropout, stages[-1].before, stages[-1].conv, tuple(pending))
                    pending = []
                stages.append(_Stage(dropout, tuple(pending), module, ()))
                dropout, pending = None, []
            elif kind in PER_CHANNEL:
                pending.append(module)
            elif kind is nn.Flatten and stages and (module.start_dim, module.end_dim) == (1, -1):
                return cls._ending(stages, dropout, pending, modules[index + 1:])
            else:
                return None
        return cls._ending(stages, dropout, pending, None)

    @classmethod
    def _ending(cls, stages: list[_Stage], dropout: nn.Dropout2d | None, pending: list[nn.Module],
                rest: list[nn.Module] | None) -> ThinnedConvChain | None:
        if not stages:
            return None
        if dropout is None:
            stages[-1] = _Stage(stages[-1].dropout, stages[-1].before, stages[-1].conv, tuple(pending))
            pending = []
        elif rest is None or not all(type(m) in HOMOGENEOUS for m in pending):
            return None  # a dropout the model ends with, or one whose scale cannot reach the Linear
        tail = None
        if rest is not None:
            tail = ThinnedChain.parse(rest)
            if tail is None or tail.layers[0].dropout is not None:
                return None
        chain = cls(stages, dropout, tuple(pending), tail)
        return chain if chain.unhooked() else None

    def unhooked(self) -> bool:
        """No module of the chain has hooks, which only its ``__call__`` would run (checked on every call)."""
        return not any(has_forward_hooks(module) for module in self.modules)

    # -- the cost model --------------------------------------------------------------

    def pays(self, rows: int, shape: tuple[int, ...] = ()) -> bool:
        """Whether thinning beats the dense masked pass for ``rows`` rows per sample of ``shape``
        (each row's shape at the chain's input, (channels, H, W)).

        Per sample a convolution of ``ci`` input and ``co`` output channels, ``K`` kernel positions and
        ``P`` output positions costs ``rows x P x ci x co x K`` dense and ``(rows x P x GROUPED_COST +
        GATHER_COST_CONV) x ki x ko x K`` thinned (``ki``, ``ko``: the expected kept counts); the Linear
        chain after it is costed as :meth:`ThinnedChain.costs` does.
        """
        if len(shape) != 3:
            return False
        dense = thinned = 0.0
        for index, (stage, positions) in enumerate(zip(self.stages, self._spatial_sizes(tuple(shape)))):
            conv = stage.conv
            kernel = conv.kernel_size[0] * conv.kernel_size[1]
            kept_in = conv.in_channels * (1.0 - rate(stage.dropout))
            kept_out = conv.out_channels * (1.0 - rate(self._dropout_after(index)))
            dense += rows * positions * conv.in_channels * conv.out_channels * kernel
            thinned += (rows * positions * GROUPED_COST + GATHER_COST_CONV) * kept_in * kept_out * kernel
        if self.tail is not None:
            tail_dense, tail_thinned = self.tail.costs(rows, first_kept=1.0 - rate(self.last))
            dense, thinned = dense + tail_dense, thinned + tail_thinned
        return thinned < dense

    def activation_bytes(self, dense_bytes: int, shape: tuple[int, ...]) -> int:
        """A replica's widest activation when thinned: the largest expected kept channels x positions
        of a convolution's output (the layers before the first one run on the rows themselves)."""
        widest = max(
            stage.conv.out_channels * (1.0 - rate(self._dropout_after(index))) * positions
            for index, (stage, positions) in enumerate(zip(self.stages, self._spatial_sizes(tuple(shape))))
        )
        return max(1, min(dense_bytes, round(widest * self.stages[0].conv.weight.element_size())))

    def _dropout_after(self, index: int) -> nn.Dropout2d | None:
        return self.stages[index + 1].dropout if index + 1 < len(self.stages) else self.last

    def _spatial(self, shape: tuple[int, ...]) -> list[int]:
        """Each convolution's number of output positions for rows of ``shape``, worked out on the meta device."""
        x = torch.empty((1, *shape), device="meta")
        sizes = []
        for stage in self.stages:
            for module in stage.before:
                x = module(x)
            conv = stage.conv
            x = F.conv2d(x, torch.empty(conv.weight.shape, device="meta"), None, conv.stride, conv.padding,
                         conv.dilation)
            sizes.append(x.shape[2] * x.shape[3])
            for module in stage.after:
                x = module(x)
        return sizes

    # -- the pass ----------------------------------------------------------------------

    def __call__(self, hidden: torch.Tensor, sampler: MaskSampler, layout: ChunkLayout,
                 memo: dict | None = None) -> torch.Tensor:
        """The chain on ``hidden`` (each row once, (rows, channels, H, W)) for every sample: (samples x rows, ...).

        ``memo`` keeps what depends on the rows alone (the layers before the first convolution) across
        the passes over one block of rows; the engine gives one dict per block.
        """
        samples, dtype = layout.num_samples, hidden.dtype
        kept = [None if stage.dropout is None else kept_units(sampler, stage.dropout, stage.conv.in_channels, dtype)
                for stage in self.stages]
        last = None if self.last is None else kept_units(sampler, self.last, self.stages[-1].conv.out_channels, dtype)
        x = self._opened(hidden) if memo is None else memo.get("opened")
        if x is None:
            x = memo["opened"] = self._opened(hidden)
        if kept[0] is not None:
            x = x.index_select(1, kept[0][0].flatten())  # (rows, S x k, H, W)
        else:
            x = x.repeat(1, samples, 1, 1)
        for index, stage in enumerate(self.stages):
            if index > 0:
                for module in stage.before:
                    x = module(x)
            out = kept[index + 1] if index + 1 < len(kept) else last
            weight, bias = _blocks(stage.conv, kept[index], out, samples)
            conv = stage.conv
            x = F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, groups=samples)
            for module in stage.after:
                x = module(x)
        for module in self.last_before:
            x = module(x)
        rows, channels = x.shape[0], x.shape[1] // samples
        if self.tail is None:  # (rows, S x C, H, W) -> sample-major (S x rows, C, H, W)
            return x.view(rows, samples, channels, *x.shape[2:]).transpose(0, 1).reshape(
                layout.batch, channels, *x.shape[2:])
        positions = x.shape[2] * x.shape[3]
        features = x.reshape(rows, samples, channels * positions).permute(1, 2, 0)  # (S, k x P, rows)
        columns = None
        if last is not None:  # channel c's features are c x P ... c x P + P - 1 of the Flatten
            index, scale = last
            offsets = torch.arange(positions, device=index.device)
            columns = ((index[:, :, None] * positions + offsets).flatten(1),
                       scale[:, :, None].expand(-1, -1, positions).flatten(1))
        tail_kept = self.tail.draw(sampler, dtype)
        tail_kept[0] = columns
        return self.tail.run(features, tail_kept, layout)


    def _opened(self, hidden: torch.Tensor) -> torch.Tensor:
        """The layers between the opening dropout and the first convolution, on the rows themselves: they
        commute with choosing channels and with the dropout's positive scale."""
        x = hidden
        if any(getattr(module, "inplace", False) for module in self.stages[0].before):
            x = x.clone()  # the block's prefix output, which its next sample passes read again
        for module in self.stages[0].before:
            x = module(x)
        return x


def _plain(conv: nn.Conv2d) -> bool:
    """A convolution this module can group: one group, zero padding."""
    return conv.groups == 1 and conv.padding_mode == "zeros"


def _blocks(conv: nn.Conv2d, columns: Kept | None, rows: Kept | None, samples: int):
    """Every sample's kept block of the weight, as one grouped convolution's (S x k_out, k_in, kh, kw)
    weight, and its bias (S x k_out)."""
    weight, bias = conv.weight, conv.bias
    if rows is not None:
        out_index = rows[0]
        block = weight.index_select(0, out_index.flatten()).view(samples, -1, *weight.shape[1:])
        bias = None if bias is None else bias[out_index].flatten()
    else:
        block = weight.expand(samples, *weight.shape)
        bias = None if bias is None else bias.repeat(samples)
    if columns is not None:
        in_index, scale = columns
        shape = (samples, block.shape[1], in_index.shape[1], *weight.shape[2:])
        block = block.gather(2, in_index[:, None, :, None, None].expand(shape))
        block = block * scale[:, None, :, None, None]  # the dropout's 1 / (1 - p), 0 on padding
    return block.reshape(-1, *block.shape[2:]), bias

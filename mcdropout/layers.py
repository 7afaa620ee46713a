"""Stochastic layers from the dropout literature that torch does not ship.

Both behave like torch's dropout outside the engine (random masks in train
mode, identity in eval) and draw per-MC-sample masks from the engine's
:class:`~mcdropout.engine._sampler.MaskSampler` inside it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


_CONV_FUNCTIONS = {nn.Conv1d: F.conv1d, nn.Conv2d: F.conv2d, nn.Conv3d: F.conv3d}


def _check_p(p: float) -> float:
    if not 0.0 <= p < 1.0:
        raise ValueError(f"p must be in [0, 1), got {p}")
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
            raise TypeError(f"DropConnect wraps nn.Linear or nn.Conv1d/2d/3d, got {type(layer).__name__}")
        self.layer = layer
        self.p = _check_p(p)

    def extra_repr(self) -> str:
        return f"p={self.p}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from mcdropout.engine._sampler import active_sampler  # here: the engine imports this module

        sampler = active_sampler()
        if sampler is not None and self.p > 0:
            return self._forward_sampled(x, sampler)
        if not self.training or self.p == 0:
            return self.layer(x)
        keep = torch.rand_like(self.layer.weight) >= self.p
        return self._compute(x, self.layer.weight * keep / (1.0 - self.p), self.layer.bias)

    def _compute(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, groups: int = 1) -> torch.Tensor:
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

    def _forward_sampled(self, x: torch.Tensor, sampler) -> torch.Tensor:
        layer = self.layer
        grouped = sampler.split(x, "DropConnect")  # (S, R, ...)
        keep = sampler.keep(tuple(layer.weight.shape), self.p, layer.weight.dtype, 1.0 / (1.0 - self.p))
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
        out = self._compute(inputs, weight, bias, groups=num_groups)
        out_spatial = out.shape[2:]
        if shared:
            out = out.reshape(rows, samples, layer.out_channels, *out_spatial).transpose(0, 1)
        return out.reshape(samples * rows, layer.out_channels, *out_spatial)


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3:
            raise ValueError(f"LockedDropout expects a 3-D (batch, time, features) tensor, got shape {tuple(x.shape)}")
        from mcdropout.engine._sampler import active_sampler  # here: the engine imports this module

        sampler = active_sampler()
        if sampler is not None and self.p > 0:
            return self._forward_sampled(x, sampler)
        if not self.training or self.p == 0:
            return x
        batch_dim = 0 if self.batch_first else 1
        mask_shape = [1, 1, x.shape[2]]
        mask_shape[batch_dim] = x.shape[batch_dim]
        keep = torch.rand(mask_shape, device=x.device) >= self.p
        return x * keep.to(x.dtype) / (1.0 - self.p)

    def _forward_sampled(self, x: torch.Tensor, sampler) -> torch.Tensor:
        seq_first = x if self.batch_first else x.transpose(0, 1)
        grouped = sampler.split(seq_first, "LockedDropout")  # (S, R, time, features)
        keep = sampler.keep((x.shape[2],), self.p, x.dtype, 1.0 / (1.0 - self.p))  # (S, 1|R, features)
        out = grouped * keep.unsqueeze(2)
        out = out.reshape(seq_first.shape)
        return out if self.batch_first else out.transpose(0, 1)

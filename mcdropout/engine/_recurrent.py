"""Dropout between stacked recurrent layers, with each MC sample's masks shared by its rows.

``nn.LSTM``, ``nn.GRU`` and ``nn.RNN`` with ``num_layers > 1`` and ``dropout > 0``
drop each layer's output sequence, except the last layer's, inside one fused
call. During a pass the engine runs such a module one layer at a time through
the same torch kernels (``torch.lstm``, ``torch.gru``, ``torch.rnn_tanh``,
``torch.rnn_relu``), handing them the module's own parameters (no copy), and
applies the sample's mask between the layers: one element per (time step,
feature), as torch's dropout between layers draws it, shared by the rows.
The module itself is not changed. :class:`mcdropout.LockedDropout` between
single-layer modules remains the variational alternative (one mask per
sequence).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from mcdropout.errors import InputError

_KERNELS = {"LSTM": torch.lstm, "GRU": torch.gru, "RNN_TANH": torch.rnn_tanh, "RNN_RELU": torch.rnn_relu}


def samples_between_layers(module: nn.Module) -> bool:
    """A stacked recurrent module whose train mode drops between its layers."""
    return isinstance(module, nn.RNNBase) and module.num_layers > 1 and module.dropout > 0


def stacked_recurrent(sampler: Any, module: nn.RNNBase, input: torch.Tensor, hx: Any = None):
    """The module's forward with the pass's masks between its layers; same outputs and final states as torch's."""
    if isinstance(input, PackedSequence):
        raise InputError(f"MC sampling of {type(module).__name__}(num_layers={module.num_layers}, dropout="
                         f"{module.dropout}) takes padded tensors, not a PackedSequence")
    if input.dim() != 3:
        raise InputError(f"MC sampling needs batched inputs to {type(module).__name__}; got shape {tuple(input.shape)}")
    x = input if module.batch_first else input.transpose(0, 1)  # batch-first: the masks broadcast over rows
    lstm = module.mode == "LSTM"
    directions = 2 if module.bidirectional else 1
    layers = module.num_layers
    states = hx if hx is not None else _zero_states(module, x, directions)
    kernel = _KERNELS[module.mode]
    weights = module.all_weights  # per (layer, direction): the module's own tensors
    finals: list[tuple[torch.Tensor, ...]] = []
    for layer in range(layers):
        if layer:
            x = sampler.dropout(x, module.dropout, channelwise=False, alpha=False)
        own = slice(layer * directions, (layer + 1) * directions)
        params = [tensor for index in range(own.start, own.stop) for tensor in weights[index]]
        state = (states[0][own], states[1][own]) if lstm else states[own]
        x, *final = kernel(x, state, params, module.bias, 1, 0.0, False, module.bidirectional, True)
        finals.append(tuple(final))
    output = x if module.batch_first else x.transpose(0, 1)
    if lstm:
        return output, (torch.cat([f[0] for f in finals]), torch.cat([f[1] for f in finals]))
    return output, torch.cat([f[0] for f in finals])


def _zero_states(module: nn.RNNBase, x: torch.Tensor, directions: int):
    rows = x.shape[0]
    out_width = module.proj_size if getattr(module, "proj_size", 0) else module.hidden_size
    h = x.new_zeros(module.num_layers * directions, rows, out_width)
    if module.mode == "LSTM":
        return h, x.new_zeros(module.num_layers * directions, rows, module.hidden_size)
    return h

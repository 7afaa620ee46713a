"""Attention dropout with each MC sample's mask shared by its rows.

Dropout on attention probabilities multiplies the softmax's output, which a fused
attention kernel cannot take as an input (its ``attn_mask`` is added before the
softmax). Where a pass asks for attention dropout the engine therefore computes
the attention explicitly: scores, mask, softmax, the sample's keep-mask of shape
(heads, queries, keys), then the product with the values. Without dropout the
fused kernel runs as usual.

Two ways in, both entries of the registry of stochastic layers
(:mod:`mcdropout.engine._registry`):

- :func:`scaled_dot_product_attention` replaces a call of
  ``F.scaled_dot_product_attention(..., dropout_p=p)`` (Hugging Face's sdpa path,
  a user's own module) that the engine's function mode catches;
- :func:`multihead_attention` is ``nn.MultiheadAttention``'s forward during a
  pass: its own weights, torch's mask conventions, the same explicit attention.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mcdropout.errors import InputError


def scaled_dot_product_attention(
    sampler: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` with the pass's per-sample masks on the attention probabilities."""
    if dropout_p == 0.0:
        return F.scaled_dot_product_attention(
            query, key, value, attn_mask=attn_mask, is_causal=is_causal, scale=scale, enable_gqa=enable_gqa
        )
    if enable_gqa and key.dim() >= 3 and key.shape[-3] != query.shape[-3]:
        groups = query.shape[-3] // key.shape[-3]
        key, value = key.repeat_interleave(groups, dim=-3), value.repeat_interleave(groups, dim=-3)
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    scores = torch.matmul(query * scale, key.transpose(-2, -1))  # a fresh tensor: masked in place
    if is_causal:  # top-left aligned, as torch's: every query keeps at least its first key
        allowed = torch.ones(query.shape[-2], key.shape[-2], dtype=torch.bool, device=query.device).tril()
        scores.masked_fill_(~allowed, float("-inf"))
    blocked = None
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:  # True: takes part in attention
            blocked = ~attn_mask
            scores.masked_fill_(blocked, float("-inf"))
        else:
            blocked = torch.isneginf(attn_mask)
            scores.add_(attn_mask)
    return torch.matmul(_dropped_probabilities(sampler, scores, dropout_p, blocked), value)


def _dropped_probabilities(sampler: Any, scores: torch.Tensor, p: float, blocked: torch.Tensor | None) -> torch.Tensor:
    """Softmax over the keys, then each sample's keep-mask of shape (heads, queries, keys)."""
    probabilities = torch.softmax(scores, dim=-1)
    if blocked is not None and bool(blocked.all(dim=-1).any()):
        # a query whose every key is masked attends to nothing (0), as torch's own attention answers
        probabilities.nan_to_num_(0.0)
    return sampler.dropout(probabilities, p, channelwise=False, alpha=False, in_place=True)


def multihead_attention(
    sampler: Any,
    module: nn.MultiheadAttention,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
    need_weights: bool = True,
    attn_mask: torch.Tensor | None = None,
    average_attn_weights: bool = True,
    is_causal: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``nn.MultiheadAttention.forward`` inside a pass: the module's own projections, its attention
    dropout with the pass's masks, and the (dropped) attention weights when asked for, as torch returns them."""
    if module.bias_k is not None or module.add_zero_attn:
        raise InputError(
            "nn.MultiheadAttention with add_bias_kv or add_zero_attn is not sampled by mcdropout; build it"
            " without them, or set its dropout to 0 and put nn.Dropout layers around it"
        )
    if query.dim() != 3:
        raise InputError(f"MC sampling needs batched inputs to nn.MultiheadAttention; got shape {tuple(query.shape)}")
    if not module.batch_first:
        query, key, value = (tensor.transpose(0, 1) for tensor in (query, key, value))
    batch, queries, width = query.shape
    keys, heads, head_width = key.shape[1], module.num_heads, module.head_dim
    if module.in_proj_weight is not None:
        w_q, w_k, w_v = module.in_proj_weight.chunk(3)
    else:
        w_q, w_k, w_v = module.q_proj_weight, module.k_proj_weight, module.v_proj_weight
    b_q, b_k, b_v = module.in_proj_bias.chunk(3) if module.in_proj_bias is not None else (None, None, None)
    q = F.linear(query, w_q, b_q).view(batch, queries, heads, head_width).transpose(1, 2)
    k = F.linear(key, w_k, b_k).view(batch, keys, heads, head_width).transpose(1, 2)
    v = F.linear(value, w_v, b_v).view(batch, keys, heads, head_width).transpose(1, 2)
    scores = torch.matmul(q * head_width**-0.5, k.transpose(-2, -1))  # (batch, heads, queries, keys)
    if attn_mask is None and is_causal:
        attn_mask = torch.ones(queries, keys, dtype=torch.bool, device=query.device).triu(1)
    blocked = None
    for mask in (attn_mask, key_padding_mask):  # torch's convention: True (or -inf) keeps a position out
        if mask is None:
            continue
        if mask is key_padding_mask:
            mask = mask.view(batch, 1, 1, keys)
        elif mask.dim() == 3:
            mask = mask.view(batch, heads, queries, keys)
        if mask.dtype == torch.bool:
            scores.masked_fill_(mask, float("-inf"))
        else:
            scores.add_(mask)
            mask = torch.isneginf(mask)
        blocked = mask if blocked is None else blocked | mask
    probabilities = _dropped_probabilities(sampler, scores, module.dropout, blocked)
    out = torch.matmul(probabilities, v).transpose(1, 2).reshape(batch, queries, width)
    out = F.linear(out, module.out_proj.weight, module.out_proj.bias)
    if not module.batch_first:
        out = out.transpose(0, 1)
    if not need_weights:
        return out, None
    return out, probabilities.mean(dim=1) if average_attn_weights else probabilities

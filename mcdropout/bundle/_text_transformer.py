"""A small transformer encoder classifier over token ids, in torch alone: the registry's ``text-transformer``.

BERT's shape in miniature: token and position embeddings, post-norm encoder layers whose attention
probabilities and sub-layer outputs pass through ``nn.Dropout``, and a tanh pooler on the first token. The
dropout on the attention probabilities is an ``nn.Dropout`` module, so MC dropout samples it like any other:
one mask per sample of shape (heads, queries, keys), shared by the rows. Keys at the pad id are masked out,
so a row's answer ignores its padding. Building it imports nothing beyond torch (no transformers).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class _Layer(nn.Module):
    def __init__(self, hidden: int, heads: int, ffn: int, dropout: float, attention_dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value = (nn.Linear(hidden, hidden) for _ in range(3))
        self.attention_dropout = nn.Dropout(attention_dropout)
        self.output = nn.Linear(hidden, hidden)
        self.output_dropout = nn.Dropout(dropout)
        self.attention_norm = nn.LayerNorm(hidden)
        self.ffn = nn.Sequential(nn.Linear(hidden, ffn), nn.GELU(), nn.Linear(ffn, hidden), nn.Dropout(dropout))
        self.ffn_norm = nn.LayerNorm(hidden)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        rows, length, hidden = x.shape
        return x.view(rows, length, self.heads, hidden // self.heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, padded: torch.Tensor) -> torch.Tensor:
        rows, length, hidden = x.shape
        q, k, v = self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(hidden // self.heads)
        scores = scores.masked_fill(padded[:, None, None, :], torch.finfo(scores.dtype).min)
        probs = self.attention_dropout(scores.softmax(dim=-1))
        attended = (probs @ v).transpose(1, 2).reshape(rows, length, hidden)
        x = self.attention_norm(x + self.output_dropout(self.output(attended)))
        return self.ffn_norm(x + self.ffn(x))


class TextTransformer(nn.Module):
    """Token ids (rows, length) -> logits (rows, classes); ``pad_id`` marks padding."""

    def __init__(self, vocab_size: int, length: int, classes: int, hidden: int = 64, layers: int = 2,
                 heads: int = 4, ffn: int = 128, dropout: float = 0.1, attention_dropout: float = 0.1,
                 pad_id: int = 0) -> None:
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden {hidden} is not a multiple of heads {heads}")
        self.pad_id, self.vocab_size = pad_id, vocab_size
        self.tokens = nn.Embedding(vocab_size, hidden)
        self.positions = nn.Embedding(length, hidden)
        self.embedding_norm = nn.LayerNorm(hidden)
        self.embedding_dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(_Layer(hidden, heads, ffn, dropout, attention_dropout) for _ in range(layers))
        self.pooler = nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh(), nn.Dropout(dropout))
        self.head = nn.Linear(hidden, classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        padded = ids == self.pad_id
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.embedding_dropout(self.embedding_norm(self.tokens(ids) + self.positions(positions)))
        for layer in self.layers:
            x = layer(x, padded)
        return self.head(self.pooler(x[:, 0]))

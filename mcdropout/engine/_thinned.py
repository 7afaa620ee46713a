"""Each MC sample run as its thinned sub-network.

With shared masks every row of sample t sees the same dropout masks, so sample t
*is* one thinned network of the 2^n that the dropout literature describes. In a
chain of Linear layers with dropout between them (``Linear -> ReLU -> Dropout ->
Linear``), a dropped unit is a row of the first Linear's weight that need not be
computed and a column of the next one's that need not be read. Sample t
therefore multiplies by the kept block of each weight only, gathered per sample
(the dropout's scale folded into the gathered columns); the samples run as one
batched product, padded to the largest kept count, the padding columns zero.
With p = 0.5 on both sides of a layer that is a quarter of its multiply-adds.

The masks are those the dense masked pass draws (same layer numbers, same
order), so the answers agree with it to float rounding. Gathering costs a copy
of each kept block per sample, which only pays when enough rows share it:
:meth:`ThinnedChain.pays` compares the two with a small cost model.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from mcdropout.engine._sampler import ChunkLayout, MaskSampler, has_forward_hooks

# Layers applied to each unit alone, so that they commute with selecting units.
ELEMENTWISE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Identity)

# A sample's kept units: their indices, padded to the largest count, and the dropout's scale on
# each (0 on padding): ((S, k), (S, k)).
Kept = tuple[torch.Tensor, torch.Tensor]

# A gathered weight element costs about this many multiply-adds of the dense product (a copy per
# sample against a blocked GEMM over all samples at once). On the bench MLP (64-512-512-10, p = 0.5,
# T = 50, 2-core CPU) thinned and dense took the same time at 64 rows (11.3 ms), which puts the
# crossover of the model below at 3 x 64.
GATHER_COST = 192.0


@dataclass(frozen=True)
class _Layer:
    """One Linear of the chain, the dropout on its input (None: all units) and the elementwise layers after it."""

    dropout: nn.Dropout | None
    linear: nn.Linear
    after: tuple[nn.Module, ...]


class ThinnedChain:
    """A Sequential suffix of the form ``(Dropout?, Linear, elementwise*)+``, computed per thinned sample."""

    def __init__(self, layers: list[_Layer]) -> None:
        self.layers = layers
        self.modules = tuple(m for layer in layers for m in (layer.dropout, layer.linear, *layer.after) if m is not None)

    @classmethod
    def find(cls, suffix: object) -> ThinnedChain | None:
        """The chain, when ``suffix`` is a (nested) Sequential of torch's ``nn.Dropout``, ``nn.Linear`` and
        elementwise layers (exact types), each dropout directly before a Linear, opening with a dropout."""
        if not isinstance(suffix, nn.Sequential):
            return None
        chain = cls.parse(list(leaves(suffix)))
        if chain is None or chain.layers[0].dropout is None:
            return None
        return chain if chain.unhooked() else None

    @classmethod
    def parse(cls, modules: list[nn.Module]) -> ThinnedChain | None:
        """The chain ``modules`` form (the first Linear may lack a dropout), or None."""
        layers: list[_Layer] = []
        dropout = None
        after: list[nn.Module] = []
        for module in modules:
            kind = type(module)
            if kind is nn.Dropout:
                if dropout is not None:
                    return None
                dropout = module
            elif kind is nn.Linear:
                if layers:
                    layers[-1] = _Layer(layers[-1].dropout, layers[-1].linear, tuple(after))
                layers.append(_Layer(dropout, module, ()))
                dropout, after = None, []
            elif kind in ELEMENTWISE and dropout is None and layers:
                after.append(module)
            else:
                return None
        if dropout is not None or not layers:
            return None
        layers[-1] = _Layer(layers[-1].dropout, layers[-1].linear, tuple(after))
        return cls(layers)

    def unhooked(self) -> bool:
        """No module of the chain has hooks, which only its ``__call__`` would run (checked on every call)."""
        return not any(has_forward_hooks(module) for module in self.modules)

    def pays(self, rows: int, shape: tuple[int, ...] = ()) -> bool:
        """Whether thinning beats the dense masked product for ``rows`` rows per sample (``shape``, each
        row's shape at the chain's input, matters only to the convolutional chain)."""
        dense, thinned = self.costs(rows)
        return thinned < dense

    def costs(self, rows: int, first_kept: float | None = None) -> tuple[float, float]:
        """The dense and thinned costs of ``rows`` rows per sample, in multiply-adds.

        Per sample, a Linear of ``i`` inputs and ``o`` outputs costs ``rows x i x o`` multiply-adds dense,
        and ``rows x ki x ko + GATHER_COST x ki x ko`` thinned, where ``ki`` and ``ko`` are the expected
        kept counts (``1 - p`` of each side that has dropout). ``first_kept``: the kept share of the first
        Linear's inputs when something before the chain chose them.
        """
        dense = thinned = 0.0
        for index, layer in enumerate(self.layers):
            out_features, in_features = layer.linear.weight.shape
            share_in = first_kept if index == 0 and first_kept is not None else 1.0 - rate(layer.dropout)
            kept_in = in_features * share_in
            following = self.layers[index + 1].dropout if index + 1 < len(self.layers) else None
            kept_out = out_features * (1.0 - rate(following))
            dense += rows * in_features * out_features
            thinned += (rows + GATHER_COST) * kept_in * kept_out
        return dense, thinned

    def activation_bytes(self, dense_bytes: int, shape: tuple[int, ...] = ()) -> int:
        """A replica's widest activation when thinned, from the dense pass's ``dense_bytes``: the widest
        dropout's expected kept share of it."""
        shares = [1.0 - rate(layer.dropout) for layer in self.layers[1:]] or [1.0]
        return max(1, round(dense_bytes * max(shares)))

    def __call__(self, hidden: torch.Tensor, sampler: MaskSampler, layout: ChunkLayout,
                 memo: dict | None = None) -> torch.Tensor:
        """The chain on ``hidden`` (each row once, (rows, features)) for every sample: (samples x rows, outputs)."""
        return self.run(hidden.t(), self.draw(sampler, hidden.dtype), layout)

    def draw(self, sampler: MaskSampler, dtype: torch.dtype) -> list[Kept | None]:
        """Each Linear's kept input columns, its dropout's masks drawn in call order (None: no dropout)."""
        return [None if layer.dropout is None else kept_units(sampler, layer.dropout, layer.linear.in_features, dtype)
                for layer in self.layers]

    def run(self, x: torch.Tensor, kept: list[Kept | None], layout: ChunkLayout) -> torch.Tensor:
        """The chain from features-first activations: ``x`` is (features, rows), every sample's input,
        or (samples, features, rows); ``kept`` from :meth:`draw`. Returns (samples x rows, outputs).

        Activations are held features-first, (samples, kept units, rows), so that selecting a sample's
        units is a copy of whole rows (``index_select``), not a strided gather.
        """
        for index, layer in enumerate(self.layers):
            columns = kept[index]
            rows_kept = kept[index + 1] if index + 1 < len(kept) else None
            weight, bias = layer.linear.weight, layer.linear.bias
            out_index = None if rows_kept is None else rows_kept[0]
            samples = layout.num_samples
            block = weight if out_index is None else \
                weight.index_select(0, out_index.flatten()).view(samples, -1, weight.shape[1])  # (S, k_out, in)
            if columns is not None:
                in_index, scale = columns
                if block.dim() == 2:  # (out, in) -> (S, out, k_in)
                    block = block.t().index_select(0, in_index.flatten()).view(samples, -1, block.shape[0])
                    block = block.transpose(1, 2)
                else:
                    block = block.gather(2, in_index[:, None, :].expand(-1, block.shape[1], -1))
                block = block * scale[:, None, :]  # the dropout's 1 / (1 - p) where kept, 0 on padding
                if x.dim() == 2:  # the chain's input: each sample's kept features of every row
                    x = x.contiguous().index_select(0, in_index.flatten()).view(samples, -1, x.shape[1])
            if bias is not None:
                bias = bias[:, None] if out_index is None else bias[out_index][:, :, None]  # (out or S x k_out, 1)
            if bias is not None and block.dim() == 3 and x.dim() == 3:
                x = torch.baddbmm(bias.expand(samples, -1, -1) if bias.dim() == 2 else bias, block, x)
            else:
                x = torch.matmul(block, x)
                x = x if bias is None else x + bias
            for module in layer.after:
                x = module(x)
        if x.dim() == 2:
            x = x.expand(layout.num_samples, *x.shape)
        return x.transpose(1, 2).reshape(layout.batch, x.shape[1])


def kept_units(sampler: MaskSampler, dropout: nn.Module, units: int, dtype: torch.dtype) -> Kept | None:
    """The dropout's kept units (or channels) per sample, padded to the largest count: (indices (S, k), scale (S, k)),
    the scale ``1 / (1 - p)`` where kept and 0 on padding; None when p = 0 (every unit kept, no layer drawn)."""
    keep = sampler.layer_keep((units,), dropout.p, dtype)  # (S, 1, units); None for p = 0
    if keep is None:
        return None
    keep = keep[:, 0]
    dropped = keep == 0
    count = max(int((~dropped).sum(dim=1).max()), 1)
    index = torch.argsort(dropped.to(torch.uint8), dim=1, stable=True)[:, :count]  # kept units first, in order
    return index, keep.gather(1, index)


def rate(dropout: nn.Module | None) -> float:
    return 0.0 if dropout is None else float(dropout.p)


def leaves(sequential: nn.Sequential) -> Iterator[nn.Module]:
    for module in sequential:
        if type(module) is nn.Sequential and not has_forward_hooks(module):
            yield from leaves(module)
        else:
            yield module

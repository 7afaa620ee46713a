"""Per-sample dropout masks inside one batched forward pass.

While the engine runs a chunk, the batch holds ``samples x rows`` replicas laid
out sample-major: rows ``[s*R, (s+1)*R)`` belong to MC sample ``first_sample + s``.
:class:`MaskSampler` applies the mask of each replica's sample, drawn from
(seed, layer, sample) by :mod:`mcdropout.engine._masks`, to every dropout call in the
pass. Layers are numbered in call order within one forward pass, so however a
dropout is reached its masks are the same:

- every module in the registry of stochastic layers (torch's six dropout
  modules, :mod:`mcdropout.layers`; :mod:`mcdropout.engine._registry`) gets, for
  the length of the pass, its entry's ``sample`` as its ``forward``;
- functional calls (``F.dropout(x, p, self.training)``, subclasses that
  override ``forward``, ``F.scaled_dot_product_attention(..., dropout_p=p)``)
  are caught by a ``TorchFunctionMode``, scoped to the pass and this thread. The mode sees every torch
  call of the pass, which costs about a fifth of a small model's forward
  time, so the engine turns it on only for models in which its probe pass
  found such calls.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from mcdropout.engine import _masks as mask_source
from mcdropout.engine._registry import ATTENTION_FUNCTIONS, DROPOUT_FUNCTIONS, entry

_ALPHA = 1.7580993408473766  # SELU's -lambda * alpha, as in torch's alpha dropout

_active: contextvars.ContextVar[MaskSampler | None] = contextvars.ContextVar("mcdropout_sampler", default=None)


def active_sampler() -> MaskSampler | None:
    """The sampler of the engine run in progress in this thread, if any."""
    return _active.get()


class StochasticPrefixError(RuntimeError):
    """A layer assumed deterministic called dropout (prefix sharing must be off)."""


@dataclass(frozen=True)
class ChunkLayout:
    """Which MC samples and rows a forward pass holds."""

    seed: int
    first_sample: int
    num_samples: int
    num_rows: int
    row_ids: np.ndarray | None = None  # per-row masks: each row's index in the caller's input

    @property
    def batch(self) -> int:
        return self.num_samples * self.num_rows


def has_forward_hooks(module: nn.Module) -> bool:
    """Forward (pre-)hooks, which only ``module.__call__`` runs: a module the engine computes some
    other way (masked while replicating, folded, replayed) must have none."""
    return bool(module._forward_hooks or module._forward_pre_hooks)


@contextlib.contextmanager
def forwards_replaced(modules: Sequence[nn.Module], make: Callable[[nn.Module], Callable]) -> Iterator[None]:
    """Give each module the ``forward`` that ``make`` builds for it while active.

    An instance attribute shadows the class's forward; it is set in the instance dict, since
    ``nn.Module.__setattr__`` is slow and these values are neither parameters nor modules.
    """
    replaced = []
    try:
        for module in modules:
            vars(module)["forward"] = make(module)
            replaced.append(module)
        yield
    finally:
        for module in replaced:
            del vars(module)["forward"]


class MaskSampler:
    """Applies per-sample masks to every dropout call while :meth:`applied`."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.layout: ChunkLayout | None = None
        self.layer = 0
        self.calls = 0
        self.functional_calls = 0  # dropout calls that only the function mode caught
        self.attention_calls = 0  # of which attention dropout (F.scaled_dot_product_attention)
        self.deterministic = False
        self.sample_bytes = 0  # mask and masked-weight bytes per MC sample, from the last pass measured
        self.measuring = False  # count sample_bytes (the probe's pass; the accounting reads dtype sizes)
        self.trace: Callable[[], None] | None = None  # the probe's: told of every layer whose masks are drawn

    def begin(self, layout: ChunkLayout | None) -> None:
        """Start a forward pass over ``layout``; None runs deterministic layers only."""
        self.layout = layout
        self.deterministic = layout is None
        self.layer = 0
        self.sample_bytes = 0

    @contextlib.contextmanager
    def applied(self, modules: Sequence[nn.Module], functional: bool) -> Iterator[None]:
        """Route the dropout of a forward pass here: ``modules`` (from the registry's
        :func:`~mcdropout.engine._registry.sampled_modules`) always, functional calls when ``functional``."""
        token = _active.set(self)
        try:
            with forwards_replaced(modules, lambda module: functools.partial(entry(module).sample, self, module)), \
                    _FunctionalDropout(self) if functional else contextlib.nullcontext():
                yield
        finally:
            _active.reset(token)

    # -- masks -----------------------------------------------------------------

    def keep(self, shape: tuple[int, ...], p: float, dtype: torch.dtype, scale: float = 1.0) -> torch.Tensor:
        """Masks for the next layer, ``scale`` where kept and 0 where dropped.

        Shape (S, 1, *shape) — one mask per sample for every row — or (S, R, *shape) per row.
        """
        layout = self._require_layout()
        layer = self._count_layer(shape, dtype)
        masks = mask_source.generator().keep(
            layout.seed, layer, layout.first_sample, layout.num_samples, shape, p, scale, layout.row_ids
        )
        if layout.row_ids is None:
            masks = masks[:, None]
        keep = torch.from_numpy(masks)
        if self.device.type == "cpu" and dtype == torch.float32:  # already there: skip .to's argument parsing
            return keep
        return keep.to(self.device, dtype, non_blocking=True)

    def _count_layer(self, shape: tuple[int, ...], dtype: torch.dtype) -> int:
        """The next layer's number; while measuring, counts its masks' memory (masks of ``shape`` per sample)."""
        layer = self.layer
        self.layer += 1
        self.calls += 1
        if self.trace is not None:
            self.trace()
        if self.measuring:
            layout = self.layout
            rows = layout.num_rows if layout.row_ids is not None else 1
            self.sample_bytes += math.prod(shape) * (4 + 2 * dtype.itemsize) * rows
        return layer

    def split(self, x: torch.Tensor, what: str) -> torch.Tensor:
        """View a batch-first tensor as (samples, rows, ...)."""
        layout = self._require_layout()
        self._check_batch(x, layout, what)
        return x.reshape(layout.num_samples, layout.num_rows, *x.shape[1:])

    @staticmethod
    def _check_batch(x: torch.Tensor, layout: ChunkLayout, what: str) -> None:
        if x.dim() == 0 or x.shape[0] != layout.batch:
            raise ValueError(
                f"{what} got a tensor of shape {tuple(x.shape)} whose first dimension is not the batch"
                f" ({layout.batch} = {layout.num_samples} samples x {layout.num_rows} rows); MC sampling"
                " needs batch-first tensors at stochastic layers"
            )

    def dropout(
        self, x: torch.Tensor, p: float, *, channelwise: bool, alpha: bool, replicated: bool = True,
        in_place: bool = False,
    ) -> torch.Tensor:
        """Dropout over a pass's replicas ``x`` (S*R, ...), each sample with its own mask.

        ``replicated=False``: ``x`` holds each row once (R, ...), as the shared prefix
        left it, and the result is every sample's masked replica, written in one pass
        instead of a copy and then a masked copy. ``in_place``: the pass made ``x`` and
        nothing else holds it, so replicas may be masked where they are.
        """
        if p == 0.0 and replicated:
            return x
        layout = self._require_layout()
        if replicated:
            self._check_batch(x, layout, "a dropout layer")
        features = tuple(x.shape[1:])
        shape = (layout.batch, *features)
        mask_shape = (features[0],) if channelwise and features else features
        grouped = x.reshape(layout.num_samples, layout.num_rows, *features) if replicated else x.unsqueeze(0)
        keep = self.layer_keep(mask_shape, p, x.dtype, alpha=alpha)
        if keep is None:
            return grouped.expand(layout.num_samples, *x.shape).reshape(shape)
        if p == 1.0:
            return x.new_zeros(shape)
        if channelwise and len(features) > 1:
            keep = keep.reshape(*keep.shape, *([1] * (len(features) - 1)))
        if not alpha:
            return (grouped.mul_(keep) if in_place and replicated else grouped * keep).reshape(shape)
        a = 1.0 / math.sqrt((_ALPHA * _ALPHA * p + 1.0) * (1.0 - p))
        shift = (keep - 1.0) * (_ALPHA * a) + _ALPHA * a * p
        return (grouped * (keep * a) + shift).reshape(shape)

    def layer_keep(
        self, mask_shape: tuple[int, ...], p: float, dtype: torch.dtype, *, alpha: bool = False
    ) -> torch.Tensor | None:
        """The next dropout layer's keep-masks, as :meth:`dropout` draws them: None for p = 0
        (nothing drawn, no layer counted); all zero for p = 1 (the layer counted all the same)."""
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability has to be between 0 and 1, got {p}")
        if p == 0.0:
            return None
        return self.keep(mask_shape, p, dtype, scale=1.0 if alpha or p == 1.0 else 1.0 / (1.0 - p))

    def module_dropout(
        self, module: nn.Module, x: torch.Tensor, replicated: bool = True, in_place: bool = False
    ) -> torch.Tensor:
        """What torch dropout ``module`` does to ``x`` in this pass."""
        found = entry(module)
        return self.dropout(
            x, module.p, channelwise=found.channelwise, alpha=found.alpha, replicated=replicated, in_place=in_place
        )

    def _require_layout(self) -> ChunkLayout:
        if self.deterministic or self.layout is None:
            raise StochasticPrefixError("a stochastic layer ran where the engine assumed none")
        return self.layout


class _FunctionalDropout(TorchFunctionMode):
    """Sends functional dropout calls (``F.dropout``, ``torch.dropout``, ...) to a sampler."""

    def __init__(self, sampler: MaskSampler) -> None:
        super().__init__()
        self.sampler = sampler

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        kind = DROPOUT_FUNCTIONS.get(func)
        if kind is None:
            attention = ATTENTION_FUNCTIONS.get(func)
            if attention is None:
                return func(*args, **kwargs)
            if (args[4] if len(args) > 4 else kwargs.get("dropout_p", 0.0)) > 0:
                self.sampler.functional_calls += 1
                self.sampler.attention_calls += 1
            return attention(self.sampler, *args, **kwargs)
        x = args[0] if args else kwargs["input"]
        p = args[1] if len(args) > 1 else kwargs.get("p", 0.5)
        self.sampler.functional_calls += 1
        return self.sampler.dropout(x, float(p), channelwise=kind[0] == "channel", alpha=kind[1])

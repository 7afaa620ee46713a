"""A copy of a layer's weight in the memory layout a product wants, kept between calls."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class WeightLayout:
    """``arrange(module.weight)``, made contiguous once and again whenever the weight changes.

    A weight changes by being replaced (another object), updated in place (its version goes up)
    or given new storage (``.data =``, ``module.to(...)``: another address). The source weight is
    held, so that no other tensor can take its place unnoticed.
    """

    def __init__(self, module: nn.Module, arrange: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.module = module
        self.arrange = arrange
        self._source: torch.Tensor | None = None
        self._version = -1
        self._address = 0
        self._copy: torch.Tensor | None = None

    def get(self) -> torch.Tensor:
        weight = self.module.weight
        if weight is not self._source or weight._version != self._version or weight.data_ptr() != self._address:
            with torch.inference_mode():
                self._copy = self.arrange(weight.detach()).contiguous()
            self._source, self._version, self._address = weight, weight._version, weight.data_ptr()
        return self._copy

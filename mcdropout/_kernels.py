"""The engine's optional compiled kernels (``_native.c``).

Built by the install where it finds a C compiler (``setup.py``); ``kernels`` is
None otherwise, and every caller then takes its numpy or torch path, which gives
the same answers. Callers look ``kernels`` up here on each call (through
:func:`reading`), so that tests can take it away.
"""

from __future__ import annotations

import torch

try:
    from mcdropout import _native as kernels
except ImportError:  # installed without a C compiler
    kernels = None

FLOAT_TYPES = (torch.float32, torch.float64)


def reading(tensor: torch.Tensor, dtype: torch.dtype, types: tuple[torch.dtype, ...] = FLOAT_TYPES):
    """The kernels, when they are built and can read ``tensor`` (of ``dtype``, passed in because the
    caller has read it already): contiguous, on the CPU, one of ``types``; None otherwise."""
    if kernels is not None and dtype in types and tensor.is_cpu and tensor.is_contiguous():
        return kernels
    return None

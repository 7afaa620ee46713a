"""Counter-based dropout masks.

Keep-masks come from Philox, a counter-based generator: the key is (seed, layer)
and the counter is the MC sample index (times a stride that covers one mask), so
the mask of sample t is a pure function of (seed, layer, t) — the same in
whatever chunk t falls, whatever rows share the batch, and on whichever device
the model runs (masks are drawn on the CPU and moved). A contiguous range of
samples is one call into numpy, about as cheap as ``torch.rand``.

Per-row masks (an option for comparison) put the row index in the high word of
the counter, giving every (sample, row) its own stream.
"""

from __future__ import annotations

import math

import numpy as np

_WORD = 1 << 64
_UINT32_SPAN = 1 << 32


def _philox(seed: int, layer: int, counter: int) -> np.random.Philox:
    return np.random.Philox(counter=counter, key=((seed % _WORD) << 64) | (layer % _WORD))


def _threshold(p: float) -> np.uint32 | None:
    """Integer threshold: a 32-bit draw below it drops the element (probability p)."""
    level = round(p * _UINT32_SPAN)
    return None if level >= _UINT32_SPAN else np.uint32(level)


def keep_masks(
    seed: int,
    layer: int,
    first_sample: int,
    num_samples: int,
    shape: tuple[int, ...],
    p: float,
    rows: np.ndarray | None = None,
) -> np.ndarray:
    """Boolean keep-masks (probability 1 - p each).

    Returns shape ``(num_samples, *shape)``, or ``(num_samples, len(rows), *shape)``
    for per-row masks where ``rows`` holds each row's index in the caller's input.
    """
    numel = math.prod(shape)
    threshold = _threshold(p)
    if threshold is None:
        size = (num_samples, *shape) if rows is None else (num_samples, len(rows), *shape)
        return np.zeros(size, dtype=bool)
    stride = -(-numel // 8)  # Philox4x64 yields 8 uint32 per counter value
    if rows is None:
        return _draw(_philox(seed, layer, first_sample * stride), num_samples, stride, numel, threshold).reshape(
            num_samples, *shape
        )
    per_row = [
        _draw(_philox(seed, layer, first_sample * stride + ((int(row) + 1) << 192)), num_samples, stride, numel, threshold)
        for row in rows
    ]
    return np.stack(per_row, axis=1).reshape(num_samples, len(rows), *shape)


def _draw(bitgen: np.random.Philox, num_samples: int, stride: int, numel: int, threshold: np.uint32) -> np.ndarray:
    raw = bitgen.random_raw(num_samples * stride * 4).view(np.uint32).reshape(num_samples, stride * 8)
    return raw[:, :numel] >= threshold

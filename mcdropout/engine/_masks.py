"""Counter-based dropout masks.

Keep-masks come from Philox, a counter-based generator: the key is (seed, layer)
and the counter is the MC sample index (times a stride that covers one mask), so
the mask of sample t is a pure function of (seed, layer, t) — the same in
whatever chunk t falls, whatever rows share the batch, and on whichever device
the model runs (masks are drawn on the CPU and moved). A contiguous range of
samples is one call into numpy. A mask element uses as few random bits as p
needs: one for p = 1/2, eight when 256 p is a whole number, else sixteen (p is
then resolved to 2**-16, far below any Monte Carlo error).

Per-row masks (an option for comparison) put the row index in the high word of
the counter, giving every (sample, row) its own stream.
"""

from __future__ import annotations

import functools
import math
import threading

import numpy as np


_MASK64 = (1 << 64) - 1
_COUNTER_BITS = 256  # Philox4x64 yields 4 x 64 bits per counter value
_local = threading.local()


def _bits_for(p: float) -> int:
    """Random bits per mask element: the fewest that represent p exactly (or 16)."""
    for bits in (1, 8):
        if (p * (1 << bits)).is_integer():
            return bits
    return 16


def generator() -> MaskGenerator:
    """This thread's generator (a Philox object is not safe to share between threads)."""
    if not hasattr(_local, "generator"):
        _local.generator = MaskGenerator()
    return _local.generator


class MaskGenerator:
    """Draws keep-masks; holds one Philox whose state is set per draw (cheaper than a new one)."""

    def __init__(self) -> None:
        self._bitgen = np.random.Philox(key=0)
        # One state dict, updated in place per draw: Philox's setter copies the values out of it,
        # and reads Python ints faster than numpy scalars.
        self._counter = [0, 0, 0, 0]
        self._key = [0, 0]
        self._state = {
            "bit_generator": "Philox",
            "state": {"counter": self._counter, "key": self._key},
            "buffer": [0, 0, 0, 0],
            "buffer_pos": 4,
            "has_uint32": 0,
            "uinteger": 0,
        }

    def keep(
        self,
        seed: int,
        layer: int,
        first_sample: int,
        num_samples: int,
        shape: tuple[int, ...],
        p: float,
        scale: float = 1.0,
        rows: np.ndarray | None = None,
    ) -> np.ndarray:
        """float32 masks holding ``scale`` (kept, probability 1 - p) or 0 (dropped).

        Shape ``(num_samples, *shape)``, or ``(num_samples, len(rows), *shape)`` for
        per-row masks, where ``rows`` holds each row's index in the caller's input.
        """
        numel = math.prod(shape)
        layout = _layout(numel, p, scale)
        if layout is None:  # p = 1: everything dropped
            size = (num_samples, *shape) if rows is None else (num_samples, len(rows), *shape)
            return np.zeros(size, dtype=np.float32)
        self._key[0], self._key[1] = layer & _MASK64, seed & _MASK64
        if rows is None:
            return self._masks(layout, numel, first_sample, num_samples, 0).reshape(num_samples, *shape)
        per_row = [self._masks(layout, numel, first_sample, num_samples, int(row) + 1) for row in rows]
        return np.stack(per_row, axis=1).reshape(num_samples, len(rows), *shape)

    def _masks(self, layout: tuple, numel: int, first_sample: int, num_samples: int, stream: int) -> np.ndarray:
        """(num_samples, numel) masks from ``stream`` under the current key: one Philox block per
        ``per_counter`` elements, ``stride`` blocks per sample, sample t's from block t x stride on."""
        table, word, per_counter, stride = layout
        counter = first_sample * stride
        self._counter[0], self._counter[1], self._counter[3] = counter & _MASK64, counter >> 64, stream
        self._bitgen.state = self._state
        raw = self._bitgen.random_raw(num_samples * stride * 4)
        values = table.take(raw.view(word), axis=0).reshape(num_samples, stride * per_counter)
        return values if stride * per_counter == numel else values[:, :numel]


@functools.lru_cache(maxsize=256)
def _threshold(p: float) -> tuple[int, int]:
    """Random bits per element and the draw at and above which an element is kept."""
    bits = _bits_for(p)
    return bits, round(p * (1 << bits))


@functools.lru_cache(maxsize=256)
def _layout(numel: int, p: float, scale: float) -> tuple[np.ndarray, type, int, int] | None:
    """How masks of ``numel`` elements are cut from Philox output: the lookup table, the raw word
    type it is indexed by, elements per counter and counters per mask; None when p drops everything."""
    bits, level = _threshold(p)
    if level >= 1 << bits:
        return None
    per_counter = _COUNTER_BITS // bits
    word = np.uint16 if bits == 16 else np.uint8
    return _mask_table(bits, level, scale), word, per_counter, -(-numel // per_counter)


@functools.lru_cache(maxsize=32)
def _mask_table(bits: int, level: int, scale: float) -> np.ndarray:
    """Mask values for every raw word: ``scale`` where the draw is >= ``level``, else 0.

    One bit per element: a byte's eight bits, least significant first, each
    compared with ``level`` (1); eight or sixteen bits: the word itself.
    """
    if bits == 1:
        draws = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1, bitorder="little")
    else:
        draws = np.arange(1 << bits)
    table = np.multiply(draws >= level, scale, dtype=np.float32)
    table.flags.writeable = False
    return table

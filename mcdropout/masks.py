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
        self._empty = np.zeros(4, dtype=np.uint64)

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
        bits = _bits_for(p)
        level = round(p * (1 << bits))
        if level >= 1 << bits:
            size = (num_samples, *shape) if rows is None else (num_samples, len(rows), *shape)
            return np.zeros(size, dtype=np.float32)
        per_counter = _COUNTER_BITS // bits
        stride = -(-numel // per_counter)
        key = np.array([layer & _MASK64, seed & _MASK64], dtype=np.uint64)
        first = first_sample * stride

        def masks(stream: int) -> np.ndarray:
            raw = self._draw(key, first, stream, num_samples * stride)
            draws = _unpack(raw, bits).reshape(num_samples, stride * per_counter)[:, :numel]
            return np.multiply(draws >= level, scale, dtype=np.float32)

        if rows is None:
            return masks(0).reshape(num_samples, *shape)
        per_row = [masks(int(row) + 1) for row in rows]
        return np.stack(per_row, axis=1).reshape(num_samples, len(rows), *shape)

    def _draw(self, key: np.ndarray, counter: int, stream: int, counters: int) -> np.ndarray:
        self._bitgen.state = {
            "bit_generator": "Philox",
            "state": {"counter": np.array([counter & _MASK64, counter >> 64, 0, stream], dtype=np.uint64), "key": key},
            "buffer": self._empty,
            "buffer_pos": 4,
            "has_uint32": 0,
            "uinteger": 0,
        }
        return self._bitgen.random_raw(counters * 4)


def _unpack(raw: np.ndarray, bits: int) -> np.ndarray:
    """64-bit words -> unsigned draws of ``bits`` bits each."""
    if bits == 1:
        return np.unpackbits(raw.view(np.uint8), bitorder="little")
    return raw.view(np.uint8 if bits == 8 else np.uint16)

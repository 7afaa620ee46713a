"""glibc's mmap threshold, fixed for the long-running commands (``mcdropout serve`` and ``score``).

A process-wide setting, so the library never makes it: the commands call
:func:`pin_mmap_threshold` at start-up, and a user's own process is left as it is.
"""

from __future__ import annotations

import ctypes
import os
import sys

_M_TRIM_THRESHOLD = -1  # glibc mallopt parameters
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 4 * 2**20


def pin_mmap_threshold() -> None:
    """Fix glibc's mmap threshold at 4 MiB (and its trim threshold at 8 MiB).

    Left dynamic, glibc raises the threshold (up to 32 MiB) after the first
    large free; chunk activations then come from the heap, fragment it and are
    not returned to the OS, so resident memory grows with T (383 MB over the
    baseline for T=10,000 with a 64 MB budget). glibc's 128 KiB default goes
    the other way: every activation of a small call is a fresh mmap whose pages
    fault in on each call. At 4 MiB, small calls reuse heap memory and large
    chunks are still mapped and unmapped whole, so peak memory stays within
    ``memory_budget``. A ``MALLOC_MMAP_THRESHOLD_`` set in the environment is
    left alone, as is any libc but glibc.
    """
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
        libc.mallopt(_M_TRIM_THRESHOLD, 2 * _MMAP_THRESHOLD)
    except (OSError, AttributeError):  # not glibc (musl, ...): nothing to pin
        pass

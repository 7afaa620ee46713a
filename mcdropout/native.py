"""The engine's optional compiled kernels (``_native.c``).

Built by the install where it finds a C compiler (``setup.py``); ``kernels`` is
None otherwise, and every caller then takes its numpy or torch path, which gives
the same answers. Callers look ``kernels`` up here on each call, so that tests
can take it away.
"""

from __future__ import annotations

try:
    from mcdropout import _native as kernels
except ImportError:  # installed without a C compiler
    kernels = None

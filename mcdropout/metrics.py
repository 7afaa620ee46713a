"""``mcdropout.metrics``, as the README names it: an alias of :mod:`mcdropout.stats.metrics`."""

import sys

from mcdropout.stats import metrics as _metrics

sys.modules[__name__] = _metrics

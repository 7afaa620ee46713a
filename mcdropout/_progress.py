"""The former name of :mod:`mcdropout.progress`, the same module object, kept until the scoring package imports
the public name (``tests/test_seams.py`` lists it among the imports still to move)."""

import sys

from mcdropout import progress

sys.modules[__name__] = progress

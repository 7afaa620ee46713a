"""The former name of :mod:`mcdropout.tables`, the same module object, kept until the scoring package imports
the public name (``tests/test_seams.py`` lists it among the imports still to move)."""

import sys

from mcdropout import tables

sys.modules[__name__] = tables

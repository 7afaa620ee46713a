"""Training bundles: the shipped recipes, the user's own tables, the UCI protocol and evaluation.

Needs the ``train`` extra (scikit-learn, matplotlib) for the recipes' data and the plots.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mcdropout.bundle import Bundle
    from mcdropout.training.datasets import Split


def split_of(bundle: Bundle) -> Split:
    """The train/validation/test split ``bundle`` records, re-made from its manifest (scikit-learn's
    bundled data, generated data, or the table it was trained on); ValueError when it cannot be."""
    from mcdropout.training._evaluation import split_of as remake  # torch: imported when asked for

    return remake(bundle)

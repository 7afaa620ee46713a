"""Training bundles: the shipped recipes, the user's own tables, the UCI protocol and evaluation.

Needs the ``train`` extra (scikit-learn, matplotlib) for the recipes' data and the plots.
Importing this package imports no torch: the names below load their module on first use,
so that ``mcdropout train --help`` lists the recipes without it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from mcdropout.bundle import Bundle
    from mcdropout.training._baseline import compare
    from mcdropout.training._calibration_report import Report, calibration_report, format_report, plot_report
    from mcdropout.training._evaluation import calibrated_metrics, evaluate, plot
    from mcdropout.training._own_table import train_from_table
    from mcdropout.training._table_data import OutsideAllowedDirs
    from mcdropout.training._recipe_names import RECIPE_NAMES
    from mcdropout.training._recipes import RECIPES, train
    from mcdropout.training._uci import format_calibrated_table as format_uci_calibrated_table
    from mcdropout.training._uci import format_table as format_uci_table
    from mcdropout.training._uci import run as run_uci
    from mcdropout.training.datasets import Split

# public name: (module, its name there)
_EXPORTS = {
    "OutsideAllowedDirs": ("mcdropout.training._table_data", "OutsideAllowedDirs"),  # split_of's refusal
    "RECIPE_NAMES": ("mcdropout.training._recipe_names", "RECIPE_NAMES"),  # torch-free
    "RECIPES": ("mcdropout.training._recipes", "RECIPES"),
    "train": ("mcdropout.training._recipes", "train"),
    "train_from_table": ("mcdropout.training._own_table", "train_from_table"),
    "evaluate": ("mcdropout.training._evaluation", "evaluate"),
    "calibrated_metrics": ("mcdropout.training._evaluation", "calibrated_metrics"),
    "plot": ("mcdropout.training._evaluation", "plot"),
    "compare": ("mcdropout.training._baseline", "compare"),
    "Report": ("mcdropout.training._calibration_report", "Report"),
    "calibration_report": ("mcdropout.training._calibration_report", "calibration_report"),
    "format_report": ("mcdropout.training._calibration_report", "format_report"),
    "plot_report": ("mcdropout.training._calibration_report", "plot_report"),
    "run_uci": ("mcdropout.training._uci", "run"),
    "format_uci_table": ("mcdropout.training._uci", "format_table"),
    "format_uci_calibrated_table": ("mcdropout.training._uci", "format_calibrated_table"),
}

__all__ = sorted([*_EXPORTS, "split_of"])


def split_of(bundle: Bundle, allowed_dirs: Sequence[str | Path] | None = None) -> Split:
    """The train/validation/test split ``bundle`` records, re-made from its manifest (scikit-learn's
    bundled data, generated data, or the table it was trained on); ValueError when it cannot be.
    ``allowed_dirs``: a recorded table is read only when it resolves inside one of them (None: anywhere)."""
    from mcdropout.training._evaluation import split_of as remake  # torch: imported when asked for

    return remake(bundle, allowed_dirs)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mcdropout.training' has no attribute {name!r}")
    module, attribute = _EXPORTS[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])

"""The option vocabularies, declared once as str enums: the library, the CLI's choices and the service's
schemas all take them from here. Imports nothing heavy, so the CLI's ``--help`` stays fast."""

from __future__ import annotations

from enum import Enum


class Task(str, Enum):
    """What a model predicts."""

    REGRESSION = "regression"
    CLASSIFICATION = "classification"


class IntervalMethod(str, Enum):
    """How a regression interval is made: the bundle's conformal quantile, or the MC normal interval."""

    CONFORMAL = "conformal"
    GAUSSIAN = "gaussian"


class SetMethod(str, Enum):
    """The conformal score of a prediction set: least ambiguous (LAC) or adaptive (APS)."""

    LAC = "lac"
    APS = "aps"


class AbstainScore(str, Enum):
    """The uncertainty that abstention at a ``max_risk`` thresholds."""

    ONE_MINUS_MAX_PROB = "one_minus_max_prob"
    ENTROPY = "entropy"
    MUTUAL_INFORMATION = "mutual_information"


def _values(vocabulary: type[Enum]) -> tuple[str, ...]:
    return tuple(item.value for item in vocabulary)


TASKS = _values(Task)
INTERVAL_METHODS = _values(IntervalMethod)
SET_METHODS = _values(SetMethod)
ABSTAIN_SCORES = _values(AbstainScore)

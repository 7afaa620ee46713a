"""Statistics of MC samples: streaming accumulators, prediction objects and scoring metrics."""

from mcdropout.stats import metrics
from mcdropout.stats._summary import (
    ClassificationAccumulator,
    ClassificationPrediction,
    RegressionAccumulator,
    RegressionPrediction,
    normal_interval,
    to_probabilities,
)

__all__ = [
    "ClassificationAccumulator",
    "ClassificationPrediction",
    "RegressionAccumulator",
    "RegressionPrediction",
    "metrics",
    "normal_interval",
    "to_probabilities",
]

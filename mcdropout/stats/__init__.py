"""Statistics of MC samples: streaming accumulators, prediction objects and scoring metrics."""

from mcdropout.stats import metrics
from mcdropout.stats._summary import ClassificationPrediction, RegressionPrediction, normal_interval, to_probabilities

__all__ = ["ClassificationPrediction", "RegressionPrediction", "metrics", "normal_interval", "to_probabilities"]

"""Pick what to label next: BALD, BatchBALD and stochastic batch acquisition over pools of any size.

:func:`acquire` runs a model or bundle over a pool; :func:`acquire_probabilities` works from per-sample
class probabilities delivered in chunks. The pieces an engine of its own needs (per-row scores in one
pass, a BatchBALD step as "score every candidate given the chosen rows' joint state", the reduce that
keeps the best candidate, the greedy loop over two callables) are public here too.
"""

from mcdropout.acquisition._acquire import (
    DEFAULT_CONFIGURATIONS,
    METHODS,
    STOCHASTIC,
    Acquisition,
    acquire_probabilities,
    check_request,
)
from mcdropout.acquisition._greedy import Candidate, Greedy, batchbald, best_candidate, better, step_rng
from mcdropout.acquisition._joint import JointState, sampling_error_bound
from mcdropout.acquisition._pool import acquire
from mcdropout.acquisition._scores import RowScores, gumbel_top_k, stochastic_log_weights, top_k
from mcdropout.acquisition._source import Buffer, Chunk, ProbabilitySource, iter_chunks
from mcdropout.acquisition._command import AcquireJob, acquire_file  # `mcdropout acquire`
from mcdropout.acquisition._ray import acquire_ray  # the same on Ray

__all__ = [
    "DEFAULT_CONFIGURATIONS",
    "METHODS",
    "STOCHASTIC",
    "AcquireJob",
    "Acquisition",
    "Buffer",
    "Candidate",
    "Chunk",
    "Greedy",
    "JointState",
    "ProbabilitySource",
    "RowScores",
    "acquire",
    "acquire_file",
    "acquire_probabilities",
    "acquire_ray",
    "batchbald",
    "best_candidate",
    "better",
    "check_request",
    "gumbel_top_k",
    "iter_chunks",
    "sampling_error_bound",
    "step_rng",
    "stochastic_log_weights",
    "top_k",
]

"""Batch scoring (``mcdropout score``): a table file in, a table of predictions out, in resumable chunks.

Engines: the bundle in this process (``local``), a served model (``remote``) or
Ray Data (``ray``); see :func:`score` for the guarantees.
"""

from mcdropout.scoring._engines import LocalEngine, RemoteEngine
from mcdropout.errors import ScoringError
from mcdropout.scoring._job import ENGINES, Engine, Job, Summary
from mcdropout.scoring._run import score

__all__ = ["ENGINES", "Engine", "Job", "LocalEngine", "RemoteEngine", "ScoringError", "Summary", "score"]

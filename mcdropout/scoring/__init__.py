"""Batch scoring (``mcdropout score``): a table file in, a table of predictions out, in resumable chunks.

Engines: the bundle in this process (``local``), a served model (``remote``) or
Ray Data (``ray``); see :func:`score` for the guarantees. :class:`Partial` (an output's locked folder of
parts, resumable) and :func:`checked_chunks` (an input file's checked rows, a chunk at a time) serve other
file-to-file commands too (``mcdropout acquire``).
"""

from mcdropout.scoring._engines import LocalEngine, RemoteEngine
from mcdropout.errors import ScoringError
from mcdropout.scoring._job import ENGINES, OUTPUT_FORMATS, Engine, Job, Summary, checked_chunks, partial_folder
from mcdropout.scoring._partial import Partial
from mcdropout.scoring._run import score

__all__ = ["ENGINES", "OUTPUT_FORMATS", "Engine", "Job", "LocalEngine", "Partial", "RemoteEngine", "ScoringError",
           "Summary", "checked_chunks", "partial_folder", "score"]

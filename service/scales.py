"""What is high for a model: the percentiles of its served uncertainty over its held-out rows.

An entropy of 0.3 nats is alarming for a digit classifier and ordinary for a noisy table; the playground
shows each answer's uncertainty against the same statistic over the rows the model was tested on. The
rows are the test part of the split the bundle records (re-made as ``mcdropout evaluate`` does: scikit-learn's
bundled data, generated data, or the user's table), predicted once per loaded bundle with the model's
default T and the server's default seed, on the model's compute lane, and kept while that bundle is served.
Nothing is written to the bundle and nothing goes through the batcher, so ``/metrics`` counts none of it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import numpy as np

from mcdropout.answer import RegressionResult
from mcdropout.bundle import Bundle

PERCENTILES = tuple(range(101))  # every whole percentile: the page reads p50/p90/p99 and a row's rank
MAX_ROWS = 2000  # of a large test part (already shuffled by the split): the lane is not held for long
CLASSIFICATION = ("entropy", "mutual_information", "variation_ratio")
log = logging.getLogger("mcdropout.service")


def held_out_percentiles(bundle: Bundle, seed: int, max_rows: int = MAX_ROWS,
                         allowed_dirs: Sequence[str | Path] = ()) -> dict[str, Any]:
    """The served uncertainty's percentiles over ``bundle``'s held-out rows; ``available`` False says why not.

    A table the manifest records is read only inside the bundle's folder or ``allowed_dirs`` (symlinks followed
    first), and a table's failure is reported without its text (which may quote the file): the log has it.

    Each statistic maps to one list of 101 percentiles per column: per output for regression (``std``,
    ``epistemic_std``), one column for classifiers (``entropy``, ``mutual_information``, ``variation_ratio``).
    """
    from mcdropout.training import OutsideAllowedDirs, split_of

    manifest = bundle.manifest
    folders = [*([bundle.path] if bundle.path is not None else []), *allowed_dirs]
    try:
        test = split_of(bundle, allowed_dirs=folders).x_test
    except (ImportError, ValueError, OSError) as problem:  # no scikit-learn, data not recorded, table gone
        if isinstance(problem, OutsideAllowedDirs):
            said = str(problem)
        elif "path" in ((manifest.training or {}).get("data") or {}):  # a table's error may quote its content
            log.warning("bundle %r: its held-out rows cannot be re-made from its training table: %s",
                        bundle.name, problem)
            said = "its training table cannot be read (the server log says why)"
        else:
            said = str(problem)
        return {"available": False, "reason": f"its held-out rows cannot be re-made here: {said}"}
    if len(test) == 0:
        return {"available": False, "reason": "its recorded split has no test rows"}
    rows = test[:max_rows]
    source = f"the {len(rows)} test rows of its training split" if len(rows) == len(test) else \
        f"the first {len(rows)} of the {len(test)} test rows of its training split"
    result = bundle.answer(rows, samples=manifest.samples, seed=seed)
    if isinstance(result, RegressionResult):
        columns = {"std": result.std, "epistemic_std": np.sqrt(result.epistemic_variance)}
    else:
        columns = {name: getattr(result, name)[:, None] for name in CLASSIFICATION}
    return {
        "available": True, "rows": len(rows), "samples": manifest.samples, "seed": seed,
        "source": source,
        "percentiles": list(PERCENTILES),
        "statistics": {name: np.percentile(values, PERCENTILES, axis=0).T.tolist()
                       for name, values in columns.items()},
    }


class Scales:
    """The percentiles of each served bundle, computed on first request and kept while it is served."""

    def __init__(self) -> None:
        self._computed: dict[str, tuple[Bundle, asyncio.Future]] = {}

    async def of(self, bundle: Bundle, lane: Executor, seed: int,
                 allowed_dirs: Sequence[str | Path] = ()) -> dict[str, Any]:
        """``bundle``'s percentiles; a bundle reloaded under the same name is computed again."""
        known = self._computed.get(bundle.name)
        if known is None or known[0] is not bundle:
            future = asyncio.get_running_loop().run_in_executor(lane, held_out_percentiles, bundle, seed, MAX_ROWS,
                                                                tuple(allowed_dirs))
            known = self._computed[bundle.name] = (bundle, future)
        try:
            return await asyncio.shield(known[1])
        except Exception:
            if self._computed.get(bundle.name) is known:  # a failure is not kept: the next page tries again
                del self._computed[bundle.name]
            raise

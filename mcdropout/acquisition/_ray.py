"""``mcdropout acquire --engine ray``: the pool sharded over Ray Data workers.

:func:`acquire_ray` does the same from per-sample probabilities delivered in chunks (as
:func:`~mcdropout.acquisition.acquire_probabilities` takes them), on Ray tasks.

One pass: actors (each with the bundle, shipped as files) predict the pool's row groups and answer each
row's scores; for BatchBALD the candidates' per-sample probabilities stay in Ray's object store, in
blocks: the shards. With ``--candidates M`` the pass keeps only scores, and a second one predicts just the
M rows of highest BALD into the shards.

Each greedy step is then a map over the shards, with the chosen rows' joint state broadcast
(:class:`~mcdropout.acquisition.JointState`: the posterior over the T sub-networks per label configuration,
T x K numbers), each shard answering its best candidate and that row's probabilities, and a reduce on the
driver that keeps the best (:func:`~mcdropout.acquisition.better`: the higher score, on a tie the lower
row, whatever the order the shards answer in). The library's greedy loop
(:func:`~mcdropout.acquisition.batchbald`) drives the steps, with its per-step random draws: every worker
uses the same seed, so sample t is the same sub-network everywhere, and the picks are the local engine's.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mcdropout.acquisition._acquire import (
    DEFAULT_CONFIGURATIONS,
    STOCHASTIC,
    Acquisition,
    _one_pass,
    check_request,
    new_seed,
    parse_budget,
)
from mcdropout.acquisition._pool_file import AcquireJob, Pool, Recorder, check_task
from mcdropout.acquisition._greedy import Candidate, Greedy, batchbald, best_candidate, better
from mcdropout.acquisition._scores import RowScores, top_k
from mcdropout.acquisition._source import iter_chunks
from mcdropout.bundle import read_manifest
from mcdropout.errors import InputError, ScoringError

_SCORES = ("bald", "entropy", "expected_entropy", "margin")


class _Predictor:
    """One per actor: the bundle, loaded from the shipped files; answers a row group's scores (and the
    per-sample probabilities of the rows in ``keep``: all of them with ``keep`` True)."""

    def __init__(self, files: dict[str, bytes], samples: int | None, seed: int, memory_budget: str,
                 trust_code: bool, keep: bool | set[int]) -> None:
        from mcdropout.acquisition._pool import _predictor
        from mcdropout.bundle import load_bundle

        folder = tempfile.mkdtemp(prefix="mcdropout-bundle-")
        for name, data in files.items():
            Path(folder, name).write_bytes(data)
        bundle = load_bundle(folder, trust_code=trust_code, memory_budget=memory_budget)
        self.shape = bundle.manifest.input_shape
        self.predict, self.samples, _ = _predictor(bundle, samples, True, memory_budget)
        self.seed, self.keep = seed, keep

    def __call__(self, items: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = pa.concat_tables([pq.ParquetFile(path).read_row_group(int(group))
                                  for path, group in zip(items["path"], items["group"])])
        rows = batch.column("row").to_numpy()
        x = np.stack([batch.column(i).to_numpy() for i in range(1, batch.num_columns)], axis=1)
        if isinstance(self.keep, set):  # the candidates' pass: only they are predicted
            chosen = np.fromiter((r in self.keep for r in rows.tolist()), dtype=bool, count=len(rows))
            rows, x = rows[chosen], x[chosen]
        probs = self.predict(x.astype(np.float32).reshape(len(x), *self.shape), self.samples, self.seed)
        scores = RowScores.of(probs)
        answer = {"row": rows, **{name: getattr(scores, name) for name in _SCORES}}
        if self.keep is not False:
            answer["probs"] = np.asarray(probs, dtype=np.float32)
        return answer


def _best_of_shard(shard: dict[str, np.ndarray], state: Any, taken: np.ndarray, work_bytes: int) -> dict:
    """One greedy step on one shard: its best candidate given the chosen rows' joint ``state``."""
    rows, probs, expected = shard["row"], shard["probs"], shard["expected_entropy"]
    best = None
    if len(rows):
        step = state.chunk_rows(probs.shape[1], probs.shape[2], work_bytes)
        for first in range(0, len(rows), step):
            part = slice(first, first + step)
            best = better(best, best_candidate(state, rows[part], probs[part], expected[part], taken))
    if best is None:
        return {"row": rows[:0], "score": np.zeros(0), "standard_error": np.zeros(0), "probs": probs[:0]}
    at = int(np.flatnonzero(rows == best.row)[0])
    return {"row": np.array([best.row]), "score": np.array([best.score]),
            "standard_error": np.array([best.standard_error]), "probs": probs[at:at + 1]}


def _rows_of_shard(shard: dict[str, np.ndarray], wanted: np.ndarray) -> dict:
    chosen = np.isin(shard["row"], wanted)
    return {"row": shard["row"][chosen], "probs": shard["probs"][chosen]}


def ray_picks(job: AcquireJob, recorder: Recorder, *, address: str | None, workers: int,
              trust_code: bool = False) -> None:
    """Pick ``job.k`` rows of ``job.input`` on Ray Data; each pick goes to ``recorder`` as it is made."""
    try:
        import ray
    except ImportError:
        raise ImportError("--engine ray needs Ray Data: pip install 'mcdropout[ray]'") from None
    if workers < 1:
        raise ScoringError(f"--workers must be >= 1, got {workers}")
    manifest = read_manifest(Path(job.model))
    check_task(manifest.task, job.method)
    staging = recorder.partial.folder / "ray-pool.parquet"
    rows = _stage(recorder.counted(Pool(job, manifest)), staging, job.chunk_rows)
    if rows < job.k:
        raise ScoringError(f"--k: asked for {job.k} rows from a pool of {rows}")
    started_here = not ray.is_initialized() and address is None
    if not ray.is_initialized():
        ray.init(address=address, num_cpus=workers if address is None else None, include_dashboard=False,
                 log_to_driver=not recorder.quiet, logging_level="ERROR", configure_logging=True)
    try:
        _Run(job, recorder, staging, workers, trust_code).picks()
    finally:
        staging.unlink(missing_ok=True)
        if started_here:
            ray.shutdown()


def _stage(chunks: Iterator[np.ndarray], staging: Path, chunk_rows: int) -> int:
    """The pool's checked rows (row number, then the flattened input) as Parquet, a row group a chunk."""
    writer, first = None, 0
    try:
        for x in chunks:
            flat = x.reshape(len(x), -1)
            table = pa.table({"row": np.arange(first, first + len(x), dtype=np.int64),
                              **{str(i): flat[:, i] for i in range(flat.shape[1])}})
            writer = writer or pq.ParquetWriter(staging, table.schema)
            writer.write_table(table, row_group_size=chunk_rows)
            first += len(x)
    finally:
        if writer is not None:
            writer.close()
    return first


class _Run:
    """The passes and the greedy steps of one run, on the running Ray."""

    def __init__(self, job: AcquireJob, recorder: Recorder, staging: Path, workers: int, trust_code: bool) -> None:
        import ray

        self.ray, self.job, self.recorder, self.workers = ray, job, recorder, workers
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True
        context.enable_progress_bars = False
        context.print_on_execution_start = False  # a line per greedy step otherwise
        self.gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
        groups = pq.ParquetFile(staging).num_row_groups
        self.items = ray.data.from_items([{"path": str(staging), "group": g} for g in range(groups)])
        self.files = {p.name: p.read_bytes() for p in Path(job.model).iterdir() if p.is_file()}
        self.trust_code = trust_code
        self.work_bytes = parse_budget(job.memory_budget) // 4

    def _predicted(self, keep: bool | set[int]) -> Any:
        # Each actor reads the row groups it is given (as scoring's Ray engine does): no read tasks.
        return self.items.map_batches(
            _Predictor, batch_size=1, batch_format="numpy", concurrency=self.workers, num_gpus=self.gpus,
            num_cpus=0 if self.gpus else 1,
            fn_constructor_kwargs={"files": self.files, "samples": self.job.samples, "seed": self.job.seed,
                                   "memory_budget": self.job.memory_budget, "trust_code": self.trust_code,
                                   "keep": keep}).materialize()

    def picks(self) -> None:
        job = self.job
        greedy = job.method == "batchbald"
        scored = self._predicted(greedy and job.candidates is None)
        columns = scored.select_columns(["row", *_SCORES]).to_pandas().sort_values("row")
        scores = RowScores(**{name: columns[name].to_numpy() for name in _SCORES})
        if not greedy:
            indices, picked = _one_pass(job.method, scores, job.k, job.seed, job.beta)
            self.recorder.all_at_once(indices, picked, None)
            return
        shards = scored if job.candidates is None else \
            self._predicted({int(r) for r in top_k(scores.bald, job.candidates)})
        self._greedy(shards, scores.expected_entropy)

    def _greedy(self, shards: Any, expected: np.ndarray) -> None:
        job, known = self.job, {}
        if self.recorder.done:  # the replayed picks' probabilities, in one map
            found = shards.map_batches(_rows_of_shard, batch_size=None, batch_format="numpy",
                                       fn_kwargs={"wanted": np.asarray(self.recorder.done)}).take_all()
            known.update({int(item["row"]): np.asarray(item["probs"], dtype=np.float64) for item in found})
        samples = next(iter(shards.take(1)))["probs"].shape[0]

        def scan(state: Any, taken: set) -> Candidate | None:
            answers = shards.map_batches(_best_of_shard, batch_size=None, batch_format="numpy", fn_kwargs={
                "state": state, "taken": np.fromiter(taken, dtype=np.int64, count=len(taken)),
                "work_bytes": self.work_bytes}).take_all()
            best = None
            for item in answers:
                best = better(best, Candidate(float(item["score"]), int(item["row"]), float(item["standard_error"])))
                known[int(item["row"])] = np.asarray(item["probs"], dtype=np.float64)
            return best

        def row(index: int) -> tuple[np.ndarray, float]:
            if index not in known:
                raise ScoringError(f"--resume: row {index} of the interrupted run is not a candidate of this run")
            return known[index], float(expected[index])

        batchbald(scan, row, job.k, samples, seed=job.seed, configurations=job.configurations,
                  joint_budget=job.configurations * samples, start=self.recorder.done, on_pick=self.recorder.candidate)


def _scored(block: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A block's per-row scores (a Ray task)."""
    scores = RowScores.of(block["probs"])
    return {name: getattr(scores, name) for name in _SCORES}


def acquire_ray(probabilities: Any, k: int, method: str = "batchbald", *, seed: int | None = None,
                beta: float = 1.0, candidates: int | None = None, configurations: int = DEFAULT_CONFIGURATIONS,
                joint_budget: int | None = None, workers: int = 2, address: str | None = None,
                memory_budget: int | str = 256_000_000, start: Sequence[int] = (),
                on_pick: Callable[[int, Candidate], None] | None = None) -> Acquisition:
    """:func:`~mcdropout.acquisition.acquire_probabilities` on Ray: the same picks for the same seed.

    The chunks are read once, on this process, and each goes to Ray's object store as a block whose scores a
    task computes (at most ``2 x workers`` blocks in flight, so memory stays flat however long the pool).
    BatchBALD keeps the blocks (every row), or with ``candidates`` only the ``candidates`` rows of highest
    BALD, gathered into ``workers`` shards; each greedy step is then a task per shard with the chosen rows'
    joint state broadcast, and a reduce here that keeps the best candidate. A Ray already running is used
    (``address`` joins a cluster); else a local one with ``workers`` CPUs is started and stopped.
    """
    import ray

    check_request(k, method, beta=beta, candidates=candidates, configurations=configurations)
    if start and method != "batchbald":
        raise InputError("start: only BatchBALD's greedy picks can be resumed; the other methods take one pass")
    seed = new_seed() if seed is None else int(seed)
    started_here = not ray.is_initialized() and address is None
    if not ray.is_initialized():
        ray.init(address=address, num_cpus=workers if address is None else None, include_dashboard=False,
                 logging_level="ERROR", configure_logging=True)
    try:
        keep = method == "batchbald"
        blocks, scores, shape = _blocks_and_scores(ray, probabilities, keep, candidates, workers,
                                                   parse_budget(memory_budget) // 8)
        check_request(k, method, pool_rows=len(scores.bald))
        samples, classes = shape
        if not keep:
            indices, picked = _one_pass(method, scores, k, seed, beta)
            return Acquisition(indices=indices, scores=picked, bald=scores.bald, method=method, seed=seed,
                               samples=samples, classes=classes, standard_errors=np.zeros(len(indices)),
                               parameters={"beta": float(beta), "score": "bald"} if method in STOCHASTIC else {})
        if candidates is not None:
            blocks = _candidate_shards(ray, blocks, top_k(scores.bald, candidates), workers)
        joint_budget = configurations * samples if joint_budget is None else joint_budget
        greedy = _task_greedy(ray, blocks, scores.expected_entropy, k, samples, seed=seed,
                              configurations=configurations, joint_budget=joint_budget,
                              work_bytes=parse_budget(memory_budget) // 4, start=start, on_pick=on_pick)
        return Acquisition(indices=greedy.rows, scores=greedy.scores, bald=scores.bald, method=method, seed=seed,
                           samples=samples, classes=classes, standard_errors=greedy.standard_errors,
                           exact_steps=greedy.exact_steps,
                           parameters={"configurations": configurations, "joint_budget": joint_budget,
                                       "candidates": candidates})
    finally:
        if started_here:
            ray.shutdown()


def _blocks_and_scores(ray: Any, probabilities: Any, keep: bool, candidates: int | None, workers: int,
                       chunk_bytes: int) -> tuple[list, RowScores, tuple[int, int]]:
    """One pass: every chunk a block in the object store, scored by a task; the blocks kept for BatchBALD."""
    score = ray.remote(_scored)
    pending: list[tuple[Any, Any]] = []
    kept, parts = [], []
    shape = (0, 0)
    for chunk in iter_chunks(probabilities, chunk_bytes=chunk_bytes):
        shape = chunk.probs.shape[1:]
        rows = np.arange(chunk.offset, chunk.offset + len(chunk.probs), dtype=np.int64)
        block = ray.put({"row": rows, "probs": np.asarray(chunk.probs, dtype=np.float32)})
        pending.append((block, score.remote(block)))
        if keep:
            kept.append(block)
        while len(pending) >= 2 * workers:  # bounded: the oldest block's scores before the next chunk is read
            parts.append(ray.get(pending.pop(0)[1]))
    parts += [ray.get(task) for _, task in pending]
    if not parts:
        raise InputError("probabilities: the pool is empty")
    scores = RowScores(**{name: np.concatenate([part[name] for part in parts]) for name in _SCORES})
    return kept, scores, shape


def _candidate_shards(ray: Any, blocks: list, wanted: np.ndarray, workers: int) -> list:
    """The ``wanted`` rows of ``blocks``, gathered into ``workers`` shards (in row order)."""
    wanted = np.sort(wanted)
    parts = [_rows_of_shard(ray.get(block), wanted) for block in blocks]
    rows = np.concatenate([part["row"] for part in parts])
    probs = np.concatenate([part["probs"] for part in parts])
    return [ray.put({"row": r, "probs": p}) for r, p in zip(np.array_split(rows, workers),
                                                            np.array_split(probs, workers)) if len(r)]


def _task_greedy(ray: Any, shards: list, expected: np.ndarray, k: int, samples: int, *, seed: int,
                 configurations: int, joint_budget: int, work_bytes: int, start: Sequence[int],
                 on_pick: Callable[[int, Candidate], None] | None) -> Greedy:
    best_of = ray.remote(_best_of_block)
    known: dict[int, np.ndarray] = {}
    if start:
        for found in ray.get([ray.remote(_rows_of_shard).remote(shard, np.asarray(start)) for shard in shards]):
            known.update({int(r): np.asarray(p, dtype=np.float64) for r, p in zip(found["row"], found["probs"])})

    def scan(state: Any, taken: set) -> Candidate | None:
        broadcast = ray.put(state)
        taken_rows = np.fromiter(taken, dtype=np.int64, count=len(taken))
        best = None
        for item in ray.get([best_of.remote(shard, broadcast, taken_rows, work_bytes, expected) for shard in shards]):
            if len(item["row"]):
                best = better(best, Candidate(float(item["score"][0]), int(item["row"][0]),
                                              float(item["standard_error"][0])))
                known[int(item["row"][0])] = np.asarray(item["probs"][0], dtype=np.float64)
        return best

    def row(index: int) -> tuple[np.ndarray, float]:
        if index not in known:
            raise InputError(f"start: row {index} is not a candidate of this pool")
        return known[index], float(expected[index])

    return batchbald(scan, row, k, samples, seed=seed, configurations=configurations, joint_budget=joint_budget,
                     start=start, on_pick=on_pick)


def _best_of_block(block: dict[str, np.ndarray], state: Any, taken: np.ndarray, work_bytes: int,
                   expected: np.ndarray) -> dict:
    """:func:`_best_of_shard` for a block of rows and probabilities, its expected entropies looked up."""
    return _best_of_shard({**block, "expected_entropy": expected[block["row"]]}, state, taken, work_bytes)

"""Prometheus metrics of the service, in a registry of its own per app.

Under ``mcdropout serve --workers N`` (PROMETHEUS_MULTIPROC_DIR set, as prometheus_client's multiprocess
mode wants it) every worker writes its values into that folder and /metrics, whichever worker answers it,
sums them over the workers with prometheus_client's MultiProcessCollector: one scrape shows the whole server.
"""

from __future__ import annotations

import atexit
import os
import re
from collections.abc import Callable, Container
from pathlib import Path

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from service.batcher import BatchStats
from service.processes import alive

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384, 65536)
_UNCERTAINTY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0,
                        100.0, 250.0)


def multiprocess_dir() -> Path | None:
    """The folder of prometheus_client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR); None: one process."""
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    return Path(folder) if folder else None


class ServiceMetrics:
    def __init__(self) -> None:
        self.multiprocess = multiprocess_dir()
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("mcdropout_requests", "HTTP requests by route, model and status",
                                ["route", "model", "status"], registry=r)
        self.queue_seconds = Histogram("mcdropout_queue_seconds", "time a request waited for the compute thread",
                                       ["model"], buckets=_LATENCY_BUCKETS, registry=r)
        self.compute_seconds = Histogram("mcdropout_compute_seconds", "time of one merged engine run",
                                         ["model"], buckets=_LATENCY_BUCKETS, registry=r)
        self.batch_requests = Histogram("mcdropout_batch_requests", "requests merged into one engine run",
                                        ["model"], buckets=_ROW_BUCKETS, registry=r)
        self.batch_rows = Histogram("mcdropout_batch_rows", "input rows of one engine run", ["model"],
                                    buckets=_ROW_BUCKETS, registry=r)
        # summed over the live workers; a worker's own value is sampled at each engine run and each scrape it answers
        self.queue_depth = Gauge("mcdropout_queue_depth", "requests waiting", ["model"], registry=r,
                                 multiprocess_mode="livesum")
        self.samples = Counter("mcdropout_samples", "forward rows drawn (input rows x MC samples)", ["model"],
                               registry=r)
        self.uncertainty = Histogram(
            "mcdropout_served_uncertainty",
            "uncertainty served per row: predictive std (regression) or mutual information in nats"
            " (classification); a shift shows inputs drifting from the training data",
            ["model", "kind"], buckets=_UNCERTAINTY_BUCKETS, registry=r,
        )
        self.dropped = Counter("mcdropout_dropped_requests", "requests left out of every engine run before it"
                               " started, by reason: deadline (answered 504) or disconnected (the client went away)",
                               ["model", "reason"], registry=r)
        self.abstentions = Counter("mcdropout_abstentions", "rows answered with abstain: true (sent to a human)",
                                   ["model"], registry=r)
        self.set_size = Histogram("mcdropout_prediction_set_size", "classes in each conformal prediction set served",
                                  ["model"], buckets=_ROW_BUCKETS, registry=r)
        self.nonfinite_answers = Counter(
            "mcdropout_nonfinite_answers",
            "predictions refused (422) because a statistic came out NaN or infinite: the network overflowed on"
            " the inputs", ["model"], registry=r)
        self.nonfinite_rows = Counter("mcdropout_nonfinite_rows", "input rows whose statistics came out NaN or"
                                      " infinite", ["model"], registry=r)
        # each labelled family and its label names, for forget() (read through the public collect())
        self._labels = {self.requests: ("route", "model", "status"), self.uncertainty: ("model", "kind"),
                        self.dropped: ("model", "reason"),
                        **{family: ("model",) for family in (
                            self.queue_seconds, self.compute_seconds, self.batch_requests, self.batch_rows,
                            self.queue_depth, self.samples, self.abstentions, self.set_size,
                            self.nonfinite_answers, self.nonfinite_rows)}}
        self._forget_hooks: list[Callable[[str], None]] = []
        self._depths: dict[str, Callable[[], int]] = {}  # each served model's queue depth, read when sampled
        if self.multiprocess is not None:
            _reap_dead_workers(self.multiprocess)
            atexit.register(multiprocess.mark_process_dead, os.getpid(), str(self.multiprocess))

    def track_depth(self, model: str, depth: Callable[[], int]) -> None:
        """``model`` is served: its queue depth is ``depth()`` (read on each scrape; under several workers also
        written at each engine run, since another worker may answer the scrape)."""
        self._depths[model] = depth
        if self.multiprocess is None:
            self.queue_depth.labels(model).set_function(depth)

    def observe_batch(self, model: str, stats: BatchStats) -> None:
        if self.multiprocess is not None and model in self._depths:
            self.queue_depth.labels(model).set(self._depths[model]())
        for seconds in stats.queue_seconds:
            self.queue_seconds.labels(model).observe(seconds)
        self.compute_seconds.labels(model).observe(stats.compute_seconds)
        self.batch_requests.labels(model).observe(stats.requests)
        self.batch_rows.labels(model).observe(stats.rows)
        self.samples.labels(model).inc(stats.forward_rows)
        kind, values = stats.uncertainty
        histogram = self.uncertainty.labels(model, kind)
        for value in values.ravel().tolist():
            histogram.observe(value)
        if stats.abstained:
            self.abstentions.labels(model).inc(stats.abstained)
        if stats.set_sizes:
            sizes = self.set_size.labels(model)
            for size in stats.set_sizes:
                sizes.observe(size)

    def observe_nonfinite(self, model: str, rows: int) -> None:
        """One refused answer, with ``rows`` rows the network overflowed on."""
        self.nonfinite_answers.labels(model).inc()
        self.nonfinite_rows.labels(model).inc(rows)

    def forget(self, model: str) -> None:
        """Drop every series of ``model`` (unloaded or removed, its batchers closed), so /metrics lists only
        what is served and no callback keeps its batcher alive; the request counter's cached children go too
        (through the hooks of :meth:`on_forget`). A model served again counts from zero, as after a restart.
        Under several workers its series stay in the files: /metrics leaves out every model not served."""
        for family, names in self._labels.items() if self.multiprocess is None else ():
            children = {tuple(sample.labels[name] for name in names) for metric in family.collect()
                        for sample in metric.samples if sample.labels.get("model") == model}
            for labels in children:
                family.remove(*labels)
        for hook in self._forget_hooks:
            hook(model)
        self._depths.pop(model, None)  # under several workers, the files keep its series: render() leaves them out

    def on_forget(self, hook: Callable[[str], None]) -> None:
        """Call ``hook(model)`` whenever a model's series are dropped (a cache of labelled children)."""
        self._forget_hooks.append(hook)

    def render(self) -> bytes:
        if self.multiprocess is None:
            return generate_latest(self.registry)
        for model, depth in self._depths.items():
            self.queue_depth.labels(model).set(depth())
        registry = CollectorRegistry()
        registry.register(_Served(multiprocess.MultiProcessCollector(None, str(self.multiprocess)), self._depths))
        return generate_latest(registry)


class _Served:
    """A collector's metrics with only the series of the models in ``served`` (and those of no model): the
    multiprocess files keep an unloaded or removed model's values until the server stops; a model served
    again shows its counts since the server started, as Prometheus counters may."""

    def __init__(self, collector, served: Container[str]) -> None:
        self.collector = collector
        self.served = served

    def collect(self):
        for metric in self.collector.collect():
            metric.samples = [s for s in metric.samples if s.labels.get("model", "") in self.served
                              or not s.labels.get("model")]
            yield metric


_LIVE_FILE = re.compile(r"gauge_live[a-z]+_(\d+)\.db")


def _reap_dead_workers(folder: Path) -> None:
    """Drop the live gauges of workers that are gone (killed, or restarted by the supervisor under a new pid),
    which prometheus_client's mark_process_dead does when a process manager calls it: uvicorn's has no hook."""
    for path in folder.glob("gauge_live*_*.db"):
        match = _LIVE_FILE.fullmatch(path.name)
        if match and not alive(int(match.group(1))):
            multiprocess.mark_process_dead(int(match.group(1)), str(folder))

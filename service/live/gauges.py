"""Live quality as Prometheus gauges, in the app's registry (service/metrics.py's), set from the windows'
figures after every accepted batch of outcomes and every ``GET .../quality``.

Labels: ``model``, ``window`` (``count`` or ``time``), and where a figure depends on what was served,
``kind`` (``interval`` / ``set``) and ``level``, or ``max_risk``. The coverage gauges share one label set
with their nominal level and row count, so that an alert rule can compare them
(monitoring/prometheus/rules.yml). Gauges are ``mostrecent`` under prometheus_client's multiprocess mode:
every worker computes the same figures from the shared store, and the newest one is shown.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

_COVERAGE = ("model", "window", "kind", "level")
_LEVEL = ("model", "window", "level")
_RISK = ("model", "window", "max_risk")
_WINDOW = ("model", "window")


class QualityGauges:
    def __init__(self, registry: CollectorRegistry) -> None:
        def gauge(name: str, text: str, labels: tuple[str, ...]) -> Gauge:
            return Gauge(name, text, labels, registry=registry, multiprocess_mode="mostrecent")

        self.rows = gauge("mcdropout_live_rows", "outcomes in the window", _WINDOW)
        self.coverage = gauge("mcdropout_live_coverage", "share of outcomes inside the served interval (kind"
                              " interval, per output) or prediction set (kind set), by served level", _COVERAGE)
        self.nominal = gauge("mcdropout_live_coverage_nominal", "the served level of mcdropout_live_coverage",
                             _COVERAGE)
        self.coverage_rows = gauge("mcdropout_live_coverage_rows", "outcomes behind mcdropout_live_coverage",
                                   _COVERAGE)
        self.width = gauge("mcdropout_live_interval_width", "mean interval width (target units)", _LEVEL)
        self.interval_score = gauge("mcdropout_live_interval_score", "mean interval score (width plus 2/alpha"
                                    " times the miss; lower is better)", _LEVEL)
        self.set_size = gauge("mcdropout_live_set_size", "mean prediction set size (classes)", _LEVEL)
        self.nll = gauge("mcdropout_live_nll", "mean negative log-likelihood of the outcomes (nats)", _WINDOW)
        self.accuracy = gauge("mcdropout_live_accuracy", "share of outcomes equal to the predicted class", _WINDOW)
        self.ece = gauge("mcdropout_live_ece", "expected calibration error (equal-width confidence bins)", _WINDOW)
        self.accepted_error = gauge("mcdropout_live_accepted_error", "error rate of the rows not abstained on,"
                                    " by the served max_risk", _RISK)
        self.max_risk = gauge("mcdropout_live_max_risk", "the served max_risk of mcdropout_live_accepted_error",
                              _RISK)
        self.accepted_rows = gauge("mcdropout_live_accepted_rows", "accepted outcomes behind"
                                   " mcdropout_live_accepted_error", _RISK)
        self.abstention = gauge("mcdropout_live_abstention_rate", "share of rows abstained on", _RISK)
        self.dropped_rows = Counter("mcdropout_store_dropped_rows", "answer rows not kept: the store's queue was"
                                    " full (MCD_STORE_MAX_PENDING_ROWS)", ["model"], registry=registry)
        self._shown: dict[str, set[tuple[Gauge, tuple[str, ...]]]] = {}

    def show(self, model: str, task: str, windows: dict[str, dict[str, Any]]) -> None:
        """Set the gauges of ``model`` from :func:`service.live.quality.window_figures`; series of levels no
        longer in a window are dropped."""
        shown: set[tuple[Gauge, tuple[str, ...]]] = set()

        def put(family: Gauge, labels: tuple[str, ...], value: float | None) -> None:
            if value is not None:
                family.labels(*labels).set(value)
                shown.add((family, labels))

        for window, figures in windows.items():
            put(self.rows, (model, window), figures["rows"])
            put(self.nll, (model, window), figures.get("nll"))
            put(self.accuracy, (model, window), figures.get("accuracy"))
            put(self.ece, (model, window), figures.get("ece"))
            for kind, key in (("interval", "intervals"), ("set", "sets")):
                for entry in figures.get(key, []):
                    labels = (model, window, kind, f"{entry['level']:g}")
                    put(self.coverage, labels, entry["coverage"])
                    put(self.nominal, labels, entry["level"])
                    put(self.coverage_rows, labels, entry["rows"])
                    short = (model, window, f"{entry['level']:g}")
                    put(self.width, short, entry.get("mean_width"))
                    put(self.interval_score, short, entry.get("interval_score"))
                    put(self.set_size, short, entry.get("mean_size"))
            for entry in figures.get("selective", []):
                labels = (model, window, f"{entry['max_risk']:g}")
                put(self.accepted_error, labels, entry["accepted_error"])
                put(self.max_risk, labels, entry["max_risk"])
                put(self.accepted_rows, labels, entry["accepted_rows"])
                put(self.abstention, labels, entry["abstention_rate"])
        for family, labels in self._shown.get(model, set()) - shown:
            family.remove(*labels)
        self._shown[model] = shown

    def forget(self, model: str) -> None:
        """Drop every series of ``model`` (no longer served)."""
        for family, labels in self._shown.pop(model, set()):
            family.remove(*labels)

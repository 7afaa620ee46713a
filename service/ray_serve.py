"""The service as a Ray Serve deployment: ``mcdropout serve --ray``, or ``serve deploy deploy/ray/serve.yaml``.

Each replica runs the whole app of service/app.py behind a FastAPI ingress: its own models, batcher and
compute lanes, configured by the MCD_* variables of its runtime environment. Because a row's answer depends
only on (model, row, T, seed), any replica answers any request with the same numbers, and a retry is
idempotent.

- ``max_ongoing_requests`` is MCD_MAX_QUEUE (256 by default), not Serve's 5: a replica takes as many
  requests as its batcher queues, so that concurrent requests merge into one engine run.
- ``check_health`` asks every compute lane for a no-op: a wedged lane fails it and Serve replaces the replica.
- In the proxy, :func:`proxy_middlewares` (named by ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``) answers a
  request whose replica died under it with 503 and Retry-After, where Serve's proxy would answer a bare 500.
- Each replica copies its Prometheus series into Ray's metrics export every few seconds (:class:`RayMetrics`),
  so Prometheus scrapes them from Ray's metrics agents (docs/cluster.md).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from ray import serve

log = logging.getLogger("mcdropout.service")

APPLICATION = "mcdropout"
DEPLOYMENT = "mcdropout"
REPLICA_HEADER = "x-mcdropout-replica"  # which replica answered: every answer of the app carries it
PROXY_CALLBACK_VARIABLE = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
PROXY_CALLBACK = "service.ray_serve:proxy_middlewares"
MAX_ONGOING_REQUESTS = 256  # MCD_MAX_QUEUE's default; `mcdropout serve --ray` takes the setting's value
METRICS_EXPORT_S = 5.0
LOST_REPLICA = ("the replica serving this request stopped before it answered; retry: answers are seed-exact,"
                " so a retry gets the same answer")


def _build_app() -> FastAPI:
    """Runs in each replica: the app of service/app.py, built from the replica's MCD_* environment."""
    from service.app import app

    context = serve.get_replica_context()
    app.add_middleware(ReplicaHeader, replica=context.replica_tag)
    RayMetrics(app, context.replica_tag).start()
    return app


@serve.deployment(name=DEPLOYMENT, max_ongoing_requests=MAX_ONGOING_REQUESTS,
                  max_queued_requests=4 * MAX_ONGOING_REQUESTS, ray_actor_options={"num_cpus": 1},
                  health_check_period_s=5, health_check_timeout_s=40, graceful_shutdown_timeout_s=30)
@serve.ingress(_build_app)
class MCDropout:
    """One replica: the service's app; ``self.app`` is the FastAPI app that Serve built in the replica."""

    async def check_health(self) -> None:
        """Serve calls this every few seconds; raising makes Serve replace the replica."""
        app: FastAPI = self.app  # type: ignore[attr-defined]
        state = app.state.service
        loop = asyncio.get_running_loop()
        for name, lane in list(state.lanes.items()):
            try:
                await asyncio.wait_for(loop.run_in_executor(lane, _noop), timeout=state.settings.request_timeout_s)
            except asyncio.TimeoutError:
                raise RuntimeError(f"the compute lane of model {name!r} has not answered a no-op in"
                                   f" {state.settings.request_timeout_s} s") from None
            except RuntimeError:  # the lane was shut down: a model retired since the copy of the dict
                continue


def _noop() -> None:
    return None


application = MCDropout.bind()
"""What ``serve deploy deploy/ray/serve.yaml`` imports (``import_path: service.ray_serve:application``)."""


class ReplicaHeader:
    """ASGI middleware: every answer names the replica that gave it, and its time in the app up to the answer's
    head as ``Server-Timing: app;dur=<ms>`` (what the proxy and the handle add is the rest of a client's wait)."""

    def __init__(self, app: Any, replica: str) -> None:
        self.app = app
        self.header = (REPLICA_HEADER.encode(), replica.encode())

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()

        async def sending(message: dict) -> None:
            if message["type"] == "http.response.start":
                timing = f"app;dur={(time.perf_counter() - started) * 1000:.3f}".encode()
                message = {**message, "headers": [*message.get("headers", []), self.header,
                                                  (b"server-timing", timing)]}
            await send(message)

        await self.app(scope, receive, sending)


class LostReplicaAs503:
    """ASGI middleware in Serve's proxy: a request that ends without an answer (its replica died under it,
    which Serve's proxy leaves to its HTTP server as a bare 500) gets 503 with Retry-After. Answers carry
    ``Server-Timing: serve;dur=<ms>``, the proxy's wait for them (bench/ray_serve.py splits a client's wait
    into the proxy's own part, the handle's and the app's)."""

    def __init__(self, app: Any, retry_after_s: int = 1) -> None:
        self.app = app
        self.retry_after = str(retry_after_s).encode()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False
        since = time.perf_counter()

        async def sending(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                # the proxy's wait for the answer's head: routing, the handle's call and the replica's work
                timing = f"serve;dur={(time.perf_counter() - since) * 1000:.3f}".encode()
                message = {**message, "headers": [*message.get("headers", []), (b"server-timing", timing)]}
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception:
            if started:
                raise
            log.warning("request failed in Serve's proxy before an answer: answered 503", exc_info=True)
        if not started:
            await _answer_503(send, self.retry_after)


async def _answer_503(send: Any, retry_after: bytes) -> None:
    body = json.dumps({"error": LOST_REPLICA}).encode()
    try:
        await send({"type": "http.response.start", "status": 503,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"retry-after", retry_after)]})
        await send({"type": "http.response.body", "body": body})
    except Exception:  # the client has gone: nobody to answer
        pass


def proxy_middlewares() -> list:
    """Serve's proxy callback (RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=service.ray_serve:proxy_middlewares)."""
    from starlette.middleware import Middleware

    retry_after = os.environ.get("MCD_RETRY_AFTER_S", "1")
    return [Middleware(LostReplicaAs503, retry_after_s=int(retry_after) if retry_after.isdigit() else 1)]


class RayMetrics:
    """Copies the replica's Prometheus series (the app's /metrics) into Ray's metrics export, as gauges named
    as the series are, with a ``replica`` tag. Ray exports them with its ``ray_`` prefix; the Prometheus
    config in monitoring/prometheus/ray.yml drops the prefix, so the Grafana dashboard's queries hold."""

    def __init__(self, app: FastAPI, replica: str) -> None:
        self.app = app
        self.replica = replica
        self._gauges: dict[str, Any] = {}

    def start(self) -> None:
        """Export every METRICS_EXPORT_S seconds, on a thread that lives as long as the replica."""
        threading.Thread(target=self._loop, name="mcdropout-ray-metrics", daemon=True).start()

    def _loop(self) -> None:
        while True:
            time.sleep(METRICS_EXPORT_S)
            try:
                self.export()
            except Exception:  # the export keeps going; what failed is logged
                log.exception("copying the metrics into Ray's export failed")

    def export(self) -> None:
        from prometheus_client.parser import text_string_to_metric_families
        from ray.util.metrics import Gauge

        state = getattr(self.app.state, "service", None)
        if state is None:
            return
        for family in text_string_to_metric_families(state.metrics.render().decode()):
            for sample in family.samples:
                if sample.name.endswith("_created") or not math.isfinite(sample.value):
                    continue
                tags = {**sample.labels, "replica": self.replica}
                gauge = self._gauges.get(sample.name)
                if gauge is None:
                    gauge = Gauge(sample.name, description=family.documentation or sample.name,
                                  tag_keys=tuple(sorted(tags)))
                    self._gauges[sample.name] = gauge
                gauge.set(sample.value, tags=tags)


# -- `mcdropout serve --ray` ------------------------------------------------------------------------------


@dataclass
class RayOptions:
    """What `mcdropout serve --ray` was given."""

    host: str
    port: int
    replicas: int = 1
    autoscale: tuple[int, int] | None = None
    address: str | None = None
    cpus: float = 1.0
    gpus: float = 0.0


def run(options: RayOptions) -> int:
    """Deploy the app on Ray Serve and serve until SIGTERM or SIGINT; a Ray started here is stopped here."""
    from service.settings import Settings

    settings = Settings()  # checked here, before any replica starts
    env = replica_environment(options)
    started_here = options.address is None
    stop = threading.Event()
    serving = False

    def stopping(*_: Any) -> None:
        if not serving:  # still starting: leave what runs (ray.init, serve.run), then clean up as on any error
            raise KeyboardInterrupt
        stop.set()

    previous = {sig: signal.signal(sig, stopping) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        _connect(options, started_here)
        serve.start(http_options={"host": options.host, "port": options.port,
                                  "request_timeout_s": settings.request_timeout_s + 5,
                                  "keep_alive_timeout_s": max(1, round(settings.keep_alive_s))})
        serve.run(deployment(options, env, settings.max_queue, settings.request_timeout_s), name=APPLICATION,
                  route_prefix="/", blocking=False)
        serving = True
        count = f"{options.autoscale[0]}-{options.autoscale[1]}" if options.autoscale else str(options.replicas)
        print(f"mcdropout: serving on http://{options.host}:{options.port} with {count} Ray Serve replica(s);"
              " SIGTERM or Ctrl-C stops", flush=True)
        while not stop.wait(0.5):
            pass
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _disconnect(started_here)


def _connect(options: RayOptions, started_here: bool) -> None:
    import ray

    if not started_here:
        ray.init(address=options.address, logging_level="WARNING", configure_logging=True)
        return
    os.environ.setdefault(PROXY_CALLBACK_VARIABLE, PROXY_CALLBACK)  # Ray's processes inherit it
    most = options.autoscale[1] if options.autoscale else options.replicas
    ray.init(num_cpus=max(os.cpu_count() or 1, math.ceil(most * options.cpus)), include_dashboard=False,
             logging_level="WARNING", configure_logging=True)


def _disconnect(started_here: bool) -> None:
    """Stop Serve and the Ray started here (replicas finish what they hold), or remove the application."""
    import ray

    if not ray.is_initialized():
        return
    try:
        if started_here:
            serve.shutdown()
        else:
            serve.delete(APPLICATION)
    finally:
        ray.shutdown()


def deployment(options: RayOptions, env: dict[str, str], max_ongoing: int = MAX_ONGOING_REQUESTS,
               lane_timeout_s: float = 30.0) -> Any:
    """The bound application: replicas (or autoscaling), CPUs and GPUs per replica, and their MCD_* env; Serve
    waits for check_health longer than check_health waits for a lane (the requests' deadline)."""
    actor = {"num_cpus": options.cpus, "num_gpus": options.gpus, "runtime_env": {"env_vars": env}}
    scale: dict[str, Any] = {"num_replicas": options.replicas}
    if options.autoscale:
        low, high = options.autoscale
        scale = {"autoscaling_config": {"min_replicas": low, "max_replicas": high,
                                        "target_ongoing_requests": max(1, max_ongoing // 4)}}
    return MCDropout.options(max_ongoing_requests=max_ongoing, max_queued_requests=4 * max_ongoing,
                             health_check_timeout_s=lane_timeout_s + 10, ray_actor_options=actor, **scale).bind()


def replica_environment(options: RayOptions) -> dict[str, str]:
    """The MCD_* settings of this process for every replica: the models folder made absolute (a replica's
    working folder is Ray's), gRPC off (Serve routes HTTP only), and torch threads = CPUs per replica."""
    env = {key: value for key, value in os.environ.items() if key.startswith("MCD_")}
    env["MCD_MODELS_DIR"] = str(Path(env.get("MCD_MODELS_DIR", "models")).resolve())
    env["MCD_GRPC_PORT"] = "0"
    env.setdefault("MCD_TORCH_THREADS", str(max(1, math.floor(options.cpus))))
    return env


def parse_autoscale(text: str) -> tuple[int, int]:
    """'MIN:MAX' -> (MIN, MAX), or ValueError saying what is allowed."""
    low, sep, high = text.partition(":")
    if not sep or not low.strip().isdigit() or not high.strip().isdigit() or not 0 <= int(low) <= int(high) \
            or int(high) < 1:
        raise ValueError(f"--autoscale takes MIN:MAX with 0 <= MIN <= MAX and MAX >= 1 (e.g. 1:4), got {text!r}")
    return int(low), int(high)

"""What one app serves: the models' versions, their batchers and compute lanes, and the metrics.

The lifecycle lives here: the repository is scanned (service/repository.py), each version is loaded
on its model's compute lane and served by a batcher of its own; a reload (the poller, or the
repository extension's load) loads a new or replaced version first and swaps it in only when it
loaded, so a broken one leaves the old one serving; a swapped-out or removed version's batcher
finishes the requests it holds before it stops.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from mcdropout.answer import Result
from mcdropout.bundle import Bundle, NonFiniteError, load_bundle
from service.adaptive import AdaptiveLevels
from service.batcher import Batcher, ClientGone, DeadlineExceeded, Overloaded
from service.inputs import ApiError
from service.live import Live
from service.metrics import ServiceMetrics
from service.repository import Listing, Version, model_names, parse_version, scan
from service.settings import Settings

if TYPE_CHECKING:
    from service.request import InferRequest

log = logging.getLogger("mcdropout.service")


@dataclass
class Served:
    """One loaded version: its bundle, its batcher and the stamp of the files it was loaded from."""

    version: Version
    bundle: Bundle
    batcher: Batcher
    width: int  # values per row and sample of its return_samples: classes, or outputs


class ServiceState:
    """The models, their batchers, the compute lanes and the metrics of one app."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = ServiceMetrics()
        self.live = Live(settings, self.metrics.registry)  # the answer store, outcomes and live quality
        self.metrics.on_forget(self.live.gauges.forget)
        # the ACI controllers, one set per app however many data planes serve it
        self.adaptive = AdaptiveLevels(settings.store, settings.store_path, settings.adaptive_gamma,
                                       self.metrics.registry)
        self.live.on_outcomes(self.adaptive.observe)  # outcomes of adapted answers move their level
        self.served: dict[str, dict[int, Served]] = {}
        # versions that did not load: the stamp of the files tried, and why (tried again when they change)
        self.failed: dict[str, dict[int, tuple[tuple, str]]] = {}
        self.problems: dict[str, str] = {}  # model folders that hold no bundle, and why
        self.unloaded: set[str] = set()  # unloaded through the repository API: not reloaded until loaded again
        # Views for the routes, kept in place (the middleware holds ``models``): the default version per name.
        self.models: dict[str, Bundle] = {}
        self.batchers: dict[str, Batcher] = {}
        self.failures: dict[str, str] = {}  # names with no version serving, and why
        self.lanes: dict[str, ThreadPoolExecutor] = {}
        self._lock: asyncio.Lock | None = None
        self._poller: asyncio.Task | None = None
        self._retiring: set[asyncio.Task] = set()
        self._closing: dict[str, int] = {}  # batchers per name still finishing their requests (on its lane)
        self._metered: set[str] = set()  # names with metric series to drop when no longer served

    # -- lifecycle ----------------------------------------------------------------------------

    async def open(self) -> None:
        """Load every version in the repository and serve it; start the poller when MCD_RELOAD is on."""
        self._lock = asyncio.Lock()
        await self.live.open()
        folder = Path(self.settings.models_dir)
        if not folder.is_dir():
            log.error("models folder %s does not exist: serving no models", folder)
        async with self._lock:
            await self._sync(await asyncio.to_thread(scan, folder))
        if self.settings.reload:
            self._poller = asyncio.get_running_loop().create_task(self._poll(), name="mcdropout-reload")

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
        batchers = [served.batcher for versions in self.served.values() for served in versions.values()]
        await asyncio.gather(*(batcher.close() for batcher in batchers), *self._retiring)
        for lane in self.lanes.values():
            lane.shutdown(wait=True)
        await self.live.close()

    async def reload(self, name: str | None = None) -> None:
        """Pick up what changed in the folder (one model's folder, or all); the repository API's load."""
        assert self._lock is not None, "open() first"
        async with self._lock:
            if name is not None:
                self.unloaded.discard(name)
            await self._sync(await asyncio.to_thread(scan, Path(self.settings.models_dir), name), only=name)
            if name is not None and name not in self.served and name not in self.failures:
                raise ApiError(404, f"no model folder {name!r} in the repository", "name")

    async def unload(self, name: str) -> None:
        """Stop serving every version of ``name`` (requests in flight finish) until it is loaded again."""
        assert self._lock is not None, "open() first"
        async with self._lock:
            if name not in self.served and name not in self.failed and name not in self.failures:
                raise ApiError(404, f"unknown model {name!r}; loaded: {', '.join(sorted(self.models)) or 'none'}",
                               "name")
            self.unloaded.add(name)
            for served in self.served.pop(name, {}).values():
                self._retire(served)
            self.failed.pop(name, None)
            self._refresh()
            log.info("model %s unloaded", name)

    async def _poll(self) -> None:
        """Rescan every MCD_RELOAD_INTERVAL_S; act on a version once its files were the same on two scans."""
        folder = Path(self.settings.models_dir)
        previous: Listing | None = None
        while True:
            await asyncio.sleep(self.settings.reload_interval_s)
            try:
                listing = await asyncio.to_thread(scan, folder)
                if previous is not None:
                    settled = Listing(
                        {key: v for key, v in listing.versions.items()
                         if key in previous.versions and previous.versions[key].stamp == v.stamp},
                        listing.problems,
                    )
                    # a version still being written is left as it is until the next scans agree
                    moving = {key for key in listing.versions if key not in settled.versions}
                    async with self._lock:
                        await self._sync(settled, keep=moving)
                previous = listing
            except asyncio.CancelledError:
                raise
            except Exception:  # the poller keeps going; what failed is logged
                log.exception("model repository reload failed")

    async def _sync(self, listing: Listing, only: str | None = None, keep: set[tuple[str, int]] = frozenset()
                    ) -> None:
        """Make what is served match ``listing``: load what is new or changed, retire what is gone."""
        for key, version in sorted(listing.versions.items()):
            name, number = key
            if name in self.unloaded:
                continue
            current = self.served.get(name, {}).get(number)
            if current is not None and current.version.stamp == version.stamp:
                continue
            if self.failed.get(name, {}).get(number, (None,))[0] == version.stamp:
                continue  # failed on these very files: tried again when they change
            await self._load(version, replacing=current)
        for name in list(self.served) + list(self.failed):
            if only is not None and name != only:
                continue
            for number in list(self.served.get(name, {})):
                if (name, number) not in listing.versions and (name, number) not in keep:
                    self._retire(self.served[name].pop(number))
                    log.info("model %s version %d removed from the folder: no longer served", name, number)
            for number in list(self.failed.get(name, {})):
                if (name, number) not in listing.versions and (name, number) not in keep:
                    del self.failed[name][number]
            for table in (self.served, self.failed):
                if name in table and not table[name]:
                    del table[name]
        if only is None:
            self.problems = dict(listing.problems)
        else:
            self.problems.pop(only, None)
            self.problems.update(listing.problems)
        self._refresh()

    async def _load(self, version: Version, replacing: Served | None) -> None:
        lane = self._lane(version.name)
        try:
            bundle, width = await asyncio.get_running_loop().run_in_executor(lane, self._read, version)
        except (KeyboardInterrupt, asyncio.CancelledError):
            raise
        except BaseException as error:  # noqa: BLE001 - a broken bundle is reported, the others (and the old
            # version) are served: whatever its loading raises (SystemExit from a module it imports included)
            reason = str(error) if isinstance(error, Exception) else f"loading it raised {type(error).__name__}"
            self.failed.setdefault(version.name, {})[version.version] = (version.stamp, reason)
            if replacing is not None:
                log.error("model %s version %d: the new files failed to load, the previous ones stay served: %s",
                          version.name, version.version, reason)
            else:
                log.error("model %s failed to load (version %d): %s", version.name, version.version, reason)
            return
        self.failed.get(version.name, {}).pop(version.version, None)
        batcher = self._batcher(bundle, lane)
        self.served.setdefault(version.name, {})[version.version] = Served(version, bundle, batcher, width)
        if replacing is not None:
            self._retire(replacing)
        log.info("%s model %s", "reloaded" if replacing else "serving", describe(version, bundle))

    def _read(self, version: Version) -> tuple[Bundle, int]:
        """On the model's lane: the bundle, named by its folder, and its output width."""
        bundle = load_bundle(version.path, device=self.settings.device, memory_budget=self.settings.memory_budget,
                             max_params=self.settings.max_model_params, trust_code=self.settings.trust_bundle_code,
                             allowed_modules=self.settings.allowed_architecture_modules)
        if bundle.manifest.name != version.name:
            log.warning("model %s: the manifest in %s names it %r; served by its folder's name %r",
                        version.name, version.path, bundle.manifest.name, version.name)
            bundle.manifest = dataclasses.replace(bundle.manifest, name=version.name)
        return bundle, _output_width(bundle)

    def _lane(self, name: str) -> ThreadPoolExecutor:
        """The model's compute lane: one thread that loads and runs its versions (MCD_COMPUTE_LANES)."""
        key = name if self.settings.compute_lanes == "model" else ""
        if key not in self.lanes:
            # torch's intra-op threads are set on the lane's own thread (MCD_TORCH_THREADS; else torch's default)
            threads = () if self.settings.torch_threads is None else (self.settings.torch_threads,)
            self.lanes[key] = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix=f"mcdropout-{key or 'compute'}",
                initializer=torch.set_num_threads if threads else None, initargs=threads)
        return self.lanes[key]

    def _batcher(self, bundle: Bundle, lane: ThreadPoolExecutor) -> Batcher:
        name = bundle.name
        batcher = Batcher(
            bundle, lane, enabled=self.settings.batching, max_batch_rows=self.settings.max_batch_rows,
            max_delay_ms=self.settings.max_delay_ms, max_queue=self.settings.max_queue,
            max_samples=self.settings.max_samples,
            observe=lambda stats, name=name: self.metrics.observe_batch(name, stats),
            dropped=lambda reason, name=name: self.metrics.dropped.labels(name, reason).inc(),
        )
        batcher.start()
        return batcher

    def _retire(self, served: Served) -> None:
        """Stop ``served``'s batcher once it has answered what it holds (in the background); then, if its name
        is no longer served, free its lane thread and its metric series (see :meth:`_release`)."""
        name = served.version.name
        self._closing[name] = self._closing.get(name, 0) + 1
        task = asyncio.get_running_loop().create_task(self._finish(name, served.batcher))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _finish(self, name: str, batcher: Batcher) -> None:
        try:
            await batcher.close()
        finally:
            self._closing[name] -= 1
            if not self._closing[name]:
                del self._closing[name]
        if self._lock is not None:
            async with self._lock:  # never while a load runs: a load of this name would want its lane
                self._release()

    def _release(self) -> None:
        """Free what names no longer served hold, once none of their batchers is still finishing: the lane
        thread (with torch's OpenMP threads of that thread) and the metric series. Under ``self._lock``."""
        for name in [name for name in self.lanes if name and name not in self.served and name not in self._closing]:
            self.lanes.pop(name).shutdown(wait=False)  # idle: its thread ends at once
        for name in [name for name in self._metered if name not in self.served and name not in self._closing]:
            self._metered.discard(name)
            self.metrics.forget(name)

    def _refresh(self) -> None:
        """Rebuild the per-name views in place: the highest loaded version is the default."""
        self.models.clear()
        self.batchers.clear()
        self.failures.clear()
        for name, versions in self.served.items():
            if versions:
                top = versions[max(versions)]
                self.models[name] = top.bundle
                self.batchers[name] = top.batcher
                # by name, not the batcher: a callback holding it would keep the batcher and bundle alive
                self.metrics.track_depth(name, lambda name=name: self._depth(name))
                self._metered.add(name)
        for name, versions in self.failed.items():
            if name not in self.models and versions:
                self.failures[name] = "; ".join(f"version {n}: {why}" for n, (_, why) in sorted(versions.items()))
        for name, why in self.problems.items():
            if name not in self.models and name not in self.unloaded:
                self.failures.setdefault(name, why)
        self._release()

    def _depth(self, name: str) -> int:
        batcher = self.batchers.get(name)
        return batcher.depth if batcher is not None else 0

    # -- lookups ------------------------------------------------------------------------------

    def bundle(self, name: str, version: str | int | None = None) -> Bundle:
        """The bundle that answers for ``name`` (and ``version``; default: the highest loaded)."""
        try:
            number = parse_version(version)
        except ValueError as error:
            raise ApiError(422, str(error), "version") from None
        if number is None:
            if name in self.models:
                return self.models[name]
        else:
            served = self.served.get(name, {}).get(number)
            if served is not None:
                return served.bundle
            why = self.failed.get(name, {}).get(number)
            if why is not None:
                raise ApiError(503, f"model {name!r} version {number} failed to load: {why[1]}", "version")
            if name in self.served:
                raise ApiError(404, f"model {name!r} has no version {number}; loaded: "
                               f"{', '.join(map(str, sorted(self.served[name])))}", "version")
        if name in self.failures:
            raise ApiError(503, f"model {name!r} failed to load: {self.failures[name]}", "name")
        known = ", ".join(sorted(self.models)) or "none"
        raise ApiError(404, f"unknown model {name!r}; available: {known}", "name")

    def is_ready(self, name: str, version: str | int | None = None) -> bool:
        """Whether ``name`` (``version``) is being served; False when it failed to load, ApiError when unknown."""
        number = parse_version(version)
        if number is None:
            ready, failed = name in self.models, name in self.failures
        else:
            ready, failed = number in self.served.get(name, {}), number in self.failed.get(name, {})
        if failed and not ready:
            return False
        self.bundle(name, number)
        return True

    def served_of(self, bundle: Bundle) -> Served | None:
        """The served version that holds ``bundle``; None once it was replaced or unloaded."""
        for served in self.served.get(bundle.name, {}).values():
            if served.bundle is bundle:
                return served
        return None

    def version_of(self, bundle: Bundle) -> int:
        """The repository version ``bundle`` was loaded as."""
        served = self.served_of(bundle)
        return 1 if served is None else served.version.version

    def versions(self, name: str) -> list[dict]:
        """Every version of ``name``: number, state and the reason of a failure."""
        rows: dict[int, dict] = {}
        for number, (_, why) in self.failed.get(name, {}).items():
            rows[number] = {"version": number, "status": "failed", "error": why}
        for number in self.served.get(name, {}):
            error = rows[number]["error"] if number in rows else None
            rows[number] = {"version": number, "status": "ready", "error": None if error is None else
                            f"its new files failed to load, the previous ones are served: {error}"}
        return [rows[number] for number in sorted(rows)]

    def index(self) -> list[dict]:
        """The repository index (OIP repository extension): every model version and its state."""
        entries = []
        for name in sorted({*self.served, *self.failed, *self.failures, *self.unloaded}):
            if name in self.unloaded:
                entries.append({"name": name, "state": "UNAVAILABLE", "reason": "unloaded"})
                continue
            rows = self.versions(name)
            if not rows:
                entries.append({"name": name, "state": "UNAVAILABLE", "reason": self.failures.get(name, "")})
            for row in rows:
                entries.append({"name": name, "version": str(row["version"]),
                                "state": "READY" if row["status"] == "ready" else "UNAVAILABLE",
                                "reason": row["error"] or ""})
        return entries

    def model_names(self) -> list[str]:
        return model_names(Path(self.settings.models_dir))

    async def predict(self, request: InferRequest, gone: asyncio.Future | None = None) -> Result:
        """``request``'s answer from its model's batcher; ``gone``: completes when the client went away."""
        bundle, inputs, samples = request.bundle, request.rows, request.samples
        served = self.served_of(bundle)
        if served is None:
            raise ApiError(503, f"model {bundle.name!r} was replaced or unloaded while this request was read;"
                           " retry", None, {"Retry-After": str(self.settings.retry_after_s)})
        if request.return_samples:
            self._check_returned(served, len(inputs), samples)
        try:
            return await served.batcher.submit(request, timeout=self._timeout(request), gone=gone)
        except Overloaded as error:
            raise ApiError(503, f"overloaded: {error}; retry later", None,
                           {"Retry-After": str(self.settings.retry_after_s)}) from None
        except DeadlineExceeded as error:
            limit = "MCD_REQUEST_TIMEOUT_S" if request.deadline is None else "the caller's deadline"
            raise ApiError(504, f"deadline exceeded: {error} ({limit})") from None
        except ClientGone as error:  # nobody reads this answer; the status shows in the request metrics
            raise ApiError(499, str(error)) from None
        except NonFiniteError as error:  # counted: a model that overflows on live traffic is worth an alert
            self.metrics.observe_nonfinite(bundle.name, len(error.rows))
            raise ApiError(422, str(error), "inputs") from None
        except ValueError as error:  # the engine refused these inputs
            raise ApiError(422, str(error), "inputs") from None

    def _timeout(self, request: InferRequest) -> float:
        """Seconds the request may wait: MCD_REQUEST_TIMEOUT_S, or less where the caller's deadline is nearer."""
        if request.deadline is None:
            return self.settings.request_timeout_s
        return max(0.0, min(self.settings.request_timeout_s, request.deadline - time.monotonic()))

    def _check_returned(self, served: Served, rows: int, samples: int | str) -> None:
        """Refuse, before any work, a return_samples answer over MCD_MAX_RETURNED_VALUES."""
        limit = self.settings.max_returned_values
        per_row = served.batcher.max_samples if samples == "auto" else samples
        values = rows * per_row * served.width
        if values > limit:
            auto = " (the server's maximum for 'auto')" if samples == "auto" else ""
            raise ApiError(422, f"return_samples: {rows} row(s) x {per_row} samples{auto} x {served.width} output(s)"
                           f" = {values:,} values is over the limit of {limit:,} (MCD_MAX_RETURNED_VALUES); ask for"
                           " fewer rows or samples, or leave return_samples off", "return_samples")


def _output_width(bundle: Bundle) -> int:
    """Values per row and sample: the classes, the output names, or (neither named) the outputs of the
    load's own probe (standardised rows at -1 and +1, T=4), which the bundle answered to be served."""
    manifest = bundle.manifest
    names = manifest.class_names or manifest.output_names
    if names:
        return len(names)
    rows = bundle.probe_rows()
    probe = bundle.predict_model_inputs(rows, samples=4, seed=0)
    return int(probe.mean.reshape(len(rows), -1).shape[1])


def describe(version: Version, bundle: Bundle) -> str:
    """The start-up line of one model: name, version, task, device, parameter count, calibration."""
    manifest = bundle.manifest
    parameters = sum(p.numel() for p in bundle.model.parameters())
    device = next((p.device for p in bundle.model.parameters()), torch.device("cpu"))
    calibration = getattr(manifest, "calibration", None)
    calibrated = "uncalibrated" if not calibration else \
        f"calibrated ({', '.join(calibration.methods)} on {calibration.rows} rows)"
    return (f"{version.name} version {version.version}: {manifest.task}, device {device}, {parameters:,} parameters,"
            f" {calibrated} (bundle {manifest.version} from {version.path})")


def bundle_folders(folder: Path) -> list[Path]:
    """The sub-folders of the models folder, one model each (hidden ones skipped), by name."""
    return sorted(path for path in folder.iterdir() if path.is_dir() and not path.name.startswith("."))

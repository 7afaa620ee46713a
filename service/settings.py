"""Service settings, from environment variables with the MCD_ prefix (pydantic-settings)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from typing_extensions import Annotated


class Settings(BaseSettings):
    """Every field is read from ``MCD_<NAME>`` (e.g. ``MCD_MODELS_DIR``); the README lists them."""

    model_config = SettingsConfigDict(env_prefix="MCD_", extra="ignore")

    models_dir: Path = Field(Path("models"), description="folder of model bundles, one sub-folder each")
    host: str = Field("127.0.0.1", description="address to bind (`mcdropout serve`)")
    port: int = Field(8000, ge=1, le=65535, description="port to bind (`mcdropout serve`)")
    workers: int = Field(
        1, ge=1, description="worker processes of `mcdropout serve` on the one port, each with its own models,"
        " batchers and compute lanes (uvicorn's supervisor); torch's threads are split among them unless"
        " MCD_TORCH_THREADS is set"
    )
    device: str = Field("auto", description="torch device: auto (CUDA when present), cpu, cuda:0, ...")
    memory_budget: str = Field("256MB", description="working memory of one engine pass")
    max_model_params: int = Field(
        50_000_000, ge=1, description="largest bundle architecture, in parameters (counted before it is built);"
        " a bigger one is listed as failed"
    )
    trust_bundle_code: bool = Field(
        False, description="run a bundle's own model.py (its architecture 'model.py:Class'); off: such bundles"
        " are listed as failed, saying so"
    )
    allowed_data_dirs: Annotated[list[Path], NoDecode] = Field(
        default_factory=list, description="comma-separated folders, besides each bundle's own, that a bundle's"
        " recorded training table (re-read for the playground's held-out scales) may lie in; symlinks are"
        " followed before the check, so one pointing out is refused"
    )
    allowed_architecture_modules: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="comma-separated modules (my_pkg.nets, or my_pkg for all of it) whose"
        " classes bundles may name as import-path architectures ('my_pkg.nets:Net') without"
        " MCD_TRUST_BUNDLE_CODE; importing a module runs its code, so none by default"
    )
    torch_threads: int | None = Field(
        None, ge=1, description="torch's intra-op threads on the compute thread; default: torch's own (one per"
        " core), which shares the event loop's core"
    )
    compute_lanes: Literal["model", "shared"] = Field(
        "model", description="model: one compute thread per model, so a cheap model is not queued behind an"
        " expensive one; shared: one thread for every model (one OpenMP team in the process)"
    )
    reload: bool = Field(
        True, description="poll the models folder and load added or changed bundles, drop removed ones, without"
        " a restart"
    )
    reload_interval_s: float = Field(
        2.0, gt=0, description="seconds between polls of the models folder; a bundle is loaded once its files"
        " are unchanged over one interval"
    )
    grpc_port: int | None = Field(
        None, ge=0, le=65535, description="port of the gRPC Open Inference Protocol on MCD_HOST; `mcdropout serve`"
        " opens it on 8001 unless set; 0 or unset under plain uvicorn: off"
    )
    batching: bool = Field(True, description="merge concurrent requests for a model into one engine run")
    max_batch_rows: int = Field(65_536, ge=1, description="forward rows (inputs x samples) per merged run")
    max_delay_ms: float = Field(
        0.0, ge=0, description="extra wait for requests to merge with; 0: merge only what queues while the"
        " compute thread is busy (no added latency)"
    )
    max_queue: int = Field(256, ge=1, description="requests waiting per model; past it: 503 + Retry-After")
    retry_after_s: int = Field(1, ge=0, description="Retry-After seconds sent with 503")
    request_timeout_s: float = Field(30.0, gt=0, description="deadline per request; past it: 504")
    max_rows: int = Field(1000, ge=1, description="input rows per request")
    max_tokens: int = Field(512, ge=1, description="tokens per text row (text models; the model's own length caps"
                            " it too); past it: 422 naming the row")
    max_samples: int = Field(1000, ge=2, description="largest T a request may ask for")
    default_seed: int = Field(0, ge=0, description="seed of requests that give none: same input, same answer")
    max_body_bytes: int = Field(10_000_000, ge=1, description="largest request body; past it: 413")
    max_returned_values: int = Field(
        1_000_000, ge=1, description="largest return_samples answer, in values: rows x samples (the server's"
        " maximum for 'auto') x outputs; and of a v2/gRPC answer: rows x the values per row of its outputs; past"
        " it: 422 before any work"
    )
    decode_worker_idle_s: float = Field(
        60.0, gt=0, description="seconds the body decode worker (large bodies are parsed there) stays up without a"
        " large body; then it exits and gives its memory back, and the next large body starts another"
    )
    max_header_bytes: int = Field(
        16_384, ge=1024, description="largest request head (request line and headers; `mcdropout serve`); past it:"
        " 431 and the connection closed"
    )
    keep_alive_s: float = Field(5.0, gt=0, description="seconds an idle keep-alive connection stays open"
                                " (`mcdropout serve`)")
    request_read_timeout_s: float = Field(
        15.0, gt=0, description="seconds a client has to send its request head (`mcdropout serve`), and again"
        " its body once the head is in; past it: 408 and the connection closed"
    )
    otel: bool = Field(
        False, description="FastAPI's native OpenTelemetry (traces, metrics and logs through the global"
        " providers); off by default, since it looks the providers up on every request"
    )
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="comma-separated keys; when set, model endpoints want Bearer auth"
    )
    open_metrics: bool = Field(
        False, description="serve /metrics without a key even when MCD_API_KEYS is set (its series name every"
        " model); off: /metrics wants the same Bearer key as the model routes"
    )

    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="comma-separated origins that browsers may call the API from"
        " (e.g. https://app.example.com, or *); none by default"
    )
    log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = Field(
        "info", description="server log level (`mcdropout serve`, or --log-level)"
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="server log lines: text, or json (one JSON object a line; `mcdropout serve`,"
        " or --log-format)"
    )
    store: bool = Field(
        True, description="keep what each answer needs to be scored later (docs/live-quality.md), so that"
        " outcomes can be reported for it; off: answers still carry an id, the outcome route answers 409"
    )
    store_path: Path = Field(
        Path("mcdropout-answers.sqlite3"), description="the answer store: one SQLite file (WAL mode), shared by"
        " every worker of `mcdropout serve --workers N`; kept across restarts"
    )
    store_max_rows: int = Field(1_000_000, ge=1, description="answer rows, and outcomes, kept per model; the"
                                " oldest go first")
    store_max_age_s: float = Field(7 * 86400.0, gt=0, description="seconds an answer row or outcome is kept")
    store_flush_s: float = Field(0.25, gt=0, description="seconds between writes of answers to the store (off"
                                 " the request path, in batches)")
    store_max_pending_rows: int = Field(
        100_000, ge=1, description="answer rows waiting to be written; past it, answers are not kept (counted in"
        " mcdropout_store_dropped_rows_total) so memory stays bounded"
    )
    max_outcomes: int = Field(10_000, ge=1, description="outcomes per POST /v1/models/{name}/outcomes request")
    quality_window_rows: int = Field(1000, ge=1, description="live quality's count window: the newest outcomes")
    quality_window_s: float = Field(3600.0, gt=0, description="live quality's time window: outcomes received in"
                                    " the last seconds")
    quality_window_max_rows: int = Field(
        100_000, ge=1, description="at most this many of the time window's outcomes, the newest, are read to compute"
        " its figures (bounds the memory and time of one refresh)"
    )
    adaptive_gamma: float = Field(0.02, gt=0, lt=1, description="step of the adaptive conformal level (requests with"
                                  " adaptive: true; docs/adaptive.md): larger follows drift faster, with jumpier"
                                  " levels")

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("allowed_data_dirs", mode="before")
    @classmethod
    def _split_dirs(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("api_keys", "cors_origins", "allowed_architecture_modules", mode="before")
    @classmethod
    def _split_keys(cls, value: object, info: ValidationInfo) -> object:
        if isinstance(value, str):
            keys = [key.strip() for key in value.split(",") if key.strip()]
            if info.field_name == "api_keys" and value.strip() and not keys:
                # "MCD_API_KEYS= , " must not quietly mean "no auth"
                raise ValueError("MCD_API_KEYS holds no key (only commas and spaces); give comma-separated keys, or"
                                 " unset it to serve without auth")
            return keys
        return value

"""Process settings (pydantic-settings, ``TRAIND_`` prefix, typos rejected).

One class per process kind; they share :class:`CommonSettings` fields.

>>> s = ClientSettings(redis_url="redis://localhost:6379/0")
>>> s.lease_ttl_s
5.0
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from jobs.redis.urls import DEFAULT_REDIS_URL, check_redis_url
from jobs.storage.location import default_location, parse_location


def _split_csv(v: object) -> object:
    if isinstance(v, str):
        return [p.strip() for p in v.split(",") if p.strip()]
    return v


class CommonSettings(BaseSettings):
    """Settings every traind process reads."""

    # hide_input_in_errors: a refused setting's message must never quote the value (a URL carries the password).
    model_config = SettingsConfigDict(env_prefix="TRAIND_", extra="forbid", validate_default=True,
                                      hide_input_in_errors=True)

    redis_url: str | None = Field(
        None, description="Redis URL (redis://, rediss:// for TLS, user:password@ for ACL), or "
        "redis+sentinel://[:password@]host1:26379,host2:26379/<master-name>/<db> (rediss+sentinel:// for TLS).")
    redis_min_replicas: Literal["auto"] | Annotated[int, Field(ge=0, le=16)] = Field(
        "auto", description="Replicas that must confirm job creation, checkpoint commits and state changes "
        "(WAIT): auto = 1 when the primary has a replica, else accept as degraded; 0 = never wait.")
    redis_wait_timeout_s: float = Field(2.0, gt=0, le=60, description="How long a write waits for its replicas.")
    redis_socket_timeout_s: float = Field(
        30.0, gt=0, le=3600, description="A Redis reply slower than this drops the connection and reconnects "
        "(through the sentinels: how long a frozen primary can hold a request). Must exceed dequeue_timeout_s.")
    storage_dir: str = Field(
        default_factory=default_location,
        description="Checkpoint/upload storage: an absolute path (local or NFS) or a URL (s3://bucket/prefix; gs://, "
                    "az:// where fsspec has them). Default: $XDG_DATA_HOME/traind (~/.local/share/traind).",
    )
    storage_retry_s: float = Field(60.0, ge=0, le=3600, description="How long transient object-store errors are "
                                   "retried (with backoff) before the job fails.")
    allowed_modules: Annotated[list[str], NoDecode] = Field(
        default_factory=list,  # nothing: every deployment names its own code (`traind up --example` adds its own)
        description="Module prefixes that builders, loaders and custom objects may come from.",
    )
    lease_ttl_s: float = Field(5.0, gt=0.2, le=3600)
    heartbeat_interval_s: float = Field(1.0, gt=0.01, le=600)
    max_epochs: int = Field(100_000, ge=1)
    max_spec_bytes: int = Field(1_000_000, ge=1024)
    max_upload_bytes: int = Field(4 * 1024**3, ge=1024)
    max_history: int = Field(100_000, ge=1)
    events_max: int = Field(2_000, ge=10)
    max_model_params: int = Field(100_000_000, ge=1, description="An inline Keras config with more parameters is "
                                  "refused at submit (checking it builds the model in the submitting process).")
    log_format: Literal["text", "json"] = Field("text", description="json: one JSON object per log line.")
    lemon_failures: int = Field(3, ge=0, description="Hung or lost attempts on one machine (host/device) within "
                                "lemon_window_s that drain it (0: never drain).")
    lemon_window_s: float = Field(3600.0, gt=0)

    #: No Redis URL given: use the local stack `traind up` runs on this machine (jobs/localstack.py).
    finds_local_stack: ClassVar[bool] = True

    @model_validator(mode="before")
    @classmethod
    def _local_stack(cls, data: Any) -> Any:
        from jobs.localstack import fill_settings

        return fill_settings(data) if cls.finds_local_stack else data

    @field_validator("allowed_modules", mode="before")
    @classmethod
    def _csv(cls, v: object) -> object:
        return _split_csv(v)

    @field_validator("redis_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        # ConfigError (one line, password redacted) rather than a parser's ValueError quoting part of the password.
        return None if v is None else check_redis_url(v)

    @field_validator("storage_dir", mode="before")
    @classmethod
    def _storage(cls, v: object) -> object:
        # Refused here, at start, with one line: a relative path names a different place in every working
        # directory, and an unknown scheme would otherwise become a local directory called "s3:".
        if isinstance(v, (str, os.PathLike)):
            kind, norm = parse_location(v)
            return norm
        return v

    @model_validator(mode="after")
    def _reject_env_typos(self) -> CommonSettings:
        # pydantic-settings silently ignores unknown env vars; a typo like TRAIND_LEASE_TTL would then be lost.
        known = _known_env_names()
        bad = [k for k in os.environ if k.startswith("TRAIND_") and k not in known]
        if bad:
            hints = []
            for k in sorted(bad):
                near = difflib.get_close_matches(k, sorted(known), n=1)
                hints.append(f"{k}" + (f" (did you mean {near[0]}?)" if near else ""))
            raise ValueError(f"unknown TRAIND_ environment variable(s): {', '.join(hints)}")
        return self

    @model_validator(mode="after")
    def _wait_within_socket_timeout(self) -> CommonSettings:
        # A WAIT longer than the socket timeout would be cut off as a dead connection and the write replayed.
        if self.redis_wait_timeout_s >= self.redis_socket_timeout_s:
            raise ValueError(f"TRAIND_REDIS_WAIT_TIMEOUT_S ({self.redis_wait_timeout_s}) must be below "
                             f"TRAIND_REDIS_SOCKET_TIMEOUT_S ({self.redis_socket_timeout_s})")
        return self

    def effective_redis_url(self) -> str:
        return self.redis_url or DEFAULT_REDIS_URL


class ClientSettings(CommonSettings):
    """Settings of the submitting client and the read-only CLI commands."""

    # Remote mode (jobs/remote): with an API URL the client and CLI talk to `traind serve`, never to Redis/storage.
    api_url: str | None = Field(None, description="URL of `traind serve` (https://traind.example): the client and "
                                "the CLI use the API with TRAIND_API_TOKEN (a known name: ServeSettings') instead "
                                "of Redis and the storage.")

    owner: str | None = Field(None, pattern=r"^[A-Za-z0-9._@-]{1,64}$", description="Owner recorded on submitted "
                              "jobs (fair share, limits, filters); default: the OS user.")


class WorkerSettings(CommonSettings):
    """Settings of ``traind worker``."""

    cache_dir: Path | None = Field(None, description="Local cache of uploads fetched from object storage "
                                   "(default $XDG_CACHE_HOME/traind/uploads).")
    cache_max_bytes: int = Field(10 * 1024**3, ge=0, description="Bound of the upload cache (0 disables it).")

    queues: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["default"])
    device: str = Field("cpu", pattern=r"^(cpu|gpu(:\d+(,\d+)*)?)$",
                        description="cpu, gpu (all visible), gpu:N or gpu:0,1 (several GPUs for resources.gpus jobs).")
    logical_cpus: int = Field(1, ge=1, le=64, description="Split the CPU into N logical devices (resources.gpus on "
                              "CPU workers: MirroredStrategy tests).")
    worker_id: str | None = None
    burst: bool = False
    dequeue_timeout_s: float = Field(1.0, gt=0, le=60)
    progress_interval_s: float = Field(1.0, ge=0, description="Min seconds between mid-epoch progress writes.")
    checkpoint_backpressure: Literal["wait", "skip"] = Field(
        "wait", description="When an epoch ends while the previous checkpoint is still being written: wait for it "
        "(every epoch end is checkpointed; training slows to the storage's pace), or skip (a non-improving epoch is "
        "not checkpointed, recorded as an event; the best epoch, the last one and stops are always checkpointed).")
    redis_retry_s: float = Field(60.0, ge=0, description="How long to keep retrying Redis before giving up.")
    # The progress watchdog (worker/watchdog.py); a job's spec may set progress_timeout_s itself.
    progress_watchdog: bool = Field(True, description="false: no in-process watchdog (the progress and the timeout "
                                    "are still published; the supervisor's progress check remains).")
    progress_timeout_s: float | None = Field(None, gt=0, description="Hung when no batch finished this long (default: "
                                             "derived from the job's batch times, see progress_factor/_floor_s).")
    progress_factor: float = Field(20.0, gt=1, description="Derived timeout: this many x the recent p95 batch time.")
    progress_floor_s: float = Field(60.0, gt=0, description="The derived timeout is never below this.")
    progress_first_batch_s: float = Field(600.0, gt=0, description="Allowance before an attempt's first batch "
                                          "(imports, data, compilation) and before its first validation batch.")
    # Default time-based step checkpoints (worker/ckpt_interval.py): Young/Daly sqrt(2 x stall x MTBF), clamped.
    checkpoint_mtbf_s: float = Field(3600.0, gt=0, description="Expected time between failures of a worker.")
    checkpoint_interval_min_s: float = Field(5.0, gt=0)
    checkpoint_interval_max_s: float = Field(600.0, gt=0)
    # Fair share between owners (jobs/contract/fair.py; README "Sharing a cluster").
    fair_share: bool = Field(True, description="Among queued jobs of one priority, take the job of the owner with the "
                             "smallest running share (false: the oldest job, plain BLPOP).")
    fair_half_life_s: float = Field(3600.0, gt=0, le=365 * 86400, description="Half-life of past device time in the "
                                    "share (the tie-break between owners running as many devices).")
    fair_head_max: int = Field(256, ge=1, le=10_000, description="Messages at a queue's head one pop examines.")
    owner_max_running: int | None = Field(None, ge=0, description="Most jobs one owner runs at once (default: none).")
    owner_limits: Annotated[dict[str, int], NoDecode] = Field(
        default_factory=dict, description="Per-owner overrides of owner_max_running: alice=2,bob=1.")

    @field_validator("owner_limits", mode="before")
    @classmethod
    def _owner_limits(cls, v: object) -> object:
        from jobs.contract.fair import parse_owner_limits

        return parse_owner_limits(v) if isinstance(v, str) else v

    @field_validator("queues", mode="before")
    @classmethod
    def _csv_q(cls, v: object) -> object:
        return _split_csv(v)

    @model_validator(mode="after")
    def _dequeue_within_socket_timeout(self) -> WorkerSettings:
        # The blocking dequeue holds its connection this long: a shorter socket timeout would break every wait.
        if self.dequeue_timeout_s >= self.redis_socket_timeout_s:
            raise ValueError(f"TRAIND_DEQUEUE_TIMEOUT_S ({self.dequeue_timeout_s}) must be below "
                             f"TRAIND_REDIS_SOCKET_TIMEOUT_S ({self.redis_socket_timeout_s})")
        return self


class SupervisorSettings(CommonSettings):
    """Settings of ``traind supervise``."""

    finished_ttl_s: float = Field(30 * 86400.0, ge=0, description="Purge finished jobs (records and files) this long "
                                  "after they finished (default 30 days: Redis stays bounded); 0 keeps them until "
                                  "`traind purge`.")

    interval_s: float = Field(0.5, gt=0, le=60)
    redelivery_check_s: float = Field(10.0, gt=0, description="Age after which a queued job's message is verified.")
    worker_stale_s: float = Field(30.0, gt=0, description="Registered workers unseen this long are removed.")
    progress_check_factor: float = Field(2.0, ge=1, description="A running job whose progress stayed the same for this "
                                         "many times its worker's progress timeout, plus progress_check_grace_s, "
                                         "is handed back as hung (the worker's own watchdog acts first).")
    progress_check_grace_s: float = Field(30.0, ge=0)
    preempt_min_run_s: float = Field(60.0, ge=0, le=7 * 86400, description="A running job is preempted for a "
                                     "waiting job of higher priority only once its current attempt has run this "
                                     "long (no flapping).")
    burst: bool = False
    compact_after_s: float = Field(60.0, ge=0, description="A finished job's history and events are compacted into "
                                   "one compressed value this long after it finished (jobs/redis/packed.py).")
    compact_batch: int = Field(50, ge=0, le=10_000, description="Finished jobs compacted per pass at most; 0 = never.")
    compact_budget_ms: float = Field(10.0, gt=0, le=10_000, description="Time a pass spends compacting at most "
                                     "(~1 ms per 100-epoch job): a backlog is worked off without long passes.")
    # alerts (jobs/alerts): where every job's alerts also go, which events alert, how sends are retried
    notify: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="Comma-separated Apprise URLs (json://, slack://, mailto://...) every job's "
        "alerts go to besides its spec's notify list (a comma inside a URL: %2C).")
    notify_events: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["failed", "succeeded", "hung", "preempted", "lost_worker"],
        description="Comma-separated events that alert: failed, succeeded, hung, preempted, lost_worker.")
    notify_attempts: int = Field(8, ge=1, le=100, description="Sends of one alert to one URL before giving up.")
    notify_backoff_s: float = Field(5.0, gt=0, le=3600, description="Wait after a failed send; doubles per failure.")
    notify_backoff_max_s: float = Field(600.0, gt=0, le=86_400, description="Longest wait between two sends.")
    notify_timeout_s: float = Field(10.0, gt=0, le=300, description="Connect and read timeout of one send.")
    public_url: str | None = Field(None, max_length=500, pattern=r"^https?://[^\s]+$", description="The dashboard's "
                                   "address as people reach it (https://traind.example.org): alerts link there.")

    @field_validator("notify", "notify_events", mode="before")
    @classmethod
    def _csv_notify(cls, v: object) -> object:
        return _split_csv(v)

    @field_validator("notify")
    @classmethod
    def _apprise_urls(cls, v: list[SecretStr]) -> list[SecretStr]:
        from jobs.alerts.urls import url_problems  # Apprise loads only where alerts are configured
        if v and (problems := url_problems([u.get_secret_value() for u in v], "TRAIND_NOTIFY")):
            raise ValueError("; ".join(problems))
        return v

    @field_validator("notify_events")
    @classmethod
    def _events(cls, v: list[str]) -> list[str]:
        if bad := [e for e in v if e not in ("failed", "succeeded", "hung", "preempted", "lost_worker")]:
            raise ValueError(f"unknown event(s) {bad}: expected failed, succeeded, hung, preempted, lost_worker")
        return v


class StackSettings(CommonSettings):
    """Settings of ``traind up`` (local stack)."""

    finds_local_stack: ClassVar[bool] = False  # `up` starts its own (and refuses a second one on the same state)
    workers: int = Field(1, ge=0, le=64)
    redis_port: int = Field(0, ge=0, le=65535, description="Port of the embedded Redis (0: pick a free one).")


class ServeSettings(CommonSettings):
    """Settings of ``traind serve`` (HTTP API, dashboard, /metrics)."""

    host: str = Field("127.0.0.1", description="Bind address; 0.0.0.0 only behind a firewall or proxy.")
    port: int = Field(8600, ge=0, le=65535)
    api_token: SecretStr | None = Field(None, description="Bearer token with full access (submit, cancel, retry).")
    api_read_tokens: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="Comma-separated bearer tokens with read-only access (dashboards).")
    sse_heartbeat_s: float = Field(15.0, gt=0, le=300, description="Comment line sent to idle SSE streams.")
    max_body_bytes: int = Field(2 * 1024**2, ge=1024, description="Largest request body read (413 above, checked "
                                "before reading and while streaming); at least TRAIND_MAX_SPEC_BYTES + 64 KiB.")
    auth_failures_max: int = Field(20, ge=1, description="Requests with a wrong token one client address may make "
                                   "per auth_failures_window_s before its token-bearing requests answer 429.")
    auth_failures_window_s: float = Field(60.0, gt=0, le=86_400)
    presign_s: int = Field(300, ge=0, le=3600, description="Lifetime of the presigned object-store URLs handed to "
                           "remote clients for one upload or download (0: everything goes through the API).")
    ssl_certfile: str | None = Field(None, description="TLS certificate (PEM) for uvicorn's own TLS; with "
                                     "ssl_keyfile. Or terminate TLS in a proxy (docs/deploying.md#tls).")
    ssl_keyfile: str | None = Field(None, description="TLS private key (PEM) matching ssl_certfile.")

    @model_validator(mode="after")
    def _tls_pair(self) -> ServeSettings:
        # One without the other would serve plain HTTP (no cert) or fail deep in ssl (no key): refuse at start.
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("TRAIND_SSL_CERTFILE and TRAIND_SSL_KEYFILE go together: set both or neither")
        for name, path in (("TRAIND_SSL_CERTFILE", self.ssl_certfile), ("TRAIND_SSL_KEYFILE", self.ssl_keyfile)):
            if path is not None and not os.path.isfile(path):
                raise ValueError(f"{name}: no such file: {path}")
        return self

    @field_validator("api_read_tokens", mode="before")
    @classmethod
    def _csv_tokens(cls, v: object) -> object:
        return _split_csv(v)


def _known_env_names() -> set[str]:
    names: set[str] = {"TRAIND_TEST_REDIS_URL", "TRAIND_TEST_KEEP"}  # test-suite knobs
    names.update({"TRAIND_CONFIG", "TRAIND_CONTEXT"})  # the contexts file and a context for one command (config_file)
    for cls in (CommonSettings, ClientSettings, WorkerSettings, SupervisorSettings, StackSettings, ServeSettings):
        names.update(f"TRAIND_{f.upper()}" for f in cls.model_fields)
    return names

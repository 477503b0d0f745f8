"""One settings object for web, worker and CLI (pydantic-settings, prefix ``EASEL_``).

Embedded defaults need no server: SQLite under ``EASEL_HOME``, kombu's SQLAlchemy
transport on SQLite as the broker, outputs in a local folder and the locally built
``tiny-sd`` model. Setting the URLs switches to PostgreSQL, Redis and S3.
"""

from __future__ import annotations

import contextlib
import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def parse_shapes(text: str) -> list[tuple[int, int]]:
    """``"512x512,768x512"`` -> ``[(512, 512), (768, 512)]`` (width x height, multiples of 8)."""
    shapes: list[tuple[int, int]] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        width, sep, height = item.lower().partition("x")
        if not sep or not width.strip().isdigit() or not height.strip().isdigit():
            raise ValueError(f"compile shape {item!r} is not WIDTHxHEIGHT, e.g. 512x512")
        shape = (int(width), int(height))
        if min(shape) <= 0 or shape[0] % 8 or shape[1] % 8:
            raise ValueError(f"compile shape {item!r}: width and height must be positive multiples of 8")
        if shape not in shapes:
            shapes.append(shape)
    return shapes


class Settings(BaseSettings):
    """Every knob of Easel. Each field is read from ``EASEL_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="EASEL_", extra="ignore")

    home: Path = Field(Path("var"), description="Folder for embedded state (SQLite, outputs, models)")
    database_url: str = Field("", description="SQLAlchemy URL; default sqlite:///$EASEL_HOME/easel.db.")
    broker_url: str = Field("", description="Celery broker; default sqla+sqlite:///$EASEL_HOME/broker.db.")
    storage_url: str = Field(
        "", description="file:///path or s3://bucket/prefix; default $EASEL_HOME/outputs"
    )
    s3_endpoint_url: str | None = Field(None, description="Custom S3 endpoint (MinIO, R2, moto).")
    s3_region: str = Field("us-east-1", description="S3 region name.")
    s3_access_key_id: str | None = Field(None, description="S3 key id (else the AWS_* chain).")
    s3_secret_access_key: SecretStr | None = Field(None, description="S3 secret (else the AWS_* chain).")
    presign_expires_seconds: int = Field(
        900, ge=1, le=7 * 24 * 3600, description="Lifetime of presigned output URLs."
    )

    host: str = Field("127.0.0.1", description="Address `easel web` binds.")
    port: int = Field(8000, ge=1, le=65535, description="Port `easel web` binds.")
    web_workers: int = Field(2, ge=1, description="gunicorn worker processes for `easel web`.")
    web_worker_class: Literal["gevent", "gthread"] = Field(
        "gevent",
        description="gunicorn worker class of `easel web`: gevent (a held call or stream costs a "
        "greenlet) or gthread (a thread each).",
    )
    web_threads: int = Field(
        8, ge=2, le=256, description="Threads per gunicorn worker with EASEL_WEB_WORKER_CLASS=gthread."
    )
    web_max_requests: int = Field(
        0,
        ge=0,
        description="Requests after which a gunicorn worker is replaced (with 10% jitter); 0 = never.",
    )
    max_held_calls_per_key: int = Field(
        8,
        ge=1,
        le=10_000,
        description="Held calls (Prefer: wait, OpenAI, AUTOMATIC1111, event streams) one API key may "
        "have open at once, across web processes; 429 beyond.",
    )
    max_held_calls_per_process: int = Field(
        1000,
        ge=1,
        le=100_000,
        description="Held calls one web process holds at once; 429 beyond. gevent takes this many "
        "connections plus room for ordinary requests and health checks.",
    )
    event_stream_heartbeat_seconds: float = Field(
        15.0, gt=0, le=300, description="Idle time after which an event stream sends a heartbeat comment."
    )
    max_image_bytes: int = Field(
        10 * 1024 * 1024, ge=1024, description="Largest accepted image or mask file."
    )
    max_image_pixels: int = Field(4096 * 4096, ge=64 * 64, description="Most pixels in an uploaded image.")
    max_request_bytes: int = Field(32 * 1024 * 1024, ge=1024, description="Largest accepted request body.")

    log_format: Literal["json", "text"] = Field("json", description="Log lines as JSON, or plain text.")
    auth_enabled: bool = Field(True, description="Require API keys (REST) and a login (pages).")
    secret_key: SecretStr | None = Field(
        None, description="Signs web sessions; default: made once in EASEL_HOME."
    )
    session_cookie_secure: bool = Field(False, description="Send the session cookie over HTTPS only.")
    rate_limit: str = Field("600/minute", description="Requests per API key (or address) to the REST API.")
    submit_rate_limit: str = Field(
        "60/minute", description="Accepted job submissions per API key (or address)."
    )
    auth_failure_limit: str = Field(
        "20/minute", description="Failed authentications per client address before 429."
    )
    trusted_proxy_hops: int = Field(
        0,
        ge=0,
        le=10,
        description="Reverse proxies in front of the web tier whose X-Forwarded-For/-Proto to trust.",
    )
    max_queued_per_key: int = Field(100, ge=1, description="Queued + running jobs one key may have.")
    quota_images_per_day: int = Field(
        0, ge=0, description="Images one key may make per UTC day (0: no quota); submits past it get 429."
    )
    quota_gpu_seconds_per_day: float = Field(
        0.0,
        ge=0,
        description="GPU-seconds one key may use per UTC day (0: no quota); submits past it get 429.",
    )
    sync_timeout_seconds: float = Field(
        300.0,
        gt=0,
        le=3600,
        description="How long an OpenAI or AUTOMATIC1111 call waits for its job before a timeout error.",
    )
    otlp_endpoint: str = Field(
        "",
        description="OTLP/HTTP collector (e.g. http://otel-collector:4318) to export each job's trace "
        "to; empty: no tracing.",
    )
    webhook_allow_private: bool = Field(False, description="Allow webhooks to private/loopback addresses.")
    models_file: Path | None = Field(None, description="TOML model registry; default: the built-in tiny-sd.")
    models_dir: str = Field(
        "",
        description="Models folders a worker serves, `:`-separated: an A1111 or ComfyUI `models` folder, "
        "an `embeddings` folder, a Hugging Face cache (docs/bring-your-models.md).",
    )
    models_rescan_seconds: float = Field(
        30.0, ge=0, description="How often a worker rescans EASEL_MODELS_DIR for file changes; 0 = never."
    )
    catalog_refresh_seconds: float = Field(
        2.0, ge=0, description="How often a web process looks for models the workers published."
    )
    default_model: str | None = Field(
        None,
        description="Model used when a job names none; default: tiny-sd (built-in models), else demo-shapes "
        "if present, else the first model by name.",
    )
    offline: bool = Field(True, description="Never download weights (HF_HUB_OFFLINE).")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N.")
    cpu_threads: int = Field(0, ge=0, description="Torch threads of a CPU worker; 0 lets torch decide.")
    store_overlap: Literal["auto", "true", "false"] = Field(
        "auto",
        description="Store a batch beside the next one's denoising: auto (on a GPU, or with a CPU to spare).",
    )
    preload_models: str = Field(
        "default", description="Models a worker loads at start: names, default or none."
    )
    worker_models: str = Field("", description="Comma-separated models a worker serves; default all.")
    task_soft_time_limit: int = Field(
        600, ge=1, description="Seconds a batch may denoise before its jobs fail with time_limit."
    )
    task_time_limit: int = Field(
        660, ge=1, description="Seconds after which a stuck batch ends its worker process (restarted)."
    )
    max_prompt_chars: int = Field(2000, ge=1, description="Longest accepted prompt.")
    max_loras_per_job: int = Field(4, ge=0, le=16, description="Most LoRA adapters one job may apply.")
    max_loras_loaded: int = Field(
        8, ge=1, description="LoRA adapters a worker keeps loaded per model (least recently used dropped)."
    )
    progress_interval_seconds: float = Field(0.5, gt=0, description="Least time between progress writes.")
    preview_interval_seconds: float = Field(
        1.0,
        ge=0,
        description="Least time between live previews of a running job (the first this long into its batch); "
        "0 turns previews off.",
    )
    max_priority: int = Field(
        10, ge=0, le=1000, description="Highest `priority` a non-admin key may ask for."
    )
    max_batch_size: int = Field(4, ge=1, le=64, description="Most images of compatible jobs in one call.")
    batch_wait_ms: int = Field(
        50, ge=0, le=10_000, description="How long an idle worker's first claim waits for its batch to fill."
    )
    idle_poll_seconds: float = Field(
        0.0,
        ge=0,
        le=60,
        description="How often an idle worker looks for jobs; 0: 0.1 s embedded, 1 s else.",
    )
    restart_backoff_seconds: float = Field(
        0.5, gt=0, le=60, description="`easel run`: first delay before restarting a process that died."
    )
    max_loaded_models: int = Field(1, ge=1, description="Models a worker keeps loaded (LRU).")
    max_loaded_bytes: int = Field(0, ge=0, description="Weight bytes a worker keeps loaded; 0 = no limit.")
    torch_compile: Literal["auto", "true", "false"] = Field(
        "auto", description="torch.compile the UNet: auto (on CUDA), true (also on the CPU) or false."
    )
    compile_cache: str = Field(
        "", description="Folder of the persistent compile cache; default $EASEL_HOME/compile-cache; off: none"
    )
    compile_cache_shared: bool = Field(
        True, description="With S3 job storage, share compile cache entries under compile-cache/ there."
    )
    compile_background: bool = Field(
        True, description="On a compile cache miss, serve jobs eagerly while the UNet compiles in a thread."
    )
    compile_shapes: str = Field(
        "",
        description="WxH sizes a CUDA worker warms up (compiles) at start; unset: each model's default size.",
    )
    channels_last: bool = Field(True, description="channels_last memory format for the UNet on CUDA.")
    vae_tiling_pixels: int = Field(
        1024 * 1024, ge=0, description="Output pixels from which the VAE decodes in tiles; 0 = never."
    )
    metrics_port: int = Field(0, ge=0, le=65535, description="Port a worker serves /metrics on; 0 = off.")

    public_url: str = Field(
        "", description="Base URL clients reach the web tier at; default http://host:port"
    )
    heartbeat_seconds: float = Field(5.0, gt=0, description="How often a worker records it is alive.")
    worker_lost_after_seconds: float = Field(30.0, gt=0, description="Silence after which a worker is lost.")
    max_attempts: int = Field(3, ge=1, le=20, description="Runs a job gets when its worker is lost.")
    db_retry_seconds: float = Field(300.0, gt=0, description="How long a worker retries a database write.")
    storage_retry_attempts: int = Field(4, ge=1, le=20, description="Tries of one output upload.")
    eta_history_jobs: int = Field(20, ge=1, description="Recent jobs per model the ETA learns from.")
    retention_outputs_days: float = Field(
        30.0, ge=0, description="Days finished jobs keep their stored images; 0 = forever."
    )
    retention_inputs_days: float = Field(
        7.0, ge=0, description="Days finished jobs keep their input image and mask; 0 = forever."
    )
    retention_rows_days: float = Field(
        0.0, ge=0, description="Days finished job rows are kept (with all they stored); 0 = forever."
    )
    retention_interval_seconds: float = Field(
        3600.0, ge=0, description="How often a worker runs the automatic prune; 0 = never."
    )
    webhook_secret: SecretStr | None = Field(None, description="HMAC-SHA256 key for webhook signatures.")
    webhook_max_attempts: int = Field(6, ge=1, le=50, description="Deliveries tried before giving up.")
    webhook_backoff_seconds: float = Field(2.0, gt=0, description="First retry delay; doubles each time.")
    webhook_timeout_seconds: float = Field(
        10.0, gt=0, description="Wall-clock deadline of one webhook attempt (connect, send, status, headers)."
    )
    webhook_progress_seconds: float = Field(
        5.0, gt=0, description="Least time between `progress` webhooks of one job."
    )
    webhook_concurrency: int = Field(8, ge=1, description="Parallel deliveries of `easel webhooks`.")
    webhook_concurrency_per_owner: int = Field(
        2, ge=1, description="Parallel deliveries of one owner's jobs in one `easel webhooks` process."
    )

    @field_validator("torch_compile", mode="before")
    @classmethod
    def _compile_switch(cls, value: object) -> object:
        """``true``/``false`` as a boolean or its usual spellings; ``auto`` as is."""
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, str):
            word = value.strip().lower()
            spelled = {"1": "true", "yes": "true", "on": "true", "0": "false", "no": "false", "off": "false"}
            return spelled.get(word, word)
        return value

    @property
    def compile_cache_dir(self) -> Path | None:
        """The compile cache folder (``None``: ``EASEL_COMPILE_CACHE=off``)."""
        if self.compile_cache.strip().lower() == "off":
            return None
        if not self.compile_cache.strip():
            return self.home / "compile-cache"
        return Path(self.compile_cache).expanduser()

    @model_validator(mode="after")
    def _fill_embedded_defaults(self) -> Settings:
        self.home = self.home.expanduser().resolve()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.home / 'easel.db'}"
        if not self.broker_url:
            self.broker_url = f"sqla+sqlite:///{self.home / 'broker.db'}"
        if not self.storage_url:
            self.storage_url = (self.home / "outputs").as_uri()
        if self.webhook_secret is not None and not self.webhook_secret.get_secret_value():
            self.webhook_secret = None  # an empty variable (compose's default) means "off"
        if not (self.default_model or "").strip():
            self.default_model = None  # an empty variable means "choose one"
        if not self.public_url:
            self.public_url = f"http://{self.host}:{self.port}"
        self.public_url = self.public_url.rstrip("/")
        parse_shapes(self.compile_shapes)  # a bad size fails here, naming it
        if self.task_time_limit <= self.task_soft_time_limit:
            raise ValueError(
                f"task_time_limit ({self.task_time_limit}) must exceed "
                f"task_soft_time_limit ({self.task_soft_time_limit})"
            )
        return self

    @property
    def served_models(self) -> list[str]:
        """Models this worker serves (empty list means every registered model)."""
        return [m.strip() for m in self.worker_models.split(",") if m.strip()]

    def preload_list(self, default_model: str | None) -> list[str]:
        """The models to load at worker start (``default`` is the default model, if any)."""
        names = [m.strip() for m in self.preload_models.split(",") if m.strip()]
        if names == ["none"]:
            return []
        chosen = (default_model if name == "default" else name for name in names)
        return [name for name in chosen if name]

    def session_secret(self) -> str:
        """The session signing key: the setting, else one made once and kept in EASEL_HOME."""
        if self.secret_key is not None and self.secret_key.get_secret_value():
            return self.secret_key.get_secret_value()
        import secrets

        self.ensure_home()
        path = self.home / "secret_key"
        if not path.exists():  # web processes start together: the first complete file wins
            draft = path.with_name(f".secret_key.{os.getpid()}.{secrets.token_hex(4)}")
            fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_urlsafe(48))
            try:
                os.link(draft, path)  # atomic, and never over an existing key
            except FileExistsError:
                pass
            finally:
                draft.unlink()
        return path.read_text().strip()

    @property
    def built_models_dir(self) -> Path:
        """Where Easel keeps the models it builds itself (tiny-sd) and shipped configs."""
        return self.home / "models"

    @property
    def models_roots(self) -> list[Path]:
        """The folders of ``EASEL_MODELS_DIR``, in order (earlier ones win name collisions)."""
        return [Path(part).expanduser() for part in self.models_dir.split(os.pathsep) if part.strip()]

    def ensure_home(self) -> None:
        """Create the embedded state folder if it is missing, readable by its owner only
        (``0700``; an existing one is narrowed to that where this user may)."""
        self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.home.stat().st_mode & 0o077:
            with contextlib.suppress(PermissionError):  # someone else's folder: leave it
                self.home.chmod(0o700)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()

"""SQLAlchemy models: a job row is the source of truth (docs/design.md, principle 1)."""

from __future__ import annotations

import enum
import json
import uuid
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    event,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class JobStatus(str, enum.Enum):  # noqa: UP042 - str mixin keeps JSON/SQL values plain
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED})


class JobType(str, enum.Enum):  # noqa: UP042
    TXT2IMG = "txt2img"
    IMG2IMG = "img2img"
    INPAINT = "inpaint"
    UPSCALE = "upscale"


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_job_id() -> str:
    """An unguessable job id (128 random bits, hex)."""
    return uuid.uuid4().hex


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}; use timezone-aware UTC")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class CanonicalJson(TypeDecorator[Any]):
    """A JSON value stored as its one canonical text (sorted keys, no spaces); empty
    values as NULL. Equal values are equal strings, so SQL ``=`` compares them on every
    backend (the batch key's ``loras``, ``control``, ``hires`` and ``sd_upscale``,
    ``worker.engine.claims``)."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> str | None:
        if value is None or value == [] or value == {}:
            return None
        if hasattr(value, "model_dump"):
            value = value.model_dump(mode="json")
        elif isinstance(value, tuple):
            value = [v.model_dump(mode="json") if hasattr(v, "model_dump") else v for v in value]
        return json.dumps(value, sort_keys=True, separators=(",", ":"))

    def process_result_value(self, value: str | None, dialect: Any) -> Any:
        return None if value is None else json.loads(value)


# Finished jobs whose stored outputs / inputs retention has not deleted yet (partial
# indexes: a pruned job leaves them, so finding what is due never rereads the history).
OUTPUTS_DUE = "outputs_pruned_at IS NULL AND finished_at IS NOT NULL"
INPUTS_DUE = (
    "inputs_pruned_at IS NULL AND (input_key IS NOT NULL OR mask_key IS NOT NULL OR control_key IS NOT NULL) "
    "AND finished_at IS NOT NULL"
)  # a job with any of the input columns of easel.shared.kinds.INPUTS
# Queued jobs only (partial indexes: the queue, never the history nor running jobs).
QUEUED_ONLY = "status = 'queued'"


class Base(DeclarativeBase):
    pass


class Job(Base):
    """One generation request and everything that happened to it."""

    __tablename__ = "jobs"
    __table_args__ = (
        # A model's queued jobs by priority, then age (the jobs ahead of a queued job), and
        # its running ones.
        Index("ix_jobs_claim", "status", "model", "priority", "created_at"),
        Index("ix_jobs_created_at", "created_at"),
        # An owner's turn (shared.queue_turns): when its last job started.
        Index("ix_jobs_owner_started", "owner_id", "started_at"),
        # Hot paths that must not scan history (docs/design.md principle 11): an owner's
        # jobs newest first, and its active jobs; a status newest first (all owners);
        # a model's latest finished jobs (ETA); recent failures; retention's due rows.
        Index("ix_jobs_owner_created", "owner_id", "created_at"),
        Index("ix_jobs_owner_status", "owner_id", "status", "created_at"),
        Index("ix_jobs_status_created", "status", "created_at"),
        Index("ix_jobs_model_finished", "model", "status", "finished_at"),
        Index("ix_jobs_status_finished", "status", "finished_at"),
        # The queue (docs/design.md principle 2, shared.queue_turns): an owner's first queued
        # job at a (model, type, priority), and a batch's companions by batch key.
        Index(
            "ix_jobs_queue",
            "model",
            "type",
            "priority",
            "owner_id",
            "created_at",
            "id",
            postgresql_where=text(QUEUED_ONLY),
            sqlite_where=text(QUEUED_ONLY),
        ),
        Index(
            "ix_jobs_queue_key",
            "model",
            "type",
            "width",
            "height",
            "steps",
            "scheduler",
            "guidance_scale",
            "strength",
            "priority",
            "owner_id",
            "created_at",
            "id",
            postgresql_where=text(QUEUED_ONLY),
            sqlite_where=text(QUEUED_ONLY),
        ),
        Index(
            "ix_jobs_outputs_due",
            "finished_at",
            postgresql_where=text(OUTPUTS_DUE),
            sqlite_where=text(OUTPUTS_DUE),
        ),
        Index(
            "ix_jobs_inputs_due",
            "finished_at",
            postgresql_where=text(INPUTS_DUE),
            sqlite_where=text(INPUTS_DUE),
        ),
        UniqueConstraint("owner_id", "idempotency_key", name="uq_jobs_owner_idempotency_key"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_job_id)
    type: Mapped[str] = mapped_column(String(16))
    model: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED.value)
    priority: Mapped[int] = mapped_column(Integer, default=0)

    prompt: Mapped[str] = mapped_column(Text)
    negative_prompt: Mapped[str] = mapped_column(Text, default="")
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    steps: Mapped[int] = mapped_column(Integer)
    guidance_scale: Mapped[float] = mapped_column(Float)
    scheduler: Mapped[str] = mapped_column(String(32))
    seed: Mapped[int] = mapped_column(BigInteger)
    num_images: Mapped[int] = mapped_column(Integer, default=1)
    strength: Mapped[float | None] = mapped_column(Float, nullable=True)
    mask_blur: Mapped[int | None] = mapped_column(Integer, nullable=True)
    keep_unmasked: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    input_key: Mapped[str | None] = mapped_column(String(512), nullable=True)
    mask_key: Mapped[str | None] = mapped_column(String(512), nullable=True)
    # LoRAs ([{"name", "weight"}] sorted by name) and ControlNet ({"model", "scale"}) of
    # the batch key, as canonical JSON text; NULL: none. The control image: control_key.
    loras: Mapped[list[dict[str, Any]] | None] = mapped_column(CanonicalJson, nullable=True)
    control: Mapped[dict[str, Any] | None] = mapped_column(CanonicalJson, nullable=True)
    control_key: Mapped[str | None] = mapped_column(String(512), nullable=True)
    # The VAE of the batch key ([vaes.NAME]); NULL: the model's own.
    vae: Mapped[str | None] = mapped_column(String(128), nullable=True)
    # upscale jobs (easel.shared.kinds): the upscaler's name and the factor; NULL: other kinds.
    upscaler: Mapped[str | None] = mapped_column(String(128), nullable=True)
    scale: Mapped[float | None] = mapped_column(Float, nullable=True)
    # txt2img hires fix (easel.shared.hires.HiresRef: target size, upscaler, steps, denoising
    # strength) as canonical JSON text, part of the batch key; NULL: none.
    hires: Mapped[dict[str, Any] | None] = mapped_column(CanonicalJson, nullable=True)
    # img2img SD upscale (easel.shared.sd_upscale.SdUpscaleRef: upscaler, scale, overlap, the
    # output size) as canonical JSON text, part of the batch key; NULL: none.
    sd_upscale: Mapped[dict[str, Any] | None] = mapped_column(CanonicalJson, nullable=True)
    # seamless textures (circular padding), part of the batch key; NULL: none (never false).
    tiling: Mapped[bool | None] = mapped_column(Boolean, nullable=True)

    attempts: Mapped[int] = mapped_column(Integer, default=0)
    progress_step: Mapped[int] = mapped_column(Integer, default=0)
    progress_total: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    worker_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    batch_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    batch_size: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    timings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)

    owner_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), nullable=True)
    request_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    webhook_url: Mapped[str | None] = mapped_column(String(2048), nullable=True)
    webhook_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    webhook_delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    webhook_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The webhook events the client asked for (start, progress, completed); NULL: completed.
    webhook_events: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    # The W3C traceparent of the job's submit span (shared.tracing); NULL: not traced.
    trace_parent: Mapped[str | None] = mapped_column(String(55), nullable=True)
    # The step of the live preview stored at shared.jobs.preview_key; NULL: none yet.
    preview_step: Mapped[int | None] = mapped_column(Integer, nullable=True)

    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    # Retention (shared.retention): when the stored outputs / inputs were deleted.
    outputs_pruned_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    inputs_pruned_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    outputs: Mapped[list[JobOutput]] = relationship(
        back_populates="job",
        order_by="JobOutput.index",
        cascade="all, delete-orphan",
        lazy="selectin",
    )


class JobOutput(Base):
    """One stored image of a job; ``(job_id, index)`` is unique so a re-run overwrites."""

    __tablename__ = "job_outputs"
    __table_args__ = (UniqueConstraint("job_id", "index", name="uq_job_outputs_job_index"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    index: Mapped[int] = mapped_column(Integer)
    seed: Mapped[int] = mapped_column(BigInteger)
    storage_key: Mapped[str] = mapped_column(String(512))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    content_type: Mapped[str] = mapped_column(String(64), default="image/png")
    size_bytes: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    job: Mapped[Job] = relationship(back_populates="outputs")


class Worker(Base):
    """A worker process and its heartbeat: what it serves and what it is doing."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)  # host:pid
    hostname: Mapped[str] = mapped_column(String(255))
    models: Mapped[list[str]] = mapped_column(JSON, default=list)
    device: Mapped[str] = mapped_column(String(32), default="cpu")
    current_job_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # Per model it compiled: {"path": eager|compiling|compiled|failed, "warm_up_seconds"}.
    compile: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    stopped_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class ApiKey(Base):
    """An API key: only its SHA-256 is stored; ``prefix`` identifies it in lists and logs."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_job_id)
    name: Mapped[str] = mapped_column(String(255))
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Bumped by logout: a page session made before the bump no longer authenticates.
    session_generation: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class JobCount(Base):
    """Jobs that reached each final status, by model and type: a counter kept in the same
    transaction as the change of status (``shared.stats``), so ``/metrics`` never counts
    the history, and pruning rows never lowers it."""

    __tablename__ = "job_counts"

    model: Mapped[str] = mapped_column(String(128), primary_key=True)
    type: Mapped[str] = mapped_column(String(16), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger, default=0)


class JobDuration(Base):
    """One histogram bucket (not cumulative) of finished jobs' queue waits (``kind``
    ``wait``) or run times (``run``) per model: how many fell in it and their sum."""

    __tablename__ = "job_durations"

    kind: Mapped[str] = mapped_column(String(8), primary_key=True)
    model: Mapped[str] = mapped_column(String(128), primary_key=True)
    bucket: Mapped[str] = mapped_column(String(16), primary_key=True)  # its upper bound, or "+Inf"
    count: Mapped[int] = mapped_column(BigInteger, default=0)
    total: Mapped[float] = mapped_column(Float, default=0.0)


class KeyUsage(Base):
    """What one owner (an API key) used on one UTC day: jobs that succeeded, their images
    and their GPU-seconds (``easel.shared.usage``), kept in the transaction that finishes
    the jobs, so usage and quotas read a row instead of the job history. Jobs without an
    owner have ``owner_key`` ``''``."""

    __tablename__ = "key_usage"
    __table_args__ = (Index("ix_key_usage_day", "day"),)  # every key's days (admins)

    owner_key: Mapped[str] = mapped_column(String(32), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    jobs: Mapped[int] = mapped_column(BigInteger, default=0)
    images: Mapped[int] = mapped_column(BigInteger, default=0)
    gpu_seconds: Mapped[float] = mapped_column(Float, default=0.0)


class QueueTurn(Base):
    """The queued jobs of one owner at one (model, type, priority): how many, the oldest
    (the head) and the owner's turn (when its last job started; ``NEVER`` if none did).
    The claim order's maintained state (``easel.shared.queue_turns``): kept in the
    transaction that adds jobs to the queue or takes them out, so a claim reads the next
    owner's head through an index instead of sorting the queue. Jobs without an owner
    have ``owner_key`` ``''`` and never a turn."""

    __tablename__ = "queue_turns"
    __table_args__ = (
        Index("ix_queue_turns_next", "model", "priority", "turn", "head_created", "head_id"),
        Index("ix_queue_turns_next_any", "priority", "turn", "head_created", "head_id"),
        Index("ix_queue_turns_owner", "owner_key"),
    )

    model: Mapped[str] = mapped_column(String(128), primary_key=True)
    type: Mapped[str] = mapped_column(String(16), primary_key=True)
    priority: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner_key: Mapped[str] = mapped_column(String(32), primary_key=True)
    queued: Mapped[int] = mapped_column(BigInteger, default=0)
    turn: Mapped[datetime] = mapped_column(UTCDateTime)
    head_created: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    head_id: Mapped[str | None] = mapped_column(String(32), nullable=True)

    @classmethod
    def __declare_last__(cls) -> None:
        """Count every queued ``Job`` the ORM inserts (a submit, or a test's row) in this
        table, in the inserting transaction; the other moves are ``shared.transitions``'."""
        from easel.shared.queue_turns import count_inserted

        if not event.contains(Job, "after_insert", count_inserted):  # mappers configure again
            event.listen(Job, "after_insert", count_inserted)


class Lease(Base):
    """A named lease: whoever holds it (until ``until``) does that periodic work alone
    (the automatic retention prune)."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(255))
    until: Mapped[datetime] = mapped_column(UTCDateTime)


class HeldCall(Base):
    """One held call (``Prefer: wait``, an OpenAI or AUTOMATIC1111 call, a job event
    stream), to bound them per key across web processes (``web.held_calls``).

    The web process refreshes ``seen_at`` of its calls' rows every heartbeat and deletes a
    row when its call ends; a row whose web process died is ignored once ``seen_at`` is
    older than a few heartbeats.
    """

    __tablename__ = "held_calls"
    __table_args__ = (Index("ix_held_calls_owner", "owner", "opened_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_job_id)
    owner: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[str] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(16), default="wait")
    opened_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class CatalogEntry(Base):
    """One model or adapter file a worker found in its models folders (``EASEL_MODELS_DIR``),
    published so that every web process knows it without the files
    (``easel.shared.catalog_store``, docs/bring-your-models.md).

    Each worker owns its rows (``worker_id``) and replaces them whole at each publish;
    ``source`` names the folders it scanned, so a new worker of a deployment (a new pod)
    takes over the rows its stopped predecessors with the same folders left.
    """

    __tablename__ = "catalog_entries"

    worker_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    source: Mapped[str] = mapped_column(String(64))
    family: Mapped[str | None] = mapped_column(String(16), nullable=True)
    architecture: Mapped[str | None] = mapped_column(String(32), nullable=True)
    format: Mapped[str] = mapped_column(String(16))
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    fingerprint: Mapped[str] = mapped_column(String(64))
    available: Mapped[bool] = mapped_column(Boolean, default=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    published_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class CatalogRescan(Base):
    """The last request to rescan the models folders (``easel models rescan``, A1111's
    ``refresh-checkpoints``): workers rescan when it is newer than their last scan."""

    __tablename__ = "catalog_rescans"

    name: Mapped[str] = mapped_column(String(16), primary_key=True)  # "all"
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime)

"""Usage per key: maintained daily totals (``key_usage``) and the quotas that read them.

When a job succeeds, ``record_all`` adds it to its owner's row for the UTC day it
finished (jobs, images, GPU-seconds), in the transaction of the guarded ``UPDATE`` that
finished it (``shared.transitions.finish_all``), with one atomic upsert per (owner, day):
concurrent workers never lose an increment. Reading usage (``read``) or checking a quota
(``check_quota``) reads these rows through their primary key, never the job history, so
both cost the same with a million finished jobs as with none.

A job's GPU-seconds are its share of its batch's pipeline call (the worker records
``gpu_seconds`` in its timings: the call's seconds times the job's images over the
call's images). Failed and canceled jobs are not counted.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, NamedTuple, cast

from sqlalchemy import Table, delete, func, literal_column, select
from sqlalchemy.orm import Session

from easel.shared.errors import QuotaExceeded, ValidationFailed, field_detail
from easel.shared.models import ApiKey, Job, JobStatus, KeyUsage, utcnow
from easel.shared.settings import Settings
from easel.shared.stats import add

NO_OWNER = ""
"""The ``owner_key`` of jobs without an owner."""


class Used(NamedTuple):
    """What one succeeded job used, and when it finished (``record_all``)."""

    owner_id: str | None
    images: int
    gpu_seconds: float
    finished_at: datetime


class DayUsage(NamedTuple):
    """One owner's totals on one UTC day."""

    owner_key: str
    day: date
    jobs: int
    images: int
    gpu_seconds: float


def day_of(moment: datetime) -> date:
    """The UTC day of ``moment``."""
    return moment.astimezone(UTC).date()


def gpu_seconds_of(timings: dict[str, Any] | None) -> float:
    """The GPU-seconds a worker recorded in a job's ``timings`` (0 if none)."""
    value = (timings or {}).get("gpu_seconds", 0.0)
    return float(value) if isinstance(value, int | float) and value > 0 else 0.0


def _table() -> Table:
    return cast(Table, KeyUsage.__table__)


def record_all(session: Session, used: Iterable[Used]) -> None:
    """Add each of ``used`` to its owner's row of its day (not committed): one upsert per
    (owner, day), written in sorted order so concurrent transactions never deadlock."""
    totals: dict[tuple[str, date], tuple[int, int, float]] = {}
    for item in used:
        key = (item.owner_id or NO_OWNER, day_of(item.finished_at))
        jobs, images, seconds = totals.get(key, (0, 0, 0.0))
        totals[key] = (jobs + 1, images + item.images, seconds + item.gpu_seconds)
    for (owner, day), (jobs, images, seconds) in sorted(totals.items()):
        add(
            session,
            _table(),
            {"owner_key": owner, "day": day},
            jobs=jobs,
            images=images,
            gpu_seconds=round(seconds, 3),
        )


def read(session: Session, start: date, end: date, owner_id: str | None = None) -> list[DayUsage]:
    """The rows from ``start`` to ``end`` (both included) of ``owner_id``, or of every
    owner when it is ``None``; by day, then owner."""
    query = select(KeyUsage.owner_key, KeyUsage.day, KeyUsage.jobs, KeyUsage.images, KeyUsage.gpu_seconds)
    query = query.where(KeyUsage.day >= start, KeyUsage.day <= end)
    if owner_id is not None:
        query = query.where(KeyUsage.owner_key == owner_id)
    rows = session.execute(query.order_by(KeyUsage.day, KeyUsage.owner_key)).all()
    return [DayUsage(o, d, int(j), int(i), round(float(g), 3)) for o, d, j, i, g in rows]


def today(session: Session, owner_id: str, now: datetime | None = None) -> DayUsage:
    """``owner_id``'s totals of the current UTC day (zeros if it used nothing yet)."""
    day = day_of(now or utcnow())
    row = session.get(KeyUsage, (owner_id, day))
    if row is None:
        return DayUsage(owner_id, day, 0, 0, 0.0)
    return DayUsage(owner_id, day, row.jobs, row.images, row.gpu_seconds)


def next_reset(now: datetime) -> datetime:
    """When the day's quotas reset: the next midnight UTC."""
    return datetime.combine(day_of(now) + timedelta(days=1), time(), tzinfo=UTC)


def check_quota(
    session: Session, settings: Settings, owner_id: str, images: int = 0, now: datetime | None = None
) -> None:
    """``QuotaExceeded`` (429) if ``owner_id`` used up a daily quota, or if ``images`` more
    would pass its images quota; one read of today's row (nothing with no quota set)."""
    image_quota, seconds_quota = settings.quota_images_per_day, settings.quota_gpu_seconds_per_day
    if not image_quota and not seconds_quota:
        return
    now = now or utcnow()
    used = today(session, owner_id, now)
    reset = next_reset(now)
    wait = max(1, int((reset - now).total_seconds()) + 1)
    when = f"the quota resets at {reset:%Y-%m-%d} 00:00 UTC, in {wait} s"
    if image_quota and (used.images >= image_quota or used.images + images > image_quota):
        asked = f"; this job asks for {images} more" if images else ""
        raise QuotaExceeded(
            f"this key has used {used.images} of its {image_quota} images today "
            f"(EASEL_QUOTA_IMAGES_PER_DAY){asked}; {when}",
            [field_detail("images", "daily images quota reached", used.images)],
            retry_after=wait,
        )
    if seconds_quota and used.gpu_seconds >= seconds_quota:
        raise QuotaExceeded(
            f"this key has used {used.gpu_seconds:g} of its {seconds_quota:g} GPU-seconds today "
            f"(EASEL_QUOTA_GPU_SECONDS_PER_DAY); {when}",
            [field_detail("gpu_seconds", "daily GPU-seconds quota reached", used.gpu_seconds)],
            retry_after=wait,
        )


def rebuild(session: Session) -> None:
    """Recompute the rows from the succeeded jobs still stored (not committed): their jobs
    and images, in one grouped query; GPU-seconds 0 (jobs before 0015 did not record them).
    For migration 0015 and benchmarks that bulk-insert history."""
    session.execute(delete(KeyUsage))
    if session.get_bind().dialect.name == "postgresql":
        day: Any = func.date(func.timezone(literal_column("'UTC'"), Job.finished_at))  # no bound value
    else:  # SQLite keeps UTC text: its date part
        day = func.date(Job.finished_at)
    rows = session.execute(
        select(Job.owner_id, day, func.count(), func.sum(Job.num_images))
        .where(Job.status == JobStatus.SUCCEEDED.value, Job.finished_at.is_not(None))
        .group_by(Job.owner_id, day)  # the same text twice, as PostgreSQL's GROUP BY needs
    ).all()
    found: dict[tuple[str, date], tuple[int, int]] = {}
    for owner, d, count, images in rows:
        key = (owner or NO_OWNER, d if isinstance(d, date) else date.fromisoformat(str(d)))
        jobs_before, images_before = found.get(key, (0, 0))
        found[key] = (jobs_before + int(count), images_before + int(images or 0))
    if found:
        session.execute(
            _table().insert(),
            [
                {"owner_key": o, "day": d, "jobs": n, "images": i, "gpu_seconds": 0.0}
                for (o, d), (n, i) in sorted(found.items())
            ],
        )


def totals(rows: Sequence[DayUsage]) -> dict[str, Any]:
    """The sums of ``rows``: jobs, images and GPU-seconds."""
    return {
        "jobs": sum(r.jobs for r in rows),
        "images": sum(r.images for r in rows),
        "gpu_seconds": round(sum(r.gpu_seconds for r in rows), 3),
    }


MAX_DAYS = 366
"""The longest range one read covers."""


def parse_range(start: str | None, end: str | None, now: datetime | None = None) -> tuple[date, date]:
    """``(from, to)`` of ``YYYY-MM-DD`` texts: ``to`` defaults to today (UTC), ``from`` to
    ``to``'s first of the month; ``ValidationFailed`` (422) for a bad day or range."""
    last = _day("to", end) if end else day_of(now or utcnow())
    first = _day("from", start) if start else last.replace(day=1)
    if first > last:
        raise ValidationFailed(
            f"from: {first} is after to: {last}", [field_detail("from", "must not be after to", str(first))]
        )
    if (last - first).days >= MAX_DAYS:
        message = f"covers {(last - first).days + 1} days; at most {MAX_DAYS} at once"
        raise ValidationFailed(f"from..to {message}", [field_detail("from", message, str(first))])
    return first, last


def _day(name: str, text: str) -> date:
    try:
        if len(text) != 10:
            raise ValueError(text)
        return date.fromisoformat(text)
    except ValueError:
        raise ValidationFailed(
            f"{name}: must be a day as YYYY-MM-DD, got {text[:40]!r}",
            [field_detail(name, "must be a day as YYYY-MM-DD", text[:40])],
        ) from None


def report(session: Session, start: date, end: date, owner_id: str | None = None) -> dict[str, Any]:
    """The usage from ``start`` to ``end`` of ``owner_id`` (every key if ``None``): each
    (day, key) with any use, with the key's name, and the totals; what ``GET
    /api/v1/usage``, ``/admin`` and ``easel usage`` show."""
    rows = read(session, start, end, owner_id)
    owners = sorted({row.owner_key for row in rows})
    names = dict(session.execute(select(ApiKey.id, ApiKey.name).where(ApiKey.id.in_(owners))).all())
    return {
        "from": start.isoformat(),
        "to": end.isoformat(),
        "key": owner_id,
        "days": [
            {
                "day": row.day.isoformat(),
                "key": row.owner_key,
                "name": names.get(row.owner_key),
                "jobs": row.jobs,
                "images": row.images,
                "gpu_seconds": row.gpu_seconds,
            }
            for row in rows
        ],
        "total": totals(rows),
    }


def per_key(days: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """A report's ``days`` summed per key (largest GPU-seconds first): the /admin table."""
    keys: dict[str, dict[str, Any]] = {}
    for row in days:
        into = keys.setdefault(
            row["key"], {"key": row["key"], "name": row["name"], "jobs": 0, "images": 0, "gpu_seconds": 0.0}
        )
        into["jobs"] += row["jobs"]
        into["images"] += row["images"]
        into["gpu_seconds"] = round(into["gpu_seconds"] + row["gpu_seconds"], 3)
    return sorted(keys.values(), key=lambda k: (-k["gpu_seconds"], -k["images"], k["key"]))

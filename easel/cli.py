"""The ``easel`` command: web, worker, migrate, and ``run`` for the one-command laptop setup."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from pydantic import BaseModel

from easel.shared.kinds import KIND_NAMES, kinds_with
from easel.shared.settings import Settings, get_settings
from easel.shared.tracing import setup_tracing

if TYPE_CHECKING:
    from easel.client import EaselClient

Decorated = TypeVar("Decorated", bound=Callable[..., Any])

# gunicorn's access log as JSON lines, with the request id the app sent back.
ACCESS_LOG_JSON = (
    '{"ts": "%(t)s", "logger": "access", "method": "%(m)s", "path": "%(U)s", "status": %(s)s, '
    '"bytes": "%(B)s", "duration_ms": %(M)s, "request_id": "%({x-request-id}o)s"}'
)


def _setup_logging(level: str = "INFO") -> None:
    from easel.shared.logs import setup_logging

    setup_logging(level, get_settings().log_format)


@click.group()
@click.version_option(package_name="easel-server")
def main() -> None:
    """Easel: asynchronous image-generation jobs."""


@main.command()
def migrate() -> None:
    """Create or upgrade the database schema (Alembic, to head)."""
    from easel.migrations.upgrade import upgrade

    _setup_logging()
    settings = get_settings()
    settings.ensure_home()
    upgrade(settings.database_url)
    click.echo(f"database at head: {_safe_url(settings.database_url)}")


def _client(url: str | None, key: str | None) -> EaselClient:
    from easel.client import EaselClient

    return EaselClient(url, key)


api_options = [
    click.option(
        "--url",
        envvar="EASEL_API_URL",
        default="http://127.0.0.1:8000",
        show_default=True,
        help="The Easel server (EASEL_API_URL).",
    ),
    click.option("--key", envvar="EASEL_API_KEY", default=None, help="API key (EASEL_API_KEY)."),
]


def with_api(function: Decorated) -> Decorated:
    """Add the --url and --key options of the commands that call the API."""
    for option in reversed(api_options):
        function = option(function)
    return function


def knob_options(function: Decorated) -> Decorated:
    """A ``--name`` option per generation knob (``easel.shared.params.KNOBS``), typed and
    described as the parameter is; unset ones are left to the model's defaults."""
    import typing

    from easel.shared.params import KNOBS, GenerationParams

    for name in reversed(KNOBS):
        info = GenerationParams.model_fields[name]
        kind = next(t for t in (*typing.get_args(info.annotation), info.annotation) if t is not type(None))
        function = click.option(
            f"--{name.replace('_', '-')}",
            type=click.BOOL if kind is bool else kind,
            default=None,
            help=info.description,
        )(function)
    return function


def nested_options(
    flag: str, model: type[BaseModel], fields: tuple[str, ...], what: str, help_text: str
) -> Callable[[Decorated], Decorated]:
    """``--FLAG`` and a ``--FLAG-NAME`` option per field of a nested request field
    (``model``: the hires fix, the SD upscale), typed and described as the field is."""
    import typing

    def decorate(function: Decorated) -> Decorated:
        for name in reversed(fields):
            info = model.model_fields[name]
            types = (*typing.get_args(info.annotation), info.annotation)
            kind = next(t for t in types if t is not type(None))
            default = "" if info.default is None else f" (default {info.default})"
            function = click.option(
                f"--{flag}-{name.replace('_', '-')}",
                type=kind,
                default=None,
                help=f"{what}: {(info.description or '').rstrip('.')}{default}.",
            )(function)
        return click.option(f"--{flag}", is_flag=True, help=help_text)(function)

    return decorate


def hires_options(function: Decorated) -> Decorated:
    """``--hires`` and ``--hires-*`` (``easel.shared.hires.HiresRequest``)."""
    from easel.shared.hires import HIRES_FIELDS, HiresRequest

    return nested_options(
        "hires",
        HiresRequest,
        HIRES_FIELDS,
        "Hires fix",
        "txt2img hires fix: draw at --width x --height, upscale, redraw at the target size "
        "(on too with --hires-scale, --hires-width or --hires-height).",
    )(function)


def sd_upscale_options(function: Decorated) -> Decorated:
    """``--sd-upscale`` and ``--sd-upscale-*`` (``easel.shared.sd_upscale.SdUpscaleRequest``)."""
    from easel.shared.sd_upscale import SD_UPSCALE_FIELDS, SdUpscaleRequest

    return nested_options(
        "sd-upscale",
        SdUpscaleRequest,
        SD_UPSCALE_FIELDS,
        "SD upscale",
        "img2img SD upscale: upscale --image, redraw it in tiles of --width x --height (default "
        "the model's size) blended in their overlaps (on too with --sd-upscale-scale).",
    )(function)


def _fail(exc: Exception) -> click.ClickException:
    return click.ClickException(str(exc))


@main.command()
@click.argument("prompt", required=False)
@click.option("--type", "job_type", type=click.Choice(KIND_NAMES), default=KIND_NAMES[0])
@click.option(
    "--image",
    type=click.Path(exists=True, dir_okay=False),
    help=f"Input image ({', '.join(kinds_with('image'))}).",
)
@click.option(
    "--mask",
    type=click.Path(exists=True, dir_okay=False),
    help=f"Mask, white repaints ({', '.join(kinds_with('mask'))}).",
)
@click.option("--model", help="Registry name; default model.")
@knob_options
@hires_options
@sd_upscale_options
@click.option(
    "--lora",
    "loras",
    multiple=True,
    metavar="NAME[:WEIGHT]",
    help="A LoRA and its weight (default 1); repeat for more.",
)
@click.option("--control-model", help="A ControlNet of the registry (needs --control-image).")
@click.option("--control-image", type=click.Path(exists=True, dir_okay=False), help="The ControlNet's image.")
@click.option("--control-scale", type=float, default=None, help="ControlNet conditioning scale, 0..2.")
@click.option("--wait", is_flag=True, help="Wait for the job, with a progress bar.")
@click.option("--out", type=click.Path(file_okay=False), help="With --wait: save the images here.")
@click.option("--timeout", type=float, default=None, help="With --wait: give up after this many seconds.")
@with_api
def submit(
    prompt: str | None,
    job_type: str,
    image: str | None,
    mask: str | None,
    loras: tuple[str, ...],
    control_model: str | None,
    control_image: str | None,
    control_scale: float | None,
    wait: bool,
    out: str | None,
    timeout: float | None,
    url: str,
    key: str | None,
    **params: Any,
) -> None:
    """Submit a job and print its id (or, with --wait, wait and save its images). An
    upscale job takes no PROMPT: --type upscale --image IN.png [--upscaler NAME --scale 2]."""
    from easel.client import EaselApiError

    if (control_model is None) != (control_image is None) or (
        control_scale is not None and not control_model
    ):
        raise click.UsageError("--control-model and --control-image go together (--control-scale with them)")
    if loras:  # the multipart/form text form, which JSON takes too: "name:weight,name"
        params["loras"] = ",".join(loras)
    if control_model:
        params.update(control_model=control_model, control_scale=control_scale)
    if params.pop("hires"):  # --hires-* go up as the form's hires_* fields, which JSON takes too
        params["hires"] = "on"
    if params.pop("sd_upscale"):  # --sd-upscale-* go up as the form's sd_upscale_* fields
        params["sd_upscale"] = "on"
    client = _client(url, key)
    try:
        job = client.submit(
            prompt, type=job_type, image=image, mask=mask, control_image=control_image, **params
        )
    except EaselApiError as exc:
        raise _fail(exc) from None
    click.echo(job["id"])
    if not wait:
        return
    with click.progressbar(length=job["progress"]["total"] or 1, label="denoising", file=sys.stderr) as bar:

        def advance(current: dict[str, Any]) -> None:
            bar.length = current["progress"]["total"] or bar.length
            bar.update(current["progress"]["step"] - bar.pos)

        job = client.wait(job["id"], timeout=timeout, on_progress=advance)
    click.echo(
        f"{job['status']}" + (f": {job['error']['code']}: {job['error']['message']}" if job["error"] else ""),
        err=True,
    )
    if out and job["status"] == "succeeded":
        for path in client.download(job, out):
            click.echo(str(path))
    if job["status"] != "succeeded":
        sys.exit(1)


@main.command()
@click.argument("job_id")
@with_api
def status(job_id: str, url: str, key: str | None) -> None:
    """Print a job object as JSON."""
    import json

    from easel.client import EaselApiError

    try:
        click.echo(json.dumps(_client(url, key).get(job_id), indent=2))
    except EaselApiError as exc:
        raise _fail(exc) from None


@main.command()
@click.argument("job_id")
@with_api
def cancel(job_id: str, url: str, key: str | None) -> None:
    """Cancel a queued or running job."""
    from easel.client import EaselApiError

    try:
        job = _client(url, key).cancel(job_id)
    except EaselApiError as exc:
        raise _fail(exc) from None
    click.echo(
        f"{job['id']} {job['status']}"
        + (" (stopping at the next step)" if job["status"] == "running" else "")
    )


@main.command()
@click.option("--status", "job_status", default=None)
@click.option("--limit", type=int, default=20, show_default=True)
@with_api
def jobs(job_status: str | None, limit: int, url: str, key: str | None) -> None:
    """List your jobs, newest first."""
    from easel.client import EaselApiError

    try:
        page = _client(url, key).list(status=job_status, limit=limit)
    except EaselApiError as exc:
        raise _fail(exc) from None
    for job in page["jobs"]:
        click.echo(
            f"{job['id']}  {job['status']:9}  {job['type']:7}  {job['created_at'][:19]}  "
            f"{job['params']['prompt'][:50]}"
        )


@main.group()
def keys() -> None:
    """API keys: create (shown once), list, revoke."""


@keys.command("create")
@click.argument("name")
@click.option("--admin", is_flag=True, help="May see and cancel every job.")
def keys_create(name: str, admin: bool) -> None:
    """Make a key and print it; only its hash is stored."""
    from easel.shared.db import session_scope
    from easel.web.keys import create_key

    with session_scope(get_settings().database_url) as session:
        row, key = create_key(session, name, admin)
        prefix = row.prefix
    click.echo(key)
    click.echo(
        f"# key {prefix} ({'admin' if admin else 'user'}) for {name!r}: store it now, "
        "it cannot be shown again",
        err=True,
    )


@keys.command("list")
def keys_list() -> None:
    """Every key: prefix, name, role, created, last used, revoked."""
    from sqlalchemy import select

    from easel.shared.db import session_scope
    from easel.shared.models import ApiKey

    def when(value: datetime | None) -> str:
        return value.isoformat(timespec="seconds") if value else "-"

    with session_scope(get_settings().database_url) as session:
        rows = session.scalars(select(ApiKey).order_by(ApiKey.created_at)).all()
        click.echo(f"{'PREFIX':10} {'NAME':20} {'ROLE':6} {'CREATED':25} {'LAST USED':25} REVOKED")
        for row in rows:
            click.echo(
                f"{row.prefix:10} {row.name[:20]:20} {'admin' if row.is_admin else 'user':6} "
                f"{when(row.created_at):25} {when(row.last_used_at):25} {when(row.revoked_at)}"
            )


@keys.command("revoke")
@click.argument("ref")
def keys_revoke(ref: str) -> None:
    """Revoke a key by its prefix or id; it stops working at once."""
    from easel.shared.db import session_scope
    from easel.shared.models import utcnow
    from easel.web.keys import find_key

    with session_scope(get_settings().database_url) as session:
        row = find_key(session, ref)
        if row is None:
            raise click.ClickException(f"no key with prefix or id {ref!r}")
        row.revoked_at = row.revoked_at or utcnow()
        click.echo(f"revoked {row.prefix} ({row.name})")


@main.command()
@click.option("--from", "start", default=None, help="First UTC day, YYYY-MM-DD; default: the month's first.")
@click.option("--to", "end", default=None, help="Last UTC day, YYYY-MM-DD; default: today.")
@click.option("--key", "ref", default=None, help="One key, by prefix or id; default: every key.")
def usage(start: str | None, end: str | None, ref: str | None) -> None:
    """Jobs, images and GPU-seconds per key and UTC day (the maintained totals)."""
    from easel.shared.db import session_scope
    from easel.shared.errors import ValidationFailed
    from easel.shared.usage import parse_range, report
    from easel.web.keys import find_key

    with session_scope(get_settings().database_url) as session:
        try:
            first, last = parse_range(start, end)
        except ValidationFailed as exc:
            raise click.UsageError(exc.message) from None
        owner = None
        if ref is not None:
            row = find_key(session, ref)
            owner = row.id if row is not None else ref  # a deleted key's id still has its rows
        body = report(session, first, last, owner)
    click.echo(f"{'DAY':10} {'KEY':32} {'NAME':20} {'JOBS':>8} {'IMAGES':>8} {'GPU-SECONDS':>12}")
    for day in body["days"]:
        click.echo(
            f"{day['day']:10} {day['key']:32} {(day['name'] or '-')[:20]:20} "
            f"{day['jobs']:>8} {day['images']:>8} {day['gpu_seconds']:>12.1f}"
        )
    total = body["total"]
    click.echo(
        f"{'TOTAL':10} {'':32} {first.isoformat() + '..' + last.isoformat():20} "
        f"{total['jobs']:>8} {total['images']:>8} {total['gpu_seconds']:>12.1f}"
    )


@main.group()
def models() -> None:
    """The models catalog: what the workers found in their models folders (EASEL_MODELS_DIR)."""


@models.command("list")
def models_list() -> None:
    """Every file the workers published: kind, name, family, architecture, and why a file
    is not servable."""
    from easel.shared.catalog_store import read_catalog
    from easel.shared.db import session_scope

    with session_scope(get_settings().database_url) as session:
        records = read_catalog(session)
    click.echo(f"{'KIND':11} {'NAME':40} {'FAMILY':7} {'ARCH':13} {'WORKERS':7} STATUS")
    for r in records:
        status = "available" if r.available else f"unavailable: {r.reason}"
        click.echo(
            f"{r.kind:11} {r.name[:40]:40} {r.family or '-':7} {r.architecture or '-':13} "
            f"{len(r.workers):<7} {status}"
        )


@models.command("rescan")
@click.option("--wait", "timeout", default=30.0, show_default=True, help="Seconds to wait for a worker.")
def models_rescan(timeout: float) -> None:
    """Ask every worker to rescan its models folders now, and wait until one has."""
    from easel.shared.catalog_store import read_catalog, request_rescan, wait_for_publish
    from easel.shared.db import session_scope

    url = get_settings().database_url
    with session_scope(url) as session:
        asked = request_rescan(session)
    if not wait_for_publish(lambda: session_scope(url), asked, timeout):
        raise click.ClickException(
            f"no worker rescanned within {timeout:g}s (is a worker with EASEL_MODELS_DIR running?); "
            "the request stands: workers rescan when they next look"
        )
    with session_scope(url) as session:
        records = read_catalog(session)
    usable = sum(1 for r in records if r.available)
    click.echo(f"rescanned: {len(records)} files, {usable} available, {len(records) - usable} unavailable")


@main.command()
@click.option("--dry-run", is_flag=True, help="List what is due and delete nothing.")
def prune(dry_run: bool) -> None:
    """Delete the outputs, inputs and finished job rows older than the retention
    settings (EASEL_RETENTION_*); queued and running jobs are never touched."""
    import json

    from sqlalchemy.orm import sessionmaker

    from easel.shared.db import engine_for
    from easel.shared.retention import Policy, prune
    from easel.shared.storage import storage_from_settings

    _setup_logging("WARNING")
    settings = get_settings()
    policy = Policy.from_settings(settings)

    def line(kind: str, job_id: str, objects: int) -> None:
        verb = "would prune" if dry_run else "pruned"
        click.echo(f"{verb} {kind:7} of job {job_id} ({objects} object(s))")

    report = prune(
        sessionmaker(engine_for(settings.database_url), expire_on_commit=False),
        storage_from_settings(settings),
        policy,
        dry_run=dry_run,
        on_job=line,
    )
    click.echo(json.dumps(report.as_dict()))


# Connections a gevent web process takes beyond its held calls: ordinary requests and
# health checks always find room (docs/deployment.md, "Held calls").
WEB_CONNECTION_ROOM = 256


def web_worker_args(settings: Settings) -> list[str]:
    """gunicorn's worker class arguments: gevent (a held call or an event stream costs a
    greenlet; connections for every held call plus ``WEB_CONNECTION_ROOM``) or gthread
    (a thread each)."""
    if settings.web_worker_class == "gevent":
        connections = settings.max_held_calls_per_process + WEB_CONNECTION_ROOM
        return ["--worker-class", "gevent", "--worker-connections", str(connections)]
    return ["--worker-class", "gthread", "--threads", str(settings.web_threads)]


def recycle_args(max_requests: int) -> list[str]:
    """gunicorn's ``max_requests`` with 10% jitter, so workers are not all replaced at once
    (``EASEL_WEB_MAX_REQUESTS``; none with 0)."""
    if not max_requests:
        return []
    return ["--max-requests", str(max_requests), "--max-requests-jitter", str(max(1, max_requests // 10))]


@main.command()
@click.option("--dev", is_flag=True, help="Flask's development server instead of gunicorn.")
@click.option("--host", default=None, help="Bind address (EASEL_HOST).")
@click.option("--port", type=int, default=None, help="Port (EASEL_PORT).")
@click.option("--workers", type=int, default=None, help="gunicorn workers (EASEL_WEB_WORKERS).")
def web(dev: bool, host: str | None, port: int | None, workers: int | None) -> None:
    """Serve the REST API and the pages."""
    settings = get_settings()
    host, port = host or settings.host, port or settings.port
    if dev:
        from easel.web import create_app

        _setup_logging()
        create_app(settings).run(host=host, port=port, threaded=True)
        return
    args = [
        sys.executable,
        "-m",
        "gunicorn",
        "--bind",
        f"{host}:{port}",
        "--workers",
        str(workers or settings.web_workers),
        *web_worker_args(settings),
        *recycle_args(settings.web_max_requests),
        "--access-logfile",
        "-",
        "--graceful-timeout",
        "20",
        "--config",
        "python:easel.web.gunicorn_conf",  # gunicorn's own errors in the error shape
    ]
    if settings.log_format == "json":
        args += ["--access-logformat", ACCESS_LOG_JSON]
    os.execv(sys.executable, [*args, "easel.web.wsgi:app"])


@main.command()
@click.option(
    "--models", default=None, help="Comma-separated models to serve (EASEL_WORKER_MODELS); default all."
)
@click.option("--loglevel", default="INFO", show_default=True)
def worker(models: str | None, loglevel: str) -> None:
    """Run a GPU worker: one process that claims batches back to back while its models
    have queued jobs, woken by the broker when idle."""
    settings = get_settings()
    _setup_logging(loglevel)
    setup_tracing("easel-worker", settings.otlp_endpoint)
    from easel.shared.queue import broker_wakes_workers, queue_name, send_wakeup, send_webhook
    from easel.shared.registry import ModelSource, Registry, load_registry
    from easel.worker.engine.device import detect
    from easel.worker.process import WorkerProcess, served_models
    from easel.worker.tasks import make_gpu_app, make_webhook_app

    if models is not None:
        settings = settings.model_copy(update={"worker_models": models})
    registry = load_registry(settings)
    plan = detect(settings.device)
    if not plan.is_cuda and settings.cpu_threads:
        import torch

        torch.set_num_threads(settings.cpu_threads)
    senders = make_webhook_app(settings)  # publishes wake-ups and webhooks; consumes nothing here
    process = WorkerProcess.build(
        settings,
        registry,
        served_models(settings, registry),
        plan,
        publish=lambda job_id, model: send_wakeup(senders, job_id, model),
        notify=lambda job_id, event="completed": send_webhook(senders, job_id, event),
    )
    app = make_gpu_app(settings, process.wake)
    hostname = f"easel-{os.getpid()}@{socket.gethostname()}"
    catalog = None
    if settings.models_roots:  # the models folders join the registry, now and at each rescan
        from easel.worker.catalog_sync import catalog_sync

        consuming: list[bool] = []  # set once the Celery worker consumes its queues

        def serve(found: Registry) -> None:
            added = process.serve(found)
            if added and consuming and broker_wakes_workers(settings.broker_url):  # their wake-ups too
                for name in added:
                    app.control.add_consumer(queue_name(name), destination=[hostname], reply=False)

        catalog = catalog_sync(settings, registry, process.heartbeat.worker_id, serve)
        catalog.scan()  # before the queues are chosen: the models found now are among them
        consuming.append(True)
    for name in settings.served_models:  # unknown names fail here, before the worker starts
        process.registry.get(name)
    for spec in (process.registry.get(name) for name in process.models if name in process.registry):
        if spec.source is ModelSource.TINY:
            from easel.worker.engine.tiny_model import ensure_tiny_model

            ensure_tiny_model(Path(spec.location))
    served = process.models
    process.start()
    if catalog is not None:
        catalog.start()
    try:
        app.worker_main(
            [
                "worker",
                "--queues",
                ",".join(queue_name(name) for name in served),
                "--pool",
                "solo",
                "--prefetch-multiplier",
                "1",
                "--hostname",
                hostname,
                "--loglevel",
                loglevel,
                "--without-gossip",
                "--without-mingle",
            ]
        )
    finally:
        if catalog is not None:
            catalog.stop()
        process.stop(timeout=settings.task_soft_time_limit)


@main.command()
@click.option("--loglevel", default="INFO", show_default=True)
def webhooks(loglevel: str) -> None:
    """Deliver webhooks (threads; never holds a GPU). Needs EASEL_WEBHOOK_SECRET."""
    settings = get_settings()
    _setup_logging(loglevel)
    setup_tracing("easel-webhooks", settings.otlp_endpoint)
    from easel.shared.queue import WEBHOOK_QUEUE
    from easel.worker import metrics as worker_metrics
    from easel.worker.tasks import make_webhook_app

    if settings.metrics_port:  # easel_webhook_deliveries_total, per sender
        worker_metrics.init_webhook_series()
        try:
            worker_metrics.start_server(settings.metrics_port)
        except OSError:  # a taken port must not keep webhooks from going out
            click.echo(f"could not serve metrics on port {settings.metrics_port}", err=True)
    make_webhook_app(settings).worker_main(
        [
            "worker",
            "--queues",
            WEBHOOK_QUEUE,
            "--pool",
            "threads",
            "--concurrency",
            str(settings.webhook_concurrency),
            "--prefetch-multiplier",
            "4",
            "--hostname",
            f"easel-webhooks-{os.getpid()}@%h",
            "--loglevel",
            loglevel,
            "--without-gossip",
            "--without-mingle",
        ]
    )


@main.command()
def run() -> None:
    """Migrate, then run web, one worker and the webhook sender, restarting whichever dies
    (Ctrl-C stops them)."""
    _setup_logging()
    settings = get_settings()
    settings.ensure_home()
    from easel.migrations.upgrade import upgrade

    upgrade(settings.database_url)
    from easel.supervisor import Child, Supervisor

    easel = [sys.executable, "-m", "easel"]
    supervisor = Supervisor(
        [Child(name, [*easel, name]) for name in ("worker", "webhooks", "web")],
        min_backoff=settings.restart_backoff_seconds,
    )
    click.echo(f"Easel on http://{settings.host}:{settings.port} (state in {settings.home}); Ctrl-C stops")
    supervisor.run()


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


if __name__ == "__main__":
    main()

"""The ``easel`` command: web, worker, migrate, and ``run`` for the one-command laptop setup."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import click

from shared.settings import get_settings


def _setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@click.group()
@click.version_option(package_name="easel-server")
def main() -> None:
    """Easel: asynchronous image-generation jobs."""


@main.command()
def migrate() -> None:
    """Create or upgrade the database schema (Alembic, to head)."""
    from shared.migrate import upgrade

    _setup_logging()
    settings = get_settings()
    settings.ensure_home()
    upgrade(settings.database_url)
    click.echo(f"database at head: {_safe_url(settings.database_url)}")


@main.group()
def keys() -> None:
    """API keys: create (shown once), list, revoke."""


@keys.command("create")
@click.argument("name")
@click.option("--admin", is_flag=True, help="May see and cancel every job.")
def keys_create(name: str, admin: bool) -> None:
    """Make a key and print it; only its hash is stored."""
    from shared.db import session_scope
    from shared.keys import create_key

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

    from shared.db import session_scope
    from shared.models import ApiKey

    def when(value: object) -> str:
        return value.isoformat(timespec="seconds") if value else "-"  # type: ignore[attr-defined]

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
    from shared.db import session_scope
    from shared.keys import find_key
    from shared.models import utcnow

    with session_scope(get_settings().database_url) as session:
        row = find_key(session, ref)
        if row is None:
            raise click.ClickException(f"no key with prefix or id {ref!r}")
        row.revoked_at = row.revoked_at or utcnow()
        click.echo(f"revoked {row.prefix} ({row.name})")


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
        from web import create_app

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
        "--worker-class",
        "gthread",
        "--threads",
        "4",
        "--access-logfile",
        "-",
        "--graceful-timeout",
        "20",
        "web.wsgi:app",
    ]
    os.execv(sys.executable, args)


@main.command()
@click.option(
    "--models", default=None, help="Comma-separated models to serve (EASEL_WORKER_MODELS); default all."
)
@click.option("--loglevel", default="INFO", show_default=True)
def worker(models: str | None, loglevel: str) -> None:
    """Run a GPU worker: one process, concurrency 1, prefetch 1, acks late."""
    if models is not None:
        os.environ["EASEL_WORKER_MODELS"] = models
        get_settings.cache_clear()
    settings = get_settings()
    _setup_logging(loglevel)
    from shared.queue import queue_name
    from shared.registry import ModelSource, load_registry

    registry = load_registry(settings)
    served = settings.served_models or registry.names()
    for name in served:
        spec = registry.get(name)  # unknown names fail here, before the worker starts
        if spec.source is ModelSource.TINY:
            from worker.engine.tiny_model import ensure_tiny_model

            ensure_tiny_model(Path(spec.location))
    from worker import tasks
    from worker.celery_app import app

    tasks.GPU_ROLE["enabled"] = True
    queues = ",".join(queue_name(name) for name in served)
    app.worker_main(
        [
            "worker",
            "--queues",
            queues,
            "--concurrency",
            "1",
            "--prefetch-multiplier",
            "1",
            "--hostname",
            f"easel-{os.getpid()}@%h",
            "--loglevel",
            loglevel,
            "--without-gossip",
            "--without-mingle",
        ]
    )


@main.command()
@click.option("--loglevel", default="INFO", show_default=True)
def webhooks(loglevel: str) -> None:
    """Deliver webhooks (threads; never holds a GPU). Needs EASEL_WEBHOOK_SECRET."""
    settings = get_settings()
    _setup_logging(loglevel)
    from shared.queue import WEBHOOK_QUEUE
    from worker.celery_app import app

    app.worker_main(
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
    """Migrate, then run web, one worker and the webhook sender (Ctrl-C stops them)."""
    _setup_logging()
    settings = get_settings()
    settings.ensure_home()
    from shared.migrate import upgrade

    upgrade(settings.database_url)
    easel = [sys.executable, "-m", "shared.cli"]
    children = [
        subprocess.Popen([*easel, "worker"]),
        subprocess.Popen([*easel, "webhooks"]),
        subprocess.Popen([*easel, "web"]),
    ]
    click.echo(f"Easel on http://{settings.host}:{settings.port} (state in {settings.home}); Ctrl-C stops")
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    while not stopping and all(child.poll() is None for child in children):
        time.sleep(0.2)
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for child in children:
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
    sys.exit(0 if stopping else 1)


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


if __name__ == "__main__":
    main()

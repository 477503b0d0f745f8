"""Helpers for tests that run real services and real processes."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get("EASEL_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll ``condition`` until it returns a truthy value; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except Exception as exc:  # not ready yet
            last_error = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what} (last error: {last_error})")


@dataclass
class Process:
    """A child process with its output in a log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        if self.popen.poll() is not None:
            return
        try:
            os.killpg(self.popen.pid, sig)
        except ProcessLookupError:
            return
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=10)


def start_process(name: str, args: list[str], env: dict[str, str], log_dir: Path) -> Process:
    log_path = log_dir / f"{name}.log"
    handle = log_path.open("wb")
    popen = subprocess.Popen(
        args, env=env, stdout=handle, stderr=subprocess.STDOUT, cwd=str(ROOT), start_new_session=True
    )
    return Process(name, popen, log_path)


def easel(*args: str) -> list[str]:
    return [sys.executable, "-m", "easel.cli", *args]


@dataclass
class Stack:
    """Real ``easel web`` and ``easel worker`` processes sharing one configuration."""

    env: dict[str, str]
    workdir: Path
    port: int = field(default_factory=free_port)
    processes: list[Process] = field(default_factory=list)
    api_key: str | None = None
    http: requests.Session = field(default_factory=requests.Session)

    def create_key(self, name: str = "tests", admin: bool = False) -> str:
        """A key made with `easel keys create`, used for every request of this stack."""
        args = ["keys", "create", name, *(["--admin"] if admin else [])]
        result = subprocess.run(
            easel(*args), env=self.env, check=True, cwd=str(ROOT), capture_output=True, text=True
        )
        key = result.stdout.strip().splitlines()[0]
        if self.api_key is None:
            self.api_key = key
            self.http.headers["Authorization"] = f"Bearer {key}"
        return key

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def migrate(self) -> None:
        subprocess.run(easel("migrate"), env=self.env, check=True, cwd=str(ROOT), capture_output=True)

    def start_web(self) -> Process:
        env = {**self.env, "EASEL_PORT": str(self.port), "EASEL_WEB_WORKERS": "2"}
        process = start_process("web", easel("web"), env, self.workdir)
        self.processes.append(process)
        wait_for(
            lambda: requests.get(self.base_url + "/readyz", timeout=2).ok,
            60,
            f"web on {self.base_url}: {process.log()[-2000:]}",
        )
        return process

    def start_worker(self, name: str = "worker", extra_env: dict[str, str] | None = None) -> Process:
        env = {**self.env, **(extra_env or {})}
        process = start_process(name, easel("worker"), env, self.workdir)
        self.processes.append(process)
        wait_for(
            lambda: " ready." in process.log() or process.popen.poll() is not None, 120, f"{name} to start"
        )
        assert process.popen.poll() is None, f"{name} exited:\n{process.log()[-3000:]}"
        return process

    def start_webhooks(self) -> Process:
        process = start_process("webhooks", easel("webhooks"), self.env, self.workdir)
        self.processes.append(process)
        wait_for(
            lambda: " ready." in process.log() or process.popen.poll() is not None, 60, "webhooks to start"
        )
        assert process.popen.poll() is None, f"webhooks exited:\n{process.log()[-3000:]}"
        return process

    def worker_log(self) -> str:
        return "".join(p.log() for p in self.processes if p.name.startswith("worker"))

    def download(self, url: str) -> requests.Response:
        """An output or input, following the redirect to a presigned URL when storage is S3."""
        response = self.http.get(url, timeout=10)
        response.raise_for_status()
        return response

    def cancel(self, job_id: str) -> requests.Response:
        return self.http.post(f"{self.base_url}/api/v1/jobs/{job_id}/cancel", timeout=10)

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()

    def logs(self) -> str:
        return "\n".join(f"===== {p.name} =====\n{p.log()[-4000:]}" for p in self.processes)

    # -- REST helpers --------------------------------------------------------------------

    def submit(self, **fields: Any) -> dict[str, Any]:
        response = self.http.post(self.base_url + "/api/v1/jobs", json=fields, timeout=10)
        assert response.status_code == 202, response.text
        return response.json()

    def job(self, job_id: str) -> dict[str, Any]:
        response = self.http.get(f"{self.base_url}/api/v1/jobs/{job_id}", timeout=10)
        response.raise_for_status()
        return response.json()

    def wait(
        self,
        job_id: str,
        timeout: float = 120,
        statuses: tuple[str, ...] = ("succeeded", "failed", "canceled"),
    ) -> dict[str, Any]:
        try:
            return wait_for(
                lambda: (job := self.job(job_id))["status"] in statuses and job,
                timeout,
                f"job {job_id} to reach {statuses}",
                interval=0.2,
            )
        except TimeoutError:
            raise AssertionError(f"job {job_id} stuck: {self.job(job_id)}\n{self.logs()}") from None


def base_env(home: Path, **overrides: str) -> dict[str, str]:
    """The environment of a child process: no inherited EASEL_ settings, offline."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EASEL_")}
    env.update(
        {
            "EASEL_HOME": str(home),
            "HF_HUB_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
            "TRANSFORMERS_VERBOSITY": "error",
        }
    )
    env.update(overrides)
    return env


def install_tiny_model(prebuilt: Path, home: Path) -> None:
    """Copy a prebuilt tiny-sd into ``home`` so a stack does not build its own."""
    target = home / "models" / "tiny-sd"
    if not target.exists():
        shutil.copytree(prebuilt, target)


@contextmanager
def claimed_redis_db() -> Iterator[str]:
    """A Redis database number of the shared server claimed for this holder alone.

    The claim is a lock key in database 0; the claimed database is emptied before
    and after use, so no run sees another's leftovers.
    """
    import redis

    lock = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=0)
    token = uuid.uuid4().hex
    number = next(
        (n for n in range(1, 16) if lock.set(f"easel-test-lock:{n}", token, nx=True, ex=6 * 3600)), None
    )
    if number is None:
        raise RuntimeError("every Redis database 1-15 is claimed by another test run")
    ours = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=number)
    ours.flushdb()
    try:
        yield f"redis://{REDIS_HOST}:{REDIS_PORT}/{number}"
    finally:
        ours.flushdb()
        if lock.get(f"easel-test-lock:{number}") == token.encode():
            lock.delete(f"easel-test-lock:{number}")


def unique_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


@contextmanager
def temporary_database(prefix: str) -> Iterator[str]:
    """A new database on the shared PostgreSQL server: its URL; dropped afterwards
    (connections still open to it are ended first)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = unique_name(prefix)
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                conn.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = :name AND pid <> pg_backend_pid()"
                    ),
                    {"name": name},
                )
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
    finally:
        admin.dispose()

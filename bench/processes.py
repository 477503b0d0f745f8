"""Real ``easel`` processes for the benchmarks and the tests: start them, wait on them,
talk to them, stop them.

The tests import this module too (``bench`` never imports ``tests``).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent

# A worker that dies is noticed within seconds; one CPU thread each, for two workers on two
# cores; no keys. The crash tests, the reliability tests and the chaos benchmark run on it.
FAST_RECOVERY_SETTINGS = {
    "EASEL_HEARTBEAT_SECONDS": "0.5",
    "EASEL_WORKER_LOST_AFTER_SECONDS": "3",
    "EASEL_AUTH_ENABLED": "false",
    "EASEL_CPU_THREADS": "1",
}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll ``condition`` until it returns a truthy value (which is returned); raise
    ``TimeoutError`` naming ``what`` after ``timeout`` seconds."""
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
    """A child process (in a session of its own) with its output in a log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def running(self) -> bool:
        return self.popen.poll() is None

    def cpu_seconds(self) -> float:
        """CPU seconds (user + system) its live process group has used: the process and
        the children it started, such as gunicorn's workers (Linux ``/proc``)."""
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0.0
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:  # gone meanwhile
                continue
            fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
            if int(fields[2]) == self.popen.pid:  # process group: the session leader's pid
                total += (int(fields[11]) + int(fields[12])) / ticks
        return total

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        """``sig`` to the whole process group, then SIGKILL after ``timeout`` seconds."""
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
    """``args`` in the repository root, its output in ``log_dir/<name>.log``."""
    log_path = log_dir / f"{name}.log"
    handle = log_path.open("wb")
    popen = subprocess.Popen(
        args, env=env, stdout=handle, stderr=subprocess.STDOUT, cwd=str(ROOT), start_new_session=True
    )
    return Process(name, popen, log_path)


def easel(*args: str) -> list[str]:
    """The command line of ``easel <args>`` with this interpreter."""
    return [sys.executable, "-m", "easel.cli", *args]


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


TINY_SD_JOB: dict[str, Any] = {
    "model": "tiny-sd",
    "negative_prompt": "",
    "width": 64,
    "height": 64,
    "steps": 4,
    "guidance_scale": 7.5,
    "scheduler": "euler",
}
"""A small tiny-sd image, all but the job's type, prompt and seed: the made-up jobs of the
tests and of the scale benchmark's history."""


@dataclass
class Stack:
    """Real ``easel web`` and ``easel worker`` processes sharing one configuration."""

    env: dict[str, str]
    workdir: Path
    port: int = field(default_factory=free_port)
    processes: list[Process] = field(default_factory=list)
    api_key: str | None = None
    http: requests.Session = field(default_factory=requests.Session)
    web_workers: int = 2

    def create_key(self, name: str = "tests", admin: bool = False) -> str:
        """A key made with `easel keys create`; the first one rides on every request of this stack."""
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

    def live_worker_pid(self) -> int | None:
        """The pid of the worker process that beats now (worker ids are ``host:pid:token``),
        or None when none is registered or that process has gone."""
        from sqlalchemy import create_engine, text

        engine = create_engine(self.env["EASEL_DATABASE_URL"])
        try:
            with engine.connect() as conn:
                row = conn.execute(
                    text("SELECT id FROM workers WHERE stopped_at IS NULL ORDER BY started_at DESC LIMIT 1")
                ).first()
        finally:
            engine.dispose()
        if row is None:
            return None
        pid = int(row[0].split(":")[1])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        return pid

    def migrate(self) -> None:
        subprocess.run(easel("migrate"), env=self.env, check=True, cwd=str(ROOT), capture_output=True)

    def start(self, name: str, args: list[str], extra_env: dict[str, str] | None = None) -> Process:
        """``args`` with this stack's environment (plus ``extra_env``), stopped by ``stop``."""
        process = start_process(name, args, {**self.env, **(extra_env or {})}, self.workdir)
        self.processes.append(process)
        return process

    def _until_ready(self, process: Process, timeout: float) -> Process:
        """Wait for the `` ready.`` line of ``process``; fail with its log if it exits first."""
        wait_for(
            lambda: " ready." in process.log() or not process.running(), timeout, f"{process.name} to start"
        )
        if not process.running():
            raise RuntimeError(f"{process.name} exited:\n{process.log()[-3000:]}")
        return process

    def start_web(self) -> Process:
        """``easel web`` with ``web_workers`` gunicorn processes, once ``/readyz`` answers."""
        extra = {"EASEL_PORT": str(self.port), "EASEL_WEB_WORKERS": str(self.web_workers)}
        process = self.start("web", easel("web"), extra)
        try:
            wait_for(
                lambda: not process.running() or requests.get(self.base_url + "/readyz", timeout=2).ok,
                90,
                f"web on {self.base_url}",
            )
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}:\n{process.log()[-3000:]}") from None
        if not process.running():
            raise RuntimeError(f"web exited:\n{process.log()[-3000:]}")
        return process

    def start_worker(
        self, name: str = "worker", extra_env: dict[str, str] | None = None, args: tuple[str, ...] = ()
    ) -> Process:
        """``easel worker <args>``, once it says it is ready."""
        return self._until_ready(self.start(name, easel("worker", *args), extra_env), 120)

    def running(self, worker: bool = False, webhooks: bool = False) -> Iterator[Stack]:
        """For a fixture, ``yield from stack.running(...)``: this stack with web started (and
        one worker, and the webhook sender, where asked); stopped when the fixture ends or a
        start fails."""
        try:
            self.start_web()
            if worker:
                self.start_worker()
            if webhooks:
                self.start_webhooks()
            yield self
        finally:
            self.stop()

    def start_webhooks(self) -> Process:
        """``easel webhooks``, once it says it is ready."""
        return self._until_ready(self.start("webhooks", easel("webhooks")), 60)

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
        if response.status_code != 202:
            raise AssertionError(f"submit answered {response.status_code}: {response.text}")
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
        """The job once its status is one of ``statuses``; an AssertionError with every
        process log after ``timeout`` seconds."""
        try:
            return wait_for(
                lambda: (job := self.job(job_id))["status"] in statuses and job,
                timeout,
                f"job {job_id} to reach {statuses}",
                interval=0.2,
            )
        except TimeoutError:
            raise AssertionError(f"job {job_id} stuck: {self.job(job_id)}\n{self.logs()}") from None

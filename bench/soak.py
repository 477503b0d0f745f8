"""A soak run: many mixed jobs through the whole stack, each process's resources per
1,000 jobs.

    python -m bench.soak --jobs 3000 --every 1000

One stack on PostgreSQL, Redis and an S3 endpoint (moto): ``easel web`` (gunicorn,
``EASEL_WEB_WORKERS=2``), one worker and the webhook sender. Clients submit a steady mix
of tiny-sd jobs, 64x64 and 2 steps: txt2img, img2img and inpaint, some with a webhook,
some canceled at once, some followed over their event stream, some held with ``Prefer:
wait``, some through the OpenAI API, with ``--clients`` parallel clients, until
``--jobs`` have finished. After a warm-up of ``--every`` jobs and then every ``--every``
jobs, each process is read from ``/proc``: resident memory (MB), open file descriptors
and threads, for the gunicorn master and each of its workers, the worker and the webhook
sender.

Prints one JSON object: the samples, and per process the growth per 1,000 jobs after
the warm-up (the least-squares slope of resident memory); with ``--web-max-requests`` the
web workers recycle (gunicorn's ``max_requests`` with 10% jitter) and the samples follow
the new pids. Also the jobs by final status (none may be left queued or running).
"""

from __future__ import annotations

import base64
import io
import os
import random
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests
from PIL import Image

from bench._stack import (
    NO_LIMITS,
    add_stack_arguments,
    bench_parser,
    build_tiny_model,
    easel_stack,
    emit,
    exit_cleanly_on_sigterm,
    progress,
    services,
)
from bench.processes import Process, Stack

SMALL = {"width": 64, "height": 64, "steps": 2}
TERMINAL = {"succeeded", "failed", "canceled"}


def png(color: tuple[int, int, int], mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (64, 64), color).save(buffer, format="PNG")
    return buffer.getvalue()


def children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (Linux ``/proc``)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
                found.append(int(entry.name))
    return sorted(found)


def resources(pid: int) -> dict[str, float] | None:
    """Resident MB, open descriptors and threads of ``pid``; None once it is gone."""
    try:
        status = dict(
            line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
        )
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    return {
        "rss_mb": round(int(status["VmRSS"].split()[0]) / 1024, 1),
        "fds": fds,
        "threads": int(status["Threads"]),
    }


def sample(processes: dict[str, Process]) -> dict[str, dict[str, float]]:
    """Resources of every process; gunicorn's workers as ``web-<pid>``."""
    out: dict[str, dict[str, float]] = {}
    for name, process in processes.items():
        found = resources(process.popen.pid)
        if found is not None:
            out[name if name != "web" else "web-master"] = found
        if name == "web":
            for pid in children(process.popen.pid):
                child = resources(pid)
                if child is not None:
                    out[f"web-{pid}"] = child
    return out


class Client(threading.Thread):
    """Submits the mix until told to stop; counts what it did."""

    def __init__(self, stack: Stack, hook: str, seed: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.stack, self.hook, self.stop = stack, hook, stop
        self.random = random.Random(seed)
        self.session = requests.Session()
        self.session.headers.update(stack.http.headers)
        self.ids: list[str] = []
        self.errors: list[str] = []
        self.image = base64.b64encode(png((200, 40, 40))).decode()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.one()
            except Exception as exc:  # counted, and the soak goes on
                self.errors.append(f"{type(exc).__name__}: {exc}"[:300])
                self.stop.wait(0.2)

    def one(self) -> None:
        base = self.stack.base_url
        roll = self.random.random()
        prompt = f"soak {self.random.randrange(10**6)}"
        if roll < 0.1:  # OpenAI, held until done
            answer = self.session.post(
                f"{base}/v1/images/generations",
                json={"prompt": prompt, "size": "64x64", "steps": 2, "response_format": "url"},
                timeout=120,
            )
            answer.raise_for_status()
            self.ids.append(answer.headers.get("Easel-Job-Id", ""))
            return
        fields: dict[str, Any] = {"prompt": prompt, **SMALL}
        files: dict[str, tuple[str, bytes, str]] = {}
        if roll < 0.3:
            fields["type"] = "img2img"
            files["image"] = ("image.png", png((30, 120, 200)), "image/png")
        elif roll < 0.4:
            fields["type"] = "inpaint"
            files["image"] = ("image.png", png((30, 120, 200)), "image/png")
            files["mask"] = ("mask.png", png((255,), "L"), "image/png")
        if self.random.random() < 0.2:
            fields["webhook_url"] = self.hook
        headers = {"Prefer": "wait=30"} if self.random.random() < 0.1 else {}
        if files:
            answer = self.session.post(
                f"{base}/api/v1/jobs",
                data={k: str(v) for k, v in fields.items()},
                files=files,
                headers=headers,
                timeout=60,
            )
        else:
            answer = self.session.post(f"{base}/api/v1/jobs", json=fields, headers=headers, timeout=60)
        answer.raise_for_status()
        job_id = answer.json()["id"]
        self.ids.append(job_id)
        follow = self.random.random()
        if follow < 0.05:
            self.session.post(f"{base}/api/v1/jobs/{job_id}/cancel", timeout=30)
        elif follow < 0.15:  # its event stream to the end
            with self.session.get(f"{base}/api/v1/jobs/{job_id}/events", stream=True, timeout=120) as events:
                for line in events.iter_lines():
                    if line == b"event: done":
                        break
        else:
            self.session.get(f"{base}/api/v1/jobs/{job_id}", timeout=30)


class Accept(BaseHTTPRequestHandler):
    """A webhook receiver on loopback that answers every delivery 200."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return


def finished_count(stack: Stack) -> dict[str, int]:
    from sqlalchemy import create_engine, text

    engine = create_engine(stack.env["EASEL_DATABASE_URL"])
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT status, count(*) FROM jobs GROUP BY status")).all()
    finally:
        engine.dispose()
    return {status: int(count) for status, count in rows}


def slope(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of ``(x, y)`` points."""
    if len(points) < 2:
        return None
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / spread if spread else None


def main(argv: list[str] | None = None) -> None:
    parser = bench_parser("python -m bench.soak", __doc__)
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--every", type=int, default=1000, help="jobs between samples")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--web-max-requests", type=int, default=0, help="EASEL_WEB_MAX_REQUESTS (0: never)")
    parser.add_argument(
        "--web-worker-class", choices=("gevent", "gthread"), default="gevent", help="EASEL_WEB_WORKER_CLASS"
    )
    add_stack_arguments(parser, timeout=3600)
    args = parser.parse_args(argv)
    exit_cleanly_on_sigterm()
    model = build_tiny_model(Path(tempfile.gettempdir()) / "easel-bench-models")
    settings = {
        **NO_LIMITS,
        "EASEL_WEBHOOK_SECRET": "whsec_" + base64.b64encode(b"soak-secret-soak-secret!").decode(),
        "EASEL_WEBHOOK_ALLOW_PRIVATE": "true",
        "EASEL_CPU_THREADS": "1",
        "EASEL_PREVIEW_INTERVAL_SECONDS": "0.2",
        "EASEL_WEB_MAX_REQUESTS": str(args.web_max_requests),
        "EASEL_WEB_WORKER_CLASS": args.web_worker_class,
    }
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), Accept)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    hook = f"http://127.0.0.1:{receiver.server_address[1]}/soak"
    samples: list[dict[str, Any]] = []
    with (
        services(private=args.private_servers, embedded=args.embedded) as found,
        easel_stack(found, settings, model, keep=args.keep) as stack,
    ):
        stack.start_web()
        stack.start_worker()
        stack.start_webhooks()
        stack.create_key("soak")
        processes = {p.name: p for p in stack.processes}
        stop = threading.Event()
        clients = [Client(stack, hook, n, stop) for n in range(args.clients)]
        for client in clients:
            client.start()
        deadline = time.monotonic() + args.timeout
        next_sample = args.every
        try:
            while time.monotonic() < deadline:
                counts = finished_count(stack)
                done = sum(counts.get(s, 0) for s in TERMINAL)
                if done >= next_sample:
                    samples.append({"jobs": done, "processes": sample(processes)})
                    progress(f"{done} jobs finished: {samples[-1]['processes']}")
                    next_sample += args.every
                if done >= args.jobs:
                    break
                time.sleep(1.0)
        finally:
            stop.set()
            for client in clients:
                client.join(timeout=150)
        drain = time.monotonic() + 300
        while time.monotonic() < drain:
            counts = finished_count(stack)
            if not counts.get("queued") and not counts.get("running"):
                break
            time.sleep(1.0)
    receiver.shutdown()
    growth: dict[str, float | None] = {}
    if len(samples) >= 2:
        for name in samples[-1]["processes"]:
            points = [(s["jobs"], s["processes"][name]["rss_mb"]) for s in samples if name in s["processes"]]
            per_job = slope(points)
            growth[name] = round(per_job * 1000, 2) if per_job is not None else None
    emit(
        {
            "jobs_by_status": counts,
            "client_errors": [e for client in clients for e in client.errors][:20],
            "samples": samples,
            "rss_mb_growth_per_1000_jobs": growth,
            "web_max_requests": args.web_max_requests,
            "web_worker_class": args.web_worker_class,
        }
    )


if __name__ == "__main__":
    main()

"""The Python client and the `easel submit/status/cancel/jobs` CLI against real processes."""

from __future__ import annotations

import io
import json
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image
from werkzeug.serving import make_server

from bench.processes import ROOT, Stack, easel
from easel.client import EaselApiError, EaselClient, JobTimeout
from easel.migrations.upgrade import upgrade
from easel.shared.db import session_scope
from easel.shared.settings import Settings
from easel.web import create_app
from easel.web.keys import create_key
from easel.worker.pngmeta import read_parameters
from tests.factories import box_mask, encode, gradient

pytestmark = pytest.mark.slow


@pytest.fixture
def client(services_stack: Stack) -> EaselClient:
    return EaselClient(services_stack.base_url, services_stack.api_key)


def test_submit_wait_with_progress_and_download(client: EaselClient, tmp_path: Path) -> None:
    job = client.submit(
        "client test", width=512, height=512, steps=30, seed=9, scheduler="euler", num_images=2
    )
    seen: list[tuple[str, int]] = []
    done = client.wait(
        job["id"],
        timeout=120,
        interval=0.1,
        on_progress=lambda j: seen.append((j["status"], j["progress"]["step"])),
    )
    assert done["status"] == "succeeded"
    steps = [step for status, step in seen if status == "running"]
    assert any(0 < step < 30 for step in steps), seen
    paths = client.download(done, tmp_path)
    assert [p.name for p in paths] == [f"{job['id']}-0.png", f"{job['id']}-1.png"]
    assert [read_parameters(p.read_bytes())["seed"] for p in paths] == [9, 10]


def test_inpaint_from_paths_list_and_cancel(client: EaselClient, tmp_path: Path) -> None:
    (tmp_path / "in.png").write_bytes(encode(gradient()))
    (tmp_path / "mask.png").write_bytes(encode(box_mask()))
    job = client.submit(
        "patch", type="inpaint", image=tmp_path / "in.png", mask=tmp_path / "mask.png", steps=3
    )
    assert client.wait(job["id"], timeout=120)["status"] == "succeeded"
    assert job["id"] in [j["id"] for j in client.list(limit=100)["jobs"]]
    long = client.submit("long", width=512, height=512, steps=150)
    with pytest.raises(JobTimeout):
        client.wait(long["id"], timeout=0.5)
    assert client.cancel(long["id"])["cancel_requested"] is True
    assert client.wait(long["id"], timeout=120)["status"] == "canceled"


def test_errors_carry_the_error_shape(client: EaselClient) -> None:
    with pytest.raises(EaselApiError) as info:
        client.submit("bad", width=100)
    assert info.value.status == 422 and info.value.code == "validation_error"
    assert info.value.details[0]["field"] == "width"
    with pytest.raises(EaselApiError) as info:
        EaselClient(client.url, "easel_bad_key").list()
    assert info.value.status == 401


def test_429_is_retried_honouring_retry_after(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, submit_rate_limit="2/second", rate_limit="1000/minute")
    upgrade(settings.database_url)
    with session_scope(settings.database_url) as session:
        key = create_key(session, "eager")[1]
    server = make_server("127.0.0.1", 0, create_app(settings), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        client = EaselClient(f"http://127.0.0.1:{server.server_port}", key, max_retries=5)
        ids = {client.submit(f"p{i}", width=64, height=64)["id"] for i in range(5)}  # 3 of them meet a 429
        assert len(ids) == 5
    finally:
        server.shutdown()


class Flaky503(BaseHTTPRequestHandler):
    answers: list[int] = []

    def do_GET(self) -> None:
        status = self.answers.pop(0) if self.answers else 200
        body = json.dumps(
            {"error": {"code": "database_unavailable", "message": "down", "details": []}}
            if status == 503
            else {"jobs": [], "next_cursor": None}
        ).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Retry-After", "0")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def flaky_server() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Flaky503)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


def test_503_is_retried_then_reported(flaky_server: ThreadingHTTPServer) -> None:
    url = f"http://127.0.0.1:{flaky_server.server_port}"
    Flaky503.answers = [503, 503]
    assert EaselClient(url, "k").list() == {"jobs": [], "next_cursor": None}
    Flaky503.answers = [503] * 10
    with pytest.raises(EaselApiError) as info:
        EaselClient(url, "k", max_retries=2).list()
    assert info.value.status == 503 and info.value.code == "database_unavailable"


def test_cli_submit_wait_out_status_and_jobs(services_stack: Stack, tmp_path: Path) -> None:
    env = {
        **services_stack.env,
        "EASEL_API_URL": services_stack.base_url,
        "EASEL_API_KEY": services_stack.api_key,
    }
    out = tmp_path / "out"
    result = subprocess.run(
        easel(
            "submit",
            "a cli lighthouse",
            "--width",
            "64",
            "--height",
            "96",
            "--steps",
            "6",
            "--seed",
            "4",
            "--num-images",
            "2",
            "--wait",
            "--out",
            str(out),
        ),
        env=env,
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    job_id, files = lines[0], [Path(line) for line in lines[1:]]
    assert (
        sorted(p.name for p in out.iterdir())
        == [f"{job_id}-0.png", f"{job_id}-1.png"]
        == [p.name for p in files]
    )
    for path, seed in zip(sorted(files), (4, 5), strict=True):
        assert Image.open(io.BytesIO(path.read_bytes())).size == (64, 96)
        assert read_parameters(path.read_bytes())["seed"] == seed
    assert "denoising" in result.stderr and "succeeded" in result.stderr
    status = subprocess.run(easel("status", job_id), env=env, cwd=str(ROOT), capture_output=True, text=True)
    assert json.loads(status.stdout)["status"] == "succeeded"
    listing = subprocess.run(
        easel("jobs", "--limit", "100"), env=env, cwd=str(ROOT), capture_output=True, text=True
    )
    assert job_id in listing.stdout
    bad = subprocess.run(
        easel("submit", "x", "--width", "100"), env=env, cwd=str(ROOT), capture_output=True, text=True
    )
    assert bad.returncode != 0 and "width" in bad.stderr and "multiple of 8" in bad.stderr
    canceled = subprocess.run(easel("cancel", job_id), env=env, cwd=str(ROOT), capture_output=True, text=True)
    assert canceled.returncode != 0 and "409" in canceled.stderr

"""`easel run` (what `make run` calls): migrate, build the model, serve web + worker, Ctrl-C stops."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import requests

from bench.processes import Stack, base_env, easel, free_port, start_process, wait_for

pytestmark = pytest.mark.slow


@pytest.mark.timeout(300)
def test_easel_run_serves_a_job_on_embedded_defaults_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    port = free_port()
    env = base_env(tmp_path / "var", EASEL_PORT=str(port), EASEL_AUTH_ENABLED="false")  # as `make run` does
    process = start_process("run", easel("run"), env, tmp_path)
    stack = Stack(env=env, workdir=tmp_path, port=port, processes=[process])
    try:
        wait_for(lambda: requests.get(stack.base_url + "/readyz", timeout=2).ok, 90, "web")
        job = stack.wait(stack.submit(prompt="hello", width=64, height=64, steps=3)["id"], timeout=180)
        assert job["status"] == "succeeded", process.log()[-3000:]
        image = requests.get(job["outputs"][0]["url"], timeout=10)
        assert image.headers["Content-Type"] == "image/png"
        home = tmp_path / "var"
        assert (home / "easel.db").exists() and (home / "models" / "tiny-sd" / "model_index.json").exists()
        assert (home / "outputs" / "jobs" / job["id"] / "0.png").read_bytes() == image.content
    finally:
        process.popen.send_signal(signal.SIGINT)  # Ctrl-C reaches the parent only here
        process.popen.wait(timeout=60)
    assert process.popen.returncode == 0, process.log()[-3000:]
    with pytest.raises(requests.ConnectionError):
        requests.get(stack.base_url + "/healthz", timeout=2)

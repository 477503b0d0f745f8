"""docker-compose.yml's migrate, web and worker commands, run here with its environment.

There is no Docker engine on this machine, so the test reads the compose file and
runs each service's real command with the service's real variables, only pointing
the hostnames (postgres, redis, minio) at this machine's services. The worker's GPU
claim (one GPU per replica of `--scale worker=N`) runs with a stand-in `python` that
reports the number of GPUs, since this machine has none.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import boto3
import pytest
import requests
import yaml
from sqlalchemy.engine import make_url

from bench.processes import ROOT, Process, Stack, free_port, install_tiny_model, start_process, wait_for
from easel.shared.settings import Settings
from easel.worker.signing import verify_signature
from tests.webhook_receiver import Receiver

pytestmark = pytest.mark.slow


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver().start()
    yield receiver
    receiver.stop()


def load_compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_declares_the_whole_stack() -> None:
    services = load_compose()["services"]
    assert {
        "redis",
        "postgres",
        "minio",
        "create-bucket",
        "migrate",
        "web",
        "worker",
        "webhooks",
        "flower",
    } <= set(services)
    assert services["web"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert "mc mb" in services["create-bucket"]["command"][0]


def test_compose_names_only_real_settings() -> None:
    compose = load_compose()
    named = {key for key in compose["x-easel-env"] if key.startswith("EASEL_")}
    for service in compose["services"].values():
        named |= {key for key in service.get("environment") or {} if key.startswith("EASEL_")}
    assert named <= {f"EASEL_{name.upper()}" for name in Settings.model_fields}, named


def test_worker_scales_one_gpu_per_replica() -> None:
    compose = load_compose()
    worker = compose["services"]["worker"]
    # `--scale worker=N` needs replicas without a fixed name or host port.
    assert "container_name" not in worker and "ports" not in worker
    # Every replica sees the GPUs (a `count: 1` reservation would be GPU 0 in every one)
    # and takes one of them itself (test_worker_replicas_take_one_gpu_each).
    gpu = worker["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu == {"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}
    assert "gpu-locks:/data/gpu-locks" in worker["volumes"] and "gpu-locks" in compose["volumes"]
    assert worker["command"][:2] == ["/bin/sh", "-c"] and "exec easel worker" in worker["command"][2]
    env = worker["environment"]
    assert env["EASEL_METRICS_PORT"] == "9100" and worker["expose"] == ["9100"]  # scraped, not published
    assert interpolate(env["EASEL_WORKER_MODELS"]) == ""  # every model unless the operator names some
    assert env["EASEL_DEVICE"] == "auto" and worker["stop_grace_period"] == "5m"


def test_flower_watches_the_broker() -> None:
    services = load_compose()["services"]
    flower = services["flower"]
    assert flower["image"].startswith("mher/flower:")
    assert f"--broker={services['worker']['environment']['EASEL_BROKER_URL']}" in flower["command"]
    assert "--port=5555" in flower["command"] and flower["ports"] == ["127.0.0.1:5555:5555"]
    assert flower["depends_on"]["redis"]["condition"] == "service_healthy"


# What the operator exports before `docker compose up` (compose interpolates it).
HOST_ENV = {"EASEL_WEBHOOK_SECRET": "compose-secret", "EASEL_WEBHOOK_ALLOW_PRIVATE": "true"}


def interpolate(value: str) -> str:
    """Compose's ``${VAR:-default}`` (the operator's value, else the default) and ``$$`` (a ``$``)."""
    return re.sub(
        r"\$\$|\$\{([A-Z_]+):-([^}]*)\}",
        lambda m: "$" if m[0] == "$$" else HOST_ENV.get(m[1], m[2]),
        value,
    )


def localize(
    env: dict[str, str], postgres_url: str, redis_url: str, s3_endpoint: str, home: Path
) -> dict[str, str]:
    """The compose environment with its hostnames pointed at this machine."""
    out = {key: interpolate(str(value)) for key, value in env.items()}
    compose_db = make_url(out["EASEL_DATABASE_URL"])
    local_db = make_url(postgres_url)
    # Same driver and scheme as compose; the host, port, role and database are ours.
    out["EASEL_DATABASE_URL"] = compose_db.set(
        host=local_db.host,
        port=local_db.port,
        username=local_db.username,
        password=None,
        database=local_db.database,
    ).render_as_string(hide_password=False)
    broker = urlsplit(out["EASEL_BROKER_URL"])
    assert broker.scheme == "redis" and broker.hostname == "redis"
    out["EASEL_BROKER_URL"] = urlunsplit(
        (broker.scheme, urlsplit(redis_url).netloc, urlsplit(redis_url).path, "", "")
    )
    assert urlsplit(out["EASEL_S3_ENDPOINT_URL"]).hostname == "minio"
    out["EASEL_S3_ENDPOINT_URL"] = s3_endpoint
    assert out["EASEL_HOME"] == "/data"
    out["EASEL_HOME"] = str(home)
    if "EASEL_HOST" in out:
        out["EASEL_HOST"] = "127.0.0.1"
    return out


def command(service: dict[str, Any]) -> list[str]:
    args = [interpolate(str(arg)) for arg in service["command"]]
    if args[:2] == ["/bin/sh", "-c"]:  # a script that calls `easel` from PATH (see with_gpus)
        return args
    assert args[0] == "easel"
    return [str(Path(sys.executable).parent / "easel"), *args[1:]]


def with_gpus(env: dict[str, str], count: int, bin_dir: Path, easel: str | None = None) -> dict[str, str]:
    """``env`` with a stand-in ``python`` that reports ``count`` GPUs first on PATH, and
    ``easel`` (this checkout's, or the given script) after it."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    stub = bin_dir / "python"
    stub.write_text(f"#!/bin/sh\necho {count}\n")
    stub.chmod(0o755)
    if easel is not None:
        (bin_dir / "easel").write_text(easel)
        (bin_dir / "easel").chmod(0o755)
    return {**env, "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{env.get('PATH', '')}"}


# Stands in for `easel worker`: says which GPU it was given, then works until stopped.
FAKE_EASEL = """#!/bin/sh
echo "fake easel $* on CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES"
exec sleep 300
"""


def test_worker_replicas_take_one_gpu_each(tmp_path: Path) -> None:
    """Three replicas of the compose worker on a host with two GPUs: two run, one on each
    GPU, the third exits saying so; a GPU whose replica stopped goes to the next one."""
    worker = load_compose()["services"]["worker"]
    env = with_gpus(
        {**os.environ, "EASEL_HOME": str(tmp_path / "data")}, 2, tmp_path / "bin", easel=FAKE_EASEL
    )
    replicas: list[Process] = []

    def start(name: str) -> Process:
        replica = start_process(name, command(worker), env, tmp_path)
        replicas.append(replica)
        return replica

    def gpu_of(replica: Process) -> str:
        line = wait_for(
            lambda: "CUDA_VISIBLE_DEVICES=" in replica.log() and replica.log(), 10, f"{replica.name} to start"
        )
        # exec all the way down: the shell became the worker, so SIGTERM reaches it directly.
        cmdline = Path(f"/proc/{replica.popen.pid}/cmdline").read_bytes()
        assert b"sleep" in cmdline, cmdline
        assert "fake easel worker on" in line
        return line.rsplit("CUDA_VISIBLE_DEVICES=", 1)[1].strip()

    try:
        first, second = start("replica-1"), start("replica-2")
        assert {gpu_of(first), gpu_of(second)} == {"0", "1"}
        third = start("replica-3")
        assert third.popen.wait(timeout=10) == 1
        assert "no free GPU: each of the 2 GPUs already has a worker" in third.log()

        freed = gpu_of(first)
        first.stop(signal.SIGTERM)  # its lock goes with its process
        assert gpu_of(start("replica-4")) == freed
    finally:
        for replica in replicas:
            replica.stop(signal.SIGKILL)


@pytest.mark.timeout(300)
def test_compose_commands_run_a_job(
    tmp_path: Path,
    tiny_model: Path,
    fresh_postgres_url: str,
    own_redis_url: str,
    receiver: Receiver,
    s3: dict[str, str],
) -> None:
    compose = load_compose()["services"]
    bucket = urlsplit(compose["web"]["environment"]["EASEL_STORAGE_URL"]).netloc
    keys = {
        "aws_access_key_id": s3["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": s3["AWS_SECRET_ACCESS_KEY"],
    }
    storage = boto3.client("s3", endpoint_url=s3["endpoint"], region_name="us-east-1", **keys)
    storage.create_bucket(Bucket=bucket)
    install_tiny_model(tiny_model, tmp_path)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("EASEL_", "AWS_"))}
    base.update({"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"})
    stack = Stack(env=base, workdir=tmp_path)
    try:
        envs = {
            name: {
                **base,
                **localize(
                    compose[name]["environment"], fresh_postgres_url, own_redis_url, s3["endpoint"], tmp_path
                ),
            }
            for name in ("migrate", "web", "worker", "webhooks")
        }
        envs["web"]["EASEL_PORT"] = str(stack.port)
        metrics_port = free_port()  # the compose 9100 may be taken on this machine
        assert envs["worker"]["EASEL_METRICS_PORT"] == "9100"
        envs["worker"]["EASEL_METRICS_PORT"] = str(metrics_port)
        envs["worker"] = with_gpus(envs["worker"], 1, tmp_path / "bin")
        hooks_metrics_port = free_port()
        assert envs["webhooks"]["EASEL_METRICS_PORT"] == "9100"
        envs["webhooks"]["EASEL_METRICS_PORT"] = str(hooks_metrics_port)
        subprocess.run(
            command(compose["migrate"]),
            env=envs["migrate"],
            check=True,
            cwd=str(ROOT),
            capture_output=True,
            timeout=120,
        )
        # Authentication is on in compose: an operator makes a key with the same settings.
        stack.env = envs["migrate"]
        stack.create_key("compose-operator")
        web = start_process("web", command(compose["web"]), envs["web"], tmp_path)
        worker = start_process("worker", command(compose["worker"]), envs["worker"], tmp_path)
        hooks = start_process("webhooks", command(compose["webhooks"]), envs["webhooks"], tmp_path)
        stack.processes += [web, worker, hooks]
        wait_for(lambda: requests.get(stack.base_url + "/readyz", timeout=2).ok, 60, "web")
        wait_for(lambda: " ready." in worker.log() and " ready." in hooks.log(), 120, "worker and webhooks")
        assert "easel worker on GPU 0 of 1" in worker.log()
        hook_url = receiver.url + "/compose"
        job = stack.wait(
            stack.submit(prompt="compose", width=64, height=64, steps=2, webhook_url=hook_url)["id"]
        )
        assert job["status"] == "succeeded", stack.logs()
        delivery = wait_for(lambda: receiver.on("/compose"), 30, "the webhook")[0]
        assert verify_signature("compose-secret", delivery.body, delivery.headers)
        # Output links in the payload use compose's EASEL_PUBLIC_URL.
        assert json.loads(delivery.body)["outputs"][0]["url"].startswith("http://localhost:8000/api/v1/jobs/")
        listed = storage.list_objects_v2(Bucket=bucket)
        assert f"outputs/jobs/{job['id']}/0.png" in [o["Key"] for o in listed["Contents"]]
        metrics = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5)
        assert metrics.status_code == 200 and "process_cpu_seconds_total" in metrics.text
        delivered = 'easel_webhook_deliveries_total{event="completed",outcome="delivered"} 1.0'
        hooks_metrics = f"http://127.0.0.1:{hooks_metrics_port}/metrics"
        wait_for(lambda: delivered in requests.get(hooks_metrics, timeout=5).text, 10, "the delivery count")
    finally:
        stack.stop()
        shutil.rmtree(tmp_path / "models", ignore_errors=True)

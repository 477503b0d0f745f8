"""docker-compose.yml's migrate, web and worker commands, run here with its environment.

There is no Docker engine on this machine, so the test reads the compose file and
runs each service's real command with the service's real variables, only pointing
the hostnames (postgres, redis, minio) at this machine's services.
"""

from __future__ import annotations

import json
import os
import re
import shutil
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

from shared.webhooks import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify_signature
from tests.support import ROOT, Stack, install_tiny_model, start_process, wait_for
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
    gpu = services["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and gpu["capabilities"] == ["gpu"]
    assert services["web"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert "mc mb" in services["create-bucket"]["command"][0]


# What the operator exports before `docker compose up` (compose interpolates it).
HOST_ENV = {"EASEL_WEBHOOK_SECRET": "compose-secret", "EASEL_WEBHOOK_ALLOW_PRIVATE": "true"}


def interpolate(value: str) -> str:
    """Compose's ``${VAR:-default}``: the operator's value, else the default."""
    return re.sub(r"\$\{([A-Z_]+):-([^}]*)\}", lambda m: HOST_ENV.get(m[1], m[2]), value)


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
    args = list(service["command"])
    assert args[0] == "easel"
    return [str(Path(sys.executable).parent / "easel"), *args[1:]]


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
    boto3.client(
        "s3",
        endpoint_url=s3["endpoint"],
        region_name="us-east-1",
        aws_access_key_id="easel",
        aws_secret_access_key="x",
    ).create_bucket(Bucket=bucket)
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
        hook_url = receiver.url + "/compose"
        job = stack.wait(
            stack.submit(prompt="compose", width=64, height=64, steps=2, webhook_url=hook_url)["id"]
        )
        assert job["status"] == "succeeded", stack.logs()
        delivery = wait_for(lambda: receiver.on("/compose"), 30, "the webhook")[0]
        assert verify_signature(
            "compose-secret",
            delivery.body,
            delivery.headers[TIMESTAMP_HEADER],
            delivery.headers[SIGNATURE_HEADER],
        )
        # Output links in the payload use compose's EASEL_PUBLIC_URL.
        assert json.loads(delivery.body)["outputs"][0]["url"].startswith("http://localhost:8000/api/v1/jobs/")
        listed = boto3.client(
            "s3",
            endpoint_url=s3["endpoint"],
            region_name="us-east-1",
            aws_access_key_id="easel",
            aws_secret_access_key="x",
        ).list_objects_v2(Bucket=bucket)
        assert f"outputs/jobs/{job['id']}/0.png" in [o["Key"] for o in listed["Contents"]]
    finally:
        stack.stop()
        shutil.rmtree(tmp_path / "models", ignore_errors=True)

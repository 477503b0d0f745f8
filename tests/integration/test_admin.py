"""The operator view through real processes: live workers, failures, requeue; admins only."""

from __future__ import annotations

import re

import pytest
import requests
from sqlalchemy import create_engine, update

from bench.processes import Stack
from easel.shared.models import Job, utcnow

pytestmark = pytest.mark.slow


def logged_in(stack: Stack, key: str) -> requests.Session:
    session = requests.Session()
    page = session.get(stack.base_url + "/login", timeout=10).text
    token = re.search(r'name="csrf_token" value="([^"]+)"', page)[1]
    response = session.post(stack.base_url + "/login", data={"api_key": key, "csrf_token": token}, timeout=10)
    assert response.status_code == 200, response.status_code  # followed the 303 to the home page
    return session


def test_admin_page_lists_workers_and_failures_and_requeues(services_stack: Stack) -> None:
    job = services_stack.wait(
        services_stack.submit(prompt="will be marked failed", width=64, height=64, steps=2)["id"]
    )
    engine = create_engine(services_stack.env["EASEL_DATABASE_URL"])
    with engine.begin() as conn:  # an operator's view of a failure, made without breaking a worker
        conn.execute(
            update(Job)
            .where(Job.id == job["id"])
            .values(
                status="failed",
                error_code="generation_error",
                error_message="boom at step 3",
                finished_at=utcnow(),
            )
        )
    engine.dispose()
    admin = logged_in(services_stack, services_stack.create_key("ops", admin=True))
    page = admin.get(services_stack.base_url + "/admin", timeout=10)
    assert page.status_code == 200
    html = page.text
    assert re.search(r'data-worker="[^"]+:\d+:[0-9a-f]+"', html) and ">live<" in html
    assert f'data-job="{job["id"]}"' in html and "boom at step 3" in html
    token = re.search(r'name="csrf-token" content="([^"]+)"', html)[1]
    requeued = admin.post(
        f"{services_stack.base_url}/admin/jobs/{job['id']}/requeue", data={"csrf_token": token}, timeout=10
    )
    assert requeued.status_code == 200
    again = services_stack.wait(job["id"])
    assert again["status"] == "succeeded" and again["error"] is None and len(again["outputs"]) == 1


def test_admin_page_refuses_others(services_stack: Stack) -> None:
    user = logged_in(services_stack, services_stack.create_key("plain-user"))
    assert user.get(services_stack.base_url + "/admin", timeout=10).status_code == 403
    assert (
        requests.get(services_stack.base_url + "/admin", timeout=10, allow_redirects=False).status_code == 302
    )

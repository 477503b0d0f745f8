"""schemathesis against the generated OpenAPI document: no 5xx, no response off-schema."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import positive_data_acceptance

from easel.migrations.upgrade import upgrade
from easel.shared.db import session_scope
from easel.shared.settings import Settings
from easel.web import create_app
from easel.web.keys import create_key

pytestmark = pytest.mark.timeout(900)

HOME = Path(__import__("tempfile").mkdtemp(prefix="easel-fuzz-"))
SETTINGS = Settings(
    home=HOME,
    rate_limit="100000/minute",
    submit_rate_limit="100000/minute",
    max_queued_per_key=100000,
    webhook_secret="fuzz",
)
upgrade(SETTINGS.database_url)
with session_scope(SETTINGS.database_url) as _session:
    KEY = create_key(_session, "fuzzer")[1]
APP = create_app(SETTINGS)
schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", APP)
CALLS: Counter[str] = Counter()


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_api_conforms_to_its_schema(case: schemathesis.Case) -> None:
    # Every check but "positive data accepted": limits that depend on the model (a width
    # the schema allows may exceed tiny-sd's 512) and opaque cursors cannot be written into
    # a static schema, and are answered 422 with the field named, as they should be.
    response = case.call_and_validate(
        headers={"Authorization": f"Bearer {KEY}"}, excluded_checks=[positive_data_acceptance]
    )
    CALLS[f"{case.method} {case.path} -> {response.status_code}"] += 1


def test_print_counts(capsys: pytest.CaptureFixture[str]) -> None:
    """The fuzzing run's figures, printed into the test output (the run above must have happened)."""
    total = sum(CALLS.values())
    statuses = Counter(key.rsplit(" -> ", 1)[1] for key in CALLS.elements())
    with capsys.disabled():
        print(
            f"\nschemathesis: {total} calls over {len({k.rsplit(' -> ', 1)[0] for k in CALLS})} "
            f"method/path pairs; responses by status: {dict(sorted(statuses.items()))}"
        )
    assert total > 100
    assert not any(key.endswith(("-> 500", "-> 502", "-> 504")) for key in CALLS)

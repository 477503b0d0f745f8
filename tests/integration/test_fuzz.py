"""schemathesis against the generated OpenAPI document: no 5xx, no response off-schema.

One module fixture builds the app (on SQLite in a temporary home) and fuzzes every
operation of its document (examples, coverage and fuzzing phases, as
``@schema.parametrize()`` would); the tests read what that
run found, so each passes or fails alone as well as together. Nothing runs at import.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import positive_data_acceptance
from schemathesis.core.failures import FailureGroup
from schemathesis.generation.feedback import FeedbackSources
from schemathesis.pytest._test_builder import build_operation_test  # what @schema.parametrize() runs

from easel.migrations.upgrade import upgrade
from easel.shared.db import session_scope
from easel.shared.settings import Settings
from easel.web import create_app
from easel.web.keys import create_key

pytestmark = pytest.mark.timeout(900)

# The examples, coverage and fuzzing phases of each operation, as `@schema.parametrize()` runs them.
HYPOTHESIS = settings(
    max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None
)


@dataclass
class FuzzRun:
    calls: Counter[str] = field(default_factory=Counter)  # "METHOD /path -> status" -> calls
    failures: dict[str, str] = field(default_factory=dict)  # "METHOD /path" -> what failed

    @property
    def total(self) -> int:
        return sum(self.calls.values())

    def statuses(self) -> dict[str, int]:
        return dict(sorted(Counter(key.rsplit(" -> ", 1)[1] for key in self.calls.elements()).items()))


@pytest.fixture(scope="module")
def fuzz_run(tmp_path_factory: pytest.TempPathFactory) -> FuzzRun:
    home: Path = tmp_path_factory.mktemp("fuzz")
    app_settings = Settings(
        home=home,
        rate_limit="100000/minute",
        submit_rate_limit="100000/minute",
        auth_failure_limit="100000/minute",  # the fuzzer sends many requests without a key
        max_queued_per_key=100000,
        webhook_secret="fuzz",
    )
    upgrade(app_settings.database_url)
    with session_scope(app_settings.database_url) as session:
        key = create_key(session, "fuzzer")[1]
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", create_app(app_settings))
    run = FuzzRun()
    for result in schema.get_all_operations():
        operation = result.ok()
        label = f"{operation.method.upper()} {operation.path}"

        def call(case: schemathesis.Case) -> None:
            # Every check but "positive data accepted": limits that depend on the model (a
            # width the schema allows may exceed tiny-sd's 512) and opaque cursors cannot be
            # written into a static schema, and are answered 422 with the field named.
            response = case.call_and_validate(
                headers={"Authorization": f"Bearer {key}"}, excluded_checks=[positive_data_acceptance]
            )
            run.calls[f"{case.method} {case.path} -> {response.status_code}"] += 1

        test = build_operation_test(
            config=schema.config,
            operation=operation,
            test_func=call,
            given_kwargs={},
            feedback=FeedbackSources(),
            explicit_settings=HYPOTHESIS,
        )
        try:
            test()
        except (Exception, FailureGroup) as exc:  # hypothesis re-raises the shrunk failing case
            run.failures[label] = f"{type(exc).__name__}: {exc}"
    return run


def test_api_conforms_to_its_schema(fuzz_run: FuzzRun) -> None:
    assert fuzz_run.failures == {}, "\n\n".join(f"{op}:\n{why}" for op, why in fuzz_run.failures.items())


def test_print_counts(fuzz_run: FuzzRun, capsys: pytest.CaptureFixture[str]) -> None:
    """The fuzzing run's figures, printed into the test output."""
    operations = {key.rsplit(" -> ", 1)[0] for key in fuzz_run.calls}
    with capsys.disabled():
        print(
            f"\nschemathesis: {fuzz_run.total} calls over {len(operations)} method/path pairs; "
            f"responses by status: {fuzz_run.statuses()}"
        )
    assert fuzz_run.total > 100
    assert not any(key.endswith(("-> 500", "-> 502", "-> 504")) for key in fuzz_run.calls)


# ---- hostile inputs (issue 16): every operation, every parameter and body ----------------

HUGE = "9" * 5000  # past Python's 4300-digit int parsing limit
HOSTILE_VALUES = (
    "9223372036854775808",  # 2**63: past a 64-bit integer
    "99999999999999999999999999",
    HUGE,
    "-1",
    "\u00b2",  # superscript two: str.isdigit() is true, int() fails
    "\u0661\u0662",  # Arabic-Indic digits: int() accepts them
    "NaN",
    "Infinity",
    "1e999",
    "\u0000",
)
HOSTILE_NUMBERS = ("NaN", "Infinity", "-Infinity", "1e999", "-1e999", HUGE, "1" + "0" * 400)
HOSTILE_BODIES = (
    b"[" * 100_000 + b"]" * 100_000,
    b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
    b'{"a":' * 5000,  # truncated
    b"[" * 5000,
    b"NaN",
    b"Infinity",
    b"1e999",
    HUGE.encode(),
    b'{"prompt": "\xff\xfe"}',
    b"",
)


def _strict_json(body: bytes) -> Any:
    def refuse(name: str) -> None:
        raise ValueError(f"{name} is not JSON")

    return json.loads(body, parse_constant=refuse)


def _hostile_requests(document: dict[str, Any], job_id: str) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(operation, what was sent, request kwargs) for every hostile input of every operation."""
    valid = {"job_id": job_id, "index": "0", "name": "image"}
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            label = f"{method.upper()} {path}"
            parameters = operation.get("parameters", [])
            for parameter in parameters:
                if parameter["in"] not in ("path", "query"):
                    continue
                for value in HOSTILE_VALUES:
                    values = {**valid, parameter["name"]: quote(value, safe="")}
                    url = re.sub(r"{(\w+)}", lambda m, v=values: v[m[1]], path)
                    if parameter["in"] == "query":
                        url = (
                            re.sub(r"{(\w+)}", lambda m: valid[m[1]], path)
                            + "?"
                            + urlencode({parameter["name"]: value})
                        )
                    yield label, f"{parameter['name']}={value[:20]!r}", {"method": method, "path": url}
            content = operation.get("requestBody", {}).get("content", {})
            url = re.sub(r"{(\w+)}", lambda m: valid[m[1]], path)
            if "application/json" in content:
                for body in HOSTILE_BODIES:
                    kwargs = {"method": method, "path": url, "data": body, "content_type": "application/json"}
                    yield label, f"body {body[:20]!r}", kwargs
                properties = _properties(document, content["application/json"]["schema"])
                for name in properties:
                    for number in HOSTILE_NUMBERS:
                        body = b'{"prompt": "p", "%s": %s}' % (name.encode(), number.encode())
                        kwargs = {
                            "method": method,
                            "path": url,
                            "data": body,
                            "content_type": "application/json",
                        }
                        yield label, f"{name}: {number[:20]}", kwargs
            if "multipart/form-data" in content:
                properties = _properties(document, content["multipart/form-data"]["schema"])
                for name in properties:
                    for value in ("nan", "inf", "-inf", "1e999", HUGE, "\u00b2", "\u0661\u0662"):
                        form = {"prompt": "p", name: value}
                        yield (
                            label,
                            f"form {name}={value[:20]!r}",
                            {"method": method, "path": url, "data": form},
                        )


def _properties(document: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    while "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return [name for name in schema.get("properties", {}) if name != "prompt"]


def test_hostile_inputs_get_client_errors_in_the_error_shape(tmp_path: Path) -> None:
    """Huge integers, unicode digits, deep and truncated JSON and non-finite numbers in
    every parameter and body of every operation: never a 5xx, every body strict JSON,
    every refusal in the error shape."""
    app_settings = Settings(
        home=tmp_path,
        rate_limit="100000/minute",
        submit_rate_limit="100000/minute",
        auth_failure_limit="100000/minute",
        max_queued_per_key=100000,
        webhook_secret="fuzz",
    )
    upgrade(app_settings.database_url)
    with session_scope(app_settings.database_url) as session:
        key = create_key(session, "hostile")[1]
    headers = {"Authorization": f"Bearer {key}"}
    with create_app(app_settings).test_client() as client:
        document = client.get("/api/v1/openapi.json").get_json()
        job_id = client.post("/api/v1/jobs", json={"prompt": "p", "width": 64, "height": 64}, headers=headers)
        job_id = job_id.get_json()["id"]
        problems, calls = [], Counter()
        for label, sent, kwargs in _hostile_requests(document, job_id):
            response = client.open(headers=headers, **kwargs)
            calls[response.status_code] += 1
            where = f"{label} with {sent}: {response.status_code}"
            if response.status_code >= 500:
                problems.append(where)
            elif response.mimetype == "application/json":
                try:
                    body = _strict_json(response.get_data())
                except ValueError as exc:
                    problems.append(f"{where}, body not strict JSON ({exc})")
                    continue
                if response.status_code >= 400 and set(body.get("error", {})) != {
                    "code",
                    "message",
                    "details",
                }:
                    problems.append(f"{where}, not the error shape: {str(body)[:200]}")
    print(
        f"\nhostile inputs: {sum(calls.values())} calls; responses by status: {dict(sorted(calls.items()))}"
    )
    assert sum(calls.values()) > 200
    assert problems == [], "\n".join(problems[:30])

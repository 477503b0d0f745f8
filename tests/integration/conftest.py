"""Fixtures of the integration tier (real services and real processes)."""

from __future__ import annotations

import pytest

from bench.processes import Stack


@pytest.fixture(params=["services", "embedded"])
def stack(request: pytest.FixtureRequest) -> Stack:
    """Each session stack in turn: on PostgreSQL, Redis and S3, then on the embedded
    defaults. A module with a stack of its own defines its own ``stack``."""
    return request.getfixturevalue(f"{request.param}_stack")

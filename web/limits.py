"""Rate limits per API key (or client address), shared by all web processes via Redis."""

from __future__ import annotations

import math
import time

from flask import Flask, current_app, g, request
from flask_limiter import Limiter

from easel.shared.settings import Settings


def _rate_key() -> str:
    principal = g.get("principal")
    if principal is not None and principal.owner_id != "anonymous":
        return f"key:{principal.owner_id}"
    return f"addr:{request.remote_addr}"


limiter = Limiter(key_func=_rate_key, headers_enabled=False, strategy="fixed-window")


def retry_after_seconds() -> int:
    """Seconds until the limit that was just hit resets."""
    current = limiter.current_limit
    if current is None:
        return 1
    return max(1, math.ceil(current.reset_at - time.time()))


def api_limit() -> str:
    return current_app.extensions["easel"].settings.rate_limit


def submit_limit() -> str:
    return current_app.extensions["easel"].settings.submit_rate_limit


def init_app(app: Flask, settings: Settings) -> None:
    broker = settings.broker_url
    # Redis (the broker's) makes the limits hold across web processes and machines;
    # the embedded setup counts per process.
    app.config["RATELIMIT_STORAGE_URI"] = (
        broker if broker.startswith(("redis://", "rediss://")) else "memory://"
    )
    # Redis down or restarting: count in this process's memory until it answers again
    # (checked with backoff), and never fail a request because the counter is away.
    app.config["RATELIMIT_IN_MEMORY_FALLBACK_ENABLED"] = True
    app.config["RATELIMIT_SWALLOW_ERRORS"] = True
    limiter.init_app(app)

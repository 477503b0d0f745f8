"""Webhook signatures: HMAC-SHA256 over ``"<timestamp>.<body>"``.

Each delivery carries two headers::

    Easel-Timestamp: 1767225600
    Easel-Signature: v1=<hex HMAC-SHA256(secret, "1767225600." + raw body)>

A receiver recomputes the HMAC over the raw body it received, compares it in
constant time, and rejects timestamps older than a few minutes (replays).
``verify_signature`` does exactly that and can be copied into a receiver.
"""

from __future__ import annotations

import hashlib
import hmac
import time

TIMESTAMP_HEADER = "Easel-Timestamp"
SIGNATURE_HEADER = "Easel-Signature"
EVENT_HEADER = "Easel-Event"
DELIVERY_HEADER = "Easel-Delivery"


def signature(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"v1={mac.hexdigest()}"


def signed_headers(secret: str, body: bytes, now: float | None = None) -> dict[str, str]:
    """The signature headers for ``body``, timestamped ``now``."""
    timestamp = int(now if now is not None else time.time())
    return {TIMESTAMP_HEADER: str(timestamp), SIGNATURE_HEADER: signature(secret, timestamp, body)}


def verify_signature(
    secret: str, body: bytes, timestamp: str, sig: str, tolerance: float = 300, now: float | None = None
) -> bool:
    """True if ``sig`` signs ``body`` at ``timestamp`` and the timestamp is recent."""
    try:
        stamp = int(timestamp)
    except ValueError:
        return False
    current = now if now is not None else time.time()
    if abs(current - stamp) > tolerance:
        return False
    return hmac.compare_digest(signature(secret, stamp, body), sig)

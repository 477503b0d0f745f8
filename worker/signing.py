"""Webhook signatures per the Standard Webhooks spec (https://www.standardwebhooks.com).

Each delivery carries three headers::

    webhook-id: <message id; the same on every retry of one message>
    webhook-timestamp: 1767225600
    webhook-signature: v1,<base64 HMAC-SHA256(key, "<id>.<timestamp>.<raw body>")>

The key is the secret written ``whsec_<base64 of the key bytes>``, as the
``standardwebhooks`` libraries take it, so a receiver verifies in one call::

    from standardwebhooks import Webhook
    job = Webhook(secret).verify(body, headers)   # raises WebhookVerificationError

An ``EASEL_WEBHOOK_SECRET`` not written ``whsec_...`` (from before this format) still
works: its UTF-8 bytes are the key, and receivers use ``receiver_secret(secret)``
(``whsec_`` + base64 of those bytes). ``verify_signature`` is the same check as the
libraries' (signature and a timestamp within five minutes).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping

ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"
EVENT_HEADER = "Easel-Event"  # not signed: a routing hint; the body says the same
SECRET_PREFIX = "whsec_"
TOLERANCE_SECONDS = 300


def secret_key(secret: str) -> bytes:
    """The HMAC key of a secret: the bytes of ``whsec_<base64>``, else the secret's UTF-8."""
    if secret.startswith(SECRET_PREFIX):
        try:
            return base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
        except binascii.Error as exc:
            raise ValueError("EASEL_WEBHOOK_SECRET starts with whsec_ but the rest is not base64") from exc
    return secret.encode()


def receiver_secret(secret: str) -> str:
    """The secret as a receiver's ``standardwebhooks.Webhook`` takes it: ``whsec_<base64>``."""
    return SECRET_PREFIX + base64.b64encode(secret_key(secret)).decode()


def new_secret() -> str:
    """A fresh secret in the standard form (24 random bytes)."""
    import secrets

    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


def signature(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret_key(secret), f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return f"v1,{base64.b64encode(mac.digest()).decode()}"


def signed_headers(secret: str, message_id: str, body: bytes, now: float | None = None) -> dict[str, str]:
    """The three Standard Webhooks headers for ``body``, timestamped ``now``."""
    timestamp = int(now if now is not None else time.time())
    return {
        ID_HEADER: message_id,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: signature(secret, message_id, timestamp, body),
    }


def verify_signature(
    secret: str,
    body: bytes,
    headers: Mapping[str, str],
    tolerance: float = TOLERANCE_SECONDS,
    now: float | None = None,
) -> bool:
    """True if one ``v1`` signature of ``headers`` signs ``body`` and the timestamp is recent."""
    lowered = {key.lower(): value for key, value in headers.items()}
    message_id, stamp = lowered.get(ID_HEADER, ""), lowered.get(TIMESTAMP_HEADER, "")
    if not message_id or not stamp.isdigit():
        return False
    current = now if now is not None else time.time()
    if abs(current - int(stamp)) > tolerance:
        return False
    expected = signature(secret, message_id, int(stamp), body)
    return any(hmac.compare_digest(expected, sig) for sig in lowered.get(SIGNATURE_HEADER, "").split())

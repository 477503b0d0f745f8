"""API keys: made once, shown once, stored as SHA-256 hashes.

A key looks like ``easel_<prefix>_<secret>``: the 8-character prefix is stored in
clear to find the row and to show in lists; the whole key is compared by hash in
constant time. Keys carry 190 bits of randomness, so a fast hash is safe here.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from easel.shared.models import ApiKey, utcnow

KEY_SCHEME = "easel"
LAST_USED_RESOLUTION = timedelta(minutes=1)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(session: Session, name: str, admin: bool = False) -> tuple[ApiKey, str]:
    """A new key row and the plaintext key (the only time it exists)."""
    prefix = secrets.token_hex(4)
    key = f"{KEY_SCHEME}_{prefix}_{secrets.token_urlsafe(24)}"
    row = ApiKey(name=name, prefix=prefix, key_hash=hash_key(key), is_admin=admin, created_at=utcnow())
    session.add(row)
    session.flush()
    return row, key


def authenticate(session: Session, presented: str) -> ApiKey | None:
    """The live key matching ``presented``, or ``None`` (unknown, malformed, revoked)."""
    parts = presented.strip().split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_SCHEME:
        return None
    row = session.scalar(select(ApiKey).where(ApiKey.prefix == parts[1]))
    if row is None or not hmac.compare_digest(row.key_hash, hash_key(presented.strip())):
        return None
    if row.revoked_at is not None:
        return None
    now = utcnow()
    if row.last_used_at is None or now - row.last_used_at > LAST_USED_RESOLUTION:
        row.last_used_at = now
        session.commit()
    return row


def find_key(session: Session, ref: str) -> ApiKey | None:
    """A key by its id or its prefix."""
    return session.scalar(select(ApiKey).where((ApiKey.id == ref) | (ApiKey.prefix == ref)))

"""``Prefer: wait`` on ``POST /api/v1/jobs`` (RFC 7240, as Replicate reads it): how long
the caller asks to wait. The waiting itself is a held call (``easel.web.held_calls``)."""

from __future__ import annotations

MAX_PREFER_WAIT = 60  # Replicate's bound on Prefer: wait


def prefer_wait(values: list[str]) -> int | None:
    """The seconds a ``Prefer`` header asks to wait (RFC 7240, Replicate's ``wait``):
    ``wait=N`` gives ``min(N, 60)``, a bare ``wait`` 60; ``None`` when there is no
    usable ``wait`` preference (an unknown or malformed preference is ignored, as RFC
    7240 asks)."""
    for value in values:
        for preference in value.split(","):
            token = preference.split(";", 1)[0].strip()
            name, sep, raw = token.partition("=")
            if name.strip().lower() != "wait":
                continue
            if not sep:
                return MAX_PREFER_WAIT
            raw = raw.strip().strip('"')
            if raw.isascii() and raw.isdigit() and len(raw) <= 6 and int(raw) > 0:
                return min(int(raw), MAX_PREFER_WAIT)
            return None
    return None

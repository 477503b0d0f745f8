"""Outbound safety: webhook URLs must not reach private, loopback or link-local hosts."""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit


class UnsafeUrl(ValueError):
    """A URL Easel refuses to call."""


def check_public_url(url: str, allow_private: bool = False) -> None:
    """Raise ``UnsafeUrl`` unless ``url`` is http(s) and every address its host resolves
    to is public (or ``allow_private``). Checked at submit and again at delivery, so a
    name that later resolves elsewhere (DNS rebinding) is still refused."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise UnsafeUrl(f"scheme {parts.scheme!r} is not allowed; use http or https")
    host = parts.hostname
    if not host:
        raise UnsafeUrl("has no host")
    if allow_private:
        return
    try:
        infos = socket.getaddrinfo(
            host, parts.port or (443 if parts.scheme == "https" else 80), proto=socket.IPPROTO_TCP
        )
    except (socket.gaierror, UnicodeError) as exc:
        raise UnsafeUrl(f"host {host!r} does not resolve ({exc})") from None
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if (
            address.is_private
            or address.is_loopback
            or address.is_link_local
            or address.is_multicast
            or address.is_reserved
            or address.is_unspecified
        ):
            raise UnsafeUrl(
                f"host {host!r} resolves to {address}, a private, loopback or link-local address "
                f"(set EASEL_WEBHOOK_ALLOW_PRIVATE=true to allow)"
            )

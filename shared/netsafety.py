"""Outbound safety: webhooks may only reach globally routable addresses.

An address is allowed when ``ipaddress`` calls it global *and* every IPv4 address
it carries inside is global too: IPv4-mapped (``::ffff:a.b.c.d``), 6to4
(``2002:AABB:CCDD::/16``), Teredo (``2001::/32``, server and client) and NAT64
(``64:ff9b::/96``, ``64:ff9b:1::/48``) forms are unwrapped, so ``[2002:7f00:1::]``
is refused like ``127.0.0.1``. Shared address space (``100.64.0.0/10``, where some
clouds serve instance metadata), multicast and reserved ranges are refused as well.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

NAT64_NETWORKS = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))


class UnsafeUrl(ValueError):
    """A URL Easel refuses to call."""


def embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries (mapped, 6to4, Teredo, NAT64)."""
    found: list[ipaddress.IPv4Address] = []
    if address.ipv4_mapped is not None:
        found.append(address.ipv4_mapped)
    if address.sixtofour is not None:
        found.append(address.sixtofour)
    if address.teredo is not None:
        found.extend(address.teredo)
    if any(address in network for network in NAT64_NETWORKS):
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return found


def is_public_address(address: IPAddress) -> bool:
    """True if ``address`` and every IPv4 address inside it are globally routable unicast."""
    if (
        not address.is_global
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or address.is_loopback
        or address.is_link_local
    ):
        return False
    if isinstance(address, ipaddress.IPv6Address):
        return all(is_public_address(inner) for inner in embedded_ipv4(address))
    return True


def resolve_checked(url: str, allow_private: bool = False) -> list[IPAddress]:
    """The addresses ``url``'s host resolves to, each checked; raise ``UnsafeUrl`` unless
    the URL is http(s) and every address is public (or ``allow_private``).

    Resolve once and connect to what this returns (``worker.webhooks`` pins it): a
    second lookup could answer differently (DNS rebinding).
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise UnsafeUrl(f"scheme {parts.scheme!r} is not allowed; use http or https")
    host = parts.hostname
    if not host:
        raise UnsafeUrl("has no host")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise UnsafeUrl(f"port is invalid ({exc})") from None
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnsafeUrl(f"host {host!r} does not resolve ({exc})") from None
    addresses: list[IPAddress] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if not allow_private and not is_public_address(address):
            raise UnsafeUrl(
                f"host {host!r} resolves to {address}, a private, loopback or link-local address "
                f"or another that is not globally routable "
                f"(set EASEL_WEBHOOK_ALLOW_PRIVATE=true to allow)"
            )
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise UnsafeUrl(f"host {host!r} resolves to no address")
    return addresses


def check_public_url(url: str, allow_private: bool = False) -> None:
    """Raise ``UnsafeUrl`` unless ``url`` is http(s) and every address its host resolves
    to is public. Checked at submit; delivery checks again and connects to the checked
    address. With ``allow_private`` only the scheme and host are checked (no lookup)."""
    if allow_private:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise UnsafeUrl(f"scheme {parts.scheme!r} is not allowed; use http or https")
        if not parts.hostname:
            raise UnsafeUrl("has no host")
        return
    resolve_checked(url, allow_private)

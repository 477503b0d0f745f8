"""Outbound safety: webhooks may only reach globally routable addresses.

An address is allowed when ``ipaddress`` calls it global *and* every IPv4 address
it carries inside is global too: IPv4-mapped (``::ffff:a.b.c.d``), 6to4
(``2002:AABB:CCDD::/16``), Teredo (``2001::/32``, server and client) and NAT64
(``64:ff9b::/96``, ``64:ff9b:1::/48``) forms are unwrapped, so ``[2002:7f00:1::]``
is refused like ``127.0.0.1``. Shared address space (``100.64.0.0/10``, where some
clouds serve instance metadata), multicast and reserved ranges are refused as well.
Cloud metadata addresses (``METADATA_NETWORKS``, wrapped forms too), credentials in the
URL, an empty host and port 0 are refused always, even with ``allow_private``.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

NAT64_NETWORKS = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))
# Cloud instance metadata and host services: refused even with EASEL_WEBHOOK_ALLOW_PRIVATE
# (credentials live there). IPv4 link-local (AWS, GCP, Azure IMDS at 169.254.169.254, ECS
# at 169.254.170.2), Alibaba's 100.100.100.200, Azure's host 168.63.129.16, and AWS's IPv6
# endpoints (fd00:ec2::254, fd00:ec2::23).
METADATA_NETWORKS: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = (
    ipaddress.IPv4Network("169.254.0.0/16"),
    ipaddress.IPv4Network("100.100.100.200/32"),
    ipaddress.IPv4Network("168.63.129.16/32"),
    ipaddress.IPv6Network("fd00:ec2::/64"),
    ipaddress.IPv6Network("fe80::a9fe:a9fe/128"),
)


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


def is_metadata_address(address: IPAddress) -> bool:
    """True if ``address`` (or an IPv4 address inside it) is a cloud metadata or host
    service address, or IPv4 link-local: never a webhook's target."""
    if any(address in network for network in METADATA_NETWORKS if network.version == address.version):
        return True
    if isinstance(address, ipaddress.IPv6Address):
        return any(is_metadata_address(inner) for inner in embedded_ipv4(address))
    return False


def check_url_shape(url: str) -> tuple[str, int]:
    """The host and port of an http(s) URL with a host, a port that is not 0 and no
    credentials; raise ``UnsafeUrl`` otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise UnsafeUrl(f"scheme {parts.scheme!r} is not allowed; use http or https")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise UnsafeUrl("must not carry credentials (user:password@); authenticate with the signature")
    host = parts.hostname
    if not host:
        raise UnsafeUrl("has no host")
    try:
        port = parts.port
    except ValueError as exc:
        raise UnsafeUrl(f"port is invalid ({exc})") from None
    if port == 0:
        raise UnsafeUrl("port 0 is not a port to deliver to")
    return host, port or (443 if parts.scheme == "https" else 80)


def resolve_checked(url: str, allow_private: bool = False) -> list[IPAddress]:
    """The addresses ``url``'s host resolves to, each checked; raise ``UnsafeUrl`` unless
    the URL is http(s) and every address is public (or ``allow_private``).

    Resolve once and connect to what this returns (``worker.webhooks`` pins it): a
    second lookup could answer differently (DNS rebinding).
    """
    host, port = check_url_shape(url)
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
        if is_metadata_address(address):  # even with allow_private
            raise UnsafeUrl(
                f"host {host!r} resolves to {address}, a cloud metadata or link-local address, "
                "refused even with EASEL_WEBHOOK_ALLOW_PRIVATE"
            )
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise UnsafeUrl(f"host {host!r} resolves to no address")
    return addresses


def check_public_url(url: str, allow_private: bool = False) -> None:
    """Raise ``UnsafeUrl`` unless ``url`` is http(s) and every address its host resolves
    to is public. Checked at submit; delivery checks again and connects to the checked
    address. With ``allow_private`` only the URL's shape and an address written in it are
    checked (no lookup; delivery refuses a name that resolves to a metadata address)."""
    if allow_private:
        host, _ = check_url_shape(url)
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return
        if is_metadata_address(address):
            raise UnsafeUrl(f"{address} is a cloud metadata or link-local address")
        return
    resolve_checked(url, allow_private)

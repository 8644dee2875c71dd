"""Node addresses: the canonical form of a node's URL, ``host[:port]`` nameserver entries, and which member is
this process (by its own IP addresses). A leaf: membership sources build on it, it imports none of them."""

from __future__ import annotations

import functools
import ipaddress
import logging
import os
import socket
from collections.abc import Iterable, Sequence
from urllib.parse import urlsplit

from .ring import Node

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

logger = logging.getLogger("affinity_mw")


def normalize_url(url: str) -> str:
    """Canonical form of a node's base URL, so ``HTTP://Host:80/`` and ``http://host`` are the same node.

    Every node must derive the same ring from the same list, so spelling differences must not create different
    node ids. Only a scheme, a host and a port are allowed: a path, query or credentials in a peer URL is almost
    always a copy-paste mistake, and silently dropping it would route to the wrong place.
    """
    raw = url.strip()
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"Peer URL {url!r} is malformed: {exc}.") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"Peer URL {url!r} must start with http:// or https://.")
    if not parts.hostname:
        raise ValueError(f"Peer URL {url!r} has no host.")
    if parts.username or parts.password:
        raise ValueError(f"Peer URL {url!r} must not carry credentials.")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"Peer URL {url!r} must be a base URL (scheme, host and port only, no path or query).")
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    default_port = 443 if parts.scheme == "https" else 80
    port = default_port if port is None else port
    return f"{parts.scheme}://{host}:{port}"


def parse_nameservers(entries: Iterable[str]) -> list[tuple[str, int]]:
    """``host[:port]`` entries (port 53 by default, IPv6 in brackets) as ``(ip, port)`` pairs.

    A host name is resolved once, here, with the system resolver: the nameservers are what the membership
    lookups go through, so they cannot themselves depend on those lookups. Raises ``ValueError`` with the
    offending entry, at start-up.
    """
    result: list[tuple[str, int]] = []
    for raw in entries:
        text = raw.strip()
        if not text:
            continue
        host, port = _split_host_port(text)
        try:
            addresses = [str(ipaddress.ip_address(host))]
        except ValueError:
            try:
                infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
            except OSError as exc:
                raise ValueError(f"DNS nameserver {raw!r} (AFFINITY_DNS_NAMESERVER) does not resolve: {exc}.") from None
            addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        for address in addresses:
            if (address, port) not in result:
                result.append((address, port))
    return result


def _split_host_port(text: str) -> tuple[str, int]:
    port_text = ""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"DNS nameserver {text!r} (AFFINITY_DNS_NAMESERVER) must be [ipv6] or [ipv6]:port.")
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host = text  # a bare IPv6 address (several colons) or a host without a port
    if not host:
        raise ValueError(f"DNS nameserver {text!r} (AFFINITY_DNS_NAMESERVER) has no host.")
    if not port_text:
        return host, 53
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"DNS nameserver {text!r} (AFFINITY_DNS_NAMESERVER) has an invalid port {port_text!r}.")
    return host, int(port_text)


def url_host(url: str) -> str:
    return url if ":" not in url else f"[{url}]"


def address_host_ip(address: str) -> IPAddress | None:
    try:
        host = urlsplit(address).hostname
        return ipaddress.ip_address(host) if host else None
    except ValueError:
        return None


def own_ips() -> frozenset[IPAddress]:
    """``POD_IP`` (comma-separated for dual-stack), else this host's non-loopback addresses."""
    pod_ip = os.environ.get("POD_IP", "").strip()
    return _pod_ips(pod_ip) if pod_ip else _cached_host_addresses()


@functools.lru_cache(maxsize=8)
def _pod_ips(text: str) -> frozenset[IPAddress]:
    # Cached per value, so a bad POD_IP is reported once, not on every refresh.
    ips: set[IPAddress] = set()
    for part in text.split(","):
        try:
            ips.add(ipaddress.ip_address(part.strip()))
        except ValueError:
            logger.warning("affinity-mw: POD_IP %r is not an IP address; ignored", text)
    return frozenset(ips)


@functools.lru_cache(maxsize=1)
def _cached_host_addresses() -> frozenset[IPAddress]:
    # The host's addresses do not change while it runs: ask once.
    return host_addresses()


def host_addresses() -> frozenset[IPAddress]:
    """This host's non-loopback addresses: those of its name, and the source address of its default routes.

    Loopback addresses are left out because every process on the host has them: on a dev box whose members are
    127.0.0.1-3 and whose host name resolves to 127.0.0.1, each process would otherwise believe it is the
    first member. The route source (a UDP ``connect``, which sends nothing) covers containers whose host name
    resolves only to loopback.
    """
    found: set[IPAddress] = set()
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None):
            found.add(ipaddress.ip_address(str(info[4][0]).split("%")[0]))
    except (OSError, ValueError):
        pass
    for family, probe in ((socket.AF_INET, "192.0.2.1"), (socket.AF_INET6, "2001:db8::1")):
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as sock:
                sock.connect((probe, 9))
                found.add(ipaddress.ip_address(str(sock.getsockname()[0]).split("%")[0]))
        except (OSError, ValueError):
            pass
    return frozenset(ip for ip in found if not ip.is_loopback and not ip.is_unspecified)


def find_self(nodes: Sequence[Node], self_url: str | None) -> str | None:
    """This node's member id, or ``None`` when it is not (recognisably) a member.

    An explicit ``self_url`` wins; it may name the member's id or, with SRV, its address. Otherwise the
    member whose address host is ``POD_IP`` (comma-separated for dual-stack), or else one of this host's
    non-loopback addresses, is this node, but only if exactly one member matches: several members on one
    host cannot be told apart by IP (the port this process serves is not known here), and guessing wrong
    would make two nodes both serve a key.
    """
    if self_url is not None:
        for node in nodes:
            if node.id == self_url:
                return node.id
        for node in nodes:
            if node.address == self_url:
                return node.id
        return self_url
    mine = own_ips()
    matches = [node.id for node in nodes if address_host_ip(node.address) in mine]
    return matches[0] if len(matches) == 1 else None

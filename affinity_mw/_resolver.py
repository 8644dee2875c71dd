"""The DNS membership's resolver and what its answers become: the dnspython resolver it asks, how a failed lookup
reads in a log, and the ring weights SRV weights turn into."""

from __future__ import annotations

from collections.abc import Sequence
from functools import reduce
from math import gcd

import dns.exception
import dns.nameserver
import dns.resolver

__all__ = ["MAX_WEIGHT", "describe", "make_resolver", "ring_weights"]

MAX_WEIGHT = 16
"""Largest ring weight an SRV record can give a member. Ring size grows with the total weight, and a ring must
stay small enough to rebuild in milliseconds on every node; 16 already expresses a 16:1 capacity ratio."""


def ring_weights(srv_weights: Sequence[int]) -> list[int]:
    """Ring weights from SRV weights: 0 counts as 1, divided by their gcd, the largest capped at 16.

    SRV weights are often large numbers with a common factor (CoreDNS gives every endpoint of a Service
    ``100 / count``), and a ring has ``vnodes * total weight`` points, so raw weights would build rings of
    millions of points (which :class:`HashRing` refuses). Dividing by the gcd keeps equal weights at 1, so a
    homogeneous cluster gets exactly the ring a static list gives; above 16 the others are scaled in proportion
    (at least 1), so the ratio survives approximately.
    """
    weights = [max(1, int(w)) for w in srv_weights]
    if not weights:
        return []
    common = reduce(gcd, weights)
    weights = [w // common for w in weights]
    top = max(weights)
    if top > MAX_WEIGHT:
        weights = [max(1, round(w * MAX_WEIGHT / top)) for w in weights]
    return weights


def describe(exc: BaseException) -> str:
    """A one-line reason for a failed lookup, in the words an operator searches for."""
    if isinstance(exc, dns.resolver.NXDOMAIN):
        return f"NXDOMAIN: {exc}"
    if isinstance(exc, dns.resolver.NoNameservers):
        return f"no nameserver answered (SERVFAIL, refused or unreachable): {exc}"
    if isinstance(exc, dns.exception.Timeout):
        return f"timeout: {exc}"
    return f"{type(exc).__name__}: {exc}"


def make_resolver(nameservers: Sequence[tuple[str, int]], timeout: float, lifetime: float) -> dns.resolver.Resolver:
    """A resolver asking *nameservers* (``(ip, port)`` pairs), else the system's configuration."""
    if nameservers:
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [dns.nameserver.Do53Nameserver(host, port) for host, port in nameservers]
    else:
        try:
            resolver = dns.resolver.Resolver()
        except dns.exception.DNSException as exc:
            raise ValueError(
                f"No system DNS resolver configuration ({exc}); set AFFINITY_DNS_NAMESERVER to host[:port]."
            ) from None
    resolver.timeout = timeout
    resolver.lifetime = lifetime
    # EDNS with a 1232-byte UDP payload (the DNS flag day 2020 size): SRV answers for a few dozen pods do
    # not fit the classic 512 bytes, and a truncated answer would cost a TCP round trip per refresh.
    resolver.use_edns(0, 0, 1232)
    return resolver

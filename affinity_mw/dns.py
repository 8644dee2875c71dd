"""Membership from DNS: a name's A/AAAA records, or an SRV record set, refreshed on a background thread.

Why DNS and nothing cleverer: every orchestrator already publishes its instances there (a Kubernetes headless
Service, Consul, Nomad, ECS service discovery), every node can ask the same question independently, and no node
has to talk to another about who is a member. Nodes may briefly see different answers during a change; the
signed hop marker still limits every request to one hop, and the ring checksum makes the disagreement visible.

How it behaves, and why:

* **The router reads two attributes, ``ring`` and ``self_id``, once per request, with no lock.** The refresh
  thread builds a complete new ring (:func:`~affinity_mw.ring.build_ring`, of the configured algorithm) off the
  hot path and swaps ``self.ring`` in one assignment, so a request always finishes on the ring it started with.
* **DNS never empties the ring.** A timeout, an unreachable server, SERVFAIL, NXDOMAIN or an empty answer keeps
  the last good membership: a resolver hiccup must not make every node believe it is alone (each would then
  serve every key locally, and all the per-key state would scatter). Failures are counted in :attr:`stats`
  and logged, rate-limited.
* **Before the first good answer the ring is empty**, so the router serves everything locally, and lookups are
  retried with a short doubling backoff; a node that starts before its DNS entry exists must not stall.
* **Identity vs address.** With A/AAAA records a member's id and address are the same URL. With SRV records the
  id is the target name (a StatefulSet pod's stable DNS name) and the address is what that name resolves to
  now: a restarted pod keeps its keys even though its IP changed.

Also see ``docs/membership.md``.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import random
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from functools import reduce
from math import gcd
from typing import TYPE_CHECKING, Any

import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver

from ._addresses import IPAddress, find_self, normalize_url, parse_nameservers, url_host
from .ring import DEFAULT_ALGORITHM, DEFAULT_VNODES, Node, Ring, build_ring

if TYPE_CHECKING:
    from .config import Settings

__all__ = ["DnsMembership", "parse_nameservers", "ring_weights"]

logger = logging.getLogger("affinity_mw")

MIN_INTERVAL = 1.0
"""No refresh is scheduled sooner than this after a good answer, whatever the TTL says: a TTL of 0 (some service
registries use it) would otherwise turn the refresher into a busy loop against the resolver."""

MAX_WEIGHT = 16
"""Largest ring weight an SRV record can give a member. Ring size grows with the total weight, and a ring must
stay small enough to rebuild in milliseconds on every node; 16 already expresses a 16:1 capacity ratio."""

FIRST_BACKOFF = 0.25
"""Delay before the second lookup when the first one failed; it doubles up to the refresh interval."""

WARN_EVERY = 60.0
"""While lookups keep failing, one warning per this many seconds (plus the first): enough to notice, not a flood."""


class _LookupFailed(Exception):
    """A lookup produced no usable membership (empty answer, nothing resolvable, ring too large)."""


class _Closed(Exception):
    """:meth:`DnsMembership.close` was called during a lookup: stop without counting a failure."""


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


def _describe(exc: BaseException) -> str:
    """A one-line reason for a failed lookup, in the words an operator searches for."""
    if isinstance(exc, dns.resolver.NXDOMAIN):
        return f"NXDOMAIN: {exc}"
    if isinstance(exc, dns.resolver.NoNameservers):
        return f"no nameserver answered (SERVFAIL, refused or unreachable): {exc}"
    if isinstance(exc, dns.exception.Timeout):
        return f"timeout: {exc}"
    return f"{type(exc).__name__}: {exc}"


class DnsMembership:
    """Cluster membership read from DNS and kept fresh by a daemon thread.

    ``name`` is a host name whose A and AAAA records list the members (each becomes
    ``{scheme}://{ip}:{port}``, or ``workers`` members on consecutive ports from ``port``), or
    ``srv:_http._tcp.NAME`` for SRV records (the id of a member is ``{scheme}://{target}:{srv port}``, its
    address the target's current A, else AAAA, record, and its ring weight comes from the SRV weight: see
    :func:`ring_weights`).

    ``nameservers`` (``host[:port]`` strings) replace the system resolver. ``refresh`` is the seconds between
    lookups; a shorter record TTL shortens it, never below one second, and each delay is jittered by 10% so the
    nodes of a cluster do not query in lockstep. ``self_url`` names this node; without it the node finds itself
    among the members by IP address (``POD_IP``, else this host's non-loopback addresses), and only when exactly
    one member matches.

    Construction does not look the membership up: :meth:`from_settings` (what the middlewares call) does one
    lookup and starts the thread; tests and custom set-ups call :meth:`refresh` and :meth:`start` themselves.
    """

    ring: Ring
    self_id: str | None

    def __init__(
        self,
        name: str,
        *,
        port: int = 80,
        scheme: str = "http",
        nameservers: Iterable[str] = (),
        refresh: float = 5.0,
        vnodes: int = DEFAULT_VNODES,
        algorithm: str = DEFAULT_ALGORITHM,
        self_url: str | None = None,
        timeout: float = 1.0,
        lifetime: float = 2.0,
        workers: int = 1,
    ) -> None:
        text = name.strip()
        self.srv = text.lower().startswith("srv:")
        if self.srv:
            text = text[4:].strip()
        if not text:
            raise ValueError(f"AFFINITY_DNS {name!r} names no DNS name.")
        try:
            self._qname = dns.name.from_text(text)
        except dns.exception.DNSException as exc:
            raise ValueError(f"AFFINITY_DNS {name!r} is not a valid DNS name: {exc}.") from None
        if scheme not in ("http", "https"):
            raise ValueError(f"The peer scheme must be http or https, got {scheme!r}.")
        if not 0 < port < 65536:
            raise ValueError(f"The DNS member port must be a TCP port, got {port!r}.")
        if not (workers >= 1 and port + workers - 1 < 65536):
            raise ValueError(f"{workers!r} workers from port {port} do not fit in TCP ports.")
        if not refresh >= MIN_INTERVAL:
            raise ValueError(f"The DNS refresh interval must be at least {MIN_INTERVAL} s, got {refresh!r}.")
        if not (timeout > 0 and lifetime > 0):
            raise ValueError("The DNS timeout and lifetime must be positive numbers of seconds.")
        self.name = name.strip()
        self.port = port
        self.workers = workers
        self.scheme = scheme
        self.refresh_interval = float(refresh)
        self.vnodes = vnodes
        self.algorithm = algorithm
        self._self_url = normalize_url(self_url) if self_url else None
        self._nameservers = parse_nameservers(nameservers)
        self._resolver = self._make_resolver(timeout, lifetime)
        self._lifetime = lifetime

        # Empty until the first good answer: the router serves locally.
        self.ring = build_ring((), algorithm, vnodes=vnodes)
        self.self_id = self._self_url
        self._subscribers: list[Callable[[Ring, str | None, Ring, str | None], None]] = []
        self._good = False
        self._ttl: float | None = None
        self._failures_in_row = 0
        self._last_warning = float("-inf")
        self._suppressed = 0
        self._stats: dict[str, Any] = {
            "lookups": 0,
            "failures": 0,
            "consecutive_failures": 0,
            "last_error": None,
            "last_success_monotonic": None,
            "changes": 0,
        }
        self._init_locks()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._running = False
        # gunicorn --preload imports the app (and builds this) in the master, then forks workers; threads do not
        # survive a fork, so each child restarts its own refresher. A weak reference, because the hook cannot be
        # unregistered and must not keep a closed membership alive.
        ref = weakref.ref(self)

        def _after_fork_in_child() -> None:
            membership = ref()
            if membership is not None:
                membership._after_fork_in_child()

        os.register_at_fork(after_in_child=_after_fork_in_child)

    @classmethod
    def from_settings(cls, settings: Settings) -> DnsMembership:
        """Build from ``AFFINITY_DNS*`` settings, look up once, and start the refresher.

        The first lookup runs here, synchronously, so a node normally starts with its ring and routes its very
        first requests correctly; if it fails (at most one resolver lifetime, 2 s), the node starts with an
        empty ring, serves locally, and the thread retries with backoff.
        """
        if not settings.dns:
            raise ValueError("DnsMembership needs AFFINITY_DNS.")
        membership = cls(
            settings.dns,
            port=settings.dns_port,
            scheme=settings.peer_scheme,
            nameservers=settings.dns_nameserver,
            refresh=settings.dns_refresh,
            vnodes=settings.vnodes,
            algorithm=settings.ring,
            self_url=settings.self_url,
            workers=settings.workers,
        )
        membership.refresh()
        membership.start()
        return membership

    # ------------------------------------------------------------------ thread

    def start(self) -> None:
        """Start the daemon refresh thread, unless it runs already."""
        with self._state_lock:
            self._running = True
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop = threading.Event()
            self._thread = threading.Thread(
                target=self._run, args=(self._stop,), name=f"affinity-mw-dns({self.name})", daemon=True
            )
            self._thread.start()

    def close(self) -> None:
        """Stop the refresh thread and wait for it.

        The wait ends at once unless a query is in flight; the thread checks for the stop between queries, so
        it is bounded by one resolver lifetime. The ring stays as it is: closing stops updates, not routing.
        """
        with self._state_lock:
            self._running = False
            self._stop.set()
            thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=self._lifetime + 1.0)

    @property
    def running(self) -> bool:
        """Whether the refresh thread is alive (for health and introspection)."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def _run(self, stop: threading.Event) -> None:
        # A lookup already done (from_settings) sets the first wait; otherwise look up at once.
        delay = self.next_delay() if self._stats["lookups"] else 0.0
        while not stop.wait(delay):
            try:
                self.refresh(stop)
            except Exception:  # the refresher must outlive any bug; the last good ring keeps serving
                logger.exception("affinity-mw: unexpected error in the DNS refresher for %s", self.name)
            delay = self.next_delay()

    def _init_locks(self) -> None:
        self._refresh_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._rng = random.Random()

    def _after_fork_in_child(self) -> None:
        # Locks may have been held by the parent's refresher at the moment of the fork, and the child's copy
        # of the random generator would jitter exactly like its siblings'.
        self._init_locks()
        self._thread = None
        if self._running:
            self.start()

    def next_delay(self) -> float:
        """Seconds until the next lookup: backoff before the first good answer, then the (TTL-shortened)
        refresh interval, jittered by 10%."""
        jitter = self._rng.uniform(0.9, 1.1)
        if not self._good:
            backoff = FIRST_BACKOFF * (1 << min(max(0, self._failures_in_row - 1), 30))
            return min(backoff, self.refresh_interval) * jitter
        interval = self.refresh_interval
        if self._ttl is not None:
            interval = min(interval, self._ttl)
        return max(MIN_INTERVAL, interval * jitter)

    # ------------------------------------------------------------------ lookups

    def _make_resolver(self, timeout: float, lifetime: float) -> dns.resolver.Resolver:
        if self._nameservers:
            resolver = dns.resolver.Resolver(configure=False)
            resolver.nameservers = [dns.nameserver.Do53Nameserver(host, port) for host, port in self._nameservers]
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

    def _resolve(self, qname: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> tuple[list[Any], float | None]:
        """The records of one type (empty for "no records of this type") and their TTL; raises on failure.

        The system resolver's search list applies to relative names (``app.ns.svc`` in a pod finds
        ``app.ns.svc.cluster.local``); with explicit nameservers there is none and names are absolute.
        """
        answer = self._resolver.resolve(qname, rdtype, raise_on_no_answer=False, search=True)
        if answer.rrset is None:
            return [], None
        return list(answer.rrset), float(answer.chaining_result.minimum_ttl)

    def _lookup_addresses(self, stop: threading.Event | None) -> tuple[list[Node], float | None]:
        """A and AAAA of the name: every address is a member, its URL both id and address."""
        ips: list[IPAddress] = []
        ttls: list[float] = []
        for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            if stop is not None and stop.is_set():
                raise _Closed
            records, ttl = self._resolve(self._qname, rdtype)
            ips.extend(ipaddress.ip_address(r.address) for r in records)
            if ttl is not None:
                ttls.append(ttl)
        ports = range(self.port, self.port + self.workers)  # AFFINITY_WORKERS: one member per worker port
        urls = dict.fromkeys(normalize_url(f"{self.scheme}://{url_host(str(ip))}:{p}") for ip in ips for p in ports)
        return [Node(id=url, address=url) for url in urls], min(ttls, default=None)

    def _lookup_srv(self, stop: threading.Event | None) -> tuple[list[Node], float | None]:
        """SRV records, then each target's address through the same resolver."""
        records, ttl = self._resolve(self._qname, dns.rdatatype.SRV)
        ttls = [ttl] if ttl is not None else []
        # One entry per (target, port); a duplicate keeps the larger weight. "." means "no service" (RFC 2782).
        targets: dict[tuple[str, int], int] = {}
        for record in records:
            target = record.target.to_text(omit_final_dot=True).lower()
            if target in ("", "."):
                continue
            key = (target, int(record.port))
            targets[key] = max(targets.get(key, 0), int(record.weight))
        ordered = sorted(targets)
        # Weights are scaled over every advertised target, resolvable or not, so a target that fails to
        # resolve for a moment does not rescale (and reshuffle) everyone else's points.
        weights = dict(zip(ordered, ring_weights([targets[k] for k in ordered]), strict=True))
        current = self.ring
        nodes: list[Node] = []
        left_out: list[str] = []
        for target, port in ordered:
            if stop is not None and stop.is_set():
                raise _Closed
            try:
                node_id = normalize_url(f"{self.scheme}://{target}:{port}")
            except ValueError:  # a target name no URL can carry: that record alone is unusable
                left_out.append(target)
                continue
            address: str | None = None
            try:
                ip, target_ttl = self._target_address(dns.name.from_text(target))
                if ip is not None:
                    address = normalize_url(f"{self.scheme}://{url_host(str(ip))}:{port}")
                    if target_ttl is not None:
                        ttls.append(target_ttl)
            except dns.resolver.NXDOMAIN:
                pass
            except dns.exception.DNSException as exc:
                # A transient failure for one target: a member keeps its last address rather than leaving the
                # ring (and moving its keys) for one refresh.
                previous = current.get(node_id)
                if previous is not None:
                    address = previous.address
                logger.debug("affinity-mw: SRV target %s did not resolve: %s", target, _describe(exc))
            if address is None:
                left_out.append(target)
                continue
            nodes.append(Node(id=node_id, address=address, weight=weights[(target, port)]))
        if left_out:
            self._warn(f"SRV target(s) of {self.name} left out because they do not resolve: {', '.join(left_out)}")
        return nodes, min(ttls, default=None)

    def _target_address(self, target: dns.name.Name) -> tuple[IPAddress | None, float | None]:
        """One address for an SRV target: its lowest A record, else its lowest AAAA record."""
        for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            records, ttl = self._resolve(target, rdtype)
            if records:
                return min(ipaddress.ip_address(r.address) for r in records), ttl
        return None, None

    def refresh(self, stop: threading.Event | None = None) -> bool:
        """Look the membership up once; swap the ring if it changed. True when DNS gave a usable membership.

        Never raises for DNS trouble: any failure keeps the current ring and is counted and logged.
        """
        with self._refresh_lock:
            self._stats["lookups"] += 1
            try:
                nodes, ttl = self._lookup_srv(stop) if self.srv else self._lookup_addresses(stop)
                if not nodes:
                    raise _LookupFailed(f"empty answer: no {'usable SRV' if self.srv else 'A or AAAA'} records")
                self._apply(nodes)
            except _Closed:
                return False
            except (_LookupFailed, dns.exception.DNSException, OSError, ValueError) as exc:
                self._failed(str(exc) if isinstance(exc, _LookupFailed) else _describe(exc))
                return False
            if self._failures_in_row:
                logger.info(
                    "affinity-mw: DNS lookups of %s succeed again after %d failure(s)", self.name, self._failures_in_row
                )
            self._good = True
            self._ttl = ttl
            self._failures_in_row = 0
            self._stats["consecutive_failures"] = 0
            self._stats["last_success_monotonic"] = time.monotonic()
            return True

    def _apply(self, nodes: list[Node]) -> None:
        """Swap in a ring for ``nodes`` if anything the router uses changed, and re-evaluate self."""
        old = self.ring
        new_self = find_self(nodes, self._self_url)
        if new_self != self.self_id:
            if new_self is None:
                logger.info("affinity-mw: this node is not (or no longer) a member of %s", self.name)
            else:
                logger.info("affinity-mw: this node is member %s of %s", new_self, self.name)
        old_self = self.self_id
        if set(nodes) == set(old.nodes):
            self.self_id = new_self
            if new_self != old_self:
                self._notify(old, old_self, old, new_self)
            return
        # Raises ValueError for an oversized ring (or Maglev table): counted as a failure.
        new = build_ring(nodes, self.algorithm, vnodes=self.vnodes)
        # Self first: a request between the two stores sees the new self on the old ring or vice versa, and
        # either only costs a hop that the marker still bounds.
        self.self_id = new_self
        self.ring = new
        self._stats["changes"] += 1
        self._notify(old, old_self, new, new_self)
        if new.checksum == old.checksum:
            logger.info("affinity-mw: DNS membership of %s: member addresses changed, ring unchanged", self.name)
        else:
            logger.info(
                "affinity-mw: DNS membership of %s changed: %d member(s), ring %s -> %s, %.1f%% of keys moved",
                self.name,
                len(new),
                old.checksum,
                new.checksum,
                100.0 * old.moved_fraction(new),
            )

    def subscribe(self, callback: Callable[[Ring, str | None, Ring, str | None], None]) -> None:
        """Call ``callback(old_ring, old_self_id, new_ring, new_self_id)`` after each swap of the ring or of this
        node's id, in the refresh thread (ownership-change hooks use it)."""
        self._subscribers.append(callback)

    def _notify(self, old: Ring, old_self: str | None, new: Ring, new_self: str | None) -> None:
        for callback in list(self._subscribers):
            try:
                callback(old, old_self, new, new_self)
            except Exception:  # a subscriber's bug must not stop membership updates
                logger.exception("affinity-mw: a membership subscriber failed")

    def _failed(self, reason: str) -> None:
        self._failures_in_row += 1
        self._stats["failures"] += 1
        self._stats["consecutive_failures"] = self._failures_in_row
        self._stats["last_error"] = reason
        kept = f"keeping the last {len(self.ring)} member(s)" if self._good else "serving locally until one succeeds"
        # The first failure after a success is always logged: that is the moment an operator needs.
        self._warn(f"DNS lookup of {self.name} failed ({reason}); {kept}", force=self._failures_in_row == 1)

    def _warn(self, message: str, *, force: bool = False) -> None:
        """Warn at most once per :data:`WARN_EVERY` seconds, saying how many warnings were held back."""
        now = time.monotonic()
        if not force and now - self._last_warning < WARN_EVERY:
            self._suppressed += 1
            return
        suffix = f" ({self._suppressed} similar message(s) suppressed)" if self._suppressed else ""
        self._last_warning = now
        self._suppressed = 0
        logger.warning("affinity-mw: %s%s", message, suffix)

    # ------------------------------------------------------------------ introspection

    @property
    def stats(self) -> dict[str, Any]:
        """A snapshot: ``lookups``, ``failures``, ``consecutive_failures``, ``last_error``,
        ``last_success_monotonic`` (``time.monotonic()`` of the last good answer, or ``None``) and ``changes``
        (ring swaps)."""
        return dict(self._stats)

    def __repr__(self) -> str:
        return f"DnsMembership({self.name!r}, self={self.self_id!r}, ring={self.ring!r})"

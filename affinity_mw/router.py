"""The routing decision: serve here, forward to the key's owner (with a failover order), or reject.

This module does no I/O and knows no framework. Adapters hand it a :class:`~affinity_mw.request.RequestView` and
the raw hop header; it returns a :class:`Decision` that the adapter carries out and also exposes to the app, so
an app can log or assert where its requests were routed.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from .balance import Balancer
from .health import PeerHealth
from .hop import HopMarker, HopSigner
from .hotkeys import HotKeys
from .keys import Extractor, plain_header_name
from .request import RequestView
from .ring import Node, Ring
from .routes import RoutePolicy

__all__ = ["FORWARD", "LOCAL", "REJECT", "Decision", "Router"]

logger = logging.getLogger("affinity_mw")

_HASH_CACHE_SIZE = 65536
_LOCAL_CACHE_SIZE = 16384

LOCAL = "local"
FORWARD = "forward"
REJECT = "reject"


class Decision:
    """Where one request goes, and why.

    ``action`` is ``"local"``, ``"forward"`` or ``"reject"``. ``reason`` says why: ``owner`` (this node owns the
    key), ``hop`` (a peer already routed it here), ``no-key``, ``single-node``, ``not-member``, ``failover``
    (the owner was unreachable and this node is next), ``fallback`` (no peer was reachable), ``spill`` (the
    owner was over its bounded load: the key's next successor with room serves it), ``excluded`` (the route is
    not routed, see ``AFFINITY_ROUTES``), ``shadow`` (``AFFINITY_MODE=shadow``: served here, where routing would
    have sent it is in ``owner`` and ``candidates``). ``candidates`` is the
    failover order for a forward, owner first. ``served_by`` is filled in by the forwarder with the peer that
    answered; ``attempts`` counts connection attempts. ``skew`` is true when a hop's sender built its ring from
    a different membership than this node's.
    """

    __slots__ = (
        "action",
        "attempts",
        "candidates",
        "key",
        "key_hash",
        "marker",
        "owner",
        "reason",
        "ring",
        "self_is_next",
        "served_by",
        "skew",
    )

    def __init__(
        self,
        action: str,
        reason: str,
        ring: Ring,
        key: str | None = None,
        key_hash: int | None = None,
        owner: Node | None = None,
        candidates: tuple[Node, ...] = (),
        marker: HopMarker | None = None,
    ) -> None:
        self.action = action
        self.reason = reason
        self.ring = ring
        self.key = key
        self.key_hash = key_hash
        self.owner = owner
        self.candidates = candidates
        self.marker = marker
        self.served_by: str | None = None
        self.attempts = 0
        self.self_is_next = False
        self.skew = False

    @property
    def local(self) -> bool:
        return self.action == LOCAL

    @property
    def hops(self) -> int:
        """Hops this request has taken before reaching the node that serves it (0 or 1)."""
        return 1 if self.marker is not None else 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "reason": self.reason,
            "key": self.key,
            "owner": self.owner.id if self.owner else None,
            "candidates": [node.id for node in self.candidates],
            "served_by": self.served_by,
            "hops": self.hops,
            "attempts": self.attempts,
            "ring_checksum": self.ring.checksum,
            "sender": self.marker.sender if self.marker else None,
            "ring_skew": self.skew,
        }

    def __repr__(self) -> str:
        owner = self.owner.id if self.owner else None
        return f"Decision(action={self.action!r}, reason={self.reason!r}, key={self.key!r}, owner={owner!r})"


class _LocalCache:
    """One generation of the decision cache: for one ring object and one self id, the shared decision of each
    key this node owns, by key and (for a plain header key) by the header's raw value; and for keys it forwards,
    what a fresh forward decision is built from while no peer is ejected (hash, owner, candidates, whether this
    node is next, reason)."""

    __slots__ = ("by_key", "by_value", "excluded", "forward", "ring", "self_id")

    def __init__(self, ring: Ring | None, self_id: str | None) -> None:
        self.ring = ring
        self.self_id = self_id
        self.by_key: dict[str, Decision] = {}
        self.by_value: dict[bytes | str, Decision] = {}
        self.forward: dict[str, tuple[int, Node, tuple[Node, ...], bool, str]] = {}
        self.excluded: Decision | None = None


class Router:
    """Turns a request into a :class:`Decision`, given the current ring, this node's id, peer health and the hop
    signer.

    ``membership`` is anything with ``ring`` and ``self_id`` attributes; the ring is read once per request so a
    membership change between two reads cannot split one decision across two rings. ``counters`` counts every
    decision by kind (see ``docs/operations.md``); increments are plain dict updates, cheap enough for the hot
    path and exact under the GIL for one thread, approximate under many.
    """

    def __init__(
        self,
        *,
        membership: Any,
        extractor: Extractor | None,
        signer: HopSigner | None,
        no_key: str = "local",
        max_attempts: int = 3,
        max_key_length: int = 1024,
        health: PeerHealth | None = None,
        hot: HotKeys | None = None,
        balancer: Balancer | None = None,
        routes: RoutePolicy | None = None,
        shadow: bool = False,
    ) -> None:
        self.membership = membership
        self.extractor = extractor
        self.signer = signer
        self.reject_without_key = no_key == "reject"
        self.max_attempts = max_attempts
        self.max_key_length = max_key_length
        self.health = health if health is not None else PeerHealth()
        self.counters: Counter[str] = Counter()
        # The recent request rate per key (hot keys), bounded loads, route policy and shadow mode: each None/False
        # when off, and then costs one attribute test per request.
        self.balancer = balancer
        self.hot = balancer.hot if balancer is not None else hot
        self.routes = routes
        self.shadow = shadow
        self.shadow_targets: Counter[str] = Counter()  # where routing would have sent requests (shadow mode)
        self._hashes: dict[str, int] = {}
        self._cache = _LocalCache(None, None)
        self.header_key = plain_header_name(extractor)

    def key_from_header(self, value: bytes | str | None) -> str | None:
        """What :meth:`extract` returns for a plain ``header()`` extractor (:attr:`header_key`), given the
        header's first value from the adapter's own scan of the headers (bytes; WSGI's environ holds a
        latin-1 ``str``): no request view, no second scan."""
        if value is None:
            return None
        if isinstance(value, str):
            try:
                value.encode("latin-1")  # what an environ can hold (PEP 3333); the general path refuses the rest
            except UnicodeEncodeError:
                return None
            key = value.strip()
        else:
            key = value.decode("latin-1").strip()
        if not key or len(key) > self.max_key_length:
            return None
        return key

    def extract(self, view: RequestView) -> str | None:
        """The request's key, or ``None``. A failing custom extractor must not turn into a 500 for the client."""
        if self.extractor is None:
            return None
        try:
            key = self.extractor(view)
        except Exception:
            logger.exception(
                "affinity-mw: key extractor %r raised; treating the request as having no key", self.extractor
            )
            return None
        if not key or len(key) > self.max_key_length:
            return None
        return key

    def check_marker(self, token: bytes) -> HopMarker | None:
        """The hop marker's content if it is authentic and fresh; forged, stale or malformed ones are counted."""
        marker = self.signer.verify(token) if self.signer is not None else None
        if marker is None:
            self.counters["invalid_marker"] += 1
            logger.debug("affinity-mw: ignoring an invalid or stale hop marker")
        return marker

    def decide(self, view: RequestView, marker: HopMarker | None = None) -> Decision:
        """Route ``view``. With an authentic ``marker`` (see :meth:`check_marker`) the answer is always "serve
        here": a peer already routed this request, and serving it where it lands is what makes a loop impossible
        whatever the two nodes think of membership, configuration or the key. ``view`` must then be the request
        as the first node saw it (adapters restore it from the marker first)."""
        if marker is None and self.routes is not None and not self.routes.routed(view.method, view.path):
            return self._excluded()
        key = self.extract(view)
        if marker is not None:
            decision = self._hop(self.membership.ring, key, marker, self.membership.self_id)
        else:
            decision = self.route(key)
        if logger.isEnabledFor(logging.DEBUG):
            self._log(view.method, view.path, decision)
        return decision

    def decide_by_header(self, value: bytes | str | None, method: str, path: str) -> Decision:
        """:meth:`decide` for a request without a hop marker when the key is a plain header (:attr:`header_key`)
        and ``value`` is its first value: the same decision, for the adapters' common case, without a view."""
        if self.routes is not None and not self.routes.routed(method, path):
            return self._excluded()
        membership = self.membership
        cache = self._cache
        if membership.ring is cache.ring and membership.self_id == cache.self_id:
            try:
                decision = cache.by_value.get(value)  # type: ignore[arg-type]
            except TypeError:  # not bytes: an ASGI server off the spec; the general path below copes
                decision = None
            if decision is not None and self.hot is not None:
                if self.balancer is not None or self.shadow:
                    # The key may be spread or shadowed: route() decides, its cache answers the rest.
                    decision = self.route(decision.key)
                    if logger.isEnabledFor(logging.DEBUG):
                        self._log(method, path, decision)
                    return decision
                self.hot.add(decision.key)  # type: ignore[arg-type]
            if decision is not None:
                self.counters["local_owner"] += 1
                if logger.isEnabledFor(logging.DEBUG):
                    self._log(method, path, decision)
                return decision
        decision = self.route(self.key_from_header(value))
        # Remember it by value too when it is the shared decision of the current generation, and only for a value
        # that is exactly the key: padding a key with whitespace must not be a way to fill memory.
        cache = self._cache
        if (
            decision.key is not None
            and type(value) in (bytes, str)
            and len(value) == len(decision.key)  # type: ignore[arg-type]
            and cache.by_key.get(decision.key) is decision
        ):
            if len(cache.by_value) >= _LOCAL_CACHE_SIZE:
                cache.by_value.clear()
            cache.by_value[value] = decision  # type: ignore[index]
        if logger.isEnabledFor(logging.DEBUG):
            self._log(method, path, decision)
        return decision

    def hop_by_header(self, value: bytes | str | None, marker: HopMarker, method: str, path: str) -> Decision:
        """:meth:`decide` for a request with an authentic ``marker`` when the key is a plain header and ``value`` is
        its first value in the restored request: the owner's side of a forward, without a view."""
        membership = self.membership
        decision = self._hop(membership.ring, self.key_from_header(value), marker, membership.self_id)
        if logger.isEnabledFor(logging.DEBUG):
            self._log(method, path, decision)
        return decision

    def _log(self, method: str, path: str, decision: Decision) -> None:
        # The key is logged as its hash only: keys are tenant ids, session ids or token claims.
        logger.debug(
            "affinity-mw: %s %s key=%s action=%s reason=%s owner=%s",
            method,
            path,
            f"{decision.key_hash:016x}" if decision.key_hash is not None else "-",
            decision.action,
            decision.reason,
            decision.owner.id if decision.owner else "-",
        )

    def _excluded(self) -> Decision:
        """The shared decision for a request on a route that is not routed: served here, no key extracted."""
        self.counters["excluded"] += 1
        cache = self._cache
        ring = self.membership.ring
        if cache.excluded is None or cache.excluded.ring is not ring:
            cache.excluded = Decision(LOCAL, "excluded", ring)  # a generation's own, or one for an old generation
        return cache.excluded

    def route(self, key: str | None) -> Decision:
        """Where a request with ``key`` goes when no peer has routed it yet: :meth:`_route`'s answer after the key
        is counted, or with bounded loads a successor's (:meth:`_spread`); in shadow mode served here all the same."""
        hot = self.hot
        if hot is None or key is None:
            decision = self._route(key)
        else:
            balancer = self.balancer
            if balancer is None:
                hot.add(key)
                decision = self._route(key)
            elif balancer.heavy(key):
                decision = self._spread(key, balancer)
            else:
                decision = self._route(key)
                owner = decision.owner
                balancer.record(owner.id if owner is not None else "")
        if self.shadow and key is not None:
            return self._shadowed(decision)
        return decision

    def _shadowed(self, decision: Decision) -> Decision:
        """Shadow mode: count where routing sends ``decision``'s request, and serve it here."""
        counters = self.counters
        if decision.action == FORWARD:
            counters["shadow_forward"] += 1
            counters["forwarded"] -= 1  # counted by _route as if it went: it did not
            self.shadow_targets[decision.candidates[0].id] += 1
            d = decision
            shadow = Decision(LOCAL, "shadow", d.ring, d.key, d.key_hash, d.owner, d.candidates)
            shadow.served_by = self.membership.self_id
            return shadow
        if decision.reason in ("owner", "spill", "single-node"):
            self.shadow_targets[self.membership.self_id or ""] += 1
        return decision

    def _spread(self, key: str, balancer: Balancer) -> Decision:
        """Bounded loads for a heavy key: the first of its live successors, owner first, with room."""
        membership = self.membership
        ring: Ring = membership.ring
        self_id = membership.self_id
        self._generation(ring, self_id)
        shares = balancer.shares(ring)
        key_hash = self._hash(key, ring)
        health = self.health
        order = list(ring.successors(key_hash))
        if health.any_ejected:  # set-aside peers are skipped as if they had left the ring, as in _route
            order = [n for n in order if n.id == self_id or health.usable(n.id)]
        if len(order) < 2:
            return self._route(key)
        ids = [node.id for node in order]
        index = balancer.place(key, ids, [shares[i] for i in ids])
        if index == 0:
            return self._route(key)
        self.counters["spilled"] += 1
        owner = ring.owner(key_hash)
        if ids[index] == self_id:
            self.counters["local_spill"] += 1
            decision = Decision(LOCAL, "spill", ring, key, key_hash, owner)
            decision.served_by = self_id
            return decision
        found: list[Node] = []
        for node in order[index:]:
            if node.id == self_id or len(found) == self.max_attempts:
                break
            found.append(node)
        rest = order[index + len(found) :]
        decision = Decision(FORWARD, "spill", ring, key, key_hash, owner, tuple(found))
        decision.self_is_next = bool(rest) and rest[0].id == self_id
        self.counters["forwarded"] += 1
        return decision

    def _route(self, key: str | None) -> Decision:
        """Where a request with ``key`` (already extracted and validated) goes to its owner.

        Keys this node owns are answered from a bounded cache of shared, read-only decisions: that is the local
        path, which must cost next to nothing. The cache belongs to one ring and one self id and is dropped
        when either changes; forwards are decided afresh each time (they depend on peer health, and the
        forwarder records its attempts on the decision).
        """
        membership = self.membership
        ring: Ring = membership.ring
        self_id = membership.self_id
        counters = self.counters
        if key is None:
            counters["no_key"] += 1
            if self.reject_without_key:
                counters["rejected"] += 1
                return Decision(REJECT, "no-key", ring)
            return Decision(LOCAL, "no-key", ring)
        cache = self._generation(ring, self_id)
        local = cache.by_key
        decision = local.get(key)
        if decision is not None:
            counters["local_owner"] += 1
            return decision
        planned = cache.forward.get(key)
        if planned is not None and not self.health.any_ejected:
            decision = Decision(FORWARD, planned[4], ring, key, planned[0], planned[1], planned[2])
            decision.self_is_next = planned[3]
            counters["forwarded"] += 1
            return decision
        key_hash = self._hash(key, ring)
        owner = ring.owner(key_hash)
        if owner is None or owner.id == self_id:
            counters["local_owner"] += 1
            reason = "owner" if owner is not None and len(ring) > 1 else "single-node"
            decision = Decision(LOCAL, reason, ring, key, key_hash, owner)
            decision.served_by = self_id
            if len(local) >= _LOCAL_CACHE_SIZE:
                local.clear()
            local[key] = decision
            return decision
        health = self.health
        ejected = health.any_ejected
        if ejected:
            # Set-aside peers are skipped as if they had left the ring: their keys go to their successors only.
            order = [n for n in ring.successors(key_hash) if n.id == self_id or health.usable(n.id)]
            if order and order[0].id == self_id:
                counters["failover"] += 1
                return Decision(LOCAL, "failover", ring, key, key_hash, owner)
        else:
            order = list(ring.successors(key_hash, self.max_attempts + 1))
        found: list[Node] = []
        for node in order:
            if node.id == self_id or len(found) == self.max_attempts:
                break
            found.append(node)
        candidates = tuple(found)
        self_is_next = len(order) > len(candidates) and order[len(candidates)].id == self_id
        reason = "owner" if self_id else "not-member"
        decision = Decision(FORWARD, reason, ring, key, key_hash, owner, candidates)
        decision.self_is_next = self_is_next
        if not ejected:
            if len(cache.forward) >= _LOCAL_CACHE_SIZE:
                cache.forward.clear()
            cache.forward[key] = (key_hash, owner, candidates, self_is_next, reason)
        counters["forwarded"] += 1
        return decision

    def _generation(self, ring: Ring, self_id: str | None) -> _LocalCache:
        """The decision cache of ``ring`` and ``self_id``; a new one when either changed."""
        cache = self._cache
        if ring is not cache.ring or self_id != cache.self_id:
            # A new generation, swapped in by one assignment: a thread still deciding on the old ring holds the
            # old generation and can only fill that one.
            self._cache = cache = _LocalCache(ring, self_id)
            self.health.forget(node.id for node in ring.nodes)  # peers that left the ring: their health too
        return cache

    def _hash(self, key: str, ring: Ring) -> int:
        """``ring.key_hash(key)`` through a bounded memo: hot keys repeat, and blake2b is most of a lookup's cost.

        One memo serves every ring of the process: they are all of the one configured algorithm (``AFFINITY_RING``),
        so they hash a key alike (blake2b; CRC32 for ``nginx``)."""
        key_hash = self._hashes.get(key)
        if key_hash is None:
            if len(self._hashes) >= _HASH_CACHE_SIZE:
                self._hashes.clear()
            key_hash = self._hashes[key] = ring.key_hash(key)
        return key_hash

    def _hop(self, ring: Ring, key: str | None, marker: HopMarker, self_id: str | None) -> Decision:
        """A peer routed this here: serve it whatever our ring says, and record any disagreement."""
        counters = self.counters
        counters["hop"] += 1
        key_hash = self._hash(key, ring) if key is not None else None
        owner = ring.owner(key_hash) if key_hash is not None else None
        decision = Decision(LOCAL, "hop", ring, key, key_hash, owner, marker=marker)
        if key_hash != marker.key_hash:
            # Both nodes should extract the same key from the same request; they differ while their key settings
            # differ (a rollout) or if a captured marker is replayed for another key. Served here all the same.
            counters["marker_key_mismatch"] += 1
        if owner is not None and owner.id != self_id:
            counters["misroute"] += 1
        if marker.ring_checksum != ring.checksum:
            # The sender's membership differs from ours: a rollout or a DNS change in progress.
            counters["ring_skew"] += 1
            decision.skew = True
        return decision

    def serve_after_failover(self, decision: Decision, fallback_local: bool) -> bool:
        """After every candidate refused: serve here? Yes when this node is the key's next owner (the ring's own
        answer without the dead nodes), or when the fallback policy says so. Records why on the decision."""
        if decision.self_is_next:
            decision.reason = "failover"
            self.counters["failover"] += 1
        elif fallback_local:
            decision.reason = "fallback"
            self.counters["fallback"] += 1
        else:
            return False
        decision.action = LOCAL
        return True

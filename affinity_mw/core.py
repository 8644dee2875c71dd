"""The composition root: settings, membership, hop signer, health, router, metrics and forwarding, built once;
and the admission step every adapter sends each request through.

The ASGI and WSGI adapters differ only in how they read a request and move bytes. Each hands
:meth:`AffinityCore.admit` a request view and gets back a :class:`~affinity_mw.router.Decision` or a ready
:class:`~affinity_mw._forwarding.Answer`; a forward decision then goes to ``forward_async`` or ``forward_sync``
(:mod:`affinity_mw._forwarding`). Nothing below this module holds the whole core: each part is given what it
reads (``docs/design.md``).
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from ._plan import Answer, Forwarding, RetryBudget, debug_headers
from ._wssessions import MOVED_REASON, OpenWebSockets, Session
from .balance import Balancer, BoundedLoads, hot_status
from .config import Settings
from .forward import BODY_TOO_LARGE, DRAINING_HEADER, HEADERS_TOO_LARGE, Headers
from .health import PeerHealth, answers_200
from .hop import HopMarker, HopSigner
from .hotkeys import HotKeys
from .introspect import AUTH_HEADER, Introspection
from .keys import generating_cookie
from .membership import membership_from_settings
from .metrics import Metrics
from .ownership import MintError, OwnershipChange, OwnershipHooks, mint_key, owns
from .request import RequestView
from .ring import Ring
from .router import REJECT, Decision, Router
from .routes import RoutePolicy, with_exclusions

__all__ = ["AffinityCore", "Incoming"]

logger = logging.getLogger("affinity_mw")
_JSON = "application/json"

_DRAINING = (DRAINING_HEADER, b"1")
_NO_KEY_REJECTED = Answer(400, b"This request carries no affinity key (AFFINITY_NO_KEY=reject).\n")


class Incoming(Protocol):
    """What admission reads of a request: an adapter's view over its scope or environ.

    The adapter scans the headers once when it builds the view: ``header_bytes`` (names plus values), whether any
    ``X-Affinity-*`` header came (``internal``), the raw hop marker (``hop_token``) and the first value of the
    router's plain key header (``key_value``, when the key is one). :meth:`restore` strips our headers and, on a
    hop, shows the request as the first node saw it; it updates ``header_bytes`` and ``key_value``.
    """

    @property
    def method(self) -> str: ...
    @property
    def path(self) -> str: ...
    @property
    def header_bytes(self) -> int: ...
    @property
    def internal(self) -> bool: ...
    @property
    def hop_token(self) -> bytes | None: ...
    @property
    def key_value(self) -> bytes | str | None: ...
    @property
    def client_host(self) -> str | None: ...
    @property
    def query(self) -> str: ...

    def restore(self, marker: HopMarker | None) -> None: ...

    def content_length(self) -> bytes | str | None: ...

    def header(self, name: str) -> str | None: ...

    def view(self) -> RequestView: ...


class AffinityCore:
    """Settings (keyword options over ``AFFINITY_*`` variables), membership, signer and router, built once.

    ``membership`` replaces the static peer list with any object that has ``ring`` and ``self_id`` attributes.
    ``environ`` is for tests and for frameworks that keep their settings elsewhere (Flask's ``app.config``).
    """

    def __init__(self, *, membership: Any = None, environ: Mapping[str, str] | None = None, **options: Any) -> None:
        self.settings = settings = Settings.load(options, environ)
        if membership is None:
            membership = membership_from_settings(settings)
        self.membership = membership
        self.signer = HopSigner(settings.secret, max_age=settings.hop_max_age) if settings.secret else None
        checks = settings.health_interval if settings.health_path else 0.0  # nothing to ask without the path
        self.health = PeerHealth(
            eject_after=settings.eject_after,
            base=settings.eject_time,
            max_ejection=settings.eject_time * 10,
            hold_draining=checks > 0,
            check=self._answers_health_path,
            interval=checks,
        )
        hot = HotKeys(settings.hot_keys) if settings.hot_keys else None
        self.router = router = Router(
            membership=membership,
            extractor=settings.extractor,
            signer=self.signer,
            no_key=settings.no_key,
            max_attempts=settings.max_attempts,
            max_key_length=settings.max_key_length,
            health=self.health,
            hot=hot,
            balancer=(
                Balancer(BoundedLoads(settings.balance_factor, settings.balance_floor), len(membership.ring), hot)
                if settings.balance_factor is not None and hot is not None
                else None
            ),
            routes=RoutePolicy.parse(settings.routes) if settings.routes else None,
            shadow=settings.mode == "shadow",
        )
        self._configured_routes = router.routes
        self.counters = router.counters
        self.draining = False
        is_draining = self._is_draining
        self.metrics = Metrics(
            counters=self.counters,
            membership=membership,
            health=self.health,
            draining=is_draining,
            hot=functools.partial(hot_status, router, settings.show_keys),
        )
        self.debug_headers = settings.debug_headers
        self.fallback_local = settings.fallback == "local"
        self.health_path = settings.health_path
        self.max_header_bytes = settings.max_header_bytes
        self.max_body = settings.max_body
        # Websockets open here (served or relayed), closed from outside when this node drains or their keys move;
        # ownership changes go to the app's callbacks and the status page.
        self.websockets = OpenWebSockets()
        self.ownership = OwnershipHooks()
        self.generated_cookie = generating_cookie(settings.extractor) if settings.extractor is not None else None
        subscribe = getattr(membership, "subscribe", None)
        if callable(subscribe):
            subscribe(self._ring_swapped)
        self.introspection = Introspection(
            settings=settings,
            membership=membership,
            health=self.health,
            metrics=self.metrics,
            draining=is_draining,
            ownership=self.ownership.as_list,
            websockets=self.websockets.__len__,
        )
        # Admission tests request paths against these with one str.startswith before routing anything.
        self.internal_prefixes = tuple(p for p in (settings.health_path, self.introspection.path) if p)
        self.budget = RetryBudget()
        # Settings requires a secret whenever there is a peer to forward to: no signer, no forwarding.
        self.forwarding = (
            Forwarding(
                membership=membership,
                signer=self.signer,
                health=self.health,
                budget=self.budget,
                observe=self.metrics.observe_forward,
                counters=self.counters,
                after_failover=functools.partial(router.serve_after_failover, fallback_local=self.fallback_local),
                read_timeout=settings.read_timeout,
                deadline=settings.deadline,
                forwarded_headers=settings.forwarded_headers,
                max_body=settings.max_body,
                debug_headers=settings.debug_headers,
                min_rate=settings.min_rate,
                min_rate_grace=settings.min_rate_grace,
            )
            if self.signer is not None
            else None
        )

    def mark_unrouted(self, rules: list[str]) -> None:
        """Exclusions for the app's routes marked with :func:`~affinity_mw.routes.unrouted`, tried before the
        ``AFFINITY_ROUTES`` rules (found again from scratch each time the app is read, never stacked)."""
        if rules:
            self.router.routes = with_exclusions(self._configured_routes, rules)

    @property
    def self_id(self) -> str | None:
        return self.membership.self_id  # type: ignore[no-any-return]

    def _is_draining(self) -> bool:
        return self.draining

    def transport_options(self) -> dict[str, Any]:
        s = self.settings
        return {
            "pool_size": s.pool_size,
            "keepalive": s.keepalive,
            "connect_timeout": s.connect_timeout,
            "read_timeout": s.read_timeout,
        }

    def admit(self, request: Incoming) -> Decision | Answer:
        """The one admission step: the middleware's own paths, then (on the request as the first node saw it) the
        431/413 refusals, then the routing decision. A ``"local"`` or ``"forward"`` decision, or a ready answer.

        Route policy and a load view belong in the router's decision, not here: admission only decides whether a
        request may be routed at all.
        """
        path = request.path
        prefixes = self.internal_prefixes
        if prefixes and path.startswith(prefixes):
            answer = self.internal_response(request.method, path, request.client_host, request.query, request.header)
            if answer is not None:
                return Answer(*answer)
        router = self.router
        token = request.hop_token
        marker = router.check_marker(token) if token is not None else None
        if request.internal:
            # Strip our headers, and on a hop show the request as the first node saw it: the key is then
            # extracted from the same request on both nodes (an `ip` key included).
            request.restore(marker)
        header_bytes = request.header_bytes
        if header_bytes > self.max_header_bytes or self.max_body:
            refusal = self.refusal(header_bytes, request.content_length() if self.max_body else None)
            if refusal is not None:  # before routing: the same answer whichever node owns the key
                return Answer(*refusal)
        if router.header_key is not None:
            if marker is None:
                decision = router.decide_by_header(request.key_value, request.method, path)
            else:
                decision = router.hop_by_header(request.key_value, marker, request.method, path)
        else:
            decision = router.decide(request.view(), marker)
        if decision.action == REJECT:
            return _NO_KEY_REJECTED
        return decision

    def serve_here(self, decision: Decision, scheme: str = "http") -> Headers | None:
        """Record that this node serves ``decision``; the response headers to add, if any (debug, draining, a
        generated affinity cookie for a request that carried no key: ``scheme`` says whether it came over TLS)."""
        if decision.served_by != self.membership.self_id:  # cached local decisions are shared: no write in steady state
            decision.served_by = self.membership.self_id
        cookie = self._issue_cookie(decision, scheme) if self.generated_cookie is not None else None
        if not (self.debug_headers or self.draining or cookie):
            return None
        extra = debug_headers(decision, self.membership.self_id) if self.debug_headers else []
        if self.draining:
            extra.append(_DRAINING)
        if cookie:
            extra.append(cookie)
        return extra

    def _issue_cookie(self, decision: Decision, scheme: str) -> tuple[bytes, bytes] | None:
        """A generated cookie holding a key this node owns, for a request that carried none (its decision, made
        for this request alone, then shows the key); ``None`` when the key came, or this node owns nothing."""
        if decision.reason != "no-key" or decision.marker is not None or self.generated_cookie is None:
            return None
        try:
            key = self.mint_key()
        except MintError:
            return None
        decision.key = key
        self.counters["cookies_issued"] += 1
        return b"set-cookie", self.generated_cookie.set_cookie(key, https=scheme in ("https", "wss"))

    def owns(self, key: str) -> bool:
        """Whether this node owns ``key`` on its current ring."""
        return owns(self.membership.ring, self.membership.self_id, key)

    def mint_key(self, prefix: str = "", nbytes: int = 16) -> str:
        """A fresh random identifier that this node owns (:func:`affinity_mw.ownership.mint_key`)."""
        return mint_key(self.membership.ring, self.membership.self_id, prefix=prefix, nbytes=nbytes)

    def on_ownership_change(self, callback: Callable[[OwnershipChange], Any]) -> Callable[[OwnershipChange], Any]:
        """Register a callback (plain or ``async``) for the keys this node gains and loses when membership
        changes (:class:`affinity_mw.ownership.OwnershipChange`); usable as a decorator."""
        return self.ownership.add(callback)

    def _ring_swapped(self, old: Ring, old_self: str | None, new: Ring, new_self: str | None) -> None:
        """Membership changed (the membership's thread): tell the app, then apply the websocket move policy."""
        self.ownership.ring_swapped(old, new, new_self, old_self)
        if self.settings.ws_on_move != "close":
            return

        def moved(session: Session) -> bool:
            owner = new.owner_of(session.key) if session.key is not None else None
            return owner is not None and owner.id != (session.peer or new_self)

        closed = self.websockets.close_where(moved, 1012, MOVED_REASON, self.settings.ws_move_grace)
        if closed:
            logger.info("affinity-mw: closing %d websocket(s) whose key moved", closed)

    def refusal(self, header_bytes: int, content_length: bytes | str | None) -> tuple[int, bytes] | None:
        """The 431 or 413 a request gets before routing, or ``None`` to go on.

        ``header_bytes`` is the sum of the name and value lengths of the request's header lines, as the first
        node saw them (on a hop, measured after the forwarder's own headers were removed), so the answer never
        depends on which node owns the key. ``content_length`` is the declared length; a malformed one is left
        to the framing checks.
        """
        if header_bytes > self.max_header_bytes:
            return HEADERS_TOO_LARGE
        if self.max_body and content_length:
            try:
                declared = int(content_length)
            except ValueError:
                return None
            if declared > self.max_body:
                return BODY_TOO_LARGE
        return None

    def start_draining(self) -> None:
        """Shutting down: answer the health path with 503 and mark every response, so load balancers and peers
        stop sending new requests here while in-flight ones finish."""
        if not self.draining:
            self.draining = True
            logger.warning("affinity-mw: %s is draining", self.self_id)
            self.websockets.close_where(
                lambda session: True,
                1001,
                "affinity-mw: this node is draining; reconnect",
                self.settings.ws_drain_grace,
                still=self._is_draining,
            )

    def stop_draining(self) -> None:
        """Undo a drain that was started by mistake (a rollout aborted before the process stopped)."""
        if self.draining:
            self.draining = False
            logger.warning("affinity-mw: %s stopped draining", self.self_id)

    def status(self) -> dict[str, Any]:
        """What the health path answers: enough to see at a glance whether nodes agree and who is set aside."""
        ring = self.membership.ring
        return {
            "node": self.self_id,
            "status": "draining" if self.draining else "ok",
            "ring_checksum": ring.checksum,
            "members": [node.id for node in ring.nodes],
            "set_aside": self.health.ejected(),
            "counters": dict(self.counters),
            "membership": getattr(self.membership, "stats", None),
        }

    def internal_response(
        self,
        method: str,
        path: str,
        client_host: str | None,
        query: str = "",
        header: Callable[[str], str | None] = lambda name: None,
    ) -> tuple[int, bytes, str] | None:
        """The answer for the middleware's own paths, or ``None`` when ``path`` is the app's.

        The health path answers everyone with its status code (load balancers need it) but shows the details
        (members, counters) only to whoever may read the introspection path. ``POST {health_path}/drain`` (and
        ``DELETE`` to undo) must be signed with the cluster secret (``affinity-mw drain URL`` does it): a
        source address proves nothing behind a sidecar or a local proxy, where every client is on loopback.
        """
        if path == self.health_path:
            if method not in ("GET", "HEAD"):
                return 405, b'{"error": "use GET"}\n', _JSON
            status = 503 if self.draining else 200
            if self.introspection.allowed(client_host, header(AUTH_HEADER)):
                return status, json.dumps(self.status()).encode() + b"\n", _JSON
            return status, json.dumps({"status": "draining" if self.draining else "ok"}).encode() + b"\n", _JSON
        if path == self.health_path + "/drain":
            if method not in ("POST", "DELETE"):
                return 405, b'{"error": "use POST to drain, DELETE to undo"}\n', _JSON
            if not self.introspection.signed(header(AUTH_HEADER)):
                return 403, b'{"error": "sign the request with the cluster secret (affinity-mw drain URL)"}\n', _JSON
            if method == "POST":
                self.start_draining()
            else:
                self.stop_draining()
            state = "draining" if self.draining else "ok"
            return 200, json.dumps({"node": self.self_id, "status": state}).encode() + b"\n", _JSON
        return self.introspection.respond(method, path, query, client_host, header)

    def _answers_health_path(self, node_id: str) -> bool:
        """The active check of a set-aside peer (run by :class:`~affinity_mw.health.PeerHealth`'s thread)."""
        node = self.membership.ring.get(node_id)
        return node is not None and answers_200(node.address + self.health_path, self.settings.connect_timeout)

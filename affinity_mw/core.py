"""What every adapter builds once at start-up: settings, membership, hop signer, router and policies.

The ASGI, WSGI, Flask and Django adapters differ only in how they read a request and move bytes. Everything
else, and every decision that does no I/O, is here or in :mod:`~affinity_mw.router` and
:mod:`~affinity_mw.forward`, so the adapters cannot drift apart.
"""

from __future__ import annotations

import functools
import http.client
import json
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from .balance import Balancer, BoundedLoads
from .config import Settings
from .forward import BODY_TOO_LARGE, DRAINING_HEADER, HEADERS_TOO_LARGE, BodyLimit, ForwardPlan, Headers
from .health import PeerHealth
from .hop import HopSigner
from .hotkeys import HotKeys
from .introspect import AUTH_HEADER, Introspection
from .membership import membership_from_settings
from .metrics import Metrics
from .router import Decision, Router
from .routes import RoutePolicy, with_exclusions

__all__ = ["DRAINING", "NO_KEY_REJECTED", "OWNER_HEADER", "SERVED_BY_HEADER", "AffinityCore"]

logger = logging.getLogger("affinity_mw")
_JSON = "application/json"

SERVED_BY_HEADER = b"x-affinity-served-by"
OWNER_HEADER = b"x-affinity-owner"
DRAINING = (DRAINING_HEADER, b"1")
NO_KEY_REJECTED = (400, b"This request carries no affinity key (AFFINITY_NO_KEY=reject).\n")


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
        self.health = PeerHealth(
            eject_after=settings.eject_after,
            base=settings.eject_time,
            max_ejection=settings.eject_time * 10,
            hold_draining=settings.health_interval > 0,
        )
        hot = HotKeys(settings.hot_keys) if settings.hot_keys else None
        self.router = Router(
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
        self._configured_routes = self.router.routes
        self.counters = self.router.counters
        self.metrics = Metrics(self)
        self.debug_headers = settings.debug_headers
        self.fallback_local = settings.fallback == "local"
        self.health_path = settings.health_path
        self.max_header_bytes = settings.max_header_bytes
        self.max_body = settings.max_body
        self.introspection = Introspection(self)
        # Adapters test request paths against these with one str.startswith before routing anything.
        self.internal_prefixes = tuple(p for p in (settings.health_path, self.introspection.path) if p)
        self.draining = False
        # [forwards in flight, of which retries]: the retry budget's inputs, per worker process.
        self.inflight = [0, 0]
        self.inflight_lock = threading.Lock()
        self._checker: threading.Thread | None = None
        if settings.health_interval > 0:
            self._start_checker()
            # gunicorn --preload forks workers after this ran: threads do not survive a fork, so start another.
            os.register_at_fork(after_in_child=functools.partial(_restart_checker, weakref.ref(self)))

    def mark_unrouted(self, rules: list[str]) -> None:
        """Exclusions for the app's routes marked with :func:`~affinity_mw.routes.unrouted`, tried before the
        ``AFFINITY_ROUTES`` rules (found again from scratch each time the app is read, never stacked)."""
        if rules:
            self.router.routes = with_exclusions(self._configured_routes, rules)

    @property
    def self_id(self) -> str | None:
        return self.membership.self_id  # type: ignore[no-any-return]

    def transport_options(self) -> dict[str, Any]:
        s = self.settings
        return {
            "pool_size": s.pool_size,
            "keepalive": s.keepalive,
            "connect_timeout": s.connect_timeout,
            "read_timeout": s.read_timeout,
        }

    def plan(
        self, decision: Decision, headers: Sequence[tuple[bytes, bytes]], client: tuple[str, int] | None, scheme: str
    ) -> ForwardPlan:
        if self.signer is None:  # Settings requires a secret whenever there is a peer to forward to
            raise RuntimeError("affinity-mw cannot forward without AFFINITY_SECRET")
        return ForwardPlan(self, decision, headers, client, scheme)

    def refusal(self, header_bytes: int, content_length: bytes | str | None) -> tuple[int, bytes] | None:
        """The 431 or 413 a request gets before routing (DESIGN.md 6.14), or ``None`` to go on.

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

    def body_limit(self) -> BodyLimit | None:
        """A counter for one streamed request body, or ``None`` when ``max_body`` is 0 (no limit)."""
        return BodyLimit(self.max_body) if self.max_body else None

    def debug_headers_for(self, decision: Decision) -> Headers:
        """``X-Affinity-Served-By`` and ``X-Affinity-Owner`` for a response this node produced or relayed."""
        served_by = (decision.served_by or self.self_id or "").encode("latin-1")
        owner = decision.owner.id.encode("latin-1") if decision.owner else b""
        return [(SERVED_BY_HEADER, served_by), (OWNER_HEADER, owner)]

    def start_draining(self) -> None:
        """Shutting down: answer the health path with 503 and mark every response, so load balancers and peers
        stop sending new requests here while in-flight ones finish."""
        if not self.draining:
            self.draining = True
            logger.warning("affinity-mw: %s is draining", self.self_id)

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

    def _start_checker(self) -> None:
        self._checker = threading.Thread(target=self._check_set_aside, name="affinity-mw-health", daemon=True)
        self._checker.start()

    def _check_set_aside(self) -> None:
        """Active checks: ask set-aside peers' health path and re-admit those that answer 200 before their time."""
        interval = self.settings.health_interval
        while True:
            time.sleep(interval)
            for node_id in list(self.health.ejected()):
                node = self.membership.ring.get(node_id)
                if node is not None and _healthy(node.address + self.health_path, self.settings.connect_timeout):
                    self.health.readmit(node_id)


def _restart_checker(ref: weakref.ref[AffinityCore]) -> None:
    core = ref()
    if core is not None:
        core._start_checker()


def _healthy(url: str, timeout: float) -> bool:
    parts = urlsplit(url)
    conn_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = conn_class(parts.hostname or "", parts.port, timeout=timeout)
    try:
        conn.request("GET", parts.path)
        return conn.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()

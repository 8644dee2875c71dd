"""Peer health: passive ejection of failing peers, draining peers, and active checks of those set aside.

Modelled on Envoy's outlier detection: a peer that fails ``eject_after`` times in a row (connection refused or
reset, timeout, 5xx) is ejected for ``base`` seconds times the number of times it has been ejected (capped), then
re-admitted. An ejected or draining peer's keys go to its ring successors only, exactly as if it had left the
ring, so nothing else moves; when it comes back its keys come back.

Coming back must not wait for the ejection time: a restarted node serves the keys it owns at once, and while its
peers still hold it aside they serve the same keys on its successors, two nodes per key. So while any peer is set
aside, a thread asks each one's health path (``check``) every ``interval`` seconds and takes it back as soon as it
answers 200, as Envoy's ``successful_active_health_check_uneject_host`` does. The thread exists only while some
peer is set aside; nothing runs when every peer is healthy.

A peer that answers with ``X-Affinity-Draining`` is shutting down: it is set aside at once for ``base`` seconds,
or, with active checks on (``hold_draining``), until a check sees it healthy again (at most ``max_ejection``). A
fixed hold can run out while the peer is still stopping: gunicorn's worker keeps its listening socket open (but
stops accepting) for up to 2 s after SIGTERM, so a request sent then connects, is never read, and is reset.

This node never ejects itself, so at least one host always remains. State is per worker process, like the
connection pool it protects; the hot path reads one attribute (``any_ejected``) when every peer is healthy.
"""

from __future__ import annotations

import http.client
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

__all__ = ["PeerHealth", "answers_200"]

logger = logging.getLogger("affinity_mw")


class _Peer:
    __slots__ = ("ejected_at", "ejected_until", "ejections", "failures", "reason")

    def __init__(self) -> None:
        self.failures = 0
        self.ejections = 0
        self.ejected_at = 0.0
        self.ejected_until = 0.0
        self.reason = ""


class PeerHealth:
    """Tracks consecutive failures per peer id and which peers are set aside, and until when."""

    def __init__(
        self,
        *,
        eject_after: int = 5,
        base: float = 30.0,
        max_ejection: float = 300.0,
        hold_draining: bool = False,
        check: Callable[[str], bool] | None = None,
        interval: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.eject_after = eject_after
        self.base = base
        self.max_ejection = max_ejection
        self.hold_draining = hold_draining
        self.check = check if interval > 0 else None
        self.interval = interval
        self.clock = clock
        self._peers: dict[str, _Peer] = {}
        self._lock = threading.Lock()
        self.any_ejected = False
        self._last_expiry = 0.0
        self.ejections_total = 0
        self._checker: threading.Thread | None = None
        if self.check is not None:
            # gunicorn --preload forks workers after a peer may have been set aside: threads do not survive a fork.
            os.register_at_fork(after_in_child=_after_fork_in(weakref.ref(self)))

    def usable(self, node_id: str) -> bool:
        if not self.any_ejected:
            return True
        now = self.clock()
        if now >= self._last_expiry:
            with self._lock:
                # Every ejection has run out: back to the one-attribute fast path for the router. Re-checked
                # under the lock: a thread ejecting a peer at this moment must not see its flag cleared.
                if now >= self._last_expiry:
                    self.any_ejected = False
                    return True
        peer = self._peers.get(node_id)
        return peer is None or peer.ejected_until <= now

    def ejected(self) -> dict[str, str]:
        """Peers set aside now, with why ("failures" or "draining")."""
        now = self.clock()
        with self._lock:
            out = {node_id: p.reason for node_id, p in self._peers.items() if p.ejected_until > now}
            if not out:
                self.any_ejected = False
            return out

    def success(self, node_id: str) -> None:
        peer = self._peers.get(node_id)
        if peer is not None and peer.failures:
            peer.failures = 0

    def failure(self, node_id: str) -> None:
        with self._lock:
            peer = self._peers.setdefault(node_id, _Peer())
            peer.failures += 1
            if peer.failures >= self.eject_after and peer.ejected_until <= self.clock():
                peer.ejections += 1
                self._eject(node_id, peer, min(self.base * peer.ejections, self.max_ejection), "failures")

    def draining(self, node_id: str) -> None:
        with self._lock:
            peer = self._peers.setdefault(node_id, _Peer())
            hold = self.max_ejection if self.hold_draining else self.base
            if peer.ejected_until < self.clock() + hold:
                self._eject(node_id, peer, hold, "draining")

    def readmit(self, node_id: str) -> None:
        """An active check saw the peer healthy: use it again now, and forget its failure streak."""
        with self._lock:
            peer = self._peers.get(node_id)
            now = self.clock()
            if peer is not None and peer.ejected_until > now:
                peer.ejected_until = 0.0
                peer.failures = 0
                logger.warning(
                    "affinity-mw: taking %s back after %.1f s set aside (%s; its health path answers 200)",
                    node_id, now - peer.ejected_at, peer.reason,
                )  # fmt: skip

    def forget(self, keep: Iterable[str]) -> None:
        """Drop state of peers no longer in the membership (called when the ring changes)."""
        keep = set(keep)
        with self._lock:
            for node_id in [n for n in self._peers if n not in keep]:
                del self._peers[node_id]

    def _eject(self, node_id: str, peer: _Peer, seconds: float, reason: str) -> None:
        peer.ejected_at = self.clock()
        peer.ejected_until = peer.ejected_at + seconds
        peer.reason = reason
        peer.failures = 0  # a re-admitted peer starts a new streak
        self._last_expiry = max(self._last_expiry, peer.ejected_until)
        self.ejections_total += 1
        self.any_ejected = True
        if self.check is not None:
            logger.warning(
                "affinity-mw: setting %s aside (%s) until its health path answers 200, at most %.0f s",
                node_id, reason, seconds,
            )  # fmt: skip
            self._start_checker()
        else:
            logger.warning("affinity-mw: setting %s aside for %.0f s (%s)", node_id, seconds, reason)

    def _start_checker(self) -> None:
        # Called under the lock, as is the checker's decision to stop, so an ejection never finds a checker that
        # is about to leave.
        if self._checker is None:
            self._checker = threading.Thread(target=self._run_checks, name="affinity-mw-health", daemon=True)
            self._checker.start()

    def _run_checks(self) -> None:
        """Ask set-aside peers every ``interval`` seconds; stop once none is left (a new ejection starts another)."""
        assert self.check is not None
        watched: set[str] = set()
        while True:
            time.sleep(self.interval)
            set_aside = self.ejected()
            for node_id in watched - set(set_aside):
                if node_id in self._peers:
                    logger.warning("affinity-mw: %s's time set aside is over; sending to it again", node_id)
            watched = set(set_aside)
            for node_id in set_aside:
                if self.check(node_id):
                    self.readmit(node_id)
                    watched.discard(node_id)
            with self._lock:
                now = self.clock()
                if not any(p.ejected_until > now for p in self._peers.values()):
                    self._checker = None
                    return


def _after_fork_in(ref: weakref.ref[PeerHealth]) -> Callable[[], None]:
    def after_fork() -> None:
        health = ref()
        if health is not None:
            # The parent's lock may have been held by a thread that does not exist here, and so was its checker.
            health._lock = threading.Lock()
            health._checker = None
            with health._lock:
                now = health.clock()
                if any(p.ejected_until > now for p in health._peers.values()):
                    health._start_checker()

    return after_fork


def answers_200(url: str, timeout: float) -> bool:
    """The active check: does ``url`` answer a GET with 200 within ``timeout`` seconds (connect and read)?"""
    parts = urlsplit(url)
    conn_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = conn_class(parts.hostname or "", parts.port, timeout=timeout)
    try:
        conn.request("GET", parts.path or "/")
        return conn.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()

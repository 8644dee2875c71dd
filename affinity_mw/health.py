"""Peer health: passive ejection of failing peers, draining peers, and optional active re-checks.

Modelled on Envoy's outlier detection: a peer that fails ``eject_after`` times in a row (connection refused or
reset, timeout, 5xx) is ejected for ``base`` seconds times the number of times it has been ejected (capped), then
re-admitted. An ejected or draining peer's keys go to its ring successors only, exactly as if it had left the
ring, so nothing else moves; when it comes back its keys come back.

A peer that answers with ``X-Affinity-Draining`` is shutting down: it is set aside at once for ``base`` seconds,
or, with active checks on (``hold_draining``), until a check sees it healthy again (at most ``max_ejection``). A
fixed hold can run out while the peer is still stopping: gunicorn's worker keeps its listening socket open (but
stops accepting) for up to 2 s after SIGTERM, so a request sent then connects, is never read, and is reset.

This node never ejects itself, so at least one host always remains. State is per worker process, like the
connection pool it protects; the hot path reads one attribute (``any_ejected``) when every peer is healthy.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable

__all__ = ["PeerHealth"]

logger = logging.getLogger("affinity_mw")


class _Peer:
    __slots__ = ("ejected_until", "ejections", "failures", "reason")

    def __init__(self) -> None:
        self.failures = 0
        self.ejections = 0
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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.eject_after = eject_after
        self.base = base
        self.max_ejection = max_ejection
        self.hold_draining = hold_draining
        self.clock = clock
        self._peers: dict[str, _Peer] = {}
        self._lock = threading.Lock()
        self.any_ejected = False
        self._last_expiry = 0.0
        self.ejections_total = 0

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
            if peer is not None and peer.ejected_until > self.clock():
                peer.ejected_until = 0.0
                peer.failures = 0
                logger.info("affinity-mw: %s is healthy again; re-admitted", node_id)

    def forget(self, keep: Iterable[str]) -> None:
        """Drop state of peers no longer in the membership (called when the ring changes)."""
        keep = set(keep)
        with self._lock:
            for node_id in [n for n in self._peers if n not in keep]:
                del self._peers[node_id]

    def _eject(self, node_id: str, peer: _Peer, seconds: float, reason: str) -> None:
        peer.ejected_until = self.clock() + seconds
        peer.reason = reason
        peer.failures = 0  # a re-admitted peer starts a new streak
        self._last_expiry = max(self._last_expiry, peer.ejected_until)
        self.ejections_total += 1
        self.any_ejected = True
        logger.warning("affinity-mw: setting %s aside for %.0f s (%s)", node_id, seconds, reason)

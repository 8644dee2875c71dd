"""What the library transports share: the per-forward connection state their pool hooks record."""

from __future__ import annotations

__all__ = ["BODYLESS_METHODS", "ConnState"]

# Methods whose requests carry no body by convention: a forward of one without a body sends no Content-Length.
BODYLESS_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE", "TRACE"})


class ConnState:
    """What one forward's connection attempts learned: was the pooled connection reused, must the next be fresh,
    and the connection itself (to discard it when its response turns out to poison it)."""

    __slots__ = ("conn", "fresh", "reused")

    def __init__(self) -> None:
        self.reused = False
        self.fresh = False
        self.conn: object = None

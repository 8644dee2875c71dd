"""One client per running event loop: shared by the built-in HTTP/1.1 client and the library transports."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["PerLoop"]

T = TypeVar("T")


class PerLoop(Generic[T]):
    """One client (session, pool) per running event loop, made on first use in that loop.

    A client is bound to the loop that made it, and test clients and some hosts run several loops one after
    another. Entries are keyed by the loop's id but checked by identity, since a closed loop's id can be reused by
    the next one; entries of closed loops are dropped whenever a new client is made.
    """

    def __init__(
        self, make: Callable[[asyncio.AbstractEventLoop], T], usable: Callable[[T], bool] | None = None
    ) -> None:
        self._make = make
        self._usable = usable
        self._entries: dict[int, tuple[asyncio.AbstractEventLoop, T]] = {}

    def get(self) -> T:
        loop = asyncio.get_running_loop()
        entry = self._entries.get(id(loop))
        if entry is not None and entry[0] is loop and (self._usable is None or self._usable(entry[1])):
            return entry[1]
        for key, (other, _) in list(self._entries.items()):
            if other.is_closed():
                self._entries.pop(key, None)
        client = self._make(loop)
        self._entries[id(loop)] = (loop, client)
        return client

    def pop(self) -> T | None:
        """This loop's client, forgotten here (the caller closes it), or None."""
        loop = asyncio.get_running_loop()
        entry = self._entries.pop(id(loop), None)
        return entry[1] if entry is not None and entry[0] is loop else None

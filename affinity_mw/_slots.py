"""Peer slots: at most ``pool_size`` forwards in flight to each peer, waiting at most ``pool_timeout`` for one
(then 503 with Retry-After), so slow clients cannot build an unbounded queue in front of a busy peer. One kind per
I/O style: :class:`AsyncPeerSlots` per event loop, :class:`SyncPeerSlots` per worker process."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque

from .forward import PoolExhausted

__all__ = ["AsyncPeerSlots", "AsyncSlots", "SyncPeerSlots"]


class AsyncPeerSlots:
    """At most ``size`` forwards in flight to each peer, per event loop; a forward waits at most ``timeout``
    seconds for a slot, then gets :class:`PoolExhausted` (503 with Retry-After): slow clients cannot build an
    unbounded queue in front of a busy peer."""

    def __init__(self, size: int, timeout: float) -> None:
        self.size = size
        self.timeout = timeout
        self._slots: dict[tuple[int, str], AsyncSlots] = {}

    def get(self, node_id: str) -> AsyncSlots:
        key = (id(asyncio.get_running_loop()), node_id)
        slots = self._slots.get(key)
        if slots is None:
            slots = self._slots.setdefault(key, AsyncSlots(self.size))
        return slots

    async def acquire(self, node_id: str) -> AsyncSlots:
        """A slot of ``node_id``'s, waiting for one if need be (:func:`forward_async` inlines this)."""
        slots = self.get(node_id)
        if not slots.take():
            await slots.wait(self.timeout, node_id)
        return slots


class AsyncSlots:
    """One peer's slots on one event loop. Taking a free slot is a plain decrement (no coroutine: this is on
    every forward). A release hands its slot straight to the oldest waiting forward, so a newcomer cannot take it
    from under one; a waiter that gives up (its wait timed out, or its task was cancelled) leaves the queue, and
    one cancelled just after it was handed a slot passes the slot on."""

    __slots__ = ("free", "waiters")

    def __init__(self, size: int) -> None:
        self.free = size
        self.waiters: deque[asyncio.Future[None]] = deque()

    def take(self) -> bool:
        if self.free and not self.waiters:
            self.free -= 1
            return True
        return False

    async def wait(self, timeout: float, node_id: str) -> None:
        # A timer that fails the waiter rather than asyncio.wait_for: whichever of a hand-over and the timeout
        # comes first wins, the same on every Python version (wait_for's answer to a tie differs between 3.11
        # and 3.12), and no task is made per wait.
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self.waiters.append(waiter)
        timer = loop.call_later(timeout, _expire, waiter, node_id)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self.release()  # handed a slot just as this task was cancelled: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self.waiters.remove(waiter)
            raise
        finally:
            timer.cancel()

    def release(self) -> None:
        waiters = self.waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.free += 1


def _expire(waiter: asyncio.Future[None], node_id: str) -> None:
    if not waiter.done():
        waiter.set_exception(PoolExhausted(node_id))


class SyncPeerSlots:
    """At most ``size`` forwards in flight to each peer from this worker process; a forward waits at most
    ``timeout`` seconds for a slot, then is answered 503 with Retry-After instead of queueing without bound."""

    def __init__(self, size: int, timeout: float) -> None:
        self.size = size
        self.timeout = timeout
        self._semaphores: dict[str, threading.BoundedSemaphore] = {}
        self._lock = threading.Lock()

    def acquire(self, node_id: str) -> threading.BoundedSemaphore | None:
        semaphore = self._semaphores.get(node_id)
        if semaphore is None:
            with self._lock:
                semaphore = self._semaphores.setdefault(node_id, threading.BoundedSemaphore(self.size))
        return semaphore if semaphore.acquire(timeout=self.timeout) else None

"""A minimum transfer rate for the client's side of a forward: a slow client cannot hold a peer's slot for ever.

A forward holds one of the peer's slots (``AFFINITY_POOL_SIZE`` per worker) and one of its connections while the
request body comes in and while the response body goes out. A client that trickles its upload, or stops reading
its download, would hold them as long as it likes (slow loris): a handful of such clients would leave the peer's
slots to them. Like Apache's ``mod_reqtimeout`` (``body=20,MinRate=500``), each body gets ``grace`` seconds of the
client's time, and ``1 / min_rate`` more per byte that moves; a client that uses more than that is cut off.

Only the client's own time counts: an upload's wait for the client's next chunk, a download's wait for the client
to take a chunk. The peer's time (a slow app, a server-sent-event stream that is quiet for minutes) never does.
One timer per body at most, re-read lazily when it fires, as the built-in client's silence timer does.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Callable

from .forward import ClientGone

__all__ = ["Pace", "SlowClient", "paced_download", "paced_upload"]


class SlowClient(ClientGone):
    """The client moved its body slower than ``AFFINITY_MIN_RATE`` allows: the forward is cut off (408 if no response
    has started, else the client connection is aborted). A :class:`ClientGone`, so the transports stop the same way."""


class Pace:
    """The client's time budget for one body: ``grace`` seconds, plus ``1 / min_rate`` seconds per byte moved."""

    __slots__ = ("_loop", "_rate", "_since", "_timer", "budget", "expired", "on_slow", "task", "used")

    def __init__(self, grace: float, min_rate: float, on_slow: Callable[[Pace], None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._rate = min_rate
        self._since: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.budget = grace
        self.used = 0.0
        self.expired = False
        self.on_slow = on_slow
        self.task: asyncio.Task[object] | None = None

    def client_turn(self) -> None:
        """The body waits on the client from now."""
        now = self._since = self._loop.time()
        if self._timer is None and not self.expired:
            # Never later than needed: the budget only grows and the client's time only passes while it is its turn.
            self._timer = self._loop.call_at(now + self.budget - self.used, self._check)

    def moved(self, size: int) -> None:
        """The client delivered or took ``size`` bytes: its turn ends, and the budget grows."""
        since = self._since
        if since is not None:
            self.used += self._loop.time() - since
            self._since = None
        self.budget += size / self._rate

    def stop(self) -> None:
        self._since = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check(self) -> None:
        self._timer = None
        since = self._since
        if since is None or self.expired:
            return  # the peer's turn: the next client turn arms the timer again
        now = self._loop.time()
        left = self.budget - self.used - (now - since)
        if left > 0:
            self._timer = self._loop.call_at(now + left, self._check)
            return
        self.expired = True
        self.on_slow(self)


def cancel_waiter(pace: Pace) -> None:
    """An upload's ``on_slow``: the task waiting for the client's next chunk stops waiting (see paced_upload)."""
    if pace.task is not None and not pace.task.done():
        pace.task.cancel()


async def paced_upload(body: AsyncIterable[bytes], pace: Pace) -> AsyncIterator[bytes]:
    """The client's request body, cut off with :class:`SlowClient` once the client is too slow to send it.

    The transport's task waits here for the client's next chunk; when the budget runs out that wait is cancelled
    and turned into ``SlowClient``, which every transport treats as a client gone mid-upload (the connection to
    the peer is closed, its slot freed)."""
    iterator = body.__aiter__()
    try:
        while True:
            pace.task = asyncio.current_task()
            pace.client_turn()
            try:
                chunk = await iterator.__anext__()
            except StopAsyncIteration:
                return
            except asyncio.CancelledError:
                if not pace.expired:
                    raise
                task = asyncio.current_task()
                if task is not None and hasattr(task, "uncancel"):
                    task.uncancel()  # our own cancellation, now an exception: nothing else was cancelled
                raise SlowClient("the client sent its request body too slowly (AFFINITY_MIN_RATE)") from None
            finally:
                pace.task = None
            pace.moved(len(chunk))
            yield chunk
    finally:
        pace.stop()


async def paced_download(chunks: AsyncIterator[bytes], pace: Pace, first: int = 0) -> AsyncIterator[bytes]:
    """The rest of the peer's response body (``first`` bytes of it already handed over), for a client that must
    take it at ``min_rate`` after the grace.

    The client's time is the time between handing it a chunk and being asked for the next one (its server waits
    for the client to read). When the budget runs out, ``on_slow`` frees the peer at once (its connection closed,
    its slot released) without waiting for the client; the next chunk asked for raises :class:`SlowClient`.
    """
    pace.client_turn()  # the response head and the first body bytes are the client's to take
    size = first
    try:
        while True:
            pace.moved(size)
            if pace.expired:
                raise SlowClient("the client read its response too slowly (AFFINITY_MIN_RATE)")
            try:
                chunk = await chunks.__anext__()
            except StopAsyncIteration:
                return
            pace.client_turn()
            yield chunk
            size = len(chunk)
    finally:
        pace.stop()

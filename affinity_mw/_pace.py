"""A minimum transfer rate for the client's side of a forward: a slow client cannot hold a peer's slot for ever.

A forward holds one of the peer's slots (``AFFINITY_POOL_SIZE`` per worker) and one of its connections while the
request body comes in and while the response body goes out. A client that trickles its upload, or stops reading
its download, would hold them as long as it likes (slow loris): a handful of such clients would leave the peer's
slots to them. Like Apache's ``mod_reqtimeout`` (``body=20,MinRate=500``), each body gets ``grace`` seconds of the
client's time, and ``1 / min_rate`` more per byte that moves (never more than ``grace`` in hand); a client that
uses more than that is cut off.

Only the client's own time counts: an upload's wait for the client's next chunk, a download's wait for the client
to take a chunk. The peer's time (a slow app, a server-sent-event stream that is quiet for minutes) never does.
One timer per body at most, re-read lazily when it fires, as the built-in client's silence timer does.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Any

from ._plan import Answer
from .forward import ClientGone

__all__ = ["SLOW_UPLOAD", "Pace", "SlowClient", "pace_download", "pace_upload", "paced_download", "paced_upload"]

# The rest of the body is never read: the connection closes after the answer (RFC 9112 9.6).
SLOW_UPLOAD = Answer(
    408, b"The request body came too slowly (AFFINITY_MIN_RATE).\n", headers=((b"connection", b"close"),)
)


class SlowClient(ClientGone):
    """The client moved its body slower than ``AFFINITY_MIN_RATE`` allows: the forward is cut off (408 if no response
    has started, else the client connection is aborted). A :class:`ClientGone`, so the transports stop the same way."""


class Pace:
    """The client's time credit for one body: it starts at ``grace`` seconds, the client's own time spends it,
    each byte moved earns ``1 / min_rate`` seconds, and it never holds more than ``grace``. A client that keeps up
    with ``min_rate`` never runs out; one that stalls for ``grace`` seconds, or trickles slower than ``min_rate``,
    does, whatever it moved before (bytes fast at first would otherwise buy an arbitrarily long stall)."""

    __slots__ = ("_grace", "_loop", "_rate", "_since", "_timer", "credit", "expired", "on_slow", "task")

    def __init__(self, grace: float, min_rate: float, on_slow: Callable[[Pace], None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._grace = self.credit = grace
        self._rate = min_rate
        self._since: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.expired = False
        self.on_slow = on_slow
        self.task: asyncio.Task[object] | None = None

    def client_turn(self) -> None:
        """The body waits on the client from now."""
        now = self._since = self._loop.time()
        if self._timer is None and not self.expired:
            # An armed timer is never later than needed: the credit drains only while it is the client's turn.
            self._timer = self._loop.call_at(now + self.credit, self._check)

    def moved(self, size: int) -> None:
        """The client delivered or took ``size`` bytes: its turn ends, and its credit grows."""
        since = self._since
        credit = self.credit
        if since is not None:
            credit -= self._loop.time() - since
            self._since = None
        self.credit = min(credit + size / self._rate, self._grace)

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
        left = self.credit - (now - since)
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


def pace_upload(stream: Callable[[], AsyncIterator[bytes]], grace: float, min_rate: float) -> tuple[Pace, Any]:
    """An upload's pace and the body factory for the transport: ``stream()`` read under it."""
    pace = Pace(grace, min_rate, cancel_waiter)
    return pace, lambda: paced_upload(stream(), pace)


class _OnceSlot:
    """A peer slot released once, by whichever comes first: the relay's end or a client found too slow."""

    __slots__ = ("_slot",)

    def __init__(self, slot: Any) -> None:
        self._slot = slot

    def release(self) -> None:
        slot, self._slot = self._slot, None
        if slot is not None:
            slot.release()


_closing: set[asyncio.Future[None]] = set()


def pace_download(
    response: Any, chunks: AsyncIterator[bytes], first: int, slot: Any, grace: float, min_rate: float
) -> tuple[AsyncIterator[bytes], Any]:
    """The rest of a response body under a minimum rate, and the slot to release once: a client too slow to take
    it gets the peer freed at once (its connection closed, its slot released), not when the client next reads."""
    once = _OnceSlot(slot)

    def free(_: Pace) -> None:
        closing = asyncio.ensure_future(response.aclose(reusable=False))
        _closing.add(closing)
        closing.add_done_callback(_closing.discard)
        once.release()

    return paced_download(chunks, Pace(grace, min_rate, free), first), once

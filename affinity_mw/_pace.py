"""A minimum transfer rate for the client's side of a forward: a slow client cannot hold a peer's slot for ever.

A forward holds one of the peer's slots (``AFFINITY_POOL_SIZE`` per worker) and one of its connections while the
request body comes in and while the response body goes out. A client that trickles its upload, or stops reading
its download, would hold them as long as it likes (slow loris): a handful of such clients would leave the peer's
slots to them. As with Apache's ``mod_reqtimeout`` (``body=20,MinRate=500``), each body has a credit of the
client's time: it starts at ``grace`` seconds, earns ``1 / min_rate`` seconds per byte moved, and never holds
more than ``grace`` (bytes moved fast at first must not buy an arbitrarily long stall). A client whose credit
runs out, by stalling ``grace`` seconds or by trickling slower than ``min_rate``, is cut off.

Only the client's own time counts: an upload's wait for the client's next chunk, a download's wait for the client
to take a chunk. The peer's time (a slow app, a server-sent-event stream that is quiet for minutes) never does.
No timer per forward: one sweep per event loop, every :data:`TICK` seconds while any body is paced, finds the
clients that ran out (so a cut-off comes up to a tick late).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Any

from ._plan import Answer
from .forward import ClientGone
from .loops import PerLoop

__all__ = ["SLOW_UPLOAD", "SMALL_BODY", "TICK", "DownloadPace", "Pace", "SlowClient", "UploadPace", "pace_upload"]

TICK = 0.25
# A whole response body this small fits a TCP send buffer as configured by default (Linux: 16 KiB), so the server
# takes it without waiting for the client: such a relay cannot be held by a slow reader and is not paced.
SMALL_BODY = 16384
# The rest of the body is never read: the connection closes after the answer (RFC 9112 9.6).
SLOW_UPLOAD = Answer(
    408, b"The request body came too slowly (AFFINITY_MIN_RATE).\n", headers=((b"connection", b"close"),)
)


class SlowClient(ClientGone):
    """The client moved its body slower than ``AFFINITY_MIN_RATE`` allows: the forward is cut off (408 if no response
    has started, else the client connection is aborted). A :class:`ClientGone`, so the transports stop the same way."""


class _Sweeper:
    """The paced bodies of one event loop, checked every :data:`TICK` seconds while there are any."""

    __slots__ = ("handle", "loop", "paces")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.paces: set[Pace] = set()
        self.handle: asyncio.TimerHandle | None = None

    def add(self, pace: Pace) -> None:
        self.paces.add(pace)
        if self.handle is None:
            self.handle = self.loop.call_later(TICK, self.sweep)

    def sweep(self) -> None:
        now = self.loop.time()
        for pace in [p for p in self.paces if p.ran_out(now)]:
            self.paces.discard(pace)
            pace.expired = True
            pace.slow()
        self.handle = self.loop.call_later(TICK, self.sweep) if self.paces else None


_SWEEPERS: PerLoop[_Sweeper] = PerLoop(_Sweeper)


class Pace:
    """The client's time credit for one body (see the module docstring); :meth:`slow` is what running out does.

    No reference cycles (a forward's objects must not wait for the cycle collector): what ``slow`` needs is held
    by the pace itself, and nothing it holds refers back to it."""

    __slots__ = ("_grace", "_rate", "_since", "_sweeper", "credit", "expired")

    def __init__(self, grace: float, min_rate: float) -> None:
        self._sweeper = _SWEEPERS.get()
        self._grace = self.credit = grace
        self._rate = min_rate
        self._since: float | None = None
        self.expired = False

    def client_turn(self) -> None:
        """The body waits on the client from now (and is swept until :meth:`stop`)."""
        sweeper = self._sweeper
        self._since = sweeper.loop.time()
        sweeper.add(self)

    def moved(self, size: int) -> None:
        """The client delivered or took ``size`` bytes: its turn ends, and its credit grows."""
        since = self._since
        credit = self.credit
        if since is not None:
            credit -= self._sweeper.loop.time() - since
            self._since = None
        self.credit = min(credit + size / self._rate, self._grace)

    def ran_out(self, now: float) -> bool:
        since = self._since
        return since is not None and now - since >= self.credit

    def stop(self) -> None:
        self._since = None
        self._sweeper.paces.discard(self)

    def slow(self) -> None:
        raise NotImplementedError


class UploadPace(Pace):
    """An upload's pace: running out cancels the wait for the client's next chunk (see :func:`_paced_upload`)."""

    __slots__ = ("task",)

    def __init__(self, grace: float, min_rate: float) -> None:
        super().__init__(grace, min_rate)
        self.task: asyncio.Task[Any] | None = None

    def slow(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()


class DownloadPace(Pace):
    """The rest of a response body under a pace, and the peer slot the relay releases in its place.

    The client's time is the time between handing it a chunk and being asked for the next one (its server waits
    for the client to read). The slot is released once: by the relay's end (which ends the pace) or by a client
    found too slow, which frees the peer at once (its connection closed, its slot released) rather than when the
    client next reads; the next chunk asked for then raises :class:`SlowClient`."""

    __slots__ = ("_chunks", "_response", "_size", "_slot")

    def __init__(
        self, grace: float, min_rate: float, response: Any, chunks: AsyncIterator[bytes], first: int, slot: Any
    ) -> None:
        super().__init__(grace, min_rate)
        self._response = response
        self._chunks = chunks
        self._size = first
        self._slot = slot
        self.client_turn()  # the response head and the first body bytes are the client's to take

    def __aiter__(self) -> DownloadPace:
        return self

    async def __anext__(self) -> bytes:
        self.moved(self._size)
        if self.expired:
            raise SlowClient("the client read its response too slowly (AFFINITY_MIN_RATE)")
        try:
            chunk = await self._chunks.__anext__()
        except BaseException:
            self.stop()
            raise
        self.client_turn()
        self._size = len(chunk)
        return chunk

    def release(self) -> None:
        self.stop()
        slot, self._slot = self._slot, None
        if slot is not None:
            slot.release()

    def slow(self) -> None:
        closing = asyncio.ensure_future(self._response.aclose(reusable=False))
        _closing.add(closing)
        closing.add_done_callback(_closing.discard)
        self.release()


_closing: set[asyncio.Future[None]] = set()


def pace_upload(stream: Callable[[], AsyncIterator[bytes]], grace: float, min_rate: float) -> tuple[Pace, Any]:
    """An upload's pace, and the body factory for the transport: ``stream()`` read under it."""
    pace = UploadPace(grace, min_rate)
    return pace, lambda: _paced_upload(stream(), pace)


async def _paced_upload(body: AsyncIterable[bytes], pace: UploadPace) -> AsyncIterator[bytes]:
    """The client's request body, cut off with :class:`SlowClient` once the client is too slow to send it.

    The transport's task waits here for the client's next chunk; when the credit runs out that wait is cancelled
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

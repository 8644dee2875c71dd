"""One pooled connection to a peer: an ``asyncio.Protocol`` with its receive buffer, flow control in both
directions and the peer's silence timer.

Reading is paused once ``_HIGH_WATER`` bytes wait unread (a slow client downstream) and resumed below
``_LOW_WATER``; writes wait while the transport's buffer is full. The silence timer counts only the peer's
silence: time spent waiting on our own client (its next upload chunk, a slow downstream reader) never turns into
a timeout that would set a healthy peer aside.
"""

from __future__ import annotations

import asyncio

__all__ = ["Connection"]

_HIGH_WATER = 256 * 1024  # unread response bytes before reading from the peer is paused
_LOW_WATER = 64 * 1024


class Connection(asyncio.Protocol):
    """One TCP connection to a peer; its buffer, wakeups, flow control and silence timer."""

    __slots__ = (
        "_drain",
        "_last_data",
        "_timeout",
        "_timer",
        "_waiter",
        "armed",
        "buf",
        "busy",
        "eof",
        "error",
        "head_phase",
        "idle_since",
        "loop",
        "paused",
        "received",
        "timed_out",
        "transport",
        "waiting_client",
        "write_paused",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.eof = False
        self.error: BaseException | None = None
        self.head_phase = False
        self.busy = True
        self.armed = False
        self.received = False
        self.paused = False
        self.write_paused = False
        self.timed_out = False
        self.waiting_client = False
        self.idle_since = 0.0
        self._waiter: asyncio.Future[None] | None = None
        self._drain: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timeout = 0.0
        self._last_data = 0.0

    # -- asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self.busy:
            # Bytes nobody asked for on an idle connection: it is out of sync, never reuse it.
            self.eof = True
            assert self.transport is not None
            self.transport.abort()
            return
        self.buf += data
        self.received = True
        if not self.head_phase:
            # Until the response head is complete, the peer's bytes do not reset the clock: the per-try timeout
            # bounds the wait for response headers, and a peer trickling 1xx lines or head bytes must not stretch
            # it past the overall deadline. Our own writes and waits still do.
            self._last_data = self.loop.time()
        if not self.paused and len(self.buf) > _HIGH_WATER:
            self.paused = True
            assert self.transport is not None
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        if exc is not None and self.error is None:
            self.error = exc
        self._cancel_timer()
        self._wake()
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_exception(ConnectionResetError("peer connection lost while sending"))

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)

    # -- helpers for the request/response code
    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait_data(self) -> None:
        self._waiter = self.loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    async def drain(self) -> None:
        if self.eof:
            raise ConnectionResetError("peer connection closed while sending")
        if self.write_paused:
            self._drain = self.loop.create_future()
            try:
                await self._drain
            finally:
                self._drain = None

    def consumed(self) -> None:
        if self.paused and len(self.buf) < _LOW_WATER and not self.eof:
            self.paused = False
            self._last_data = self.loop.time()  # the peer's silence counts again from now
            assert self.transport is not None
            self.transport.resume_reading()

    def arm(self, timeout: float) -> None:
        """Abort the connection if the peer stays silent for ``timeout`` seconds.

        One timer per connection, checked lazily: re-arming (headers, then body, then the next exchange on the
        same pooled connection) or activity only moves the deadline the timer re-reads when it fires, so the hot
        path schedules no callback at all once the connection has one. A timer that would first fire later than
        the new deadline is replaced, so a shorter timeout is never stretched.
        """
        self._timeout = timeout
        self._last_data = now = self.loop.time()
        self.armed = True
        timer = self._timer
        if timer is not None:
            if timer.when() <= now + timeout:
                return
            timer.cancel()
        self._timer = self.loop.call_at(now + timeout, self._check_silence)

    def activity(self) -> None:
        self._last_data = self.loop.time()

    def _check_silence(self) -> None:
        if not self.armed:
            # Idle in the pool, or taken for a request that is still waiting for its client's first body bytes:
            # nothing of the peer's to time until the next exchange arms it again.
            self._timer = None
            return
        now = self.loop.time()
        if self.paused or self.waiting_client:
            # Waiting on our side (a slow downstream reader, or the client's next upload chunk) is not the
            # peer's silence: a slow client must never turn into a 504 that sets a healthy peer aside.
            self._last_data = now
        idle = now - self._last_data
        if idle >= self._timeout:
            self._timer = None
            self.timed_out = True
            assert self.transport is not None
            self.transport.abort()
        else:
            self._timer = self.loop.call_at(self._last_data + self._timeout, self._check_silence)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def release(self) -> None:
        # The silence timer stays: it finds the connection disarmed and lapses, or the next exchange re-arms it.
        self.armed = False
        self.busy = False
        self.idle_since = self.loop.time()

    def close(self) -> None:
        self._cancel_timer()
        self.eof = True
        if self.error is None:
            self.error = ConnectionAbortedError("closed locally")  # never mistaken for the peer's clean close
        if self.transport is not None:
            self.transport.abort()

    @property
    def usable(self) -> bool:
        return not self.eof and not self.buf and self.transport is not None and not self.transport.is_closing()

"""Forwarding through urllib3: the default WSGI transport, one thread-safe ``PoolManager`` per worker process."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

from ..forward import (
    IDEMPOTENT,
    ClientGone,
    ConnectFailed,
    ForwardError,
    SendFailed,
    SyncUpstreamResponse,
    UpstreamRequest,
    UpstreamTimeout,
    client_gone,
    response_headers,
)
from ..h1.wire import check_request_fields, stray_body
from ._common import BODYLESS_METHODS, ConnState

__all__ = ["Urllib3Transport"]


@contextlib.contextmanager
def _mapped(read_timeout: float, *, body: bool = False) -> Iterator[None]:
    """urllib3's exceptions (and the socket's) as the forward's (:mod:`affinity_mw.forward`), in one place. Once
    the body streams, every failure is a broken connection."""
    import urllib3

    try:
        yield
    except (ClientGone, ForwardError):
        raise
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        if body:
            raise SendFailed(f"peer connection broke mid-body: {exc!r}") from exc
        if isinstance(exc, urllib3.exceptions.ConnectTimeoutError):  # NewConnectionError is a subclass
            raise ConnectFailed(str(exc)) from exc
        if isinstance(exc, urllib3.exceptions.ReadTimeoutError):
            raise UpstreamTimeout(f"no response headers within {read_timeout}s") from exc
        if client_gone(exc):
            raise ClientGone(str(exc)) from exc
        raise SendFailed(f"{type(exc).__name__}: {exc}") from exc


class _Urllib3Response:
    __slots__ = ("_resp", "headers", "reason", "status")

    def __init__(self, resp: Any, raw: list[tuple[bytes, bytes]]) -> None:
        self._resp = resp
        self.status: int = resp.status
        self.reason: str = resp.reason or ""
        self.headers = response_headers(raw)

    def iter_raw(self) -> Iterator[bytes]:
        resp = self._resp
        if resp.closed:
            return  # a bodiless answer whose connection was discarded (see Urllib3Transport.send)
        with _mapped(0.0, body=True):
            # read1 returns what has arrived instead of waiting for a full block, so slow streams stay streams.
            while chunk := resp.read1(65536, decode_content=False):
                yield chunk

    def close(self, *, reusable: bool) -> None:
        if not reusable:
            self._resp.close()  # a half-read connection must never serve the next request
        self._resp.release_conn()


class Urllib3Transport:
    """The default WSGI transport: one thread-safe ``urllib3.PoolManager`` per worker process.

    ``SKIP_HEADER`` stops urllib3 from adding ``User-Agent`` and ``Accept-Encoding`` the client did not send;
    ``decode_content=False`` keeps compressed bodies compressed; ``retries=False`` leaves failover to us. urllib3
    has no idle expiry of its own: pooled connections idle longer than ``keepalive`` are closed before reuse, so
    we never send on a connection the peer is about to close (gunicorn closes idle ones after 2 s). A response
    that declares a body it may not carry (a 304 with a length) closes its connection before anything is read:
    urllib3 would pool it, and the body the peer writes late would be the next user's response.
    """

    def __init__(
        self,
        *,
        pool_size: int = 100,
        keepalive: float = 1.5,
        connect_timeout: float = 1.0,
        read_timeout: float = 30.0,
    ) -> None:
        import urllib3

        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._pool = urllib3.PoolManager(
            num_pools=64,
            maxsize=pool_size,
            block=False,
            retries=False,
            timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
        )
        # Per thread: the connection state of the forward this thread is sending (see _expiring).
        self._conn = threading.local()
        self._pool.pool_classes_by_scheme = {
            "http": _expiring(urllib3.HTTPConnectionPool, keepalive, self._conn),
            "https": _expiring(urllib3.HTTPSConnectionPool, keepalive, self._conn),
        }
        self._skip = urllib3.util.SKIP_HEADER

    def send(self, request: UpstreamRequest) -> SyncUpstreamResponse:
        import urllib3

        check_request_fields(request.headers)
        headers = urllib3.HTTPHeaderDict()
        seen = set()
        for name, value in request.headers:
            headers.add(name.decode("latin-1"), value.decode("latin-1"))
            seen.add(name)
        for name in (b"user-agent", b"accept-encoding"):
            if name not in seen:
                headers[name.decode()] = self._skip
        chunked = False
        if request.body is not None:
            if request.content_length is None:
                chunked = True
            else:
                headers["content-length"] = str(request.content_length)
        elif request.method not in BODYLESS_METHODS:
            headers["content-length"] = "0"
        read_timeout = self.read_timeout
        if request.read_timeout is not None and request.read_timeout < read_timeout:
            read_timeout = max(request.read_timeout, 0.001)
        # A bodiless idempotent request that fails on a reused pooled connection (the peer closed it as we sent)
        # is retried once on a fresh connection to the same peer: nothing says the peer is unwell.
        state = self._conn.state = ConnState()
        try:
            with _mapped(read_timeout):
                while True:
                    try:
                        # The target goes to the peer's own pool as the request path: it can never choose another
                        # host.
                        resp = self._pool.connection_from_url(request.url_base).urlopen(
                            request.method,
                            request.target,
                            body=request.body,  # type: ignore[arg-type]  # a sync iterable: the WSGI adapter's
                            headers=headers,
                            chunked=chunked,
                            redirect=False,
                            retries=False,
                            preload_content=False,
                            decode_content=False,
                            assert_same_host=False,
                            timeout=urllib3.Timeout(connect=self.connect_timeout, read=read_timeout),
                        )
                        break
                    except (urllib3.exceptions.ProtocolError, OSError):
                        if state.reused and not state.fresh and request.body is None and request.method in IDEMPOTENT:
                            state.fresh = True
                            continue
                        raise
        finally:
            self._conn.state = None
        raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in resp.headers.items()]
        if stray_body(request.method, resp.status, raw):
            resp.close()  # before any read: reading the empty body would hand the connection back to the pool
        return _Urllib3Response(resp, raw)

    def close(self) -> None:
        self._pool.clear()


def _expiring(base: Any, keepalive: float, local: threading.local) -> Any:
    """A urllib3 pool class that closes connections idle for more than ``keepalive`` seconds before reusing them
    (a closed urllib3 connection reconnects on its next request). It records in the sending thread's
    ``ConnState`` whether the connection handed out is a reused one, and closes it when a fresh one is asked for."""

    class ExpiringPool(base):  # type: ignore[misc]
        def _get_conn(self, timeout: float | None = None) -> Any:
            conn = super()._get_conn(timeout)
            idle_since = getattr(conn, "_affinity_idle_since", None)
            state = getattr(local, "state", None)
            if idle_since is not None and (
                time.monotonic() - idle_since > keepalive or (state is not None and state.fresh)
            ):
                conn.close()
            if state is not None:
                state.reused = getattr(conn, "sock", None) is not None
            return conn

        def _put_conn(self, conn: Any) -> None:
            if conn is not None:
                conn._affinity_idle_since = time.monotonic()
            super()._put_conn(conn)

    return ExpiringPool

"""Websockets routed by key: relay a client's websocket to the node that owns its key, frames and closes intact.

A websocket is a long-lived request: its handshake is routed like any HTTP request (same key sources, same
signed hop marker), and when another node owns the key this node opens a second websocket to the owner and
relays both ways. The peer connection uses the ``websockets`` package's asyncio client, the reference
implementation of RFC 6455 in Python, so the framing, the closing handshake and the keepalive pings are its
well-tested code, not ours. This module only decides what crosses between the two legs:

* **Handshake.** The client is accepted only once the owner accepted, with the subprotocol the owner chose and
  the owner's handshake response headers (``Set-Cookie`` included). An owner's refusal is the client's refusal:
  the owner's status, headers and body when the server supports the ASGI ``websocket.http.response``
  extension (uvicorn, Daphne, Hypercorn do), a plain refusal (403) otherwise. Redirects are never followed
  (the signed marker must not go where a ``Location`` header says), no proxy from the environment is used,
  nothing is compressed between nodes, and no header is added: the owner sees the client's ``Host``,
  ``Origin``, cookies and ``User-Agent``.
* **Failure kinds** are those of an HTTP forward (:mod:`affinity_mw.forward`): :class:`ConnectFailed` when no
  connection could be made (nothing reached the peer: the caller may try the next owner), :class:`SendFailed`
  when the connection broke after the handshake request was sent, :class:`UpstreamTimeout` when the owner did
  not answer the handshake in time, :class:`BadResponse` when its answer is not a valid websocket handshake,
  :class:`Unforwardable` when the client's handshake cannot be written (a control character in a header).
* **Messages** pass as they are: text stays text (the same ``str``), binary stays binary (the same bytes), up
  to ``max_size`` bytes a message (16 MiB by default, uvicorn's own limit). ASGI carries whole messages, so a
  fragmented message arrives at the other end whole.
* **Close codes and reasons** pass both ways. Codes that never appear on the wire are mapped: a close frame
  without a code (1005) becomes 1000, and a client that vanished without a close frame (1006) closes the
  owner's leg with 1001 (going away). When the owner's leg ends without the owner's close frame (the owner
  died, or stopped answering pings) the client is closed with **1012** (service restart: reconnect, and the
  reconnect is routed to the key's owner then); when the owner sent something the relay cannot pass on (a
  message over ``max_size``, a protocol error) the client is closed with **1011**.
* **Ping/pong** is per leg, as for any proxy: ASGI does not carry pings, so the client's server answers the
  client's pings, and the relay pings the owner every ``ping_interval`` seconds; an owner that does not answer
  within ``ping_timeout`` is taken as gone (1012), so a host that vanished without closing its sockets is
  noticed in seconds, not at the next TCP timeout.
* **Back-pressure.** Nothing is buffered without bound: a message from the client is sent to the owner before
  the next one is read (and the client's server stops reading the socket meanwhile); from the owner, at most
  ``max_queue`` messages wait in the relay, after which the relay stops reading the owner's socket, and a
  message is handed to the client's server only once it has room to write it. A slow reader at either end
  slows the writer at the other, through TCP.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection
from websockets.client import ClientProtocol
from websockets.datastructures import Headers as WsHeaders
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidHeaderValue,
    InvalidMessage,
    InvalidStatus,
    InvalidURI,
)
from websockets.frames import EXTERNAL_CLOSE_CODES
from websockets.http11 import Request
from websockets.protocol import State
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from ._wssessions import OpenWebSockets, Session
from .forward import (
    BadResponse,
    ConnectFailed,
    Headers,
    SendFailed,
    Unforwardable,
    UpstreamTimeout,
    response_headers,
)

__all__ = [
    "OWNER_GONE",
    "OWNER_UNRELAYABLE",
    "OpenWebSockets",
    "OwnerRefused",
    "RelayOptions",
    "Session",
    "accept_headers",
    "connect_owner",
    "deny",
    "relay",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

OWNER_GONE = (1012, "affinity-mw: the key's owner went away; reconnect")
"""How the client is closed when the owner's leg ended without the owner's close frame."""

OWNER_UNRELAYABLE = (1011, "affinity-mw: the key's owner sent what cannot be relayed")
"""How the client is closed when the relay failed the owner's leg (a message over ``max_size``, a bad frame)."""

# The handshake's own headers: the client library writes fresh ones for the owner's leg (a new key, our
# version, our extension offer, the subprotocols passed separately), so the client's are never copied.
_HANDSHAKE_HEADERS = frozenset(
    {
        b"host",
        b"upgrade",
        b"connection",
        b"sec-websocket-key",
        b"sec-websocket-version",
        b"sec-websocket-extensions",
        b"sec-websocket-protocol",
        b"sec-websocket-accept",
    }
)
_NOT_REFUSAL_HEADERS = frozenset({b"content-length", b"transfer-encoding"})


@dataclass(frozen=True)
class RelayOptions:
    """Limits and timers of the owner's leg.

    ``connect_timeout`` bounds the TCP (and TLS) connect, after which nothing of the handshake was sent;
    ``open_timeout`` bounds the wait for the owner's handshake answer. ``max_size`` is the largest message
    accepted from the owner (the client's own limit is its server's: uvicorn's ``--ws-max-size``, 16 MiB by
    default). ``max_queue`` messages from the owner may wait for the client before the relay stops reading.
    ``ping_interval``/``ping_timeout`` detect an owner that vanished without closing its sockets (``None``
    turns the pings off). ``close_timeout`` bounds the owner's closing handshake, and so adds to the time an owner
    that stopped answering pings takes to be noticed (``ping_interval + ping_timeout + close_timeout`` at most).
    """

    connect_timeout: float = 1.0
    open_timeout: float = 10.0
    max_size: int = 16 * 1024 * 1024
    max_queue: int = 4
    ping_interval: float | None = 5.0
    ping_timeout: float | None = 5.0
    close_timeout: float = 2.0


@dataclass(frozen=True)
class OwnerRefused:
    """The owner answered the handshake with an HTTP response instead of accepting: the client gets it."""

    status: int
    headers: Headers
    body: bytes


class _OwnerProtocol(ClientProtocol):
    """The client side of the handshake, with the client's ``Host`` in place of the one made from the URI.

    The owner's app must see the ``Host`` the client sent (virtual hosts, Django's ``ALLOWED_HOSTS``, origin
    checks), exactly once, as an HTTP forward passes it.
    """

    def __init__(self, uri: Any, host: str | None, **kwargs: Any) -> None:
        super().__init__(uri, **kwargs)
        self._client_host = host

    def connect(self) -> Request:
        request = super().connect()
        if self._client_host is not None:
            rest = [(name, value) for name, value in request.headers.raw_items() if name.lower() != "host"]
            request.headers = WsHeaders([("Host", self._client_host), *rest])
        return request


def _owner_headers(headers: Sequence[tuple[bytes, bytes]]) -> tuple[str | None, WsHeaders]:
    """The client's ``Host``, and every other header for the owner's handshake, as the client library wants
    them (latin-1 text, which it writes back as the same bytes)."""
    host: str | None = None
    out = WsHeaders()
    try:
        for name, value in headers:
            lname = name.lower()
            if lname == b"host":
                if host is None:
                    host = value.decode("latin-1")
                continue
            if lname in _HANDSHAKE_HEADERS:
                continue
            out[name.decode("latin-1")] = value.decode("latin-1")
    except InvalidHeaderValue as exc:
        raise Unforwardable(f"a header of the websocket handshake cannot be written: {exc}") from None
    if host is not None and (not host or any(c in host for c in "\r\n\0")):
        raise Unforwardable("the websocket handshake's Host header cannot be written")
    return host, out


async def connect_owner(
    url_base: str,
    target: str,
    headers: Sequence[tuple[bytes, bytes]],
    subprotocols: Sequence[str] = (),
    options: RelayOptions | None = None,
) -> ClientConnection | OwnerRefused:
    """Open the owner's leg: a websocket to ``url_base`` (``http://host:port``, or ``https://``) for the
    origin-form ``target`` (path and query), offering the client's ``subprotocols``.

    ``headers`` are the handshake headers to send (the caller has removed hop-by-hop and internal headers and
    added its signed marker); the handshake's own headers among them are replaced by the client library's.
    Returns the open connection (its ``subprotocol`` is the owner's choice and ``response`` its answer), or
    :class:`OwnerRefused`. Raises the :mod:`~affinity_mw.forward` error kinds described above.
    """
    options = options or RelayOptions()
    parts = urlsplit(url_base)
    secure = parts.scheme == "https"
    try:
        uri = parse_uri(f"{'wss' if secure else 'ws'}://{parts.netloc}{target}")
    except InvalidURI as exc:
        raise Unforwardable(f"the websocket target cannot be forwarded: {exc}") from None
    host, extra = _owner_headers(headers)
    protocol = _OwnerProtocol(
        uri,
        host,
        subprotocols=[Subprotocol(s) for s in subprotocols] or None,
        max_size=options.max_size,
    )
    connection = ClientConnection(
        protocol,
        ping_interval=options.ping_interval,
        ping_timeout=options.ping_timeout,
        close_timeout=options.close_timeout,
        max_queue=options.max_queue,
    )
    loop = asyncio.get_running_loop()
    context = ssl.create_default_context() if secure else None
    try:
        await asyncio.wait_for(
            loop.create_connection(
                lambda: connection, uri.host, uri.port, ssl=context, server_hostname=uri.host if secure else None
            ),
            options.connect_timeout,
        )
    except (OSError, asyncio.TimeoutError) as exc:
        raise ConnectFailed(f"cannot open a websocket to {url_base}: {exc!r}") from exc
    try:
        await asyncio.wait_for(connection.handshake(extra, None), options.open_timeout)
    except InvalidStatus as exc:
        connection.transport.abort()
        response = exc.response
        kept = [(name, value) for name, value in _relayed(response.headers) if name not in _NOT_REFUSAL_HEADERS]
        return OwnerRefused(response.status_code, kept, bytes(response.body or b""))
    except asyncio.TimeoutError:
        connection.transport.abort()
        raise UpstreamTimeout(f"{url_base} did not answer the websocket handshake in time") from None
    except InvalidMessage as exc:
        connection.transport.abort()
        if isinstance(exc.__cause__, EOFError):
            raise SendFailed(f"{url_base} closed the connection before answering the websocket handshake") from exc
        raise BadResponse(f"{url_base} answered the websocket handshake with an invalid response: {exc}") from exc
    except (InvalidHandshake, OSError) as exc:
        connection.transport.abort()
        if isinstance(exc, OSError):
            raise SendFailed(f"the connection to {url_base} broke during the websocket handshake: {exc!r}") from exc
        raise BadResponse(f"{url_base} answered the websocket handshake wrongly: {exc}") from exc
    except BaseException:
        connection.transport.abort()
        raise
    connection.start_keepalive()
    return connection


async def deny(scope: Scope, send: Send, status: int, body: bytes, headers: Headers | None = None) -> None:
    """Refuse the client's handshake with an HTTP response when its server can send one (the ASGI
    ``websocket.http.response`` extension), with a plain refusal (the server's 403) otherwise."""
    if "websocket.http.response" in (scope.get("extensions") or {}):
        out = [*(headers or ()), (b"content-length", str(len(body)).encode())]
        if not any(name == b"content-type" for name, _ in out):
            out.append((b"content-type", b"text/plain; charset=utf-8"))
        await send({"type": "websocket.http.response.start", "status": status, "headers": out})
        await send({"type": "websocket.http.response.body", "body": body, "more_body": False})
    else:
        await send({"type": "websocket.close", "code": 1008})


def accept_headers(connection: ClientConnection) -> Headers:
    """The owner's handshake response headers for the client's ``websocket.accept``: ``Set-Cookie`` and the
    app's own headers pass; the handshake's own and hop-by-hop ones are the client's server's to write."""
    response = connection.response
    if response is None:  # pragma: no cover - an open connection has its response
        return []
    return [(name, value) for name, value in _relayed(response.headers) if name not in _HANDSHAKE_HEADERS]


def _relayed(headers: WsHeaders) -> Headers:
    """The owner's response headers as ASGI bytes, minus what never passes a proxy (:func:`response_headers`)."""
    return response_headers((name.encode("latin-1"), value.encode("latin-1")) for name, value in headers.raw_items())


def _close_for_owner(code: int, reason: str) -> tuple[int, str]:
    """The close frame for the owner's leg, from the client's ``websocket.disconnect``."""
    if code in EXTERNAL_CLOSE_CODES or 3000 <= code < 5000:
        return code, reason
    if code == 1005:  # the client's close frame had no code
        return 1000, ""
    return 1001, ""  # 1006: the client went away without a close frame (or a code that may not be sent)


def _close_for_client(exc: ConnectionClosed) -> tuple[int, str]:
    """The ``websocket.close`` for the client, from how the owner's leg ended."""
    if exc.rcvd is not None:
        code = exc.rcvd.code
        return (1000, "") if code == 1005 else (code, exc.rcvd.reason)
    if exc.sent is not None and exc.sent.code not in (1000, 1001, 1011):
        # The relay failed the owner's leg itself (1009: a message over max_size; 1002/1007: a bad frame).
        return OWNER_UNRELAYABLE
    return OWNER_GONE  # the connection dropped, or the owner stopped answering pings (websockets fails it 1011)


async def _client_to_owner(connection: ClientConnection, receive: Receive) -> tuple[int, str] | None:
    """Pass the client's messages on, one at a time; the client's close (code, reason), or ``None`` when the
    owner's leg ended first (the other direction then tells the client)."""
    while True:
        message = await receive()
        kind = message["type"]
        if kind == "websocket.receive":
            text = message.get("text")
            try:
                await connection.send(text if text is not None else (message.get("bytes") or b""))
            except ConnectionClosed:
                return None
        elif kind == "websocket.disconnect":
            return int(message.get("code", 1005)), message.get("reason") or ""


async def _owner_to_client(connection: ClientConnection, send: Send) -> None:
    """Pass the owner's messages on, each once the client's server can take it; then close the client as the
    owner's leg ended."""
    try:
        while True:
            data = await connection.recv()
            if isinstance(data, str):
                await send({"type": "websocket.send", "text": data})
            else:
                await send({"type": "websocket.send", "bytes": data})
    except ConnectionClosed as exc:
        code, reason = _close_for_client(exc)
        await send({"type": "websocket.close", "code": code, "reason": reason})


async def relay(connection: ClientConnection, receive: Receive, send: Send, headers: Headers | None = None) -> None:
    """Accept the client (the caller has received its ``websocket.connect``) as the owner accepted, and relay
    both ways until either end closes; the other end is then closed as described above.

    The owner's connection is closed (or aborted) before this returns, whatever happened; an error sending to
    the client (it went away) ends the relay quietly and closes the owner's leg with 1001.
    """
    try:
        await send(
            {
                "type": "websocket.accept",
                "subprotocol": connection.subprotocol,
                "headers": accept_headers(connection) if headers is None else headers,
            }
        )
    except OSError:  # the client left while the owner answered its handshake
        connection.transport.abort()
        return
    except BaseException:
        connection.transport.abort()
        raise
    upstream = asyncio.ensure_future(_client_to_owner(connection, receive))
    downstream = asyncio.ensure_future(_owner_to_client(connection, send))
    try:
        done, _ = await asyncio.wait((upstream, downstream), return_when=asyncio.FIRST_COMPLETED)
        if downstream in done:
            failure = downstream.exception()
            if failure is None:
                return  # the owner's leg ended and the client was closed as it ended
            if not isinstance(failure, OSError):  # anything but "the client went away" is a bug to see
                raise failure
            await connection.close(1001, "")
            return
        closed = upstream.result()  # raises whatever the client's receive raised
        if closed is None:  # the owner's leg ended while a message was on its way: closing the client is next
            with contextlib.suppress(OSError):
                await downstream
            return
        downstream.cancel()
        await connection.close(*_close_for_owner(*closed))
    finally:
        for task in (upstream, downstream):
            task.cancel()
        await asyncio.gather(upstream, downstream, return_exceptions=True)
        if connection.state is not State.CLOSED:
            connection.transport.abort()

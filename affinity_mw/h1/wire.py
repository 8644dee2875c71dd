"""HTTP/1.1 on the wire, for the built-in client: the request head it writes and the responses it reads.

A shared pool turns a framing bug into one user's bytes in another user's response, so the rules here are h11's
(the reference parser the differential test ``tests/test_h1_wire.py`` compares with, on generated responses in
random segment splits), checked with a few compiled regular expressions over whole heads rather than line by
line in Python:

* status line ``HTTP/d.d SP 3DIGIT [SP reason]`` with a status of 100 and up; header lines
  ``token ":" OWS field-value OWS``;
* ``Content-Length`` all digits (a comma list of one repeated value, or repeated headers that agree, at most 20
  digits), ``Transfer-Encoding`` exactly one ``chunked`` (any other coding: 502, since the relay could not frame
  the body); chunk sizes of 1-20 hex digits, extensions and trailers read, checked and dropped (never relayed);
* a connection is kept only for HTTP/1.1 and later without ``Connection: close``, after a body delimited by its
  length or its chunks, and only when the exchange ended exactly on a message boundary.

Stricter than h11, on purpose: these responses get 502 and their connection is closed, because relaying them
would be worse than failing. A bare CR or LF, or a line folded onto the previous one (obs-fold; RFC 9112 5.2 lets
a proxy refuse it), anywhere in the head; a control character in a header value (the server in front would
relay it or fail on it); both ``Transfer-Encoding`` and ``Content-Length`` (a response-splitting attempt, RFC
9112 6.3); ``101 Switching Protocols`` (upgrades are not forwarded). A response that carries no body by rule
(HEAD, 1xx, 204, 304) but declares one is relayed without a body, and its connection is never reused by any
transport (:func:`stray_body`): its peer may still write that body, and it would be the next user's response.

Requests are written only if the method and every header name are tokens and every value is free of CR, LF,
NUL and other control characters but HTAB: a front end that passed ``transfer-encoding : chunked`` or
``x-a:content-length`` gets 400 (:class:`~affinity_mw.forward.Unforwardable`), never a request the peer could
read differently. The library transports apply the same check (:func:`check_request_fields`).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterable
from typing import Protocol

from ..forward import BadResponse, ForwardError, SendFailed, Unforwardable, UpstreamRequest, UpstreamTimeout, bodiless

MAX_HEAD = 65536  # response head limit, as the servers in front of us accept (aiohttp transport: same)
_CHUNK = 65536

_TOKEN = rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+"
_VCHAR = rb"[\x21-\x7e\x80-\xff]"  # visible ASCII and obs-text: h11's field-vchar without its control characters
_FIELD = rb"(" + _TOKEN + rb"):[ \t]*((?:" + _VCHAR + rb"+(?:[ \t]+" + _VCHAR + rb"+)*)?)[ \t]*\r\n"
_FIELDS = re.compile(_FIELD)
_FIELD_BLOCK = re.compile(rb"(?:" + _FIELD + rb")*")
_STATUS = re.compile(rb"HTTP/([0-9]\.[0-9]) ([0-9]{3})(?: [^\x00\n\r\x0b\x0c]*)?")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,20})(?:;[^\n]*)?[ \t]*")
# What a request head may hold: a token method, a visible target, token names, values without CR/LF/NUL/CTLs.
_REQUEST_HEAD = re.compile(
    rb"(?:" + _TOKEN + rb") [\x21-\x7e\x80-\xff]+ HTTP/1\.1\r\n(?:" + _TOKEN + rb": [\t\x20-\x7e\x80-\xff]*\r\n)*\r\n"
)
_REQUEST_FIELD = re.compile(rb"(?:" + _TOKEN + rb")\0[\t\x20-\x7e\x80-\xff]*")
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class Source(Protocol):
    """What the readers need from a connection: its receive buffer and a way to wait for more."""

    buf: bytearray
    eof: bool
    timed_out: bool
    error: BaseException | None

    def consumed(self) -> None: ...

    async def wait_data(self) -> None: ...


def request_head(request: UpstreamRequest, host_header: bytes) -> bytes:
    """The request line and headers, framed from what will actually be sent, validated as a whole.

    ASGI servers do not all validate what they pass on, and one CR/LF or a name like ``transfer-encoding `` would
    make the peer read a different request on a pooled connection: one regular expression checks the whole head
    before any write (an :class:`Unforwardable` is a 400, not the peer's fault).
    """
    parts = [request.method.encode("ascii"), b" ", request.target.encode("latin-1"), b" HTTP/1.1\r\n"]
    has_host = False
    for name, value in request.headers:
        if name == b"host":
            has_host = True
        parts += (name, b": ", value, b"\r\n")
    if not has_host:
        parts += (b"host: ", host_header, b"\r\n")
    if request.body is not None:
        if request.content_length is None:
            parts.append(b"transfer-encoding: chunked\r\n")
        else:
            parts += (b"content-length: ", b"%d" % request.content_length, b"\r\n")
    elif request.method in _BODY_METHODS:
        parts.append(b"content-length: 0\r\n")  # some servers (nginx) answer 411 to a POST without a length
    parts.append(b"\r\n")
    head = b"".join(parts)
    # The expression sees lines, not fields: a value holding "\r\nname: v" would pass as two. The count of line
    # ends (one per field, the request line, the blank line) catches that.
    framed = request.body is not None or request.method in _BODY_METHODS
    lines = len(request.headers) + (2 if has_host else 3) + framed
    if head.count(b"\n") != lines or _REQUEST_HEAD.fullmatch(head) is None:
        raise Unforwardable("a request target, header name or header value that HTTP/1.1 cannot carry")
    return head


def check_request_fields(headers: Iterable[tuple[bytes, bytes]]) -> None:
    """The request-head rule for clients that write the head themselves (aiohttp, urllib3, httpx): names are
    tokens, values hold no CR, LF, NUL or other control character but HTAB. Raises :class:`Unforwardable`."""
    for name, value in headers:
        if _REQUEST_FIELD.fullmatch(b"%b\0%b" % (name, value)) is None:
            raise Unforwardable(f"a header HTTP/1.1 cannot carry: {name[:40]!r}")


def parse_fields(block: bytes) -> list[tuple[bytes, bytes]]:
    """Header (or trailer) lines, each ending in CRLF, as (lower-case name, value); BadResponse if any is invalid."""
    if _FIELD_BLOCK.fullmatch(block) is None:
        raise BadResponse(f"a malformed header line in {block[:80]!r}")
    return [(name.lower(), value) for name, value in _FIELDS.findall(block)]


def parse_head(head: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """A response head up to and including the CRLF that ends its last line: (status, fields, HTTP version)."""
    end = head.find(b"\r\n")
    match = _STATUS.fullmatch(head, 0, end)
    if match is None:
        raise BadResponse(f"bad status line {head[: min(end, 60)]!r}")
    status = int(match[2])
    if status < 100:
        raise BadResponse(f"bad status code {status}")
    return status, parse_fields(head[end + 2 :]), match[1]


def response_framing(
    method: str, status: int, fields: list[tuple[bytes, bytes]], version: bytes
) -> tuple[int | None, bool]:
    """How the response body is delimited (bytes to read, -1 chunked, None until close) and whether the
    connection may be reused once it is read (RFC 9112 6.3, 9.3; h11's rules). A Content-Length given as a list
    of one repeated value, or repeated, is relayed once, as h11 reads it."""
    length, chunked, close, canonical = _framing_fields(fields)
    if not canonical:
        _one_length(fields, length)
    keep = version >= b"1.1" and not close
    if chunked and length is not None:
        raise BadResponse("both Transfer-Encoding and Content-Length in a response")
    if bodiless(method, status):
        return 0, keep and not stray_body(method, status, fields)
    if chunked:
        return -1, keep
    if length is not None:
        return int(length), keep
    return None, False


def stray_body(method: str, status: int, fields: Iterable[tuple[bytes, bytes]]) -> bool:
    """True for a response that carries no body by rule (HEAD, 1xx, 204, 304) but declares one anyway: its
    connection must never be reused, by any client. Such a peer may still write the body it announced (uvicorn's
    httptools protocol does, some milliseconds later), and on a pooled connection those bytes would be read as
    the next user's response, cookies and all."""
    if not bodiless(method, status):
        return False
    for name, value in fields:
        name = name.lower()
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip(b" \t,0")):
            return True
    return False


def _framing_fields(fields: list[tuple[bytes, bytes]]) -> tuple[bytes | None, bool, bool, bool]:
    """The Content-Length (checked), whether the body is chunked, whether ``Connection`` says close, and whether
    the Content-Length was given once and plainly."""
    length: bytes | None = None
    chunked = close = False
    canonical = True
    for name, value in fields:
        if name == b"content-length":
            if not value.isdigit():
                values = {v.strip() for v in value.split(b",")}
                if len(values) != 1:
                    raise BadResponse("conflicting Content-Length values")
                value = values.pop()
                canonical = False
            if not value.isdigit() or len(value) > 20 or (length is not None and value != length):
                raise BadResponse("a malformed or conflicting Content-Length")
            canonical = canonical and length is None
            length = value
        elif name == b"transfer-encoding":
            if chunked or value.lower() != b"chunked":
                raise BadResponse("a Transfer-Encoding other than one 'chunked' cannot be relayed")
            chunked = True
        elif name == b"connection" and b"close" in {t.strip() for t in value.lower().split(b",")}:
            close = True
    return length, chunked, close, canonical


def _one_length(fields: list[tuple[bytes, bytes]], length: bytes | None) -> None:
    first = next(i for i, (name, _) in enumerate(fields) if name == b"content-length")
    fields[:] = [f for i, f in enumerate(fields) if i <= first or f[0] != b"content-length"]
    fields[first] = (b"content-length", length or b"")


def broken(conn: Source, what: str) -> ForwardError:
    if conn.timed_out:
        return UpstreamTimeout(f"{what}: the peer was silent too long")
    return SendFailed(f"{what}: {conn.error!r}" if conn.error else what)


def take_head(buf: bytearray) -> bytes | None:
    """A head (or trailer section) at the start of ``buf``, taken out of it up to the CRLF that ends its last line
    (the blank line after it is dropped); None while incomplete, BadResponse past the size limit."""
    end = buf.find(b"\r\n\r\n", 0, MAX_HEAD + 4)
    if end < 0:
        if len(buf) > MAX_HEAD:
            raise BadResponse("response head over 64 KiB")
        return None
    head = bytes(buf[: end + 2])
    del buf[: end + 4]
    return head


async def read_line(conn: Source) -> bytes:
    """One CRLF-terminated line of a chunked body (a chunk size line, or the CRLF after chunk data)."""
    while True:
        buf = conn.buf
        end = buf.find(b"\r\n")
        if end >= 0:
            line = bytes(buf[:end])
            del buf[: end + 2]
            conn.consumed()
            return line
        if len(buf) > MAX_HEAD:
            raise BadResponse("line too long in a chunked body")
        if conn.eof:
            raise broken(conn, "peer closed mid-body")
        await conn.wait_data()


async def chunked_body(conn: Source) -> AsyncIterator[bytes]:
    """The data of a chunked body; the trailer section is read, checked and dropped (never relayed)."""
    while True:
        line = await read_line(conn)
        match = _CHUNK_SIZE.fullmatch(line)
        if match is None:
            raise BadResponse(f"bad chunk size line {line[:40]!r}")
        size = int(match[1], 16)
        if size == 0:
            await _trailers(conn)
            return
        while size:
            buf = conn.buf
            if not buf:
                if conn.eof:
                    raise broken(conn, "peer closed mid-chunk")
                await conn.wait_data()
                continue
            take = min(size, len(buf), _CHUNK * 4)
            chunk = bytes(buf[:take])
            del buf[:take]
            conn.consumed()
            size -= take
            yield chunk
        if await read_line(conn):
            raise BadResponse("chunk data not followed by CRLF")


async def _trailers(conn: Source) -> None:
    while True:
        buf = conn.buf
        if buf[:2] == b"\r\n":
            del buf[:2]
            break
        trailers = take_head(buf) if len(buf) > 1 else None
        if trailers is not None:
            _framing_fields(parse_fields(trailers))  # checked as h11 checks them, then dropped
            break
        if conn.eof:
            raise broken(conn, "peer closed in the trailers")
        await conn.wait_data()
    conn.consumed()

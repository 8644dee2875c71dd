"""The built-in client's HTTP/1.1 reading, proven against h11: a seeded differential test, and the request writer.

Each case is a generated response (status lines, CL/TE combinations, whitespace, obs-fold, chunk sizes, extensions
and trailers, 1xx sequences, HEAD/204/304 with bodies, HTTP/1.0, bytes after the message), delivered in random
segment splits to the real connection code (``Connection`` + ``AsyncioTransport._exchange`` + the pool) and to an
h11 client connection. Both must make the same accept/reject decision and, when they accept, relay the same
status, headers and body bytes; the connection may go back to the pool only when h11 says both sides are done
and nothing is left unread, and must when it does (unless the response announced a body it may not carry).
Where the client is stricter than h11 on purpose (``affinity_mw/h1/wire.py`` says why: bare CR/LF, obs-fold,
control characters in values, TE with CL, 101) the case is marked, and the client must refuse it.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field

import h11
import pytest

from affinity_mw.forward import BadResponse, ForwardError, Unforwardable, UpstreamRequest, lowered_response_headers
from affinity_mw.h1 import AsyncioTransport
from affinity_mw.h1.connection import Connection
from affinity_mw.h1.pool import _Pool
from affinity_mw.h1.wire import MAX_HEAD, check_request_fields, request_head, stray_body

SEED = 20261205
CASES = 1500


@dataclass
class Case:
    method: str
    data: bytes
    stricter: list[str] = field(default_factory=list)  # why the client must refuse what h11 may accept


def _status_line(rng: random.Random, interim: bool) -> bytes:
    version = b"HTTP/1.1" if rng.random() < 0.75 else b"HTTP/1.0"
    if rng.random() < 0.08:
        odd = [b"HTTP/1.2", b"HTTP/2.0", b"HTTP/0.9", b"HTTP/11", b"http/1.1", b"HTTP/1.1 ", b"HTTP/1.1x"]
        version = rng.choice(odd)
    if interim:
        code = rng.choice([b"100", b"102", b"103"])
    else:
        code = rng.choice([b"200"] * 8 + [b"201", b"204", b"204", b"304", b"304", b"404", b"500", b"599", b"999"])
        if rng.random() < 0.05:
            code = rng.choice([b"600", b"099", b"2_0", b"20", b"+99", b"0200"])
    reason = rng.choice([b" OK"] * 6 + [b"", b" ", b" Not  Found", b" tab\there", b" caf\xe9", b" \x01c"])
    if rng.random() < 0.03:
        reason = b"OK"
    return version + b" " + code + reason


def _bodiless(method: str, status_line: bytes) -> bool:
    return method == "HEAD" or status_line[9:12] in (b"204", b"304")


GOOD_FIELDS = [b"content-type: text/plain", b"x-a: 1", b"set-cookie: a=1", b"Set-Cookie: b=2", b"x-empty:",
               b"x-ws:   padded   ", b"x-tab:\tv\t", b"x-inner: a  b\tc", b"x-obs: caf\xe9", b"X-UPPER: V",
               b"x_under: 1", b"connection: close", b"Connection: keep-alive", b"connection: Close, x-a",
               b"keep-alive: timeout=5", b"date: today", b"server: peer"]  # fmt: skip
BAD_FIELDS = [b"x y: 1", b"x-a : 1", b": empty-name", b"no-colon", b"x\x00: 1", b"x-a: 1\x00", b"x-vt: a\x0bb",
              b"x(a): 1", b"x-ff:\x0c", b"x-a:\x00"]  # fmt: skip
CTL_FIELDS = [b"x-c: a\x01b", b"x-c: \x7f", b"x-c: \x1b[0m"]


def _fields(rng: random.Random, case: Case, n: int) -> list[bytes]:
    lines = []
    for _ in range(n):
        roll = rng.random()
        if roll < 0.04:
            lines.append(rng.choice(BAD_FIELDS))
        elif roll < 0.06:
            lines.append(rng.choice(CTL_FIELDS))
            case.stricter.append("control character")
        elif roll < 0.08 and lines:
            lines.append(rng.choice([b" folded", b"\tfolded"]))
            case.stricter.append("obs-fold")
        else:
            lines.append(rng.choice(GOOD_FIELDS))
    return lines


def _head(rng: random.Random, case: Case, first: bytes, lines: list[bytes]) -> bytes:
    out = b""
    for line in [first, *lines]:
        if rng.random() < 0.015:
            out += line + b"\n"
            case.stricter.append("bare LF")
        else:
            out += line + b"\r\n"
    return out + b"\r\n"


def _chunked(rng: random.Random, case: Case) -> bytes:
    out = b""
    for _ in range(rng.randint(0, 3)):
        data = bytes(rng.randrange(256) for _ in range(rng.randint(1, 20)))
        size = rng.choice([b"%x", b"%X", b"00%x"]) % len(data)
        roll = rng.random()
        if roll < 0.04:
            size = rng.choice([b"0x5", b"+5", b"", b"g", b"1" * 21, b"5 ;x", b"-1"])
        elif roll < 0.2:
            size += rng.choice([b";a=b", b";x", b'; q="v"', b" ", b"\t", b";"])
        end = rng.choice([b"\r\n"] * 30 + [b"\n", b"xx"])
        out += size + b"\r\n" + data + end
    out += rng.choice([b"0", b"000", b"0;ext"]) + b"\r\n"
    roll = rng.random()
    if roll < 0.7:
        return out + b"\r\n"
    if roll < 0.9:
        return out + b"x-trailer: 1\r\nx-t2: two\r\n\r\n"
    if roll < 0.92:
        case.stricter.append("bare LF")
        return out + b"x-trailer: 1\n\r\n"
    return out + rng.choice([b"bad line\r\n\r\n", b"content-length: abc\r\n\r\n", b"x: \x00\r\n\r\n",
                             b"transfer-encoding: gzip\r\n\r\n", b"transfer-encoding: chunked\r\n\r\n"])  # fmt: skip


def generate(rng: random.Random) -> Case:
    case = Case(rng.choice(["GET"] * 4 + ["HEAD"]), b"")
    data = b""
    for _ in range(rng.choice([0] * 6 + [1, 1, 2])):
        interim_fields = [b"link: </a>"] if rng.random() < 0.5 else []
        if rng.random() < 0.15:
            interim_fields.append(rng.choice([b"content-length: 5", b"transfer-encoding: chunked"]))
        if rng.random() < 0.05:
            data += b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n"
            case.stricter.append("101")
        data += _head(rng, case, _status_line(rng, True), interim_fields)
    body = bytes(rng.randrange(256) for _ in range(rng.randint(0, 40)))
    framing = rng.choice(["cl"] * 10 + ["te"] * 8 + ["none"] * 3 + ["cl-list", "cl-dup", "cl-conflict", "cl-bad",
                         "cl-short", "cl-long", "te-bad", "te-twice", "te-cl"])  # fmt: skip
    lines = _fields(rng, case, rng.randint(0, 5))
    payload = body
    body_stricter: list[str] = []
    n = len(body)
    if framing == "cl":
        lines.append(b"content-length: %d" % n)
    elif framing == "cl-list":
        lines.append(b"content-length: %d, %d" % (n, n))
    elif framing == "cl-dup":
        lines += [b"content-length: %d" % n, b"Content-Length: %d" % n]
    elif framing == "cl-conflict":
        lines.append(rng.choice([b"content-length: %d, %d" % (n, n + 1), b"content-length: %d\r\ncontent-length: %d"
                                 % (n, n + 1)]))  # fmt: skip
    elif framing == "cl-bad":
        lines.append(
            rng.choice(
                [
                    b"content-length: +%d",
                    b"content-length: %d.0",
                    b"content-length: 0x%d",
                    b"content-length:",
                    b"content-length: -%d",
                    b"content-length: 1%d" + b"0" * 20,
                    b"content-length:  %d  ",
                    b"content-length: 00%d",
                ]
            ).replace(b"%d", b"%d" % n)
        )
    elif framing == "cl-short":
        lines.append(b"content-length: %d" % (n + 3))
    elif framing == "cl-long":
        lines.append(b"content-length: %d" % n)
        payload = body + b"HTTP/1.1 200 OK\r\nset-cookie: sid=x\r\ncontent-length: 0\r\n\r\n"
    elif framing.startswith("te"):
        te = rng.choice([b"chunked", b"Chunked", b"CHUNKED", b" chunked "])
        if framing == "te-bad":
            te = rng.choice([b"gzip, chunked", b"chunked, gzip", b"gzip", b"chunked, chunked", b"identity"])
        lines.append(b"transfer-encoding: " + te)
        if framing == "te-twice":
            lines.append(b"transfer-encoding: chunked")
        if framing == "te-cl":
            lines.append(b"content-length: %d" % n)
            case.stricter.append("TE with CL")
        chunked = Case(case.method, b"")
        payload = _chunked(rng, chunked)
        body_stricter = chunked.stricter
    rng.shuffle(lines)
    status_line = _status_line(rng, False)
    if not _bodiless(case.method, status_line):
        case.stricter += body_stricter  # in a bodiless answer, these bytes come after the message: never parsed
    data += _head(rng, case, status_line, lines)
    # HEAD, 204 and 304 answers carry their declared body anyway in some cases: bytes after the message.
    case.data = data + payload
    return case


def segments(rng: random.Random, data: bytes) -> list[bytes]:
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.choice([0, 1, 2, 4, 8, 32]))))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


@dataclass
class Outcome:
    accepted: bool
    status: int = 0
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    reusable: bool = False  # ours: back in the pool; h11: both sides DONE and nothing unread
    error: str = ""


def by_h11(method: str, parts: list[bytes]) -> Outcome:
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
    conn.send(h11.Request(method=method, target="/", headers=[("host", "peer")]))
    conn.send(h11.EndOfMessage())
    out = Outcome(False)
    done = False
    try:
        for i, part in enumerate([*parts, b""]):
            conn.receive_data(part)
            while not done:
                event = conn.next_event()
                if event is h11.NEED_DATA or event is h11.PAUSED:
                    break
                if isinstance(event, h11.Response):
                    out.status = event.status_code
                    out.headers = lowered_response_headers(list(event.headers))
                elif isinstance(event, h11.Data):
                    out.body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    done = True
                    unread = bool(conn.trailing_data[0]) or any(parts[i + 1 :]) or part == b""
                    out.reusable = conn.our_state is h11.DONE and conn.their_state is h11.DONE and not unread
            if done:
                break
    except h11.ProtocolError as exc:
        return Outcome(False, error=repr(exc))
    out.accepted = done
    return out


class _FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closing

    def abort(self) -> None:
        self.closing = True

    def close(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def by_client(method: str, parts: list[bytes]) -> Outcome:
    loop = asyncio.get_running_loop()
    client = AsyncioTransport()
    pool = _Pool(loop, keepalive=60.0)
    peer = pool.peer("http://127.0.0.1:9")
    conn = Connection(loop)
    conn.connection_made(_FakeTransport())
    request = UpstreamRequest(method, "http://127.0.0.1:9", "/", [(b"host", b"peer")])
    head = request_head(request, peer.host_header)

    async def exchange() -> Outcome:
        r = await client._exchange(pool, peer, conn, request, head, None, False, None, 10.0)
        body = b"".join([chunk async for chunk in r.aiter_raw()])
        await r.aclose(reusable=True)
        return Outcome(True, r.status, r.headers, body)

    task = asyncio.ensure_future(exchange())
    for part in parts:
        await asyncio.sleep(0)
        conn.data_received(part)
        for _ in range(4):
            await asyncio.sleep(0)
    if not task.done():
        conn.eof_received()
        conn.connection_lost(None)
    try:
        out = await task
    except ForwardError as exc:
        out = Outcome(False, error=repr(exc))
    out.reusable = conn in peer.idle and conn.usable
    conn.close()
    return out


def test_the_client_reads_responses_as_h11_does() -> None:
    rng = random.Random(SEED)
    seen = {"accepted": 0, "rejected": 0, "stricter": 0, "reused": 0, "stray": 0}
    failures: list[str] = []

    async def main() -> None:
        for n in range(CASES):
            case = generate(rng)
            parts = segments(rng, case.data)
            ours = await by_client(case.method, parts)
            ref = by_h11(case.method, parts)
            where = f"case {n} (seed {SEED}) {case.method} {case.data[:300]!r} in {len(parts)} parts"
            if case.stricter:
                seen["stricter"] += 1
                if ours.accepted:
                    failures.append(f"{where}: accepted what the client must refuse ({case.stricter})")
                continue
            seen["accepted" if ref.accepted else "rejected"] += 1
            if ours.accepted != ref.accepted:
                failures.append(f"{where}: client {ours.error or 'accepted'}, h11 {ref.error or 'accepted'}")
                continue
            if not ours.accepted:
                continue
            if (ours.status, ours.headers, ours.body) != (ref.status, ref.headers, ref.body):
                failures.append(f"{where}: client {ours.status} {ours.headers} {ours.body!r}, h11 {ref.status} "
                                f"{ref.headers} {ref.body!r}")  # fmt: skip
            # The announced-body rule, on everything the peer sent before the final answer's body.
            stray = any(stray_body(case.method, *_status_and_fields(head)) for head in _heads(case.data))
            seen["stray"] += stray
            seen["reused"] += ours.reusable
            if stray and ours.reusable:
                failures.append(f"{where}: pooled after an answer that announced a body it may not carry")
            if ours.reusable and not ref.reusable:
                failures.append(f"{where}: pooled, but h11 says the connection is not done")
            if ref.reusable and not ours.reusable and not stray:
                failures.append(f"{where}: h11 would reuse the connection, the client dropped it")

    asyncio.run(main())
    assert not failures, f"{len(failures)} of {CASES} differ:\n" + "\n".join(failures[:20])
    # The generator covers what it claims to: enough of each outcome to mean something.
    assert seen["accepted"] > CASES * 0.25 and seen["rejected"] > CASES * 0.15, seen
    assert seen["stricter"] > CASES * 0.05 and seen["reused"] > CASES * 0.1 and seen["stray"] > 10, seen


def _heads(data: bytes) -> list[bytes]:
    """The heads at the start of ``data`` (interim ones, then the final one)."""
    heads = []
    while True:
        end = data.find(b"\r\n\r\n")
        head, data = data[: end + 2], data[end + 4 :]
        heads.append(head)
        if not head.startswith(b"HTTP/1.1 1") and not head.startswith(b"HTTP/1.0 1"):
            return heads


def _status_and_fields(head: bytes) -> tuple[int, list[tuple[bytes, bytes]]]:
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ")[1][:3])
    return status, [(name.strip(), value.strip()) for name, _, value in (line.partition(b":") for line in lines[1:])]


@pytest.mark.parametrize(
    "headers",
    [
        [(b"transfer-encoding ", b"chunked")],
        [(b"x-a:content-length", b"5")],
        [(b"x a", b"1")],
        [(b"", b"1")],
        [(b"x-a", b"1\x01")],
        [(b"x-a", b"\x7f")],
        [(b"x-a", b"1\rx")],
    ],
    ids=["te-space", "colon-in-name", "space-in-name", "empty-name", "soh-in-value", "del-in-value", "bare-cr"],
)
def test_the_request_writer_refuses_what_http11_cannot_carry(headers: list[tuple[bytes, bytes]]) -> None:
    """The built-in client and the library transports refuse (400, Unforwardable) a header name that is not a
    token or a value with a control character, before anything reaches the peer."""
    request = UpstreamRequest("GET", "http://peer", "/", [(b"host", b"app"), *headers])
    with pytest.raises(Unforwardable):
        request_head(request, b"peer")
    with pytest.raises(Unforwardable):
        check_request_fields(request.headers)


def test_the_request_writer_passes_ordinary_heads() -> None:
    fields = [(b"host", b"app"), (b"x-a", b""), (b"cookie", b"a=1; b=2"), (b"x-tab", b"a\tb"), (b"x-obs", b"caf\xe9")]
    request = UpstreamRequest("POST", "http://peer", "/a?b=c%20d", fields, [b"x"], 1)
    head = request_head(request, b"peer")
    assert head.startswith(b"POST /a?b=c%20d HTTP/1.1\r\nhost: app\r\nx-a: \r\n")
    assert head.endswith(b"content-length: 1\r\n\r\n")
    check_request_fields(fields)


def test_transfer_codings_the_relay_cannot_frame_are_refused_not_relayed() -> None:
    async def main() -> None:
        for te in (b"gzip, chunked", b"chunked, gzip", b"gzip"):
            data = b"HTTP/1.1 200 OK\r\ntransfer-encoding: " + te + b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            out = await by_client("GET", [data])
            assert not out.accepted and "BadResponse" in out.error, out

    asyncio.run(main())
    assert issubclass(BadResponse, ForwardError)


def test_http10_chunked_keep_alive_is_read_but_never_pooled() -> None:
    async def main() -> None:
        data = b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
        out = await by_client("GET", [data])
        assert (out.accepted, out.body, out.reusable) == (True, b"ok", False)

    asyncio.run(main())

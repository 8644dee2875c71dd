"""Unit tests of the WSGI middleware's own logic with a scripted transport (real servers: test_cluster.py)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import pytest

from affinity_mw import AffinityWSGIMiddleware, StaticMembership, hash_key
from affinity_mw.forward import (
    BadFraming,
    ConnectFailed,
    ForwardError,
    SendFailed,
    UpstreamRequest,
    UpstreamTimeout,
    body_framing,
)
from affinity_mw.wsgi import environ_headers

URLS = ["http://127.0.0.1:1", "http://127.0.0.2:1", "http://127.0.0.3:1"]
SECRET = "wsgi-unit-secret-0123456789"
RING = StaticMembership(URLS).ring
SEEN: list[dict[str, Any]] = []


def tenant_where(predicate: Any) -> str:
    return next(t for t in (f"t{i}" for i in range(1000)) if predicate([n.id for n in RING.successors(hash_key(t))]))


class Response:
    def __init__(self, status: int = 200, headers: list[tuple[bytes, bytes]] | None = None,
                 chunks: list[bytes] | None = None, fail_after: int | None = None) -> None:  # fmt: skip
        self.status = status
        self.reason = ""
        self.headers = headers or []
        self.chunks = [b"ok"] if chunks is None else chunks
        self.fail_after = fail_after
        self.closed: bool | None = None

    def iter_raw(self) -> Iterator[bytes]:
        for i, chunk in enumerate(self.chunks):
            if i == self.fail_after:
                raise SendFailed("peer died mid-body")
            yield chunk

    def close(self, *, reusable: bool) -> None:
        self.closed = reusable


class ScriptedTransport:
    def __init__(self, *script: Any) -> None:
        self.script = list(script)
        self.requests: list[UpstreamRequest] = []
        self.bodies: list[bytes] = []

    def send(self, request: UpstreamRequest) -> Any:
        self.requests.append(request)
        outcome = self.script.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        if request.body is not None:
            self.bodies.append(b"".join(request.body))  # type: ignore[arg-type]
        return outcome

    def close(self) -> None:
        pass


def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    SEEN.append(environ)
    body = environ["wsgi.input"].read()
    start_response("200 OK", [("X-App", "local")])
    return [b"local:" + body]


def middleware(transport: Any = None, self_url: str = URLS[0], **options: Any) -> AffinityWSGIMiddleware:
    options = {"peers": URLS, "self_url": self_url, "secret": SECRET, "key": "header:X-Tenant", **options}
    return AffinityWSGIMiddleware(app, transport=transport or ScriptedTransport(), **options)


def call(mw: AffinityWSGIMiddleware, tenant: str | None, method: str = "GET", body: bytes = b"",
         extra: dict[str, str] | None = None) -> tuple[str, list[tuple[str, str]], bytes]:  # fmt: skip
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method, "PATH_INFO": "/p", "QUERY_STRING": "q=1", "SERVER_NAME": "x", "SERVER_PORT": "1",
        "REMOTE_ADDR": "10.9.9.9", "REMOTE_PORT": "1234", "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(body),
        "HTTP_HOST": "app.example", **(extra or {}),
    }  # fmt: skip
    if tenant is not None:
        environ["HTTP_X_TENANT"] = tenant
    if body:
        environ["CONTENT_LENGTH"] = str(len(body))
    status: list[Any] = []

    def start_response(s: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        status[:] = [s, headers]

    result = mw(environ, start_response)
    try:
        data = b"".join(result)
    finally:
        getattr(result, "close", lambda: None)()
    return (status[0], status[1], data) if status else ("", [], data)


def test_environ_headers_rebuilds_asgi_shape() -> None:
    headers = environ_headers({"HTTP_X_TENANT": "a", "CONTENT_TYPE": "text/plain", "CONTENT_LENGTH": "3",
                               "HTTP_X_AFFINITY_HOP": "m", "wsgi.input": None})  # fmt: skip
    assert headers == [(b"x-tenant", b"a"), (b"x-affinity-hop", b"m"), (b"content-type", b"text/plain"),
                       (b"content-length", b"3")]  # fmt: skip
    # gunicorn sets wsgi.input_terminated on every request: it must not turn a GET into a chunked upload.
    assert environ_headers({"wsgi.input_terminated": True}) == []
    assert body_framing(environ_headers({"HTTP_TRANSFER_ENCODING": "chunked"})) is None
    # Werkzeug's server keeps CONTENT_LENGTH next to a chunked body; both reach body_framing, which refuses them.
    both = environ_headers({"HTTP_TRANSFER_ENCODING": "chunked", "CONTENT_LENGTH": "5"})
    assert both == [(b"transfer-encoding", b"chunked"), (b"content-length", b"5")]
    with pytest.raises(BadFraming):
        body_framing(both)


def test_local_path_strips_internal_headers_and_exposes_decision() -> None:
    tenant = tenant_where(lambda order: order[0] == URLS[0])
    status, headers, body = call(middleware(debug_headers=True), tenant,
                                 extra={"HTTP_X_AFFINITY_HOP": "forged", "HTTP_X_AFFINITY_OWNER": "x"})  # fmt: skip
    assert status == "200 OK" and body == b"local:"
    assert not [k for k in SEEN[-1] if k.startswith("HTTP_X_AFFINITY")]
    assert SEEN[-1]["affinity_mw.decision"].reason == "owner"
    assert ("x-affinity-served-by", URLS[0]) in headers


def test_forward_streams_body_and_relays_response() -> None:
    tenant = tenant_where(lambda order: order[0] == URLS[1])
    response = Response(
        201, [(b"set-cookie", b"a=1"), (b"set-cookie", b"b=2"), (b"content-length", b"2")], [b"x", b"y"]
    )
    transport = ScriptedTransport(response)
    status, headers, body = call(middleware(transport), tenant, "POST", b"payload")
    request = transport.requests[0]
    assert request.url_base == URLS[1] and request.target == "/p?q=1" and request.content_length == 7
    assert transport.bodies == [b"payload"]
    assert status == "201 Created" and body == b"xy"
    assert [h for h in headers if h[0] == "set-cookie"] == [("set-cookie", "a=1"), ("set-cookie", "b=2")]
    assert response.closed is True
    sent = dict(request.headers)
    assert sent[b"host"] == b"app.example" and not any(name.startswith(b"x-forwarded-") for name in sent)


def test_forwarded_headers_option_adds_them_for_the_hop() -> None:
    tenant = tenant_where(lambda order: order[0] == URLS[1])
    transport = ScriptedTransport(Response(200, [(b"content-length", b"0")], []))
    call(middleware(transport, forwarded_headers=True), tenant)
    sent = dict(transport.requests[0].headers)
    assert sent[b"x-forwarded-for"] == b"10.9.9.9" and sent[b"x-forwarded-proto"] == b"http"
    assert sent[b"x-forwarded-host"] == b"app.example" and sent[b"host"] == b"app.example"


def test_failover_and_retry_rules() -> None:
    tenant = tenant_where(lambda order: order[0] == URLS[1] and order[1] == URLS[2])
    transport = ScriptedTransport(ConnectFailed("refused"), Response())
    assert call(middleware(transport), tenant, "POST", b"b")[0].startswith("200")
    assert [r.url_base for r in transport.requests] == [URLS[1], URLS[2]]
    transport = ScriptedTransport(SendFailed("reset"), Response())
    assert call(middleware(transport), tenant, "POST", b"b")[0].startswith("502")
    assert len(transport.requests) == 1
    transport = ScriptedTransport(SendFailed("reset"), Response())
    assert call(middleware(transport), tenant, "GET")[0].startswith("200")
    assert call(middleware(ScriptedTransport(UpstreamTimeout("slow"))), tenant)[0].startswith("504")
    tenant = tenant_where(lambda order: order[0] == URLS[1] and order[1] == URLS[0])
    _, _, body = call(middleware(ScriptedTransport(ConnectFailed("refused"))), tenant, "POST", b"b")
    assert body == b"local:b" and SEEN[-1]["affinity_mw.decision"].reason == "failover"


def test_mid_body_failure_and_short_body_abort() -> None:
    tenant = tenant_where(lambda order: order[0] == URLS[1])
    response = Response(200, [], [b"a", b"b"], fail_after=1)
    with pytest.raises(SendFailed):
        call(middleware(ScriptedTransport(response)), tenant)
    assert response.closed is False
    response = Response(200, [(b"content-length", b"10")], [b"abc"])
    with pytest.raises(ForwardError, match="Content-Length"):
        call(middleware(ScriptedTransport(response)), tenant)
    assert response.closed is False


def test_head_response_is_not_short() -> None:
    tenant = tenant_where(lambda order: order[0] == URLS[1])
    response = Response(200, [(b"content-length", b"10")], [])
    status, _, body = call(middleware(ScriptedTransport(response)), tenant, "HEAD")
    assert status.startswith("200") and body == b"" and response.closed is True


def test_reject_policy() -> None:
    assert call(middleware(no_key="reject"), None)[0].startswith("400")


@pytest.mark.parametrize("target", ["@127.0.0.50:9999/x", "http://evil.example/x", "*"])
def test_only_origin_form_targets_are_forwarded(target: str) -> None:
    tenant = tenant_where(lambda order: order[0] == URLS[1])
    transport = ScriptedTransport(Response())
    status, _, _ = call(middleware(transport), tenant, extra={"RAW_URI": target})
    assert transport.requests == [] and status.startswith("400")


def test_client_abort_is_not_a_peer_failure() -> None:
    from affinity_mw.forward import ClientGone

    tenant = tenant_where(lambda order: order[0] == URLS[1])
    mw = middleware(ScriptedTransport(*[ClientGone("left")] * 5), eject_after=1)
    for _ in range(3):
        status, _, body = call(mw, tenant, "POST", b"abc")
        # WSGI cannot abort before a response starts: a 400 nobody reads, for the access log (never a 500).
        assert status.startswith("400") and b"closed the connection" in body
    assert mw.core.health.usable(URLS[1])


def test_pool_exhaustion_is_a_fast_503_and_slots_come_back() -> None:
    tenant = tenant_where(lambda order: order[0] == URLS[1])
    mw = middleware(ScriptedTransport(Response(), Response()), pool_size=1, pool_timeout=0.05)
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/p", "REMOTE_ADDR": "10.9.9.9", "wsgi.url_scheme": "http",
               "wsgi.input": io.BytesIO(), "HTTP_X_TENANT": tenant}  # fmt: skip
    held = mw(dict(environ), lambda *a: None)  # a response still streaming holds the peer's only slot
    status, headers, _ = call(mw, tenant)
    assert status.startswith("503") and ("retry-after", "1") in headers
    held.close()  # type: ignore[attr-defined]
    assert call(mw, tenant)[0].startswith("200"), "closing the relayed response released the slot"


# ------------------------------------------------------------------------------------- limits (431, 413)---------


def owned(url: str) -> str:
    return tenant_where(lambda order: order[0] == url)


class ChunkedInput(io.BytesIO):
    """``wsgi.input`` of a chunked body as servers deliver it: reads end with b"" at the end of the body."""


@pytest.mark.parametrize("owner", [URLS[0], URLS[1]], ids=["local", "forwarded"])
def test_oversized_header_block_is_431_before_routing(owner: str) -> None:
    tenant = owned(owner)
    transport = ScriptedTransport()
    mw = middleware(transport, max_header_bytes=300)
    seen = len(SEEN)
    status, _, body = call(mw, tenant, extra={"HTTP_X_BIG": "v" * 300})
    assert status.startswith("431") and b"AFFINITY_MAX_HEADER_BYTES" in body
    assert transport.requests == [] and len(SEEN) == seen


@pytest.mark.parametrize("owner", [URLS[0], URLS[1]], ids=["local", "forwarded"])
def test_declared_length_over_max_body_is_413_before_app_or_forward(owner: str) -> None:
    tenant = owned(owner)
    transport = ScriptedTransport(Response(), Response())
    mw = middleware(transport, max_body=10)
    seen = len(SEEN)
    status, _, body = call(mw, tenant, "POST", b"x" * 11)
    assert status.startswith("413") and b"AFFINITY_MAX_BODY" in body
    assert transport.requests == [] and len(SEEN) == seen
    status, _, _ = call(mw, tenant, "POST", b"x" * 10)
    assert status.startswith("200")


def test_chunked_forward_over_max_body_stops_and_answers_413() -> None:
    tenant = owned(URLS[1])
    transport = ScriptedTransport(Response())
    mw = middleware(transport, max_body=10, eject_after=1)
    extra = {"HTTP_TRANSFER_ENCODING": "chunked", "wsgi.input": ChunkedInput(b"x" * 70_000)}
    status, _, body = call(mw, tenant, "POST", extra=extra)
    assert status.startswith("413") and b"AFFINITY_MAX_BODY" in body and transport.bodies == []
    assert mw.core.health.usable(URLS[1])
    transport = ScriptedTransport(Response())
    extra = {"HTTP_TRANSFER_ENCODING": "chunked", "wsgi.input": ChunkedInput(b"x" * 10)}
    status, _, _ = call(middleware(transport, max_body=10), tenant, "POST", extra=extra)
    assert status.startswith("200") and transport.bodies == [b"x" * 10]


@pytest.mark.parametrize("style", ["raises", "answers-500", "answers-200"])
def test_chunked_local_over_max_body_is_413_whatever_the_app_answers(style: str) -> None:
    from affinity_mw.forward import BodyTooLarge

    tenant = owned(URLS[0])
    read: list[bytes] = []

    def reader(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        try:
            while chunk := environ["wsgi.input"].read(4):
                read.append(chunk)
        except BodyTooLarge:
            if style == "raises":
                raise
            start_response("500 Internal Server Error" if style == "answers-500" else "200 OK", [])
            return [b"app's answer"]
        start_response("200 OK", [])
        return [b"ok"]

    mw = AffinityWSGIMiddleware(reader, peers=URLS, self_url=URLS[0], secret=SECRET, key="header:X-Tenant",
                                max_body=10)  # fmt: skip
    extra = {"HTTP_TRANSFER_ENCODING": "chunked", "wsgi.input": ChunkedInput(b"y" * 100)}
    status, _, body = call(mw, tenant, "POST", extra=extra)
    assert status.startswith("413") and b"AFFINITY_MAX_BODY" in body
    assert sum(map(len, read)) <= 10
    read.clear()
    extra = {"HTTP_TRANSFER_ENCODING": "chunked", "wsgi.input": ChunkedInput(b"y" * 10)}
    status, _, body = call(mw, tenant, "POST", extra=extra)
    assert status.startswith("200") and b"".join(read) == b"y" * 10


def test_header_scan_sizes_every_header_key_and_only_those() -> None:
    """The scan skips the environ keys servers always set; a header key, an unknown key or an internal header in
    any position must still be seen, so the 431 limit counts exactly the HTTP_ keys (names without the prefix)."""
    tenant = owned(URLS[0])
    base = {"REQUEST_METHOD": "GET", "PATH_INFO": "/p", "HTTP_HOST": "app.example", "HTTP_X_TENANT": tenant}
    extras = {"werkzeug.request": "x" * 500, "my.extension": "y" * 500, "SERVER_SOFTWARE": "z" * 500}
    environ = {**base, **extras, "HTTP_X_PAD": "v" * 150}
    size = sum(len(key) - 5 + len(value) for key, value in environ.items() if key.startswith("HTTP_"))
    for limit, want in ((size, "200"), (size - 1, "431")):
        status, _, _ = call(middleware(ScriptedTransport(), max_header_bytes=limit), tenant,
                            extra={**extras, "HTTP_X_PAD": "v" * 150})  # fmt: skip
        assert status.startswith(want), (limit, status)
    # An internal header after many other keys is still found and stripped before the app sees the request.
    status, _, _ = call(middleware(), tenant, extra={**extras, "HTTP_X_AFFINITY_OWNER": "spoofed"})
    assert status.startswith("200") and "HTTP_X_AFFINITY_OWNER" not in SEEN[-1]


def test_on_a_hop_the_key_is_read_from_the_request_as_the_first_node_saw_it() -> None:
    """Keyed by X-Forwarded-For, the owner must route by the value the first node saw, not the one the forwarder
    appended to: otherwise both nodes extract different keys (counted as a marker for another key)."""
    from affinity_mw import HopSigner

    ring = StaticMembership(URLS).ring
    marker = HopSigner(SECRET).sign(sender=URLS[0], key_hash=hash_key("1.1.1.1"), ring_checksum=ring.checksum,
                                    added="f")  # fmt: skip
    mw = middleware(self_url=URLS[1], key="header:X-Forwarded-For")
    extra = {"HTTP_X_FORWARDED_FOR": "1.1.1.1, 10.9.9.9", "HTTP_X_AFFINITY_HOP": marker.decode()}
    status, _, _ = call(mw, None, extra=extra)
    assert status.startswith("200")
    decision = SEEN[-1]["affinity_mw.decision"]
    assert decision.key == "1.1.1.1" and decision.reason == "hop"
    assert mw.core.counters["marker_key_mismatch"] == 0

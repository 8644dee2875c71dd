"""Unit tests of the ASGI middleware's own logic, with a scripted transport (the real one is proven in
test_cluster_asgi.py against real uvicorn nodes)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from affinity_mw import AffinityMiddleware, StaticMembership, hash_key
from affinity_mw.forward import ConnectFailed, SendFailed, UpstreamRequest, UpstreamTimeout

URLS = ["http://127.0.0.1:1", "http://127.0.0.2:1", "http://127.0.0.3:1"]
SECRET = "asgi-unit-secret-0123456789"
RING = StaticMembership(URLS).ring


def tenant_where(predicate: Any) -> str:
    for i in range(1000):
        t = f"t{i}"
        if predicate([n.id for n in RING.successors(hash_key(t))]):
            return t
    raise AssertionError


def owned_by(url: str) -> str:
    return tenant_where(lambda order: order[0] == url)


class Response:
    def __init__(
        self,
        status: int = 200,
        headers: list[tuple[bytes, bytes]] | None = None,
        chunks: list[bytes] | None = None,
        fail_after: int | None = None,
    ) -> None:
        self.status = status
        self.headers = headers or []
        self.chunks = [b"ok"] if chunks is None else chunks
        self.fail_after = fail_after
        self.closed: bool | None = None

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        for i, chunk in enumerate(self.chunks):
            if self.fail_after is not None and i == self.fail_after:
                raise SendFailed("peer died mid-body")
            yield chunk

    async def aclose(self, *, reusable: bool) -> None:
        self.closed = reusable


class ScriptedTransport:
    """Answers each attempt from a script: an exception to raise or a Response to return."""

    def __init__(self, *script: Any) -> None:
        self.script = list(script)
        self.requests: list[UpstreamRequest] = []
        self.bodies: list[bytes] = []

    async def send(self, request: UpstreamRequest) -> Any:
        self.requests.append(request)
        outcome = self.script.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        if request.body is not None:
            self.bodies.append(b"".join([c async for c in request.body]))
        return outcome

    async def aclose(self) -> None:
        pass


SEEN: list[dict[str, Any]] = []


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        scope["seen"] = scope["type"]
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    SEEN.append(scope)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"x-app", b"local")]})
    await send({"type": "http.response.body", "body": b"local:" + body})


def middleware(transport: Any = None, self_url: str = URLS[0], **options: Any) -> AffinityMiddleware:
    options = {"peers": URLS, "self_url": self_url, "secret": SECRET, "key": "header:X-Tenant", **options}
    return AffinityMiddleware(app, transport=transport or ScriptedTransport(), **options)


def call(
    mw: AffinityMiddleware,
    tenant: str | None,
    method: str = "GET",
    body: bytes = b"",
    headers: list[tuple[bytes, bytes]] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    hdrs = list(headers or [])
    if tenant is not None:
        hdrs.append((b"x-tenant", tenant.encode()))
    if body:
        hdrs.append((b"content-length", str(len(body)).encode()))
    scope: dict[str, Any] = {
        "type": "http",
        "method": method,
        "path": "/p",
        "raw_path": b"/p",
        "query_string": b"q=1",
        "headers": hdrs,
        "client": ("10.9.9.9", 1234),
        "scheme": "http",
        "server": ("127.0.0.1", 1),
    }
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(mw(scope, receive, send))
    return scope, sent


def test_lifespan_scopes_pass_straight_through() -> None:
    scope: dict[str, Any] = {"type": "lifespan"}

    async def receive() -> dict[str, Any]:
        return {"type": "lifespan.shutdown"}

    async def send(message: dict[str, Any]) -> None:
        pass

    asyncio.run(middleware()(scope, receive, send))
    assert scope["seen"] == "lifespan"


def test_websocket_scopes_go_through_admission() -> None:
    """A websocket handshake is routed like a GET (docs/websockets.md): served here with the decision exposed when
    this node owns its key, refused with the admission's answer (here: no key under AFFINITY_NO_KEY=reject)."""

    def handshake(mw: AffinityMiddleware, headers: list[tuple[bytes, bytes]]) -> tuple[dict[str, Any], list[Any]]:
        scope: dict[str, Any] = {
            "type": "websocket", "path": "/ws", "raw_path": b"/ws", "query_string": b"", "headers": headers,
            "client": ("10.9.9.9", 1234), "scheme": "ws", "subprotocols": [],
            "extensions": {"websocket.http.response": {}},
        }  # fmt: skip
        sent: list[Any] = []

        async def receive() -> dict[str, Any]:
            return {"type": "websocket.connect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        asyncio.run(mw(scope, receive, send))
        return scope, sent

    tenant = owned_by(URLS[0])
    scope, _ = handshake(middleware(), [(b"x-tenant", tenant.encode())])
    assert scope["seen"] == "websocket"
    decision = scope["state"]["affinity"]
    assert (decision.action, decision.reason, decision.key) == ("local", "owner", tenant)
    _, sent = handshake(middleware(no_key="reject"), [])
    assert sent[0]["type"] == "websocket.http.response.start" and sent[0]["status"] == 400


def test_local_owner_serves_and_exposes_decision_and_debug_headers() -> None:
    tenant = owned_by(URLS[0])
    scope, sent = call(middleware(debug_headers=True), tenant)
    assert sent[1]["body"] == b"local:"
    decision = scope["state"]["affinity"]
    assert (decision.action, decision.reason, decision.key) == ("local", "owner", tenant)
    headers = dict(sent[0]["headers"])
    assert headers[b"x-affinity-served-by"] == URLS[0].encode() and headers[b"x-affinity-owner"] == URLS[0].encode()


def test_internal_headers_from_clients_never_reach_the_app() -> None:
    tenant = owned_by(URLS[0])
    _scope, _ = call(middleware(), tenant, headers=[(b"x-affinity-hop", b"forged"), (b"x_affinity_owner", b"x")])
    assert [n for n, _ in SEEN[-1]["headers"]] == [b"x-tenant"]


def test_forward_targets_owner_with_marker_and_streams_back() -> None:
    tenant = owned_by(URLS[1])
    transport = ScriptedTransport(Response(201, [(b"set-cookie", b"a=1"), (b"set-cookie", b"b=2")], [b"x", b"y"]))
    _, sent = call(middleware(transport), tenant, "POST", b"payload")
    request = transport.requests[0]
    assert request.url_base == URLS[1] and request.target == "/p?q=1" and request.content_length == 7
    assert transport.bodies == [b"payload"]
    assert any(n == b"x-affinity-hop" for n, _ in request.headers)
    assert sent[0]["status"] == 201 and sent[0]["headers"] == [
        (b"set-cookie", b"a=1"),
        (b"set-cookie", b"b=2"),
    ]
    assert b"".join(m.get("body", b"") for m in sent[1:]) == b"xy"
    assert sent[-1]["more_body"] is False


def test_connect_failure_moves_to_next_successor_then_self() -> None:
    tenant = tenant_where(lambda order: order[0] == URLS[1] and order[1] == URLS[2])
    transport = ScriptedTransport(ConnectFailed("refused"), Response())
    _scope, sent = call(middleware(transport), tenant, "POST", b"body")
    assert [r.url_base for r in transport.requests] == [URLS[1], URLS[2]]
    assert transport.bodies == [b"body"]
    tenant = tenant_where(lambda order: order[0] == URLS[1] and order[1] == URLS[0])
    transport = ScriptedTransport(ConnectFailed("refused"))
    _, sent = call(middleware(transport), tenant, "POST", b"body")
    assert sent[1]["body"] == b"local:body"
    assert SEEN[-1]["state"]["affinity"].reason == "failover"


def test_all_unreachable_fallback_policy() -> None:
    tenant = tenant_where(lambda order: order[0] == URLS[1] and order[1] == URLS[2] and order[2] == URLS[0])
    transport = ScriptedTransport(ConnectFailed("a"), ConnectFailed("b"))
    _, sent = call(middleware(transport, self_url=URLS[0], max_attempts=2), tenant)
    assert sent[1]["body"] == b"local:"
    # A node that is not a member and may not serve locally answers 502.
    mw = AffinityMiddleware(
        app,
        transport=ScriptedTransport(*[ConnectFailed("x")] * 3),
        peers=URLS,
        secret=SECRET,
        key="header:X-Tenant",
        fallback="error",
    )
    _, sent = call(mw, tenant)
    assert sent[0]["status"] == 502


def test_post_is_never_sent_twice_but_get_retries_once() -> None:
    tenant = tenant_where(lambda order: order[0] == URLS[1] and order[1] == URLS[2])
    transport = ScriptedTransport(SendFailed("reset"), Response())
    _, sent = call(middleware(transport), tenant, "POST", b"once")
    assert len(transport.requests) == 1 and sent[0]["status"] == 502
    transport = ScriptedTransport(SendFailed("reset"), Response())
    _, sent = call(middleware(transport), tenant, "GET")
    assert len(transport.requests) == 2 and sent[0]["status"] == 200
    transport = ScriptedTransport(SendFailed("reset"), SendFailed("reset again"), Response())
    _, sent = call(middleware(transport), tenant, "GET")
    assert len(transport.requests) == 2 and sent[0]["status"] == 502


def test_timeout_is_504() -> None:
    tenant = owned_by(URLS[1])
    _, sent = call(middleware(ScriptedTransport(UpstreamTimeout("slow"))), tenant)
    assert sent[0]["status"] == 504


def test_peer_dying_mid_body_aborts_instead_of_ending_cleanly() -> None:
    tenant = owned_by(URLS[1])
    response = Response(200, [], [b"a", b"b", b"c"], fail_after=1)
    with pytest.raises(SendFailed):
        call(middleware(ScriptedTransport(response)), tenant)
    assert response.closed is False


def test_short_body_against_content_length_aborts() -> None:
    tenant = owned_by(URLS[1])
    response = Response(200, [(b"content-length", b"10")], [b"abc"])
    with pytest.raises(Exception, match="Content-Length"):
        call(middleware(ScriptedTransport(response)), tenant)
    assert response.closed is False


def test_reject_policy() -> None:
    _, sent = call(middleware(no_key="reject"), None)
    assert sent[0]["status"] == 400


def call_target(mw: AffinityMiddleware, tenant: str, raw_path: bytes, method: str = "GET") -> list[dict[str, Any]]:
    scope: dict[str, Any] = {
        "type": "http", "method": method, "path": raw_path.decode(), "raw_path": raw_path, "query_string": b"",
        "headers": [(b"x-tenant", tenant.encode())], "client": ("10.9.9.9", 1), "scheme": "http",
    }  # fmt: skip
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(mw(scope, receive, send))
    return sent


@pytest.mark.parametrize("target", [b"@127.0.0.50:9999/x", b"http://evil.example/x", b"evil:80/x", b"*"])
def test_only_origin_form_targets_are_forwarded(target: bytes) -> None:
    tenant = owned_by(URLS[1])
    transport = ScriptedTransport(Response())
    sent = call_target(middleware(transport), tenant, target)
    assert transport.requests == [], "nothing may be sent when the client picks the host"
    assert sent[0]["status"] == 400


def test_options_star_is_answered_locally() -> None:
    tenant = owned_by(URLS[1])
    transport = ScriptedTransport(Response())
    sent = call_target(middleware(transport), tenant, b"*", method="OPTIONS")
    assert transport.requests == [] and sent[1]["body"] == b"local:"


def test_client_abort_is_not_a_peer_failure() -> None:
    from affinity_mw.forward import ClientGone

    tenant = owned_by(URLS[1])
    mw = middleware(ScriptedTransport(*[ClientGone("left")] * 10), eject_after=1)
    for _ in range(3):
        _, sent = call(mw, tenant, "POST", b"abc")
        assert sent == [], "nobody is there to answer"
    assert mw.core.health.usable(URLS[1]), "a client leaving says nothing about the peer"


def test_unrelayable_response_is_final_and_not_retried() -> None:
    from affinity_mw.forward import BadResponse

    tenant = tenant_where(lambda order: order[0] == URLS[1] and order[1] == URLS[2])
    transport = ScriptedTransport(BadResponse("header too large"), Response())
    _, sent = call(middleware(transport), tenant)
    assert sent[0]["status"] == 502 and len(transport.requests) == 1


def test_app_500_does_not_eject_but_gateway_errors_do() -> None:
    tenant = owned_by(URLS[1])
    mw = middleware(ScriptedTransport(*[Response(500)] * 3), eject_after=2)
    for _ in range(3):
        call(mw, tenant)
    assert mw.core.health.usable(URLS[1])
    mw = middleware(ScriptedTransport(*[Response(503)] * 2), eject_after=2)
    for _ in range(2):
        call(mw, tenant)
    assert not mw.core.health.usable(URLS[1])


def test_pool_exhaustion_is_a_fast_503_with_retry_after() -> None:
    tenant = owned_by(URLS[1])

    class Slow(ScriptedTransport):
        async def send(self, request: UpstreamRequest) -> Any:
            self.requests.append(request)
            await asyncio.sleep(0.5)
            return Response()

    mw = middleware(Slow(), pool_size=1, pool_timeout=0.05)

    async def two_at_once() -> list[list[dict[str, Any]]]:
        results: list[list[dict[str, Any]]] = [[], []]

        async def one(i: int) -> None:
            scope: dict[str, Any] = {
                "type": "http", "method": "GET", "path": "/p", "raw_path": b"/p", "query_string": b"",
                "headers": [(b"x-tenant", tenant.encode())], "client": ("10.9.9.9", 1), "scheme": "http",
            }  # fmt: skip

            async def receive() -> dict[str, Any]:
                await asyncio.sleep(3600)
                return {}

            async def send(message: dict[str, Any]) -> None:
                results[i].append(message)

            await mw(scope, receive, send)

        await asyncio.gather(one(0), one(1))
        return results

    first, second = asyncio.run(two_at_once())
    statuses = sorted([first[0]["status"], second[0]["status"]])
    assert statuses == [200, 503]
    busy = first if first[0]["status"] == 503 else second
    assert (b"retry-after", b"1") in busy[0]["headers"]


def test_deadline_spent_is_504() -> None:
    tenant = tenant_where(lambda order: order[0] == URLS[1] and order[1] == URLS[2])

    class SlowRefusal(ScriptedTransport):
        async def send(self, request: UpstreamRequest) -> Any:
            self.requests.append(request)
            await asyncio.sleep(0.15)
            raise ConnectFailed("refused, slowly")

    transport = SlowRefusal()
    _, sent = call(middleware(transport, deadline=0.1, fallback="error", self_url=None), tenant)
    assert sent[0]["status"] == 504 and len(transport.requests) == 1


def test_retry_budget_caps_retries_under_load() -> None:
    tenant = tenant_where(lambda order: order[0] == URLS[1] and order[1] == URLS[2])
    mw = middleware(ScriptedTransport(SendFailed("reset"), Response()))
    mw.core.budget.inflight[:] = [10, 3]  # 10 forwards in flight, 3 of them retries: max(3, 20%) reached
    _, sent = call(mw, tenant)
    assert sent[0]["status"] == 502


# ------------------------------------------------------------------------------------- limits (431, 413)---------


def call_chunked(
    mw: AffinityMiddleware, tenant: str, parts: list[bytes], headers: list[tuple[bytes, bytes]] | None = None
) -> list[dict[str, Any]]:
    """A POST whose body arrives in ``parts`` with no declared length (chunked)."""
    scope: dict[str, Any] = {
        "type": "http",
        "method": "POST",
        "path": "/p",
        "raw_path": b"/p",
        "query_string": b"",
        "headers": [(b"x-tenant", tenant.encode()), (b"transfer-encoding", b"chunked"), *(headers or [])],
        "client": ("10.9.9.9", 1234),
        "scheme": "http",
        "server": ("127.0.0.1", 1),
    }
    messages = [{"type": "http.request", "body": p, "more_body": i < len(parts) - 1} for i, p in enumerate(parts)]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(mw(scope, receive, send))
    return sent


@pytest.mark.parametrize("owner", [URLS[0], URLS[1]], ids=["local", "forwarded"])
def test_oversized_header_block_is_431_before_routing(owner: str) -> None:
    tenant = owned_by(owner)
    transport = ScriptedTransport()
    mw = middleware(transport, max_header_bytes=200)
    seen = len(SEEN)
    _, sent = call(mw, tenant, headers=[(b"x-big", b"v" * 190)])
    assert sent[0]["status"] == 431 and b"AFFINITY_MAX_HEADER_BYTES" in sent[1]["body"]
    assert transport.requests == [] and len(SEEN) == seen, "neither forwarded nor served"
    # Just under the limit goes on as usual (x-tenant + x-big = 8 + len(tenant) + 5 + 180).
    transport.script.append(Response())
    _, sent = call(mw, tenant, headers=[(b"x-big", b"v" * (200 - 13 - len(tenant)))])
    assert sent[0].get("status", 200) == 200


def test_hop_header_size_is_measured_as_the_first_node_saw_it() -> None:
    """The forwarder's marker and X-Forwarded-* do not count on the owner, so a request just under the limit at the
    first node is not 431 at the owner."""
    from affinity_mw import HopSigner

    tenant = owned_by(URLS[1])
    marker = HopSigner(SECRET).sign(sender=URLS[0], key_hash=hash_key(tenant), ring_checksum=RING.checksum, added="fp")
    budget = 8 + len(tenant) + 5 + 100
    mw = middleware(self_url=URLS[1], max_header_bytes=budget)
    _, sent = call(
        mw,
        tenant,
        headers=[
            (b"x-big", b"v" * 100),
            (b"x-affinity-hop", marker),
            (b"x-forwarded-for", b"10.9.9.9"),
            (b"x-forwarded-proto", b"http"),
        ],
    )
    assert sent[1]["body"] == b"local:"


@pytest.mark.parametrize("owner", [URLS[0], URLS[1]], ids=["local", "forwarded"])
def test_declared_length_over_max_body_is_413_before_app_or_forward(owner: str) -> None:
    tenant = owned_by(owner)
    transport = ScriptedTransport(Response(), Response())
    mw = middleware(transport, max_body=10)
    seen = len(SEEN)
    _, sent = call(mw, tenant, "POST", b"x" * 11)
    assert sent[0]["status"] == 413 and b"AFFINITY_MAX_BODY" in sent[1]["body"]
    assert transport.requests == [] and len(SEEN) == seen
    _, sent = call(mw, tenant, "POST", b"x" * 10)
    assert sent[0].get("status", 200) == 200


def test_no_body_limit_by_default() -> None:
    tenant = owned_by(URLS[0])
    _, sent = call(middleware(), tenant, "POST", b"x" * 100_000)
    assert sent[1]["body"] == b"local:" + b"x" * 100_000


def test_chunked_forward_over_max_body_stops_and_answers_413() -> None:
    tenant = owned_by(URLS[1])
    transport = ScriptedTransport(Response())
    mw = middleware(transport, max_body=10, eject_after=1)
    sent = call_chunked(mw, tenant, [b"12345", b"67890", b"1", b"never read"])
    assert sent[0]["status"] == 413
    assert len(transport.requests) == 1 and transport.bodies == [], "the forward was stopped mid-body"
    assert mw.core.health.usable(URLS[1]), "a client over the limit says nothing about the peer"
    # Exactly at the limit is fine.
    transport = ScriptedTransport(Response())
    sent = call_chunked(middleware(transport, max_body=10), tenant, [b"12345", b"67890"])
    assert transport.bodies == [b"1234567890"] and sent[0]["status"] == 200


def test_chunked_local_over_max_body_answers_413_and_app_sees_disconnect() -> None:
    tenant = owned_by(URLS[0])
    seen: list[dict[str, Any]] = []

    async def reader(scope: dict[str, Any], receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            seen.append(message)
            if message["type"] == "http.disconnect":
                raise RuntimeError("client went away")  # as Starlette's ClientDisconnect would
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    mw = AffinityMiddleware(reader, peers=URLS, self_url=URLS[0], secret=SECRET, key="header:X-Tenant", max_body=10)
    sent = call_chunked(mw, tenant, [b"12345", b"67890", b"1", b"unread"])
    assert [m.get("status") for m in sent if m["type"] == "http.response.start"] == [413]
    assert seen[-1]["type"] == "http.disconnect", "the app never sees a truncated body as complete"
    assert sum(len(m.get("body", b"")) for m in seen) == 10
    # Within the limit the app gets every byte.
    seen.clear()
    sent = call_chunked(mw, tenant, [b"12345", b"67890"])
    assert sent[0]["status"] == 200 and b"".join(m.get("body", b"") for m in seen) == b"1234567890"


def test_chunked_local_over_max_body_after_the_response_started_aborts() -> None:
    from affinity_mw.forward import BodyTooLarge

    tenant = owned_by(URLS[0])

    async def streaming(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        while (await receive()).get("more_body"):
            await send({"type": "http.response.body", "body": b".", "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    mw = AffinityMiddleware(streaming, peers=URLS, self_url=URLS[0], secret=SECRET, key="header:X-Tenant", max_body=10)
    with pytest.raises(BodyTooLarge):
        call_chunked(mw, tenant, [b"12345", b"67890", b"1", b"x"])


def test_limit_settings_are_validated() -> None:
    from affinity_mw import ConfigurationError

    with pytest.raises(ConfigurationError, match="AFFINITY_MAX_BODY"):
        middleware(max_body=-1)
    with pytest.raises(ConfigurationError, match="AFFINITY_MAX_HEADER_BYTES"):
        middleware(max_header_bytes=0)


def test_on_a_hop_the_key_is_read_from_the_request_as_the_first_node_saw_it() -> None:
    """Keyed by X-Forwarded-For, the owner must route by the value the first node saw, not the one the forwarder
    appended to: otherwise both nodes extract different keys (counted as a marker for another key)."""
    from affinity_mw import HopSigner

    marker = HopSigner(SECRET).sign(sender=URLS[0], key_hash=hash_key("1.1.1.1"), ring_checksum=RING.checksum,
                                    added="f")  # fmt: skip
    mw = middleware(self_url=URLS[1], key="header:X-Forwarded-For")
    _, sent = call(mw, None, headers=[(b"x-forwarded-for", b"1.1.1.1, 10.9.9.9"), (b"x-affinity-hop", marker)])
    assert sent[0]["status"] == 200
    decision = SEEN[-1]["state"]["affinity"]
    assert decision.key == "1.1.1.1" and decision.reason == "hop"
    assert mw.core.counters["marker_key_mismatch"] == 0

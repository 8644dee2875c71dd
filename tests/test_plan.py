"""Unit tests of :class:`ForwardPlan` alone: no middleware, no server, only the collaborators it is given."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from affinity_mw._plan import ABORT, SERVE_LOCAL, Answer, Forwarding, ForwardPlan, RetryBudget, Start, refuse_target
from affinity_mw.forward import (
    DRAINING_HEADER,
    BodyLimit,
    BodyTooLarge,
    ClientGone,
    ConnectFailed,
    SendFailed,
    UpstreamTimeout,
)
from affinity_mw.health import PeerHealth
from affinity_mw.hop import HOP_HEADER, HopSigner
from affinity_mw.membership import StaticMembership
from affinity_mw.router import Decision, Router

URLS = ["http://127.0.0.1:1", "http://127.0.0.2:1", "http://127.0.0.3:1"]
SIGNER = HopSigner("plan-test-secret-0123456789")
MEMBERSHIP = StaticMembership(URLS, URLS[0])


class Body:
    def __init__(self, started: bool = False, over: bool = False, gone: bool = False) -> None:
        self.started, self.over, self.gone = started, over, gone


class Request:
    def __init__(self, headers: list[tuple[bytes, bytes]], unframed: bool = False) -> None:
        self.headers, self.unframed = headers, unframed


def forward_decision() -> Decision:
    router = Router(membership=MEMBERSHIP, extractor=None, signer=SIGNER, max_attempts=2)
    tenant = next(t for t in (f"t{i}" for i in range(500)) if MEMBERSHIP.ring.owner_of(t).id != URLS[0])  # type: ignore[union-attr]
    decision = router.route(tenant)
    assert decision.action == "forward" and len(decision.candidates) == 2
    return decision


def forwarding(serve_here: bool = False, **kw: Any) -> tuple[Forwarding, list[tuple[str, float]]]:
    observed: list[tuple[str, float]] = []
    options: dict[str, Any] = {
        "membership": MEMBERSHIP,
        "signer": SIGNER,
        "health": PeerHealth(eject_after=1),
        "budget": RetryBudget(),
        "observe": lambda peer, seconds: observed.append((peer, seconds)),
        "counters": Counter(),
        "after_failover": lambda decision: serve_here,
        "read_timeout": 7.0,
        "deadline": 30.0,
        **kw,
    }
    return Forwarding(**options), observed


def plan(fwd: Forwarding, decision: Decision | None = None) -> ForwardPlan:
    return ForwardPlan(fwd, decision or forward_decision(), [(b"x-tenant", b"t")], ("10.0.0.9", 5000), "https")


def test_each_attempt_carries_a_fresh_marker_for_its_candidate() -> None:
    fwd, _ = forwarding()
    decision = forward_decision()
    with plan(fwd, decision) as p:
        attempts = list(p.attempts("GET", "/x", 0, None))
    assert [node for node, _ in attempts] == list(decision.candidates)
    markers = [dict(request.headers)[HOP_HEADER] for _, request in attempts]
    verified = [SIGNER.verify(m) for m in markers]
    assert [m.attempt for m in verified if m] == [1, 2]
    assert all(m and m.client_host == "10.0.0.9" and m.scheme == "https" for m in verified)
    assert all(request.read_timeout is not None and request.read_timeout <= 7.0 for _, request in attempts)
    assert fwd.budget.inflight == [0, 0], "leaving the plan gives its place in the budget back"


def test_nothing_sent_goes_to_the_next_candidate_for_any_method() -> None:
    fwd, _ = forwarding()
    p = plan(fwd)
    node = p.decision.candidates[0]
    assert p.settle(node, ConnectFailed("refused"), "POST", Body()) is None
    assert not fwd.health.usable(node.id), "a refused peer counts toward setting it aside"
    assert p.settle(node, ConnectFailed("refused"), "POST", Body(started=True)) == Answer(
        502, b"The key's owner failed while receiving the request body.\n"
    )


def test_broken_after_sending_retries_an_idempotent_request_once_and_never_a_post() -> None:
    fwd, _ = forwarding()
    with plan(fwd) as p:
        node = p.decision.candidates[0]
        assert p.settle(node, SendFailed("reset"), "GET", None) is None
        assert 0 <= p.backoff <= 0.025 and fwd.counters["retries"] == 1
        assert fwd.budget.inflight == [1, 1]
        second = p.settle(node, SendFailed("reset"), "GET", None)
        assert isinstance(second, Answer) and second.status == 502
    assert fwd.budget.inflight == [0, 0]
    post = plan(fwd).settle(node, SendFailed("reset"), "POST", Body())
    assert isinstance(post, Answer) and post.status == 502


def test_the_retry_budget_caps_retries() -> None:
    fwd, _ = forwarding()
    fwd.budget.inflight[:] = [10, 3]  # 10 forwards in flight, 3 of them retries: max(3, 20%) reached
    with plan(fwd) as p:
        verdict = p.settle(p.decision.candidates[0], SendFailed("reset"), "GET", None)
    assert isinstance(verdict, Answer) and verdict.status == 502


def test_timeout_is_504() -> None:
    fwd, _ = forwarding()
    p = plan(fwd)
    assert p.settle(p.decision.candidates[0], UpstreamTimeout("slow"), "GET", None) == Answer(
        504, b"The key's owner did not answer in time.\n"
    )


@pytest.mark.parametrize(
    ("exc", "body", "want"),
    [
        (ClientGone("left"), Body(started=True), ABORT),
        (SendFailed("wrapped"), Body(started=True, gone=True), ABORT),
        (BodyTooLarge("big"), Body(started=True, over=True), Answer(413, b"")),
    ],
    ids=["client-gone", "client-gone-under-a-transport-error", "body-over-max-body"],
)
def test_the_clients_failures_are_not_the_peers(exc: Exception, body: Body, want: Any) -> None:
    fwd, _ = forwarding()
    p = plan(fwd)
    node = p.decision.candidates[0]
    outcome = p.settle(node, exc, "POST", body)
    if isinstance(want, Answer):
        assert isinstance(outcome, Answer) and outcome.status == want.status
    else:
        assert outcome is want
    assert fwd.health.usable(node.id) and fwd.counters["forward_errors"] == 0


def test_answered_records_health_latency_and_strips_the_draining_signal() -> None:
    fwd, observed = forwarding()
    p = plan(fwd)
    list(p.attempts("GET", "/", 0, None))
    node = p.decision.candidates[1]
    headers = p.answered(node, 200, [(b"a", b"1"), (DRAINING_HEADER, b"1")])
    assert headers == [(b"a", b"1")] and not fwd.health.usable(node.id)
    assert [peer for peer, _ in observed] == [node.id] and p.decision.served_by == node.id


def test_after_every_candidate_failed_the_router_decides_whether_to_serve_here() -> None:
    assert plan(forwarding(serve_here=True)[0]).finish() is SERVE_LOCAL
    assert plan(forwarding(serve_here=False)[0]).finish() == Answer(502, b"No owner of this key could be reached.\n")


@pytest.mark.parametrize(
    ("method", "target", "headers", "want"),
    [
        ("GET", "/x?y", [], 0),
        ("POST", "/x", [(b"content-length", b"5")], 5),
        ("POST", "/x", [(b"transfer-encoding", b"chunked")], None),
        ("OPTIONS", "*", [], SERVE_LOCAL),
        ("GET", "http://evil.example/x", [], 400),
        ("GET", "@127.0.0.9/x", [], 400),
        ("POST", "/x", [(b"content-length", b"5"), (b"transfer-encoding", b"chunked")], 400),
    ],
)
def test_begin_forwards_only_origin_form_targets_with_unambiguous_framing(
    method: str, target: str, headers: list[tuple[bytes, bytes]], want: Any
) -> None:
    got = forwarding()[0].begin(Request(headers), method, target)  # type: ignore[arg-type]
    if isinstance(got, Answer):
        assert got.status == want
    else:
        assert got is want or got == want


def test_an_http2_body_without_a_length_streams() -> None:
    assert forwarding()[0].begin(Request([], unframed=True), "POST", "/x") is None  # type: ignore[arg-type]


def test_a_body_limit_only_for_bodies_of_unknown_length() -> None:
    fwd = forwarding(max_body=10)[0]
    assert fwd.body_limit(5) is None and isinstance(fwd.body_limit(None), BodyLimit)
    assert forwarding()[0].body_limit(None) is None


class StartRequest(Request):
    """A request view with a target and a body reader that records the length and limit it was opened with."""

    def __init__(self, method: str, target: str, headers: list[tuple[bytes, bytes]]) -> None:
        super().__init__(headers)
        self.method, self._target, self.opened = method, target, list[Any]()

    def target(self) -> str:
        return self._target

    def body(self, content_length: int | None, limit: Any) -> str:
        self.opened.append((content_length, limit))
        return "reader"


def test_start_refuses_before_reading_and_opens_a_body_only_when_there_is_one() -> None:
    fwd = forwarding(max_body=10)[0]
    bad = StartRequest("POST", "http://evil.example/x", [(b"content-length", b"5")])
    assert isinstance(fwd.start(bad), Answer) and bad.opened == []  # type: ignore[arg-type]
    bodiless_get = StartRequest("GET", "/x", [])
    assert fwd.start(bodiless_get) == Start("GET", "/x", 0, None) and bodiless_get.opened == []  # type: ignore[arg-type]
    chunked = StartRequest("POST", "/x", [(b"transfer-encoding", b"chunked")])
    assert fwd.start(chunked) == Start("POST", "/x", None, "reader")  # type: ignore[arg-type]
    assert chunked.opened[0][0] is None and isinstance(chunked.opened[0][1], BodyLimit)


def test_refuse_target_is_the_one_rule_for_http_and_websocket_targets() -> None:
    assert refuse_target("GET", "/chat?room=1") is None
    assert refuse_target("OPTIONS", "*") is SERVE_LOCAL
    for method, target in [("GET", "*"), ("GET", "http://evil.example/ws"), ("GET", "@127.0.0.9/ws")]:
        refused = refuse_target(method, target)
        assert isinstance(refused, Answer) and refused.status == 400


def test_debug_headers_are_added_once_to_a_relayed_response_or_websocket_accept() -> None:
    p = plan(forwarding(debug_headers=True)[0])
    p.decision.served_by = URLS[1]
    added = p.with_debug_headers([(b"set-cookie", b"a=1")])
    assert added[0] == (b"set-cookie", b"a=1") and (b"x-affinity-served-by", URLS[1].encode()) in added
    owners = [(b"x-affinity-served-by", URLS[2].encode()), (b"x-affinity-owner", URLS[2].encode())]
    assert p.with_debug_headers(owners) == owners  # the owner's own say which node served
    assert plan(forwarding()[0]).with_debug_headers([(b"set-cookie", b"a=1")]) == [(b"set-cookie", b"a=1")]

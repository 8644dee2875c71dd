"""Unit tests of passive ejection, draining and the middleware's own health/drain paths."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from affinity_mw import keys
from affinity_mw.core import AffinityCore
from affinity_mw.health import PeerHealth
from affinity_mw.introspect import AUTH_HEADER, sign_request
from affinity_mw.membership import StaticMembership
from affinity_mw.metrics import COUNTERS
from affinity_mw.request import RequestView
from affinity_mw.ring import hash_key
from affinity_mw.router import Router

URLS = ["http://127.0.0.1:1", "http://127.0.0.2:1", "http://127.0.0.3:1"]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_ejected_after_consecutive_failures_with_growing_time() -> None:
    clock = Clock()
    health = PeerHealth(eject_after=3, base=10, max_ejection=25, clock=clock)
    for _ in range(2):
        health.failure("a")
    health.success("a")  # a success resets the streak
    for _ in range(2):
        health.failure("a")
    assert health.usable("a")
    health.failure("a")
    assert not health.usable("a") and health.ejected() == {"a": "failures"}
    clock.now += 10.1
    assert health.usable("a") and health.ejected() == {}
    for _ in range(3):
        health.failure("a")
    clock.now += 10.1
    assert not health.usable("a"), "the second ejection lasts twice as long"
    clock.now += 10
    assert health.usable("a")
    for _ in range(3):
        health.failure("a")
    clock.now += 25.1
    assert health.usable("a"), "ejection time is capped"


def test_fast_path_returns_when_ejections_expire_and_streak_restarts() -> None:
    clock = Clock()
    health = PeerHealth(eject_after=2, base=10, clock=clock)
    health.failure("a")
    health.failure("a")
    assert health.any_ejected
    clock.now += 10.1
    assert health.usable("b") and not health.any_ejected, "no read of ejected() needed to leave the slow path"
    health.failure("a")
    assert health.usable("a"), "one failure after re-admission is a new streak, not an instant re-ejection"


def test_draining_is_set_aside_at_once_and_readmit_clears() -> None:
    clock = Clock()
    health = PeerHealth(base=30, clock=clock)
    health.draining("b")
    assert health.ejected() == {"b": "draining"}
    health.readmit("b")
    assert health.usable("b")


def test_draining_is_held_until_an_active_check_readmits_when_checks_are_on() -> None:
    # A stopping gunicorn worker keeps listening (without accepting) for up to 2 s after SIGTERM: a fixed hold
    # that runs out first sends requests into a backlog that is then reset.
    clock = Clock()
    fixed = PeerHealth(base=2, max_ejection=20, clock=clock)
    held = PeerHealth(base=2, max_ejection=20, hold_draining=True, clock=clock)
    fixed.draining("b")
    held.draining("b")
    clock.now += 2.1
    assert fixed.usable("b")
    assert not held.usable("b")
    held.readmit("b")
    assert held.usable("b")
    held.draining("b")
    clock.now += 20.1
    assert held.usable("b")  # never held longer than max_ejection


def test_core_holds_draining_peers_only_with_active_checks() -> None:
    common = {"peers": URLS, "self_url": URLS[0], "secret": "s" * 32, "key": "header:X-Tenant"}
    assert AffinityCore(**common).health.hold_draining, "active checks are on by default"
    assert not AffinityCore(**common, health_interval=0).health.hold_draining
    assert not AffinityCore(**common, health_path="").health.hold_draining, "no path to check"


def router_with(health: PeerHealth, self_url: str = URLS[0]) -> Router:
    return Router(
        membership=StaticMembership(URLS, self_url),
        extractor=keys.header("X-Tenant"),
        signer=None,
        health=health,
    )


def view(tenant: str) -> RequestView:
    return RequestView("GET", "/", b"", [(b"x-tenant", tenant.encode())], "127.0.0.9")


def test_set_aside_peer_keys_go_to_successors_only() -> None:
    ring = StaticMembership(URLS).ring
    health = PeerHealth(eject_after=1)
    r = router_with(health)
    tenants = [f"t{i}" for i in range(300)]
    before = {t: r.decide(view(t)) for t in tenants}
    health.failure(URLS[1])
    after = {t: r.decide(view(t)) for t in tenants}
    for t in tenants:
        order = [n.id for n in ring.successors(hash_key(t))]
        if order[0] != URLS[1]:
            # Keys the ejected node did not own stay where they were; it only left their failover order.
            assert after[t].action == before[t].action
            assert after[t].candidates[:1] == before[t].candidates[:1]
            assert URLS[1] not in [n.id for n in after[t].candidates]
            continue
        successor = order[1]
        if successor == URLS[0]:
            assert after[t].action == "local" and after[t].reason == "failover"
        else:
            assert after[t].candidates[0].id == successor
            assert URLS[1] not in [n.id for n in after[t].candidates]


def core(**options: object) -> AffinityCore:
    return AffinityCore(
        environ={}, peers=URLS, self_url=URLS[0], secret="health-test-secret-0123456789", key="header:X", **options
    )


def test_health_path_details_only_for_the_allowed_and_drain_only_when_signed() -> None:
    c = core()
    signed = {AUTH_HEADER: sign_request("health-test-secret-0123456789")}
    status, body, _ = c.internal_response("GET", "/_affinity/health", "10.0.0.1")  # type: ignore[misc]
    assert status == 200 and json.loads(body) == {"status": "ok"}, "the public sees the status, not the members"
    status, body, _ = c.internal_response("GET", "/_affinity/health", "10.0.0.1", "", signed.get)  # type: ignore[misc]
    data = json.loads(body)
    assert data["status"] == "ok" and data["node"] == URLS[0] and data["members"] == URLS
    assert data["ring_checksum"] == c.membership.ring.checksum
    # Loopback proves nothing (a sidecar or local proxy puts every client there): drain must be signed.
    assert c.internal_response("POST", "/_affinity/health/drain", "127.0.0.1")[0] == 403  # type: ignore[index]
    forged = {AUTH_HEADER: sign_request("not-the-cluster-secret-0123")}
    assert c.internal_response("POST", "/_affinity/health/drain", "::1", "", forged.get)[0] == 403  # type: ignore[index]
    assert c.internal_response("GET", "/_affinity/health/drain", "127.0.0.1")[0] == 405  # type: ignore[index]
    assert not c.draining
    assert c.internal_response("POST", "/_affinity/health/drain", "10.9.9.9", "", signed.get)[0] == 200  # type: ignore[index]
    assert c.draining
    status, body, _ = c.internal_response("GET", "/_affinity/health", "10.0.0.1")  # type: ignore[misc]
    assert status == 503 and json.loads(body)["status"] == "draining"
    assert c.internal_response("DELETE", "/_affinity/health/drain", None, "", signed.get)[0] == 200  # type: ignore[index]
    assert not c.draining
    assert c.internal_response("GET", "/_affinity/healthy", None) is None
    assert c.internal_response("GET", "/app", None) is None


def test_health_path_can_be_moved_or_disabled() -> None:
    assert core(health_path="/ops/h").internal_response("GET", "/ops/h", None)[0] == 200  # type: ignore[index]
    assert core(health_path="").health_path == ""


def test_the_health_json_in_the_docs_has_the_codes_fields() -> None:
    """docs/health.md shows the health path's JSON: every field and counter it names is one the code answers."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "health.md").read_text()
    blocks = [json.loads(b) for b in re.findall(r"```json\n(.*?)```", doc, re.S) if "ring_checksum" in b]
    assert blocks, "docs/health.md shows no health JSON"
    c = core()
    signed = {AUTH_HEADER: sign_request("health-test-secret-0123456789")}
    _, body, _ = c.internal_response("GET", "/_affinity/health", None, "", signed.get)  # type: ignore[misc]
    answered = json.loads(body)
    for shown in blocks:
        assert shown.keys() == answered.keys()
        assert shown["counters"].keys() <= COUNTERS.keys(), shown["counters"].keys() - COUNTERS.keys()


def test_active_checks_run_only_while_a_peer_is_set_aside_and_take_it_back() -> None:
    answers = {"b": False}
    asked: list[str] = []

    def check(node_id: str) -> bool:
        asked.append(node_id)
        return answers[node_id]

    health = PeerHealth(eject_after=1, base=30, hold_draining=True, check=check, interval=0.02)
    assert health._checker is None, "no thread while every peer is healthy"
    health.failure("b")
    assert not health.usable("b") and health._checker is not None
    checker = health._checker
    deadline = time.monotonic() + 5
    while len(asked) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not health.usable("b"), "a peer that does not answer 200 stays aside"
    answers["b"] = True
    checker.join(5)
    assert not checker.is_alive() and health._checker is None, "the thread leaves once nobody is set aside"
    assert health.usable("b") and health.ejected() == {}
    health.draining("b")  # a new set-aside starts a new thread
    assert health._checker is not None and health._checker is not checker
    second = health._checker
    second.join(5)
    assert health.usable("b") and not second.is_alive() and health._checker is None

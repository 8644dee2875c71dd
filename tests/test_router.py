from __future__ import annotations

import logging

import pytest

from affinity_mw import keys
from affinity_mw.hop import HopSigner
from affinity_mw.membership import StaticMembership
from affinity_mw.request import RequestView
from affinity_mw.ring import hash_key
from affinity_mw.router import Router

URLS = ["http://127.0.0.1:1", "http://127.0.0.2:1", "http://127.0.0.3:1"]
SIGNER = HopSigner("router-test-secret-0123456789")


def router(self_url: str | None = URLS[0], no_key: str = "local", **kw: object) -> Router:
    return Router(
        membership=StaticMembership(URLS, self_url),
        extractor=keys.header("X-Tenant"),
        signer=SIGNER,
        no_key=no_key,
        **kw,  # type: ignore[arg-type]
    )


def view(tenant: str | None = None) -> RequestView:
    headers = [(b"x-tenant", tenant.encode())] if tenant is not None else []
    return RequestView("GET", "/", b"", headers, "127.0.0.9")


def tenants_owned_by(url: str, n: int = 5) -> list[str]:
    ring = StaticMembership(URLS).ring
    return [t for t in (f"t{i}" for i in range(500)) if ring.owner_of(t).id == url][:n]  # type: ignore[union-attr]


def test_owner_is_local_others_forward_in_ring_order() -> None:
    r = router()
    for tenant in tenants_owned_by(URLS[0]):
        d = r.decide(view(tenant))
        assert (d.action, d.reason, d.owner.id) == ("local", "owner", URLS[0])  # type: ignore[union-attr]
    ring = StaticMembership(URLS).ring
    for tenant in tenants_owned_by(URLS[1]):
        d = r.decide(view(tenant))
        assert d.action == "forward" and d.candidates[0].id == URLS[1]
        order = [n.id for n in ring.successors(hash_key(tenant))]
        # Candidates stop before this node: reaching it means this node is the next owner.
        assert [n.id for n in d.candidates] == order[: order.index(URLS[0])]
        assert d.self_is_next == (URLS[0] in order[: len(d.candidates) + 1])


def test_no_key_policies() -> None:
    assert router().decide(view()).action == "local"
    assert router().decide(view()).reason == "no-key"
    assert router(no_key="reject").decide(view()).action == "reject"
    assert router().decide(view("")).reason == "no-key"
    assert router(max_key_length=8).decide(view("x" * 9)).reason == "no-key"


def test_failing_custom_extractor_is_no_key() -> None:
    def broken(request: RequestView) -> str | None:
        raise RuntimeError("bug in user code")

    r = Router(membership=StaticMembership(URLS, URLS[0]), extractor=broken, signer=SIGNER)
    assert r.decide(view("t")).reason == "no-key"


def test_authentic_marker_is_always_served_here_forged_ones_are_not() -> None:
    r = router()
    tenant = tenants_owned_by(URLS[1])[0]
    good = r.check_marker(SIGNER.sign(sender=URLS[2], key_hash=hash_key(tenant), ring_checksum="c"))
    d = r.decide(view(tenant), good)
    assert (d.action, d.reason, d.hops) == ("local", "hop", 1)
    assert r.counters["misroute"] == 1 and r.counters["ring_skew"] == 1
    # A genuine marker for another key (nodes disagreeing on key settings, or a replay) is still served here:
    # re-routing it is how two nodes could bounce a request forever. The mismatch is counted.
    other = r.check_marker(SIGNER.sign(sender=URLS[2], key_hash=hash_key("other"), ring_checksum="c"))
    assert r.decide(view(tenant), other).action == "local"
    assert r.counters["marker_key_mismatch"] == 1
    forged = HopSigner("another-secret-0123456789").sign(sender=URLS[2], key_hash=hash_key(tenant), ring_checksum="c")
    assert r.check_marker(forged) is None and r.check_marker(b"garbage") is None
    assert r.counters["invalid_marker"] == 2
    assert r.decide(view(tenant), None).action == "forward"


def test_non_member_forwards_everything_and_single_node_serves_all() -> None:
    r = Router(membership=StaticMembership(URLS), extractor=keys.header("X-Tenant"), signer=SIGNER)
    d = r.decide(view("t1"))
    assert d.action == "forward" and d.reason == "not-member" and len(d.candidates) == 3
    assert not d.self_is_next
    solo = Router(membership=StaticMembership(URLS[:1]), extractor=keys.header("X-Tenant"), signer=None)
    assert solo.decide(view("t1")).reason == "single-node"


def test_max_attempts_caps_candidates() -> None:
    r = Router(membership=StaticMembership(URLS), extractor=keys.header("X-Tenant"), signer=SIGNER, max_attempts=1)
    assert len(r.decide(view("t1")).candidates) == 1


def test_debug_log_names_the_key_by_hash_only(caplog: pytest.LogCaptureFixture) -> None:
    secret_tenant = "tenant-with-a-secret-name"
    with caplog.at_level(logging.DEBUG, logger="affinity_mw"):
        router().decide(view(secret_tenant))
    assert f"key={hash_key(secret_tenant):016x}" in caplog.text
    assert secret_tenant not in caplog.text

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
    # The router serves whatever marker admission hands it; whether a marker is for this request (method,
    # target, node, key) is admission's check (AffinityCore.admit; tests/test_cluster_hop.py).
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


# ------------------------------------------------------------------------------------------ the decision cache


class _Swappable:
    """A membership whose ring and self id a test can change, as DNS membership does on a refresh."""

    def __init__(self, urls: list[str], self_url: str) -> None:
        self.set(urls, self_url)

    def set(self, urls: list[str], self_url: str) -> None:
        m = StaticMembership(urls, self_url)
        self.ring, self.self_id = m.ring, m.self_id


def test_local_decisions_are_shared_and_counted_forwards_are_fresh() -> None:
    r = router()
    mine, theirs = tenants_owned_by(URLS[0], 1)[0], tenants_owned_by(URLS[1], 1)[0]
    first = r.decide(view(mine))
    assert r.decide(view(mine)) is first
    assert r.decide_by_header(mine.encode(), "GET", "/") is first
    assert r.decide_by_header(mine.encode(), "GET", "/") is first  # the by-value cache
    assert r.counters["local_owner"] == 4
    a, b = r.decide(view(theirs)), r.decide_by_header(theirs.encode(), "GET", "/")
    assert a is not b and a.action == b.action == "forward"  # the forwarder records attempts on each
    assert r.counters["forwarded"] == 2


def test_decision_cache_follows_a_ring_swap_and_a_new_self() -> None:
    membership = _Swappable(URLS, URLS[0])
    r = Router(membership=membership, extractor=keys.header("X-Tenant"), signer=SIGNER)
    mine = tenants_owned_by(URLS[0], 20)
    for tenant in mine:
        r.decide_by_header(tenant.encode(), "GET", "/")
        assert r.decide_by_header(tenant.encode(), "GET", "/").action == "local"
    # Node 0 leaves the ring it serves from: every one of its keys must now be forwarded to its successor.
    membership.set(URLS[1:], URLS[1])
    for tenant in mine:
        d = r.decide_by_header(tenant.encode(), "GET", "/")
        owner = membership.ring.owner_of(tenant)
        assert d.ring is membership.ring and d.owner is owner
        assert d.action == ("local" if owner.id == URLS[1] else "forward")  # type: ignore[union-attr]
    # Same ring object, other self id: the cached answers of the old self must not be reused.
    membership.self_id = URLS[2]
    for tenant in mine:
        d = r.decide_by_header(tenant.encode(), "GET", "/")
        assert d.action == ("local" if d.owner.id == URLS[2] else "forward")  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "raw",
    [None, b"", b"   ", b" t1 ", b"t1", b"\tt1", b"caf\xe9", b"x" * 1024, b"x" * 1025, "t1", " t1 ", "caf\xe9", ""],
)
def test_decide_by_header_is_decide_with_a_header_view(raw: bytes | str | None) -> None:
    """The adapters' fast path must decide exactly what the general path decides for the same header."""
    for self_url in URLS:
        fast, general = router(self_url), router(self_url)
        for _ in range(2):  # the second time from the caches
            as_bytes = raw.encode("latin-1") if isinstance(raw, str) else raw
            headers = [(b"x-tenant", as_bytes)] if as_bytes is not None else []
            want = general.decide(RequestView("GET", "/", b"", headers, "127.0.0.9"))
            got = fast.decide_by_header(raw, "GET", "/")
            assert (got.action, got.reason, got.key, got.key_hash, got.owner, got.candidates) == (
                want.action,
                want.reason,
                want.key,
                want.key_hash,
                want.owner,
                want.candidates,
            )
        assert fast.counters == general.counters


@pytest.mark.parametrize("raw", [None, b"", b" t1 ", b"t1", b"caf\xe9", b"x" * 1025, "t1", "caf\xe9"])
def test_hop_with_a_header_key_is_decide_with_a_marker(raw: bytes | str | None) -> None:
    """The owner's fast path for a hop decides what the general path decides, counters included, for a key
    that matches the marker's and one that does not."""
    for self_url in URLS:
        fast, general = router(self_url), router(self_url)
        for marked in ("t1", "other"):
            marker = SIGNER.verify(SIGNER.sign(sender=URLS[2], key_hash=hash_key(marked), ring_checksum="x"))
            assert marker is not None
            as_bytes = raw.encode("latin-1") if isinstance(raw, str) else raw
            headers = [(b"x-tenant", as_bytes)] if as_bytes is not None else []
            want = general.decide(RequestView("GET", "/", b"", headers, "127.0.0.9"), marker)
            got = fast.hop(fast.key_from_header(raw), marker, "GET", "/")
            assert (got.action, got.reason, got.key, got.key_hash, got.owner, got.skew, got.marker) == (
                want.action,
                want.reason,
                want.key,
                want.key_hash,
                want.owner,
                want.skew,
                want.marker,
            )
        assert fast.counters == general.counters


def test_decision_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from affinity_mw import router as router_module

    monkeypatch.setattr(router_module, "_LOCAL_CACHE_SIZE", 8)
    r = router()
    for tenant in tenants_owned_by(URLS[0], 40):
        r.decide_by_header(tenant.encode(), "GET", "/")
        assert len(r._cache.by_key) <= 8 and len(r._cache.by_value) <= 8


def test_value_cache_holds_only_values_that_are_exactly_the_key() -> None:
    """Whitespace around a key still routes it, but must not become a way to fill the cache with big values."""
    r = router()
    mine = tenants_owned_by(URLS[0], 1)[0]
    for pad in range(1, 50):
        assert r.decide_by_header(mine.encode() + b" " * pad, "GET", "/").action == "local"
        assert r.decide_by_header(" " * pad + mine, "GET", "/").action == "local"
    assert r._cache.by_value == {}
    r.decide_by_header(mine.encode(), "GET", "/")
    assert list(r._cache.by_value) == [mine.encode()]


def test_header_values_off_the_specs_are_no_key_or_decided_not_raised() -> None:
    r = router()
    mine = tenants_owned_by(URLS[0], 1)[0]
    # An environ value outside latin-1 (PEP 3333 forbids it): no key, as the general path decides.
    assert r.decide_by_header(mine + "\u0100", "GET", "/").reason == "no-key"
    # A bytearray from an ASGI server off the spec: decided like bytes, and not cached by value.
    for _ in range(2):
        assert r.decide_by_header(bytearray(mine.encode()), "GET", "/").action == "local"  # type: ignore[arg-type]


def test_forward_decisions_from_the_cache_are_fresh_and_give_way_to_ejection() -> None:
    r, uncached = router(), router()
    theirs = tenants_owned_by(URLS[1], 5)
    fields = ("action", "reason", "key", "key_hash", "owner", "candidates", "self_is_next")
    for tenant in theirs:
        first, second = r.decide(view(tenant)), r.decide(view(tenant))
        assert first is not second  # the forwarder records its attempts on each
        want = uncached.decide(view(tenant))
        assert [getattr(second, f) for f in fields] == [getattr(want, f) for f in fields]
    # The owner is set aside: the cached candidates must not be used; its keys go to their successors only.
    r.health.draining(URLS[1])
    ring = StaticMembership(URLS).ring
    for tenant in theirs:
        d = r.decide(view(tenant))
        order = [n.id for n in ring.successors(hash_key(tenant)) if n.id != URLS[1]]
        assert URLS[1] not in [n.id for n in d.candidates]
        assert d.action == ("local" if order[0] == URLS[0] else "forward")
    assert r.counters["forwarded"] + r.counters["failover"] == 3 * len(theirs)

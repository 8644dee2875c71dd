"""owns(), mint_key() and ownership changes, on real rings of every algorithm."""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path

import pytest

from affinity_mw.ownership import (
    KeyRanges,
    MintError,
    OwnershipChange,
    OwnershipHooks,
    mint_key,
    ownership_change,
    owns,
)
from affinity_mw.ring import RING_ALGORITHMS, NginxRing, Node, build_ring

IDS = [f"http://10.0.0.{i}:8000" for i in range(1, 6)]
KEYS = [f"key-{i}" for i in range(4000)]


def ring(algorithm: str, n: int, weights: dict[int, int] | None = None):  # type: ignore[no-untyped-def]
    return build_ring([Node(IDS[i], IDS[i], (weights or {}).get(i, 1)) for i in range(n)], algorithm)


@pytest.mark.parametrize("algorithm", RING_ALGORITHMS)
def test_owns_agrees_with_the_ring(algorithm: str) -> None:
    r = ring(algorithm, 3)
    for key in KEYS[:500]:
        owner = r.owner_of(key)
        assert owner is not None
        assert [owns(r, node_id, key) for node_id in IDS[:3]] == [node_id == owner.id for node_id in IDS[:3]]
        assert not owns(r, IDS[4], key)  # not a member: owns nothing
        assert not owns(r, None, key)


@pytest.mark.parametrize("algorithm", RING_ALGORITHMS)
def test_minted_keys_are_owned_by_the_minting_node(algorithm: str) -> None:
    r = ring(algorithm, 3, {2: 3})
    for node_id in IDS[:3]:
        minted = [mint_key(r, node_id, prefix="doc_") for _ in range(200)]
        assert len(set(minted)) == 200
        for key in minted:
            assert key.startswith("doc_") and len(key) == 4 + 22
            assert r.owner_of(key).id == node_id  # type: ignore[union-attr]


def test_minting_refuses_clearly_when_it_cannot_succeed() -> None:
    r = ring("ring", 3)
    with pytest.raises(MintError, match="not a member"):
        mint_key(r, IDS[4])
    with pytest.raises(MintError, match="not a member"):
        mint_key(r, None)
    with pytest.raises(MintError, match="not a member"):
        mint_key(ring("ring", 0), IDS[0])
    big = build_ring([Node(f"http://n{i}:80", f"http://n{i}:80") for i in range(200)], "ring")
    with pytest.raises(MintError, match="in 1 attempts"):
        # One attempt on a 200-node ring: this fails with probability 0.995; retry a few times for certainty.
        for _ in range(20):
            mint_key(big, "http://n0:80", max_attempts=1)
    with pytest.raises(ValueError, match="nbytes"):
        mint_key(r, IDS[0], nbytes=4)


def check_change(old, new, node_id: str, change: OwnershipChange) -> None:  # type: ignore[no-untyped-def]
    """Every key's verdict from the ranges equals the one from comparing owners key by key."""
    for key in KEYS:
        h = new.key_hash(key)
        had = old is not None and old.owner_of(key) is not None and old.owner_of(key).id == node_id
        has = new.owner_of(key) is not None and new.owner_of(key).id == node_id
        assert change.gained_key(key) == (has and not had)
        assert change.lost_key(key) == (had and not has)
        if change.gained is not None and change.lost is not None:
            assert (h in change.gained) == (has and not had), key
            assert (h in change.lost) == (had and not has), key


@pytest.mark.parametrize("algorithm", RING_ALGORITHMS)
def test_gained_and_lost_on_a_node_joining_and_leaving(algorithm: str) -> None:
    three, four = ring(algorithm, 3), ring(algorithm, 4)
    for old, new in [(three, four), (four, three)]:
        lost_total = 0.0
        for node_id in IDS[:4]:
            change = ownership_change(old, new, node_id)
            check_change(old, new, node_id, change)
            if change.lost is not None:
                lost_total += change.lost.fraction
        if algorithm != "rendezvous":  # exact ranges: what the nodes lost is exactly what moved
            assert lost_total == pytest.approx(old.moved_fraction(new), abs=1e-9)
    joined = ownership_change(three, four, IDS[3])
    if joined.gained is not None:
        assert joined.gained.fraction == pytest.approx(four.shares()[IDS[3]], abs=1e-9)
        assert joined.lost is not None and joined.lost.spans == ()
    stayed = ownership_change(three, four, IDS[0])
    if algorithm != "maglev":  # a joining node only takes keys (Maglev's table also shuffles a few between others)
        assert stayed.gained_keys(KEYS) == []
    assert stayed.lost_keys(KEYS) == [k for k in KEYS if three.owner_of(k).id == IDS[0] != four.owner_of(k).id]  # type: ignore[union-attr]


@pytest.mark.parametrize("algorithm", ["ring", "maglev"])
def test_first_ring_and_a_node_that_finds_itself(algorithm: str) -> None:
    r = ring(algorithm, 3)
    first = ownership_change(None, r, IDS[1])
    assert first.gained is not None and first.lost is not None
    assert first.gained.fraction == pytest.approx(r.shares()[IDS[1]], abs=1e-9)
    assert first.lost.spans == ()
    check_change(None, r, IDS[1], first)
    found = ownership_change(r, r, IDS[1], old_self_id=None)  # DNS self-discovery: same ring, now a member
    assert found.gained is not None and found.gained.fraction == pytest.approx(r.shares()[IDS[1]], abs=1e-9)
    left = ownership_change(r, r, None, old_self_id=IDS[1])
    assert left.lost is not None and left.lost.fraction == pytest.approx(r.shares()[IDS[1]], abs=1e-9)
    assert left.lost_keys(KEYS) == [k for k in KEYS if r.owner_of(k).id == IDS[1]]  # type: ignore[union-attr]


def test_nginx_rings_hash_keys_their_own_way() -> None:
    three = NginxRing([Node(IDS[i], IDS[i]) for i in range(3)])
    four = NginxRing([Node(IDS[i], IDS[i]) for i in range(4)])
    for node_id in IDS[:4]:
        change = ownership_change(three, four, node_id)
        assert change.gained is not None and change.gained.modulus == 1 << 32
        check_change(three, four, node_id, change)
    for _ in range(50):
        assert four.owner_of(mint_key(four, IDS[3])).id == IDS[3]  # type: ignore[union-attr]


def test_rendezvous_and_mixed_algorithms_have_no_ranges_but_exact_key_tests() -> None:
    old, new = ring("rendezvous", 3), ring("ring", 4)
    change = ownership_change(old, new, IDS[0])
    assert change.gained is None and change.lost is None
    check_change(old, new, IDS[0], change)


def test_key_ranges_are_half_open() -> None:
    ranges = KeyRanges(100, ((5, 10), (20, 21)))
    assert [h in ranges for h in (4, 5, 9, 10, 19, 20, 21, 105, 120)] == [
        False, True, True, False, False, True, False, True, True,
    ]  # fmt: skip
    assert "5" not in ranges  # a key must be hashed the ring's way first (ring.key_hash)
    assert ranges.fraction == pytest.approx(0.06)


def test_hooks_deliver_sync_and_async_callbacks_and_keep_recent_changes(caplog: pytest.LogCaptureFixture) -> None:
    three, four = ring("ring", 3), ring("ring", 4)
    hooks = OwnershipHooks(keep=2)
    seen: list[tuple[str, OwnershipChange]] = []

    @hooks.add
    def plain(change: OwnershipChange) -> None:
        seen.append(("plain", change))

    @hooks.add
    def broken(change: OwnershipChange) -> None:
        raise RuntimeError("callback bug")

    @hooks.add
    async def coroutine(change: OwnershipChange) -> None:
        await asyncio.sleep(0)
        seen.append(("async", change))

    with caplog.at_level(logging.ERROR, logger="affinity_mw"):
        change = hooks.ring_swapped(three, four, IDS[0])  # no loop bound: the coroutine runs in one of its own
    assert change is not None
    assert [name for name, _ in seen] == ["plain", "async"]  # the broken one in between did not stop the rest
    assert "callback bug" in caplog.text

    assert hooks.ring_swapped(four, four, IDS[0]) is None  # nothing moved: nothing delivered or recorded
    assert len(seen) == 2

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        hooks.bind_loop(loop)
        hooks.ring_swapped(four, three, IDS[0])
        asyncio.run_coroutine_threadsafe(asyncio.sleep(0.05), loop).result(5)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
    assert [name for name, _ in seen] == ["plain", "async", "plain", "async"]
    assert seen[-1][1].gained is not None and seen[-1][1].gained.fraction > 0  # took back what the 4th node had
    assert [entry["new_ring"] for entry in hooks.as_list()] == [four.checksum, three.checksum]
    with pytest.raises(TypeError):
        hooks.add("not callable")  # type: ignore[arg-type]


def test_dns_membership_reports_each_swap_to_its_subscribers(tmp_path: Path) -> None:
    """A real DNS server on loopback: a member leaving swaps the ring, and the hooks hear what this node gained."""
    from affinity_mw.devdns import DnsServer
    from affinity_mw.dns import DnsMembership

    def a_zone(*ips: str) -> dict[str, object]:
        return {"ttl": 30, "records": {"app.test": {"A": list(ips)}}}

    with DnsServer(tmp_path) as server:
        server.write(a_zone("127.0.0.1", "127.0.0.2", "127.0.0.3"))
        membership = DnsMembership(
            "app.test", port=8000, nameservers=[server.nameserver], self_url="http://127.0.0.1:8000",
            timeout=0.3, lifetime=0.6,
        )  # fmt: skip
        try:
            assert membership.refresh()
            hooks = OwnershipHooks()
            changes: list[OwnershipChange] = []
            hooks.add(changes.append)
            membership.subscribe(lambda old, old_self, new, new_self: hooks.ring_swapped(old, new, new_self, old_self))
            old = membership.ring
            assert membership.refresh() and changes == []  # nothing changed: nothing reported
            server.write(a_zone("127.0.0.1", "127.0.0.2"))
            assert membership.refresh()
            [change] = changes
            assert change.old is old and change.new is membership.ring
            assert change.gained is not None and change.gained.fraction > 0
            assert change.lost is not None and change.lost.spans == ()
            assert hooks.as_list()[0]["new_ring"] == membership.ring.checksum
        finally:
            membership.close()

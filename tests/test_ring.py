"""Tests for the rings: the consistent-hash ring, Maglev and rendezvous.

Every node computes owners on its own, so most of these tests are about agreement (order, process, hash seed)
and about how little moves when membership changes. All inputs are fixed: the results are deterministic.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from hashlib import blake2b
from pathlib import Path

import pytest

from affinity_mw.config import OPTIONS, Settings
from affinity_mw.membership import StaticMembership, membership_from_settings
from affinity_mw.ring import (
    DEFAULT_ALGORITHM,
    MAGLEV_TABLE_SIZES,
    MAX_POINTS,
    RING_ALGORITHMS,
    HashRing,
    MaglevRing,
    Node,
    RendezvousRing,
    Ring,
    build_ring,
    hash_key,
)

ROOT = Path(__file__).resolve().parents[1]
KEYS = [f"tenant-{i}" for i in range(20_000)]
HASHES = [hash_key(k) for k in KEYS]


def url(i: int) -> str:
    return f"http://10.0.0.{i}:8000"


def node(i: int, weight: int = 1, address: str | None = None) -> Node:
    return Node(url(i), address if address is not None else url(i), weight)


def ring_of(*ids: int, vnodes: int = 160) -> HashRing:
    return HashRing([node(i) for i in ids], vnodes=vnodes)


def owner_id(ring: Ring, key_hash: int) -> str:
    owner = ring.owner(key_hash)
    assert owner is not None
    return owner.id


def loads(ring: Ring) -> Counter[str]:
    return Counter(owner_id(ring, h) for h in HASHES)


# -- hashing and agreement ---------------------------------------------------------------------------------


def test_hash_key_is_pinned() -> None:
    # Changing these values re-routes every key of every deployed cluster, and nodes on two versions would
    # disagree during a rollout; the values must only change together with the checksum version.
    assert hash_key("") == 16476032584258269876
    assert hash_key("tenant-42") == 17529552306793192308
    assert hash_key("é") == 14635220546840893743
    assert hash_key("\udcff") == 14852696944405235362  # lone surrogate (from undecodable bytes) still hashes
    assert all(0 <= h < 2**64 for h in HASHES[:1000])


@pytest.mark.parametrize("key", ["", "tenant-42", "é", "日本", "\udcff", "a\ud800b", "x" * 1000])
def test_hash_key_is_the_documented_formula(key: str) -> None:
    expected = int.from_bytes(blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big")
    assert hash_key(key) == expected


def test_owners_are_pinned() -> None:
    ring = ring_of(1, 2, 3)
    assert ring.checksum == "264ee3f77f25"
    got = [owner_id(ring, hash_key(f"tenant-{i}")) for i in range(12)]
    assert got == [url(i) for i in (2, 2, 3, 3, 2, 2, 2, 3, 2, 2, 3, 1)]


def test_same_owner_regardless_of_input_order() -> None:
    a = HashRing([node(1), node(2), node(3), node(4)])
    b = HashRing([node(4), node(2), node(1), node(3)])
    assert [owner_id(a, h) for h in HASHES] == [owner_id(b, h) for h in HASHES]
    assert a.nodes == b.nodes
    assert [n.id for n in a.nodes] == sorted(n.id for n in a.nodes)


def test_same_owner_regardless_of_address() -> None:
    a = HashRing([node(1), node(2), node(3)])
    b = HashRing([node(1, address="http://192.168.1.1:9000"), node(2), node(3)])
    assert [owner_id(a, h) for h in HASHES] == [owner_id(b, h) for h in HASHES]
    assert a.moved_fraction(b) == 0.0


_CHILD = """
import json, sys
from affinity_mw.ring import HashRing, Node
ids = json.loads(sys.argv[1])
ring = HashRing([Node(i, i) for i in ids])
owners = [ring.owner_of(f"k{n}").id for n in range(1000)]
print(json.dumps({"owners": owners, "checksum": ring.checksum, "salted": hash("salted")}))
"""


def _child(ids: list[str], seed: str) -> dict[str, object]:
    env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(ids)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    result: dict[str, object] = json.loads(out.stdout)
    return result


def test_same_owner_across_processes_with_different_hash_seeds() -> None:
    ids = [url(i) for i in (5, 1, 3, 2)]
    one = _child(ids, "1")
    two = _child(list(reversed(ids)), "2")
    assert one["salted"] != two["salted"], "hash() must differ between the children, or this proves nothing"
    ring = HashRing([Node(i, i) for i in ids])
    here = [owner_id(ring, hash_key(f"k{n}")) for n in range(1000)]
    assert one["owners"] == two["owners"] == here
    assert one["checksum"] == two["checksum"] == ring.checksum
    assert len(set(here)) == 4  # every node owns some of the 1,000 keys


# -- lookups -------------------------------------------------------------------------------------------------


def test_owner_of_is_owner_of_hash() -> None:
    ring = ring_of(1, 2, 3)
    for key, h in zip(KEYS[:500], HASHES[:500], strict=True):
        assert ring.owner_of(key) == ring.owner(h)


def test_a_point_owns_its_own_hash_and_the_top_wraps_around() -> None:
    ring = ring_of(1, 2, 3)
    for i in (1, 2, 3):
        point = hash_key(f"{url(i)}#7")
        assert owner_id(ring, point) == url(i)
        assert owner_id(ring, point - 1) == url(i)
    # Hashes above the highest point belong to the owner of the lowest point, which also owns 0.
    assert ring.owner(2**64 - 1) == ring.owner(0)
    assert ring.successors(2**64 - 1) == ring.successors(0)


def test_successors_are_distinct_owner_first_and_bounded() -> None:
    ring = ring_of(1, 2, 3, 4, 5)
    for h in HASHES[:2000]:
        full = ring.successors(h)
        assert len(full) == 5
        assert len({n.id for n in full}) == 5
        assert full[0] == ring.owner(h)
        for n in range(7):
            assert ring.successors(h, n) == full[: min(n, 5)]


def test_successors_wrap_around_the_ring() -> None:
    ring = ring_of(1, 2, 3)
    top = ring.successors(2**64 - 1)
    assert len(top) == 3 and top[0] == ring.owner(0)
    # Start just past the last point of the ring: the walk must continue from the beginning.
    last = max(hash_key(f"{url(i)}#{v}") for i in (1, 2, 3) for v in range(160))
    assert ring.successors(last + 1) == ring.successors(0)
    assert ring.successors(last)[0] == ring.owner(last)


def test_successors_follow_the_ring_walk() -> None:
    # The second node in the preference list is who gets the key if the owner leaves the ring.
    ring = ring_of(1, 2, 3, 4)
    without = {gone.id: HashRing([n for n in ring if n != gone]) for gone in ring}
    for h in HASHES[:5000]:
        owner, second, *_ = ring.successors(h)
        assert without[owner.id].owner(h) == second


def test_single_node_ring() -> None:
    ring = ring_of(1)
    assert {owner_id(ring, h) for h in HASHES[:100]} == {url(1)}
    assert ring.successors(HASHES[0], 3) == (node(1),)
    assert ring.shares() == {url(1): 1.0}


def test_empty_ring() -> None:
    ring = HashRing([])
    assert ring.owner(0) is None
    assert ring.owner(HASHES[0]) is None
    assert ring.owner(2**64 - 1) is None
    assert ring.owner_of("anything") is None
    assert ring.successors(HASHES[0]) == ()
    assert ring.successors(HASHES[0], 3) == ()
    assert ring.shares() == {}
    assert len(ring) == 0 and list(ring) == [] and ring.nodes == ()
    assert ring.moved_fraction(HashRing([])) == 0.0
    assert ring.moved_fraction(ring_of(1)) == 1.0
    assert ring_of(1).moved_fraction(ring) == 1.0


# -- movement on membership changes --------------------------------------------------------------------------


def test_adding_a_node_moves_about_a_quarter_and_only_to_it() -> None:
    old, new = ring_of(1, 2, 3), ring_of(1, 2, 3, 4)
    moved = 0
    for h in HASHES:
        before, after = owner_id(old, h), owner_id(new, h)
        if before != after:
            moved += 1
            assert after == url(4)
    assert 0.18 <= moved / len(HASHES) <= 0.32
    assert new.moved_fraction(old) == pytest.approx(new.shares()[url(4)], abs=1e-12)


def test_removing_a_node_moves_only_its_keys_to_their_first_successor() -> None:
    old, new = ring_of(1, 2, 3, 4), ring_of(1, 2, 4)
    for h in HASHES:
        before = old.successors(h, 2)
        if before[0].id == url(3):
            assert new.owner(h) == before[1]
        else:
            assert new.owner(h) == before[0]
    assert old.moved_fraction(new) == pytest.approx(old.shares()[url(3)], abs=1e-12)


def test_moved_fraction_matches_a_sample() -> None:
    pairs = [
        (ring_of(1, 2, 3), ring_of(1, 2, 3, 4)),
        (ring_of(1, 2, 3, 4, 5), ring_of(2, 3, 6)),
        (ring_of(1, 2, 3), HashRing([node(1), node(2, weight=2), node(3)])),
        (ring_of(1, 2, 3), ring_of(1, 2, 3, vnodes=100)),
    ]
    for a, b in pairs:
        sampled = sum(owner_id(a, h) != owner_id(b, h) for h in HASHES) / len(HASHES)
        exact = a.moved_fraction(b)
        assert exact == pytest.approx(sampled, abs=0.015)  # 5 standard errors at 20,000 keys
        assert b.moved_fraction(a) == pytest.approx(exact, abs=1e-12)
        assert a.moved_fraction(a) == 0.0


# -- balance -------------------------------------------------------------------------------------------------


def test_three_nodes_are_balanced() -> None:
    counts = loads(ring_of(1, 2, 3))
    assert set(counts) == {url(1), url(2), url(3)}
    ratio = max(counts.values()) / (len(HASHES) / 3)
    # Measured: 1.147 for these ids (1.136 by exact share). Over random 3-node memberships at 160 vnodes the
    # exact max/mean has a median of 1.06 and a 99th percentile near 1.18, so 1.20 is the bound that holds for
    # a correct ring; one point per node gives ~1.5 here and 10 vnodes ~1.27.
    assert ratio <= 1.20
    assert max(ring_of(1, 2, 3, vnodes=1).shares().values()) * 3 > 1.20


def test_shares_sum_to_one_and_match_the_sample() -> None:
    for ring in (ring_of(1, 2, 3), ring_of(*range(1, 11)), HashRing([node(1, 3), node(2), node(3)])):
        shares = ring.shares()
        assert set(shares) == {n.id for n in ring}
        assert sum(shares.values()) == pytest.approx(1.0, abs=1e-12)
        counts = loads(ring)
        for node_id, share in shares.items():
            assert counts[node_id] / len(HASHES) == pytest.approx(share, abs=0.015)


def test_weight_two_gets_about_twice_the_share() -> None:
    ring = HashRing([node(1, weight=2), node(2), node(3)])
    shares = ring.shares()
    ratio = shares[url(1)] / ((shares[url(2)] + shares[url(3)]) / 2)
    assert 1.6 <= ratio <= 2.5
    counts = loads(ring)
    assert 0.42 <= counts[url(1)] / len(HASHES) <= 0.58


# -- checksum ------------------------------------------------------------------------------------------------


def test_checksum_ignores_order_and_address() -> None:
    a = HashRing([node(1), node(2), node(3)])
    b = HashRing([node(3, address="http://10.9.9.9:1"), node(1), node(2, address="https://x:443")])
    assert a.checksum == b.checksum
    assert len(a.checksum) == 12
    int(a.checksum, 16)


def test_checksum_changes_with_membership_weight_and_vnodes() -> None:
    base = ring_of(1, 2, 3)
    others = [
        ring_of(1, 2, 4),
        ring_of(1, 2),
        ring_of(1, 2, 3, 4),
        HashRing([node(1), node(2, weight=2), node(3)]),
        ring_of(1, 2, 3, vnodes=161),
        HashRing([]),
    ]
    checksums = {base.checksum, *(r.checksum for r in others)}
    assert len(checksums) == len(others) + 1


# -- container protocol and validation -----------------------------------------------------------------------


def test_container_protocol() -> None:
    ring = HashRing([node(2), node(1, address="http://elsewhere:1")])
    assert len(ring) == 2
    assert [n.id for n in ring] == [url(1), url(2)]
    assert url(1) in ring and url(9) not in ring
    assert node(2) in ring
    assert node(1) not in ring  # same id, different address: not this member
    assert 42 not in ring
    assert ring.get(url(1)) == Node(url(1), "http://elsewhere:1")
    assert ring.get(url(9)) is None
    assert ring.vnodes == 160
    assert repr(ring) == f"HashRing(nodes=2, vnodes=160, points=320, checksum={ring.checksum!r})"


def test_ring_and_node_are_immutable() -> None:
    ring = ring_of(1, 2)
    with pytest.raises(AttributeError):
        ring.vnodes = 3  # type: ignore[misc]
    with pytest.raises(AttributeError):
        ring.extra = 1  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        node(1).weight = 2  # type: ignore[misc]


def test_duplicate_ids_are_rejected() -> None:
    with pytest.raises(ValueError, match="more than once"):
        HashRing([node(1), node(2), Node(url(1), "http://other:1")])


@pytest.mark.parametrize("weight", [0, -1, True, 1.5, "2"])
def test_bad_weights_are_rejected(weight: object) -> None:
    with pytest.raises(ValueError, match="weight"):
        Node(url(1), url(1), weight)  # type: ignore[arg-type]


def test_empty_node_id_is_rejected() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        Node("", "http://x:1")


@pytest.mark.parametrize("vnodes", [0, -5, True, 2.0])
def test_bad_vnodes_are_rejected(vnodes: object) -> None:
    with pytest.raises(ValueError, match="vnodes"):
        HashRing([node(1)], vnodes=vnodes)  # type: ignore[arg-type]


def test_oversized_ring_is_rejected() -> None:
    # An SRV weight of 65535 at 160 vnodes would be ten million points.
    with pytest.raises(ValueError, match="points"):
        HashRing([node(1, weight=65535)])
    with pytest.raises(ValueError, match="points"):
        HashRing([node(1), node(2)], vnodes=MAX_POINTS // 2 + 1)


def test_non_nodes_are_rejected() -> None:
    with pytest.raises(TypeError, match="Node"):
        HashRing([url(1)])  # type: ignore[list-item]


def test_negative_successor_count_is_rejected() -> None:
    with pytest.raises(ValueError, match="at least 0"):
        ring_of(1).successors(0, -1)


# -- the algorithms behind one interface ---------------------------------------------------------------------

PINNED = {
    # algorithm: (checksum of nodes 1-3, owners of tenant-0 .. tenant-11 by node number)
    "ring": ("264ee3f77f25", (2, 2, 3, 3, 2, 2, 2, 3, 2, 2, 3, 1)),
    "maglev": ("f55bf34c87e4", (1, 3, 3, 2, 2, 2, 1, 3, 3, 2, 2, 2)),
    "rendezvous": ("0ac4fd8a6307", (3, 1, 1, 3, 1, 3, 1, 1, 3, 1, 1, 2)),
    "nginx": ("88d0a18da312", (2, 2, 1, 3, 1, 3, 1, 2, 2, 1, 2, 2)),
}
EXACT_REMOVAL = ("ring", "rendezvous", "nginx")  # successors(h)[k] is the owner once the k nodes before it are gone


def algo_ring(algorithm: str, *ids: int, weights: dict[int, int] | None = None) -> Ring:
    return build_ring([node(i, (weights or {}).get(i, 1)) for i in ids], algorithm)


def test_algorithm_names_match_the_configuration() -> None:
    assert set(PINNED) == set(RING_ALGORITHMS)
    option = next(o for o in OPTIONS if o.name == "ring")
    assert option.env == "AFFINITY_RING" and option.default == DEFAULT_ALGORITHM == Settings().ring
    for name in RING_ALGORITHMS:
        assert option.parse(f" {name.upper()} ") == name
        assert build_ring([node(1)], name).algorithm == name
    with pytest.raises(ValueError, match="maglev"):
        option.parse("jump")
    with pytest.raises(ValueError, match="ring algorithm"):
        build_ring([node(1)], "jump")


@pytest.mark.parametrize("algorithm", RING_ALGORITHMS)
def test_the_setting_reaches_the_membership(algorithm: str) -> None:
    env = {"AFFINITY_PEERS": f"{url(1)},{url(2)}", "AFFINITY_SELF": url(1), "AFFINITY_RING": algorithm}
    env |= {"AFFINITY_SECRET": "x" * 16, "AFFINITY_KEY": "header:X-Tenant"}
    membership = membership_from_settings(Settings.load({}, env))
    assert membership.ring.algorithm == algorithm
    assert membership.ring.checksum == algo_ring(algorithm, 1, 2).checksum


@pytest.mark.parametrize("algorithm", RING_ALGORITHMS)
def test_owners_and_checksum_are_pinned(algorithm: str) -> None:
    ring = algo_ring(algorithm, 1, 2, 3)
    checksum, owners = PINNED[algorithm]
    assert ring.checksum == checksum
    assert [owner_id(ring, hash_key(f"tenant-{i}")) for i in range(12)] == [url(i) for i in owners]


def test_the_checksum_names_the_algorithm() -> None:
    for ids in ((1, 2, 3), (1,), ()):
        assert len({algo_ring(a, *ids).checksum for a in RING_ALGORITHMS}) == len(RING_ALGORITHMS)
    # vnodes only changes the ring algorithm's owners, so only its checksum
    assert RendezvousRing([node(1)], vnodes=3).checksum == RendezvousRing([node(1)]).checksum
    assert MaglevRing([node(1)], vnodes=3).checksum == MaglevRing([node(1)]).checksum
    assert MaglevRing([node(1)], size=131071).checksum != MaglevRing([node(1)]).checksum


_ALGO_CHILD = """
import json, sys
from affinity_mw.ring import Node, build_ring
ids = json.loads(sys.argv[1])
ring = build_ring([Node(i, i) for i in ids], sys.argv[2])
owners = [ring.owner_of(f"k{n}").id for n in range(300)]
second = [ring.successors(__import__("affinity_mw.ring").ring.hash_key(f"k{n}"), 2)[1].id for n in range(300)]
print(json.dumps({"owners": owners, "second": second, "checksum": ring.checksum, "salted": hash("salted")}))
"""


@pytest.mark.parametrize("algorithm", ["maglev", "rendezvous"])
def test_same_owners_across_processes(algorithm: str) -> None:
    ids = [url(i) for i in (5, 1, 3, 2)]
    runs = []
    for seed, order in (("1", ids), ("2", list(reversed(ids)))):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(ROOT)}
        out = subprocess.run(
            [sys.executable, "-c", _ALGO_CHILD, json.dumps(order), algorithm],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        runs.append(json.loads(out.stdout))
    assert runs[0]["salted"] != runs[1]["salted"]
    ring = build_ring([Node(i, i) for i in ids], algorithm)
    here = [owner_id(ring, hash_key(f"k{n}")) for n in range(300)]
    assert runs[0]["owners"] == runs[1]["owners"] == here
    assert runs[0]["second"] == runs[1]["second"]
    assert runs[0]["checksum"] == runs[1]["checksum"] == ring.checksum
    assert len(set(here)) == 4


@pytest.mark.parametrize("algorithm", RING_ALGORITHMS)
def test_order_and_addresses_do_not_matter(algorithm: str) -> None:
    a = build_ring([node(1), node(2), node(3), node(4)], algorithm)
    b = build_ring([node(4), node(2, address="http://elsewhere:1"), node(1), node(3)], algorithm)
    assert a.checksum == b.checksum
    assert [owner_id(a, h) for h in HASHES[:3000]] == [owner_id(b, h) for h in HASHES[:3000]]
    assert a.moved_fraction(b) == 0.0


@pytest.mark.parametrize("algorithm", RING_ALGORITHMS)
def test_successors_are_distinct_complete_and_start_with_the_owner(algorithm: str) -> None:
    ring = algo_ring(algorithm, *range(1, 8))
    for h in [*HASHES[:300], 0, 2**64 - 1]:
        full = ring.successors(h)
        assert len(full) == 7 and set(full) == set(ring.nodes)
        assert full[0] == ring.owner(h)
        for n in (0, 1, 2, 3, 8):
            assert ring.successors(h, n) == full[: min(n, 7)]
    assert ring.owner_of("tenant-42") == ring.owner(ring.key_hash("tenant-42"))


@pytest.mark.parametrize("algorithm", RING_ALGORITHMS)
def test_successors_agree_with_removal(algorithm: str) -> None:
    ring = algo_ring(algorithm, *range(1, 9))
    without = {gone.id: build_ring([n for n in ring if n != gone], algorithm) for gone in ring}
    agree = 0
    sample = HASHES[:4000]
    for h in sample:
        first, second, third, *_ = ring.successors(h)
        if without[first.id].owner(h) == second:
            agree += 1
        if algorithm in EXACT_REMOVAL:
            # ... and deeper: without the first two, the third owns the key.
            two_gone = (
                build_ring([n for n in ring if n not in (first, second)], algorithm) if h in sample[:50] else None
            )
            assert two_gone is None or two_gone.owner(h) == third
    if algorithm in EXACT_REMOVAL:
        assert agree == len(sample)
    else:
        # Maglev: the rebuilt table mostly gives the slot to the node whose permutation reaches it first.
        # Measured: 0.984 here; bench/ring_bench.py reports it per cluster size.
        assert agree / len(sample) >= 0.95


@pytest.mark.parametrize("algorithm", RING_ALGORITHMS)
def test_removing_a_node_moves_about_its_keys_only(algorithm: str) -> None:
    old = algo_ring(algorithm, *range(1, 11))
    new = algo_ring(algorithm, *range(1, 10))
    share = old.shares()[url(10)]
    moved = sum(owner_id(old, h) != owner_id(new, h) for h in HASHES) / len(HASHES)
    assert old.moved_fraction(new) == pytest.approx(moved, abs=0.012)
    if algorithm in EXACT_REMOVAL:
        assert old.moved_fraction(new) == pytest.approx(share, abs=1e-9)
    else:
        assert share <= old.moved_fraction(new) <= 1.1 * share  # Maglev moves a little more: 1.04 x here


@pytest.mark.parametrize("algorithm", RING_ALGORITHMS)
def test_weights_are_respected(algorithm: str) -> None:
    ring = algo_ring(algorithm, 1, 2, 3, weights={1: 2})
    shares = ring.shares()
    assert sum(shares.values()) == pytest.approx(1.0, abs=1e-9)
    counts = loads(ring)
    for node_id, share in shares.items():
        assert counts[node_id] / len(HASHES) == pytest.approx(share, abs=0.015)
    ratio = shares[url(1)] / ((shares[url(2)] + shares[url(3)]) / 2)
    # Rings spread points at random (1.6-2.5); Maglev splits the table by weight and rendezvous by probability.
    points = algorithm in ("ring", "nginx")
    assert 1.6 <= ratio <= 2.5 if points else ratio == pytest.approx(2.0, abs=0.01)
    assert 0.46 <= counts[url(1)] / len(HASHES) <= 0.54 or points


@pytest.mark.parametrize("algorithm", ["maglev", "rendezvous"])
def test_balance(algorithm: str) -> None:
    for ids in ((1, 2, 3), tuple(range(1, 11))):
        ring = algo_ring(algorithm, *ids)
        assert max(ring.shares().values()) * len(ids) <= 1.002
        counts = loads(ring)
        mean = len(HASHES) / len(ids)
        # 20,000 keys: sampling alone gives about 1 +- 2.5 * sqrt(N / 20,000), so 1.03 at 3 nodes, 1.07 at 10.
        assert max(counts.values()) / mean <= (1.03 if len(ids) == 3 else 1.07)
        assert min(counts.values()) / mean >= (0.97 if len(ids) == 3 else 0.93)


def test_rendezvous_spreads_a_leavers_keys_over_every_survivor() -> None:
    ring = algo_ring("rendezvous", *range(1, 6))
    heirs = Counter(ring.successors(h, 2)[1].id for h in HASHES if owner_id(ring, h) == url(3))
    assert set(heirs) == {url(i) for i in (1, 2, 4, 5)}
    assert max(heirs.values()) / min(heirs.values()) <= 1.25


def test_rendezvous_moved_fraction_is_exact_for_joins_and_leaves() -> None:
    old = algo_ring("rendezvous", 1, 2, 3, 4)
    joined = algo_ring("rendezvous", 1, 2, 3, 4, 5)
    swapped = algo_ring("rendezvous", 1, 2, 3, 5, weights={5: 3})
    assert old.moved_fraction(joined) == pytest.approx(1 / 5)
    # A key moves when the best scorer over both memberships is 4 or 5: weight 1 + 3 of a total weight of 7.
    assert old.moved_fraction(swapped) == pytest.approx(4 / 7)
    sample = sum(owner_id(old, h) != owner_id(swapped, h) for h in HASHES) / len(HASHES)
    assert sample == pytest.approx(4 / 7, abs=0.015)
    reweighted = algo_ring("rendezvous", 1, 2, 3, 4, weights={1: 2})  # estimated on fixed samples
    sample = sum(owner_id(old, h) != owner_id(reweighted, h) for h in HASHES) / len(HASHES)
    assert old.moved_fraction(reweighted) == pytest.approx(sample, abs=0.015)


def test_moved_fraction_between_algorithms_is_estimated() -> None:
    a, b = algo_ring("ring", 1, 2, 3), algo_ring("maglev", 1, 2, 3)
    sample = sum(owner_id(a, h) != owner_id(b, h) for h in HASHES) / len(HASHES)
    assert a.moved_fraction(b) == pytest.approx(sample, abs=0.015)
    assert b.moved_fraction(a) == a.moved_fraction(b)
    assert 0.5 < sample < 0.8  # unrelated placements: about 2/3 of the keys change owner


@pytest.mark.parametrize("algorithm", RING_ALGORITHMS)
def test_empty_and_single(algorithm: str) -> None:
    empty = build_ring([], algorithm)
    assert empty.owner(0) is None and empty.owner_of("x") is None and empty.successors(5) == ()
    assert empty.shares() == {} and len(empty) == 0
    assert empty.moved_fraction(build_ring([], algorithm)) == 0.0
    one = build_ring([node(1)], algorithm)
    assert empty.moved_fraction(one) == 1.0 and one.moved_fraction(empty) == 1.0
    assert {owner_id(one, h) for h in HASHES[:100]} == {url(1)}
    assert one.successors(HASHES[0], 3) == (node(1),) and one.shares() == {url(1): 1.0}
    with pytest.raises(ValueError, match="n must be"):
        one.successors(0, -1)
    assert url(1) in one and node(1) in one and one.get(url(1)) == node(1) and list(one) == [node(1)]
    with pytest.raises(ValueError, match="more than once"):
        build_ring([node(1), node(1)], algorithm)


def test_maglev_table_size_follows_the_total_weight() -> None:
    assert MaglevRing([node(1)]).size == 65537
    assert MaglevRing([node(i) for i in range(1, 700)]).size == 131071
    assert all(size % d for size in MAGLEV_TABLE_SIZES for d in range(2, 1100))  # prime (spot check)
    with pytest.raises(ValueError, match="Maglev table"):
        MaglevRing([node(1, weight=20_000)])
    with pytest.raises(ValueError, match="table size"):
        MaglevRing([node(1)], size=1000)


def test_static_membership_takes_the_algorithm() -> None:
    ring = StaticMembership([url(1), url(2)], url(1), algorithm="maglev").ring
    assert isinstance(ring, MaglevRing) and isinstance(StaticMembership([url(1)]).ring, HashRing)

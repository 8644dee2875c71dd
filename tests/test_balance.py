"""The bounded-load choice (affinity_mw.balance): order, floor, factor, recovery, heavy keys only; fixed seeds,
no clocks."""

from __future__ import annotations

import random

import pytest

from affinity_mw.balance import Balancer, BoundedLoads, Loads
from affinity_mw.hotkeys import HotKeys

A, B, C = "http://a:1", "http://b:1", "http://c:1"
THIRDS = (1 / 3, 1 / 3, 1 / 3)


def loads(recent: dict[str, float], home: dict[str, float] | None = None, inflight: int = 10) -> Loads:
    """Loads as if this node had made these recent decisions (``home`` defaults to all of them)."""
    seen = Loads(window=10_000)
    seen.recent = dict(recent)
    seen.home = dict(recent if home is None else home)
    seen.total = sum(recent.values())
    seen.inflight = inflight
    seen.warm = True
    return seen


def test_the_owner_keeps_its_key_within_the_bound_and_the_bound_is_factor_times_the_fair_share() -> None:
    # 12 recent requests; with this one 13; the fair share of 3 nodes is 13/3 = 4.33; x 1.5 = 6.5.
    bounded = BoundedLoads(1.5, floor=0)
    assert bounded.choose([A, B, C], THIRDS, loads({A: 5, B: 4, C: 3})) == 0  # 5 + 1 <= 6.5
    assert bounded.choose([A, B, C], THIRDS, loads({A: 6, B: 3, C: 3})) == 1  # 6 + 1 > 6.5
    # A larger factor keeps it; a smaller one spills earlier.
    assert BoundedLoads(1.7, floor=0).choose([A, B, C], THIRDS, loads({A: 6, B: 3, C: 3})) == 0
    # 1.1 x 13 / 3 = 4.77: A (6) and B (5) are over it with this request, C (4) is not.
    assert BoundedLoads(1.1, floor=0).choose([A, B, C], THIRDS, loads({A: 5, B: 4, C: 3})) == 2


def test_a_spilled_key_goes_to_its_successors_in_ring_order() -> None:
    bounded = BoundedLoads(1.25, floor=0)
    # B is next in this key's order: it takes the key while it has room, else C does.
    assert bounded.choose([A, B, C], THIRDS, loads({A: 8, B: 2, C: 2})) == 1
    assert bounded.choose([A, C, B], THIRDS, loads({A: 8, B: 2, C: 2})) == 1  # another key's order: C
    assert bounded.choose([A, B, C], THIRDS, loads({A: 8, B: 6, C: 1})) == 2
    # The same loads always give the same answer: nothing random, nothing remembered.
    seen = loads({A: 8, B: 6, C: 1})
    assert {bounded.choose([A, B, C], THIRDS, seen) for _ in range(100)} == {2}


def test_the_floor_keeps_light_traffic_on_the_owner() -> None:
    skewed = {A: 30.0, B: 1.0, C: 1.0}  # A far over any bound
    for inflight in (1, 2, 3):
        assert BoundedLoads(1.25, floor=3).choose([A, B, C], THIRDS, loads(skewed, inflight=inflight)) == 0
    assert BoundedLoads(1.25, floor=3).choose([A, B, C], THIRDS, loads(skewed, inflight=4)) == 1
    # The default floor: a request alone on this node never spills.
    assert BoundedLoads(1.25).choose([A, B, C], THIRDS, loads(skewed, inflight=1)) == 0
    assert BoundedLoads(1.25).choose([A, B, C], THIRDS, loads(skewed, inflight=2)) == 1


def test_an_owner_is_judged_by_its_own_keys_not_by_what_others_spilled_to_it() -> None:
    # B carries 9 recent requests, 6 of them spilled to it by A's hot key: its own keys stay home...
    bounded = BoundedLoads(1.25, floor=0)
    seen = loads({A: 4, B: 9, C: 3}, home={A: 4, B: 3, C: 3})
    assert bounded.choose([B, C, A], THIRDS, seen) == 0
    # ...while a key spilled from A finds B full and goes on to C.
    assert bounded.choose([A, B, C], THIRDS, loads({A: 9, B: 9, C: 2}, home={A: 9, B: 3, C: 2})) == 2


def test_when_no_candidate_has_room_the_least_loaded_one_takes_it() -> None:
    # Only two of the members are candidates (the third is set aside): both over the bound.
    bounded = BoundedLoads(1.25, floor=0)
    assert bounded.choose([A, B], THIRDS, loads({A: 9, B: 7, C: 0})) == 1
    assert bounded.choose([A, B], THIRDS, loads({A: 7, B: 9, C: 0})) == 0


def test_weights_scale_the_bound() -> None:
    # C has half the ring's weight: it may take twice as much as A or B.
    bounded = BoundedLoads(1.25, floor=0)
    shares = (0.25, 0.25, 0.5)
    # 10 recent requests, 11 with this one: C may take 1.25 x 11 x 0.5 = 6.9, an equal share only 4.6.
    assert bounded.choose([C, A, B], (0.5, 0.25, 0.25), loads({A: 2, B: 3, C: 5})) == 0
    assert bounded.choose([C, A, B], THIRDS, loads({A: 2, B: 3, C: 5})) == 1
    assert bounded.choose([A, B, C], shares, loads({A: 4, B: 4, C: 2})) == 2


def test_only_keys_heavy_enough_to_break_the_bound_may_move() -> None:
    bounded = BoundedLoads(1.25)
    # With 3 members a key needs (1.25 - 1) / 3 = 8.3 % of the requests to move.
    assert not bounded.spills(0.08, 3)
    assert bounded.spills(0.09, 3)
    assert bounded.spills(0.03, 10)
    assert not bounded.spills(0.02, 10)


def place(balancer: Balancer, key: str, order: list[str], shares: tuple[float, ...] = THIRDS) -> int:
    """What the router does for one request."""
    if balancer.heavy(key):
        return balancer.place(key, order, shares)
    balancer.record(order[0])
    return 0


def test_balancer_recovers_when_the_hot_keys_load_falls() -> None:
    balancer = Balancer(BoundedLoads(1.25, floor=0), members=3, hot=HotKeys(size=16, window=256))
    order, other = [A, B, C], [B, C, A]
    balancer.loads.inflight = 5
    # A hot phase: key "hot" (owner A, then B, then C) is half of the requests, the rest are B's own keys.
    hot_placed = []
    for i in range(600):
        if i % 2:
            hot_placed.append(place(balancer, "hot", order))
        else:
            place(balancer, f"k{i % 50}", other)
    assert hot_placed[-100:].count(0) < 90  # spilling...
    assert set(hot_placed) == {0, 2}  # ...past B, which its own keys fill, to C
    # The hot key cools down to one request in ten: its owner has room again and keeps it.
    calm = []
    for i in range(2000):
        if i % 10 == 0:
            calm.append(place(balancer, "hot", order))
        else:
            place(balancer, f"c{i % 7}", [[A, B, C], [B, C, A], [C, A, B]][i % 3], THIRDS)
    assert calm[-50:] == [0] * 50


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_balancer_holds_the_bound_on_a_skewed_stream_and_leaves_the_other_keys_home(seed: int) -> None:
    # One node's own decisions for a hot key with 35 % of requests and 200 Zipf(1.1) keys, owners spread over
    # three nodes: the node's decisions stay within 1.25 x the fair share, and the other keys stay home.
    rng = random.Random(seed)
    nodes = [A, B, C]
    orders = {f"t{i}": nodes[i % 3 :] + nodes[: i % 3] for i in range(1, 201)}
    orders["hot"] = [A, B, C]
    weights = [1 / i**1.1 for i in range(1, 201)]
    cold = list(orders)[:-1]
    balancer = Balancer(BoundedLoads(1.25, floor=0), members=3)
    balancer.loads.inflight = 4
    counts = {node: 0 for node in nodes}
    owners = {node: 0 for node in nodes}
    moved = others = 0
    for _ in range(30_000):
        key = "hot" if rng.random() < 0.35 else rng.choices(cold, weights)[0]
        index = place(balancer, key, orders[key])
        counts[orders[key][index]] += 1
        owners[orders[key][0]] += 1
        if key != "hot":
            others += 1
            moved += index != 0
    mean = sum(counts.values()) / 3
    assert max(owners.values()) / mean > 1.5  # the stream itself is skewed: A owns 35 % + a third of the rest
    assert max(counts.values()) / mean <= 1.26
    assert moved / others <= 0.03


def test_loads_decay_and_forget() -> None:
    seen = Loads(window=4)
    for node in (A, A, B, A):
        seen.record(node, home=node == A)
    assert seen.recent == {A: 1.5, B: 0.5} and seen.home == {A: 1.5} and seen.total == 2.0
    for _ in range(3 * 4):
        seen.record(C, home=True)
    assert B not in seen.recent  # long unused: dropped
    assert seen.shares()[C] > 0.9


@pytest.mark.parametrize("factor", [1, 0.5, float("inf"), float("nan"), "1.25", True])
def test_bad_factors_are_refused(factor: object) -> None:
    with pytest.raises(ValueError, match="balance factor"):
        BoundedLoads(factor)  # type: ignore[arg-type]


@pytest.mark.parametrize("floor", [-1, 1.5, True])
def test_bad_floors_are_refused(floor: object) -> None:
    with pytest.raises(ValueError, match="balance floor"):
        BoundedLoads(1.25, floor)  # type: ignore[arg-type]

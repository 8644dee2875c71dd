"""Consistent hashing with bounded loads: which of a key's candidates serves it when its owner is too busy.

The rule is the one of Mirrokni, Thorup and Zadimoghaddam ("Consistent Hashing with Bounded Loads", 2018), as
Envoy (``hash_balance_factor``) and HAProxy (``hash-balance-factor``) apply it to requests: of ``total`` recent
requests, a node may take at most ``factor x (total + 1) x share``, where ``share`` is its part of the ring's
weight (``1 / n`` for equal weights). A key goes to the first node of its failover order, owner first, that
stays within that bound with this request. So a spilled key still goes to one stable place (its next successor,
then the one after), and it comes back to its owner as soon as the owner's load falls below the bound: nothing
is remembered per key. The bounds of all members add up to more than ``total + 1``, so walking every member
always finds one with room.

What one node can see without gossip is its own decisions (:class:`Loads`): requests enter at every node, so
each node's decisions are a sample of the cluster's, and when every node keeps its own sample within the bound,
the sum stays within it too. Loads are counted as *recent requests* (decayed every ``window`` decisions), not
requests in flight: a node's in-flight count is a handful of requests even when it is saturated, too coarse to
hold a bound like 1.25 x, while a share of recent requests is exactly what the bound is about.

Three refinements keep the cost of spreading low:

- **Only heavy keys move** (:meth:`BoundedLoads.spills`): a key with less than ``(factor - 1) / n`` of the
  requests cannot push its owner past the bound by itself, so it always stays home. Without this, an owner
  over the bound sheds every key in proportion, and a hot tenant costs thousands of cold tenants their
  locality.
- **An owner is judged by its own keys**: requests other owners spilled to it do not count against its keeping
  its own keys, so one spill never pushes a second node's keys out in turn.
- **The floor**: a node with fewer than ``floor`` other requests in flight (:attr:`Loads.inflight` counts all
  it is serving or forwarding, the one being placed included) spills nothing, so light traffic stays where it
  belongs.

This module does no I/O, keeps no clock and knows no framework.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .hotkeys import HotKeys

__all__ = ["DEFAULT_FLOOR", "Balancer", "BoundedLoads", "Loads", "hot_status"]

DEFAULT_FLOOR = 1
WINDOW_PER_MEMBER = 32  # decisions per member between two halvings of the recent counts
_SPILLED_KEYS = 1024


class Loads:
    """What one node sees of the cluster's load: its recent decisions per node id (``recent``), of which those
    that kept a key on its owner (``home``), their decayed ``total``, and its requests in flight
    (``inflight``, kept by the caller).

    Every ``window`` decisions all counts are halved, so a load that falls is forgotten within a few windows.
    Plain dict updates: exact on one event loop, approximate under threads (a lost update shifts a share by one
    request in hundreds).
    """

    __slots__ = ("home", "inflight", "recent", "seen", "total", "warm", "window")

    def __init__(self, window: int = 4 * WINDOW_PER_MEMBER) -> None:
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"The load window must be an integer of at least 1 request, got {window!r}.")
        self.window = window
        self.recent: dict[str, float] = {}
        self.home: dict[str, float] = {}
        self.total = 0.0
        self.seen = 0
        self.inflight = 0
        self.warm = False  # a first window seen: before it, shares of a few requests would mean nothing

    def record(self, node_id: str, home: bool) -> None:
        """One request sent to ``node_id`` (this node's own id for a request served here); ``home`` when that
        node owns its key."""
        recent = self.recent
        recent[node_id] = recent.get(node_id, 0.0) + 1.0
        if home:
            counts = self.home
            counts[node_id] = counts.get(node_id, 0.0) + 1.0
        self.total += 1.0
        self.seen += 1
        if self.seen >= self.window:
            self._decay()

    def _decay(self) -> None:
        self.seen = 0
        self.warm = True
        self.total /= 2
        for counts in (self.recent, self.home):
            for node_id, value in list(counts.items()):
                if value >= 0.5:
                    counts[node_id] = value / 2
                else:
                    del counts[node_id]  # nodes that left the ring, or long unused, cost no memory

    def shares(self) -> dict[str, float]:
        """Each node's share of this node's recent requests."""
        total = self.total or 1.0
        return {node_id: value / total for node_id, value in sorted(self.recent.items())}


class BoundedLoads:
    """The bounded-load choice among a key's candidates.

    ``factor`` (greater than 1) bounds a node's share of recent requests to ``factor`` times its fair share;
    ``floor`` (at least 0): while this node has fewer than that many requests in flight besides the one being
    placed, it spills nothing.
    """

    __slots__ = ("factor", "floor")

    def __init__(self, factor: float, floor: int = DEFAULT_FLOOR) -> None:
        if isinstance(factor, bool) or not isinstance(factor, int | float) or not 1 < factor < float("inf"):
            raise ValueError(f"The balance factor must be a finite number greater than 1, got {factor!r}.")
        if isinstance(floor, bool) or not isinstance(floor, int) or floor < 0:
            raise ValueError(f"The balance floor must be an integer of at least 0, got {floor!r}.")
        self.factor = float(factor)
        self.floor = floor

    def spills(self, key_share: float, members: int) -> bool:
        """Whether a key with ``key_share`` of recent requests may leave its owner at all (see the module's
        docstring): only a key heavy enough to push a node past the bound by itself."""
        return key_share * members >= self.factor - 1

    def choose(self, candidates: Sequence[str], shares: Sequence[float], loads: Loads) -> int:
        """The index in ``candidates`` (a key's failover order, owner first, node ids) of the node to send one
        request to, given each candidate's part of the ring's weight in ``shares``.

        The owner keeps the key while this node is under the floor or has not yet seen a window of requests
        (:attr:`Loads.window`), or while the requests for keys it owns stay
        within its bound. A successor takes it while all its recent requests stay within its bound. When none
        does (only possible when ``candidates`` leaves out members that have room), the least loaded relative
        to its bound, the earliest on a tie.
        """
        if loads.inflight <= self.floor or not loads.warm:
            return 0
        total = loads.total + 1.0
        factor = self.factor
        if loads.home.get(candidates[0], 0.0) + 1.0 <= factor * total * shares[0]:
            return 0
        recent = loads.recent
        best = 0
        best_ratio = (recent.get(candidates[0], 0.0) + 1.0) / (factor * total * shares[0])
        for index in range(1, len(candidates)):
            bound = factor * total * shares[index]
            load = recent.get(candidates[index], 0.0) + 1.0
            if load <= bound:
                return index
            ratio = load / bound
            if ratio < best_ratio:
                best, best_ratio = index, ratio
        return best


class Balancer:
    """One node's bounded-load routing: the rule, what this node sees (:class:`Loads`) and its hot keys
    (:class:`~affinity_mw.hotkeys.HotKeys`), for a ring of ``members`` nodes; and the spills it made, per peer
    and per key.

    Per keyed request that no peer has routed yet: :meth:`heavy` (counts the key; may it leave its owner?), then
    either :meth:`place` (which candidate) or :meth:`record` (it went to its owner). The hot-key summary doubles
    as the status page's "top keys": both want the recent request rate per key.
    """

    __slots__ = ("_ring", "_shares", "bounded", "hot", "loads", "members", "spilled_keys", "spilled_to")

    def __init__(self, bounded: BoundedLoads, members: int, hot: HotKeys | None = None) -> None:
        self.bounded = bounded
        self.members = max(1, members)
        self.loads = Loads(WINDOW_PER_MEMBER * self.members)
        self.hot = hot if hot is not None else HotKeys()
        self.spilled_to: dict[str, int] = {}
        self.spilled_keys: dict[str, int] = {}
        self._ring: object = None
        self._shares: dict[str, float] = {}

    def shares(self, ring: Any) -> dict[str, float]:
        """Each member's part of ``ring``'s weight; a new ring also resizes the bound (:meth:`resize`)."""
        if ring is not self._ring:
            weight = sum(node.weight for node in ring.nodes) or 1
            self._shares = {node.id: node.weight / weight for node in ring.nodes}
            self._ring = ring
            self.resize(len(ring))
        return self._shares

    def resize(self, members: int) -> None:
        """The ring changed size: the fair share and the window change with it; the counts carry on."""
        self.members = max(1, members)
        self.loads.window = WINDOW_PER_MEMBER * self.members

    def heavy(self, key: str) -> bool:
        """Count a request for ``key``; whether it may leave its owner now: the key is heavy enough and this node
        busy enough (over the floor, a first window seen). Anything else goes to its owner at once, so light
        traffic and cold keys skip the whole choice."""
        hot = self.hot
        hot.add(key)
        loads = self.loads
        bounded = self.bounded
        if loads.inflight <= bounded.floor or not loads.warm:
            return False
        return bounded.spills(hot.share(key), self.members)

    def record(self, node_id: str) -> None:
        """A request went to ``node_id``, its key's owner."""
        self.loads.record(node_id, True)

    def place(self, key: str, candidates: Sequence[str], shares: Sequence[float]) -> int:
        """The index in ``candidates`` (owner first, node ids, with their ``shares`` of the ring's weight) that
        serves a request for a heavy ``key``, counted as sent there."""
        index = self.bounded.choose(candidates, shares, self.loads)
        node_id = candidates[index]
        self.loads.record(node_id, index == 0)
        if index:
            self.spilled_to[node_id] = self.spilled_to.get(node_id, 0) + 1
            keys = self.spilled_keys
            if len(keys) >= _SPILLED_KEYS and key not in keys:
                keys.clear()  # bounded: spilled keys are a handful of heavy ones; a flood of others starts over
            keys[key] = keys.get(key, 0) + 1
        return index


def hot_status(router: Any, show_keys: bool = False, top: int = 10) -> dict[str, Any]:
    """What the status page, ``status.json`` and the metrics show of hot keys, bounded loads and shadow mode,
    from a :class:`~affinity_mw.router.Router`. Keys are shown as their ring hash in 16 hex digits unless
    ``show_keys`` (keys can be personal data; ``/_affinity?key=KEY`` prints a key's hash)."""
    hot: HotKeys | None = router.hot
    balancer: Balancer | None = router.balancer
    spilled_keys = balancer.spilled_keys if balancer is not None else {}

    ring = router.membership.ring

    def name(key: str) -> str:
        return key if show_keys else f"{ring.key_hash(key):016x}"  # as `/_affinity?key=KEY` shows it

    status: dict[str, Any] = {
        "hot_keys": [
            {"key": name(key), "share": round(share, 4), "spilled": spilled_keys.get(key, 0)}
            for key, share in (hot.top(top) if hot is not None else [])
        ],
        "balance": None,
        "shadow": None,
    }
    if balancer is not None:
        status["balance"] = {
            "factor": balancer.bounded.factor,
            "floor": balancer.bounded.floor,
            "in_flight": balancer.loads.inflight,
            "recent_shares": {node: round(share, 4) for node, share in balancer.loads.shares().items()},
            "spilled_to": dict(sorted(balancer.spilled_to.items())),
        }
    if router.shadow:
        targets: dict[str, int] = router.shadow_targets
        keyed = sum(targets.values())
        members = [node.id for node in router.membership.ring.nodes]
        counts = [targets.get(node, 0) for node in members]
        mean = keyed / len(members) if members else 0
        status["shadow"] = {
            "keyed_requests": keyed,
            "locality_today": round(router.counters["local_owner"] / keyed, 4) if keyed else None,
            "locality_routed": round(1 - router.counters["spilled"] / keyed, 4) if keyed else None,
            "load": {node: round(count / keyed, 4) for node, count in zip(members, counts, strict=True)}
            if keyed
            else {},
            "busiest_over_mean": round(max(counts) / mean, 3) if mean else None,
        }
    return status

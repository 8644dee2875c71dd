"""A skewed-load simulation: what a tenant mix does to each node, with and without bounded loads.

A discrete-event model of the cluster, run by ``affinity-mw simulate --zipf`` / ``--mix``: requests arrive
open-loop (Poisson) at a share of the cluster's capacity and enter at a random node; every node is an app with
``slots`` requests served at once for ``service`` seconds each, behind a queue; a forward adds ``hop`` seconds
each way. Routing is the middleware's own: the ring's owner, or with a balance factor the choice of
:class:`~affinity_mw.balance.BoundedLoads` over the loads each entry node sees (:class:`~affinity_mw.balance.Loads`).
Seeded, so a run is repeatable; it answers in about a second for 100,000 requests.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import random
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .balance import DEFAULT_FLOOR, Balancer, BoundedLoads
from .ring import Ring

__all__ = ["SimResult", "load_mix", "simulate", "zipf_mix"]


def zipf_mix(tenants: int, exponent: float, hot_share: float = 0.0) -> list[tuple[str, float]]:
    """``tenants`` tenants ``t1``.. with request weights in proportion to ``1 / rank ** exponent``; with
    ``hot_share``, a tenant ``hot`` takes that share of all requests and the Zipf tenants share the rest."""
    if tenants < 1:
        raise ValueError(f"tenants must be at least 1, got {tenants!r}.")
    if not 0 <= hot_share < 1:
        raise ValueError(f"the hot tenant's share must be in [0, 1), got {hot_share!r}.")
    if exponent < 0:
        raise ValueError(f"the Zipf exponent must be at least 0, got {exponent!r}.")
    raw = [1 / rank**exponent for rank in range(1, tenants + 1)]
    scale = (1 - hot_share) / sum(raw)
    mix = [("hot", hot_share)] if hot_share else []
    return mix + [(f"t{rank}", weight * scale) for rank, weight in enumerate(raw, 1)]


def load_mix(path: str | Path) -> list[tuple[str, float]]:
    """A tenant mix from a file: one ``KEY WEIGHT`` (or ``KEY,WEIGHT``) per line, weights relative (request
    counts or rates); blank lines and ``#`` comments are skipped."""
    mix: list[tuple[str, float]] = []
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read the tenant mix {path}: {exc}") from exc
    for number, line in enumerate(text.splitlines(), 1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        key, sep, weight = entry.replace(",", " ").rpartition(" ")
        try:
            value = float(weight)
        except ValueError:
            value = -1.0
        if not sep or not key.strip() or not value >= 0 or value == float("inf"):
            raise ValueError(f"{path}:{number}: expected 'KEY WEIGHT' with a weight >= 0, got {line!r}")
        mix.append((key.strip(), value))
    if not mix or not sum(weight for _, weight in mix) > 0:
        raise ValueError(f"{path}: no tenant with a positive weight")
    return mix


@dataclass
class SimResult:
    """Requests served per node, every request's latency (arrival to response at its entry node), and per key
    how many of its requests its owner served."""

    factor: float | None
    served: dict[str, int]
    requests: int
    latencies: list[float] = field(repr=False)
    local_by_tenant: dict[str, list[int]] = field(repr=False)
    spilled: int = 0

    @property
    def max_over_mean(self) -> float:
        counts = list(self.served.values())
        return max(counts) / (sum(counts) / len(counts))

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def locality(self, exclude: Iterable[str] = ()) -> float:
        """Share of requests served by their key's owner, over every tenant but ``exclude``."""
        skip = set(exclude)
        home = total = 0
        for tenant, (at_home, count) in self.local_by_tenant.items():
            if tenant not in skip:
                home += at_home
                total += count
        return home / total if total else 1.0

    def summary(self, exclude: Iterable[str] = ()) -> dict[str, object]:
        served = sum(self.served.values())
        nodes = {node: {"served": count, "share": round(count / served, 4)} for node, count in self.served.items()}
        return {
            "factor": self.factor,
            "requests": served,
            "nodes": nodes,
            "max_over_mean": round(self.max_over_mean, 3),
            "p50_ms": round(1000 * self.percentile(0.5), 1),
            "p99_ms": round(1000 * self.percentile(0.99), 1),
            "spilled": self.spilled,
            "locality": round(self.locality(), 4),
            "locality_others": round(self.locality(exclude), 4),
        }


class _Node:
    __slots__ = ("balancer", "busy", "id", "queue", "served")

    def __init__(self, node_id: str, balancer: Balancer | None) -> None:
        self.id = node_id
        self.busy = 0
        self.queue: deque[int] = deque()
        self.balancer = balancer
        self.served = 0


def simulate(
    ring: Ring,
    mix: Sequence[tuple[str, float]],
    *,
    requests: int = 50_000,
    load: float = 0.65,
    slots: int = 2,
    service: float = 0.020,
    hop: float = 0.0005,
    factor: float | None = None,
    floor: int = DEFAULT_FLOOR,
    seed: int = 1,
) -> SimResult:
    """Run ``requests`` requests of ``mix`` (``(key, weight)`` pairs) through a cluster of ``ring``'s members at
    ``load`` times its capacity (``slots / service`` requests per second per node); ``factor`` ``None`` routes
    every request to its key's owner."""
    if not load > 0:
        raise ValueError(f"load must be greater than 0, got {load!r}.")
    if slots < 1 or not service > 0 or hop < 0 or requests < 1:
        raise ValueError("slots and requests must be at least 1, service greater than 0 and hop at least 0.")
    rng = random.Random(seed)
    members = len(ring)
    bounded = BoundedLoads(factor, floor) if factor is not None else None
    nodes = {node.id: _Node(node.id, Balancer(bounded, members) if bounded else None) for node in ring.nodes}
    ids = list(nodes)
    weight = sum(node.weight for node in ring.nodes)
    share_of = {node.id: node.weight / weight for node in ring.nodes}
    keys = [key for key, _ in mix]
    cumulative = list(itertools.accumulate(w for _, w in mix))
    orders = {key: [n.id for n in ring.successors(ring.key_hash(key))] for key in keys}
    shares = {key: [share_of[i] for i in order] for key, order in orders.items()}
    rate = load * members * slots / service

    # Per request: key, entry node, serving node, arrival time.
    req_key: list[str] = []
    req_entry: list[str] = []
    req_node: list[str] = []
    req_start: list[float] = []
    latencies: list[float] = []
    local_by_tenant: dict[str, list[int]] = {key: [0, 0] for key in keys}
    spilled = 0
    events: list[tuple[float, int, int, int]] = []  # (time, sequence, kind, request)
    sequence = itertools.count()
    arrive, reach, done, respond = 0, 1, 2, 3

    t = 0.0
    for index in range(requests):
        t += rng.expovariate(rate)
        heapq.heappush(events, (t, next(sequence), arrive, index))
        key = keys[bisect.bisect_left(cumulative, rng.random() * cumulative[-1])]
        req_key.append(key)
        req_entry.append(rng.choice(ids))
        req_node.append("")
        req_start.append(t)

    def begin(node: _Node, index: int, now: float) -> None:
        node.busy += 1
        heapq.heappush(events, (now + service, next(sequence), done, index))

    while events:
        now, _, kind, index = heapq.heappop(events)
        if kind == arrive:
            entry = nodes[req_entry[index]]
            key = req_key[index]
            order = orders[key]
            balancer = entry.balancer
            chosen = 0
            if balancer is not None:
                balancer.loads.inflight += 1
                if balancer.heavy(key):
                    chosen = balancer.place(key, order, shares[key])
                else:
                    balancer.record(order[0])
            spilled += chosen > 0
            target = order[chosen]
            req_node[index] = target
            stats = local_by_tenant[key]
            stats[0] += chosen == 0
            stats[1] += 1
            kind = reach
            if target != entry.id:
                heapq.heappush(events, (now + hop, next(sequence), reach, index))
                continue
        if kind == reach:
            node = nodes[req_node[index]]
            if node.balancer is not None and node.id != req_entry[index]:
                node.balancer.loads.inflight += 1  # a hop: in flight here too, until served
            if node.busy < slots:
                begin(node, index, now)
            else:
                node.queue.append(index)
        elif kind == done:
            node = nodes[req_node[index]]
            node.busy -= 1
            node.served += 1
            if node.queue:
                begin(node, node.queue.popleft(), now)
            if req_entry[index] == node.id:
                heapq.heappush(events, (now, next(sequence), respond, index))
            else:
                if node.balancer is not None:
                    node.balancer.loads.inflight -= 1
                heapq.heappush(events, (now + hop, next(sequence), respond, index))
        elif kind == respond:
            entry = nodes[req_entry[index]]
            if entry.balancer is not None:
                entry.balancer.loads.inflight -= 1
            latencies.append(now - req_start[index])
    return SimResult(
        factor=factor,
        served={node_id: node.served for node_id, node in nodes.items()},
        requests=requests,
        latencies=latencies,
        local_by_tenant=local_by_tenant,
        spilled=spilled,
    )

"""The consistent-hash ring: which node owns an affinity key.

Every node of a cluster builds this ring independently from the membership it sees, and a request is only
routed well if they all agree. So everything here is a pure function of the membership: no randomness, no
process state, no dependence on the order in which peers were listed or on how their addresses resolved.

Choices, and why:

* **Consistent hashing with virtual nodes** (Karger et al.). When a node joins or leaves, only the keys it
  gains or loses move (about ``1/N`` of them), so the caches held on the other nodes stay warm. A single point
  per node would give shares that vary by a factor of several; ``vnodes`` points per unit of weight (160 by
  default, as in ketama and nginx's ``hash ... consistent``) keep the busiest node typically 5-15% above the
  mean with a handful of nodes, and spread the keys of a departing node over all survivors instead of dumping
  them on one neighbour. Rendezvous hashing balances as well but costs O(N) per lookup; Maglev and jump hash
  are O(1) but move more keys on change or cannot remove an arbitrary node. A ring lookup is one ``bisect``
  on a list of ints, well under a microsecond at a hundred nodes, and it also gives the failover order
  (:meth:`HashRing.successors`) for free.
* **blake2b, 64 bits.** It is in the standard library, fast on short strings, well mixed in every bit, and the
  same on every platform. 64 bits make collisions between points so rare that the tie-break below is only a
  formality.
* **Never ``hash()``.** Python salts ``str`` hashes per process (``PYTHONHASHSEED``); two workers using it
  would disagree about every owner and forward requests back and forth.

The ring is immutable. A membership change builds a new ring and swaps one reference, so readers on the hot
path never take a lock and never see a half-built ring.
"""

from __future__ import annotations

import json
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from hashlib import blake2b

__all__ = ["DEFAULT_VNODES", "MAX_POINTS", "HashRing", "Node", "hash_key"]

DEFAULT_VNODES = 160
"""Points per unit of weight. At three nodes, max/mean load is about 1.06 typically and under 1.2 nearly
always; more points buy balance with build time and memory (about 50 bytes a point)."""

MAX_POINTS = 1_000_000
"""Upper bound on the points of one ring. Weights may come from DNS (SRV records); a bogus weight must fail
loudly at construction rather than make every node spend seconds and hundreds of MB building a ring."""

_KEYSPACE = 1 << 64
_from_bytes = int.from_bytes  # bound once: looking the classmethod up on int costs as much as the conversion
_CHECKSUM_VERSION = 1  # bump if the point naming or hash changes: nodes on different versions then disagree


@dataclass(frozen=True, slots=True)
class Node:
    """One member of the ring.

    ``id`` is what the ring hashes, so it must stay the same for as long as the instance should keep its keys
    (a StatefulSet pod's DNS name survives restarts; its IP may not). ``address`` is only where the forwarder
    connects; it is deliberately left out of :attr:`HashRing.checksum` so that two nodes whose resolvers
    returned different addresses still report the same ring.
    """

    id: str
    address: str
    weight: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise ValueError(f"A node id must be a non-empty string, got {self.id!r}.")
        if not isinstance(self.address, str):
            raise ValueError(f"The address of node {self.id!r} must be a string, got {self.address!r}.")
        if isinstance(self.weight, bool) or not isinstance(self.weight, int) or self.weight < 1:
            raise ValueError(f"The weight of node {self.id!r} must be an integer of at least 1, got {self.weight!r}.")


def hash_key(key: str) -> int:
    """Hash a key (or a point name) to an unsigned 64-bit int, identically in every process and platform.

    The value is ``int.from_bytes(blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest(),
    "big")``. ``surrogatepass`` lets keys taken from undecodable bytes (``os.fsdecode``, WSGI environs) hash
    instead of raising: a key is routed, never a reason for a 500. Strict UTF-8 gives the same bytes whenever
    it succeeds and is twice as fast, so it is tried first; this runs once per request.
    """
    try:
        data = key.encode()
    except UnicodeEncodeError:
        data = key.encode("utf-8", "surrogatepass")
    return _from_bytes(blake2b(data, digest_size=8).digest(), "big")


class HashRing:
    """An immutable consistent-hash ring over a set of :class:`Node`.

    Each node contributes ``vnodes * weight`` points; point ``i`` of node ``n`` is
    ``hash_key(f"{n.id}#{i}")``. A key hash belongs to the first point at or after it, wrapping past the top
    of the 64-bit space. Equal points go to the smaller node id, so the ring depends only on the set of
    ``(id, weight)`` pairs and ``vnodes``, never on input order or addresses.
    """

    __slots__ = ("_by_id", "_checksum", "_nodes", "_owners", "_point_nodes", "_points", "_successors", "_vnodes")

    def __init__(self, nodes: Iterable[Node], *, vnodes: int = DEFAULT_VNODES) -> None:
        if isinstance(vnodes, bool) or not isinstance(vnodes, int) or vnodes < 1:
            raise ValueError(f"vnodes must be an integer of at least 1, got {vnodes!r}.")
        by_id: dict[str, Node] = {}
        for node in nodes:
            if not isinstance(node, Node):
                raise TypeError(f"A ring is built from Node objects, got {type(node).__name__}.")
            if node.id in by_id:
                raise ValueError(f"Node id {node.id!r} appears more than once; node ids must be unique.")
            by_id[node.id] = node
        ordered = tuple(sorted(by_id.values(), key=lambda n: n.id))
        total = vnodes * sum(n.weight for n in ordered)
        if total > MAX_POINTS:
            raise ValueError(
                f"This ring would have {total} points (vnodes={vnodes} times the total weight), more than "
                f"the limit of {MAX_POINTS}; lower vnodes or the node weights."
            )

        # Sorting (point, id) and keeping the first of equal points is the deterministic tie-break; a point
        # shadowed that way could never be the answer of a bisect_left, so dropping it changes no lookup.
        raw = sorted((hash_key(f"{n.id}#{i}"), n.id) for n in ordered for i in range(vnodes * n.weight))
        points: list[int] = []
        point_nodes: list[Node] = []
        last = -1
        for point, node_id in raw:
            if point != last:
                points.append(point)
                point_nodes.append(by_id[node_id])
                last = point
        # A sentinel above every 64-bit hash that maps back to the first point makes the wrap-around free:
        # owner() is then a single bisect and index, with no branch. An empty ring's sentinel owns nothing.
        owners: list[Node | None] = [*point_nodes, point_nodes[0] if point_nodes else None]
        points.append(_KEYSPACE)

        self._points = points
        self._owners = owners
        self._point_nodes = point_nodes
        self._successors: dict[tuple[int, int], tuple[Node, ...]] = {}
        self._nodes = ordered
        self._by_id = by_id
        self._vnodes = vnodes
        canonical = json.dumps([_CHECKSUM_VERSION, vnodes, [[n.id, n.weight] for n in ordered]], separators=(",", ":"))
        self._checksum = blake2b(canonical.encode("ascii"), digest_size=6).hexdigest()

    # Read-only views: the ring is shared between threads and tasks without locks, so nothing may change it.
    @property
    def nodes(self) -> tuple[Node, ...]:
        """The members, sorted by id, so every process lists them in the same order."""
        return self._nodes

    @property
    def vnodes(self) -> int:
        """Points per unit of weight; part of the checksum because it changes every owner."""
        return self._vnodes

    @property
    def checksum(self) -> str:
        """12 hex chars identifying the ring's routing: two nodes with equal checksums agree on every owner.

        Built from the sorted ``(id, weight)`` pairs and ``vnodes`` only. Addresses are excluded on purpose:
        they may resolve differently per node while the routing is the same.
        """
        return self._checksum

    def owner(self, key_hash: int) -> Node | None:
        """The node owning a 64-bit key hash (from :func:`hash_key`), or ``None`` for an empty ring.

        This runs on every request, hence one ``bisect`` and one list index and nothing else.
        """
        return self._owners[bisect_left(self._points, key_hash)]

    def owner_of(self, key: str) -> Node | None:
        """The node owning ``key``; for callers that have not hashed the key already."""
        return self._owners[bisect_left(self._points, hash_key(key))]

    def successors(self, key_hash: int, n: int | None = None) -> tuple[Node, ...]:
        """The preference list for a key hash: the owner, then the next distinct nodes clockwise.

        This is the failover order. Walking the ring (rather than, say, sorting nodes by id) means that when
        the owner is down, its keys spread over the survivors exactly as they would if it left the ring, so
        a failover sends a key where it will live after the membership catches up.
        """
        if n is not None and n < 0:
            raise ValueError(f"n must be None or at least 0, got {n!r}.")
        limit = len(self._nodes) if n is None else min(n, len(self._nodes))
        if limit == 0:
            return ()
        point_nodes = self._point_nodes
        count = len(point_nodes)
        start = bisect_left(self._points, key_hash)
        if start >= count:  # the sentinel: wrap to the first point
            start = 0
        # Every key hash between two points has the same preference list: memoize short ones per (point, length);
        # every forward asks for one.
        memo_key = (start, limit)
        if limit <= 8:
            cached = self._successors.get(memo_key)
            if cached is not None:
                return cached
        found: list[Node] = []
        seen: set[str] = set()
        for i in range(start, start + count):
            node = point_nodes[i if i < count else i - count]
            if node.id not in seen:
                seen.add(node.id)
                found.append(node)
                if len(found) == limit:
                    break
        result = tuple(found)
        if limit <= 8:  # short lists only: memory stays at most 8 references per point
            self._successors[memo_key] = result
        return result

    def shares(self) -> dict[str, float]:
        """The fraction of the 64-bit keyspace each node id owns; the load a uniform key population gives it.

        Exact rather than sampled, so it can be shown in introspection and compared between nodes. Every
        member appears, even one whose points were all shadowed (share 0.0).
        """
        owned = dict.fromkeys(self._by_id, 0)
        start = 0
        for end, node in self._segments():
            if node is not None:
                owned[node.id] += end - start
            start = end
        return {node_id: size / _KEYSPACE for node_id, size in owned.items()}

    def moved_fraction(self, other: HashRing) -> float:
        """The fraction of the keyspace whose owner differs between this ring and ``other``.

        Computed exactly by merging both rings' segment boundaries, so a membership change can be logged with
        what it really costs in cache locality (about ``1/N`` for one node joining or leaving N). Owners are
        compared by id: a node whose address changed still holds its keys.
        """
        mine, theirs = self._segments(), other._segments()
        i = j = 0
        start = moved = 0
        while start < _KEYSPACE:
            end_a, node_a = mine[i]
            end_b, node_b = theirs[j]
            end = min(end_a, end_b)
            id_a = node_a.id if node_a is not None else None
            id_b = node_b.id if node_b is not None else None
            if id_a != id_b:
                moved += end - start
            start = end
            if end_a == end:
                i += 1
            if end_b == end:
                j += 1
        return moved / _KEYSPACE

    def _segments(self) -> list[tuple[int, Node | None]]:
        """The keyspace as consecutive half-open ranges ``[previous end, end)`` with their owners.

        Point ``p`` owns hashes up to and including ``p``, so its range ends at ``p + 1``; the sentinel's
        range ends at ``2**64`` and belongs to the first point's node.
        """
        ends = [p + 1 for p in self._points[:-1]]
        ends.append(_KEYSPACE)
        return list(zip(ends, self._owners, strict=True))

    def get(self, node_id: str) -> Node | None:
        """The member with this id, or ``None``; for looking up a peer named in a hop marker."""
        return self._by_id.get(node_id)

    def __len__(self) -> int:
        return len(self._nodes)

    def __contains__(self, item: object) -> bool:
        """A node id is a member; a :class:`Node` is a member only if it matches the member exactly."""
        if isinstance(item, str):
            return item in self._by_id
        if isinstance(item, Node):
            return self._by_id.get(item.id) == item
        return False

    def __iter__(self) -> Iterator[Node]:
        return iter(self._nodes)

    def __repr__(self) -> str:
        return (
            f"HashRing(nodes={len(self._nodes)}, vnodes={self._vnodes}, points={len(self._points) - 1}, "
            f"checksum={self._checksum!r})"
        )

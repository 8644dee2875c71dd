"""Consistent hashing with virtual nodes (``AFFINITY_RING=ring``, the default)."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable
from typing import ClassVar

from ._base import _CHECKSUM_VERSION, _KEYSPACE, _MEMO_LIMIT, DEFAULT_VNODES, MAX_POINTS, Node, Ring, _digest, hash_key

__all__ = ["HashRing"]


class HashRing(Ring):
    """An immutable consistent-hash ring (``AFFINITY_RING=ring``).

    Each node contributes ``vnodes * weight`` points; point ``i`` of node ``n`` is
    ``hash_key(f"{n.id}#{i}")``. A key hash belongs to the first point at or after it, wrapping past the top
    of the 64-bit space. Equal points go to the smaller node id, so the ring depends only on the set of
    ``(id, weight)`` pairs and ``vnodes``, never on input order or addresses.
    """

    __slots__ = ("_owners", "_point_nodes", "_points", "_successors")

    algorithm: ClassVar[str] = "ring"

    def __init__(self, nodes: Iterable[Node], *, vnodes: int = DEFAULT_VNODES) -> None:
        super().__init__(nodes, vnodes)
        ordered = self._nodes
        by_id = self._by_id
        raw = self._place(ordered)
        points: list[int] = []
        point_nodes: list[Node] = []
        last = -1
        for point, _, node_id in raw:
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
        # The form this checksum had before there was a choice of algorithm: "ring" is implied.
        self._checksum = _digest([_CHECKSUM_VERSION, vnodes, [[n.id, n.weight] for n in ordered]])

    def _place(self, ordered: tuple[Node, ...]) -> list[tuple[int, int, str]]:
        """Every point as ``(point, tie-break, node id)``, sorted: the first of equal points owns them.

        Sorting by (point, id) keeps the first of equal points as the deterministic tie-break; a point shadowed
        that way could never be the answer of a ``bisect_left``, so dropping it changes no lookup. Subclasses
        that reproduce a proxy's ring place their points the proxy's way here.
        """
        vnodes = self._vnodes
        _check_points(vnodes * sum(n.weight for n in ordered), f"vnodes={vnodes} times the total weight")
        return sorted((hash_key(f"{n.id}#{i}"), 0, n.id) for n in ordered for i in range(vnodes * n.weight))

    def owner(self, key_hash: int) -> Node | None:
        """The node owning a key hash (from :meth:`key_hash`), or ``None`` for an empty ring.

        This runs on every request, hence one ``bisect`` and one list index and nothing else.
        """
        return self._owners[bisect_left(self._points, key_hash)]

    def owner_of(self, key: str) -> Node | None:
        """The node owning ``key``; for callers that have not hashed the key already."""
        return self._owners[bisect_left(self._points, hash_key(key))]

    def _successors_of(self, key_hash: int, limit: int) -> tuple[Node, ...]:
        """The owner, then the next distinct nodes clockwise.

        Walking the ring (rather than, say, sorting nodes by id) means that when the owner is down, its keys
        spread over the survivors exactly as they would if it left the ring.
        """
        point_nodes = self._point_nodes
        count = len(point_nodes)
        start = bisect_left(self._points, key_hash)
        if start >= count:  # the sentinel: wrap to the first point
            start = 0
        # Every key hash between two points has the same preference list: memoize short ones per (point, length);
        # every forward asks for one.
        memo_key = (start, limit)
        if limit <= _MEMO_LIMIT:
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
        if limit <= _MEMO_LIMIT:  # short lists only: memory stays at most 8 references per point
            self._successors[memo_key] = result
        return result

    def shares(self) -> dict[str, float]:
        """The fraction of the 64-bit keyspace each node id owns, exactly (summed over its ring segments)."""
        owned = dict.fromkeys(self._by_id, 0)
        start = 0
        for end, node in self._segments():
            if node is not None:
                owned[node.id] += end - start
            start = end
        return {node_id: size / self._space for node_id, size in owned.items()}

    def moved_fraction(self, other: Ring) -> float:
        """The fraction of the keyspace whose owner differs between this ring and ``other``.

        Against another :class:`HashRing`, computed exactly by merging both rings' segment boundaries, so a
        membership change can be logged with what it really costs in cache locality (about ``1/N`` for one
        node joining or leaving N). Owners are compared by id: a node whose address changed keeps its keys.
        """
        if type(other) is not type(self):
            return super().moved_fraction(other)
        assert isinstance(other, HashRing)
        mine, theirs = self._segments(), other._segments()
        i = j = 0
        start = moved = 0
        while start < self._space:
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
        return moved / self._space

    def _segments(self) -> list[tuple[int, Node | None]]:
        """The keyspace as consecutive half-open ranges ``[previous end, end)`` with their owners.

        Point ``p`` owns hashes up to and including ``p``, so its range ends at ``p + 1``; the sentinel's
        range ends at ``2**64`` and belongs to the first point's node.
        """
        ends = [p + 1 for p in self._points[:-1]]
        ends.append(self._space)
        return list(zip(ends, self._owners, strict=True))

    def __repr__(self) -> str:
        return (
            f"HashRing(nodes={len(self._nodes)}, vnodes={self._vnodes}, points={len(self._points) - 1}, "
            f"checksum={self._checksum!r})"
        )


def _check_points(total: int, what: str) -> None:
    if total > MAX_POINTS:
        raise ValueError(
            f"This ring would have {total} points ({what}), more than the limit of {MAX_POINTS}; "
            "lower the node weights (or vnodes)."
        )

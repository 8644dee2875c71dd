"""Maglev hashing (``AFFINITY_RING=maglev``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

from ._base import _CHECKSUM_VERSION, _MEMO_LIMIT, DEFAULT_VNODES, Node, Ring, _digest, hash_key

__all__ = ["MAGLEV_TABLE_SIZES", "MaglevRing"]

MAGLEV_TABLE_SIZES = (65537, 131071, 262139, 524287, 1048573)
"""Prime Maglev table sizes; a table gets the smallest one with at least 100 slots per unit of total weight
(the paper's rule for shares within about 1%), so the largest bounds the total weight at 10,485."""


class MaglevRing(Ring):
    """Maglev hashing (``AFFINITY_RING=maglev``): a prime-sized lookup table indexed by ``key_hash % size``.

    Node ``n`` (index ``i`` in id order) has the permutation ``(offset + j * skip) % size`` with
    ``offset = hash_key(n.id + "#maglev-offset") % size`` and ``skip = hash_key(n.id + "#maglev-skip") %
    (size - 1) + 1``. The table is filled in rounds, nodes in id order, each taking the next free slot of its
    permutation; a node of weight ``w`` takes its turn in ``w / max weight`` of the rounds (as Envoy's
    ``maglev`` does), so its share is proportional to its weight to within a slot or two.

    Failover order: the owner, then the other nodes by how early their permutation reaches the key's slot
    (position ``j`` divided by the weight: when the owner is removed, the slot goes to whichever node reaches
    it first in the rebuilt table, which this predicts most of the time but not always: the benchmark measures
    how often). Building a table per removed node instead would make it exact at about one table build (and
    ``8 * size`` bytes) per member, which is too much to pay on every ring swap.
    """

    __slots__ = ("_inverse", "_offsets", "_size", "_successors", "_table", "_weights")

    algorithm: ClassVar[str] = "maglev"

    def __init__(self, nodes: Iterable[Node], *, vnodes: int = DEFAULT_VNODES, size: int | None = None) -> None:
        super().__init__(nodes, vnodes)
        ordered = self._nodes
        total = sum(n.weight for n in ordered)
        if size is None:
            size = next((s for s in MAGLEV_TABLE_SIZES if s >= 100 * total), 0)
            if not size:
                raise ValueError(
                    f"A Maglev table for a total weight of {total} would need more than {MAGLEV_TABLE_SIZES[-1]} "
                    "slots; lower the node weights."
                )
        elif size not in MAGLEV_TABLE_SIZES:
            raise ValueError(f"The Maglev table size must be one of {MAGLEV_TABLE_SIZES}, got {size!r}.")
        if not ordered:
            self._table: list[Node | None] = [None]
            self._size = 1
        else:
            self._table = self._populate(ordered, size)
            self._size = size
        self._offsets = [hash_key(f"{n.id}#maglev-offset") % size for n in ordered]
        # Position of slot c in node i's permutation: (c - offset) * skip^-1 mod size (size is prime).
        self._inverse = [pow(hash_key(f"{n.id}#maglev-skip") % (size - 1) + 1, -1, size) for n in ordered]
        top = max((n.weight for n in ordered), default=1)
        self._weights = [n.weight / top for n in ordered]
        self._successors: dict[tuple[int, int], tuple[Node, ...]] = {}
        self._checksum = _digest([_CHECKSUM_VERSION, "maglev", size, [[n.id, n.weight] for n in ordered]])

    @staticmethod
    def _populate(ordered: tuple[Node, ...], size: int) -> list[Node | None]:
        offsets = [hash_key(f"{n.id}#maglev-offset") % size for n in ordered]
        skips = [hash_key(f"{n.id}#maglev-skip") % (size - 1) + 1 for n in ordered]
        weights = [n.weight for n in ordered]
        top = max(weights)
        slots = [-1] * size
        cursor = offsets[:]  # the slot each node's permutation points at next
        targets = [0] * len(ordered)
        filled = 0
        rounds = 0
        while filled < size:
            rounds += 1
            for i, weight in enumerate(weights):
                if rounds * weight < targets[i]:
                    continue  # a lighter node sits this pass out
                targets[i] += top
                c, skip = cursor[i], skips[i]
                while slots[c] >= 0:
                    c += skip
                    if c >= size:
                        c -= size
                slots[c] = i
                c += skip
                cursor[i] = c - size if c >= size else c
                filled += 1
                if filled == size:
                    break
        return [ordered[i] for i in slots]

    @property
    def size(self) -> int:
        """Slots in the lookup table (a prime; part of the checksum because it changes owners)."""
        return self._size

    def owner(self, key_hash: int) -> Node | None:
        """One modulo and one list index."""
        return self._table[key_hash % self._size]

    def owner_of(self, key: str) -> Node | None:
        return self._table[hash_key(key) % self._size]

    def _successors_of(self, key_hash: int, limit: int) -> tuple[Node, ...]:
        slot = key_hash % self._size
        memo_key = (slot, limit)
        if limit <= _MEMO_LIMIT:
            cached = self._successors.get(memo_key)
            if cached is not None:
                return cached
        owner = self._table[slot]
        assert owner is not None  # limit > 0: the ring has members, so every slot is filled
        size = self._size
        ranked = sorted(
            ((slot - offset) * inverse % size / weight, i)
            for i, (offset, inverse, weight) in enumerate(zip(self._offsets, self._inverse, self._weights, strict=True))
        )
        nodes = self._nodes
        order = [owner, *(nodes[i] for _, i in ranked if nodes[i] is not owner)]
        result = tuple(order[:limit])
        if limit <= _MEMO_LIMIT:
            self._successors[memo_key] = result
        return result

    def shares(self) -> dict[str, float]:
        """Each node's slots over the table size (exact to within ``size / 2**64``)."""
        owned = dict.fromkeys(self._by_id, 0)
        for node in self._table:
            if node is not None:
                owned[node.id] += 1
        return {node_id: count / self._size for node_id, count in owned.items()}

    def moved_fraction(self, other: Ring) -> float:
        """Exact (slot by slot) against a table of the same size, estimated otherwise."""
        if not isinstance(other, MaglevRing) or other._size != self._size or not self._nodes or not other._nodes:
            return super().moved_fraction(other)
        moved = sum(
            1
            for a, b in zip(self._table, other._table, strict=True)
            if a is not b and (a is None or b is None or a.id != b.id)
        )
        return moved / self._size

    def __repr__(self) -> str:
        return f"MaglevRing(nodes={len(self._nodes)}, size={self._size}, checksum={self._checksum!r})"

"""Which node owns an affinity key: three interchangeable algorithms behind one interface.

Every node of a cluster builds its ring independently from the membership it sees, and a request is only
routed well if they all agree. So everything here is a pure function of the membership and the configured
algorithm: no randomness, no process state, no dependence on the order in which peers were listed or on how
their addresses resolved.

The algorithms (``AFFINITY_RING``; measured in ``docs/benchmarks.md``, "Choosing the ring algorithm"):

* ``ring``, :class:`HashRing`: **consistent hashing with virtual nodes** (Karger et al.), the default. When a
  node joins or leaves, only the keys it gains or loses move (about ``1/N`` of them), so the caches held on the
  other nodes stay warm. ``vnodes`` points per unit of weight (160 by default, as in ketama and nginx's
  ``hash ... consistent``) keep the busiest node typically 5-20% above the mean, and spread the keys of a
  departing node over all survivors. A lookup is one ``bisect``; the failover order is the walk clockwise,
  exactly the owners the ring would have without the nodes before.
* ``maglev``, :class:`MaglevRing`: **Maglev hashing** (Eisenbud et al., NSDI 2016). Each node fills slots of a
  prime-sized lookup table (65,537 slots, more for large total weights) in turn along its own permutation, so
  the shares are equal to within one slot (weights by table share). A lookup is one modulo and one index, the
  fastest here. The price: a change moves somewhat more than the ideal ``1/N`` of the keys, and the failover
  order (ranked by how early each node's permutation reaches the key's slot) only mostly agrees with the
  owners of the table rebuilt without the failed node; the benchmark measures both.
* ``rendezvous``, :class:`RendezvousRing`: **highest random weight** (Thaler and Ravishankar), weighted as in
  Schindelhauer and Schomaker: node ``i`` scores ``w_i / -ln(u_i)`` for a per-(key, node) uniform ``u_i``, the
  highest score owns the key. Moves exactly the ideal fraction, balances as well as its hash, and the failover
  order is exactly "the owner after removing the nodes before". It costs O(N) per lookup (tens of
  microseconds at 100 nodes in Python), which is why it is not the default.

Shared rules:

* **blake2b, 64 bits** for keys (:func:`hash_key`), computed once per request by the caller (the router keeps a
  memo of key hashes); every algorithm then works on that integer. It is in the standard library, well mixed
  in every bit, and the same on every platform.
* **Never ``hash()``.** Python salts ``str`` hashes per process (``PYTHONHASHSEED``); two workers using it
  would disagree about every owner and forward requests back and forth.
* **The checksum names the algorithm**, so two nodes configured with different algorithms (or ``vnodes``, or
  table sizes) show as ring skew. The ``ring`` algorithm keeps the checksum form it always had, so upgrading
  does not show a skew that is not there.

Rings are immutable. A membership change builds a new one and swaps one reference, so readers on the hot path
never take a lock and never see a half-built ring.
"""

from __future__ import annotations

import json
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from hashlib import blake2b
from math import log
from typing import ClassVar

__all__ = [
    "DEFAULT_ALGORITHM",
    "DEFAULT_VNODES",
    "MAGLEV_TABLE_SIZES",
    "MAX_POINTS",
    "RING_ALGORITHMS",
    "HashRing",
    "MaglevRing",
    "Node",
    "RendezvousRing",
    "Ring",
    "build_ring",
    "hash_key",
]

DEFAULT_VNODES = 160
"""Points per unit of weight. At three nodes, max/mean load is about 1.06 typically and under 1.2 nearly
always; more points buy balance with build time and memory (about 50 bytes a point)."""

MAX_POINTS = 1_000_000
"""Upper bound on the points of one ring. Weights may come from DNS (SRV records); a bogus weight must fail
loudly at construction rather than make every node spend seconds and hundreds of MB building a ring."""

RING_ALGORITHMS = ("ring", "maglev", "rendezvous")
"""The values of ``AFFINITY_RING``."""

DEFAULT_ALGORITHM = "ring"
"""Chosen from ``bench/ring_bench.py``'s table: see docs/benchmarks.md, "Choosing the ring algorithm"."""

MAGLEV_TABLE_SIZES = (65537, 131071, 262139, 524287, 1048573)
"""Prime Maglev table sizes; a table gets the smallest one with at least 100 slots per unit of total weight
(the paper's rule for shares within about 1%), so the largest bounds the total weight at 10,485."""

_KEYSPACE = 1 << 64
_MASK = _KEYSPACE - 1
_MIX = 0xFF51AFD7ED558CCD  # murmur3's fmix64 multiplier: odd, well spread bits
_from_bytes = int.from_bytes  # bound once: looking the classmethod up on int costs as much as the conversion
_CHECKSUM_VERSION = 1  # bump if the point naming or hash changes: nodes on different versions then disagree
_MEMO_LIMIT = 8  # successor lists up to this length are memoized
_RENDEZVOUS_MEMO = 65536  # key hashes whose rendezvous preference lists are kept (then the memo is cleared)
_SAMPLES = 16384  # key hashes that estimate moved_fraction between rings no exact method covers


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


def _digest(canonical: object) -> str:
    text = json.dumps(canonical, separators=(",", ":"))
    return blake2b(text.encode("ascii"), digest_size=6).hexdigest()


_sample_hashes: list[int] = []


def _samples() -> list[int]:
    """Fixed pseudo-random key hashes (splitmix64 from 0), the same in every process; made on first use."""
    if not _sample_hashes:
        state = 0
        for _ in range(_SAMPLES):
            state = (state + 0x9E3779B97F4A7C15) & _MASK
            z = state
            z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
            z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
            _sample_hashes.append(z ^ (z >> 31))
    return _sample_hashes


class Ring:
    """What every algorithm offers: owners, failover order, shares, moved fraction, checksum, membership.

    Not instantiated itself: build a :class:`HashRing`, :class:`MaglevRing` or :class:`RendezvousRing`, or
    call :func:`build_ring` with the configured algorithm's name. Members are unique by id and kept sorted by
    id, so a ring depends only on the set of ``(id, weight)`` pairs and the algorithm's parameters.
    """

    __slots__ = ("_by_id", "_checksum", "_nodes", "_vnodes")

    algorithm: ClassVar[str] = ""
    """The name this algorithm has in ``AFFINITY_RING``."""

    def __init__(self, nodes: Iterable[Node], vnodes: int) -> None:
        if isinstance(vnodes, bool) or not isinstance(vnodes, int) or vnodes < 1:
            raise ValueError(f"vnodes must be an integer of at least 1, got {vnodes!r}.")
        by_id: dict[str, Node] = {}
        for node in nodes:
            if not isinstance(node, Node):
                raise TypeError(f"A ring is built from Node objects, got {type(node).__name__}.")
            if node.id in by_id:
                raise ValueError(f"Node id {node.id!r} appears more than once; node ids must be unique.")
            by_id[node.id] = node
        self._by_id = by_id
        self._nodes = tuple(sorted(by_id.values(), key=lambda n: n.id))
        self._vnodes = vnodes
        self._checksum = ""

    # Read-only views: the ring is shared between threads and tasks without locks, so nothing may change it.
    @property
    def nodes(self) -> tuple[Node, ...]:
        """The members, sorted by id, so every process lists them in the same order."""
        return self._nodes

    @property
    def vnodes(self) -> int:
        """Points per unit of weight of the ``ring`` algorithm (the others accept and ignore it)."""
        return self._vnodes

    @property
    def checksum(self) -> str:
        """12 hex chars identifying the routing: two nodes with equal checksums agree on every owner.

        Built from the algorithm, its parameters and the sorted ``(id, weight)`` pairs only. Addresses are
        excluded on purpose: they may resolve differently per node while the routing is the same.
        """
        return self._checksum

    def owner(self, key_hash: int) -> Node | None:
        """The node owning a 64-bit key hash (from :func:`hash_key`), or ``None`` for an empty ring."""
        raise NotImplementedError

    def owner_of(self, key: str) -> Node | None:
        """The node owning ``key``; for callers that have not hashed the key already."""
        return self.owner(hash_key(key))

    def successors(self, key_hash: int, n: int | None = None) -> tuple[Node, ...]:
        """The failover order for a key hash: the owner, then the other nodes, each once, ``n`` at most.

        Without the nodes before it, each node is the key's owner (exactly for ``ring`` and ``rendezvous``;
        mostly for ``maglev``), so a failover sends a key where it will live once membership catches up.
        """
        if n is not None and n < 0:
            raise ValueError(f"n must be None or at least 0, got {n!r}.")
        limit = len(self._nodes) if n is None else min(n, len(self._nodes))
        if limit == 0:
            return ()
        return self._successors_of(key_hash, limit)

    def _successors_of(self, key_hash: int, limit: int) -> tuple[Node, ...]:
        raise NotImplementedError

    def shares(self) -> dict[str, float]:
        """The fraction of the 64-bit keyspace each node id owns: the load a uniform key population gives it.

        Every member appears, even one that owns nothing (share 0.0).
        """
        raise NotImplementedError

    def moved_fraction(self, other: Ring) -> float:
        """The fraction of the keyspace whose owner (compared by id) differs between this ring and ``other``.

        Exact where the algorithm allows (two ``ring`` rings; two ``maglev`` tables of one size; two
        ``rendezvous`` rings whose common members kept their weights); otherwise estimated on 16,384 fixed
        key hashes (within about 0.4 percentage points).
        """
        samples = _samples()
        moved = 0
        for h in samples:
            a, b = self.owner(h), other.owner(h)
            if (a.id if a is not None else None) != (b.id if b is not None else None):
                moved += 1
        return moved / len(samples)

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
        return f"{type(self).__name__}(nodes={len(self._nodes)}, checksum={self._checksum!r})"


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
        # The form this checksum had before there was a choice of algorithm: "ring" is implied.
        self._checksum = _digest([_CHECKSUM_VERSION, vnodes, [[n.id, n.weight] for n in ordered]])

    def owner(self, key_hash: int) -> Node | None:
        """The node owning a 64-bit key hash (from :func:`hash_key`), or ``None`` for an empty ring.

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
        return {node_id: size / _KEYSPACE for node_id, size in owned.items()}

    def moved_fraction(self, other: Ring) -> float:
        """The fraction of the keyspace whose owner differs between this ring and ``other``.

        Against another :class:`HashRing`, computed exactly by merging both rings' segment boundaries, so a
        membership change can be logged with what it really costs in cache locality (about ``1/N`` for one
        node joining or leaving N). Owners are compared by id: a node whose address changed keeps its keys.
        """
        if not isinstance(other, HashRing):
            return super().moved_fraction(other)
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

    def __repr__(self) -> str:
        return (
            f"HashRing(nodes={len(self._nodes)}, vnodes={self._vnodes}, points={len(self._points) - 1}, "
            f"checksum={self._checksum!r})"
        )


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
                    continue  # a lighter node sits this round out
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


class RendezvousRing(Ring):
    """Rendezvous (highest random weight) hashing (``AFFINITY_RING=rendezvous``).

    Node ``n`` draws ``x = ((key_hash ^ hash_key(n.id)) * 0xFF51AFD7ED558CCD) % 2**64`` for a key; with equal
    weights the largest ``x`` owns the key, and with weights the largest ``w / -ln(u)``, where ``u = (x // 2**11
    + 0.5) / 2**53`` (Schindelhauer and Schomaker's weighted form: node ``i`` wins with probability ``w_i / W``).
    Ties go to the smaller id. The failover order is the nodes by descending score: removing the owner makes
    the second the owner, exactly, and a node joining takes exactly the keys it scores highest on.

    A lookup scores every node: O(N), about 0.2 us per member in CPython.
    """

    __slots__ = ("_entries", "_memo", "_scored", "_weighted")

    algorithm: ClassVar[str] = "rendezvous"

    def __init__(self, nodes: Iterable[Node], *, vnodes: int = DEFAULT_VNODES) -> None:
        super().__init__(nodes, vnodes)
        ordered = self._nodes
        self._entries = [(hash_key(n.id), n) for n in ordered]
        self._scored = [(hash_key(n.id), float(n.weight), n) for n in ordered]
        self._weighted = len({n.weight for n in ordered}) > 1
        self._memo: dict[tuple[int, int], tuple[Node, ...]] = {}
        self._checksum = _digest([_CHECKSUM_VERSION, "rendezvous", [[n.id, n.weight] for n in ordered]])

    def owner(self, key_hash: int) -> Node | None:
        best: Node | None = None
        if self._weighted:
            top = -1.0
            for seed, weight, node in self._scored:
                score = weight / -log((((key_hash ^ seed) * _MIX & _MASK) >> 11) * 2.0**-53 + 2.0**-54)
                if score > top:
                    top, best = score, node
            return best
        high = -1
        for seed, node in self._entries:
            x = (key_hash ^ seed) * _MIX & _MASK
            if x > high:
                high, best = x, node
        return best

    def _successors_of(self, key_hash: int, limit: int) -> tuple[Node, ...]:
        memo_key = (key_hash, limit)
        if limit <= _MEMO_LIMIT:
            cached = self._memo.get(memo_key)
            if cached is not None:
                return cached
        if self._weighted:
            ranked = sorted(
                (-(weight / -log((((key_hash ^ seed) * _MIX & _MASK) >> 11) * 2.0**-53 + 2.0**-54)), i)
                for i, (seed, weight, _) in enumerate(self._scored)
            )
        else:
            ranked = sorted((-((key_hash ^ seed) * _MIX & _MASK), i) for i, (seed, _) in enumerate(self._entries))
        nodes = self._nodes
        result = tuple(nodes[i] for _, i in ranked[:limit])
        if limit <= _MEMO_LIMIT:
            if len(self._memo) >= _RENDEZVOUS_MEMO:  # a bounded memo: hot keys repeat, cold ones must not grow it
                self._memo.clear()
            self._memo[memo_key] = result
        return result

    def shares(self) -> dict[str, float]:
        """``w_i / W``: exact in expectation, and the hash makes the deviation over 2**64 hashes negligible."""
        total = sum(n.weight for n in self._nodes)
        return {n.id: n.weight / total for n in self._nodes}

    def moved_fraction(self, other: Ring) -> float:
        """Exact when the members both rings share have the same weights: a key moves exactly when the
        highest scorer over both memberships is a member of only one of them."""
        if not isinstance(other, RendezvousRing):
            return super().moved_fraction(other)
        mine, theirs = self._by_id, other._by_id
        if any(theirs[i].weight != node.weight for i, node in mine.items() if i in theirs):
            return super().moved_fraction(other)
        if not mine or not theirs:
            return 0.0 if not mine and not theirs else 1.0
        union = {**mine, **theirs}
        only = sum(node.weight for i, node in union.items() if (i in mine) != (i in theirs))
        return only / sum(node.weight for node in union.values())

    def __repr__(self) -> str:
        return f"RendezvousRing(nodes={len(self._nodes)}, checksum={self._checksum!r})"


_ALGORITHMS: dict[str, type[HashRing] | type[MaglevRing] | type[RendezvousRing]] = {
    "ring": HashRing,
    "maglev": MaglevRing,
    "rendezvous": RendezvousRing,
}


def build_ring(nodes: Iterable[Node], algorithm: str = DEFAULT_ALGORITHM, *, vnodes: int = DEFAULT_VNODES) -> Ring:
    """The ring of ``algorithm`` (one of :data:`RING_ALGORITHMS`, as ``AFFINITY_RING`` names it) over ``nodes``."""
    try:
        cls = _ALGORITHMS[algorithm]
    except (KeyError, TypeError):
        raise ValueError(
            f"The ring algorithm must be one of {', '.join(RING_ALGORITHMS)}, got {algorithm!r}."
        ) from None
    return cls(nodes, vnodes=vnodes)

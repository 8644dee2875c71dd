"""What every ring algorithm shares: the member type, the key hash, the interface, the checksum digest.

A pure leaf: nothing here imports the rest of affinity_mw, so the algorithms can be tested, benchmarked and
reasoned about alone. Why each rule holds is told in the package's docstring (``affinity_mw/ring/__init__.py``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from hashlib import blake2b
from typing import ClassVar

__all__ = ["DEFAULT_VNODES", "MAX_POINTS", "Node", "Ring", "hash_key", "key_bytes"]

DEFAULT_VNODES = 160
"""Points per unit of weight. At three nodes, max/mean load is about 1.06 typically and under 1.2 nearly
always; more points buy balance with build time and memory (about 50 bytes a point)."""

MAX_POINTS = 1_000_000
"""Upper bound on the points of one ring. Weights may come from DNS (SRV records); a bogus weight must fail
loudly at construction rather than make every node spend seconds and hundreds of MB building a ring."""

_KEYSPACE = 1 << 64
_MASK = _KEYSPACE - 1
_from_bytes = int.from_bytes  # bound once: looking the classmethod up on int costs as much as the conversion
_CHECKSUM_VERSION = 1  # bump if the point naming or hash changes: nodes on different versions then disagree
_MEMO_LIMIT = 8  # successor lists up to this length are memoized
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


def key_bytes(key: str) -> bytes:
    """The bytes a front proxy hashed for ``key``: latin-1 when the key fits (header and cookie values reach the
    key sources as latin-1 text of their raw bytes), else UTF-8 with lone surrogates passed through."""
    try:
        return key.encode("latin-1")
    except UnicodeEncodeError:
        return key.encode("utf-8", "surrogatepass")


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

    Not instantiated itself: build one of the algorithms' classes, or call :func:`affinity_mw.ring.build_ring`
    with the configured algorithm's name. Members are unique by id and kept sorted by id, so a ring depends
    only on the set of ``(id, weight)`` pairs and the algorithm's parameters.
    """

    __slots__ = ("_by_id", "_checksum", "_nodes", "_vnodes")

    algorithm: ClassVar[str] = ""
    """The name this algorithm has in ``AFFINITY_RING``."""

    _space: ClassVar[int] = _KEYSPACE
    """The size of the key-hash space (``2**64``; ``2**32`` for the proxies' CRC32 and sdbm hashes)."""

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
        """The node owning a key hash (from :meth:`key_hash`), or ``None`` for an empty ring."""
        raise NotImplementedError

    def key_hash(self, key: str) -> int:
        """The integer this algorithm places ``key`` by: :func:`hash_key` here; a ring that reproduces a
        proxy's placement hashes the key the way that proxy does (``nginx``: CRC32)."""
        return hash_key(key)

    def owner_of(self, key: str) -> Node | None:
        """The node owning ``key``; for callers that have not hashed the key already."""
        return self.owner(self.key_hash(key))

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
            a, b = self.owner(h % self._space), other.owner(h % other._space)
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

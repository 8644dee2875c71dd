"""Which node owns an affinity key: interchangeable algorithms behind one interface, one module each.

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

* ``nginx``, :class:`NginxRing` (``_nginx.py``): **nginx's** ``hash $key consistent`` **reproduced**, point for
  point, so an nginx in front sends each request straight to the node this ring names (no hop). CRC32 key
  hashes, 160 points per unit of weight, servers named ``HOST:PORT``.

Shared rules:

* **blake2b, 64 bits** for keys (:func:`hash_key`), computed once per request by the caller (the router keeps a
  memo of key hashes) through :meth:`Ring.key_hash`; every algorithm then works on that integer. The proxy rings
  hash keys the proxy's way instead (32 bits). It is in the standard library, well mixed
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

from collections.abc import Iterable

from ._base import DEFAULT_VNODES, MAX_POINTS, Node, Ring, hash_key, key_bytes
from ._hashring import HashRing
from ._maglev import MAGLEV_TABLE_SIZES, MaglevRing
from ._nginx import NginxRing, nginx_server
from ._rendezvous import RendezvousRing

__all__ = [
    "DEFAULT_ALGORITHM",
    "DEFAULT_VNODES",
    "MAGLEV_TABLE_SIZES",
    "MAX_POINTS",
    "RING_ALGORITHMS",
    "HashRing",
    "MaglevRing",
    "NginxRing",
    "Node",
    "RendezvousRing",
    "Ring",
    "build_ring",
    "hash_key",
    "key_bytes",
    "nginx_server",
]

_ALGORITHMS: dict[str, type[HashRing] | type[MaglevRing] | type[RendezvousRing]] = {
    "ring": HashRing,
    "maglev": MaglevRing,
    "rendezvous": RendezvousRing,
    "nginx": NginxRing,
}

RING_ALGORITHMS = tuple(_ALGORITHMS)
"""The values of ``AFFINITY_RING``."""

DEFAULT_ALGORITHM = "ring"
"""Chosen from ``bench/ring_bench.py``'s table: see docs/benchmarks.md, "Choosing the ring algorithm"."""


def build_ring(nodes: Iterable[Node], algorithm: str = DEFAULT_ALGORITHM, *, vnodes: int = DEFAULT_VNODES) -> Ring:
    """The ring of ``algorithm`` (one of :data:`RING_ALGORITHMS`, as ``AFFINITY_RING`` names it) over ``nodes``."""
    try:
        cls = _ALGORITHMS[algorithm]
    except (KeyError, TypeError):
        raise ValueError(
            f"The ring algorithm must be one of {', '.join(RING_ALGORITHMS)}, got {algorithm!r}."
        ) from None
    return cls(nodes, vnodes=vnodes)

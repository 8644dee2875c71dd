"""nginx's ``hash <key> consistent;`` reproduced (``AFFINITY_RING=nginx``), so an nginx in front and the nodes agree.

nginx builds its ring once per configuration (``ngx_http_upstream_init_chash`` in
``ngx_http_upstream_hash_module.c``): each ``server HOST:PORT weight=W`` is split at its last colon;
``base = crc32(HOST + b"\\0" + PORT)``; the server gets ``160 * W`` points, point ``j`` being the CRC32 continued
from ``base`` over the previous point's four little-endian bytes (zero before the first). The points are sorted
and equal ones are dropped, keeping the first. A request's key hashes to ``crc32(key)``; its server is the first
point at or after that, wrapping to the first point. When that server fails, nginx tries the following points
and skips servers already tried, so its failover order is the next distinct servers clockwise, which is what
:meth:`~affinity_mw.ring.HashRing.successors` walks here.

Two details decide agreement in edge cases, and both are pinned by the real-nginx test:

* **Server order.** Equal points are rare (CRC32 collisions among ``160 x`` total-weight points) but possible.
  nginx sorts with the C library's ``qsort``, which in glibc is a merge sort and keeps equal points in the order
  the servers are written; the first is kept. This ring lists servers sorted by node id, the order in which
  ``affinity-mw edge nginx`` writes them, so an upstream block written that way breaks ties the same way.
* **The key's bytes.** nginx hashes the variable's raw bytes. Header and cookie values reach the key sources as
  latin-1 text, so their latin-1 encoding is those bytes again; a key with characters beyond latin-1 (a decoded
  query or path) hashes as UTF-8, which agrees with nginx whenever nginx saw it unescaped.

A single server, or a request with an empty key, is chosen by nginx's round robin; both cases have one
candidate or no key here, so they agree or do not matter.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable
from typing import ClassVar
from zlib import crc32

from ._base import _CHECKSUM_VERSION, DEFAULT_VNODES, Node, _digest, key_bytes
from ._hashring import HashRing, _check_points

__all__ = ["NGINX_POINTS", "NginxRing", "nginx_server"]

_M32 = 0xFFFFFFFF

NGINX_POINTS = 160
"""Points per unit of weight: fixed by nginx (``AFFINITY_VNODES`` does not change this ring)."""


def nginx_server(node: Node) -> str:
    """The ``HOST:PORT`` nginx's ``server`` directive must name for ``node``: its id without the scheme.

    The ring hashes this text, so the upstream block must spell it exactly so: an IP address is not the same
    server as a host name resolving to it, and ``10.0.0.1`` without a port is not ``10.0.0.1:80``. An id that is
    not a URL is used as it is.
    """
    node_id = node.id
    scheme, sep, rest = node_id.partition("://")
    return rest.rstrip("/") if sep and scheme in ("http", "https") else node_id


def _host_port(server: str) -> tuple[bytes, bytes]:
    """nginx's split: the port is the digits after the last colon (none for ``unix:`` or a bare host)."""
    data = server.encode("utf-8", "surrogatepass")
    if data[:5].lower() == b"unix:":
        return data[5:], b""
    host, sep, port = data.rpartition(b":")
    if sep and port.isdigit():
        return host, port
    if sep and not port:
        return host, b""
    return data, b""


class NginxRing(HashRing):
    """The ring of nginx's ``hash ... consistent``, for servers written as :func:`nginx_server` names them.

    Key hashes are 32-bit: use :meth:`key_hash` (``crc32`` of the key's bytes), not
    :func:`~affinity_mw.ring.hash_key`. ``vnodes`` is accepted for a uniform constructor and ignored.
    """

    __slots__ = ()

    algorithm: ClassVar[str] = "nginx"
    _space: ClassVar[int] = 1 << 32

    def __init__(self, nodes: Iterable[Node], *, vnodes: int = DEFAULT_VNODES) -> None:
        super().__init__(nodes, vnodes=vnodes)
        self._checksum = _digest([_CHECKSUM_VERSION, "nginx", [[n.id, n.weight] for n in self._nodes]])

    def _place(self, ordered: tuple[Node, ...]) -> list[tuple[int, int, str]]:
        _check_points(NGINX_POINTS * sum(n.weight for n in ordered), "160 times the total weight")
        raw: list[tuple[int, int, str]] = []
        for order, node in enumerate(ordered):
            host, port = _host_port(nginx_server(node))
            base = crc32(host + b"\0" + port)
            previous = 0
            for _ in range(NGINX_POINTS * node.weight):
                previous = crc32(previous.to_bytes(4, "little"), base)
                raw.append((previous, order, node.id))
        raw.sort()  # (point, order): equal points keep the order the servers are written in, as glibc's qsort
        return raw

    def key_hash(self, key: str) -> int:
        """``crc32`` of the key's bytes, as nginx hashes the value of its ``hash`` variable."""
        return crc32(key_bytes(key))

    def owner(self, key_hash: int) -> Node | None:
        """The owner of a 32-bit key hash; a wider one (a :func:`~affinity_mw.ring.hash_key` value) is reduced to
        its low 32 bits, so any integer lands somewhere on the ring rather than all on the first point."""
        return self._owners[bisect_left(self._points, key_hash & _M32)]

    def _successors_of(self, key_hash: int, limit: int) -> tuple[Node, ...]:
        return super()._successors_of(key_hash & _M32, limit)

    def owner_of(self, key: str) -> Node | None:
        return self.owner(crc32(key_bytes(key)))

    def __repr__(self) -> str:
        return f"NginxRing(nodes={len(self._nodes)}, points={len(self._points) - 1}, checksum={self._checksum!r})"

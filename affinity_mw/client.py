"""httpx transports that send each request straight to its key's owner: zero hops for callers in the cluster.

A service calling an affinity-mw cluster through a load balancer pays a forward on ``(n - 1) / n`` of its
requests. These transports compute the owner the way the nodes do (the same membership settings, static or
DNS, the same ring and the same ``AFFINITY_KEY`` sources, read from the *outgoing* request) and connect to it
directly::

    import httpx
    from affinity_mw.client import AffinityTransport

    client = httpx.Client(base_url="http://app", transport=AffinityTransport(key="header:X-Tenant"))
    client.get("/orders", headers={"X-Tenant": "acme"})    # sent to acme's owner

The URL's scheme, host and port are replaced by the chosen node's; the path, query, headers and body go as they
are. A request the transport cannot place (no key, an empty ring) goes to any node, in turn, and the nodes'
middleware routes it. When connecting to a node fails (nothing was sent, so any method may be retried), the
request goes to the key's next owner, as the nodes fail over, and the node is set aside after
``AFFINITY_EJECT_AFTER`` failures in a row. Any other error is the caller's, as with a plain transport.

The owner a transport computes is a routing hint, never a trust decision: the node that receives the request
routes it again and forwards it once if it disagrees (during a membership change, say).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

import httpx

from .config import Settings
from .edge import routing_settings
from .health import PeerHealth
from .membership import membership_from_settings
from .request import RequestView
from .ring import Node

__all__ = ["AffinityTransport", "AsyncAffinityTransport"]

_FAILOVER = (httpx.ConnectError, httpx.ConnectTimeout)  # raised before a byte of the request was sent


class _Placement:
    """What both transports share and that does no I/O: settings, membership, the choice of nodes."""

    def __init__(self, settings: Settings | None, options: Mapping[str, Any], environ: Mapping[str, str] | None):
        self.settings = settings if settings is not None else routing_settings(options, environ)
        self.membership = membership_from_settings(self.settings)
        self.extractor = self.settings.extractor
        self.health = PeerHealth(eject_after=self.settings.eject_after, base=self.settings.eject_time)
        self._turn = itertools.count()

    def candidates(self, request: httpx.Request) -> list[Node]:
        """The nodes to try, in order: the key's owner and successors, or every node in turn for no key."""
        ring = self.membership.ring
        nodes = ring.nodes
        if not nodes:
            return []
        key = self._key(request)
        if key is None:
            start = next(self._turn) % len(nodes)
            order = [*nodes[start:], *nodes[:start]]
        else:
            order = list(ring.successors(ring.key_hash(key), self.settings.max_attempts + 1))
        usable = [node for node in order if self.health.usable(node.id)]
        return usable or order  # everyone set aside: try them anyway rather than fail without trying

    def _key(self, request: httpx.Request) -> str | None:
        if self.extractor is None:
            return None
        url = request.url
        headers = [(name.lower(), value) for name, value in request.headers.raw]
        view = RequestView(request.method, url.path, url.query, headers, None, url.scheme)
        key = self.extractor(view)
        if not key or len(key) > self.settings.max_key_length:
            return None
        return key

    @staticmethod
    def aim(request: httpx.Request, node: Node) -> None:
        """Point ``request`` at ``node``: its scheme, host and port, and a Host header naming it."""
        address = httpx.URL(node.address)
        request.url = request.url.copy_with(scheme=address.scheme, host=address.host, port=address.port)
        request.headers["Host"] = address.netloc.decode("ascii")

    def close(self) -> None:
        close = getattr(self.membership, "close", None)
        if close is not None:
            close()


class AffinityTransport(httpx.BaseTransport):
    """A synchronous httpx transport that sends each request to its key's owner.

    ``settings`` (a :class:`~affinity_mw.config.Settings`) or keyword ``options`` over the ``AFFINITY_*``
    environment give the membership and the key sources, exactly as the middleware reads them; no secret is
    needed, since the transport signs nothing. ``transport`` is the one that does the I/O (by default an
    ``httpx.HTTPTransport`` with keep-alive to every node).
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        transport: httpx.BaseTransport | None = None,
        environ: Mapping[str, str] | None = None,
        **options: Any,
    ) -> None:
        self._placement = _Placement(settings, options, environ)
        self._transport = transport if transport is not None else httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        nodes = self._placement.candidates(request)
        if not nodes:
            return self._transport.handle_request(request)
        for node in nodes[:-1]:
            try:
                return self._send(request, node)
            except _FAILOVER:
                continue
        return self._send(request, nodes[-1])

    def _send(self, request: httpx.Request, node: Node) -> httpx.Response:
        self._placement.aim(request, node)
        try:
            response = self._transport.handle_request(request)
        except _FAILOVER:
            self._placement.health.failure(node.id)
            raise
        self._placement.health.success(node.id)
        return response

    def close(self) -> None:
        self._placement.close()
        self._transport.close()


class AsyncAffinityTransport(httpx.AsyncBaseTransport):
    """The asynchronous twin of :class:`AffinityTransport`, for ``httpx.AsyncClient``."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        environ: Mapping[str, str] | None = None,
        **options: Any,
    ) -> None:
        self._placement = _Placement(settings, options, environ)
        self._transport = transport if transport is not None else httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        nodes = self._placement.candidates(request)
        if not nodes:
            return await self._transport.handle_async_request(request)
        for node in nodes[:-1]:
            try:
                return await self._send(request, node)
            except _FAILOVER:
                continue
        return await self._send(request, nodes[-1])

    async def _send(self, request: httpx.Request, node: Node) -> httpx.Response:
        self._placement.aim(request, node)
        try:
            response = await self._transport.handle_async_request(request)
        except _FAILOVER:
            self._placement.health.failure(node.id)
            raise
        self._placement.health.success(node.id)
        return response

    async def aclose(self) -> None:
        self._placement.close()
        await self._transport.aclose()

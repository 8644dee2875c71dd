"""Routing tests without a cluster: N in-process nodes of your app, wired to each other without sockets.

A pytest plugin (registered through the ``pytest11`` entry point, so installing affinity-mw is enough): the
``affinity_cluster`` fixture starts N nodes of an app, each its own instance behind its own middleware, with its
own ``AFFINITY_SELF`` among common peers. A node forwards to another through httpx's ``ASGITransport`` or
``WSGITransport`` handed to the middleware as its client, so a hop runs the real forward, marker and all, in
memory::

    def test_one_tenant_one_node(affinity_cluster):
        cluster = affinity_cluster("myapp.main:app", nodes=3, key="header:X-Tenant")
        served = {cluster.post(i, "/hits", headers={"X-Tenant": "acme"}).served_by for i in range(3)}
        assert served == {cluster.owner("acme")}

The app is given one of two ways:

- ``"module:attr"`` or ``"path/to/file.py:attr"``: the module is loaded once per node, as a module of its own,
  with the node's ``AFFINITY_*`` variables set, so each node has its own module state (an in-memory cache, a
  counter) as separate processes would. The app adds the middleware itself, as 12-factor apps do: a Starlette
  or FastAPI app with ``app.add_middleware(AffinityMiddleware)``, or a Flask app with ``Affinity(app)``.
- a factory, ``factory(**options) -> app``, called once per node with the options to pass to the middleware
  (``peers``, ``self_url``, ``secret``, ``debug_headers``, ``transport`` and yours), for apps that build
  themselves, or for Django: ``lambda **options: wrap(get_wsgi_application(), **options)``. ``transport`` is an
  ``httpx.AsyncClient``, or with ``interface="wsgi"`` an ``httpx.Client``.

Responses carry ``X-Affinity-Served-By`` and ``X-Affinity-Owner`` (``debug_headers`` is on). ``stop(i)`` makes
node ``i`` refuse connections, so its keys fail over to their successors; ``start(i)`` brings it back. Nothing
listens on a port and nothing here sends a packet; active health checks are off (``health_interval=0``), since
they would.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    import httpx

__all__ = ["InProcessCluster", "NodeResponse", "affinity_cluster"]

SECRET = "affinity-mw-testing-secret-not-for-production"
CLIENT = ("203.0.113.7", 50000)
"""The address test requests come from (TEST-NET-3): what the app sees as the client on the node called."""


class NodeResponse:
    """An ``httpx.Response`` with the node that served it and the key's owner, from the debug headers."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.served_by: str | None = response.headers.get("x-affinity-served-by")
        self.owner: str | None = response.headers.get("x-affinity-owner") or None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.response, name)


class _Node:
    def __init__(self, url: str) -> None:
        self.url = url
        self.app: Any = None
        self.is_asgi = False
        self.up = True
        self.lifespan: _Lifespan | None = None


class InProcessCluster:
    """N nodes of one app in this process; see the module docstring."""

    def __init__(
        self, app: str | Callable[..., Any], nodes: int = 3, *, interface: str = "asgi", **options: Any
    ) -> None:
        import anyio.from_thread

        from .membership import StaticMembership

        if nodes < 1:
            raise ValueError("an in-process cluster needs at least one node")
        if interface not in ("asgi", "wsgi"):
            raise ValueError(f"interface is 'asgi' or 'wsgi', got {interface!r}")
        self.interface = interface
        self.urls = [f"http://node{i + 1}:8000" for i in range(nodes)]
        self._nodes = [_Node(url) for url in self.urls]
        self._ring = StaticMembership(self.urls).ring
        self._stack = contextlib.ExitStack()
        self._portal = self._stack.enter_context(anyio.from_thread.start_blocking_portal())
        try:
            for node in self._nodes:
                self._start_node(node, app, options)
        except BaseException:
            self.close()
            raise

    # -- what a test asks --------------------------------------------------------------------------------------
    def owner(self, key: str) -> str:
        """The URL of the node that owns ``key`` with every node up."""
        return self.successors(key)[0]

    def successors(self, key: str) -> list[str]:
        """The failover order of ``key``: its owner, then the node that would own it without the owner, ..."""
        from .ring import hash_key

        return [node.id for node in self._ring.successors(hash_key(key))]

    def index(self, url: str) -> int:
        """The node number of a node URL (``served_by`` and ``owner`` are URLs)."""
        return self.urls.index(url)

    def request(self, node: int, method: str, path: str, **kwargs: Any) -> NodeResponse:
        """Send a request to node ``node`` (0-based), as a client would; ``kwargs`` as for ``httpx.request``."""
        import httpx

        target = self._nodes[node]
        if not target.up:
            raise httpx.ConnectError(f"{target.url} is stopped")
        if target.is_asgi:

            async def send() -> httpx.Response:
                transport = httpx.ASGITransport(app=target.app, client=CLIENT)
                async with httpx.AsyncClient(transport=transport, base_url=target.url) as client:
                    return await client.request(method, path, **kwargs)

            return NodeResponse(self._portal.call(send))
        with httpx.Client(transport=httpx.WSGITransport(app=target.app), base_url=target.url) as client:
            return NodeResponse(client.request(method, path, **kwargs))

    def get(self, node: int, path: str, **kwargs: Any) -> NodeResponse:
        return self.request(node, "GET", path, **kwargs)

    def post(self, node: int, path: str, **kwargs: Any) -> NodeResponse:
        return self.request(node, "POST", path, **kwargs)

    def stop(self, node: int) -> None:
        """Node ``node`` refuses connections from now on: clients and peers get a connect error."""
        self._nodes[node].up = False

    def start(self, node: int) -> None:
        """Node ``node`` answers again (its state kept). Peers that set it aside take it back after their
        ``AFFINITY_EJECT_TIME``; before ``AFFINITY_EJECT_AFTER`` failures they never set it aside."""
        self._nodes[node].up = True

    def close(self) -> None:
        """Run every ASGI node's lifespan shutdown and stop the event loop thread."""
        for node in self._nodes:
            if node.lifespan is not None:
                node.lifespan.shutdown(self._portal)
                node.lifespan = None
        self._stack.close()

    # -- building the nodes ------------------------------------------------------------------------------------
    def _start_node(self, node: _Node, app: str | Callable[..., Any], options: Mapping[str, Any]) -> None:
        settings = {"peers": self.urls, "self_url": node.url, "secret": SECRET, "debug_headers": True}
        settings["health_interval"] = 0
        settings.update(options)
        if callable(app):
            node.is_asgi = self.interface == "asgi"
            client = self._async_client() if node.is_asgi else self._sync_client()
            node.app = app(**settings, transport=client)
            environment: Mapping[str, Any] = {}
        else:
            environment = settings
            with _environment(settings):
                node.app, node.is_asgi = self._load(app, node)
        if node.is_asgi:
            with _environment(environment):  # Starlette builds its middleware (reads AFFINITY_*) in this call
                node.lifespan = _Lifespan.start(self._portal, node.app)

    def _load(self, spec: str, node: _Node) -> tuple[Any, bool]:
        module_name, _, attr = spec.rpartition(":")
        if not module_name or not attr:
            raise ValueError(f"the app must be 'module:attr' or 'path/to/file.py:attr', got {spec!r}")
        module = _load_module(module_name, f"affinity_mw_testing_{self.urls.index(node.url) + 1}")
        app = getattr(module, attr)
        if hasattr(app, "user_middleware"):  # Starlette and FastAPI: the stack is built at the first call
            entries = [m for m in app.user_middleware if _is_affinity(getattr(m, "cls", None))]
            if not entries:
                raise ValueError(f"{spec} has no AffinityMiddleware in its middleware (app.add_middleware)")
            for entry in entries:
                entry.kwargs = {**entry.kwargs, "transport": self._async_client()}
            return app, True
        extension = getattr(app, "extensions", {}).get("affinity")
        if extension is not None:  # Flask: Affinity(app) wrapped wsgi_app at import; wrap again with our client
            app.wsgi_app = extension.middleware.app
            extension.options = {**extension.options, "transport": self._sync_client()}
            extension.init_app(app)
            return app, False
        raise ValueError(
            f"{spec} adds the middleware in a way this plugin cannot reach (neither Starlette's add_middleware nor "
            "Flask's Affinity(app)): pass a factory, factory(**options) -> app, instead"
        )

    # -- the wiring: peers reach each other through these clients ----------------------------------------------
    def _async_client(self) -> httpx.AsyncClient:
        import httpx

        return httpx.AsyncClient(transport=_mesh_transport_types()[0](self), trust_env=False)

    def _sync_client(self) -> httpx.Client:
        import httpx

        return httpx.Client(transport=_mesh_transport_types()[1](self), trust_env=False)

    def _peer(self, url: httpx.URL) -> _Node:
        import httpx

        base = f"{url.scheme}://{url.host}:{url.port}"
        for node in self._nodes:
            if node.url == base and node.up and node.app is not None:
                return node
        raise httpx.ConnectError(f"connection refused: {base}")


@functools.cache
def _mesh_transport_types() -> tuple[type, type]:
    """The httpx transports peers reach each other through, by node URL (defined on first use: httpx is an
    optional dependency of affinity-mw, and pytest loads this plugin in every project that installs it)."""
    import httpx

    class AsyncMesh(httpx.AsyncBaseTransport):
        def __init__(self, cluster: InProcessCluster) -> None:
            self.cluster = cluster

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            node = self.cluster._peer(request.url)
            if node.is_asgi:
                return await httpx.ASGITransport(app=node.app).handle_async_request(request)
            raise httpx.ConnectError("an ASGI node cannot forward to a WSGI node in-process")

    class SyncMesh(httpx.BaseTransport):
        def __init__(self, cluster: InProcessCluster) -> None:
            self.cluster = cluster

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            node = self.cluster._peer(request.url)
            if not node.is_asgi:
                return httpx.WSGITransport(app=node.app).handle_request(request)
            raise httpx.ConnectError("a WSGI node cannot forward to an ASGI node in-process")

    return AsyncMesh, SyncMesh


def _is_affinity(cls: Any) -> bool:
    from .asgi import AffinityMiddleware

    return isinstance(cls, type) and issubclass(cls, AffinityMiddleware)


def _load_module(name: str, alias: str) -> ModuleType:
    """A fresh copy of module ``name`` (a dotted name or a file path) under ``alias``: its own globals."""
    if name.endswith(".py") or os.sep in name:
        path = Path(name).resolve()
    else:
        found = importlib.util.find_spec(name)
        if found is None or found.origin is None:
            raise ValueError(f"no module named {name!r}")
        path = Path(found.origin)
    spec = importlib.util.spec_from_file_location(alias, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))  # the module's own imports of its neighbours, as when run from there
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module


@contextlib.contextmanager
def _environment(settings: Mapping[str, Any]) -> Iterator[None]:
    """Set the ``AFFINITY_*`` variables of ``settings`` while a node is built (12-factor apps read them)."""
    from .config import OPTIONS

    env = {o.env: _env_value(settings[o.name]) for o in OPTIONS if o.name in settings}
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _env_value(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


class _Lifespan:
    """An ASGI app's lifespan, run in the portal's event loop as a server runs it: startup now, shutdown at close."""

    def __init__(self, app: Any) -> None:
        import anyio

        self.app = app
        self.started, self.stop = anyio.Event(), anyio.Event()
        self.outcome: list[Any] = []
        self.future: Any = None

    @classmethod
    def start(cls, portal: Any, app: Any) -> _Lifespan:
        from .config import ConfigurationError

        async def create() -> _Lifespan:
            return cls(app)

        lifespan: _Lifespan = portal.call(create)
        lifespan.future = portal.start_task_soon(lifespan.run)
        portal.call(lifespan.started.wait)
        first = lifespan.outcome[0]
        if isinstance(first, ConfigurationError):
            raise first
        if first["type"] == "lifespan.startup.failed":
            # The middleware fails the lifespan start-up when its settings are invalid: raise its error itself.
            layer = getattr(app, "middleware_stack", None) or app
            while layer is not None:
                if isinstance(getattr(layer, "error", None), ConfigurationError):
                    raise layer.error
                layer = getattr(layer, "app", None)
            raise RuntimeError(f"the app's start-up failed: {first.get('message', '')}")
        return lifespan

    async def run(self) -> None:
        from .config import ConfigurationError

        messages = [{"type": "lifespan.startup"}]

        async def receive() -> dict[str, Any]:
            if messages:
                return messages.pop()
            await self.stop.wait()
            return {"type": "lifespan.shutdown"}

        async def send(message: Mapping[str, Any]) -> None:
            if message["type"].startswith("lifespan.startup."):
                self.outcome.append(message)
                self.started.set()

        try:
            await self.app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)
        except ConfigurationError as exc:
            self.outcome.append(exc)
        except Exception:  # an app without lifespan support: served on, as uvicorn's "auto" does
            self.outcome.append({"type": "lifespan.startup.complete"})
        self.started.set()

    def shutdown(self, portal: Any) -> None:
        portal.call(self.stop.set)
        self.future.result(timeout=10)


@pytest.fixture
def affinity_cluster() -> Iterator[Callable[..., InProcessCluster]]:
    """A factory of :class:`InProcessCluster`: ``affinity_cluster(app, nodes=3, **options)``; every cluster it
    made is closed when the test ends."""
    made: list[InProcessCluster] = []

    def make(app: str | Callable[..., Any], nodes: int = 3, **options: Any) -> InProcessCluster:
        cluster = InProcessCluster(app, nodes, **options)
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.close()

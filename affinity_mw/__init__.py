"""affinity-mw: request affinity by key for Python web apps.

The same tenant, session or region lands on the same instance while that instance exists; when membership
changes only about 1/n of the keys move. See ``docs/concepts.md``.
"""

from .asgi import AffinityMiddleware
from .config import ConfigurationError, Settings
from .forward import AsyncTransport, SyncTransport
from .hop import HopSigner
from .membership import StaticMembership
from .request import RequestView
from .ring import HashRing, Node, hash_key
from .router import Decision, Router
from .transports import AiohttpTransport, HttpxSyncTransport, HttpxTransport, Urllib3Transport
from .wsgi import AffinityWSGIMiddleware

__version__ = "0.1.0"

__all__ = [
    "AffinityMiddleware",
    "AffinityWSGIMiddleware",
    "AiohttpTransport",
    "AsyncTransport",
    "ConfigurationError",
    "Decision",
    "HashRing",
    "HopSigner",
    "HttpxSyncTransport",
    "HttpxTransport",
    "Node",
    "RequestView",
    "Router",
    "Settings",
    "StaticMembership",
    "SyncTransport",
    "Urllib3Transport",
    "hash_key",
]

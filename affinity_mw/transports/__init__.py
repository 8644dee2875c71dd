"""The network clients that carry a forward, behind the small interfaces in :mod:`affinity_mw.forward`.

Defaults chosen by measurement on a 2-core box (docs/benchmarks.md): for ASGI the built-in client of
:mod:`affinity_mw.h1` (2.5x less client CPU per forward than aiohttp, which measured 0.45 x the bare app's
throughput against 0.033 x for one shared ``httpx.AsyncClient``); urllib3 for WSGI (0.46 x, against 0.34 x for
``httpx.Client``). aiohttp and httpx stay available (``AFFINITY_TRANSPORT``, or a client passed in).

Every transport is configured as a proxy, not a browser: no cookie jar (one user's ``Set-Cookie`` must never ride
on another user's request), no injected ``Accept``/``Accept-Encoding``/``User-Agent``, no decompression, no
proxies from the environment, no redirects followed, no retries of its own (the failover rules are
:class:`~affinity_mw.forward.ForwardPlan`'s). Every one applies the built-in client's wire rules where its
library is laxer (:mod:`affinity_mw.h1.wire`): header names and values are checked before they reach the peer,
and a connection whose response declared a body it may not carry is never pooled. Each module maps its
library's exceptions to the forward's in one place.
"""

from __future__ import annotations

from typing import Any

from ..h1 import AsyncioTransport
from ..loops import PerLoop
from ._aiohttp import AiohttpTransport
from ._common import BODYLESS_METHODS
from ._httpx import HttpxSyncTransport, HttpxTransport, httpx_options
from ._urllib3 import Urllib3Transport

__all__ = [
    "BODYLESS_METHODS",
    "AiohttpTransport",
    "AsyncioTransport",
    "HttpxSyncTransport",
    "HttpxTransport",
    "PerLoop",
    "Urllib3Transport",
    "async_transport",
    "httpx_options",
]


def async_transport(name: str, **options: Any) -> Any:
    """The ASGI transport ``AFFINITY_TRANSPORT`` names, built with the core's pool and timeout options."""
    if name == "httpx":
        return HttpxTransport(**options)
    if name == "asyncio":
        return AsyncioTransport(**options)
    return AiohttpTransport(**options)

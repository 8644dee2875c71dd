"""Views and URLs: a per-region cache in process memory, so routing by region is visible.

Building a region's data is slow (a stand-in for a database query or an upstream API). Each node keeps what it
built in a dict, with a hit counter. Without affinity, every node builds every region and each cache sees a
share of the traffic; behind affinity-mw a region's requests all meet one node's cache, so the region is built
once and its counter counts every request. The cache is only a cache: when membership changes the region moves
and is rebuilt on its new owner, so durable state belongs in a store.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from dataclasses import dataclass, field

from django.http import HttpRequest, JsonResponse
from django.urls import path

NODE = os.environ.get("AFFINITY_SELF", "standalone")
BUILD_SECONDS = float(os.environ.get("REGION_BUILD_SECONDS", "0.3"))


@dataclass
class RegionData:
    region: str
    built_at: float
    prices: dict[str, int]
    hits: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


_cache: dict[str, RegionData] = {}
_build_lock = threading.Lock()


def _build(region: str) -> RegionData:
    time.sleep(BUILD_SECONDS)  # the expensive part this cache exists to avoid
    prices = {
        item: int(hashlib.sha256(f"{region}:{item}".encode()).hexdigest()[:4], 16) % 900 + 100
        for item in ("coffee", "tea", "cake")
    }
    return RegionData(region=region, built_at=time.time(), prices=prices)


def region_data(region: str) -> tuple[RegionData, bool]:
    """The cached data for ``region`` and whether it was already cached here."""
    data = _cache.get(region)
    if data is not None:
        return data, True
    with _build_lock:  # one build per region per process, even with threads
        data = _cache.get(region)
        if data is None:
            _cache[region] = data = _build(region)
            return data, False
    return data, True


def prices(request: HttpRequest) -> JsonResponse:
    """``GET /prices`` with ``X-Region: eu-west``: the region's prices, and whether this node's cache had them."""
    decision = request.affinity  # the wrapped application's decision, set by AffinityMiddleware
    region = decision.key  # the validated, lower-cased region, or None
    if region is None:
        return JsonResponse({"error": "send a region: X-Region: eu-west ([a-z0-9._-], at most 64)"}, status=400)
    data, cached = region_data(region)
    with data.lock:
        data.hits += 1
        hits = data.hits
    return JsonResponse(
        {
            "region": region,
            "node": NODE,
            "cache": "hit" if cached else "miss",
            "hits": hits,
            "prices": data.prices,
            "hops": decision.hops,  # 1: the node you called forwarded the request here
        }
    )


def cache(request: HttpRequest) -> JsonResponse:
    """``GET /cache``: the regions this node holds and their hits (without X-Region: the node you call)."""
    return JsonResponse({"node": NODE, "regions": {name: data.hits for name, data in sorted(_cache.items())}})


def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"node": NODE, "status": "ok"})


urlpatterns = [
    path("prices", prices),
    path("cache", cache),
    path("healthz", healthz),
]

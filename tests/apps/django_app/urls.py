"""Views and URLs of the Django probe app: same paths, same JSON as ``tests/apps/asgi_app.py`` and ``wsgi_app.py``.

Streaming views pick the iterator kind of the handler serving them (async under ASGI, sync under WSGI): Django
buffers a sync iterator under ASGI, which would hide whether the forward streams.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.urls import path

NODE = os.environ.get("AFFINITY_SELF", "standalone")
served: Counter[str] = Counter()
tenant_counters: Counter[str] = Counter()
GZIP_BODY = gzip.compress(b"affinity " * 5000, mtime=0)
BLOCK = bytes(range(256)) * 256


class CountServed:
    """Below affinity-mw in MIDDLEWARE, so it counts only the requests this node serves."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        served[request.path] += 1
        served["__all__"] += 1
        return self.get_response(request)


class SyncOnly:
    """A sync-only middleware (like many third-party ones): Django then runs everything above it synchronously."""

    sync_capable = True
    async_capable = False

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        response.headers["X-Sync-Only"] = "1"
        return response


def _decision(request: HttpRequest) -> dict[str, Any] | None:
    decision = getattr(request, "affinity", None)
    return decision.as_dict() if decision is not None else None


def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"node": NODE, "status": "ok"})


def tenant_hits(request: HttpRequest, tenant: str) -> JsonResponse:
    if request.method == "POST":
        tenant_counters[tenant] += 1
    decision = getattr(request, "affinity", None)
    hops = decision.hops if decision is not None else 0
    return JsonResponse({"tenant": tenant, "count": tenant_counters[tenant], "node": NODE, "hops": hops})


def stats(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"node": NODE, "served": dict(served)})


def sha256(request: HttpRequest, tenant: str) -> JsonResponse:
    digest = hashlib.sha256()
    size = 0
    while chunk := request.read(65536):
        digest.update(chunk)
        size += len(chunk)
    return JsonResponse({"node": NODE, "sha256": digest.hexdigest(), "size": size})


def _streamed(request: HttpRequest, parts: list[bytes], pause: float, content_type: str) -> StreamingHttpResponse:
    if isinstance(request, ASGIRequest):

        async def abody() -> AsyncIterator[bytes]:
            for part in parts:
                yield part
                if pause:
                    await asyncio.sleep(pause)

        return StreamingHttpResponse(abody(), content_type=content_type)

    def body() -> Iterator[bytes]:
        for part in parts:
            yield part
            if pause:
                time.sleep(pause)

    return StreamingHttpResponse(body(), content_type=content_type)


def stream(request: HttpRequest, tenant: str) -> StreamingHttpResponse:
    chunks = int(request.GET.get("chunks", 5))
    pause = float(request.GET.get("pause", 0.3))
    return _streamed(request, [f"chunk {i}\n".encode() for i in range(chunks)], pause, "text/plain")


def download(request: HttpRequest, tenant: str) -> StreamingHttpResponse:
    size = int(request.GET.get("size", 1024))
    parts = [BLOCK] * (size // len(BLOCK)) + ([BLOCK[: size % len(BLOCK)]] if size % len(BLOCK) else [])
    return _streamed(request, parts, 0.0, "application/octet-stream")


def cookies(request: HttpRequest, tenant: str) -> JsonResponse:
    who = request.GET.get("who", "anon")
    response = JsonResponse({"node": NODE})
    for name in ("a", "b", "c"):
        response.set_cookie(f"{name}_{who}", f"value-{name}-{who}", httponly=True)
    return response


def gzipped(request: HttpRequest, tenant: str) -> HttpResponse:
    response = HttpResponse(GZIP_BODY, content_type="text/plain", headers={"Content-Encoding": "gzip", "X-Node": NODE})
    response.headers["Content-Length"] = str(len(GZIP_BODY))
    return response


def echo(request: HttpRequest, tenant: str) -> JsonResponse:
    body = request.body
    headers = [[k.lower(), v] for k, v in request.headers.items() if v or k not in ("Content-Type", "Content-Length")]
    return JsonResponse(
        {
            "node": NODE,
            "method": request.method,
            "headers": headers,
            "client": request.META.get("REMOTE_ADDR"),
            "scheme": request.scheme,
            "body_size": len(body),
            "decision": _decision(request),
        }
    )


def status(request: HttpRequest, tenant: str, code: int) -> HttpResponse:
    return HttpResponse(status=code)


urlpatterns = [
    path("healthz", healthz),
    path("tenants/<str:tenant>/hits", tenant_hits),
    path("probe/stats", stats),
    path("probe/<str:tenant>/sha256", sha256),
    path("probe/<str:tenant>/stream", stream),
    path("probe/<str:tenant>/download", download),
    path("probe/<str:tenant>/cookies", cookies),
    path("probe/<str:tenant>/gzip", gzipped),
    path("probe/<str:tenant>/echo", echo),
    path("probe/<str:tenant>/status/<int:code>", status),
]

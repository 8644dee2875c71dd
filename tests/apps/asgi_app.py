"""The FastAPI example app plus probe routes the integration tests use to check what survives a forward.

The example stays a clean example; the probes (body hashing, slow streams, repeated cookies, gzip, header echo)
live here so the tests exercise exactly the example's middleware set-up.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.middleware import Middleware

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples" / "fastapi_tenants"))

from app import NODE, app

from tests.patterns import pattern

served: Counter[str] = Counter()
GZIP_BODY = gzip.compress(b"affinity " * 5000, mtime=0)


class CountServed:
    """Pure ASGI, appended after AffinityMiddleware so it counts only the requests this node serves."""

    def __init__(self, app):  # type: ignore[no-untyped-def]
        self.app = app

    async def __call__(self, scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] == "http":
            served[scope["path"]] += 1
            served["__all__"] += 1
        await self.app(scope, receive, send)


app.user_middleware.append(Middleware(CountServed))


@app.get("/probe/stats")
async def stats() -> dict[str, object]:
    return {"node": NODE, "served": dict(served)}


@app.post("/probe/{tenant}/sha256")
async def sha256(tenant: str, request: Request) -> dict[str, object]:
    digest = hashlib.sha256()
    size = 0
    async for chunk in request.stream():
        digest.update(chunk)
        size += len(chunk)
    return {"node": NODE, "sha256": digest.hexdigest(), "size": size}


@app.get("/probe/{tenant}/stream")
async def stream(tenant: str, chunks: int = 5, pause: float = 0.3) -> StreamingResponse:
    async def body() -> AsyncIterator[bytes]:
        for i in range(chunks):
            yield f"chunk {i}\n".encode()
            await asyncio.sleep(pause)

    return StreamingResponse(body(), media_type="text/plain")


@app.get("/probe/{tenant}/download")
async def download(tenant: str, size: int = 1024) -> StreamingResponse:
    block = bytes(range(256)) * 256

    async def body() -> AsyncIterator[bytes]:
        left = size
        while left > 0:
            part = block[: min(left, len(block))]
            left -= len(part)
            yield part

    return StreamingResponse(body(), media_type="application/octet-stream")


@app.get("/probe/{tenant}/cookies")
async def cookies(tenant: str, who: str = "anon") -> Response:
    response = JSONResponse({"node": NODE})
    for name in ("a", "b", "c"):
        response.set_cookie(f"{name}_{who}", f"value-{name}-{who}", httponly=True)
    return response


@app.api_route("/probe/{tenant}/gzip", methods=["GET", "HEAD"])
async def gzipped(tenant: str) -> Response:
    return Response(GZIP_BODY, media_type="text/plain", headers={"Content-Encoding": "gzip", "X-Node": NODE})


@app.api_route("/probe/{tenant}/echo", methods=["GET", "POST", "PUT", "DELETE", "HEAD"])
async def echo(tenant: str, request: Request) -> dict[str, object]:
    body = await request.body()
    decision = request.state.affinity
    return {
        "node": NODE,
        "method": request.method,
        "headers": [[k, v] for k, v in request.headers.items()],
        "client": request.client.host if request.client else None,
        "scheme": request.url.scheme,
        "body_size": len(body),
        "decision": decision.as_dict(),
    }


@app.get("/probe/{tenant}/status/{code}")
async def status(tenant: str, code: int) -> Response:
    return Response(status_code=code)


# Reliability suite (tests/test_reliability_faults.py): each execution is appended to $FAULT_EXEC_LOG (one
# O_APPEND write per line, which survives a SIGKILL right after it), so a test can count executions per id.
def _fault_record(method: str, id: str) -> None:
    import os

    path = os.environ.get("FAULT_EXEC_LOG")
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{NODE} {method} {id}\n".encode())
        finally:
            os.close(fd)


@app.api_route("/probe/{tenant}/fault-exec", methods=["GET", "POST"])
async def fault_exec(tenant: str, request: Request, id: str = "", pause: float = 0.0) -> dict[str, object]:
    await request.body()
    _fault_record(request.method, id)
    if pause:
        await asyncio.sleep(pause)
    return {"node": NODE, "id": id, "method": request.method}


@app.api_route("/probe/{tenant}/big-body", methods=["GET", "HEAD"])
async def big_body(tenant: str, size: int = 0, seed: int = 0, mode: str = "fixed", encoding: str = "") -> Response:
    """``size`` pattern bytes, with a Content-Length (``mode=fixed``) or chunked, optionally labelled with a
    Content-Encoding they are not in (a proxy must pass the bytes untouched, never decode)."""
    headers = {"X-Node": NODE}
    if encoding:
        headers["Content-Encoding"] = encoding
    if mode == "fixed":
        headers["Content-Length"] = str(size)

    async def body() -> AsyncIterator[bytes]:
        for block in pattern(size, seed):
            yield block

    return StreamingResponse(body(), media_type="application/octet-stream", headers=headers)


@app.get("/probe/{tenant}/big-cookies")
async def big_cookies(tenant: str) -> Response:
    response = Response(b"cookies", media_type="text/plain")
    for line in COOKIE_LINES:
        response.headers.append("Set-Cookie", line)
    return response


COOKIE_LINES = [
    "sid=1; Path=/a; HttpOnly",
    "sid=2; Path=/b; Secure; SameSite=Strict",
    "pref=x; Expires=Wed, 21 Oct 2035 07:28:00 GMT; Path=/",
]

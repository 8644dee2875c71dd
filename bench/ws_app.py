"""The websocket benchmark's app: an echo at ``/ws/{key}`` (text as text, bytes as bytes), wrapped in the ASGI
middleware with ``AFFINITY_*`` from the environment (``bench/ws_bench.py`` sets them)."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from affinity_mw import AffinityMiddleware


async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") is not None:
                await websocket.send_text(message["text"])
            else:
                await websocket.send_bytes(message.get("bytes") or b"")
    except WebSocketDisconnect:
        return


async def healthz(request: object) -> PlainTextResponse:
    return PlainTextResponse("ok\n")


app = AffinityMiddleware(Starlette(routes=[WebSocketRoute("/ws/{key}", echo), Route("/healthz", healthz)]))

"""A Starlette app with websocket routes for the relay and cluster tests: echo, close with a code, subprotocols,
refusals, handshake headers, and a flood for back-pressure. Plain HTTP probes report what the app saw."""

from __future__ import annotations

import contextlib
import json
import os
import random
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

NODE = os.environ.get("AFFINITY_SELF", "")
closes: dict[str, list[Any]] = {}
flood = {"sent": 0}
FLOOD_FRAME = 1024 * 1024
FLOOD_FRAMES = 512
# Random bytes: a compressible frame would cross a compressing leg as a few bytes and test nothing.
FLOOD_DATA = random.Random(0).randbytes(FLOOD_FRAME)


async def next_message(websocket: WebSocket, room: str) -> Any:
    """The next message, or ``None`` once the socket ended: the client left (its close code and reason are kept in
    ``closes[room]``) or asked, with ``close:CODE:REASON``, to be closed with that code and reason."""
    message = await websocket.receive()
    if message["type"] == "websocket.disconnect":
        closes[room] = [message.get("code"), message.get("reason") or ""]
        return None
    text = message.get("text")
    if text is not None and text.startswith("close:"):
        _, code, reason = text.split(":", 2)
        await websocket.close(int(code), reason)
        return None
    return message


async def echo(websocket: WebSocket) -> None:
    """Echo every message as it came (text as text, bytes as bytes); ``close:CODE:REASON`` closes with that code
    and reason. The client's close code and reason are kept for /probe/closes."""
    room = websocket.path_params["room"]
    await websocket.accept()
    await websocket.send_text(json.dumps({"node": NODE, "room": room}))
    while True:
        message = await next_message(websocket, room)
        if message is None:
            return
        text = message.get("text")
        if text is not None:
            await websocket.send_text(text)
        else:
            await websocket.send_bytes(message.get("bytes") or b"")


async def handshake(websocket: WebSocket) -> None:
    """Accept with the last subprotocol offered and a cookie, then send what the handshake carried."""
    offered = websocket.scope["subprotocols"]
    await websocket.accept(subprotocol=offered[-1] if offered else None, headers=[(b"set-cookie", b"seen=1; Path=/")])
    headers = [[name.decode("latin-1"), value.decode("latin-1")] for name, value in websocket.scope["headers"]]
    await websocket.send_text(json.dumps({"headers": headers, "subprotocols": offered, "node": NODE}))
    with contextlib.suppress(WebSocketDisconnect):
        await websocket.receive_text()


async def refuse(websocket: WebSocket) -> None:
    """Refuse with an HTTP response of the app's own when the server can send one, else a plain refusal."""
    await websocket.send_denial_response(
        PlainTextResponse("no such room\n", status_code=404, headers={"x-why": "test"})
    )


async def refuse_plain(websocket: WebSocket) -> None:
    await websocket.close()


async def flood_out(websocket: WebSocket) -> None:
    """Send 1 MiB binary messages as fast as the connection takes them (512 at most), counting each."""
    await websocket.accept()
    flood["sent"] = 0
    try:
        for _ in range(FLOOD_FRAMES):
            await websocket.send_bytes(FLOOD_DATA)
            flood["sent"] += 1
    except (WebSocketDisconnect, OSError):
        pass


async def probe_closes(request: Request) -> Response:
    return JSONResponse(closes)


async def probe_flood(request: Request) -> Response:
    return JSONResponse(flood)


async def healthz(request: Request) -> Response:
    return PlainTextResponse("ok\n")


app = Starlette(
    routes=[
        WebSocketRoute("/ws/echo/{room}", echo),
        WebSocketRoute("/ws/handshake", handshake),
        WebSocketRoute("/ws/refuse", refuse),
        WebSocketRoute("/ws/refuse-plain", refuse_plain),
        WebSocketRoute("/ws/flood", flood_out),
        Route("/probe/closes", probe_closes),
        Route("/probe/flood", probe_flood),
        Route("/healthz", healthz),
    ]
)

"""The cluster tests' websocket app behind the ASGI middleware (``AFFINITY_*`` from the environment): chat rooms
at /ws/rooms/{key} (text broadcast to every member of the room on this node, binary echoed to the sender,
``close:CODE:REASON`` closes that member), documents whose ids are minted by the node that creates them, and a
keyless /whoami for the generated affinity cookie."""

from __future__ import annotations

import contextlib
import json
import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from affinity_mw import AffinityMiddleware
from tests.apps.ws_app import closes, next_message

NODE = os.environ.get("AFFINITY_SELF", "")
rooms: dict[str, set[WebSocket]] = {}


async def room(websocket: WebSocket) -> None:
    key = websocket.path_params["key"]
    await websocket.accept()
    members = rooms.setdefault(key, set())
    members.add(websocket)
    try:
        await websocket.send_text(json.dumps({"node": NODE, "room": key, "members": len(members)}))
        while True:
            message = await next_message(websocket, key)
            if message is None:
                return
            text = message.get("text")
            if text is not None:
                for member in list(members):
                    with contextlib.suppress(Exception):  # a member that left meanwhile
                        await member.send_text(json.dumps({"node": NODE, "text": text}))
            else:
                await websocket.send_bytes(message.get("bytes") or b"")
    except WebSocketDisconnect as exc:
        closes[key] = [exc.code, exc.reason or ""]
    finally:
        members.discard(websocket)


async def create_doc(request: Request) -> Response:
    return JSONResponse({"id": affinity.core.mint_key(prefix="doc_"), "node": NODE})


async def read_doc(request: Request) -> Response:
    return JSONResponse({"id": request.path_params["key"], "node": NODE})


async def whoami(request: Request) -> Response:
    decision = request.state.affinity
    return JSONResponse({"node": NODE, "key": decision.key, "reason": decision.reason})


async def probe_closes(request: Request) -> Response:
    return JSONResponse(closes)


async def healthz(request: Request) -> Response:
    return PlainTextResponse("ok\n")


inner = Starlette(
    routes=[
        WebSocketRoute("/ws/rooms/{key}", room),
        Route("/docs", create_doc, methods=["POST"]),
        Route("/docs/{key}", read_doc),
        Route("/whoami", whoami),
        Route("/probe/closes", probe_closes),
        Route("/healthz", healthz),
    ]
)
affinity = AffinityMiddleware(inner)
app = affinity

"""The same app written the two ways users write it, configured only from ``AFFINITY_*`` variables: a FastAPI
app and a Starlette app, each with ``app.add_middleware(AffinityMiddleware)``. Used to check that a bad setting
stops the server at start-up."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from affinity_mw import AffinityMiddleware

fastapi_app = FastAPI()


@fastapi_app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


fastapi_app.add_middleware(AffinityMiddleware)


async def starlette_healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


starlette_app = Starlette(routes=[Route("/healthz", starlette_healthz)])
starlette_app.add_middleware(AffinityMiddleware)

"""The benchmark's application, served twice: ``bench.app:bare`` (no middleware) and ``bench.app:wrapped``.

One route does the measured work: ``GET /t/{tenant}`` answers a ~50-byte JSON body, so what the benchmark
sees is the server, the middleware and the forward, not the app. ``GET /_whoami`` is only used by the
benchmark's preflight check, to prove each scenario is routed the way it claims (served here or by the peer);
it is never under load. ``wrapped`` is the same Starlette app inside :class:`~affinity_mw.AffinityMiddleware`,
configured entirely from ``AFFINITY_*`` environment variables, as a 12-factor deploy would do it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

NODE = os.environ.get("BENCH_NODE", "bare")


async def tenant(request: Request) -> JSONResponse:
    return JSONResponse({"tenant": request.path_params["tenant"], "ok": True, "items": [1, 2, 3]})


async def whoami(request: Request) -> JSONResponse:
    decision = getattr(request.state, "affinity", None)
    return JSONResponse({"node": NODE, "affinity": decision.as_dict() if decision is not None else None})


def make_app() -> Starlette:
    return Starlette(routes=[Route("/t/{tenant}", tenant), Route("/_whoami", whoami)])


bare = make_app()


def __getattr__(name: str) -> object:
    # Built on first access, so a server of ``bare`` never imports affinity_mw or reads AFFINITY_* at all.
    if name == "wrapped":
        from affinity_mw import AffinityMiddleware

        app = AffinityMiddleware(make_app())
        globals()["wrapped"] = app
        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

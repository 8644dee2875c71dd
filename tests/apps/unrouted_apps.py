"""Apps whose read routes are marked unrouted in each framework's idiom, for the real-cluster tests."""

from __future__ import annotations

import os

import flask
from fastapi import APIRouter, Depends, FastAPI

from affinity_mw import AffinityMiddleware
from affinity_mw.contrib.flask import Affinity
from affinity_mw.routes import unrouted

NODE = os.environ.get("AFFINITY_SELF", "")

fastapi_app = FastAPI()
fastapi_app.add_middleware(AffinityMiddleware)  # the routes are read from scope["app"] at lifespan startup


@fastapi_app.get("/reports/{tenant}")
@unrouted
def report(tenant: str) -> dict[str, str]:
    return {"node": NODE}


@fastapi_app.get("/orders/{tenant}")
def orders(tenant: str) -> dict[str, str]:
    return {"node": NODE}


exports = APIRouter(dependencies=[Depends(unrouted)])


@exports.get("/{tenant}/{path:path}")
def export(tenant: str, path: str) -> dict[str, str]:
    return {"node": NODE}


fastapi_app.include_router(exports, prefix="/exports")


@fastapi_app.get("/healthz")
def healthz() -> dict[str, str]:
    return {"ok": "yes"}


flask_app = flask.Flask(__name__)
Affinity(flask_app)


@flask_app.get("/reports/<tenant>")
@unrouted
def flask_report(tenant: str) -> dict[str, str]:
    return {"node": NODE}


@flask_app.get("/orders/<tenant>")
def flask_orders(tenant: str) -> dict[str, str]:
    return {"node": NODE}


@flask_app.get("/healthz")
def flask_healthz() -> dict[str, str]:
    return {"ok": "yes"}

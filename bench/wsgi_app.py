"""The WSGI benchmark's application, served twice: ``bench.wsgi_app:bare`` (plain Flask) and ``:wrapped``.

The Flask twin of ``bench/app.py``, with the same two routes and the same body: ``GET /t/<tenant>`` answers a
~50-byte JSON body (what is measured), ``GET /_whoami`` tells the preflight check which node served the request
and how it was routed (never under load). ``wrapped`` is the same app with ``Affinity(app)`` (the Flask
extension, which wraps ``app.wsgi_app`` in :class:`~affinity_mw.AffinityWSGIMiddleware`), configured entirely
from ``AFFINITY_*`` environment variables, exactly like the ASGI scenarios.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from flask import Flask, jsonify, request

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

NODE = os.environ.get("BENCH_NODE", "bare")


def make_app() -> Flask:
    app = Flask(__name__)
    app.json.sort_keys = False  # type: ignore[attr-defined]  # bench/app.py's key order (Flask adds a newline)

    @app.get("/t/<tenant>")
    def tenant(tenant: str) -> Any:
        return jsonify(tenant=tenant, ok=True, items=[1, 2, 3])

    @app.get("/_whoami")
    def whoami() -> Any:
        decision = request.environ.get("affinity_mw.decision")  # affinity_mw.wsgi.DECISION_KEY
        return jsonify(node=NODE, affinity=decision.as_dict() if decision is not None else None)

    return app


bare = make_app()


def __getattr__(name: str) -> object:
    # Built on first access, so a server of ``bare`` never imports affinity_mw or reads AFFINITY_* at all.
    if name == "wrapped":
        from affinity_mw.contrib.flask import Affinity

        app = make_app()
        Affinity(app)
        globals()["wrapped"] = app
        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

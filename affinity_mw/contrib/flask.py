"""Flask extension: ``Affinity(app)`` or ``Affinity().init_app(app)``, configured from ``app.config``.

The extension wraps ``app.wsgi_app`` with :class:`~affinity_mw.AffinityWSGIMiddleware`, so a request another
node owns is forwarded before Flask opens a request context, loads the session or runs ``before_request``.

Configuration is read, in order of precedence, from keyword arguments to ``Affinity``, ``app.config`` keys
named like the environment variables (``AFFINITY_PEERS``, ``AFFINITY_KEY``, ...), then the environment.
Flask's own session is a ready key source: ``AFFINITY_KEY = "signed-cookie:session:tenant"`` reads the
``tenant`` field of the session cookie, verified with the app's ``SECRET_KEY`` (and ``SECRET_KEY_FALLBACKS``
for rotation, both as given: keys are opaque bytes or text) and limited to ``PERMANENT_SESSION_LIFETIME``,
unless ``AFFINITY_COOKIE_SECRET`` says otherwise.
The forwarding node never needs the session's contents: only the signed field the key names.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

from ..router import Decision
from ..routes import flask_exclusions
from ..wsgi import DECISION_KEY, AffinityWSGIMiddleware

__all__ = ["Affinity", "current_decision"]


class Affinity:
    """Request affinity for a Flask app. See the module docstring for configuration."""

    def __init__(self, app: Any = None, **options: Any) -> None:
        self.options = options
        self.middleware: AffinityWSGIMiddleware | None = None
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Any) -> None:
        environ = dict(os.environ)
        options = dict(self.options)
        for key, value in app.config.items():
            if not key.startswith("AFFINITY_") or value is None:
                continue
            if key == "AFFINITY_COOKIE_SECRET" and not isinstance(value, str):
                # Secret keys are opaque bytes or text: a list is passed as given, never joined on commas and
                # split again (a key holding "," or spaces would never verify) nor decoded.
                options.setdefault("cookie_secret", tuple(value) if isinstance(value, (list, tuple)) else (value,))
            else:
                environ[key] = _as_env(value)
        secret_key = app.config.get("SECRET_KEY")
        if secret_key and "cookie_secret" not in options and "AFFINITY_COOKIE_SECRET" not in environ:
            # Flask signs with SECRET_KEY and verifies with SECRET_KEY_FALLBACKS too; as given, often bytes
            # that are not UTF-8 (Flask's quickstart makes them with secrets.token_bytes).
            options["cookie_secret"] = (*(app.config.get("SECRET_KEY_FALLBACKS") or ()), secret_key)
            if "AFFINITY_COOKIE_MAX_AGE" not in environ:
                lifetime = app.config.get("PERMANENT_SESSION_LIFETIME", timedelta(days=31))
                seconds = lifetime.total_seconds() if isinstance(lifetime, timedelta) else float(lifetime)
                environ["AFFINITY_COOKIE_MAX_AGE"] = str(int(seconds))
        self.middleware = middleware = AffinityWSGIMiddleware(app.wsgi_app, environ=environ, **options)
        app.wsgi_app = middleware
        app.extensions["affinity"] = self
        # Views marked @unrouted become exclusions: those registered already, and each one registered later (a
        # blueprint registers its views through the app's add_url_rule too). Nothing is added per request.
        middleware.core.mark_unrouted(flask_exclusions(app))
        add_url_rule = app.add_url_rule

        def add_url_rule_marking(*args: Any, **kwargs: Any) -> None:
            add_url_rule(*args, **kwargs)
            middleware.core.mark_unrouted(flask_exclusions(app))

        app.add_url_rule = add_url_rule_marking


def current_decision() -> Decision | None:
    """The routing decision for the request being handled (``None`` outside a request or without the extension)."""
    from flask import request

    return request.environ.get(DECISION_KEY)


def _as_str(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _as_env(value: Any) -> str:
    """``app.config`` holds Python values; the settings parser reads the environment's string forms."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (list, tuple)):
        return ",".join(_as_str(v) for v in value)
    return _as_str(value)

"""Django integration: route in front of Django by wrapping its application; ``request.affinity`` inside it.

As the Flask extension wraps ``app.wsgi_app``, :func:`wrap` puts :class:`~affinity_mw.AffinityWSGIMiddleware` or
:class:`~affinity_mw.AffinityMiddleware` around Django's application: a request another node owns is forwarded
before Django sees it, its answer relayed as the owner sent it; every rule, failures included, is the adapter's::

    # wsgi.py                                     # asgi.py
    application = wrap(get_wsgi_application())    application = wrap(get_asgi_application())

    # settings.py
    INSTALLED_APPS = [..., "affinity_mw.contrib.django.AffinityConfig"]  # manage.py check runs the checks
    MIDDLEWARE = ["affinity_mw.contrib.django.AffinityMiddleware", ...]  # request.affinity in views
    AFFINITY = {"key": "header:X-Tenant"}

``settings.AFFINITY`` holds the keyword option names of :mod:`affinity_mw.config`; an ``AFFINITY_*`` variable
that is set wins over the same option there, and keyword arguments to :func:`wrap` win over both. See
``docs/integrations/django.md``.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import inspect
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.apps import AppConfig
from django.conf import settings as django_settings
from django.core import checks
from django.utils.module_loading import import_string

from .. import AffinityMiddleware as AffinityASGIMiddleware
from .. import AffinityWSGIMiddleware, ConfigurationError, Settings, StaticMembership
from ..config import OPTIONS
from ..wsgi import DECISION_KEY

__all__ = ["AffinityConfig", "AffinityMiddleware", "check_affinity", "wrap"]

logger = logging.getLogger("affinity_mw")

MIDDLEWARE_PATH = "affinity_mw.contrib.django.AffinityMiddleware"
_OPTION_ENV = {option.name: option.env for option in OPTIONS}
_wrapped = False  # whether wrap() has run in this process: a request without a decision is then not misrouted


class AffinityConfig(AppConfig):  # type: ignore[misc]
    """Add ``"affinity_mw.contrib.django.AffinityConfig"`` to ``INSTALLED_APPS`` so ``manage.py check`` runs the
    affinity-mw system checks (Django imports middleware only when it builds a request handler)."""

    name = "affinity_mw.contrib.django"
    label = "affinity_mw"
    verbose_name = "affinity-mw"


def wrap(application: Any, **options: Any) -> AffinityASGIMiddleware | AffinityWSGIMiddleware:
    """Route requests to their key's owner in front of ``application``, configured from ``settings.AFFINITY``.

    An ASGI application (a coroutine function, or an object whose ``__call__`` is one, as Django's
    ``ASGIHandler``) gets :class:`~affinity_mw.AffinityMiddleware`; anything else is WSGI and gets
    :class:`~affinity_mw.AffinityWSGIMiddleware`. Call it once, outermost, in ``wsgi.py`` or ``asgi.py``. Settings
    are validated here: an invalid configuration raises :class:`~affinity_mw.ConfigurationError` at boot.
    """
    global _wrapped
    is_async = iscoroutinefunction(application) or iscoroutinefunction(type(application).__call__)
    merged = {**_options(os.environ), **options}
    transport = merged.get("transport")
    if transport is not None and inspect.iscoroutinefunction(getattr(transport, "send", None)) != is_async:
        raise ConfigurationError(
            f"The transport must suit the {'ASGI' if is_async else 'WSGI'} application: an httpx.AsyncClient or "
            f"AsyncTransport under ASGI, an httpx.Client or SyncTransport under WSGI; got {type(transport).__name__}."
        )
    wrapped = (AffinityASGIMiddleware if is_async else AffinityWSGIMiddleware)(application, **merged)
    _wrapped = True
    return wrapped


class AffinityMiddleware:
    """Sets ``request.affinity`` to the :class:`~affinity_mw.Decision` the wrapped application made for the request.

    Only requests this node serves reach Django, so each has one (on the owner of a forwarded request ``hops`` is 1
    and ``marker.sender`` the forwarding node). A request that did not pass through :func:`wrap` gets ``None``: Django's
    test ``Client``, or a process that never wrapped its application, which is logged once as an error (E003).
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request: Any) -> Any:
        scope = getattr(request, "scope", None)  # an ASGIRequest: the decision is in the scope's state
        decision = (scope.get("state") or {}).get("affinity") if scope is not None else request.META.get(DECISION_KEY)
        if decision is None and not _wrapped:
            _report_unwrapped()
        request.affinity = decision
        return self.get_response(request)  # under ASGI a coroutine, which Django awaits


@functools.cache
def _report_unwrapped() -> None:
    logger.error(
        "affinity-mw (affinity_mw.E003): a request reached %s, but this process never wrapped its application, so "
        "no request is routed: every node serves every key. Wrap it in wsgi.py or asgi.py: "
        "`application = wrap(get_wsgi_application())` (or get_asgi_application), with "
        "`from affinity_mw.contrib.django import wrap`.",
        MIDDLEWARE_PATH,
    )


def _options(environ: Mapping[str, str]) -> dict[str, Any]:
    """``settings.AFFINITY`` as the middleware's keyword arguments, with every set ``AFFINITY_*`` variable winning.

    Scalars (strings, numbers, booleans) go into the ``environ`` the middleware reads, in their environment form,
    so one parser validates them whichever way they came; lists (never joined and split again), callables
    (``key``), objects (``transport``, ``membership``) and unknown names (for the error) stay keyword arguments.
    """
    configured = getattr(django_settings, "AFFINITY", None)
    if not isinstance(configured, (Mapping, type(None))):
        kind = type(configured).__name__
        raise ConfigurationError(f"settings.AFFINITY must be a dict of affinity-mw options, got {kind}.")
    env = dict(environ)
    options: dict[str, Any] = {}
    for name, value in (configured or {}).items():
        variable = _OPTION_ENV.get(name)
        if variable is None:  # membership, or an unknown name
            options[name] = value
        elif value is None or env.get(variable, "").strip():
            continue  # unset here, or the environment wins over settings.AFFINITY
        elif isinstance(value, (str, bool, int, float)):
            env[variable] = ("1" if value else "0") if isinstance(value, bool) else str(value)
        else:  # a list as given (a secret may hold a comma), a callable key, a transport object
            options[name] = value
    options["environ"] = env
    return options


# ------------------------------------------------------------------------------------------------- system checks


def _is_affinity_middleware(path: str) -> bool:
    """Our middleware, or a subclass of it under another name (a broken entry is Django's error to report)."""
    try:
        cls = None if path == MIDDLEWARE_PATH or path.startswith("django.") else import_string(path)
    except Exception:
        return False
    return path == MIDDLEWARE_PATH or (isinstance(cls, type) and issubclass(cls, AffinityMiddleware))


def _position_messages() -> list[checks.CheckMessage]:
    middleware = list(getattr(django_settings, "MIDDLEWARE", None) or [])
    positions = [i for i, path in enumerate(middleware) if _is_affinity_middleware(path)]
    hint = f"Make {MIDDLEWARE_PATH!r} the first entry of MIDDLEWARE."
    messages: list[checks.CheckMessage] = []
    if not positions:
        text = "affinity-mw is installed but its middleware is not in MIDDLEWARE, so views get no request.affinity"
        messages.append(
            checks.Warning(f"{text} (the wrapped application still routes).", hint=hint, id="affinity_mw.W002")
        )
    elif positions[0] != 0:
        text = f"{middleware[positions[0]]} is not the first entry of MIDDLEWARE: the middleware above it"
        above = ", ".join(middleware[: positions[0]])
        messages.append(
            checks.Warning(f"{text} ({above}) cannot read request.affinity.", hint=hint, id="affinity_mw.W001")
        )
    if len(positions) > 1:
        text = "The affinity-mw middleware is listed more than once in MIDDLEWARE."
        messages.append(checks.Error(text, hint="Keep one entry, the first.", id="affinity_mw.E002"))
    return messages


def _unwrapped_messages() -> list[checks.CheckMessage]:
    """E003 for a ``WSGI_APPLICATION``/``ASGI_APPLICATION`` whose module calls nothing it imports from affinity-mw:
    Django would serve every request itself. Read from the module's source, not imported: importing it would build
    the middleware, and with it DNS lookups and threads, inside ``manage.py check``."""
    messages = []
    for setting in ("WSGI_APPLICATION", "ASGI_APPLICATION"):
        dotted = getattr(django_settings, setting, None)
        try:
            spec = importlib.util.find_spec(dotted.rpartition(".")[0]) if isinstance(dotted, str) else None
            origin = spec.origin if spec is not None else None
            tree = ast.parse(Path(origin).read_bytes()) if origin else None
        except (ImportError, ValueError, OSError, SyntaxError):  # Django reports a broken setting itself
            continue
        if tree is None or _calls_affinity(tree):
            continue
        messages.append(
            checks.Error(
                f"{setting} is {dotted!r}, but {origin} never calls affinity_mw, so nothing is routed: every "
                "node serves every key itself (AffinityMiddleware only exposes the decision).",
                hint=f"Wrap the application there: `application = wrap(get_{setting[:4].lower()}_application())`, "
                "with `from affinity_mw.contrib.django import wrap`. If your servers run another module, wrap that "
                "one and silence affinity_mw.E003.",
                id="affinity_mw.E003",
            )
        )
    return messages


def _calls_affinity(tree: ast.AST) -> bool:
    """Whether the module calls a name it imports from affinity_mw (``wrap(...)``, ``affinity_mw.[...].wrap(...)``)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").partition(".")[0] == "affinity_mw":
            names.update(alias.asname or alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.asname or "affinity_mw" for a in node.names if a.name.partition(".")[0] == "affinity_mw")
    for node in ast.walk(tree):
        func = node.func if isinstance(node, ast.Call) else None
        while isinstance(func, ast.Attribute):
            func = func.value
        if isinstance(func, ast.Name) and func.id in names:
            return True
    return False


def check_affinity(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Validate ``settings.AFFINITY`` under the current ``AFFINITY_*`` environment, the middleware's place, and
    that the application the settings name is wrapped. Nothing is started (no DNS lookup, no health-check thread):
    ``manage.py check`` stays side-effect free."""
    messages = _position_messages() + _unwrapped_messages()
    try:
        options = _options(os.environ)
        env, membership = options.pop("environ"), options.pop("membership", None)
        options.pop("transport", None)  # only an object is left here: a name went to the environment
        settings = Settings.load(options, env)
        if membership is None and not settings.dns:
            StaticMembership(settings.peers, settings.self_url, vnodes=settings.vnodes, algorithm=settings.ring)
    except ValueError as exc:  # ConfigurationError, and the peer-list errors of StaticMembership
        messages.append(
            checks.Error(
                str(exc),
                hint="Fix settings.AFFINITY or the AFFINITY_* environment variables (the environment wins).",
                id="affinity_mw.E001",
            )
        )
    return messages


# Registered on import: by INSTALLED_APPS (AffinityConfig) for manage.py check, or by wrap()'s import.
checks.register(check_affinity, "affinity_mw")

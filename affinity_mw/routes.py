"""Per-route policy: which requests are routed by key, and which are served wherever they land.

``AFFINITY_ROUTES`` is a comma-separated list of rules, tried in order; the first that matches decides::

    AFFINITY_ROUTES="!GET /reports/**, POST /tenants/*/orders, /tenants/**"

A rule is ``[!][METHODS ]PATTERN``. ``!`` excludes (serve here, no key extracted); otherwise the rule includes
(route by key). ``METHODS`` is one method or several joined by ``|`` (``GET|HEAD``); without it the rule
matches every method. In ``PATTERN`` (a path, starting with ``/``), ``*`` matches any characters but ``/``
(one path segment or part of one) and ``**`` any characters at all; everything else matches itself. When no
rule matches, a request is routed if every rule is an exclusion, and served here if any rule is an inclusion
("route only these"). The whole list becomes one regular expression, matched once per request against
``METHOD PATH``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from types import SimpleNamespace
from typing import Any

__all__ = [
    "RoutePolicy",
    "app_exclusions",
    "django_exclusions",
    "flask_exclusions",
    "starlette_exclusions",
    "unrouted",
    "with_exclusions",
]

_METHOD = re.compile(r"[A-Z]+")


class RoutePolicy:
    """The compiled rules. :meth:`routed` answers for one request; :meth:`excluding` adds exclusions (what the
    framework idioms, a view decorator or a route option, compile to)."""

    __slots__ = ("_match", "_verdicts", "default", "rules")

    def __init__(self, rules: Iterable[str]) -> None:
        self.rules: tuple[str, ...] = tuple(rule.strip() for rule in rules if rule.strip())
        if not self.rules:
            raise ValueError("AFFINITY_ROUTES has no rule: give at least one, e.g. '!GET /static/**'.")
        alternatives = []
        verdicts = []
        for rule in self.rules:
            include, methods, pattern = _parse(rule)
            method_re = "|".join(methods) if methods else "[^ ]+"
            alternatives.append(f"(?:{method_re}) {_pattern(pattern)}")
            verdicts.append(include)
        self._verdicts = tuple(verdicts)
        self.default = not any(verdicts)
        # One named group per rule: the first alternative that matches is the first rule that matches.
        self._match = re.compile("|".join(f"({alt})" for alt in alternatives), re.DOTALL).fullmatch

    @classmethod
    def parse(cls, text: str) -> RoutePolicy | None:
        """The policy for a setting's text, or ``None`` when it is empty (every request is routed)."""
        rules = [part for part in text.split(",") if part.strip()]
        return cls(rules) if rules else None

    def excluding(self, rules: Iterable[str]) -> RoutePolicy:
        """A policy with ``rules`` (exclusions, ``!`` added if missing) tried before these ones."""
        extra = [rule if rule.strip().startswith("!") else "!" + rule.strip() for rule in rules]
        return RoutePolicy([*extra, *self.rules])

    def routed(self, method: str, path: str) -> bool:
        """Whether a request is routed by its key (``False``: served here without extracting a key)."""
        match = self._match(f"{method} {path}")
        if match is None:
            return self.default
        return self._verdicts[(match.lastindex or 1) - 1]

    def __repr__(self) -> str:
        return f"RoutePolicy({', '.join(self.rules)!r})"


def _parse(rule: str) -> tuple[bool, tuple[str, ...], str]:
    include = not rule.startswith("!")
    body = rule[0 if include else 1 :].strip()
    methods: tuple[str, ...] = ()
    if not body.startswith("/"):
        head, _, pattern = body.partition(" ")
        if head != "*":
            methods = tuple(method.strip().upper() for method in head.split("|"))
            if not all(_METHOD.fullmatch(method) for method in methods):
                raise ValueError(f"AFFINITY_ROUTES rule {rule!r}: expected '[!][METHOD[|METHOD...]] /PATH'.")
        body = pattern.strip()
    if not body.startswith("/") or " " in body:
        raise ValueError(f"AFFINITY_ROUTES rule {rule!r}: the pattern must be a path starting with '/'.")
    return include, methods, body


def _pattern(pattern: str) -> str:
    out = []
    for index, part in enumerate(pattern.split("**")):
        if index:
            out.append(".*")
        out.append("[^/]*".join(re.escape(piece) for piece in part.split("*")))
    return "".join(out)


_MARK = "__affinity_unrouted__"
_STARLETTE_PARAM = re.compile(r"\{[^}:]+(:[^}]+)?\}")
_WERKZEUG_PARAM = re.compile(r"<(?:([^>:]+):)?[^>]+>")


def unrouted(view: Any = None) -> Any:
    """Serve a view wherever its request lands: no key is extracted and nothing is forwarded.

    A decorator for a Starlette or FastAPI endpoint, a Flask view or a Django view (``@unrouted`` under the
    route decorator; a Django class-based view's class), or a FastAPI dependency
    (``dependencies=[Depends(unrouted)]`` on a route or a router). The middleware reads the marks when it starts
    (ASGI: when it wraps the app and at lifespan startup; Django: the URLconf, when ``wrap()`` wraps the handler;
    Flask: as views are registered), and adds an exclusion for each marked route before the ``AFFINITY_ROUTES``
    rules, so a marked route costs what any excluded route costs. Called with no view (as a dependency), it does
    nothing.
    """
    if view is not None:
        setattr(view, _MARK, True)
    return view


def _marked(function: Any) -> bool:
    return bool(getattr(function, _MARK, False)) or bool(getattr(getattr(function, "__func__", None), _MARK, False))


def starlette_exclusions(app: Any, prefix: str = "") -> list[str]:
    """Exclusion rules for the routes of a Starlette or FastAPI app (or router) marked with :func:`unrouted`."""
    rules: list[str] = []
    routes = getattr(app, "routes", None)
    if routes is None:
        routes = getattr(getattr(app, "router", None), "routes", None) or ()
    for route in routes:
        contexts = getattr(route, "effective_route_contexts", None)
        if callable(contexts):  # FastAPI's included routers resolve their routes' full paths themselves
            rules += starlette_exclusions(SimpleNamespace(routes=list(contexts())), prefix)
            continue
        path = getattr(route, "path", None)
        if not isinstance(path, str):
            continue
        if getattr(route, "endpoint", None) is None and hasattr(route, "routes"):  # a Mount
            rules += starlette_exclusions(route, prefix + path)
            continue
        dependant = getattr(route, "dependant", None)
        calls = [d.call for d in getattr(dependant, "dependencies", ())]
        if _marked(getattr(route, "endpoint", None)) or any(call is unrouted for call in calls):
            pattern = _STARLETTE_PARAM.sub(lambda m: "**" if m.group(1) == ":path" else "*", prefix + path)
            rules.append(_rule(getattr(route, "methods", None), pattern))
    return rules


def django_exclusions(patterns: Any = None, prefix: str = "/") -> list[str]:
    """Exclusion rules for the views of Django's URLconf (``ROOT_URLCONF``, or ``patterns``) marked with
    :func:`unrouted`: a function view, or a class-based view's ``as_view()`` of a marked class. ``path()`` routes
    only: a ``re_path()`` regular expression has no pattern of ours to become, and is left routed."""
    if patterns is None:
        from django.urls import get_resolver

        patterns = get_resolver().url_patterns
    rules: list[str] = []
    for entry in patterns:
        route = getattr(entry.pattern, "_route", None)  # RoutePattern; a RegexPattern has _regex instead
        if route is None:
            continue
        pattern = _WERKZEUG_PARAM.sub(lambda m: "**" if m.group(1) == "path" else "*", prefix + str(route))
        if hasattr(entry, "url_patterns"):  # include()
            rules += django_exclusions(entry.url_patterns, pattern)
        elif _marked(entry.callback) or _marked(getattr(entry.callback, "view_class", None)):
            rules.append(_rule(None, pattern))
    return rules


def app_exclusions(app: Any) -> list[str]:
    """Exclusion rules for the routes marked :func:`unrouted` in the app an adapter wraps: a Starlette or FastAPI
    app (or router), or Django's WSGI or ASGI handler. Anything else has none that can be read here."""
    if type(app).__module__.startswith("django.core.handlers"):
        return django_exclusions()
    if hasattr(app, "routes") or hasattr(getattr(app, "router", None), "routes"):
        return starlette_exclusions(app)
    return []


def flask_exclusions(app: Any) -> list[str]:
    """Exclusion rules for the views of a Flask app marked with :func:`unrouted`."""
    rules = []
    for rule in app.url_map.iter_rules():
        if _marked(app.view_functions.get(rule.endpoint)):
            pattern = _WERKZEUG_PARAM.sub(lambda m: "**" if m.group(1) == "path" else "*", rule.rule)
            rules.append(_rule(rule.methods, pattern))
    return rules


def _rule(methods: Iterable[str] | None, pattern: str) -> str:
    return f"!{'|'.join(sorted(methods))} {pattern}" if methods else f"!{pattern}"


def with_exclusions(policy: RoutePolicy | None, rules: list[str]) -> RoutePolicy | None:
    """``policy`` with ``rules`` tried first (or a policy of those rules alone); ``policy`` when there are none."""
    if not rules:
        return policy
    return policy.excluding(rules) if policy is not None else RoutePolicy(rules)

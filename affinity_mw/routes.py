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

__all__ = ["RoutePolicy"]

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

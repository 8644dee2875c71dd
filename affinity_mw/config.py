"""Settings from keyword arguments or ``AFFINITY_*`` environment variables, validated once at start-up.

One table (``OPTIONS``) defines every option: its keyword, its environment variable, its default and its parser.
The middlewares, the configuration reference in ``docs/configuration.md`` and its test all read that table, so
an option cannot exist in one place and be missing in another. Keyword arguments win over the environment, so
code can pin what a deploy must not change; with no arguments a 12-factor deploy needs no code at all.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from ._addresses import normalize_url
from ._options import BY_NAME, OPTIONS, Option, parse_list
from .keys import Extractor, KeyOptions, from_spec
from .routes import RoutePolicy

__all__ = ["OPTIONS", "ConfigurationError", "Option", "Settings", "member_ids"]


class ConfigurationError(ValueError):
    """A setting is missing, malformed or inconsistent; raised at start-up, never per request."""


def member_ids(peers: Iterable[str], self_url: str | None) -> tuple[list[str], str | None]:
    """The node ids of a static member list and this node's id, or ``ValueError`` naming the first problem.

    Settings validation and :class:`~affinity_mw.membership.StaticMembership` share it, so a deploy learns
    about a foreign ``AFFINITY_SELF`` in the same error as every other setting.
    """
    seen: dict[str, str] = {}
    for raw in peers:
        url = normalize_url(raw)
        if url in seen:
            raise ValueError(f"Peer {raw!r} is listed twice (as {seen[url]!r} and {raw!r}).")
        seen[url] = raw
    ids = list(seen)
    if self_url is not None:
        self_id = normalize_url(self_url)
        if ids and self_id not in seen:
            raise ValueError(
                f"This node ({self_url!r}, AFFINITY_SELF) is not one of the peers ({', '.join(seen.values())})."
            )
        return ids, self_id
    return ids, ids[0] if len(ids) == 1 else None


def _report(errors: list[str]) -> ConfigurationError:
    """One error for every problem; the parts come from several modules, some ending in a full stop."""
    return ConfigurationError("Invalid affinity-mw settings: " + "; ".join(e.rstrip(".") for e in errors) + ".")


@dataclass(frozen=True)
class Settings:
    """Validated settings. Build with :meth:`load`; the fields mirror :data:`OPTIONS`."""

    peers: tuple[str, ...] = ()
    self_url: str | None = None
    dns: str | None = None
    dns_port: int = 80
    dns_nameserver: tuple[str, ...] = ()
    dns_refresh: float = 5.0
    peer_scheme: str = "http"
    secret: tuple[str, ...] = field(default=(), repr=False)  # never in a log line or a traceback
    key: str | Extractor | None = None
    no_key: str = "local"
    fallback: str = "local"
    debug_headers: bool = False
    forwarded_headers: bool = False
    max_attempts: int = 3
    connect_timeout: float = 1.0
    read_timeout: float = 30.0
    deadline: float = 60.0
    keepalive: float = 1.5
    pool_size: int = 100
    pool_timeout: float = 2.0
    min_rate: float = 500.0
    min_rate_grace: float = 20.0
    max_header_bytes: int = 65536
    max_body: int = 0
    transport: str = "asyncio"
    hop_max_age: int = 30
    eject_after: int = 5
    eject_time: float = 30.0
    health_path: str = "/_affinity/health"
    health_interval: float = 1.0
    introspection: str = "signed"
    introspection_path: str = "/_affinity"
    vnodes: int = 160
    ring: str = "ring"
    workers: int = 1
    balance_factor: float | None = None
    balance_floor: int = 1
    hot_keys: int = 32
    show_keys: bool = False
    routes: str | None = None
    mode: str = "route"
    max_key_length: int = 1024
    trusted_proxies: int = 0
    jwt_key: str | None = field(default=None, repr=False)  # may be an HMAC secret
    jwt_algorithms: tuple[str, ...] = ()
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    jwt_from: str = "header:Authorization"
    jwt_leeway: float = 0.0
    cookie_secret: tuple[str | bytes, ...] = field(default=(), repr=False)
    cookie_salt: str = "cookie-session"
    cookie_max_age: int = 31 * 24 * 3600
    ws_drain_grace: float = 5.0
    ws_on_move: str = "close"
    ws_move_grace: float = 0.0
    ws_ping: float = 5.0
    ws_max_size: int = 16 * 1024 * 1024
    generated_cookie_max_age: int = 24 * 3600
    generated_cookie_secure: bool | None = None
    generated_cookie_http_only: bool = True
    generated_cookie_same_site: str = "Lax"
    generated_cookie_path: str = "/"
    generated_cookie_domain: str | None = None
    extractor: Extractor | None = field(default=None, compare=False, repr=False)

    @classmethod
    def load(cls, options: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
        """Merge keyword options over the environment, parse, and validate everything at once.

        Every problem is reported in one :class:`ConfigurationError`, so a deploy fails once with the full list
        instead of once per typo.
        """
        options = dict(options or {})
        env = os.environ if environ is None else environ
        unknown = sorted(set(options) - set(BY_NAME))
        if unknown:
            raise ConfigurationError(
                f"Unknown affinity-mw option(s): {', '.join(unknown)}. Valid options: {', '.join(sorted(BY_NAME))}."
            )
        values: dict[str, Any] = {}
        errors: list[str] = []
        for option in OPTIONS:
            if option.name in options and options[option.name] is not None:
                value = options[option.name]
                if isinstance(value, str) and option.parse is parse_list:
                    value = parse_list(value)
                elif isinstance(value, list):
                    value = tuple(value)
                values[option.name] = value
            elif env.get(option.env, "").strip():
                try:
                    values[option.name] = option.parse(env[option.env])
                except ValueError as exc:
                    errors.append(f"{option.env}: {exc}")
            else:
                values[option.name] = option.default
        if errors:
            raise _report(errors)
        settings = cls(**values)
        return settings._validated()

    def _validated(self) -> Settings:
        errors: list[str] = []
        positive = (
            "max_attempts",
            "pool_size",
            "hop_max_age",
            "vnodes",
            "workers",
            "max_key_length",
            "cookie_max_age",
            "generated_cookie_max_age",
            "ws_max_size",
            "eject_after",
            "max_header_bytes",
        )
        for name in positive:
            if getattr(self, name) < 1:
                errors.append(f"{name} ({BY_NAME[name].env}) must be at least 1, got {getattr(self, name)!r}")
        if not self.eject_time > 0:
            errors.append("eject_time (AFFINITY_EJECT_TIME) must be a positive number of seconds")
        if self.health_interval < 0:
            errors.append("health_interval (AFFINITY_HEALTH_INTERVAL) must be 0 (off) or more seconds")
        if self.balance_factor is not None and not 1 < self.balance_factor < float("inf"):
            errors.append(f"AFFINITY_BALANCE_FACTOR must be off or a number above 1, got {self.balance_factor!r}")
        if self.balance_floor < 0 or self.hot_keys < 0:
            errors.append("balance_floor (AFFINITY_BALANCE_FLOOR) and hot_keys (AFFINITY_HOT_KEYS) must be 0 or more")
        if self.balance_factor is not None and self.hot_keys < 1:
            errors.append("bounded loads (AFFINITY_BALANCE_FACTOR) count hot keys: set AFFINITY_HOT_KEYS to 1 or more")
        if self.routes is not None:
            try:
                RoutePolicy.parse(self.routes)
            except ValueError as exc:
                errors.append(str(exc))
        for name in ("ws_drain_grace", "ws_move_grace", "ws_ping"):
            if getattr(self, name) < 0:
                errors.append(f"{name} ({BY_NAME[name].env}) must be 0 or more seconds")
        for name in (
            "ring",
            "transport",
            "no_key",
            "fallback",
            "ws_on_move",
            "mode",
        ):  # keyword values skip the env checks
            option = BY_NAME[name]
            try:
                option.parse(str(getattr(self, name)))
            except ValueError as exc:
                errors.append(f"{name} ({option.env}): {exc}")
        if self.introspection_path and not self.introspection_path.startswith("/"):
            errors.append("introspection_path (AFFINITY_INTROSPECTION_PATH) must start with '/'")
        for part in self.introspection.split(","):
            part = part.strip().lower()
            if part in ("signed", "on", "off", ""):
                continue
            try:
                ipaddress.ip_network(part, strict=False)
            except ValueError:
                errors.append(f"AFFINITY_INTROSPECTION: {part!r} is not signed, on, off or a network like 10.0.0.0/8")
        if self.health_path and not self.health_path.startswith("/"):
            errors.append(f"health_path (AFFINITY_HEALTH_PATH) must start with '/', got {self.health_path!r}")
        if self.jwt_leeway < 0:
            errors.append("jwt_leeway (AFFINITY_JWT_LEEWAY) must be 0 or more seconds")
        for name in ("connect_timeout", "read_timeout", "keepalive", "deadline", "pool_timeout"):
            if not getattr(self, name) > 0:
                errors.append(f"{name} ({BY_NAME[name].env}) must be a positive number of seconds")
        if self.max_body < 0:
            errors.append("max_body (AFFINITY_MAX_BODY) must be 0 (no limit) or more bytes")
        if not self.min_rate >= 0:
            errors.append("min_rate (AFFINITY_MIN_RATE) must be 0 (off) or more bytes per second")
        if not self.min_rate_grace > 0:
            errors.append("min_rate_grace (AFFINITY_MIN_RATE_GRACE) must be a positive number of seconds")
        if self.trusted_proxies < 0:
            errors.append("trusted_proxies (AFFINITY_TRUSTED_PROXIES) must be 0 or more")
        clustered = len(self.peers) > 1 or self.dns is not None
        if self.peers and self.dns:
            errors.append("set either AFFINITY_PEERS or AFFINITY_DNS, not both")
        if clustered and not self.secret:
            errors.append("a secret (AFFINITY_SECRET) is required when there is more than one peer")
        if clustered and self.key is None:
            errors.append("a key source (AFFINITY_KEY or key=) is required when there is more than one peer")
        if not 0 < self.dns_port < 65536:
            errors.append(f"dns_port (AFFINITY_DNS_PORT) must be a TCP port, got {self.dns_port!r}")
        if not self.dns_refresh >= 1:
            errors.append("dns_refresh (AFFINITY_DNS_REFRESH) must be at least 1 second")
        if not self.dns:
            try:
                member_ids(self.peer_urls(), self.self_url)
            except ValueError as exc:
                errors.append(str(exc))
        if any(len(s) < 16 for s in self.secret):
            errors.append("every AFFINITY_SECRET must be at least 16 characters long")
        extractor: Extractor | None = None
        if callable(self.key):
            extractor = self.key
        elif isinstance(self.key, str):
            try:
                extractor = from_spec(self.key, self.key_options())
            except (ValueError, ImportError) as exc:
                message = str(exc)  # the key parser's messages name AFFINITY_KEY themselves, most of them
                errors.append(message if "AFFINITY_KEY" in message else f"AFFINITY_KEY: {message}")
        elif self.key is not None:
            errors.append(f"key must be a spec string or a callable, got {type(self.key).__name__}")
        if errors:
            raise _report(errors)
        object.__setattr__(self, "extractor", extractor)
        return self

    def peer_urls(self) -> tuple[str, ...]:
        """The static members: ``AFFINITY_PEERS``, each URL standing for ``AFFINITY_WORKERS`` members on
        consecutive ports (``affinity_mw/serve.py``)."""
        if self.workers <= 1:
            return self.peers
        from .serve import worker_urls

        return tuple(url for peer in self.peers for url in worker_urls(peer, self.workers))

    def key_options(self) -> KeyOptions:
        """The key-source settings: every KeyOptions field has a Settings field of the same name."""
        return KeyOptions(**{f.name: getattr(self, f.name) for f in fields(KeyOptions)})

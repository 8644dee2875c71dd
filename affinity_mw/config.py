"""Settings from keyword arguments or ``AFFINITY_*`` environment variables, validated once at start-up.

One table (``OPTIONS``) defines every option: its keyword, its environment variable, its default and its parser.
The middlewares, the configuration reference in ``docs/configuration.md`` and its test all read that table, so
an option cannot exist in one place and be missing in another. Keyword arguments win over the environment, so
code can pin what a deploy must not change; with no arguments a 12-factor deploy needs no code at all.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from ._addresses import normalize_url
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


def _str(value: str) -> str:
    return value.strip()


def _opt_str(value: str) -> str | None:
    return value.strip() or None


def _list(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"expected one of 1/0, true/false, yes/no, on/off, got {value!r}")


def _auto_bool(value: str) -> bool | None:
    """``auto`` (``None``: decided per request), or a boolean."""
    return None if value.strip().lower() == "auto" else _bool(value)


def _float(value: str) -> float:
    return float(value)


def _int(value: str) -> int:
    return int(value)


def _factor(value: str) -> float | None:
    lowered = value.strip().lower()
    return None if lowered in ("", "off", "0") else float(lowered)


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        lowered = value.strip().lower()
        if lowered not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}, got {value!r}")
        return lowered

    return parse


@dataclass(frozen=True)
class Option:
    """One setting: the keyword, the environment variable that sets it, how to parse it, and what it does."""

    name: str
    env: str
    default: Any
    parse: Callable[[str], Any]
    doc: str


OPTIONS: tuple[Option, ...] = (
    Option("peers", "AFFINITY_PEERS", (), _list, "Comma-separated base URLs of every node, this one included."),
    Option(
        "self_url",
        "AFFINITY_SELF",
        None,
        _opt_str,
        "This node's base URL, exactly as it appears in the peers.",
    ),
    Option(
        "dns",
        "AFFINITY_DNS",
        None,
        _opt_str,
        "Membership from DNS instead of a list: a name's A/AAAA records (`app.ns.svc`), or `srv:_http._tcp.NAME`.",
    ),
    Option("dns_port", "AFFINITY_DNS_PORT", 80, _int, "Port of every member found through A/AAAA records."),
    Option(
        "dns_nameserver",
        "AFFINITY_DNS_NAMESERVER",
        (),
        _list,
        "Nameservers to ask instead of the system resolver: `host[:port]`, IPv6 in brackets, comma-separated.",
    ),
    Option(
        "dns_refresh",
        "AFFINITY_DNS_REFRESH",
        5.0,
        _float,
        "Seconds between DNS lookups (jittered 10%; a shorter record TTL shortens it, never below 1 s).",
    ),
    Option(
        "peer_scheme",
        "AFFINITY_PEER_SCHEME",
        "http",
        _choice("http", "https"),
        "Scheme of members found through DNS.",
    ),
    Option(
        "secret",
        "AFFINITY_SECRET",
        (),
        _list,
        "Cluster secret that signs hop markers; comma-separated for rotation, newest last. Required with peers.",
    ),
    Option(
        "key",
        "AFFINITY_KEY",
        None,
        _opt_str,
        "Key sources tried in order, e.g. `header:X-Tenant,cookie:sid` (see docs/configuration.md).",
    ),
    Option(
        "no_key",
        "AFFINITY_NO_KEY",
        "local",
        _choice("local", "reject"),
        "What a request without a key gets: `local` serves it here, `reject` answers 400.",
    ),
    Option(
        "fallback",
        "AFFINITY_FALLBACK",
        "local",
        _choice("local", "error"),
        "When no candidate peer accepts a connection: `local` serves here, `error` answers 502.",
    ),
    Option(
        "debug_headers",
        "AFFINITY_DEBUG_HEADERS",
        False,
        _bool,
        "`1` adds `X-Affinity-Served-By` to responses, and `X-Affinity-Owner` when the request has a key.",
    ),
    Option(
        "forwarded_headers",
        "AFFINITY_FORWARDED_HEADERS",
        False,
        _bool,
        "`1` adds `X-Forwarded-For/-Proto/-Host` to forwarded requests, for layers outside the middleware on the "
        "owner (its app never sees them either way; the signed marker carries the client's address and scheme).",
    ),
    Option("max_attempts", "AFFINITY_MAX_ATTEMPTS", 3, _int, "Distinct peers tried when connections fail."),
    Option("connect_timeout", "AFFINITY_CONNECT_TIMEOUT", 1.0, _float, "Seconds to open a connection to a peer."),
    Option(
        "read_timeout",
        "AFFINITY_READ_TIMEOUT",
        30.0,
        _float,
        "Seconds a peer may take to send response headers, and the longest silence while streaming (504).",
    ),
    Option(
        "deadline",
        "AFFINITY_DEADLINE",
        60.0,
        _float,
        "Seconds for all attempts of one forward together, until response headers (504 when spent).",
    ),
    Option(
        "keepalive",
        "AFFINITY_KEEPALIVE",
        1.5,
        _float,
        "Seconds an idle pooled peer connection is kept; below the peers' keep-alive (gunicorn: 2, uvicorn: 5).",
    ),
    Option("pool_size", "AFFINITY_POOL_SIZE", 100, _int, "Most connections in use to one peer, per worker."),
    Option(
        "pool_timeout",
        "AFFINITY_POOL_TIMEOUT",
        2.0,
        _float,
        "Seconds a forward waits for a free connection to a busy peer before answering 503 with Retry-After.",
    ),
    Option(
        "min_rate",
        "AFFINITY_MIN_RATE",
        500.0,
        _float,
        "Slowest a client may send or read a forwarded body (ASGI), in bytes per second of its own time: one that "
        "falls behind by more than `AFFINITY_MIN_RATE_GRACE` seconds, or stalls that long, is cut off (408, or an "
        "aborted download) and the peer's slot freed, so slow clients cannot hold a peer's slots. 0 turns it off.",
    ),
    Option(
        "min_rate_grace",
        "AFFINITY_MIN_RATE_GRACE",
        20.0,
        _float,
        "Seconds of its own time a client may fall behind `AFFINITY_MIN_RATE` (or stall) on a forwarded body.",
    ),
    Option(
        "max_header_bytes",
        "AFFINITY_MAX_HEADER_BYTES",
        65536,
        _int,
        "Largest request header block (names plus values, in bytes); larger ones get 431 before routing.",
    ),
    Option(
        "max_body",
        "AFFINITY_MAX_BODY",
        0,
        _int,
        "Largest request body in bytes, 0 for no limit: a larger Content-Length gets 413 before the app or any "
        "forward; a chunked body that grows past it is cut off with 413 (see docs/operations.md).",
    ),
    Option(
        "transport",
        "AFFINITY_TRANSPORT",
        "asyncio",
        _choice("asyncio", "aiohttp", "httpx"),
        "ASGI forwarding client: `asyncio` (the built-in lean HTTP/1.1 client, fastest measured), `aiohttp` or "
        "`httpx`; WSGI uses urllib3 unless `httpx`.",
    ),
    Option("hop_max_age", "AFFINITY_HOP_MAX_AGE", 30, _int, "Seconds a hop marker stays valid."),
    Option(
        "eject_after",
        "AFFINITY_EJECT_AFTER",
        5,
        _int,
        "Consecutive failures (refused, reset, timeout, 5xx) after which a peer is set aside.",
    ),
    Option(
        "eject_time",
        "AFFINITY_EJECT_TIME",
        30.0,
        _float,
        "Seconds a peer is set aside, times its ejection count (at most 10x); also how long a draining peer is.",
    ),
    Option(
        "health_path",
        "AFFINITY_HEALTH_PATH",
        "/_affinity/health",
        _str,
        "Path the middleware answers itself: 200, or 503 while draining (details only for those allowed by "
        "AFFINITY_INTROSPECTION); a signed `POST PATH/drain` (`affinity-mw drain`) starts draining. Empty disables.",
    ),
    Option(
        "introspection",
        "AFFINITY_INTROSPECTION",
        "signed",
        _str,
        "Who may read the introspection path: `signed` (requests signed with the cluster secret, as the CLI "
        "sends), plus comma-separated networks (`127.0.0.0/8,10.0.0.0/8`), `on` (anyone) or `off` (no one).",
    ),
    Option(
        "introspection_path",
        "AFFINITY_INTROSPECTION_PATH",
        "/_affinity",
        _str,
        "Base path of the status page, its JSON (`/status.json`, `?key=K`) and metrics (`/metrics`).",
    ),
    Option(
        "health_interval",
        "AFFINITY_HEALTH_INTERVAL",
        1.0,
        _float,
        "Seconds between active checks of set-aside peers' health path; one answering 200 is taken back at once "
        "(a restarted or drain-undone node). 0 disables: set-aside peers then wait out their time.",
    ),
    Option("vnodes", "AFFINITY_VNODES", 160, _int, "Virtual nodes per unit of weight on the ring."),
    Option(
        "ring",
        "AFFINITY_RING",
        "ring",
        _choice("ring", "maglev", "rendezvous", "nginx"),
        "Who owns a key: `ring` (consistent hashing, vnodes), `maglev` (lookup table), `rendezvous` (HRW) or "
        "`nginx` (nginx's `hash $key consistent`, so an nginx in front agrees: docs/membership.md); every node "
        "must use the same (docs/benchmarks.md compares the first three).",
    ),
    Option(
        "balance_factor",
        "AFFINITY_BALANCE_FACTOR",
        None,
        _factor,
        "Bounded loads: a node takes at most this many times its fair share of recent requests; a heavy key "
        "whose owner is over it goes to its next successor with room (`off` routes every key to its owner; "
        "docs/hot-tenants.md).",
    ),
    Option(
        "balance_floor",
        "AFFINITY_BALANCE_FLOOR",
        1,
        _int,
        "Bounded loads spill nothing while this node has fewer than this many other requests in flight.",
    ),
    Option(
        "hot_keys",
        "AFFINITY_HOT_KEYS",
        32,
        _int,
        "Keys counted for the top keys by recent request rate (status page, metrics); 0 turns the count off.",
    ),
    Option(
        "show_keys",
        "AFFINITY_SHOW_KEYS",
        False,
        _bool,
        "`1` shows hot keys as they are on the status page and in metrics, instead of their hashes.",
    ),
    Option(
        "routes",
        "AFFINITY_ROUTES",
        None,
        _opt_str,
        "Which routes are routed by key: rules `[!][METHOD[|METHOD]] /PATH` (`*` one segment, `**` any), "
        "first match wins, e.g. `!GET /reports/**` (docs/hot-tenants.md).",
    ),
    Option(
        "mode",
        "AFFINITY_MODE",
        "route",
        _choice("route", "shadow"),
        "`shadow` decides and counts as if routing were on, serves everything here, and reports the locality "
        "and load spread routing would give.",
    ),
    Option(
        "workers",
        "AFFINITY_WORKERS",
        1,
        _int,
        "Ring members per peer address: each `AFFINITY_PEERS` URL or `AFFINITY_DNS` address stands for this many "
        "worker processes on consecutive ports from its port, each a member (`affinity-mw serve --workers N`).",
    ),
    Option(
        "max_key_length",
        "AFFINITY_MAX_KEY_LENGTH",
        1024,
        _int,
        "Longer keys count as no key, so a client cannot make every node hash megabytes.",
    ),
    Option(
        "trusted_proxies",
        "AFFINITY_TRUSTED_PROXIES",
        0,
        _int,
        "Proxies in front of the app whose `X-Forwarded-For` entries the `ip` key source trusts.",
    ),
    Option("jwt_key", "AFFINITY_JWT_KEY", None, _opt_str, "HMAC secret, PEM public key or JWKS URL for `jwt:`."),
    Option(
        "jwt_algorithms",
        "AFFINITY_JWT_ALGORITHMS",
        (),
        _list,
        "Accepted JWT algorithms, e.g. `RS256`; required for `jwt:`; HS and RS/ES/EdDSA never mixed.",
    ),
    Option("jwt_audience", "AFFINITY_JWT_AUDIENCE", None, _opt_str, "Exact `aud` a JWT must carry, if set."),
    Option("jwt_issuer", "AFFINITY_JWT_ISSUER", None, _opt_str, "Exact `iss` a JWT must carry, if set."),
    Option(
        "jwt_from",
        "AFFINITY_JWT_FROM",
        "header:Authorization",
        _str,
        "Where the JWT is read: `header:Authorization` (Bearer), `header:NAME` or `cookie:NAME`.",
    ),
    Option(
        "jwt_leeway",
        "AFFINITY_JWT_LEEWAY",
        0.0,
        _float,
        "Seconds of clock skew tolerated on a JWT's `exp`/`nbf`/`iat`.",
    ),
    Option(
        "cookie_secret",
        "AFFINITY_COOKIE_SECRET",
        (),
        _list,
        "Secret(s) of itsdangerous-signed cookies for `signed-cookie:`; comma-separated, newest last.",
    ),
    Option(
        "cookie_salt",
        "AFFINITY_COOKIE_SALT",
        "cookie-session",
        _str,
        "Salt of the signed cookie (Flask's session salt by default).",
    ),
    Option(
        "cookie_max_age",
        "AFFINITY_COOKIE_MAX_AGE",
        31 * 24 * 3600,
        _int,
        "Oldest signed cookie accepted, in seconds (Flask's default session lifetime).",
    ),
    Option(
        "ws_drain_grace",
        "AFFINITY_WS_DRAIN_GRACE",
        5.0,
        _float,
        "Seconds open websockets keep going once this node drains, before they are closed with 1001.",
    ),
    Option(
        "ws_on_move",
        "AFFINITY_WS_ON_MOVE",
        "close",
        _choice("close", "keep"),
        "Open websockets whose key moved to another node (one joined): `close` (1012: clients reconnect to the "
        "new owner) or `keep`.",
    ),
    Option(
        "ws_move_grace",
        "AFFINITY_WS_MOVE_GRACE",
        0.0,
        _float,
        "Seconds a websocket whose key moved keeps going before `ws_on_move=close` closes it.",
    ),
    Option(
        "ws_ping",
        "AFFINITY_WS_PING",
        5.0,
        _float,
        "Seconds between pings on a relayed websocket's leg to the owner, and to wait for each answer (0: none).",
    ),
    Option(
        "ws_max_size",
        "AFFINITY_WS_MAX_SIZE",
        16 * 1024 * 1024,
        _int,
        "Largest websocket message relayed from an owner, in bytes (uvicorn's own default limit).",
    ),
    Option(
        "generated_cookie_max_age",
        "AFFINITY_GENERATED_COOKIE_MAX_AGE",
        24 * 3600,
        _int,
        "Seconds a `generated-cookie:` cookie lives (its `Max-Age`, and the oldest signature accepted).",
    ),
    Option(
        "generated_cookie_secure",
        "AFFINITY_GENERATED_COOKIE_SECURE",
        None,
        _auto_bool,
        "`Secure` on the generated cookie: `auto` (unset: when the client's request was HTTPS), `1` or `0`.",
    ),
    Option(
        "generated_cookie_http_only",
        "AFFINITY_GENERATED_COOKIE_HTTPONLY",
        True,
        _bool,
        "`HttpOnly` on the generated cookie.",
    ),
    Option(
        "generated_cookie_same_site",
        "AFFINITY_GENERATED_COOKIE_SAMESITE",
        "Lax",
        _choice("lax", "strict", "none"),
        "`SameSite` of the generated cookie: `lax`, `strict` or `none` (which adds `Secure`).",
    ),
    Option("generated_cookie_path", "AFFINITY_GENERATED_COOKIE_PATH", "/", _str, "`Path` of the generated cookie."),
    Option(
        "generated_cookie_domain",
        "AFFINITY_GENERATED_COOKIE_DOMAIN",
        None,
        _opt_str,
        "`Domain` of the generated cookie; unset, it goes back to the issuing host only.",
    ),
)

_BY_NAME: dict[str, Option] = {option.name: option for option in OPTIONS}


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
    secret: tuple[str, ...] = ()
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
    jwt_key: str | None = None
    jwt_algorithms: tuple[str, ...] = ()
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    jwt_from: str = "header:Authorization"
    jwt_leeway: float = 0.0
    cookie_secret: tuple[str | bytes, ...] = ()
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
        unknown = sorted(set(options) - set(_BY_NAME))
        if unknown:
            raise ConfigurationError(
                f"Unknown affinity-mw option(s): {', '.join(unknown)}. Valid options: {', '.join(sorted(_BY_NAME))}."
            )
        values: dict[str, Any] = {}
        errors: list[str] = []
        for option in OPTIONS:
            if option.name in options and options[option.name] is not None:
                value = options[option.name]
                if isinstance(value, str) and option.parse is _list:
                    value = _list(value)
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
                errors.append(f"{name} ({_BY_NAME[name].env}) must be at least 1, got {getattr(self, name)!r}")
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
                errors.append(f"{name} ({_BY_NAME[name].env}) must be 0 or more seconds")
        for name in (
            "ring",
            "transport",
            "no_key",
            "fallback",
            "ws_on_move",
            "mode",
        ):  # keyword values skip the env checks
            option = _BY_NAME[name]
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
                errors.append(f"{name} ({_BY_NAME[name].env}) must be a positive number of seconds")
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

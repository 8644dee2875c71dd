"""The option table: every ``AFFINITY_*`` setting's keyword, environment variable, default, parser and doc line.

:mod:`affinity_mw.config` loads and validates settings from it, and ``scripts/gen_config_docs.py`` writes
``docs/configuration.md`` from it, so an option cannot exist in one place and be missing in another.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["BY_NAME", "OPTIONS", "Option", "parse_list"]


def _str(value: str) -> str:
    return value.strip()


def _opt_str(value: str) -> str | None:
    return value.strip() or None


def parse_list(value: str) -> tuple[str, ...]:
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
    Option("peers", "AFFINITY_PEERS", (), parse_list, "Comma-separated base URLs of every node, this one included."),
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
        parse_list,
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
        parse_list,
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
        parse_list,
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
        parse_list,
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

BY_NAME: dict[str, Option] = {option.name: option for option in OPTIONS}

"""The generated affinity cookie (generated-cookie:NAME): issued with its attributes, read back, refused when
forged, expired or signed for another purpose, and its key owned by the node that minted it."""

from __future__ import annotations

import time

import pytest
from itsdangerous import URLSafeTimedSerializer

from affinity_mw.keys import GeneratedCookie, KeyOptions, from_spec, generated_cookie, generating_cookie, header
from affinity_mw.ownership import mint_key
from affinity_mw.request import RequestView
from affinity_mw.ring import Node, build_ring

SECRET = "cluster-secret-0123456789"


def request_with(cookie: bytes | None) -> RequestView:
    headers = [(b"cookie", cookie)] if cookie is not None else []
    return RequestView("GET", "/", b"", headers, "127.0.0.1", "http")


def returned(set_cookie: bytes) -> bytes:
    """What a browser sends back: the name=value pair before the attributes."""
    return set_cookie.split(b";", 1)[0]


def attributes(set_cookie: bytes) -> list[str]:
    return [part.strip() for part in set_cookie.decode().split(";")[1:]]


def test_round_trip_and_default_attributes() -> None:
    source = generated_cookie("aff", SECRET)
    issued = source.set_cookie("k-123", https=False)
    assert issued.startswith(b"aff=")
    assert attributes(issued) == ["Max-Age=86400", "Path=/", "HttpOnly", "SameSite=Lax"]
    assert source(request_with(returned(issued))) == "k-123"
    assert source(request_with(b"other=1; " + returned(issued))) == "k-123"
    assert "Secure" in attributes(source.set_cookie("k", https=True))  # Secure follows the client's scheme
    assert source(request_with(None)) is None
    assert source(request_with(b"aff=")) is None


def test_configured_attributes() -> None:
    source = generated_cookie(
        "aff", SECRET, max_age=600, secure=True, http_only=False, same_site="strict", path="/app", domain="example.com"
    )
    assert attributes(source.set_cookie("k", https=False)) == [
        "Max-Age=600", "Path=/app", "Domain=example.com", "SameSite=Strict", "Secure",
    ]  # fmt: skip
    never = generated_cookie("aff", SECRET, secure=False)
    assert "Secure" not in attributes(never.set_cookie("k", https=True))
    cross_site = generated_cookie("aff", SECRET, same_site="None")
    assert attributes(cross_site.set_cookie("k", https=False))[-2:] == ["SameSite=None", "Secure"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"same_site": "None", "secure": False}, "needs Secure"),
        ({"same_site": "sometimes"}, "Lax, Strict or None"),
        ({"path": "app"}, "must start with '/'"),
        ({"path": "/a;Domain=evil.example"}, "no ';'"),
        ({"domain": "evil.example; Secure"}, "not a host name"),
        ({"max_age": 0}, "positive"),
        ({"secret_keys": ""}, "empty"),
    ],
)
def test_bad_settings_are_refused_at_start_up(kwargs: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {"secret_keys": SECRET, **kwargs}
    with pytest.raises((ValueError, TypeError), match=message):
        generated_cookie("aff", **arguments)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cookie name"):
        generated_cookie("a ff", SECRET)


def test_forged_expired_and_foreign_values_give_no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    source = generated_cookie("aff", SECRET, max_age=60)
    value = returned(source.set_cookie("k", https=False))
    assert source(request_with(value[:-2] + b"xx")) is None  # a tampered signature
    forged = URLSafeTimedSerializer("guessed-secret", salt="affinity-mw.generated-cookie").dumps("k").encode()
    assert source(request_with(b"aff=" + forged)) is None
    other_purpose = URLSafeTimedSerializer(SECRET, salt="cookie-session").dumps("k").encode()
    assert source(request_with(b"aff=" + other_purpose)) is None  # same secret, another salt
    not_a_string = URLSafeTimedSerializer(SECRET, salt="affinity-mw.generated-cookie").dumps({"k": 1}).encode()
    assert source(request_with(b"aff=" + not_a_string)) is None
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now + 61)
    assert source(request_with(value)) is None  # older than max_age


def test_rotation_accepts_the_old_secret_and_signs_with_the_newest() -> None:
    old = generated_cookie("aff", "old-secret")
    rotated = generated_cookie("aff", ["old-secret", "new-secret"])
    retired = generated_cookie("aff", ["new-secret"])
    from_old = returned(old.set_cookie("k", https=False))
    assert rotated(request_with(from_old)) == "k"
    assert retired(request_with(from_old)) is None
    assert retired(request_with(returned(rotated.set_cookie("k", https=False)))) == "k"


def test_spec_and_the_generating_source() -> None:
    options = KeyOptions(secret=(SECRET,), generated_cookie_max_age=120, generated_cookie_path="/app")
    extractor = from_spec("header:X-Tenant,generated-cookie:aff", options)
    source = generating_cookie(extractor)
    assert isinstance(source, GeneratedCookie)
    assert attributes(source.set_cookie("k", https=False))[:2] == ["Max-Age=120", "Path=/app"]
    assert extractor(request_with(returned(source.set_cookie("k", https=False)))) == "k"
    assert generating_cookie(from_spec("generated-cookie:aff", options)) is not None
    assert generating_cookie(header("X-Tenant")) is None
    with pytest.raises(ValueError, match="AFFINITY_SECRET"):
        from_spec("generated-cookie:aff")


def test_a_minted_key_in_the_cookie_is_owned_by_the_issuing_node() -> None:
    nodes = [Node(f"http://127.0.0.{i}:8000", f"http://127.0.0.{i}:8000") for i in (1, 2, 3)]
    ring = build_ring(nodes)
    source = generated_cookie("aff", SECRET)
    for node in nodes:
        issued = source.set_cookie(mint_key(ring, node.id), https=False)
        key = source(request_with(returned(issued)))
        assert key is not None and ring.owner_of(key) == node


def test_settings_from_the_environment() -> None:
    from affinity_mw.config import ConfigurationError, Settings

    environ = {
        "AFFINITY_KEY": "generated-cookie:aff",
        "AFFINITY_SECRET": SECRET,
        "AFFINITY_GENERATED_COOKIE_MAX_AGE": "3600",
        "AFFINITY_GENERATED_COOKIE_SAMESITE": "None",
        "AFFINITY_GENERATED_COOKIE_HTTPONLY": "0",
        "AFFINITY_GENERATED_COOKIE_PATH": "/app",
        "AFFINITY_GENERATED_COOKIE_DOMAIN": "example.com",
    }
    settings = Settings.load(environ=environ)
    assert settings.extractor is not None
    source = generating_cookie(settings.extractor)
    assert source is not None
    assert attributes(source.set_cookie("k", https=False)) == [
        "Max-Age=3600", "Path=/app", "Domain=example.com", "SameSite=None", "Secure",
    ]  # fmt: skip
    with pytest.raises(ConfigurationError, match="needs Secure"):
        Settings.load(environ={**environ, "AFFINITY_GENERATED_COOKIE_SECURE": "0"})
    with pytest.raises(ConfigurationError, match="AFFINITY_GENERATED_COOKIE_SAMESITE"):
        Settings.load(environ={**environ, "AFFINITY_GENERATED_COOKIE_SAMESITE": "sometimes"})
    with pytest.raises(ConfigurationError, match="AFFINITY_GENERATED_COOKIE_MAX_AGE"):
        Settings.load(environ={**environ, "AFFINITY_GENERATED_COOKIE_MAX_AGE": "0"})
    auto = Settings.load(environ={**environ, "AFFINITY_GENERATED_COOKIE_SAMESITE": "lax"})
    assert auto.extractor is not None
    auto_source = generating_cookie(auto.extractor)
    assert auto_source is not None
    assert "Secure" not in attributes(auto_source.set_cookie("k", https=False))
    assert "Secure" in attributes(auto_source.set_cookie("k", https=True))


def test_the_wsgi_middleware_issues_the_cookie_too() -> None:
    from affinity_mw import AffinityWSGIMiddleware

    seen: list[object] = []

    def app(environ: dict[str, object], start_response: object) -> list[bytes]:
        seen.append(environ["affinity_mw.decision"])
        start_response("200 OK", [("Content-Type", "text/plain")])  # type: ignore[operator]
        return [b"ok"]

    url = "http://127.0.0.1:8000"
    mw = AffinityWSGIMiddleware(app, peers=[url], self_url=url, secret=SECRET, key="generated-cookie:aff")

    def get(cookie: str | None, scheme: str = "http") -> dict[str, str]:
        environ: dict[str, object] = {
            "REQUEST_METHOD": "GET", "PATH_INFO": "/", "QUERY_STRING": "", "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "8000", "REMOTE_ADDR": "127.0.0.1", "wsgi.url_scheme": scheme,
        }  # fmt: skip
        if cookie is not None:
            environ["HTTP_COOKIE"] = cookie
        headers: list[tuple[str, str]] = []
        body = mw(environ, lambda status, hdrs, *exc: headers.extend(hdrs))
        assert b"".join(body) == b"ok"
        return {name.lower(): value for name, value in headers}

    issued = get(None)["set-cookie"]
    key = seen[-1].key  # type: ignore[attr-defined]
    assert key is not None and "Secure" not in issued
    assert "set-cookie" not in get(issued.split(";", 1)[0])
    assert seen[-1].key == key and seen[-1].reason in ("owner", "single-node")  # type: ignore[attr-defined]
    assert "Secure" in get(None, scheme="https")["set-cookie"]
    assert mw.core.counters["cookies_issued"] == 2

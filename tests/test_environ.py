"""Unit tests of the WSGI request view (:mod:`affinity_mw._environ`): headers where WSGI keeps them, and the
first node's view restored on a hop."""

from __future__ import annotations

from affinity_mw._environ import EnvironView, environ_headers, restore_environ
from affinity_mw.hop import HopSigner

SIGNER = HopSigner("environ-test-secret-0123456789")


def test_environ_view_reads_headers_where_wsgi_keeps_them() -> None:
    view = EnvironView({"HTTP_X_TENANT": "acme", "CONTENT_TYPE": "text/plain", "REQUEST_METHOD": "POST"})
    assert view.first(b"x-tenant") == b"acme" and view.header("Content-Type") == "text/plain"
    assert view.first(b"x-missing") is None
    assert (b"x-tenant", b"acme") in view.headers


def marker(added: str) -> object:
    token = SIGNER.sign(sender="a", key_hash=1, ring_checksum="c", client=("10.1.2.3", 4567), scheme="https",
                        added=added)  # fmt: skip
    return SIGNER.verify(token)


def test_restore_undoes_exactly_what_the_forwarder_added() -> None:
    environ = {
        "HTTP_X_FORWARDED_FOR": "1.1.1.1, 10.1.2.3",
        "HTTP_X_FORWARDED_PROTO": "https",
        "HTTP_X_FORWARDED_HOST": "example.test",
        "HTTP_X_AFFINITY_HOP": "token",
        "HTTP_X_TENANT": "acme",
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.url_scheme": "http",
    }
    restored = restore_environ(dict(environ), marker("fph"))  # type: ignore[arg-type]
    assert restored == {
        "HTTP_X_FORWARDED_FOR": "1.1.1.1",
        "HTTP_X_TENANT": "acme",
        "REMOTE_ADDR": "10.1.2.3",
        "REMOTE_PORT": "4567",
        "wsgi.url_scheme": "https",
    }
    kept = restore_environ(dict(environ), marker(""))  # type: ignore[arg-type]
    assert kept["HTTP_X_FORWARDED_FOR"] == "1.1.1.1, 10.1.2.3" and kept["HTTP_X_FORWARDED_HOST"] == "example.test"
    assert "HTTP_X_AFFINITY_HOP" not in kept
    alone = restore_environ({"HTTP_X_FORWARDED_FOR": "10.1.2.3"}, marker("f"))  # type: ignore[arg-type]
    assert "HTTP_X_FORWARDED_FOR" not in alone


def test_without_a_marker_only_our_headers_go() -> None:
    environ = {"HTTP_X_AFFINITY_HOP": "forged", "HTTP_X_FORWARDED_FOR": "9.9.9.9", "REMOTE_ADDR": "127.0.0.1"}
    assert restore_environ(environ, None) == {"HTTP_X_FORWARDED_FOR": "9.9.9.9", "REMOTE_ADDR": "127.0.0.1"}
    assert environ_headers({"HTTP_X_A": "1", "CONTENT_LENGTH": "3"}) == [(b"x-a", b"1"), (b"content-length", b"3")]

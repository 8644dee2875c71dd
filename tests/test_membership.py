from __future__ import annotations

import pytest

from affinity_mw.membership import StaticMembership, normalize_url


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("http://10.0.0.1:8000", "http://10.0.0.1:8000"),
        ("HTTP://Node-A.Example:8000/", "http://node-a.example:8000"),
        ("http://10.0.0.1", "http://10.0.0.1:80"),
        ("https://10.0.0.1", "https://10.0.0.1:443"),
        ("http://[::1]:9000", "http://[::1]:9000"),
        ("  http://h:1  ", "http://h:1"),
    ],
)
def test_normalize(raw: str, expected: str) -> None:
    assert normalize_url(raw) == expected


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("10.0.0.1:8000", "http:// or https://"),
        ("ftp://h:1", "http:// or https://"),
        ("http://:8000", "no host"),
        ("http://h:99999", "malformed"),
        ("http://h:1/app", "base URL"),
        ("http://h:1?x=1", "base URL"),
        ("http://u:p@h:1", "credentials"),
    ],
)
def test_malformed_urls_are_clear_errors(raw: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        normalize_url(raw)


def test_duplicates_and_foreign_self_rejected() -> None:
    with pytest.raises(ValueError, match="listed twice"):
        StaticMembership(["http://h:1", "HTTP://H:1/"])
    with pytest.raises(ValueError, match="not one of the peers"):
        StaticMembership(["http://h:1", "http://h:2"], "http://h:3")


def test_self_resolution() -> None:
    assert StaticMembership(["http://h:1"]).self_id == "http://h:1"
    assert StaticMembership(["http://h:1", "http://h:2"]).self_id is None
    m = StaticMembership(["http://h:1", "http://h:2"], "http://H:2/")
    assert m.self_id == "http://h:2"
    assert len(m.ring) == 2
    assert StaticMembership([]).ring.owner_of("k") is None

from __future__ import annotations

import time

import pytest
from itsdangerous import TimestampSigner

from affinity_mw.hop import HopSigner

SECRET = "hop-test-secret-0123456789"


def test_round_trip_carries_every_field() -> None:
    signer = HopSigner(SECRET)
    token = signer.sign(
        sender="http://127.0.0.1:8000",
        key_hash=0xDEADBEEF,
        ring_checksum="abc123",
        attempt=2,
        client=("::1", 5555),
        scheme="https",
        added="fp",
    )
    marker = signer.verify(token)
    assert marker is not None
    assert (marker.sender, marker.key_hash, marker.ring_checksum, marker.attempt) == (
        "http://127.0.0.1:8000",
        0xDEADBEEF,
        "abc123",
        2,
    )
    assert (marker.client_host, marker.client_port, marker.scheme, marker.added) == (
        "::1",
        5555,
        "https",
        "fp",
    )


@pytest.mark.parametrize("token", [b"", b"garbage", b"a|b|c", b"\xff\xfe", b"x" * 100_000])
def test_garbage_is_rejected_not_raised(token: bytes) -> None:
    assert HopSigner(SECRET).verify(token) is None


def test_other_secret_rejected_and_rotation_accepted() -> None:
    old = HopSigner("old-secret-0123456789abc")
    token = old.sign(sender="s", key_hash=1, ring_checksum="c")
    assert HopSigner(SECRET).verify(token) is None
    assert HopSigner(["old-secret-0123456789abc", SECRET]).verify(token) is not None


def test_tampered_payload_rejected() -> None:
    token = HopSigner(SECRET).sign(sender="s", key_hash=1, ring_checksum="c").decode()
    assert HopSigner(SECRET).verify(token.replace("|1|", "|2|", 1)) is None


def test_stale_marker_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    signer = HopSigner(SECRET, max_age=5)
    token = signer.sign(sender="s", key_hash=1, ring_checksum="c")
    monkeypatch.setattr(time, "time", lambda: time.monotonic() + 1e10)
    assert signer.verify(token) is None


def test_token_of_same_secret_for_another_purpose_is_rejected() -> None:
    # Same secret, default itsdangerous salt: a token minted for something else must not pass as a marker.
    other = TimestampSigner(SECRET).sign("s|0000000000000001|c|1|||http|")
    assert HopSigner(SECRET).verify(other) is None


def test_construction_errors() -> None:
    with pytest.raises(ValueError, match="secret"):
        HopSigner([])
    with pytest.raises(ValueError, match="max_age"):
        HopSigner(SECRET, max_age=0)
    with pytest.raises(ValueError, match="must not contain"):
        HopSigner(SECRET).sign(sender="a|b", key_hash=1, ring_checksum="c")

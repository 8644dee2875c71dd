from __future__ import annotations

import time

import pytest
from itsdangerous import Signer, TimestampSigner

from affinity_mw.hop import HopSigner, request_binding

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


def test_stale_and_far_future_markers_rejected_small_skew_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    signer = HopSigner(SECRET, max_age=5, max_skew=2)
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now)
    token = signer.sign(sender="s", key_hash=1, ring_checksum="c")
    monkeypatch.setattr(time, "time", lambda: now + 5.5)
    assert signer.verify(token) is None, "older than max_age"
    monkeypatch.setattr(time, "time", lambda: now + 4.9)
    assert signer.verify(token) is not None
    # A receiver whose clock is behind the sender's: milliseconds (even across a second boundary) pass.
    monkeypatch.setattr(time, "time", lambda: now - 0.005)
    assert signer.verify(token) is not None
    monkeypatch.setattr(time, "time", lambda: now - 1.9)
    assert signer.verify(token) is not None
    monkeypatch.setattr(time, "time", lambda: now - 2.1)
    assert signer.verify(token) is None, "too far in the future"


def test_fields_a_client_can_influence_cannot_break_the_format() -> None:
    signer = HopSigner(SECRET)
    token = signer.sign(sender="s", key_hash=1, ring_checksum="c", client=("1.2.3.4|x%7C", 1), scheme="ht|tp")
    marker = signer.verify(token)
    assert marker is not None and marker.client_host == "1.2.3.4|x%7C" and marker.scheme == "ht|tp"


def test_token_of_same_secret_for_another_purpose_is_rejected() -> None:
    # Same secret, default itsdangerous salt: a token minted for something else must not pass as a marker.
    for payload in (
        f"{int(time.time() * 1000):x}|s|0000000000000001|c|1|||http|",
        f"{int(time.time() * 1000):x}|s|r|{request_binding('GET', '/')}|0000000000000001|c|1|0|||http|",
    ):
        assert HopSigner(SECRET).verify(Signer(SECRET).sign(payload)) is None
        assert HopSigner(SECRET).verify(TimestampSigner(SECRET).sign(payload)) is None


def test_construction_errors() -> None:
    with pytest.raises(ValueError, match="secret"):
        HopSigner([])
    with pytest.raises(ValueError, match="max_age"):
        HopSigner(SECRET, max_age=0)


def test_tokens_are_itsdangerous_signer_tokens_byte_for_byte() -> None:
    """The marker is signed without itsdangerous's per-call layers, but must stay an itsdangerous token: nodes
    of different versions in one cluster during an upgrade must accept each other's markers."""
    import hashlib

    from itsdangerous import Signer

    keys = ["old-secret-0123456789abcdef", "new-secret-0123456789abcdef"]
    ours = HopSigner(keys)
    theirs = Signer(keys, salt="affinity-mw.hop.v3", digest_method=hashlib.sha256)
    token = ours.sign(sender="http://a:1", key_hash=7, ring_checksum="ring:abc", client=("10.0.0.1|%", 5), added="fp")
    value = theirs.unsign(token)  # raises if the signature is not itsdangerous's
    assert theirs.sign(value) == token
    # ...and a token itsdangerous signs with either key of the rotation list verifies here.
    for key in keys:
        old = Signer(key, salt="affinity-mw.hop.v3", digest_method=hashlib.sha256).sign(value)
        marker = ours.verify(old)
        assert marker is not None and marker.client_host == "10.0.0.1|%" and marker.added == "fp"
    assert HopSigner(keys[0]).verify(token) is None  # signed with the new key: unknown to a node with the old only
    for bad in (token[:-1], token + b"A", token.replace(b".", b"!"), b"", b".", b"\xff." + token, token.decode()[:-2]):
        assert ours.verify(bad) is None


def test_tokens_are_the_same_through_the_python_hmac_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    """``HopSigner`` MACs through the C state under ``hmac.HMAC`` where CPython has one; without it (another
    Python, or a future CPython) it falls back to ``hmac.HMAC`` itself, which must give the same tokens."""
    import hmac

    from affinity_mw import hop

    fields = {"sender": "http://a:1", "key_hash": 7, "ring_checksum": "c|%", "client": ("fe80::1%eth0", 9)}
    monkeypatch.setattr(hop.time, "time", lambda: 1_800_000_000.5)
    fast = HopSigner(["old", "new"])
    monkeypatch.setattr(hop, "_keyed", lambda key: hmac.new(key, digestmod="sha256"))
    fallback = HopSigner(["old", "new"])
    assert type(fast._signing) is not hmac.HMAC and type(fallback._signing) is hmac.HMAC
    token = fast.sign(**fields)  # type: ignore[arg-type]
    assert fallback.sign(**fields) == token  # type: ignore[arg-type]
    assert fast.verify(token) is not None and fallback.verify(token) is not None


# ----------------------------------------------------------------------------------------------------------
# Binding: a marker is for one request to one node
# ----------------------------------------------------------------------------------------------------------

BOUND = {
    "sender": "http://127.0.0.1:8000",
    "receiver": "http://127.0.0.2:8000",
    "method": "POST",
    "target": "/tenants/acme/orders?x=1",
    "key_hash": 0xC0FFEE,
    "ring_checksum": "ring:1",
}


def test_bound_marker_matches_only_its_request_and_node() -> None:
    signer = HopSigner(SECRET)
    marker = signer.verify(signer.sign(**BOUND, client=("203.0.113.9", 4000), scheme="https"))  # type: ignore[arg-type]
    assert marker is not None and not marker.legacy and not marker.rerouted
    assert (marker.receiver, marker.key_hash, marker.client_host) == ("http://127.0.0.2:8000", 0xC0FFEE, "203.0.113.9")
    assert marker.mismatch("POST", "/tenants/acme/orders?x=1", "http://127.0.0.2:8000") is None
    assert marker.mismatch("GET", "/tenants/acme/orders?x=1", "http://127.0.0.2:8000") == "request"
    assert marker.mismatch("POST", "/tenants/acme/orders?x=2", "http://127.0.0.2:8000") == "request"
    assert marker.mismatch("POST", "/tenants/acme/orders", "http://127.0.0.2:8000") == "request"
    assert marker.mismatch("POST", "/tenants/acme/orders?x=1", "http://127.0.0.3:8000") == "node"
    assert marker.mismatch("POST", "/tenants/acme/orders?x=1", None) == "node"


def test_binding_cannot_be_edited_in_the_token() -> None:
    signer = HopSigner(SECRET)
    token = signer.sign(**BOUND).decode()  # type: ignore[arg-type]
    other = request_binding("GET", "/admin")
    assert signer.verify(token.replace(request_binding("POST", "/tenants/acme/orders?x=1"), other)) is None
    assert signer.verify(token.replace("127.0.0.2", "127.0.0.3")) is None
    assert signer.verify(token.replace("|0|", "|1|", 1)) is None  # the rerouted flag is signed too


def test_rerouted_flag_and_escaped_receiver_round_trip() -> None:
    signer = HopSigner(SECRET)
    fields = dict(BOUND, receiver="http://a|b%:1")
    marker = signer.verify(signer.sign(**fields, rerouted=True))  # type: ignore[arg-type]
    assert marker is not None and marker.rerouted and marker.receiver == "http://a|b%:1"
    assert marker.mismatch("POST", "/tenants/acme/orders?x=1", "http://a|b%:1") is None


def test_request_binding_separates_method_and_target() -> None:
    assert request_binding("GET", "/a b") != request_binding("GET /a", "b")
    assert request_binding("GET", "/x") != request_binding("HEAD", "/x")
    assert len(request_binding("GET", "/\u00e9\udcff")) == 16  # any text, never an exception


def test_legacy_markers_verify_flagged_and_unbound(monkeypatch: pytest.MonkeyPatch) -> None:
    """A node of the previous version signs unbound markers with the v2 salt; during a rolling upgrade they are
    authentic here, flagged ``legacy`` (the router honours and counts them); never signed here."""
    import hashlib

    payload = f"{int(time.time() * 1000):x}|http://old:1|00000000000000ff|ring:1|1|10.0.0.9|77|https|f"
    legacy = Signer(SECRET, salt="affinity-mw.hop.v2", digest_method=hashlib.sha256).sign(payload)
    marker = HopSigner(SECRET).verify(legacy)
    assert marker is not None and marker.legacy
    assert (marker.sender, marker.key_hash, marker.client_host, marker.scheme) == (
        "http://old:1",
        255,
        "10.0.0.9",
        "https",
    )
    assert marker.mismatch("DELETE", "/anything", "http://any:1") is None
    # A v2-salted token in the new format, or a v3-salted one in the old format, is no marker.
    assert (
        HopSigner(SECRET).verify(Signer(SECRET, salt="affinity-mw.hop.v3", digest_method=hashlib.sha256).sign(payload))
        is None
    )
    v3 = HopSigner(SECRET).sign(**BOUND).rpartition(b".")[0]  # type: ignore[arg-type]
    assert (
        HopSigner(SECRET).verify(Signer(SECRET, salt="affinity-mw.hop.v2", digest_method=hashlib.sha256).sign(v3))
        is None
    )
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now + 31)
    assert HopSigner(SECRET).verify(legacy) is None  # legacy markers expire like any other

from __future__ import annotations

import pytest

from affinity_mw.forward import BadFraming, body_framing, request_headers, response_headers, restore_forwarded


def names(headers: list[tuple[bytes, bytes]]) -> list[bytes]:
    return [n for n, _ in headers]


def test_hop_by_hop_headers_dropped_and_connection_named_headers_kept() -> None:
    out, _ = request_headers(
        [
            (b"host", b"app"),
            (b"connection", b"keep-alive, X-Private, x-affinity-hop"),
            (b"x-private", b"1"),
            (b"keep-alive", b"timeout=5"),
            (b"te", b"trailers"),
            (b"trailer", b"x"),
            (b"transfer-encoding", b"chunked"),
            (b"content-length", b"10"),
            (b"upgrade", b"h2c"),
            (b"proxy-authorization", b"Basic x"),
            (b"proxy-connection", b"keep-alive"),
            (b"expect", b"100-continue"),
            (b"accept", b"*/*"),
        ],
        client_host="10.1.1.1",
        scheme="http",
        forwarded=True,
    )
    # x-private stays: the owner's app sees what it would have seen served locally (Connection names are ignored).
    assert names(out) == [
        b"host", b"x-private", b"accept", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"
    ]  # fmt: skip


def test_internal_headers_and_folded_spellings_dropped() -> None:
    out, _ = request_headers(
        [
            (b"x-affinity-hop", b"forged"),
            (b"x_affinity_hop", b"forged"),
            (b"X-Affinity-Owner", b"x"),
            (b"x-affinityish", b"kept"),
        ],
        client_host=None,
        scheme="http",
        forwarded=True,
    )
    assert names(out) == [b"x-affinityish", b"x-forwarded-proto"]


def test_by_default_nothing_is_added_and_the_clients_own_headers_pass_as_they_are() -> None:
    """The marker carries the client's address and scheme, so by default the hop adds no X-Forwarded-*: the
    client's own (repeats included) pass unchanged, the same hop-by-hop and internal headers are dropped (not
    what Connection names), and the owner has nothing to undo."""
    original = [
        (b"Host", b"app.example"),
        (b"X-Forwarded-For", b"203.0.113.7"),
        (b"connection", b"x-private"),
        (b"x-private", b"1"),
        (b"x-forwarded-for", b"10.0.0.1"),
        (b"x_affinity_hop", b"forged"),
        (b"x-forwarded-proto", b"https"),
        (b"content-length", b"3"),
    ]
    out, added = request_headers(original, client_host="10.0.0.2", scheme="http")
    assert added == ""
    assert out == [
        (b"host", b"app.example"),
        (b"x-forwarded-for", b"203.0.113.7"),
        (b"x-private", b"1"),
        (b"x-forwarded-for", b"10.0.0.1"),
        (b"x-forwarded-proto", b"https"),
    ]
    assert restore_forwarded([*out, (b"x-affinity-hop", b"m")], added) == out


def test_forwarded_headers_appended_and_restored_exactly() -> None:
    original = [
        (b"host", b"app.example"),
        (b"x-forwarded-for", b"203.0.113.7"),
        (b"x-forwarded-for", b"10.0.0.1"),
        (b"accept", b"*/*"),
    ]
    out, added = request_headers(original, client_host="10.0.0.2", scheme="https", forwarded=True)
    assert added == "fph"
    assert (b"x-forwarded-for", b"203.0.113.7, 10.0.0.1, 10.0.0.2") in out
    assert (b"x-forwarded-proto", b"https") in out and (b"x-forwarded-host", b"app.example") in out
    restored = restore_forwarded([*out, (b"x-affinity-hop", b"m")], added)
    assert restored == [
        (b"host", b"app.example"),
        (b"accept", b"*/*"),
        (b"x-forwarded-for", b"203.0.113.7, 10.0.0.1"),
    ]


def test_existing_proto_and_host_are_kept() -> None:
    original = [(b"host", b"h"), (b"x-forwarded-proto", b"https"), (b"x-forwarded-host", b"edge")]
    out, added = request_headers(original, client_host="10.0.0.2", scheme="http", forwarded=True)
    assert added == "f"
    assert restore_forwarded(out, added) == original


def test_response_headers_keep_repeats_and_drop_hop_by_hop() -> None:
    raw = [
        (b"Set-Cookie", b"a=1"),
        (b"Content-Encoding", b"gzip"),
        (b"Set-Cookie", b"b=2"),
        (b"Connection", b"close, X-Internal"),
        (b"X-Internal", b"secret"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Date", b"Mon"),
        (b"Server", b"uvicorn"),
        (b"Content-Length", b"10"),
        (b"Set-Cookie", b"c=3"),
    ]
    assert response_headers(raw) == [
        (b"set-cookie", b"a=1"),
        (b"content-encoding", b"gzip"),
        (b"set-cookie", b"b=2"),
        (b"content-length", b"10"),
        (b"set-cookie", b"c=3"),
    ]


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([], 0),
        ([(b"content-length", b"12")], 12),
        ([(b"content-length", b"12"), (b"content-length", b"12")], 12),  # identical repeats are one value
        ([(b"transfer-encoding", b"chunked")], None),
        ([(b"transfer-encoding", b" Chunked ")], None),
    ],
)
def test_body_framing_reads_the_length_the_server_enforces(
    headers: list[tuple[bytes, bytes]], expected: int | None
) -> None:
    assert body_framing(headers) == expected


@pytest.mark.parametrize(
    "headers",
    [
        [(b"content-length", b"4"), (b"transfer-encoding", b"chunked")],
        [(b"transfer-encoding", b"chunked"), (b"content-length", b"4")],
        [(b"content-length", b"4"), (b"content-length", b"5")],
        [(b"content-length", b"+4")],
        [(b"content-length", b"4_0")],
        [(b"content-length", b"-1")],
        [(b"transfer-encoding", b"gzip, chunked")],
        [(b"transfer-encoding", b"chunked"), (b"transfer-encoding", b"chunked")],
        [(b"transfer-encoding", b"identity")],
    ],
)
def test_body_framing_refuses_what_two_parsers_could_read_differently(headers: list[tuple[bytes, bytes]]) -> None:
    with pytest.raises(BadFraming):
        body_framing(headers)

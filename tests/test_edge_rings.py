"""The nginx ring agrees with the real nginx: Debian's, started here on loopback.

For every cluster size from 1 to 10 servers, with weights, thousands of keys go through nginx (pipelined
on one connection, so the whole check takes a few seconds) and the server nginx chose must be the owner
:class:`NginxRing` computes. Keys include bytes beyond ASCII, sent raw in a header, as
the key sources see them (latin-1 text of the raw bytes).
"""

from __future__ import annotations

import random
import socket
import zlib
from pathlib import Path

from cluster import free_port
from proxies import get, nginx, pipelined

from affinity_mw.ring import NginxRing, Node, Ring, nginx_server

HOSTS = [f"127.0.0.{i}" for i in range(1, 11)]
SIZES = range(1, 11)
KEYS_PER_SIZE = 1500


def weights(size: int) -> list[int]:
    rng = random.Random(size)
    return [rng.choice((1, 1, 1, 2, 3, 5)) for _ in range(size)]


def raw_keys(count: int, seed: int) -> list[bytes]:
    """Tenant-like ids, random printable ASCII and UTF-8 text; none starts or ends with whitespace."""
    rng = random.Random(seed)
    keys: list[bytes] = []
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789-_.:/=+~!$&'()*,;@"
    unicode = "éüßøñ東京데이터😀ĳ"
    while len(keys) < count:
        kind = len(keys) % 3
        if kind == 0:
            key = f"tenant-{rng.randrange(10**6)}"
        elif kind == 1:
            key = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40)))
        else:
            key = "".join(rng.choice(alphabet + unicode) for _ in range(rng.randint(1, 12)))
        data = key.encode()
        if data.decode("latin-1").strip() == data.decode("latin-1"):
            keys.append(data)
    return keys


def ring_for(size: int, port: int) -> Ring:
    return NginxRing(
        [Node(f"http://{h}:{port}", f"http://{h}:{port}", w) for h, w in zip(HOSTS, weights(size), strict=False)]
    )


def test_nginx_consistent_hash_picks_the_owner_the_ring_computes(tmp_path: Path) -> None:
    up_port, front_port, dead_port = free_port(HOSTS), free_port(["127.0.0.1"]), free_port(HOSTS[:5])
    rings = {size: ring_for(size, up_port) for size in SIZES}
    dead = NginxRing([Node(f"http://{h}:{dead_port}", f"http://{h}:{dead_port}") for h in HOSTS[:5]])
    body = "".join(f"    server {{ listen {h}:{up_port}; location / {{ return 200; }} }}\n" for h in HOSTS)
    for size, ring in [*rings.items(), ("dead", dead)]:
        # Written in ring order (sorted by id): equal points go to the server written first, in both.
        servers = "".join(f"        server {nginx_server(n)} weight={n.weight} max_fails=0;\n" for n in ring.nodes)
        body += f"    upstream c{size} {{\n        hash $http_x_k consistent;\n{servers}        keepalive 4;\n    }}\n"
    body += f"""    server {{
        listen 127.0.0.1:{front_port};
        keepalive_requests 100000;
        add_header X-Up $upstream_addr always;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        location /c {{ proxy_pass http://c$arg_c; }}
        location /dead {{ proxy_pass http://cdead; proxy_next_upstream error; proxy_next_upstream_tries 0; }}
    }}
"""
    ready = [("127.0.0.1", front_port), *((h, up_port) for h in HOSTS)]
    keys = raw_keys(KEYS_PER_SIZE, seed=1)
    with nginx(tmp_path / "nginx", body, ready):
        for size, ring in rings.items():
            answers = pipelined("127.0.0.1", front_port, (get(f"/c?c={size}", {b"X-K": k}) for k in keys))
            chosen = [a[b"x-up"].decode() for a in answers]
            expected = [nginx_server(ring.owner_of(k.decode("latin-1"))) for k in keys]  # type: ignore[arg-type]
            assert all(a[b":status"] == b"200" for a in answers)
            assert chosen == expected, (
                f"{size} servers: {sum(c != e for c, e in zip(chosen, expected, strict=True))} differ"
            )
            assert len(set(chosen)) == size  # every server owns some keys: the check covers each
        # Every upstream refuses: nginx tries them in its failover order and lists them all in $upstream_addr.
        # nginx falls back to round robin after 20 points of already-tried servers, so only the first two of
        # five equally weighted servers are certain; those are what a failover uses.
        answers = pipelined("127.0.0.1", front_port, (get("/dead", {b"X-K": k}) for k in keys[:500]))
        for key, answer in zip(keys[:500], answers, strict=True):
            tried = answer[b"x-up"].decode().split(", ")
            order = [nginx_server(n) for n in dead.successors(dead.key_hash(key.decode("latin-1")))]
            assert tried[:2] == order[:2]
            assert sorted(tried) == sorted(order)


def test_nginx_server_names_and_the_split_nginx_makes() -> None:
    from affinity_mw.ring._nginx import _host_port

    assert nginx_server(Node("http://10.0.0.1:8000", "x")) == "10.0.0.1:8000"
    assert nginx_server(Node("https://[::1]:8443", "x")) == "[::1]:8443"
    assert nginx_server(Node("app-0.app.ns.svc:80", "x")) == "app-0.app.ns.svc:80"
    assert _host_port("10.0.0.1:8000") == (b"10.0.0.1", b"8000")
    assert _host_port("[::1]:8443") == (b"[::1]", b"8443")
    assert _host_port("example.com") == (b"example.com", b"")
    assert _host_port("unix:/run/app.sock") == (b"/run/app.sock", b"")


def test_nginx_ring_points_weights_and_failover() -> None:
    nodes = [Node(f"http://10.0.0.{i}:80", f"http://10.0.0.{i}:80", 2 if i == 1 else 1) for i in range(1, 5)]
    ring = NginxRing(nodes)
    assert len(ring._points) - 1 == 160 * 5  # no CRC32 collision among these 800 points
    assert ring.key_hash("acme") == zlib.crc32(b"acme")
    assert ring.key_hash("é") == zlib.crc32(b"\xe9")  # latin-1: the raw byte of a header value
    assert ring.key_hash("東") == zlib.crc32("東".encode())  # beyond latin-1: UTF-8
    shares = ring.shares()
    assert sum(shares.values()) == 1.0 and shares["http://10.0.0.1:80"] > max(shares.values()) * 0.9
    for i in range(300):
        h = ring.key_hash(f"k{i}")
        order = ring.successors(h)
        assert order[0] == ring.owner(h) == ring.owner_of(f"k{i}") and len(set(order)) == 4
        # The next distinct server is the owner once the owner is gone, as nginx's failover walk finds it.
        assert NginxRing([n for n in nodes if n != order[0]]).owner(h) == order[1]
        assert ring.owner(h + (7 << 32)) == ring.owner(h)  # a 64-bit hash keeps its low 32 bits
    other = NginxRing(nodes[:3])
    assert 0.2 < ring.moved_fraction(other) < 0.3  # the fourth server's share moves, nothing else
    assert ring.checksum != other.checksum and repr(ring).startswith("NginxRing(nodes=4")


def forge_crc32(target: int) -> bytes:
    """A printable key whose CRC32 is ``target``: CRC32 is affine over GF(2), so 4 appended bytes can reach any
    value; prefixes are tried until those bytes are all printable (about 1 in 55)."""
    for i in range(100_000):
        prefix = f"tie{i}-".encode()
        base = zlib.crc32(prefix + bytes(4))
        basis: list[tuple[int, int]] = []  # (vector, which input bits make it), reduced
        for bit in range(32):
            vector, combo = zlib.crc32(prefix + (1 << bit).to_bytes(4, "little")) ^ base, 1 << bit
            for bv, bc in basis:
                if vector ^ bv < vector:
                    vector, combo = vector ^ bv, combo ^ bc
            if vector:
                basis = sorted([*basis, (vector, combo)], reverse=True)
        want, combo = target ^ base, 0
        for bv, bc in basis:
            if want ^ bv < want:
                want, combo = want ^ bv, combo ^ bc
        suffix = combo.to_bytes(4, "little")
        if not want and all(0x21 <= b <= 0x7E for b in suffix):
            assert zlib.crc32(prefix + suffix) == target
            return prefix + suffix
    raise AssertionError("no printable key found")


def test_equal_points_go_to_the_server_written_first_as_in_nginx(tmp_path: Path) -> None:
    """A CRC32 collision between two servers' points: nginx keeps the point of the server written first (glibc's
    qsort is stable), and so does the ring, for the order ``affinity-mw edge nginx`` writes."""
    rng = random.Random()
    for _ in range(2000):
        port = rng.randrange(20000, 60000)
        urls = [f"http://{h}:{port}" for h in HOSTS]
        ring = NginxRing([Node(u, u, 5) for u in urls])
        placed: dict[int, str] = {}
        tie = None
        for node in ring.nodes:
            host, _, p = nginx_server(node).partition(":")
            base, previous = zlib.crc32(host.encode() + b"\0" + p.encode()), 0
            for _ in range(800):
                previous = zlib.crc32(previous.to_bytes(4, "little"), base)
                if placed.get(previous, node.id) != node.id:
                    tie = (previous, placed[previous], node.id)
                placed.setdefault(previous, node.id)
        if tie is not None and all(_free(h, port) for h in HOSTS):
            break
    else:
        raise AssertionError("no port with a CRC32 collision found")
    point, first, second = tie
    key = forge_crc32(point)
    assert ring.owner_of(key.decode()).id == first  # type: ignore[union-attr]
    front = free_port(["127.0.0.1"])
    body = "".join(f"    server {{ listen {h}:{port}; location / {{ return 200; }} }}\n" for h in HOSTS)
    for name, nodes in (("ring", ring.nodes), ("reversed", tuple(reversed(ring.nodes)))):
        servers = "".join(f"        server {nginx_server(n)} weight=5;\n" for n in nodes)
        body += f"    upstream {name} {{\n        hash $http_x_k consistent;\n{servers}    }}\n"
    body += f"""    server {{
        listen 127.0.0.1:{front};
        add_header X-Up $upstream_addr always;
        location /ring {{ proxy_pass http://ring; }}
        location /reversed {{ proxy_pass http://reversed; }}
    }}
"""
    with nginx(tmp_path, body, [("127.0.0.1", front), *((h, port) for h in HOSTS)]):
        ordered, reverse = pipelined("127.0.0.1", front, [get("/ring", {b"X-K": key}), get("/reversed", {b"X-K": key})])
    assert ordered[b"x-up"].decode() == nginx_server(Node(first, first))
    assert reverse[b"x-up"].decode() == nginx_server(Node(second, second))  # the order is what decides


def _free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True

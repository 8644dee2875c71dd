"""``affinity-mw edge nginx``: the printed configuration is accepted by ``nginx -t`` and routes every key source
to the owner the nodes' nginx ring computes (a real nginx on loopback, upstreams that say who they are)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cluster import ROOT, free_port
from proxies import get, nginx, nginx_check, pipelined

from affinity_mw.edge import nginx_config, nginx_key
from affinity_mw.ring import NginxRing, Node, nginx_server

HOSTS = [f"127.0.0.{i}" for i in range(1, 6)]


def edge(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AFFINITY_")}
    return subprocess.run(
        [sys.executable, "-m", "affinity_mw.cli", "edge", "nginx", *args],
        env={**clean, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


SPECS = [
    "header:X-Tenant",
    "header:X_Tenant",
    "cookie:sid",
    "query:t",
    "path:/tenants/{key}/",
    "path:re:^/t/(?P<key>[0-9]+)",
    "ip",
    "header:X-Tenant,cookie:sid,query:t,path:/t/{key}/",
    "region",
    "header:X-Tenant,jwt:sub",
]


@pytest.mark.parametrize("spec", SPECS)
def test_nginx_accepts_the_printed_configuration(tmp_path: Path, spec: str) -> None:
    env = {"AFFINITY_PEERS": ",".join(f"http://{h}:8000" for h in HOSTS[:3]), "AFFINITY_KEY": spec}
    env |= {"AFFINITY_JWT_KEY": "k" * 32, "AFFINITY_JWT_ALGORITHMS": "HS256"}
    out = edge(env, "--listen", "127.0.0.1:1")
    assert out.returncode == 0, out.stderr
    checked = nginx_check(tmp_path, out.stdout)
    assert checked.returncode == 0, checked.stderr + out.stdout
    # And the parts for an existing server block: the location goes inside one.
    http, _, location = nginx_config(NginxRing([]), spec).partition("# --- in your server { } block")
    checked = nginx_check(tmp_path, http + "server {\n listen 127.0.0.1:1;\n" + location.split("\n", 1)[1] + "}\n")
    assert checked.returncode == 0, checked.stderr


def test_what_nginx_cannot_compute_is_said_and_left_to_the_middleware() -> None:
    jwt = nginx_key("jwt:sub")
    assert jwt.variable == "" and "JWT" in jwt.notes[0]
    chain = nginx_key("header:X-Tenant,signed-cookie:s:u,cookie:sid")
    assert chain.variable == "$affinity_mw_key" and "$cookie_sid" not in "".join(chain.maps)
    assert "signed" in chain.notes[0]
    assert "function" in nginx_key(lambda req: None).notes[0]
    assert "AFFINITY_TRUSTED_PROXIES=1" in nginx_key("ip").notes[0]
    text = nginx_config(NginxRing([Node("http://10.0.0.1:80", "x", 3)]), "jwt:sub")
    assert "hash " not in text.replace("# no hash", "") and "server 10.0.0.1:80 weight=3;" in text
    assert "AFFINITY_RING=ring" in nginx_config(__import__("affinity_mw.ring").ring.HashRing([]), "header:X")


def test_the_printed_configuration_routes_each_key_source_to_its_owner(tmp_path: Path) -> None:
    up_port, front = free_port(HOSTS), free_port(["127.0.0.1"])
    peers = [f"http://{h}:{up_port}" for h in HOSTS]
    env = {"AFFINITY_PEERS": ",".join(peers), "AFFINITY_RING": "nginx"}
    env["AFFINITY_KEY"] = "header:X-Tenant,cookie:sid,query:t,path:/t/{key}/"
    out = edge(env, "--listen", f"127.0.0.1:{front}")
    assert out.returncode == 0, out.stderr
    assert "AFFINITY_RING" not in out.stdout  # the nodes agree: no note about the ring
    ring = NginxRing([Node(p, p) for p in peers])
    upstreams = "".join(f"server {{ listen {h}:{up_port}; location / {{ return 200; }} }}\n" for h in HOSTS)
    body = "add_header X-Up $upstream_addr always;\n" + upstreams + out.stdout
    keys = [f"tenant-{i}" for i in range(400)]
    requests = {
        "header": [get("/x", {b"X-Tenant": k.encode()}) for k in keys],
        "cookie": [get("/x", {b"Cookie": b"a=1; sid=" + k.encode()}) for k in keys],
        "query": [get(f"/x?q=1&t={k}") for k in keys],
        "path": [get(f"/t/{k}/orders") for k in keys],
        # The first source that has a value wins, as in the middleware.
        "first": [get("/t/other?t=other", {b"X-Tenant": k.encode(), b"Cookie": b"sid=other"}) for k in keys],
    }
    with nginx(tmp_path, body, [("127.0.0.1", front), *((h, up_port) for h in HOSTS)]):
        for source, batch in requests.items():
            chosen = [a[b"x-up"].decode() for a in pipelined("127.0.0.1", front, batch)]
            expected = [nginx_server(ring.owner_of(k)) for k in keys]  # type: ignore[arg-type]
            assert chosen == expected, source
        # No key at all: nginx balances (the middleware would route); every node gets some.
        chosen = [a[b"x-up"].decode() for a in pipelined("127.0.0.1", front, [get("/none")] * 50)]
        assert len(set(chosen)) == len(HOSTS)


def test_dns_membership_is_resolved_into_the_upstream(tmp_path: Path) -> None:
    """A records: one server per address (and per worker port with AFFINITY_WORKERS); SRV: the stable target
    names, each with its current address in a comment, so a changed address changes the file."""
    from affinity_mw.devdns import DnsServer

    records = {
        "app.test": {"A": ["10.0.0.2", "10.0.0.1"]},
        "_http._tcp.app.test": {"SRV": [{"target": f"app-{i}.app.test", "port": 8000} for i in (0, 1)]},
        "app-0.app.test": {"A": ["10.0.1.7"]},
        "app-1.app.test": {"A": ["10.0.1.8"]},
    }
    with DnsServer(tmp_path, {"ttl": 30, "records": records}) as dns:
        base = {"AFFINITY_DNS_NAMESERVER": dns.nameserver, "AFFINITY_DNS_PORT": "8000", "AFFINITY_RING": "nginx"}
        base["AFFINITY_KEY"] = "header:X-Tenant"
        out = edge({**base, "AFFINITY_DNS": "app.test", "AFFINITY_WORKERS": "2"})
        assert out.returncode == 0, out.stderr
        servers = [line.strip() for line in out.stdout.splitlines() if line.strip().startswith("server 10.")]
        assert servers == [f"server 10.0.0.{i}:{p};" for i in (1, 2) for p in (8000, 8001)]
        assert "nginx -s reload" in out.stdout  # how to keep the list in step
        out = edge({**base, "AFFINITY_DNS": "srv:_http._tcp.app.test"})
        assert out.returncode == 0, out.stderr
        assert "server app-0.app.test:8000;  # now 10.0.1.7:8000" in out.stdout
        assert "server app-1.app.test:8000;  # now 10.0.1.8:8000" in out.stdout
        out = edge({**base, "AFFINITY_DNS": "nothing.test"}, "--listen", "127.0.0.1:1")
        assert out.returncode == 1 and "no members" in out.stderr
        checked = nginx_check(tmp_path / "empty", out.stdout)
        assert checked.returncode == 0, checked.stderr  # a placeholder keeps the file loadable

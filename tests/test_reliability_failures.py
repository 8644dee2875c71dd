"""The failure-semantics table of docs/reliability.md, row by row, on both adapters.

One table (``ROWS``), one test, run on the ASGI stack (uvicorn, the built-in asyncio transport) and the WSGI stack
(gunicorn gthread, urllib3): both adapters drive the same forward loop, so both must give every row the same
answer. The client always asks node 1; the key's owner is a fault peer (``tests/faultpeer.py``, or an address
where nothing listens) whose successor is node 2, or node 2 itself for the rows about the client's side.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cluster import Cluster, node_metrics
from faultpeer import FaultPeer
from test_reliability_faults import executions, free_port_on, keys_with_order

STACKS = {"asgi": ("uvicorn", "tests.apps.asgi_app:app"), "wsgi": ("gunicorn-gthread", "tests.apps.wsgi_app:app")}
# One address per fault, members of the nodes' ring on the nodes' port ("refused": nothing ever listens there).
FAULTS = {"refused": "127.0.0.21", "reset": "127.0.0.22", "head": "127.0.0.23", "midbody": "127.0.0.24"}
MAX_BODY = 65536
CLIENT_TIMEOUT = 20.0


@dataclass(frozen=True)
class Row:
    failure: str
    method: str
    fault: str | None  # the owner's fault, or None when node 2 owns the key
    want: str

    @property
    def id(self) -> str:
        return f"{self.failure}-{self.method}".replace(" ", "-")


NEXT_OWNER = "200 from the next owner"
ROWS = [
    Row("client gone mid-upload", "POST", None, "no answer read; the owner ran nothing; no peer blamed"),
    Row("body over max_body", "POST", None, "413; the owner ran nothing"),
    Row("peer refused", "GET", "refused", NEXT_OWNER),
    Row("peer refused", "POST", "refused", NEXT_OWNER),
    Row("peer reset before the head", "GET", "reset", NEXT_OWNER),
    Row("peer reset before the head", "POST", "reset", "502; ran nowhere"),
    Row("peer dead between head and body", "GET", "head", NEXT_OWNER),
    Row("peer dead between head and body", "POST", "head", "502; ran nowhere"),
    Row("peer dead mid-body", "GET", "midbody", "aborted after the bytes the peer sent"),
]


@dataclass
class Table:
    stack: str
    cluster: Cluster
    tmp: Path
    exec_log: Path
    members: list[str]

    def fault_url(self, fault: str) -> str:
        return f"http://{FAULTS[fault]}:{self.cluster.port}"


@pytest.fixture(scope="module", params=list(STACKS))
def table(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Table]:
    stack = request.param
    server, app = STACKS[stack]
    tmp = tmp_path_factory.mktemp(f"failures-{stack}")
    exec_log = tmp / "executions.log"
    env = {"FAULT_EXEC_LOG": str(exec_log), "AFFINITY_MAX_BODY": str(MAX_BODY), "AFFINITY_EJECT_AFTER": "50"}
    for _ in range(20):
        cluster = Cluster(tmp, n=2, server=server, app=app, env=env)
        if free_port_on(list(FAULTS.values()), cluster.port):
            break
    else:
        raise RuntimeError("no port free on every node and fault address")
    members = [*cluster.urls, *(f"http://{h}:{cluster.port}" for h in FAULTS.values())]
    for node in cluster.nodes:
        node.env["AFFINITY_PEERS"] = ",".join(members)
    with cluster:
        yield Table(stack, cluster, tmp, exec_log, members)


def ran(table: Table, ident: str) -> int:
    return sum(1 for _node, _method, i in executions(table.exec_log) if i == ident)


def client_gone_mid_upload(table: Table, key: str, ident: str) -> str:
    n1 = table.cluster.urls[0]
    before = node_metrics(n1)
    host, port = n1.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=CLIENT_TIMEOUT) as sock:
        head = (
            f"POST /probe/{key}/fault-exec?id={ident} HTTP/1.1\r\nHost: {host}\r\nX-Tenant: {key}\r\n"
            f"Content-Length: 100000\r\n\r\n"
        )
        sock.sendall(head.encode() + b"p" * 1000)
        time.sleep(0.5)  # the forward has begun streaming the body to node 2
    time.sleep(1.0)
    after = node_metrics(n1)
    blamed = after["counters"]["forward_errors"] - before["counters"]["forward_errors"]
    parts = ["no answer read", "the owner ran nothing" if ran(table, ident) == 0 else "the owner ran it"]
    parts.append("no peer blamed" if blamed == 0 and not after["set_aside"] else f"blamed ({blamed}, {after})")
    return "; ".join(parts)


def body_over_max_body(table: Table, key: str, ident: str) -> str:
    def chunks() -> Iterator[bytes]:
        for _ in range(4):
            yield b"b" * (MAX_BODY // 2)

    r = httpx.post(
        f"{table.cluster.urls[0]}/probe/{key}/fault-exec?id={ident}",
        headers={"X-Tenant": key},
        content=chunks(),
        trust_env=False,
        timeout=CLIENT_TIMEOUT,
    )
    return f"{r.status_code}; " + ("the owner ran nothing" if ran(table, ident) == 0 else "the owner ran it")


def forward_to_fault(table: Table, row: Row, key: str, ident: str) -> str:
    n1, n2 = table.cluster.urls
    received = b""
    try:
        with httpx.stream(
            row.method,
            f"{n1}/probe/{key}/fault-exec?id={ident}",
            headers={"X-Tenant": key},
            content=b"p" * 100 if row.method == "POST" else None,
            trust_env=False,
            timeout=CLIENT_TIMEOUT,
        ) as r:
            for chunk in r.iter_raw():
                received += chunk
    except (httpx.RemoteProtocolError, httpx.ReadError):
        assert received == b"x" * len(received)
        return f"aborted after the bytes the peer sent ({len(received)})" if received else "aborted before any byte"
    if r.status_code == 200 and r.headers.get("x-affinity-served-by") == n2:
        return NEXT_OWNER if ran(table, ident) == 1 else f"200 from the next owner, ran {ran(table, ident)} times"
    if r.status_code == 502:
        return "502; ran nowhere" if ran(table, ident) == 0 else f"502; ran {ran(table, ident)} times"
    return f"{r.status_code} from {r.headers.get('x-affinity-served-by')}: {received[:200]!r}"


@pytest.mark.reliability
@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_failure_semantics(table: Table, row: Row, figures: Any) -> None:
    n1, n2 = table.cluster.urls
    ident = f"{table.stack}-{row.id}"
    if row.fault is None:
        key = keys_with_order(table.members, [n2], 1, row.id)[0]
        observe = client_gone_mid_upload if row.failure.startswith("client gone") else body_over_max_body
        outcome = observe(table, key, ident)
    else:
        key = keys_with_order(table.members, [table.fault_url(row.fault), n2], 1, row.id)[0]
        if row.fault == "refused":
            outcome = forward_to_fault(table, row, key, ident)
        else:
            mode = "reset" if row.fault == "reset" else "midbody"
            sent = 4096 if row.fault == "midbody" else 0
            with FaultPeer(table.tmp, FAULTS[row.fault], table.cluster.port, mode, length=100_000, sent=sent,
                           pause=0.3):  # fmt: skip
                outcome = forward_to_fault(table, row, key, ident)
    if row.want.startswith("aborted"):
        outcome = outcome.split(" (")[0]
    # Node 1 is fine afterwards whatever happened.
    assert httpx.get(f"{n1}/healthz", trust_env=False, timeout=CLIENT_TIMEOUT).status_code == 200
    figures.record(
        f"failure table: {row.failure} ({row.method})",
        stack=table.stack,
        sent=1,
        failed=int(outcome != row.want),
        notes=f"want: {row.want}; saw: {outcome}",
    )
    assert outcome == row.want

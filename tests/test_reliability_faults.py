"""Peer faults against real clusters (docs/reliability.md): a peer that hangs, resets, dies
mid-body or answers 5xx, stale pooled keep-alive connections, and POSTs while a node is SIGKILLed.

Each scenario runs on an ASGI stack (uvicorn, the default asyncio transport) and a WSGI stack (gunicorn gthread,
urllib3 transport). The misbehaving peer is ``tests/faultpeer.py``, a raw asyncio server in its own process on a
loopback address that is a member of the real nodes' ring (``AFFINITY_PEERS`` names it next to them); each
scenario has its own fault address, so one scenario's ejections cannot steer another's keys. Executions of
``/probe/{tenant}/fault-exec`` are appended by the real nodes' apps to a shared log, which is how "never re-sent"
and "never duplicated" are counted.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cluster import Cluster, node_metrics
from faultpeer import FaultPeer

from affinity_mw import StaticMembership, hash_key

STACKS = {"asgi": ("uvicorn", "tests.apps.asgi_app:app"), "wsgi": ("gunicorn-gthread", "tests.apps.wsgi_app:app")}
# One fault address per scenario (same port as the real nodes, on 127.0.0.4 and up).
FAULT_HOSTS = {
    "hang": "127.0.0.4",
    "reset": "127.0.0.5",
    "midbody": "127.0.0.6",
    "midbody-chunked": "127.0.0.7",
    "status": "127.0.0.8",
    "reset-load": "127.0.0.9",
    "stale": "127.0.0.10",
}
# Node 1: a short per-try timeout inside a longer deadline; node 2: a deadline shorter than its per-try timeout.
READ_TIMEOUT_1, DEADLINE_1 = 1.0, 6.0
READ_TIMEOUT_2, DEADLINE_2 = 8.0, 1.5
MARGIN = 3.0  # seconds of slack for a loaded 2-core machine; still well below READ_TIMEOUT_2
EJECT_AFTER = 5
CLIENT_TIMEOUT = 20.0


def counter_delta(after: dict[str, Any], before: dict[str, Any], name: str) -> int:
    return int(after["counters"][name] - before["counters"][name])


def upstream_attempts(after: dict[str, Any], before: dict[str, Any]) -> int:
    """Forward attempts made between two snapshots: answered ones (latency samples) plus failed ones."""
    answered = sum(
        h["count"] - before["forward_latency_seconds"].get(peer, {"count": 0})["count"]
        for peer, h in after["forward_latency_seconds"].items()
    )
    return answered + counter_delta(after, before, "forward_errors")


def keys_with_order(urls: list[str], order: list[str], count: int, prefix: str) -> list[str]:
    """``count`` keys whose failover order starts with ``order`` on the ring of ``urls``."""
    ring = StaticMembership(urls).ring
    out: list[str] = []
    for i in range(200_000):
        key = f"{prefix}{i}"
        if [n.id for n in ring.successors(hash_key(key), len(order))] == order:
            out.append(key)
            if len(out) == count:
                return out
    raise AssertionError(f"no {count} keys with failover order {order}")


def executions(log: Path) -> list[tuple[str, str, str]]:
    """(node, method, id) for every execution of the fault-exec probe on the real nodes."""
    if not log.exists():
        return []
    return [tuple(line.split(" ", 2)) for line in log.read_text().splitlines() if line]  # type: ignore[misc]


@dataclass
class FaultCluster:
    stack: str
    cluster: Cluster
    tmp: Path
    exec_log: Path
    members: list[str]

    @property
    def urls(self) -> list[str]:
        return self.cluster.urls

    def fault(self, scenario: str, mode: str, **options: Any) -> FaultPeer:
        return FaultPeer(self.tmp, FAULT_HOSTS[scenario], self.cluster.port, mode, **options)

    def fault_url(self, scenario: str) -> str:
        return f"http://{FAULT_HOSTS[scenario]}:{self.cluster.port}"


@pytest.fixture(scope="module", params=list(STACKS))
def faulty(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultCluster]:
    """Two real nodes plus every fault address in their membership (the fault peers start and stop per test)."""
    stack = request.param
    server, app = STACKS[stack]
    tmp = tmp_path_factory.mktemp(f"faults-{stack}")
    exec_log = tmp / "executions.log"
    env = {"FAULT_EXEC_LOG": str(exec_log), "AFFINITY_EJECT_AFTER": str(EJECT_AFTER)}
    node_env = [
        {"AFFINITY_READ_TIMEOUT": str(READ_TIMEOUT_1), "AFFINITY_DEADLINE": str(DEADLINE_1)},
        {"AFFINITY_READ_TIMEOUT": str(READ_TIMEOUT_2), "AFFINITY_DEADLINE": str(DEADLINE_2)},
    ]
    for _ in range(20):
        cluster = Cluster(tmp, n=2, server=server, app=app, env=env, node_env=node_env)
        # The fault addresses share the real nodes' port: it must be free on them too.
        if free_port_on(list(FAULT_HOSTS.values()), cluster.port):
            break
    else:
        raise RuntimeError("no port free on every node and fault address")
    members = [*cluster.urls, *(f"http://{h}:{cluster.port}" for h in FAULT_HOSTS.values())]
    for node in cluster.nodes:
        node.env["AFFINITY_PEERS"] = ",".join(members)
    with cluster:
        yield FaultCluster(stack, cluster, tmp, exec_log, members)


def free_port_on(hosts: list[str], port: int) -> bool:
    import socket

    for host in hosts:
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


# ---------------------------------------------------------------------------------------------------- 1. hang


@pytest.mark.reliability
def test_peer_that_never_answers_gets_a_clear_answer_within_the_deadline(faulty: FaultCluster, figures: Any) -> None:
    """Rule 4: a per-try timeout until response headers, inside one overall deadline; 504 when it passes. A POST
    that timed out may have run on the peer: it is never re-sent."""
    fault = faulty.fault_url("hang")
    n1, n2 = faulty.urls
    key1 = keys_with_order(faulty.members, [fault, n2], 1, "hang-a")[0]
    key2 = keys_with_order(faulty.members, [fault, n1], 1, "hang-b")[0]
    cases = [  # (entry, key, method, bound in seconds)
        (n1, key1, "GET", READ_TIMEOUT_1 + MARGIN),
        (n1, key1, "POST", READ_TIMEOUT_1 + MARGIN),
        (n2, key2, "GET", DEADLINE_2 + MARGIN),
        (n2, key2, "POST", DEADLINE_2 + MARGIN),
    ]
    results: list[tuple[int | None, str | None, float, str]] = [(None, None, 0.0, "")] * len(cases)

    def run(i: int) -> None:
        entry, key, method, _ = cases[i]
        started = time.monotonic()
        try:
            r = httpx.request(
                method,
                f"{entry}/probe/{key}/fault-exec?id=hang-{i}",
                headers={"X-Tenant": key},
                content=b"payload" if method == "POST" else None,
                trust_env=False,
                timeout=CLIENT_TIMEOUT,
            )
            results[i] = (r.status_code, r.headers.get("x-affinity-served-by"), time.monotonic() - started, "")
        except httpx.HTTPError as exc:
            results[i] = (None, None, time.monotonic() - started, repr(exc))

    with faulty.fault("hang", "hang") as peer:
        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(cases))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=CLIENT_TIMEOUT + 5)
        counts = peer.counts()
    assert not any(t.is_alive() for t in threads)
    notes = []
    failed = 0
    for (entry, _key, method, bound), (status, served_by, elapsed, error) in zip(cases, results, strict=True):
        notes.append(f"{method} via node{faulty.urls.index(entry) + 1}: {status} in {elapsed:.2f}s")
        clear = status == 504 or (status == 200 and method == "GET" and served_by not in (None, fault))
        if not clear or elapsed > bound:
            failed += 1
        assert clear, (method, entry, status, served_by, error)
        assert elapsed <= bound, (method, entry, elapsed, bound)
    # Each request reached the hanging peer once, and no POST ran anywhere else.
    assert counts["by_method"] == {"GET": 2, "POST": 2}, counts
    reruns = [e for e in executions(faulty.exec_log) if e[2].startswith("hang-")]
    assert not [e for e in reruns if e[1] == "POST"], reruns
    figures.record(
        "peer accepts, never answers",
        stack=faulty.stack,
        sent=len(cases),
        failed=failed,
        retried=len(reruns),
        notes="; ".join(notes) + f" (node1 per-try {READ_TIMEOUT_1}s/deadline {DEADLINE_1}s, "
        f"node2 per-try {READ_TIMEOUT_2}s/deadline {DEADLINE_2}s; failed = no 504/successor answer within bound)",
    )


# --------------------------------------------------------------------------------------------------- 2. reset


@pytest.mark.reliability
def test_reset_after_send_retries_a_get_once_and_never_resends_a_post(faulty: FaultCluster, figures: Any) -> None:
    """Rule 2: reset after the request was sent, before response headers: a GET gets one retry on another host;
    a POST gets 502 and is never re-sent (no real node's app ran it)."""
    fault = faulty.fault_url("reset")
    n1, n2 = faulty.urls
    key = keys_with_order(faulty.members, [fault, n2], 1, "reset")[0]
    before = node_metrics(n1)
    statuses: list[tuple[str, int, str | None]] = []
    with faulty.fault("reset", "reset") as peer, httpx.Client(trust_env=False, timeout=CLIENT_TIMEOUT) as client:
        for i, (method, body) in enumerate([("GET", None), ("POST", b""), ("GET", None), ("POST", b"x" * 5000)]):
            r = client.request(
                method, f"{n1}/probe/{key}/fault-exec?id=reset-{i}", headers={"X-Tenant": key}, content=body
            )
            statuses.append((method, r.status_code, r.headers.get("x-affinity-served-by")))
        counts = peer.counts()
    after = node_metrics(n1)
    runs = Counter((e[1], e[2]) for e in executions(faulty.exec_log) if e[2].startswith("reset-"))
    retried = counter_delta(after, before, "retries")
    assert statuses == [("GET", 200, n2), ("POST", 502, None), ("GET", 200, n2), ("POST", 502, None)], statuses
    assert counts["by_method"] == {"GET": 2, "POST": 2}, counts  # each request reached the peer exactly once
    assert runs == Counter({("GET", "reset-0"): 1, ("GET", "reset-2"): 1}), runs  # POSTs never re-sent
    assert retried == 2
    assert upstream_attempts(after, before) == 6  # 2 GETs x 2 tries + 2 POSTs x 1
    figures.record(
        "peer resets after the request was sent",
        stack=faulty.stack,
        sent=len(statuses),
        failed=sum(1 for m, s, _ in statuses if m == "GET" and s != 200),
        retried=retried,
        duplicated=sum(1 for (m, _), n in runs.items() if m == "POST" and n > 0),
        notes="GET -> 200 from the successor after one retry; POST -> 502, executed by no real node; "
        "failed = GETs not answered 200",
    )


# ------------------------------------------------------------------------------------------------- 3. mid-body


@pytest.mark.reliability
@pytest.mark.parametrize("mode", ["midbody", "midbody-chunked"])
def test_peer_dying_mid_body_aborts_the_client_response(faulty: FaultCluster, figures: Any, mode: str) -> None:
    """Rule 3: the peer dies after response headers went downstream: no retry, and the client's response is
    aborted, never cleanly ended short."""
    fault = faulty.fault_url(mode)
    n1, n2 = faulty.urls
    key = keys_with_order(faulty.members, [fault, n2], 1, mode)[0]
    announced, sent = 100_000, 4096
    attempts = 3
    outcomes: list[str] = []
    checked = 0
    with faulty.fault(mode, mode, length=announced, sent=sent, pause=0.3) as peer:
        for i in range(attempts):
            received = b""
            status = None
            try:
                with httpx.stream(
                    "GET",
                    f"{n1}/probe/{key}/fault-exec?id={mode}-{i}",
                    headers={"X-Tenant": key},
                    trust_env=False,
                    timeout=CLIENT_TIMEOUT,
                ) as r:
                    status = r.status_code
                    for chunk in r.iter_raw():
                        received += chunk
                outcomes.append(f"clean end after {len(received)} bytes (status {status})")
            except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
                outcomes.append(f"aborted: {type(exc).__name__}")
            assert status == 200, outcomes  # headers went downstream...
            assert received == b"x" * len(received) and len(received) <= sent  # ...then only what the peer sent
            checked += len(received)
        counts = peer.counts()
    # The node is fine afterwards.
    assert httpx.get(f"{n1}/healthz", trust_env=False, timeout=CLIENT_TIMEOUT).status_code == 200
    clean = [o for o in outcomes if o.startswith("clean")]
    assert clean == [], outcomes
    assert counts["total"] == attempts, counts  # never retried once the response had started
    figures.record(
        "peer dies mid-body" + (" (chunked)" if mode.endswith("chunked") else " (Content-Length)"),
        stack=faulty.stack,
        sent=attempts,
        failed=len(clean),
        retried=counts["total"] - attempts,
        bytes_checked=checked,
        notes=f"peer announced {'a chunked body' if mode.endswith('chunked') else f'{announced} bytes'}, "
        f"sent {sent} bytes, closed; "
        f"client outcomes: {sorted(set(outcomes))}; failed = truncated bodies that ended cleanly",
    )


# ------------------------------------------------------------------------------------------- 4. failing peer


@pytest.mark.reliability
@pytest.mark.parametrize("mode", ["status", "reset-load"])
def test_peer_failing_every_request_is_ejected_and_retries_stay_in_budget(
    faulty: FaultCluster, figures: Any, mode: str
) -> None:
    """Rules 4 and 6: a peer that fails every request (503s, or resets) is set aside after 5 consecutive
    failures; upstream attempts per client request stay <= 1.2, retries within the budget, 5xx never retried."""
    fault = faulty.fault_url(mode)
    n1, n2 = faulty.urls
    keys = keys_with_order(faulty.members, [fault, n2], 8, mode)
    total, threads = 60, 4
    before = node_metrics(n1)
    results: list[tuple[int | None, str | None]] = []
    lock = threading.Lock()
    issued = [0]

    def worker() -> None:
        with httpx.Client(trust_env=False, timeout=CLIENT_TIMEOUT) as client:
            while True:
                with lock:
                    if issued[0] >= total:
                        return
                    i = issued[0]
                    issued[0] += 1
                key = keys[i % len(keys)]
                try:
                    r = client.get(f"{n1}/probe/{key}/fault-exec?id={mode}-{i}", headers={"X-Tenant": key})
                    result: tuple[int | None, str | None] = (r.status_code, r.headers.get("x-affinity-served-by"))
                except httpx.HTTPError as exc:
                    result = (None, repr(exc))
                with lock:
                    results.append(result)

    options = {"status": 503} if mode == "status" else {}
    with faulty.fault(mode, "status" if mode == "status" else "reset", **options) as peer:
        pool = [threading.Thread(target=worker) for _ in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join(timeout=60)
        counts = peer.counts()
    assert not any(t.is_alive() for t in pool)
    after = node_metrics(n1)
    attempts = upstream_attempts(after, before)
    retried = counter_delta(after, before, "retries")
    statuses = Counter(status for status, _ in results)
    ratio = attempts / total
    # Set aside for failures, after 5 consecutive ones (plus those already in flight when it happened).
    assert after["peer_ejections"] - before["peer_ejections"] >= 1
    assert after["set_aside"].get(fault) == "failures", after["set_aside"]
    assert counts["total"] <= EJECT_AFTER + threads - 1, counts
    assert ratio <= 1.2, (attempts, total)
    assert retried <= counts["total"]  # at most one retry per failed attempt...
    assert retried <= max(3, 0.2 * total)  # ...and within the budget
    if mode == "status":
        assert retried == 0  # a 5xx is an answer: relayed, never retried blindly
        assert set(statuses) <= {200, 503} and statuses[503] == counts["total"], statuses
    else:
        # Every failed attempt was either retried once (on the successor, which answered) or, past the budget
        # (at least 3 concurrent retries), answered 502.
        assert set(statuses) <= {200, 502}, statuses
        assert retried + statuses[502] == counts["total"], (retried, statuses, counts)
        assert retried >= min(3, counts["total"])
    assert all(served == n2 for status, served in results if status == 200)
    figures.record(
        "peer fails every request (" + ("503" if mode == "status" else "reset") + ")",
        stack=faulty.stack,
        sent=total,
        failed=total - statuses[200],
        retried=retried,
        notes=f"{threads} client threads, all keys owned by the failing peer; it received {counts['total']} "
        f"requests before ejection; upstream attempts/requests = {attempts}/{total} = {ratio:.2f}; "
        "failed = client responses other than 200"
        + (" (the peer's 503s, relayed as answers)" if mode == "status" else ""),
    )


# ---------------------------------------------------------------------------------------------- 5. keep-alive


def keepalive_scenario(tmp: Path, stack: str, gaps: list[float], figures: Any) -> None:
    """Rule 5: idle gaps around the owner's 5 s keep-alive (uvicorn's), through a forwarder with the default
    pool expiry (1.5 s) and one with AFFINITY_KEEPALIVE=10 (above the owner's: it meets stale connections)."""
    server, app = STACKS[stack]
    servers = [f"{server}={app}", f"{server}={app}", "uvicorn=tests.apps.asgi_app:app"]
    node_env = [{}, {"AFFINITY_KEEPALIVE": "10"}, {}]
    with Cluster(tmp, n=3, server=servers, node_env=node_env) as c:
        owner = c.urls[2]
        key = keys_with_order(c.urls, [owner], 1, "ka")[0]
        entries = {"keepalive 1.5": c.urls[0], "keepalive 10": c.urls[1]}
        before = {name: node_metrics(url) for name, url in entries.items()}
        outcomes: list[tuple[float, str, int | None, str | None]] = []

        def get(name: str, gap: float, i: int) -> None:
            # A fresh client connection each time: only the forwarder's pooled connection to the owner idles.
            try:
                r = httpx.get(
                    f"{entries[name]}/probe/{key}/fault-exec?id=ka-{i}",
                    headers={"X-Tenant": key},
                    trust_env=False,
                    timeout=CLIENT_TIMEOUT,
                )
                outcomes.append((gap, name, r.status_code, r.headers.get("x-affinity-served-by")))
            except httpx.HTTPError as exc:
                outcomes.append((gap, name, None, repr(exc)))

        i = 0
        for name in entries:  # warm the pools
            get(name, 0.0, i)
            i += 1
        for gap in gaps:
            time.sleep(gap)
            for name in entries:
                get(name, gap, i)
                i += 1
        after = {name: node_metrics(url) for name, url in entries.items()}
    retried = sum(counter_delta(after[n], before[n], "retries") for n in entries)
    errors = [o for o in outcomes if o[2] != 200]
    figures.record(
        "stale pooled keep-alive connection",
        stack=stack,
        sent=len(outcomes),
        failed=len(errors),
        retried=retried,
        notes=f"owner uvicorn (keep-alive 5 s); idle gaps {gaps} s via forwarders with keepalive 1.5 s and 10 s; "
        f"served by a non-owner: {sum(1 for o in outcomes if o[2] == 200 and o[3] != owner)}",
    )
    assert errors == [], errors
    assert all(o[3] == owner for o in outcomes), outcomes  # a fresh connection to the owner, not another host


@pytest.mark.reliability
def test_request_meeting_a_stale_pooled_connection_is_retried_on_a_fresh_one(
    faulty: FaultCluster, figures: Any
) -> None:
    """Rule 5, made deterministic: the owner closes each pooled connection as its next request arrives. An
    idempotent request that meets that stale connection is retried once on a fresh connection to the same owner:
    the client sees 200 from the owner, never a failover to another host, and the owner is not counted failing."""
    fault = faulty.fault_url("stale")
    n1, n2 = faulty.urls
    key = keys_with_order(faulty.members, [fault, n2], 1, "stale")[0]
    total = 6
    before = node_metrics(n1)
    answers: list[tuple[int, str | None]] = []
    with faulty.fault("stale", "stale") as peer, httpx.Client(trust_env=False, timeout=CLIENT_TIMEOUT) as client:
        for i in range(total):
            r = client.get(f"{n1}/probe/{key}/fault-exec?id=stale-{i}", headers={"X-Tenant": key})
            answers.append((r.status_code, r.headers.get("x-affinity-served-by")))
            time.sleep(0.1)  # well inside the forwarder's pool expiry: the next request reuses the connection
        counts = peer.counts()
    after = node_metrics(n1)
    stale_met = counts["total"] - total
    retried = counter_delta(after, before, "retries")
    errors = counter_delta(after, before, "forward_errors")
    figures.record(
        "stale pooled connection (deterministic)",
        stack=faulty.stack,
        sent=total,
        failed=sum(1 for status, _ in answers if status != 200),
        retried=retried,
        notes=f"owner closes each reused connection as the request arrives; stale connections met: {stale_met}; "
        f"answers (status, served by): {Counter(answers)}; forward errors counted: {errors}",
    )
    assert [status for status, _ in answers] == [200] * total, answers
    assert [served for _, served in answers] == [fault] * total, answers  # retried on the owner, not elsewhere
    assert after["set_aside"].get(fault) is None


@pytest.mark.reliability
@pytest.mark.parametrize("stack", list(STACKS))
def test_stale_keepalive_connections_short(tmp_path: Path, stack: str, figures: Any) -> None:
    keepalive_scenario(tmp_path, stack, [4.9, 5.1], figures)


@pytest.mark.reliability
@pytest.mark.slow
@pytest.mark.parametrize("stack", list(STACKS))
def test_stale_keepalive_connections_long(tmp_path: Path, stack: str, figures: Any) -> None:
    keepalive_scenario(tmp_path, stack, [4.0, 4.9, 5.0, 5.1, 6.0, 5.0, 4.95, 5.05], figures)


# ------------------------------------------------------------------------------------------ 6. POSTs, SIGKILL


@dataclass
class Call:
    thread: int
    method: str
    ident: str
    key: str
    entry: str
    started: float
    ended: float
    status: int | None
    node: str | None
    error: str = ""


@pytest.mark.reliability
@pytest.mark.parametrize("stack", list(STACKS))
def test_posts_under_sigkill_fail_only_in_flight_and_never_duplicate(tmp_path: Path, stack: str, figures: Any) -> None:
    """Rules 1-2 under load: SIGKILL one of three nodes while clients (of the two others) send GETs and POSTs with
    unique ids. GETs do not fail (bar those in flight on the victim, beyond the retry budget); POSTs fail only
    with 502 and only if they were in flight on the victim; no POST runs twice."""
    server, app = STACKS[stack]
    exec_log = tmp_path / "executions.log"
    env = {"FAULT_EXEC_LOG": str(exec_log), "AFFINITY_READ_TIMEOUT": "5", "AFFINITY_DEADLINE": "10"}
    threads, max_requests, max_seconds = 6, 3000, 20.0
    with Cluster(tmp_path, n=3, server=server, app=app, env=env) as c:
        victim = c.nodes[2]
        entries = c.urls[:2]
        ring = StaticMembership(c.urls).ring
        keys = [f"pk{i}" for i in range(60)]
        owner = {k: ring.owner_of(k).id for k in keys}  # type: ignore[union-attr]
        assert any(o == victim.url for o in owner.values())
        before = {u: node_metrics(u) for u in entries}
        calls: list[Call] = []
        lock = threading.Lock()
        stop = threading.Event()
        deadline = time.monotonic() + max_seconds
        count = [0]

        def worker(t: int) -> None:
            import random

            rng = random.Random(t)
            with httpx.Client(trust_env=False, timeout=CLIENT_TIMEOUT) as client:
                while not stop.is_set() and time.monotonic() < deadline:
                    with lock:
                        if count[0] >= max_requests:
                            return
                        count[0] += 1
                        n = count[0]
                    method = "POST" if rng.random() < 0.5 else "GET"
                    key, entry = rng.choice(keys), rng.choice(entries)
                    ident = f"{method[0]}{t}-{n}"
                    started = time.monotonic()
                    try:
                        r = client.request(
                            method,
                            f"{entry}/probe/{key}/fault-exec?id={ident}&pause=0.1",
                            headers={"X-Tenant": key},
                            content=b"p" * 100 if method == "POST" else None,
                        )
                        node = r.json().get("node") if r.status_code == 200 else None
                        call = Call(t, method, ident, key, entry, started, time.monotonic(), r.status_code, node)
                    except httpx.HTTPError as exc:
                        call = Call(t, method, ident, key, entry, started, time.monotonic(), None, None, repr(exc))
                    with lock:
                        calls.append(call)

        pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
        for t in pool:
            t.start()
        try:
            time.sleep(1.5)
            kill_started = time.monotonic()
            victim.stop(signal.SIGKILL)
            kill_done = time.monotonic()
            time.sleep(2.0)
        finally:
            stop.set()
            for t in pool:
                t.join(timeout=CLIENT_TIMEOUT + 5)
        assert not any(t.is_alive() for t in pool)
        after = {u: node_metrics(u) for u in entries}
    runs = Counter(ident for _node, method, ident in executions(exec_log) if method == "POST")
    ran_on = {ident: node for node, method, ident in executions(exec_log) if method == "POST"}

    def in_flight_on_victim(call: Call) -> bool:
        return owner[call.key] == victim.url and call.started <= kill_done and call.ended >= kill_started

    gets = [x for x in calls if x.method == "GET"]
    posts = [x for x in calls if x.method == "POST"]
    failed_gets = [x for x in gets if x.status != 200]
    failed_posts = [x for x in posts if x.status != 200]
    duplicated = [ident for ident, n in runs.items() if n > 1]
    retried = sum(counter_delta(after[u], before[u], "retries") for u in entries)
    figures.record(
        "POSTs under SIGKILL",
        stack=stack,
        sent=len(calls),
        failed=len(failed_gets) + len(failed_posts),
        retried=retried,
        duplicated=len(duplicated),
        notes=f"{len(gets)} GETs / {len(posts)} POSTs from {threads} threads to 2 of 3 nodes, third SIGKILLed; "
        f"failed GETs {len(failed_gets)}, failed POSTs {len(failed_posts)} (statuses "
        f"{sorted(Counter(x.status for x in failed_posts).items(), key=str)}, of which executed before the kill: "
        f"{sum(1 for x in failed_posts if runs[x.ident])}); in flight on the victim: "
        f"{sum(1 for x in posts if in_flight_on_victim(x))} POSTs, "
        f"{sum(1 for x in gets if in_flight_on_victim(x))} GETs",
    )
    assert len(calls) > 60
    assert sum(1 for x in calls if x.started > kill_done) > 20  # the load went on after the kill
    assert all(in_flight_on_victim(x) for x in failed_gets), failed_gets
    assert all(x.status == 502 and in_flight_on_victim(x) for x in failed_posts), failed_posts
    assert duplicated == [], duplicated
    for x in posts:
        if x.status == 200:
            # Ran exactly once, on the node that answered.
            assert runs[x.ident] == 1 and ran_on[x.ident] == x.node, (x, runs[x.ident], ran_on.get(x.ident))
        else:
            assert runs[x.ident] <= 1


# ------------------------------------------------------------------------------- transports, without a cluster


def test_transports_retry_a_stale_pooled_connection_once_and_nothing_else(tmp_path: Path) -> None:
    """Unit level for rule 5 (the fresh-connection retry lives in the transports): a GET that meets a pooled
    connection the peer closed is re-sent once on a fresh connection; a POST is not, and neither is a GET that
    fails on a fresh connection (rule 2's one retry belongs to ForwardPlan, on another host)."""
    import asyncio

    from affinity_mw.forward import SendFailed, UpstreamRequest
    from affinity_mw.transports import AiohttpTransport, Urllib3Transport

    port = free_port_for("127.0.0.11")

    def req(method: str) -> UpstreamRequest:
        return UpstreamRequest(method, f"http://127.0.0.11:{port}", "/x", [(b"host", b"peer")], read_timeout=5.0)

    def sync_case(mode: str, methods: list[str]) -> tuple[list[str], int]:
        transport = Urllib3Transport(keepalive=30.0)
        outcomes = []
        with FaultPeer(tmp_path, "127.0.0.11", port, mode) as peer:
            for method in methods:
                try:
                    resp = transport.send(req(method))
                    b"".join(resp.iter_raw())
                    resp.close(reusable=True)
                    outcomes.append(str(resp.status))
                except SendFailed:
                    outcomes.append("SendFailed")
            total = peer.counts()["total"]
        transport.close()
        return outcomes, total

    async def async_case(mode: str, methods: list[str]) -> tuple[list[str], int]:
        transport = AiohttpTransport(keepalive=30.0)
        outcomes = []
        with FaultPeer(tmp_path, "127.0.0.11", port, mode) as peer:
            for method in methods:
                try:
                    resp = await transport.send(req(method))
                    async for _ in resp.aiter_raw():
                        pass
                    await resp.aclose(reusable=True)
                    outcomes.append(str(resp.status))
                except SendFailed:
                    outcomes.append("SendFailed")
            total = peer.counts()["total"]
        await transport.aclose()
        return outcomes, total

    for name, run in (("urllib3", sync_case), ("aiohttp", lambda m, ms: asyncio.run(async_case(m, ms)))):
        # GET, GET: the second meets the stale connection and is re-sent once on a fresh one (3 requests seen).
        assert run("stale", ["GET", "GET", "GET"]) == (["200", "200", "200"], 5), name
        # A POST on the stale connection is never re-sent.
        assert run("stale", ["GET", "POST"]) == (["200", "SendFailed"], 2), name
        # A reset on a fresh connection is not the transport's to retry.
        assert run("reset", ["GET"]) == (["SendFailed"], 1), name


def free_port_for(host: str) -> int:
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])

"""Real multi-node clusters for the integration tests: one server process per node on 127.0.0.x.

Every process a test starts is stopped by it (``Cluster`` is a context manager; fixtures use it), and every
address is on loopback. Nodes log to files under the test's tmp dir; a node that fails to start raises with its
log so the failure explains itself.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from affinity_mw.introspect import AUTH_HEADER, sign_request

ROOT = Path(__file__).resolve().parents[1]
SECRET = "test-cluster-secret-0123456789abcdef"


# Below Linux's ephemeral range (32768 and up), where any process's outgoing connection may hold a port for a while.
PORTS = range(20000, 32768)


def free_ports(hosts: Sequence[str], count: int = 1) -> int:
    """The first of ``count`` consecutive ports free on every host: node i can be http://127.0.0.i:PORT with one
    PORT for all, and a node with workers as members takes PORT, PORT + 1, ..."""
    for _ in range(200):
        port = random.randrange(PORTS.start, PORTS.stop - count)
        socks = []
        try:
            for host in hosts:
                for offset in range(count):
                    s = socket.socket()
                    socks.append(s)
                    s.bind((host, port + offset))
            return port
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no {count} consecutive free ports found on " + ", ".join(hosts))


def free_port(hosts: Sequence[str]) -> int:
    """A port free on every host, so node i can be http://127.0.0.i:PORT with one PORT for all."""
    return free_ports(hosts)


class ServerNode:
    def __init__(self, index: int, host: str, port: int, cmd: list[str], env: dict[str, str], log: Path) -> None:
        self.index = index
        self.host = host
        self.port = port
        self.url = f"http://{host}:{port}"
        self.cmd = cmd
        self.env = env
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            # A session of its own, so stopping the node stops its workers too (gunicorn forks them).
            self.proc = subprocess.Popen(
                self.cmd, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"node {self.url} exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1.0, trust_env=False).status_code < 500:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"node {self.url} not ready after {timeout}s:\n{self.log.read_text()}")

    def stop(self, sig: int = signal.SIGTERM, wait: bool = True) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self._signal_group(sig)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.proc.wait(timeout=10)
        # Workers that outlived their master (after SIGKILL) are stopped too.
        self._signal_group(signal.SIGKILL)
        self.proc = None
        if wait:
            self.wait_port_closed()

    def wait_port_closed(self, timeout: float = 10.0) -> None:
        """Return once the node's port refuses connections. The master is reaped above, but a gunicorn worker
        killed with it can still hold the listening socket for a moment: a connection accepted into its backlog
        then is reset after the request was sent, which a test that means "the node is dead" (connect refused,
        safe to fail over for any method) must not see."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    pass
            except ConnectionRefusedError:
                return
            except OSError:
                pass  # a timeout (a full backlog) is not "closed"
            time.sleep(0.02)
        raise RuntimeError(f"node {self.url} still accepts connections {timeout}s after it was stopped")

    def _signal_group(self, sig: int) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def worker_pid(self) -> int:
        """The pid that runs the middleware: uvicorn's own process, or gunicorn's (single) worker."""
        assert self.proc is not None
        pid = self.proc.pid
        children: list[str] = []
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(FileNotFoundError):
                children += (task / "children").read_text().split()
        return int(children[0]) if children and self.cmd[2] == "gunicorn" else pid


def server_command(kind: str, app: str, host: str, port: int) -> list[str]:
    """The command line of one node: 1 uvicorn worker, 1 gunicorn worker of the given class, or Werkzeug's
    development server."""
    if kind in ("uvicorn", "uvicorn-httptools"):
        # Pinned, never uvicorn's "auto": plain uvicorn (h11, asyncio) unless the stack names uvicorn[standard]'s
        # httptools and uvloop, so a test means the same thing whatever else is installed.
        http, loop = ("httptools", "uvloop") if kind == "uvicorn-httptools" else ("h11", "asyncio")
        return [
            sys.executable, "-m", "uvicorn", app, "--host", host, "--port", str(port), "--http", http,
            "--loop", loop, "--log-level", "warning", "--no-access-log",
        ]  # fmt: skip
    if kind in ("gunicorn-sync", "gunicorn-gthread"):
        worker = kind.split("-")[1]
        return [
            sys.executable, "-m", "gunicorn", app, "--bind", f"{host}:{port}", "--workers", "1",
            "--worker-class", worker, "--threads", "8" if worker == "gthread" else "1",
            "--log-level", "warning", "--graceful-timeout", "5", "--timeout", "60", "--keep-alive", "5",
        ]  # fmt: skip
    if kind == "werkzeug":
        # Werkzeug's development server (what `flask run` uses), threaded, as users run it locally.
        module, _, attr = app.partition(":")
        code = (
            "import importlib, sys; from werkzeug.serving import run_simple; "
            f"app = getattr(importlib.import_module({module!r}), {attr!r}); "
            f"run_simple({host!r}, {port}, app, threaded=True)"
        )
        return [sys.executable, "-c", code]
    raise ValueError(f"unknown server {kind!r}")


class Cluster:
    """``n`` nodes on 127.0.0.1..n sharing a port; each node's AFFINITY_* env is set from the args.

    ``server`` is ``uvicorn`` (ASGI ``app``), ``gunicorn-sync``/``gunicorn-gthread`` (WSGI ``app``), or one of
    those per node, optionally as ``server=module:attr`` to give that node its own app (mixed clusters).
    ``node_env`` adds per-node variables.
    """

    def __init__(
        self,
        tmp: Path,
        *,
        n: int = 3,
        app: str = "tests.apps.asgi_app:app",
        env: Mapping[str, str] | None = None,
        node_env: Sequence[Mapping[str, str]] | None = None,
        server: str | Sequence[str] = "uvicorn",
    ) -> None:
        hosts = [f"127.0.0.{i + 1}" for i in range(n)]
        self.port = free_port(hosts)
        self.urls = [f"http://{h}:{self.port}" for h in hosts]
        base = {k: v for k, v in os.environ.items() if not k.startswith("AFFINITY_")}
        base.update(
            {
                "AFFINITY_PEERS": ",".join(self.urls),
                "AFFINITY_SECRET": SECRET,
                "AFFINITY_KEY": "header:X-Tenant",
                "AFFINITY_DEBUG_HEADERS": "1",
                "PYTHONPATH": str(ROOT),
                "PYTHONUNBUFFERED": "1",
            }
        )
        base.update(env or {})
        self.nodes: list[ServerNode] = []
        for i, host in enumerate(hosts):
            node_vars = dict(base, AFFINITY_SELF=self.urls[i])
            if node_env is not None:
                node_vars.update(node_env[i])
            spec = server if isinstance(server, str) else server[i]
            kind, _, node_app = spec.partition("=")
            cmd = server_command(kind, node_app or app, host, self.port)
            self.nodes.append(ServerNode(i, host, self.port, cmd, node_vars, tmp / f"node{i + 1}.log"))

    def start(self) -> Cluster:
        for node in self.nodes:
            node.start()
        for node in self.nodes:
            node.wait_ready()
        return self

    def stop(self) -> None:
        # Every node first, then the ports: one that is slow to close must not leave the others running.
        running = [node for node in self.nodes if node.proc is not None]
        for node in running:
            node.stop(wait=False)
        for node in running:
            node.wait_port_closed()

    def __enter__(self) -> Cluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def logs(self) -> str:
        return "\n".join(f"--- {n.url}\n{n.log.read_text() if n.log.exists() else ''}" for n in self.nodes)


def stop_group(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """SIGTERM a process started with ``start_new_session=True`` and its children, SIGKILL after ``timeout``."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)


def kill(node: ServerNode) -> None:
    node.stop(signal.SIGKILL)


def node_metrics(url: str) -> dict[str, Any]:
    """A node's ``/_affinity/metrics.json`` (counters, ejections, latency), asked with the cluster secret so it
    answers whatever ``AFFINITY_INTROSPECTION`` allows."""
    r = httpx.get(
        f"{url}/_affinity/metrics.json", headers={AUTH_HEADER: sign_request(SECRET)}, trust_env=False, timeout=10
    )
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]

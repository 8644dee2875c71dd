"""Workers as members: ``affinity-mw serve --workers N app:app`` runs N server processes, each a ring member.

Each Python worker process has its own memory, so per-process state (an in-memory cache, a connection to a
tenant's shard) is only local to a key if the key's requests reach *that process*. ``uvicorn --workers 4`` or
``gunicorn -w 4`` share one port: the kernel hands each connection to any worker, the middleware sees one member
per host, and every tenant's cache is filled up to four times on every host. Here each worker listens on a port
of its own (``--port``, ``--port + 1``, ...) and is a member of the ring in its own right, so a key has one
owning *process* and no request needs more than one hop to reach it (none, with an agreeing front proxy or
:mod:`affinity_mw.client`).

Membership follows from ``AFFINITY_WORKERS=N``, which this launcher sets for its children: every peer URL in
``AFFINITY_PEERS`` (``http://10.0.0.1:8000``) and every ``AFFINITY_DNS`` address stands for N members on
consecutive ports (``:8000`` .. ``:8000 + N - 1``); each child's ``AFFINITY_SELF`` is its own port. With neither
set, the N local workers are the whole cluster. The launcher stops every child on SIGTERM or SIGINT (a
child's own graceful shutdown first, SIGKILL after ``--grace``), and stops all of them if one exits, so a
supervisor (systemd, Kubernetes) sees the failure and restarts the whole set.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from types import FrameType
from urllib.parse import urlsplit

__all__ = ["SERVERS", "serve", "worker_commands", "worker_urls"]

SERVERS = ("uvicorn", "gunicorn")
"""``uvicorn`` for ASGI apps, ``gunicorn`` (one sync worker process each, ``--threads``) for WSGI apps."""


def worker_urls(url: str, workers: int) -> list[str]:
    """The members a peer URL stands for: ``workers`` consecutive ports from its port."""
    parts = urlsplit(url.strip())
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if port + workers - 1 > 65535:
        raise ValueError(f"Peer {url!r} with {workers} workers would need ports beyond 65535.")
    return [f"{parts.scheme}://{host}:{p}" for p in range(port, port + workers)]


def worker_commands(
    app: str,
    *,
    workers: int,
    host: str,
    port: int,
    server: str,
    threads: int = 8,
    extra: Sequence[str] = (),
    control_folder: str | None = None,
) -> list[list[str]]:
    """One server command per worker, each with one process on its own port. gunicorn 25 and later open a control
    socket, by default at one path for every master on the machine: with ``control_folder`` each master gets its
    own there (``worker-PORT.ctl``), so no master replaces or removes another's."""
    if server not in SERVERS:
        raise ValueError(f"The server must be one of {', '.join(SERVERS)}, got {server!r}.")
    commands = []
    for p in range(port, port + workers):
        if server == "uvicorn":
            cmd = [sys.executable, "-m", "uvicorn", app, "--host", host, "--port", str(p), "--workers", "1"]
        else:
            bind = f"[{host}]:{p}" if ":" in host else f"{host}:{p}"
            cmd = [sys.executable, "-m", "gunicorn", "--workers", "1", "--threads", str(threads), "--bind", bind, app]
            if control_folder is not None and _has_control_socket():
                cmd += ["--control-socket", os.path.join(control_folder, f"worker-{p}.ctl")]
        commands.append([*cmd, *extra])
    return commands


def _has_control_socket() -> bool:
    try:
        from gunicorn.config import KNOWN_SETTINGS
    except ImportError:  # the child will say gunicorn is missing
        return False
    return any(setting.name == "control_socket" for setting in KNOWN_SETTINGS)


def worker_environ(
    environ: Mapping[str, str], *, workers: int, advertise: str, port: int, scheme: str = "http"
) -> list[dict[str, str]]:
    """Each worker's environment: ``AFFINITY_WORKERS``, its own ``AFFINITY_SELF``, and (with no membership
    configured) ``AFFINITY_PEERS`` listing the local workers."""
    host = f"[{advertise}]" if ":" in advertise else advertise
    base = dict(environ, AFFINITY_WORKERS=str(workers))
    if not base.get("AFFINITY_PEERS", "").strip() and not base.get("AFFINITY_DNS", "").strip():
        base["AFFINITY_PEERS"] = f"{scheme}://{host}:{port}"
    return [dict(base, AFFINITY_SELF=f"{scheme}://{host}:{p}") for p in range(port, port + workers)]


def serve(
    app: str,
    *,
    workers: int,
    host: str = "127.0.0.1",
    port: int = 8000,
    advertise: str | None = None,
    server: str = "uvicorn",
    grace: float = 30.0,
    extra: Sequence[str] = (),
) -> int:
    """Run the workers until a signal or a worker's exit; return the exit status for the launcher."""
    if workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}.")
    if advertise is None:
        advertise = os.environ.get("POD_IP") or (host if host not in ("0.0.0.0", "::") else "127.0.0.1")
    scheme = os.environ.get("AFFINITY_PEER_SCHEME", "http").strip() or "http"
    control = tempfile.TemporaryDirectory(prefix="affinity-serve-")  # removed once every worker has stopped
    commands = worker_commands(
        app, workers=workers, host=host, port=port, server=server, extra=extra, control_folder=control.name
    )
    environs = worker_environ(os.environ, workers=workers, advertise=advertise, port=port, scheme=scheme)
    children: list[subprocess.Popen[bytes]] = []
    stopping: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.append(signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    status = 0
    try:
        for cmd, env in zip(commands, environs, strict=True):
            children.append(subprocess.Popen(cmd, env=env))
        while not stopping:
            exited = [child for child in children if child.poll() is not None]
            if exited:
                status = exited[0].returncode or 1
                which = port + children.index(exited[0])
                print(f"affinity-mw serve: the worker on port {which} exited ({exited[0].returncode}); stopping all")
                break
            time.sleep(0.2)
    finally:
        _stop(children, grace)
        control.cleanup()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return status


def _stop(children: Sequence[subprocess.Popen[bytes]], grace: float) -> None:
    """SIGTERM every worker (each finishes its requests in flight), then SIGKILL whatever outlives ``grace``."""
    for child in children:
        if child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for child in children:
        try:
            child.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()

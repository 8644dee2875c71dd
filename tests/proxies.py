"""Real front proxies for the tests: Debian's nginx and HAProxy, started on loopback and always stopped.

A proxy is a context manager around one foreground process with its files under the test's tmp dir. The
pipelined client sends thousands of requests over one connection, so a test can ask a real proxy where
thousands of keys go in well under a second of the proxy's time.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType

from cluster import stop_group


def binary(name: str) -> str:
    """The proxy's executable; a clear failure when it is missing (``scripts/system-deps.sh`` installs it)."""
    found = shutil.which(name) or next((p for p in (f"/usr/sbin/{name}",) if os.path.exists(p)), None)
    if found is None:
        raise RuntimeError(f"{name} is not installed; run scripts/system-deps.sh")
    return found


NGINX_HEAD = """
worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
"""

NGINX_HTTP_PATHS = """
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
"""


def nginx_conf(prefix: Path, http_body: str) -> str:
    """A whole nginx.conf: one worker, foreground, every path under ``prefix``, ``http_body`` inside ``http``."""
    user = "user root;\n" if os.geteuid() == 0 else ""
    paths = NGINX_HTTP_PATHS.format(prefix=prefix)
    return user + NGINX_HEAD.format(prefix=prefix) + "http {\n" + paths + "    access_log off;\n" + http_body + "}\n"


class Proxy:
    """One proxy process; ``ready`` names the (host, port) it must accept on before the test goes on."""

    def __init__(self, cmd: list[str], log: Path, ready: Sequence[tuple[str, int]]) -> None:
        self.cmd = cmd
        self.log = log
        self.ready = ready
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Proxy:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 10
            pending = list(self.ready)
            while pending:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.cmd[0]} exited with {self.proc.returncode}:\n{self.log.read_text()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.cmd[0]} not listening on {pending}:\n{self.log.read_text()}")
                with contextlib.suppress(OSError), socket.create_connection(pending[0], timeout=0.5):
                    pending.pop(0)
                    continue
                time.sleep(0.02)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc)

    def reload(self) -> None:
        """nginx: re-read the configuration file (SIGHUP), as ``nginx -s reload`` does."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)


def nginx(prefix: Path, http_body: str, ready: Sequence[tuple[str, int]]) -> Proxy:
    """nginx with ``http_body`` in its ``http`` block, files under ``prefix``."""
    prefix.mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(nginx_conf(prefix, http_body))
    return Proxy([binary("nginx"), "-p", str(prefix), "-c", str(conf)], prefix / "nginx.out", ready)


def nginx_check(prefix: Path, http_body: str) -> subprocess.CompletedProcess[str]:
    """``nginx -t`` on a configuration: is it accepted as written?"""
    prefix.mkdir(parents=True, exist_ok=True)
    conf = prefix / "check.conf"
    conf.write_text(nginx_conf(prefix, http_body))
    return subprocess.run(
        [binary("nginx"), "-t", "-p", str(prefix), "-c", str(conf)], capture_output=True, text=True, timeout=20
    )


def haproxy(prefix: Path, config: str, ready: Sequence[tuple[str, int]]) -> Proxy:
    """HAProxy in the foreground (``-db``) with ``config``, files under ``prefix``."""
    prefix.mkdir(parents=True, exist_ok=True)
    conf = prefix / "haproxy.cfg"
    conf.write_text(config)
    return Proxy([binary("haproxy"), "-db", "-f", str(conf)], prefix / "haproxy.out", ready)


def haproxy_check(prefix: Path, config: str) -> subprocess.CompletedProcess[str]:
    """``haproxy -c`` on a configuration."""
    prefix.mkdir(parents=True, exist_ok=True)
    conf = prefix / "check.cfg"
    conf.write_text(config)
    return subprocess.run([binary("haproxy"), "-c", "-f", str(conf)], capture_output=True, text=True, timeout=20)


def pipelined(host: str, port: int, requests: Iterable[bytes], timeout: float = 20.0) -> list[dict[bytes, bytes]]:
    """Send the requests pipelined, 200 to a connection, and return each response's headers in order
    (lower-cased names; the status under ``b":status"``). Bodies must carry Content-Length or be empty.

    HAProxy closes a connection that has a few hundred requests queued in it, hence the batches."""
    batch = list(requests)
    out: list[dict[bytes, bytes]] = []
    for start in range(0, len(batch), 200):
        out += _pipeline(host, port, batch[start : start + 200], timeout)
    return out


def _pipeline(host: str, port: int, batch: list[bytes], timeout: float) -> list[dict[bytes, bytes]]:
    out: list[dict[bytes, bytes]] = []
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(b"".join(batch))
        buffer = b""
        deadline = time.monotonic() + timeout
        while len(out) < len(batch):
            end = buffer.find(b"\r\n\r\n")
            if end >= 0:
                head, rest = buffer[:end].split(b"\r\n"), buffer[end + 4 :]
                headers = {b":status": head[0].split(b" ")[1]}
                for line in head[1:]:
                    name, _, value = line.partition(b":")
                    headers[name.strip().lower()] = value.strip()
                length = int(headers.get(b"content-length", b"0"))
                if len(rest) >= length:
                    out.append(headers)
                    buffer = rest[length:]
                    continue
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(out)} of {len(batch)} responses after {timeout}s")
            chunk = sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError(f"closed after {len(out)} of {len(batch)} responses")
            buffer += chunk
    return out


def get(path: str, headers: dict[bytes, bytes] | None = None, host: bytes = b"test") -> bytes:
    """One GET request's bytes, for :func:`pipelined`."""
    lines = [b"GET " + path.encode() + b" HTTP/1.1", b"Host: " + host]
    lines += [name + b": " + value for name, value in (headers or {}).items()]
    return b"\r\n".join(lines) + b"\r\n\r\n"

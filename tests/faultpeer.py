"""A misbehaving HTTP/1.1 peer for the reliability tests, run as its own process on a loopback address.

Modes (``--mode``):

* ``hang``: read each request in full, never answer (the connection stays open until the client gives up).
* ``reset``: read the request in full, then close with an RST (``SO_LINGER`` 0): "reset after the request was sent".
* ``midbody``: answer 200 with ``Content-Length: --length`` and only ``--sent`` bytes of body, then close (FIN).
* ``midbody-chunked``: the same with ``Transfer-Encoding: chunked``: ``--sent`` bytes of chunks and no last chunk.
* ``status``: answer every request with ``--status`` (a 5xx) and a short body, keeping the connection alive.
* ``stale``: answer the first request on each connection 200 (keep-alive), then close the connection without an
  answer when the next request arrives on it: a pooled connection whose server closed it as it was reused (the
  keep-alive race docs/reliability.md describes), made deterministic.

Every request received in full is counted in ``--counts`` (a JSON file replaced atomically after each request, so
a reader never sees half of it): ``{"total": n, "by_method": {...}, "requests": [[method, target], ...]}``, the
nodes' active health checks apart (``health_checks``: they are not forward attempts). The file
exists, with zero counts, once the server listens, which is how :class:`FaultPeer` knows it is ready.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from types import TracebackType
from typing import Any

from cluster import stop_group

MODES = ("hang", "reset", "midbody", "midbody-chunked", "status", "stale")
HEALTH_PATH = "/_affinity/health"
BODY_BYTE = b"x"


class Peer:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.counts_path = Path(args.counts)
        self.total = 0
        self.health_checks = 0
        self.by_method: Counter[str] = Counter()
        self.requests: list[list[str]] = []
        self.writers: set[asyncio.StreamWriter] = set()

    def record(self, method: str, target: str) -> None:
        if target == HEALTH_PATH:  # the nodes' active checks of a set-aside peer: not forward attempts
            self.health_checks += 1
        else:
            self.total += 1
            self.by_method[method] += 1
            self.requests.append([method, target])
        self.write_counts()

    def write_counts(self) -> None:
        data = {"total": self.total, "by_method": dict(self.by_method), "requests": self.requests[-1000:]}
        data["health_checks"] = self.health_checks
        tmp = self.counts_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self.counts_path)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            served = 0
            while True:
                request = await read_request(reader)
                if request is None:
                    return
                method, target = request
                self.record(method, target)
                if self.args.mode == "stale" and served:
                    return  # closed as the pooled connection's next request arrived
                served += 1
                if not await self.respond(reader, writer):
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            return
        finally:
            self.writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()

    async def respond(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Answer (or not) one request; False when the connection is done."""
        args = self.args
        mode = args.mode
        if mode == "hang":
            # Never answer; keep reading so the client's close is noticed, and drop the connection then.
            while await reader.read(65536):
                pass
            return False
        if mode == "reset":
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return False
        if mode in ("status", "stale"):
            status = args.status if mode == "status" else 200
            body = f"fault peer answers {status}\n".encode()
            head = f"HTTP/1.1 {status} Fault\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n\r\n"
            writer.write(head.encode() + body)
            await writer.drain()
            return True
        # midbody: headers and part of the body reach the client, then the peer "dies".
        sent = BODY_BYTE * args.sent
        head = "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
        if mode == "midbody":
            writer.write(f"{head}Content-Length: {args.length}\r\n\r\n".encode())
            writer.write(sent)
        else:
            writer.write(f"{head}Transfer-Encoding: chunked\r\n\r\n".encode())
            for start in range(0, len(sent), 256):
                part = sent[start : start + 256]
                writer.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
        await writer.drain()
        await asyncio.sleep(args.pause)
        writer.close()
        return False


async def read_request(reader: asyncio.StreamReader) -> tuple[str, str] | None:
    """Read one request (head and body) in full; None at a clean end of the connection."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip():
            raise
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    length = 0
    chunked = False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value.strip())
        elif name == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers, then the blank line
                    pass
                break
            await reader.readexactly(size + 2)
    elif length:
        await reader.readexactly(length)
    return method, target


async def serve(args: argparse.Namespace) -> None:
    peer = Peer(args)
    server = await asyncio.start_server(peer.handle, args.host, args.port, reuse_address=True, limit=1 << 20)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    peer.write_counts()  # readiness: the file appears once the socket listens
    async with server:
        await stop.wait()
        server.close()
        for writer in list(peer.writers):
            with contextlib.suppress(Exception):
                writer.transport.abort()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mode", choices=MODES, required=True)
    parser.add_argument("--counts", required=True)
    parser.add_argument("--status", type=int, default=503)
    parser.add_argument("--length", type=int, default=10000, help="midbody: the Content-Length announced")
    parser.add_argument("--sent", type=int, default=1000, help="midbody: body bytes actually sent")
    parser.add_argument("--pause", type=float, default=0.3, help="midbody: seconds between the partial body and close")
    args = parser.parse_args(argv)
    if not args.host.startswith("127."):
        parser.error("the fault peer only listens on loopback (127.0.0.0/8)")
    asyncio.run(serve(args))


class FaultPeer:
    """The fault peer as a subprocess: ``with FaultPeer(tmp, host, port, "reset") as peer: ... peer.counts()``."""

    def __init__(self, tmp: Path, host: str, port: int, mode: str, **options: Any) -> None:
        self.host = host
        self.port = port
        self.url = f"http://{host}:{port}"
        self.mode = mode
        self.counts_path = tmp / f"faultpeer-{host}-{mode}.json"
        self.log = tmp / f"faultpeer-{host}-{mode}.log"
        self.cmd = [
            sys.executable, str(Path(__file__).resolve()), "--host", host, "--port", str(port),
            "--mode", mode, "--counts", str(self.counts_path),
        ]  # fmt: skip
        for name, value in options.items():
            self.cmd += [f"--{name}", str(value)]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0) -> FaultPeer:
        self.counts_path.unlink(missing_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self.counts_path.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"fault peer exited with {self.proc.returncode}:\n{self.log.read_text()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"fault peer not ready after {timeout}s:\n{self.log.read_text()}")
            time.sleep(0.02)
        return self

    def counts(self) -> dict[str, Any]:
        for _ in range(50):
            with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
                return json.loads(self.counts_path.read_text())  # type: ignore[no-any-return]
            time.sleep(0.01)
        raise RuntimeError(f"cannot read {self.counts_path}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_group(proc)

    def __enter__(self) -> FaultPeer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


if __name__ == "__main__":
    main()

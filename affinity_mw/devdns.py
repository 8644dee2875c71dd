"""A small authoritative DNS server for local clusters and tests, speaking the real wire protocol (UDP, and TCP
for truncation). It is what ``affinity-mw demo`` and the test suite use to exercise DNS membership on loopback;
it is not meant to serve anything but a development zone.

Run as ``python -m affinity_mw.devdns --host 127.0.0.1 --port P --zone zone.json`` (``--port 0`` picks a free
port); it prints ``listening HOST PORT`` once both sockets are bound. The zone is JSON and is re-read whenever
the file changes, so a test changes records mid-test by rewriting it (:meth:`DnsServer.write` replaces it
atomically)::

    {
      "ttl": 30,                          # default TTL of every record
      "servfail": false,                  # true, or a list of names: answer SERVFAIL
      "silent": false,                    # true, or a list of names: never answer (the client times out)
      "records": {
        "app.test": {"A": ["127.0.0.1", {"address": "127.0.0.2", "ttl": 2}], "AAAA": ["::1"]},
        "_http._tcp.app.test": {"SRV": [{"target": "node1.test", "port": 8000, "weight": 1, "priority": 0}]},
        "empty.test": {}                  # exists, no records: NOERROR with an empty answer
      }
    }

A name not in ``records`` gets NXDOMAIN. As on real servers, records of one type form one RRset whose TTL is
the smallest of theirs.

:class:`DnsServer` runs it as a subprocess for a test and always stops it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import socket
import socketserver
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

# --------------------------------------------------------------------------------------------------- server


class Zone:
    """The zone file, parsed again whenever its identity (mtime, inode, size) changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._data: dict[str, Any] = {}
        self._records: dict[dns.name.Name, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def current(self) -> tuple[dict[str, Any], dict[dns.name.Name, dict[str, Any]]]:
        with self._lock:
            try:
                st = os.stat(self.path)
                stamp = (st.st_mtime_ns, st.st_ino, st.st_size)
                if stamp != self._stamp:
                    data = json.loads(self.path.read_text())
                    self._records = {_name(k): v for k, v in data.get("records", {}).items()}
                    self._data = data
                    self._stamp = stamp
            except (OSError, ValueError) as exc:  # keep the last zone if a rewrite is caught half-way
                print(f"dnsserver: zone not (re)loaded: {exc}", file=sys.stderr, flush=True)
            return self._data, self._records


def _name(text: str) -> dns.name.Name:
    return dns.name.from_text(text if text.endswith(".") else text + ".")


def _applies(flag: Any, qname: dns.name.Name) -> bool:
    if isinstance(flag, list):
        return qname in {_name(n) for n in flag}
    return bool(flag)


def _rdata_text(rdtype: str, entry: Any) -> tuple[str, int | None]:
    if rdtype in ("A", "AAAA"):
        if isinstance(entry, str):
            return entry, None
        return str(entry["address"]), entry.get("ttl")
    if rdtype == "SRV":
        target = str(entry["target"])
        target = target if target.endswith(".") else target + "."
        text = f"{int(entry.get('priority', 0))} {int(entry.get('weight', 1))} {int(entry['port'])} {target}"
        return text, entry.get("ttl")
    raise ValueError(f"unsupported record type {rdtype}")


def answer(zone: Zone, wire: bytes, *, tcp: bool = False) -> bytes | None:
    """The response to one query message, or ``None`` to stay silent; over UDP truncated (TC) if it does not
    fit the client's EDNS payload (512 bytes without EDNS), as a real server does."""
    try:
        query = dns.message.from_wire(wire)
    except dns.exception.DNSException:
        return None
    data, records = zone.current()
    response = dns.message.make_response(query)
    response.flags |= dns.flags.AA
    if not query.question:
        response.set_rcode(dns.rcode.FORMERR)
        return response.to_wire()
    question = query.question[0]
    qname, qtype = question.name, question.rdtype
    if _applies(data.get("silent"), qname):
        return None
    if _applies(data.get("servfail"), qname):
        response.set_rcode(dns.rcode.SERVFAIL)
        return response.to_wire()
    entry = records.get(qname)
    if entry is None:
        response.set_rcode(dns.rcode.NXDOMAIN)
        return response.to_wire()
    type_name = dns.rdatatype.to_text(qtype)
    values = entry.get(type_name, []) if type_name in ("A", "AAAA", "SRV") else []
    if values:
        default_ttl = int(data.get("ttl", 30))
        rrset = dns.rrset.RRset(qname, dns.rdataclass.IN, qtype)
        for value in values:
            text, ttl = _rdata_text(type_name, value)
            rdata = dns.rdata.from_text(dns.rdataclass.IN, qtype, text)
            rrset.add(rdata, default_ttl if ttl is None else int(ttl))  # add() keeps the smallest TTL
        response.answer.append(rrset)
    limit = 65535 if tcp else max(512, query.payload) if query.edns >= 0 else 512
    try:
        return response.to_wire(max_size=limit)
    except dns.exception.TooBig:
        response.answer = []
        response.flags |= dns.flags.TC
        return response.to_wire()


def serve(host: str, port: int, zone_path: Path) -> None:
    zone = Zone(zone_path)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET

    class TCPServer(socketserver.ThreadingTCPServer):
        address_family = family
        allow_reuse_address = True
        daemon_threads = True

    for _ in range(50):
        udp = socket.socket(family, socket.SOCK_DGRAM)
        udp.bind((host, port))
        bound = udp.getsockname()[1]
        try:
            tcp = TCPServer((host, bound), _tcp_handler(zone))
            break
        except OSError:
            udp.close()
            if port:
                raise
    else:
        raise RuntimeError("no port free for both UDP and TCP")
    threading.Thread(target=tcp.serve_forever, daemon=True).start()
    print(f"listening {host} {bound}", flush=True)
    while True:
        wire, peer = udp.recvfrom(65535)
        reply = answer(zone, wire)
        if reply is not None:
            with contextlib.suppress(OSError):
                udp.sendto(reply, peer)


def _tcp_handler(zone: Zone) -> type[socketserver.BaseRequestHandler]:
    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            sock: socket.socket = self.request
            while True:
                head = _recv_exact(sock, 2)
                if head is None:
                    return
                wire = _recv_exact(sock, struct.unpack("!H", head)[0])
                if wire is None:
                    return
                reply = answer(zone, wire, tcp=True)
                if reply is None:
                    return
                sock.sendall(struct.pack("!H", len(reply)) + reply)

    return Handler


def _recv_exact(sock: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


# --------------------------------------------------------------------------------------------------- helper


class DnsServer:
    """Runs the server in a subprocess on a loopback address; a context manager that always stops it.

    ``port=0`` picks a free port at the first start; later starts (after :meth:`stop`) reuse it, so a client
    configured with :attr:`nameserver` finds the server again.
    """

    def __init__(self, tmp: Path, zone: dict[str, Any] | None = None, *, host: str = "127.0.0.1", port: int = 0):
        self.host = host
        self.port = port
        self.zone_path = tmp / f"zone-{id(self)}.json"
        self.log_path = tmp / f"dnsserver-{id(self)}.log"
        self.proc: subprocess.Popen[str] | None = None
        self.write(zone or {"records": {}})

    @property
    def nameserver(self) -> str:
        """``host:port`` as AFFINITY_DNS_NAMESERVER takes it."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def write(self, zone: dict[str, Any]) -> None:
        """Replace the zone atomically: the server sees the old file or the new one, never half of one."""
        tmp = self.zone_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(zone))
        os.replace(tmp, self.zone_path)

    def start(self, timeout: float = 10.0) -> DnsServer:
        if self.proc is not None:
            return self
        cmd = [
            sys.executable, "-m", "affinity_mw.devdns", "--host", self.host, "--port", str(self.port),
            "--zone", str(self.zone_path),
        ]  # fmt: skip
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            line = self.proc.stdout.readline()
            if not line:  # exited
                break
            if line.startswith("listening "):
                self.port = int(line.split()[2])
                return self
        self.stop()
        raise RuntimeError(f"dnsserver did not start:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()

    def __enter__(self) -> DnsServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--zone", type=Path, required=True)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        serve(args.host, args.port, args.zone)


if __name__ == "__main__":
    main()

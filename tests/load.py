"""A bounded load generator for cluster tests: a few threads of GETs over many keys, to whichever nodes a test
says are ready (as a load balancer with readiness checks would). Bounded in count and time; stops by itself."""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field

import httpx


@dataclass
class Result:
    started: float
    ended: float
    key: str
    url: str
    status: int | None
    served_by: str | None
    error: str | None = None


@dataclass
class Load:
    targets: list[str]
    keys: list[str]
    threads: int = 4
    max_requests: int = 50_000
    max_seconds: float = 90.0
    results: list[Result] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._workers: list[threading.Thread] = []
        self._count = 0

    def ready(self, url: str, ready: bool) -> None:
        with self._lock:
            if ready and url not in self.targets:
                self.targets.append(url)
            elif not ready and url in self.targets:
                self.targets.remove(url)

    def __enter__(self) -> Load:
        deadline = time.monotonic() + self.max_seconds
        for i in range(self.threads):
            worker = threading.Thread(target=self._run, args=(random.Random(i), deadline), daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=30)

    def _run(self, rng: random.Random, deadline: float) -> None:
        with httpx.Client(trust_env=False, timeout=10.0) as client:
            while not self._stop.is_set() and time.monotonic() < deadline:
                with self._lock:
                    if self._count >= self.max_requests or not self.targets:
                        break
                    self._count += 1
                    url = rng.choice(self.targets)
                key = rng.choice(self.keys)
                started = time.monotonic()
                try:
                    r = client.get(f"{url}/tenants/{key}/hits", headers={"X-Tenant": key})
                    result = Result(started, time.monotonic(), key, url, r.status_code,
                                    r.headers.get("x-affinity-served-by"))  # fmt: skip
                except httpx.HTTPError as exc:
                    result = Result(started, time.monotonic(), key, url, None, None, repr(exc))
                with self._lock:
                    self.results.append(result)

    def snapshot(self) -> list[Result]:
        with self._lock:
            return list(self.results)

    def failures(self, since: float = 0.0) -> list[Result]:
        return [r for r in self.snapshot() if r.started >= since and (r.status != 200)]

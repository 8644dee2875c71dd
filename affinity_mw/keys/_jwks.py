"""A JWKS URL's signing keys, fetched and refreshed on a background thread: requests only read them.

An identity provider that hangs (accepts connections and never answers) must cost a request nothing: a fetch
on the event loop would stall every request of the worker, and one on a WSGI thread would hold that thread and
the client for the whole timeout. So a request never waits for the issuer:

*   The key set is fetched when the source is built, and again when it is older than its lifespan or a token
    names a ``kid`` it does not hold (the issuer rotated its keys). The fetch runs on its own daemon thread;
    the request that noticed goes on with the keys at hand (none for an unknown ``kid``: that request follows
    the no-key policy, as a token that does not verify does).
*   One fetch at a time, whatever the clients send: a token with a made-up ``kid`` asks for a refresh, but no
    second fetch starts while one is in flight, and after a fetch none starts for :data:`UNKNOWN_KID_EVERY`
    seconds. A failed fetch is remembered: the next waits :data:`FIRST_RETRY` seconds, doubling up to
    :data:`MAX_RETRY`.
*   A failed fetch keeps the last good keys, however old: an issuer outage must not turn every valid token into
    no key. Keys leave only when the issuer publishes a set without them.
*   Threads do not survive ``fork`` (gunicorn ``--preload`` builds the middleware in the master): a fetch the
    parent had in flight does not count as one in the child, which starts its own when it needs one.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from ._base import _log

__all__ = ["JwksKeys"]

FETCH_TIMEOUT = 5.0
"""Seconds a fetch may wait on the issuer for each step (connect, each read): it runs on its own thread."""

LIFESPAN = 300.0
"""Seconds after a good fetch when the key set is refreshed (in the background; the old keys serve meanwhile)."""

UNKNOWN_KID_EVERY = 30.0
"""Least seconds between a good fetch and the next one that an unknown ``kid`` may start."""

FIRST_RETRY = 1.0
"""Seconds before the first retry after a failed fetch; doubles with each failure in a row."""

MAX_RETRY = 30.0
"""Longest wait between failed fetches."""


class JwksKeys:
    """The signing keys (by ``kid``) of one JWKS URL, kept fresh off the request path.

    :meth:`get` is what a request calls: a dictionary lookup and a clock read, never I/O, never a lock held for
    more than a few instructions.
    """

    def __init__(self, client: Any, url: str, *, clock: Callable[[], float] = time.monotonic) -> None:
        # A PyJWKClient with its own caches off: only its fetch is used. *url* is the URL fit for logs (no
        # credentials, no query).
        self._client = client
        self.url = url
        self._clock = clock
        self._keys: dict[str, Any] = {}
        self._fetched_at: float | None = None
        self._not_before = float("-inf")
        self._failures = 0
        self._in_flight: int | None = None  # the pid whose thread is fetching: a fork child's is not
        self._settled = threading.Event()
        self._settled.set()
        self.stats: dict[str, Any] = {"fetches": 0, "failures": 0, "last_error": None}
        self._lock = threading.Lock()
        ref = weakref.ref(self)

        def _after_fork_in_child() -> None:
            keys = ref()
            if keys is not None:
                keys._lock = threading.Lock()  # the parent's refresher may have held it at the fork
                keys._settled.set()

        os.register_at_fork(after_in_child=_after_fork_in_child)
        self.refresh()

    def get(self, kid: str) -> Any:
        """The key for *kid* now, or ``None``; asks for a background refresh when *kid* is unknown or the set
        is past its lifespan."""
        key = self._keys.get(kid)
        fetched_at = self._fetched_at
        if key is None or fetched_at is None or self._clock() - fetched_at > LIFESPAN:
            self.refresh()
        return key

    def refresh(self) -> bool:
        """Start a background fetch unless one is in flight or the last one was too recent; True if started."""
        now = self._clock()
        if now < self._not_before:  # the common refusal, decided without the lock
            return False
        pid = os.getpid()
        with self._lock:
            if self._in_flight == pid or now < self._not_before:
                return False
            self._in_flight = pid
            self._settled.clear()
        try:
            threading.Thread(target=self._fetch, name="affinity-mw-jwks", daemon=True).start()
        except RuntimeError:  # no new threads at interpreter shutdown
            self._done()
            return False
        return True

    def wait(self, timeout: float) -> bool:
        """Wait until no fetch is in flight (tests, warm-up scripts); True unless *timeout* passed first."""
        return self._settled.wait(timeout)

    def _fetch(self) -> None:
        try:
            keys = self._download()
        except Exception as exc:
            # Connection errors, timeouts, a non-JSON answer, a set without usable signing keys: all the same
            # to a request, which keeps the last good keys.
            self._failures += 1
            retry = min(MAX_RETRY, FIRST_RETRY * 2 ** (self._failures - 1))
            self._not_before = self._clock() + retry
            self.stats["failures"] += 1
            self.stats["last_error"] = f"{type(exc).__name__}: {exc}"
            kept = f"keeping the {len(self._keys)} key(s) fetched before" if self._keys else "no keys yet"
            _log.warning(
                "affinity-mw: JWKS fetch from %s failed (%s); %s; next try in %.0f s or later",
                self.url,
                self.stats["last_error"],
                kept,
                retry,
            )
        else:
            now = self._clock()
            self._keys = keys
            self._fetched_at = now
            self._failures = 0
            self._not_before = now + UNKNOWN_KID_EVERY
        finally:
            self._done()

    def _done(self) -> None:
        with self._lock:
            self._in_flight = None
            self._settled.set()

    def _download(self) -> dict[str, Any]:
        from jwt import PyJWKSet

        self.stats["fetches"] += 1
        document = self._client.fetch_data()
        if not isinstance(document, dict):
            raise ValueError("the JWKS document is not a JSON object")
        # Signing keys only (no "use", or "sig"), and only those with a kid: the token names its key by kid.
        keys = {
            key.key_id: key
            for key in PyJWKSet.from_dict(document).keys
            if key.public_key_use in ("sig", None) and isinstance(key.key_id, str) and key.key_id
        }
        if not keys:
            raise ValueError("the JWKS document has no signing key with a kid")
        return keys

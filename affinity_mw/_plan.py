"""What a forward means, without I/O: :class:`ForwardPlan` (each attempt's request, what each failure turns into),
the per-process :class:`Forwarding` collaborators it is given, the retry budget, and the outcomes the drivers in
:mod:`affinity_mw._forwarding` return to the adapters.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from typing import Any, NamedTuple, Protocol

from .forward import (
    BAD_FRAMING,
    BAD_TARGET,
    BODY_TOO_LARGE,
    CANNOT_REACH,
    DRAINING_HEADER,
    GATEWAY_TIMEOUT,
    IDEMPOTENT,
    POOL_EXHAUSTED,
    BadFraming,
    BadResponse,
    BodyLimit,
    ClientGone,
    ConnectFailed,
    ForwardError,
    Headers,
    Unforwardable,
    UpstreamRequest,
    UpstreamTimeout,
    body_framing,
    request_headers,
)
from .hop import HOP_HEADER, HopSigner
from .ring import Node
from .router import Decision

__all__ = [
    "ABORT",
    "OWNER_HEADER",
    "POOL_EXHAUSTED_ANSWER",
    "SERVED_BY_HEADER",
    "SERVE_LOCAL",
    "Answer",
    "ForwardPlan",
    "ForwardRequest",
    "Forwarding",
    "Outcome",
    "Relay",
    "RetryBudget",
    "Start",
    "debug_headers",
    "refuse_target",
]

logger = logging.getLogger("affinity_mw")

SERVED_BY_HEADER = b"x-affinity-served-by"
OWNER_HEADER = b"x-affinity-owner"


class Answer(NamedTuple):
    """A short answer this node gives itself. ``headers`` are extra response headers (lower-case bytes)."""

    status: int
    text: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[bytes, bytes], ...] = ()


class _Signal:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


SERVE_LOCAL = _Signal("SERVE_LOCAL")
ABORT = _Signal("ABORT")
POOL_EXHAUSTED_ANSWER = Answer(*POOL_EXHAUSTED, headers=((b"retry-after", b"1"),))
_BODY_TOO_LARGE = Answer(*BODY_TOO_LARGE)


class Relay:
    """A peer's response for the adapter to stream: status, final headers, the first body bytes (already read, so
    a peer that died before its body was handled as a failed attempt) and the rest of the body.

    ``length`` is the Content-Length to check the relayed body against (``None``: nothing to check); a body that
    ends short must abort the client connection, never end cleanly. Closing the response (``aclose`` or ``close``)
    hands the connection back to the pool only when it is reusable; the slot is released after it, exactly once.
    """

    __slots__ = ("chunks", "first", "headers", "length", "response", "slot", "status")

    def __init__(
        self, response: Any, headers: Headers, first: bytes, chunks: Any, length: int | None, slot: Any
    ) -> None:
        self.response = response
        self.status: int = response.status
        self.headers = headers
        self.first = first
        self.chunks = chunks
        self.length = length
        self.slot = slot

    def close(self, reusable: bool) -> None:
        try:
            self.response.close(reusable=reusable)
        finally:
            self.slot.release()


Outcome = Answer | Relay | _Signal


class Start(NamedTuple):
    """A request that passed the checks before any attempt: its method and target, its body's length (``0`` none,
    ``None`` unknown) and the reader of that body (``None`` for none)."""

    method: str
    target: str
    length: int | None
    body: Any


class ForwardRequest(Protocol):
    """What a forward reads of the client's request: the adapter's request view implements it."""

    @property
    def method(self) -> str: ...
    @property
    def headers(self) -> Sequence[tuple[bytes, bytes]]: ...
    @property
    def client(self) -> tuple[str, int] | None: ...
    @property
    def scheme(self) -> str: ...
    @property
    def unframed(self) -> bool:
        """A body may come without a declared length (HTTP/2)."""

    def target(self) -> str:
        """The request target as received (origin-form for anything forwardable)."""

    def body(self, content_length: int | None, limit: BodyLimit | None) -> Any:
        """A reader of a body that is not empty: ``stream()`` (refuses a second read), ``started``, ``gone``, ``over``
        (past ``limit``, for a body of unknown length)."""


class RetryBudget:
    """Forwards in flight, and how many of them are retries, per worker process: at most ``max(3, 20%)`` of the
    forwards in flight may be retries (Envoy's default budget), so a failing peer cannot double the load."""

    __slots__ = ("inflight", "lock")

    def __init__(self) -> None:
        self.inflight = [0, 0]  # [forwards in flight, of which retries]
        self.lock = threading.Lock()

    def take(self) -> bool:
        """Take a place for one retry, if the budget has one. Checked and taken at once: gthread workers run many
        plans on threads."""
        inflight = self.inflight
        with self.lock:
            if inflight[1] < max(3, 0.2 * inflight[0]):
                inflight[1] += 1
                return True
        return False


class Forwarding:
    """What every forward of one worker process shares, given explicitly by the composition root
    (:class:`~affinity_mw.core.AffinityCore`): the signer, peer health, the retry budget, the latency observer,
    the counters, and the router's answer to "serve here after every candidate failed"."""

    def __init__(
        self,
        *,
        membership: Any,
        signer: HopSigner,
        health: Any,
        budget: RetryBudget,
        observe: Callable[[str, float], None],
        counters: MutableMapping[str, int],
        after_failover: Callable[[Decision], bool],
        read_timeout: float,
        deadline: float,
        forwarded_headers: bool = False,
        max_body: int = 0,
        debug_headers: bool = False,
        min_rate: float = 0.0,
        min_rate_grace: float = 20.0,
    ) -> None:
        self.membership = membership
        self.signer = signer
        self.health = health
        self.budget = budget
        self.observe = observe
        self.counters = counters
        self.after_failover = after_failover
        self.read_timeout = read_timeout
        self.deadline = deadline
        self.forwarded_headers = forwarded_headers
        self.max_body = max_body
        self.debug_headers = debug_headers
        self.min_rate = min_rate
        self.min_rate_grace = min_rate_grace

    def begin(self, request: ForwardRequest, method: str, target: str) -> Answer | _Signal | int | None:
        """The checks before any attempt: the target's form, then the body's framing. Returns the body's length
        (``0`` none, ``None`` chunked), or the outcome for a request that is not forwarded."""
        refused = refuse_target(method, target)
        if refused is not None:
            return refused
        try:
            length = body_framing(request.headers)
        except BadFraming:
            return Answer(*BAD_FRAMING)
        if length == 0 and request.unframed:
            return None  # HTTP/2 needs no length to carry a body: stream whatever comes
        return length

    def start(self, request: ForwardRequest) -> Answer | _Signal | Start:
        """:meth:`begin`, then the body's reader under :meth:`body_limit`: the prologue both forward loops share, so
        they cannot differ on which requests are refused or how much body is read."""
        method, target = request.method, request.target()
        length = self.begin(request, method, target)
        if length is not None and not isinstance(length, int):
            return length
        body = request.body(length, self.body_limit(length)) if length != 0 else None
        return Start(method, target, length, body)

    def body_limit(self, content_length: int | None) -> BodyLimit | None:
        """A counter for a body of unknown length under ``max_body`` (a declared length was checked before)."""
        return BodyLimit(self.max_body) if content_length is None and self.max_body else None


def refuse_target(method: str, target: str) -> Answer | _Signal | None:
    """What a request target that cannot be forwarded gets (``None`` for one that can), for HTTP and websockets.

    Only origin-form targets are forwarded: "http://x/..." or "@host/..." appended to a peer's base URL would send
    the request (and a signed marker) wherever the client says. "OPTIONS *" asks about this server, so this server
    answers it."""
    if target.startswith("/"):
        return None
    return SERVE_LOCAL if method == "OPTIONS" and target == "*" else Answer(*BAD_TARGET)


def debug_headers(decision: Decision, self_id: str | None) -> Headers:
    """``X-Affinity-Served-By`` for a response this node produced or relayed, and ``X-Affinity-Owner`` when the
    request had a key (an empty header would say nothing, and some clients refuse empty values)."""
    headers = [(SERVED_BY_HEADER, (decision.served_by or self_id or "").encode("latin-1"))]
    if decision.owner is not None:
        headers.append((OWNER_HEADER, decision.owner.id.encode("latin-1")))
    return headers


class ForwardPlan:
    """One forward, without I/O: the request each attempt sends and what each failure means.

    * Refused or not accepted in time (nothing sent): the next candidate, for any method, as if the dead node had
      left the ring.
    * Broken after sending, before the first body byte of the response: one retry on the next candidate, only for
      an idempotent method whose body was not streamed (a POST is never sent twice), only within the retry budget
      and after a jittered backoff (up to 25 ms); otherwise 502.
    * No response headers in time, or the overall deadline spent: 504. A response that cannot be parsed: 502.

    Only gateway failures (refused, reset, timed out, 502/503/504) count toward setting a peer aside: a client that
    aborts its upload, or an app that answers 500, says nothing about the peer's health. Use as a context manager
    so the in-flight counts the budget relies on stay exact.
    """

    __slots__ = (
        "_retrying",
        "_sent_at",
        "added",
        "backoff",
        "client",
        "deadline",
        "decision",
        "forwarding",
        "headers",
        "retried",
        "scheme",
    )

    def __init__(
        self,
        forwarding: Forwarding,
        decision: Decision,
        headers: Sequence[tuple[bytes, bytes]],
        client: tuple[str, int] | None,
        scheme: str,
    ) -> None:
        self.forwarding = forwarding
        self.decision = decision
        self.client = client
        self.scheme = scheme
        self.headers, self.added = request_headers(
            headers,
            client_host=client[0] if client else None,
            scheme=scheme,
            forwarded=forwarding.forwarded_headers,
        )
        self.retried = False
        self._retrying = False
        self.backoff = 0.0
        self._sent_at = 0.0
        self.deadline = time.monotonic() + forwarding.deadline

    def __enter__(self) -> ForwardPlan:
        budget = self.forwarding.budget
        with budget.lock:
            budget.inflight[0] += 1
        return self

    def __exit__(self, *exc: object) -> None:
        budget = self.forwarding.budget
        with budget.lock:
            budget.inflight[0] -= 1
            if self._retrying:
                budget.inflight[1] -= 1

    def remaining(self) -> float:
        """Seconds left of the overall deadline that covers every attempt until response headers."""
        return self.deadline - time.monotonic()

    def attempts(
        self, method: str, target: str, content_length: int | None, body: Callable[[], Any] | None
    ) -> Iterator[tuple[Node, UpstreamRequest]]:
        """Each candidate in failover order, with the request for that attempt: the upstream headers, a fresh
        marker, a fresh body iterator from ``body`` (it refuses a second read once the first began), and a wait
        for response headers bounded by what is left of the overall deadline."""
        decision = self.decision
        forwarding = self.forwarding
        assert decision.key_hash is not None  # a forward decision has one
        for node in decision.candidates:
            if self.remaining() <= 0:
                return
            decision.attempts += 1
            marker = forwarding.signer.sign(
                sender=forwarding.membership.self_id or "",
                receiver=node.id,
                method=method,
                target=target,
                rerouted=decision.rerouted,
                key_hash=decision.key_hash,
                ring_checksum=decision.ring.checksum,
                attempt=decision.attempts,
                client=self.client,
                scheme=self.scheme,
                added=self.added,
            )
            request = UpstreamRequest(
                method,
                node.address,
                target,
                [*self.headers, (HOP_HEADER, marker)],
                body() if body is not None else None,
                content_length,
                min(forwarding.read_timeout, self.remaining()),
            )
            self._sent_at = time.perf_counter()
            yield node, request

    def settle(self, node: Node, exc: BaseException, method: str, body: Any) -> Answer | _Signal | None:
        """What a failed attempt turns into: ``None`` to go on to the next candidate (after :attr:`backoff`
        seconds), else the outcome. A body over ``max_body`` is 413 and a client that left is :data:`ABORT`,
        whatever the transport made of them."""
        if body is not None and body.over:
            return _BODY_TOO_LARGE
        if isinstance(exc, ClientGone) or (body is not None and body.gone):
            return ABORT
        verdict = self.failed(node, exc, method, body is not None and body.started)  # type: ignore[arg-type]
        return None if verdict is None else Answer(*verdict)

    def failed(self, node: Node, exc: ForwardError, method: str, body_started: bool) -> tuple[int, bytes] | None:
        """``None`` to go on to the next candidate (after ``backoff`` seconds), else the status and text to answer
        the client with."""
        forwarding = self.forwarding
        forwarding.counters["forward_errors"] += 1
        self.backoff = 0.0
        if isinstance(exc, Unforwardable):
            return 400, b"The request cannot be forwarded: a control character in its target or a header.\n"
        if isinstance(exc, BadResponse):
            logger.warning("affinity-mw: %s sent a response that cannot be relayed (%s)", node.id, exc)
            return 502, b"The key's owner sent a response that cannot be relayed.\n"
        forwarding.health.failure(node.id)
        if isinstance(exc, UpstreamTimeout):
            logger.warning("affinity-mw: %s did not answer in time (%s)", node.id, exc)
            return GATEWAY_TIMEOUT
        if isinstance(exc, ConnectFailed):
            warn_rate_limited(node.id, "affinity-mw: cannot connect to %s (%s); trying the next owner", exc)
            if body_started:
                return 502, b"The key's owner failed while receiving the request body.\n"
            return None
        if (
            method in IDEMPOTENT
            and not body_started
            and not self.retried
            and self.remaining() > 0
            and forwarding.budget.take()
        ):
            logger.warning("affinity-mw: %s failed before answering (%s); retrying once", node.id, exc)
            self.retried = self._retrying = True
            forwarding.counters["retries"] += 1
            self.backoff = random.uniform(0, 0.025)
            return None
        logger.warning("affinity-mw: %s failed before answering (%s)", node.id, exc)
        return 502, b"The key's owner failed before answering.\n"

    def exhausted(self) -> tuple[int, bytes]:
        """What to answer when no attempt produced a response and serving here is not an option."""
        return GATEWAY_TIMEOUT if self.remaining() <= 0 else CANNOT_REACH

    def finish(self) -> Answer | _Signal:
        """Every candidate failed: serve here if the router says so (this node is next, or the fallback policy),
        else 502 or 504."""
        if self.forwarding.after_failover(self.decision):
            return SERVE_LOCAL
        return Answer(*self.exhausted())

    def answered(self, node: Node, status: int, headers: Headers) -> Headers:
        """Record a peer's answer for health, and return its headers minus our internal draining signal.

        A 502/503/504 counts toward ejection (Envoy's consecutive gateway failures); ``X-Affinity-Draining`` sets
        the peer aside at once so new keys stop going to a node that is shutting down. The response itself is
        relayed as it is: it is a real answer to this request.
        """
        forwarding = self.forwarding
        forwarding.observe(node.id, time.perf_counter() - self._sent_at)
        health = forwarding.health
        if status in (502, 503, 504):
            health.failure(node.id)
        else:
            health.success(node.id)
        for name, _ in headers:
            if name == DRAINING_HEADER:
                health.draining(node.id)
                headers = [(name, value) for name, value in headers if name != DRAINING_HEADER]
                break
        self.decision.served_by = node.id
        return headers

    def with_debug_headers(self, headers: Headers) -> Headers:
        """A relayed response's headers (HTTP, or a websocket's accept) with this node's debug headers, unless the
        owner's middleware added its own: it knows which node served, and the client must get one of each."""
        forwarding = self.forwarding
        if forwarding.debug_headers and not any(name == SERVED_BY_HEADER for name, _ in headers):
            headers = [*headers, *debug_headers(self.decision, forwarding.membership.self_id)]
        return headers

    def relay(self, node: Node, response: Any, no_body: bool, first: bytes, chunks: Any, slot: Any) -> Relay:
        """The outcome for a peer's response whose first body bytes arrived (``no_body``: one that has none)."""
        headers = self.with_debug_headers(self.answered(node, response.status, response.headers))
        length = None
        if not no_body:
            for name, value in headers:
                if name == b"content-length":
                    length = int(value)
        return Relay(response, headers, first, chunks, length, slot)


_last_warned: dict[str, float] = {}


def warn_rate_limited(peer: str, message: str, exc: BaseException) -> None:
    """One warning per peer per 10 s: a dead peer must not turn every forwarded request into a log line."""
    now = time.monotonic()
    if now - _last_warned.get(peer, -1e9) >= 10.0:
        _last_warned[peer] = now
        logger.warning(message, peer, exc)

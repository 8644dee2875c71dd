"""The two loops that carry out a forward decision; what each step means is :class:`~affinity_mw._plan.ForwardPlan`'s.

:func:`forward_async` (ASGI) and :func:`forward_sync` (WSGI) are the same lines, one with ``await``, written side
by side so they cannot drift apart. Each returns an outcome that the adapter only turns into its own protocol:

* ``Answer``: a status and a short text this node answers with (502, 504, 413, 503 ...);
* ``Relay``: the peer's response, its headers final and its first body bytes already read;
* ``SERVE_LOCAL``: serve the request here (``OPTIONS *``, or this node is next after every candidate failed);
* ``ABORT``: the client went away mid-upload: nobody to answer, and not the peer's fault.

Every rule about a failed attempt (failover, the retry budget, backoff, peer slots, body limits, a client that
left, a peer that died before the first body byte) is decided here and in the plan, once; ``docs/reliability.md``
has the table of what each failure turns into, ``docs/design.md`` where this sits in a request's flow.
"""

from __future__ import annotations

import asyncio
import time

from ._pace import SLOW_UPLOAD, SMALL_BODY, DownloadPace, pace_upload
from ._plan import POOL_EXHAUSTED_ANSWER, Forwarding, ForwardPlan, ForwardRequest, Outcome, Start
from ._slots import AsyncPeerSlots, SyncPeerSlots
from .forward import AsyncTransport, ClientGone, ForwardError, PoolExhausted, SyncTransport, bodiless
from .router import Decision

__all__ = ["forward_async", "forward_sync"]


async def forward_async(
    forwarding: Forwarding,
    decision: Decision,
    request: ForwardRequest,
    transport: AsyncTransport,
    slots: AsyncPeerSlots,
) -> Outcome:
    """Carry out a forward decision on an event loop; see the module docstring for the outcomes."""
    start = forwarding.start(request)
    if not isinstance(start, Start):
        return start
    method, target, begun, body = start
    stream = body.stream if body else None
    # A client slower than the minimum rate (its own time only) is cut off, so it cannot hold the peer's slot.
    min_rate, grace = forwarding.min_rate, forwarding.min_rate_grace
    upload = None
    if stream is not None and min_rate:
        upload, stream = pace_upload(stream, grace, min_rate)
    with ForwardPlan(forwarding, decision, request.headers, request.client, request.scheme) as plan:
        for node, upstream in plan.attempts(method, target, begun, stream):
            slot = slots.get(node.id)
            if not slot.take():
                try:
                    await slot.wait(slots.timeout, node.id)
                except PoolExhausted:
                    return POOL_EXHAUSTED_ANSWER
            response = None
            try:
                response = await transport.send(upstream)
                chunks = response.aiter_raw()
                no_body = bodiless(method, response.status)
                first = b"" if no_body else await anext(chunks, b"")
            except (ClientGone, ForwardError) as exc:
                try:
                    if response is not None:
                        await response.aclose(reusable=False)
                finally:
                    slot.release()
                if upload is not None and upload.expired:
                    return SLOW_UPLOAD
                step = plan.settle(node, exc, method, body)
                if step is not None:
                    return step
                if plan.backoff:
                    await asyncio.sleep(plan.backoff)
                continue
            except BaseException:
                slot.release()
                raise
            relay = plan.relay(node, response, no_body, first, chunks, slot)
            if min_rate and not no_body and (relay.length != len(first) or len(first) > SMALL_BODY):
                relay.chunks = relay.slot = DownloadPace(grace, min_rate, response, chunks, len(first), slot)
            return relay
    return plan.finish()


def forward_sync(
    forwarding: Forwarding,
    decision: Decision,
    request: ForwardRequest,
    transport: SyncTransport,
    slots: SyncPeerSlots,
) -> Outcome:
    """Carry out a forward decision on a worker thread: :func:`forward_async` without ``await``."""
    start = forwarding.start(request)
    if not isinstance(start, Start):
        return start
    method, target, begun, body = start
    with ForwardPlan(forwarding, decision, request.headers, request.client, request.scheme) as plan:
        for node, upstream in plan.attempts(method, target, begun, body.stream if body else None):
            slot = slots.acquire(node.id)
            if slot is None:
                return POOL_EXHAUSTED_ANSWER
            response = None
            try:
                response = transport.send(upstream)
                chunks = response.iter_raw()
                no_body = bodiless(method, response.status)
                first = b"" if no_body else next(chunks, b"")
            except (ClientGone, ForwardError) as exc:
                try:
                    if response is not None:
                        response.close(reusable=False)
                finally:
                    slot.release()
                step = plan.settle(node, exc, method, body)
                if step is not None:
                    return step
                if plan.backoff:
                    time.sleep(plan.backoff)
                continue
            except BaseException:
                slot.release()
                raise
            return plan.relay(node, response, no_body, first, chunks, slot)
    return plan.finish()

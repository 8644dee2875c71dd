"""Which keys this node owns: ``owns(key)``, identifiers minted to be owned here, and what a membership change
gained or lost this node.

Three uses, all on the ring this node routes by:

* :func:`owns` answers "is this key mine?" exactly as routing does (the ring's owner, not the health-adjusted
  failover choice), for an app that keeps per-key state and wants to check before it serves from it.
* :func:`mint_key` makes an identifier for something that does not exist yet (a session, an upload, a
  document) that this node owns: the request that creates it is served here, and so, without a hop, is every
  later request that carries it, until membership changes. It draws random identifiers and keeps the first
  one that hashes to this node, so its cost is about ``1 / share`` hashes (3 on a 3-node ring).
* :func:`ownership_change` compares the ring before and after a membership change, for state handoff: the
  key-hash ranges this node gained and lost (exact, for the ``ring`` and ``maglev`` algorithms) and a per-key
  test that works for every algorithm. :class:`OwnershipHooks` delivers each change to the app's callbacks
  and keeps the recent ones for the status page.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import inspect
import logging
import math
import secrets
import threading
import time
from bisect import bisect_right
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .ring import HashRing, MaglevRing, Node, Ring

__all__ = [
    "KeyRanges",
    "MintError",
    "OwnershipChange",
    "OwnershipHooks",
    "mint_key",
    "ownership_change",
    "owns",
]

logger = logging.getLogger("affinity_mw")

_MINT_MARGIN = 60
"""Attempts per expected attempt: a node owning the share its weight gives it fails to mint with probability
about ``e**-60``; the bound only stops a node that owns (almost) nothing from looping."""


class MintError(RuntimeError):
    """No identifier owned by this node could be made: it is not a member of its ring, or owns too little."""


def _owner_id(ring: Ring | None, key: str) -> str | None:
    """The id of ``key``'s owner on ``ring``, hashing the key the ring's way (``nginx`` rings use CRC32)."""
    if ring is None:
        return None
    owner = ring.owner_of(key)
    return owner.id if owner is not None else None


def owns(ring: Ring, self_id: str | None, key: str) -> bool:
    """Whether ``self_id`` owns ``key`` on ``ring`` (a node that is not a member owns nothing)."""
    return self_id is not None and _owner_id(ring, key) == self_id


def mint_key(
    ring: Ring,
    self_id: str | None,
    *,
    prefix: str = "",
    nbytes: int = 16,
    max_attempts: int | None = None,
) -> str:
    """A fresh random identifier, ``prefix`` followed by ``nbytes`` random bytes in URL-safe base64 (22
    characters for 16 bytes: safe in a path, a query, a header or a cookie), that ``self_id`` owns on ``ring``.

    The identifier is the key itself: routing must extract exactly this string (``path:/docs/{key}`` with
    ``prefix=""``, or a key source that yields the prefix too). ``max_attempts`` defaults to 60 times the
    expected number (the ring's total weight over this node's). Raises :class:`MintError` when this node is not
    a member, or when no attempt hit this node.
    """
    if nbytes < 8:
        raise ValueError(f"nbytes must be at least 8 (64 random bits), got {nbytes!r}.")
    member = ring.get(self_id) if self_id is not None else None
    if member is None:
        raise MintError(
            f"This node ({self_id or 'no AFFINITY_SELF'}) is not a member of the ring, so it owns no key; "
            "mint identifiers on a member."
        )
    if max_attempts is None:
        total = sum(node.weight for node in ring.nodes)
        max_attempts = math.ceil(_MINT_MARGIN * total / member.weight)
    for _ in range(max_attempts):
        key = prefix + secrets.token_urlsafe(nbytes)
        if _owner_id(ring, key) == self_id:
            return key
    raise MintError(f"No identifier owned by {self_id} was found in {max_attempts} attempts.")


@dataclass(frozen=True)
class KeyRanges:
    """A set of key hashes: ``ring.key_hash(key) % modulus`` falls in one of the half-open ``spans`` ``[start,
    end)``, sorted and disjoint. ``modulus`` is the ring's hash space for the ``ring`` and ``nginx`` algorithms
    (spans of the hash space itself: ``2**64``, ``2**32``) and the table size for ``maglev`` (runs of slots)."""

    modulus: int
    spans: tuple[tuple[int, int], ...]

    def __contains__(self, key_hash: object) -> bool:
        if not isinstance(key_hash, int):
            return False
        point = key_hash % self.modulus
        i = bisect_right(self.spans, (point, self.modulus)) - 1
        return i >= 0 and self.spans[i][0] <= point < self.spans[i][1]

    @property
    def fraction(self) -> float:
        """The share of all keys in these ranges."""
        return sum(end - start for start, end in self.spans) / self.modulus

    def __len__(self) -> int:
        return len(self.spans)


@dataclass(frozen=True)
class OwnershipChange:
    """What one membership change meant for one node.

    ``gained`` and ``lost`` are the exact :class:`KeyRanges` where the algorithm has ranges (two ``ring`` rings,
    two ``nginx`` rings, two ``maglev`` tables of one size), else ``None``; :meth:`gained_key`, :meth:`lost_key`
    and the filters :meth:`gained_keys` and :meth:`lost_keys` work for every algorithm, on the keys the app holds.
    """

    node: str | None
    old: Ring | None = field(repr=False)
    new: Ring = field(repr=False)
    gained: KeyRanges | None
    lost: KeyRanges | None
    at: float = field(default_factory=time.time)
    old_node: str | None = None

    def gained_key(self, key: str) -> bool:
        return self._has(key) and not self._had(key)

    def lost_key(self, key: str) -> bool:
        return self._had(key) and not self._has(key)

    def gained_keys(self, keys: Iterable[str]) -> list[str]:
        """The keys among ``keys`` that this node owns now and did not own before."""
        return [key for key in keys if self.gained_key(key)]

    def lost_keys(self, keys: Iterable[str]) -> list[str]:
        """The keys among ``keys`` that this node owned before and does not own now: the state to hand off (or
        drop) for them."""
        return [key for key in keys if self.lost_key(key)]

    def _had(self, key: str) -> bool:
        return self.old_node is not None and _owner_id(self.old, key) == self.old_node

    def _has(self, key: str) -> bool:
        return self.node is not None and _owner_id(self.new, key) == self.node

    def as_dict(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "node": self.node,
            "old_ring": self.old.checksum if self.old is not None else None,
            "new_ring": self.new.checksum,
            "gained_fraction": self.gained.fraction if self.gained is not None else None,
            "lost_fraction": self.lost.fraction if self.lost is not None else None,
            "gained_ranges": len(self.gained) if self.gained is not None else None,
            "lost_ranges": len(self.lost) if self.lost is not None else None,
        }


class _Same(enum.Enum):
    SAME = 0


SAME = _Same.SAME
"""``old_self_id``'s default: this node had the same id on the old ring."""


def ownership_change(
    old: Ring | None, new: Ring, self_id: str | None, *, old_self_id: str | _Same | None = SAME
) -> OwnershipChange:
    """What ``self_id`` gained and lost going from ``old`` (``None``: no ring before) to ``new``; a pure function
    of the two rings. ``old_self_id`` is this node's id on the old ring when it changed (a node that found
    itself in DNS), the same as ``self_id`` by default."""
    before = self_id if old_self_id is SAME else old_self_id
    ranges = _changed_ranges(old, new, before, self_id)
    gained, lost = ranges if ranges is not None else (None, None)
    return OwnershipChange(self_id, old, new, gained, lost, old_node=before)


def _changed_ranges(
    old: Ring | None, new: Ring, before: str | None, after: str | None
) -> tuple[KeyRanges, KeyRanges] | None:
    """Exact gained and lost ranges by walking both rings' segments (or tables) side by side."""
    if isinstance(new, HashRing) and (old is None or type(old) is type(new)):
        # _segments() is the ring's own description of its hash space: (end, owner) with each range ending where
        # the next begins; no ring before is one segment that nobody owns. Same type: same hashing, same space.
        space = new._space
        mine: list[tuple[int, Node | None]] = old._segments() if old is not None else [(space, None)]
        return _walk(mine, new._segments(), space, before, after)
    if isinstance(new, MaglevRing) and (old is None or (isinstance(old, MaglevRing) and old.size == new.size)):
        # Slot by slot over the tables themselves (a key's slot is its hash modulo the size).
        gained: list[tuple[int, int]] = []
        lost: list[tuple[int, int]] = []
        old_table = old._table if old is not None else [None] * new.size
        for slot, (a, b) in enumerate(zip(old_table, new._table, strict=True)):
            had = a is not None and a.id == before
            has = b is not None and b.id == after
            if has != had:
                _extend(gained if has else lost, slot, slot + 1)
        return KeyRanges(new.size, tuple(gained)), KeyRanges(new.size, tuple(lost))
    return None


def _walk(
    mine: list[tuple[int, Node | None]],
    theirs: list[tuple[int, Node | None]],
    modulus: int,
    before: str | None,
    after: str | None,
) -> tuple[KeyRanges, KeyRanges]:
    gained: list[tuple[int, int]] = []
    lost: list[tuple[int, int]] = []
    i = j = start = 0
    while start < modulus:
        end_a, node_a = mine[i]
        end_b, node_b = theirs[j]
        end = min(end_a, end_b)
        had = before is not None and node_a is not None and node_a.id == before
        has = after is not None and node_b is not None and node_b.id == after
        if has and not had:
            _extend(gained, start, end)
        elif had and not has:
            _extend(lost, start, end)
        start = end
        if end_a == end:
            i += 1
        if end_b == end:
            j += 1
    return KeyRanges(modulus, tuple(gained)), KeyRanges(modulus, tuple(lost))


def _extend(spans: list[tuple[int, int]], start: int, end: int) -> None:
    if spans and spans[-1][1] == start:
        spans[-1] = (spans[-1][0], end)
    else:
        spans.append((start, end))


Callback = Callable[[OwnershipChange], Awaitable[None] | None]


class OwnershipHooks:
    """The app's callbacks for ownership changes, and the last ``keep`` changes for the status page.

    A callback takes one :class:`OwnershipChange` and may be a plain function or a coroutine function. Plain
    ones run in the thread that swapped the ring (keep them quick: hand long work to a queue). Coroutine
    functions run on the event loop given to :meth:`bind_loop` (the ASGI middleware binds the server's loop), or
    in a loop of their own when none is bound. A callback that raises is logged; it never stops the ring swap
    or the other callbacks.
    """

    def __init__(self, keep: int = 20) -> None:
        self.callbacks: list[Callback] = []
        self.recent: collections.deque[OwnershipChange] = collections.deque(maxlen=keep)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()

    def add(self, callback: Callback) -> Callback:
        """Register ``callback`` (usable as a decorator)."""
        if not callable(callback):
            raise TypeError(f"An ownership callback must be callable, not {type(callback).__name__}.")
        self.callbacks.append(callback)
        return callback

    def bind_loop(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self._loop = loop

    def ring_swapped(
        self, old: Ring | None, new: Ring, self_id: str | None, old_self_id: str | _Same | None = SAME
    ) -> OwnershipChange | None:
        """Record the change from ``old`` to ``new`` and deliver it, if this node gained or lost anything."""
        change = ownership_change(old, new, self_id, old_self_id=old_self_id)
        if change.gained is not None and change.lost is not None and not change.gained.spans and not change.lost.spans:
            return None  # exact ranges say nothing moved to or from this node
        with self._lock:
            self.recent.append(change)
        for callback in list(self.callbacks):
            self._deliver(callback, change)
        return change

    def _deliver(self, callback: Callback, change: OwnershipChange) -> None:
        try:
            if inspect.iscoroutinefunction(callback):
                coroutine = callback(change)
                assert inspect.iscoroutine(coroutine)
                loop = self._loop
                if loop is not None and not loop.is_closed():
                    asyncio.run_coroutine_threadsafe(coroutine, loop).add_done_callback(_log_failure)
                else:
                    asyncio.run(coroutine)
            else:
                result = callback(change)
                if inspect.isawaitable(result):  # a plain function that returned a coroutine
                    asyncio.run(_await(result))
        except Exception:
            logger.exception("affinity-mw: an ownership-change callback failed")

    def as_list(self) -> list[dict[str, Any]]:
        with self._lock:
            return [change.as_dict() for change in self.recent]


async def _await(awaitable: Awaitable[None]) -> None:
    await awaitable


def _log_failure(future: Any) -> None:
    if not future.cancelled() and future.exception() is not None:
        logger.error("affinity-mw: an ownership-change callback failed", exc_info=future.exception())

"""The deterministic body pattern that the test apps serve and the overload tests check, in one place: the apps
(in their own processes) and the tests must produce the very same bytes."""

from __future__ import annotations

import random
from collections.abc import Iterator


def pattern(size: int, seed: int) -> Iterator[bytes]:
    """Deterministic pseudo-random bytes in 64 KiB blocks, each numbered: cheap to produce and to check at GB sizes,
    and a lost, repeated or reordered block changes the hash."""
    pool = random.Random(seed).randbytes(1 << 20)
    i, left = 0, size
    while left > 0:
        offset = (i * 40503) % ((1 << 20) - 65536)
        block = (i.to_bytes(8, "big") + pool[offset : offset + 65528])[:left]
        left -= len(block)
        i += 1
        yield block

"""The keys with the most recent requests, in bounded memory: a Misra-Gries summary with exponential decay.

At most ``size`` keys are counted. A key that is not counted while the table is full lowers every count by one
(and keys that reach zero leave) instead of taking a place: each such step removes ``size`` counts, so its cost
averages out to a constant per request, and any key with more than ``1 / (size + 1)`` of the requests is always
in the table. Every ``window`` requests every count is halved, so "recent" means a half-life of ``window``
requests; no clock is read. Counts are underestimates by at most ``total / (size + 1)``.
"""

from __future__ import annotations

__all__ = ["DEFAULT_HOT_KEYS", "DEFAULT_WINDOW", "HotKeys"]

DEFAULT_HOT_KEYS = 32
DEFAULT_WINDOW = 2048


class HotKeys:
    """Recent request counts of the heaviest keys. ``add(key)`` is the per-request update; :meth:`top` and
    :meth:`share` read it. Plain dict updates: exact on one event loop, approximate under threads (a lost
    update among thousands changes no ranking that matters)."""

    __slots__ = ("counts", "decays", "seen", "size", "total", "window")

    def __init__(self, size: int = DEFAULT_HOT_KEYS, window: int = DEFAULT_WINDOW) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"The number of hot keys kept must be an integer of at least 1, got {size!r}.")
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"The hot-key window must be an integer of at least 1 request, got {window!r}.")
        self.size = size
        self.window = window
        self.counts: dict[str, float] = {}
        self.total = 0.0  # decayed count of every request added, counted or not
        self.seen = 0  # requests since the last halving
        self.decays = 0

    def add(self, key: str) -> None:
        counts = self.counts
        count = counts.get(key)
        if count is not None:
            counts[key] = count + 1.0
        elif len(counts) < self.size:
            counts[key] = 1.0
        else:
            # Misra-Gries: no room, so every count pays one (the new key's own request cancels out one each).
            for other, value in list(counts.items()):
                if value > 1.0:
                    counts[other] = value - 1.0
                else:
                    del counts[other]
        self.total += 1.0
        self.seen += 1
        if self.seen >= self.window:
            self._decay()

    def _decay(self) -> None:
        self.seen = 0
        self.decays += 1
        self.total /= 2
        counts = self.counts
        for key, value in list(counts.items()):
            if value >= 1.0:
                counts[key] = value / 2
            else:
                del counts[key]

    def share(self, key: str) -> float:
        """The key's share of recent requests (a lower bound; 0.0 for a key not in the table)."""
        total = self.total
        return self.counts.get(key, 0.0) / total if total else 0.0

    def top(self, n: int | None = None) -> list[tuple[str, float]]:
        """The heaviest keys first, each with its share of recent requests."""
        total = self.total or 1.0
        ranked = sorted(self.counts.items(), key=lambda item: (-item[1], item[0]))
        return [(key, count / total) for key, count in ranked[:n]]

    def clear(self) -> None:
        self.counts.clear()
        self.total = 0.0
        self.seen = 0

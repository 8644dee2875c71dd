"""The hot-key summary (affinity_mw.hotkeys): bounded memory, heavy hitters always found, recent over old."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from affinity_mw.hotkeys import HotKeys


def zipf_stream(rng: random.Random, n: int, keys: int = 5000, exponent: float = 1.1) -> list[str]:
    weights = [1 / rank**exponent for rank in range(1, keys + 1)]
    return rng.choices([f"k{rank}" for rank in range(1, keys + 1)], weights, k=n)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_every_key_above_one_in_size_plus_one_is_kept_and_counts_are_lower_bounds(seed: int) -> None:
    rng = random.Random(seed)
    stream = zipf_stream(rng, 20_000)
    hot = HotKeys(size=16, window=10**9)  # no decay: the textbook guarantee
    for key in stream:
        hot.add(key)
        assert len(hot.counts) <= 16  # bounded memory at every step
    truth = Counter(stream)
    for key, count in truth.items():
        share = count / len(stream)
        if share > 1 / 17:
            assert key in hot.counts
        assert hot.share(key) <= share + 1e-12
        assert hot.share(key) >= share - 1 / 17
    assert hot.top(1)[0][0] == truth.most_common(1)[0][0]


def test_recent_requests_outweigh_old_ones() -> None:
    hot = HotKeys(size=8, window=100)
    for i in range(2000):
        hot.add("old" if i % 2 else f"cold{i % 40}")
    assert hot.top(1)[0][0] == "old"
    for i in range(600):  # six windows of a new hot key; "old" is not asked for any more
        hot.add("new" if i % 2 else f"cold{i % 40}")
    assert hot.top(1)[0][0] == "new"
    assert hot.share("old") < hot.share("new") / 30
    assert 0.4 < hot.share("new") <= 0.5


def test_a_key_that_stops_leaves_the_table() -> None:
    hot = HotKeys(size=4, window=10)
    for _ in range(50):
        hot.add("gone")
    for i in range(200):
        hot.add(f"k{i % 3}")
    assert "gone" not in hot.counts


def test_top_orders_by_count_then_key_and_clear_empties() -> None:
    hot = HotKeys(size=8)
    for key in ["b", "a", "b", "c", "a", "b"]:
        hot.add(key)
    assert hot.top() == [("b", 0.5), ("a", 2 / 6), ("c", 1 / 6)]
    assert hot.top(1) == [("b", 0.5)]
    hot.clear()
    assert hot.top() == [] and hot.share("b") == 0.0


@pytest.mark.parametrize(("size", "window"), [(0, 10), (8, 0), (True, 10), (8, 1.5)])
def test_bad_sizes_are_refused(size: object, window: object) -> None:
    with pytest.raises(ValueError, match="hot"):
        HotKeys(size, window)  # type: ignore[arg-type]

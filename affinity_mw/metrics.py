"""Metrics: what operators need to answer "how much traffic is local, which peer is failing, do nodes agree".

The hot path only bumps plain dict counters (the router's) and, per forward, records one latency sample. Everything
else is computed when scraped. ``snapshot()`` is the JSON form; ``prometheus_text()`` renders the Prometheus text
format through ``prometheus_client`` (the ``prometheus`` extra) with conventional names
(``affinity_forwarded_requests_total``, ``affinity_forward_duration_seconds``, ...). Counters are per worker
process, like the pools and health state they describe; scrape each worker or run one worker per node.

The locality ratio is a recent figure, the share over about the last ``LOCALITY_WINDOW`` seconds, so it shows
an outage while it lasts and recovers after it: a ratio since process start hardly moves on a long-running node
and keeps the mark of an old outage for hours. The window needs no work per request: each read (a scrape, the
status page) keeps the counters it saw, and the ratio is the change since the oldest reading under the window.
Alerts are best written on ``rate()`` of the counters themselves, which Prometheus windows exactly.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import Any

__all__ = ["BUCKETS", "COUNTERS", "LOCALITY_WINDOW", "LatencyHistogram", "Metrics"]

# Seconds the locality ratio looks back (at least; readings are kept one per second at most).
LOCALITY_WINDOW = 300.0

# Upper bounds in seconds: loopback forwards take ~0.3-1 ms, cross-zone ones 1-10 ms; timeouts land in +Inf.
BUCKETS: tuple[float, ...] = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

# router/forward counter key -> (Prometheus name, help). Names follow the Prometheus conventions.
COUNTERS: dict[str, tuple[str, str]] = {
    "local_owner": ("affinity_local_requests_total", "Requests served here because this node owns their key."),
    "forwarded": ("affinity_forwarded_requests_total", "Requests forwarded to the key's owner."),
    "hop": ("affinity_hop_requests_total", "Requests served here after one hop from a peer."),
    "misroute": (
        "affinity_misrouted_requests_total",
        "Hop requests served here although this node's ring names another owner.",
    ),
    "ring_skew": (
        "affinity_ring_skew_total",
        "Hop requests whose sender's ring checksum differs from this node's (membership disagreement).",
    ),
    "failover": (
        "affinity_failover_requests_total",
        "Requests served here because their owner was unreachable or set aside and this node is next.",
    ),
    "fallback": ("affinity_fallback_requests_total", "Requests served here after every candidate peer failed."),
    "no_key": ("affinity_no_key_requests_total", "Requests without an affinity key."),
    "rejected": ("affinity_rejected_requests_total", "Requests rejected for lack of a key (AFFINITY_NO_KEY=reject)."),
    "invalid_marker": ("affinity_invalid_markers_total", "Hop markers that were forged, stale or malformed."),
    "marker_key_mismatch": (
        "affinity_marker_key_mismatch_total",
        "Authentic hop markers signed for another key (served here: a replay, or key settings that differ).",
    ),
    "forward_errors": ("affinity_forward_errors_total", "Forward attempts that failed (refused, reset, timed out)."),
    "retries": ("affinity_forward_retries_total", "Idempotent requests retried on another peer after a failure."),
    "excluded": (
        "affinity_excluded_requests_total",
        "Requests on routes AFFINITY_ROUTES leaves unrouted (served here).",
    ),
    "shadow_forward": (
        "affinity_shadow_forwards_total",
        "Requests routing would have forwarded, served here (AFFINITY_MODE=shadow).",
    ),
    "cookies_issued": (
        "affinity_cookies_issued_total",
        "Generated affinity cookies set on responses to requests that carried no key.",
    ),
}


class LatencyHistogram:
    """Cumulative-bucket histogram of forward latency (to response headers) for one peer."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.sum += seconds

    def cumulative(self) -> list[int]:
        out, total = [], 0
        for count in self.counts:
            total += count
            out.append(total)
        return out


class Metrics:
    """Reads the router's counters, peer health, membership, whether this node drains and the hot-key figures;
    owns the per-peer latency histograms."""

    def __init__(
        self,
        *,
        counters: Mapping[str, int],
        membership: Any,
        health: Any,
        draining: Callable[[], bool],
        hot: Callable[[], dict[str, Any]] = lambda: {"hot_keys": [], "balance": None, "shadow": None},
    ) -> None:
        self.counters = counters
        self.membership = membership
        self.health = health
        self.draining = draining
        self.hot = hot  # hot keys, bounded loads and shadow mode (balance.hot_status)
        self.latency: dict[str, LatencyHistogram] = {}
        self._lock = threading.Lock()
        self.clock: Callable[[], float] = time.monotonic
        # (time, (on the owner, served, edge agreed, edge sent)) as seen by earlier reads of the windowed ratios,
        # oldest first; the process start is older than any window, whatever ``clock`` reads (tests and embedders
        # may replace it).
        self._readings: deque[tuple[float, tuple[int, ...]]] = deque([(float("-inf"), (0, 0, 0, 0))])

    def observe_forward(self, peer: str, seconds: float) -> None:
        histogram = self.latency.get(peer)
        if histogram is None:
            with self._lock:
                histogram = self.latency.setdefault(peer, LatencyHistogram())
        histogram.observe(seconds)

    def locality_ratio(self) -> float | None:
        """Share of keyed requests served here in about the last ``LOCALITY_WINDOW`` seconds that were served by
        their key's owner (None when there were none).

        The baseline is the newest earlier reading at least a window old (the figure then covers the window plus
        at most one scrape interval), else the oldest one kept: process start, for a young process.
        """
        on_owner, served, _, _ = self._window()
        return on_owner / served if served else None

    def edge_agreement(self) -> float | None:
        """Share of the keyed requests that reached this node from outside the cluster (a front proxy, a client,
        a load balancer: no hop marker) in about the last ``LOCALITY_WINDOW`` seconds that this node owns, so
        served without a hop; the rest it forwarded. 1.0 means the edge agrees with the ring (None: no requests).

        A key whose owner is down or set aside is not counted either way: where the edge sends it is a failover.
        """
        _, _, agreed, sent = self._window()
        return agreed / sent if sent else None

    def _window(self) -> tuple[int, ...]:
        """The windowed changes of (on the owner, served, edge agreed, edge sent), reading the counters once."""
        c = self.counters
        now_values = (
            c["local_owner"] + c["hop"] - c["misroute"],
            c["local_owner"] + c["hop"] + c["failover"] + c["fallback"] + c["local_spill"],
            c["local_owner"],
            c["local_owner"] + c["forwarded"],
        )
        now = self.clock()
        with self._lock:
            readings = self._readings
            while len(readings) > 1 and readings[1][0] <= now - LOCALITY_WINDOW:
                readings.popleft()
            base = readings[0][1]
            if now - readings[-1][0] >= 1.0:
                readings.append((now, now_values))
        return tuple(value - old for value, old in zip(now_values, base, strict=True))

    def snapshot(self) -> dict[str, Any]:
        ring = self.membership.ring
        return {
            "counters": {key: self.counters[key] for key in COUNTERS},
            "locality_ratio": self.locality_ratio(),
            "edge_agreement": self.edge_agreement(),
            "ring_checksum": ring.checksum,
            "ring_members": len(ring),
            "peer_ejections": self.health.ejections_total,
            "set_aside": self.health.ejected(),
            "draining": self.draining(),
            **self.hot(),
            "forward_latency_seconds": {
                peer: {
                    "count": sum(h.counts),
                    "sum": round(h.sum, 6),
                    "buckets": dict(zip(_labels(), h.cumulative(), strict=True)),
                }
                for peer, h in sorted(self.latency.items())
            },
        }

    def collect(self) -> Iterator[Any]:
        """Yield prometheus_client metric families (a custom collector: nothing global is registered)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        for key, (name, doc) in COUNTERS.items():
            family = CounterMetricFamily(name.removesuffix("_total"), doc)
            family.add_metric([], self.counters[key])
            yield family
        ejections = CounterMetricFamily("affinity_peer_ejections", "Times a peer was set aside (failures or draining).")
        ejections.add_metric([], self.health.ejections_total)
        yield ejections
        ring = self.membership.ring
        yield GaugeMetricFamily("affinity_ring_members", "Members on this node's ring.", value=len(ring))
        info = GaugeMetricFamily("affinity_ring_info", "This node's ring checksum (equal on agreeing nodes).",
                                 labels=["checksum", "node"])  # fmt: skip
        info.add_metric([ring.checksum, self.membership.self_id or ""], 1)
        yield info
        yield GaugeMetricFamily("affinity_peers_set_aside", "Peers set aside now.", value=len(self.health.ejected()))
        yield GaugeMetricFamily("affinity_draining", "1 while this node drains.", value=int(self.draining()))
        ratio = self.locality_ratio()
        yield GaugeMetricFamily(
            "affinity_locality_ratio",
            f"Share of keyed requests served here in about the last {LOCALITY_WINDOW:.0f} s that were served by "
            "their key's owner (1 without any).",
            value=1.0 if ratio is None else ratio,
        )
        hot = self.hot()
        shares = GaugeMetricFamily(
            "affinity_hot_key_share", "Share of this node's recent keyed requests, for its top keys.", labels=["key"]
        )
        for row in hot["hot_keys"]:
            shares.add_metric([row["key"]], row["share"])
        yield shares
        spilled = CounterMetricFamily(
            "affinity_spilled_requests",
            "Requests bounded loads sent to a successor of their key's owner.",
            labels=["peer"],
        )
        for peer, count in (hot["balance"] or {}).get("spilled_to", {}).items():
            spilled.add_metric([peer], count)
        yield spilled
        agreement = self.edge_agreement()
        yield GaugeMetricFamily(
            "affinity_edge_agreement_ratio",
            f"Share of keyed requests that reached this node without a hop in about the last {LOCALITY_WINDOW:.0f} s "
            "that it owns: how often the front proxy or caller agrees with the ring (1 without any).",
            value=1.0 if agreement is None else agreement,
        )
        histogram = HistogramMetricFamily(
            "affinity_forward_duration_seconds",
            "Time from sending a forward to the peer's response headers.",
            labels=["peer"],
        )
        for peer, h in sorted(self.latency.items()):
            histogram.add_metric([peer], list(zip(_labels(), h.cumulative(), strict=True)), h.sum)
        yield histogram

    def prometheus_text(self) -> bytes:
        from prometheus_client import CollectorRegistry, generate_latest

        registry = CollectorRegistry(auto_describe=False)
        registry.register(self)
        return generate_latest(registry)


def _labels() -> list[str]:
    return [*(str(b) for b in BUCKETS), "+Inf"]

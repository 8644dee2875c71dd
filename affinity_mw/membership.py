"""Who is in the cluster, and which member is this process: static, gossip-free membership.

Membership is deliberately boring: a list of base URLs that every node is given the same way (environment,
code, or later DNS). Nodes never talk to each other about who is a member; when two nodes disagree (during a
rollout) the signed hop marker still guarantees at most one hop, and the ring checksum makes the disagreement
visible. Readers take ``membership.ring`` once per request; a change builds a new ring and swaps that one
reference, so a request finishes on the ring it started with and the hot path takes no lock.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ._addresses import normalize_url
from .config import Settings, member_ids
from .ring import DEFAULT_ALGORITHM, Node, build_ring

__all__ = ["StaticMembership", "membership_from_settings", "normalize_url"]


class StaticMembership:
    """A fixed member list, validated at start-up.

    ``self_url`` names this node. It may be omitted only for a single-member cluster (that member is then this
    node) or for a node that is deliberately not a member: such a node forwards every keyed request and serves
    locally only what carries a valid hop marker. ``algorithm`` is the ring algorithm (``AFFINITY_RING``).
    """

    def __init__(
        self,
        peers: Iterable[str],
        self_url: str | None = None,
        *,
        vnodes: int = 160,
        algorithm: str = DEFAULT_ALGORITHM,
    ) -> None:
        ids, self_id = member_ids(peers, self_url)
        nodes = [Node(id=url, address=url) for url in ids]
        self.self_id = self_id
        self.ring = build_ring(nodes, algorithm, vnodes=vnodes)

    def __repr__(self) -> str:
        return f"StaticMembership(self={self.self_id!r}, ring={self.ring!r})"


def membership_from_settings(settings: Settings) -> Any:
    """The membership source the settings name: DNS (``AFFINITY_DNS``) or the static list (``AFFINITY_PEERS``)."""
    if settings.dns:
        from .dns import DnsMembership

        return DnsMembership.from_settings(settings)
    return StaticMembership(settings.peer_urls(), settings.self_url, vnodes=settings.vnodes, algorithm=settings.ring)

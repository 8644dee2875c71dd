"""What every adapter builds once at start-up: settings, membership, hop signer, router and policies.

The ASGI, WSGI, Flask and Django adapters differ only in how they read a request and move bytes. Everything
else, and every decision that does no I/O, is here or in :mod:`~affinity_mw.router` and
:mod:`~affinity_mw.forward`, so the adapters cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .config import Settings
from .forward import ForwardPlan, Headers
from .hop import HopSigner
from .membership import membership_from_settings
from .router import Decision, Router

__all__ = ["NO_KEY_REJECTED", "OWNER_HEADER", "SERVED_BY_HEADER", "AffinityCore"]

SERVED_BY_HEADER = b"x-affinity-served-by"
OWNER_HEADER = b"x-affinity-owner"
NO_KEY_REJECTED = (400, b"This request carries no affinity key (AFFINITY_NO_KEY=reject).\n")


class AffinityCore:
    """Settings (keyword options over ``AFFINITY_*`` variables), membership, signer and router, built once.

    ``membership`` replaces the static peer list with any object that has ``ring`` and ``self_id`` attributes.
    ``environ`` is for tests and for frameworks that keep their settings elsewhere (Flask's ``app.config``).
    """

    def __init__(self, *, membership: Any = None, environ: Mapping[str, str] | None = None, **options: Any) -> None:
        self.settings = settings = Settings.load(options, environ)
        if membership is None:
            membership = membership_from_settings(settings)
        self.membership = membership
        self.signer = HopSigner(settings.secret, max_age=settings.hop_max_age) if settings.secret else None
        self.router = Router(
            membership=membership,
            extractor=settings.extractor,
            signer=self.signer,
            no_key=settings.no_key,
            max_attempts=settings.max_attempts,
            max_key_length=settings.max_key_length,
        )
        self.debug_headers = settings.debug_headers
        self.fallback_local = settings.fallback == "local"

    @property
    def self_id(self) -> str | None:
        return self.membership.self_id  # type: ignore[no-any-return]

    def transport_options(self) -> dict[str, Any]:
        s = self.settings
        return {
            "pool_size": s.pool_size,
            "keepalive": s.keepalive,
            "connect_timeout": s.connect_timeout,
            "read_timeout": s.read_timeout,
        }

    def plan(
        self, decision: Decision, headers: Sequence[tuple[bytes, bytes]], client: tuple[str, int] | None, scheme: str
    ) -> ForwardPlan:
        if self.signer is None:  # Settings requires a secret whenever there is a peer to forward to
            raise RuntimeError("affinity-mw cannot forward without AFFINITY_SECRET")
        return ForwardPlan(decision, self.signer, self.self_id or "", headers, client, scheme)

    def debug_headers_for(self, decision: Decision) -> Headers:
        """``X-Affinity-Served-By`` and ``X-Affinity-Owner`` for a response this node produced or relayed."""
        served_by = (decision.served_by or self.self_id or "").encode("latin-1")
        owner = decision.owner.id.encode("latin-1") if decision.owner else b""
        return [(SERVED_BY_HEADER, served_by), (OWNER_HEADER, owner)]

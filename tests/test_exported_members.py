"""The public surface: what ``import affinity_mw`` promises. A name added here is a promise kept across releases."""

from __future__ import annotations

import types

import affinity_mw

EXPORTED = [
    "AffinityMiddleware",
    "AffinityWSGIMiddleware",
    "AiohttpTransport",
    "AsyncTransport",
    "ConfigurationError",
    "Decision",
    "HashRing",
    "HopSigner",
    "HttpxSyncTransport",
    "HttpxTransport",
    "Node",
    "RequestView",
    "Router",
    "Settings",
    "StaticMembership",
    "SyncTransport",
    "Urllib3Transport",
    "hash_key",
]


def test_all_is_the_pinned_sorted_list() -> None:
    assert affinity_mw.__all__ == EXPORTED
    assert sorted(affinity_mw.__all__) == affinity_mw.__all__


def test_every_exported_name_resolves_to_a_public_object() -> None:
    for name in affinity_mw.__all__:
        member = getattr(affinity_mw, name)
        assert not isinstance(member, types.ModuleType), name
        assert not getattr(member, "__name__", name).startswith("_"), name


def test_no_other_public_name_besides_modules_and_the_version() -> None:
    extra = {
        name
        for name, value in vars(affinity_mw).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType) and name not in affinity_mw.__all__
    }
    assert extra == set()

"""What every extractor shares: the ``Extractor`` type, a base class with a readable ``repr``, and the checks
that construction arguments and extracted values go through (the rules are in the package docstring)."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import TypeAlias

from ..request import RequestView

Extractor: TypeAlias = Callable[[RequestView], str | None]
"""A callable that maps a request to its affinity key, or ``None`` when the request has none."""

_log = logging.getLogger("affinity_mw.keys")

# RFC 9110 section 5.6.2: a header name is a "token".
_TOKEN_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


class _Extractor:
    """Shared base of the built-in extractors: a callable object with a readable ``repr``.

    Objects with ``__slots__`` and ``__call__`` cost no more per call than a closure, and unlike a closure
    they can say what they are when configuration docs, logs or the introspection endpoint print them.
    """

    __slots__ = ("_desc",)

    _desc: str

    def __call__(self, req: RequestView) -> str | None:  # pragma: no cover - every subclass overrides it
        raise NotImplementedError

    def __repr__(self) -> str:
        return self._desc


# ------------------------------------------------------------------------------------------------------------
# Validation helpers
# ------------------------------------------------------------------------------------------------------------


def _header_name(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise TypeError(f"The {what} must be a string such as 'X-Tenant', not {type(value).__name__}.")
    if not _TOKEN_RE.fullmatch(value):
        raise ValueError(
            f"The {what} {value!r} is not a valid HTTP header name: use letters, digits and !#$%&'*+-.^_`|~ "
            "only, with no spaces or colons."
        )
    return value.lower().encode("ascii")


def _cookie_name(value: object, what: str = "cookie name") -> str:
    if not isinstance(value, str):
        raise TypeError(f"The {what} must be a string such as 'sid', not {type(value).__name__}.")
    if not _TOKEN_RE.fullmatch(value):
        raise ValueError(
            f"The {what} {value!r} is not a valid cookie name: it must be non-empty and may not contain "
            "spaces, '=', ';', ',' or quotes."
        )
    return value


def _nonempty_str(value: object, what: str, example: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"The {what} must be a string such as {example!r}, not {type(value).__name__}.")
    if not value.strip():
        raise ValueError(f"The {what} must not be empty; give one such as {example!r}.")
    return value


def _scalar_key(value: object) -> str | None:
    """A claim or session field becomes a key only when it is a string or an integer.

    ``bool`` is excluded although it is an ``int``: ``True`` as a tenant id is a bug upstream, and routing
    every such request to the owner of ``"True"`` would hide it. Lists, objects and floats have no single
    canonical text form, so they give no key rather than one that differs between producers.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        return value or None
    if isinstance(value, int):
        return str(value)
    return None

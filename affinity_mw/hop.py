"""The hop marker: a signed header that says "a cluster member already routed this request".

A node that forwards a request adds ``X-Affinity-Hop``. The receiver serves any request with a valid marker where
it lands, even if its own ring disagrees, so a request crosses at most one hop and two nodes with different
member lists can never bounce it between them. The marker is signed with the cluster secret (itsdangerous,
HMAC, timestamped), so a client cannot forge one to pin itself to a node, and a captured marker expires after
``max_age`` seconds.

A marker is bound to one request: its method and target (as a digest), the hash of its key and the node it was
sent to. The receiver honours it only when all four match what it sees (:meth:`HopMarker.mismatch` and the
router's key check); otherwise the marker is not used at all: the request is routed as if it had none. A
marker that leaks (a header log, an error tracker, plaintext peer traffic) can therefore be replayed only as the
same request to the same node within ``max_age``: what the forward itself did.

The marker also carries what the receiving node needs to show its app the request as the first node saw it:
the client's address and scheme, and which ``X-Forwarded-*`` headers the forwarder added.

Markers of the previous format (``affinity-mw.hop.v2``, unbound) still verify, flagged ``legacy``, so nodes of
two versions can forward to each other during a rolling upgrade; see ``docs/concepts.md``.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import time
from collections.abc import Sequence
from hashlib import blake2b
from typing import Any

from itsdangerous import Signer

__all__ = ["HOP_HEADER", "INTERNAL_PREFIX", "INTERNAL_SPELLINGS", "HopMarker", "HopSigner"]

HOP_HEADER = b"x-affinity-hop"
INTERNAL_PREFIX = b"x-affinity-"
# Every spelling of the prefix a lower-cased header name can have: "x_affinity_..." is how a client might try to
# slip one past a server that folds "_" into "-" (WSGI does). ``name[:11] in INTERNAL_SPELLINGS`` is the check.
INTERNAL_SPELLINGS = frozenset(
    INTERNAL_PREFIX[:1] + a + INTERNAL_PREFIX[2:10] + b for a in (b"-", b"_") for b in (b"-", b"_")
)
_SEP = "|"


class HopMarker:
    """What an authentic, fresh marker says. ``added`` lists the X-Forwarded-* headers the forwarder added ("f",
    "p", "h"). ``receiver`` is the node it was sent to and ``binding`` the digest of the request's method and
    target; ``rerouted`` says the sender itself received the request with a marker it could not honour.
    ``legacy`` markers (the previous, unbound format) have neither receiver nor binding."""

    __slots__ = (
        "added",
        "attempt",
        "binding",
        "client_host",
        "client_port",
        "key_hash",
        "legacy",
        "receiver",
        "rerouted",
        "ring_checksum",
        "scheme",
        "sender",
    )

    def __init__(
        self,
        sender: str,
        key_hash: int,
        ring_checksum: str,
        attempt: int,
        client_host: str | None,
        client_port: int,
        scheme: str,
        added: str,
        receiver: str = "",
        binding: str = "",
        rerouted: bool = False,
        legacy: bool = False,
    ) -> None:
        self.sender = sender
        self.key_hash = key_hash
        self.ring_checksum = ring_checksum
        self.attempt = attempt
        self.client_host = client_host
        self.client_port = client_port
        self.scheme = scheme
        self.added = added
        self.receiver = receiver
        self.binding = binding
        self.rerouted = rerouted
        self.legacy = legacy

    def mismatch(self, method: str, target: str, receiver: str | None) -> str | None:
        """Why this marker is not for this request: ``"node"`` (sent to another node), ``"request"`` (another
        method or target), or ``None`` when it is. The key hash is checked by the router, which knows the key.
        A legacy marker carries no binding and always matches here."""
        if self.legacy:
            return None
        if self.receiver != (receiver or ""):
            return "node"
        if not hmac.compare_digest(self.binding, request_binding(method, target)):
            return "request"
        return None

    def __repr__(self) -> str:
        return (
            f"HopMarker(sender={self.sender!r}, receiver={self.receiver!r}, key_hash={self.key_hash:016x}, "
            f"attempt={self.attempt}{', legacy' if self.legacy else ''})"
        )


def request_binding(method: str, target: str) -> str:
    """The digest of a request's method and origin-form target that a marker is bound to (64 bits, hex).

    Signed inside the marker, it needs no key: changing the request means finding another method and target with
    the same 64-bit BLAKE2b digest. Both nodes must pass the target exactly as it travels between them.
    """
    # The method's length first: "GET" + "/a b" and "GET /a" + "b" must not read the same.
    return blake2b(f"{len(method)}:{method} {target}".encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


class HopSigner:
    """Signs and verifies hop markers with the cluster secret.

    ``secret_keys`` is a list for rotation, oldest to newest: the last one signs, every one verifies (see the
    three-step rotation in ``docs/configuration.md``). The salt is fixed and specific to this purpose, so a marker
    can never be replayed as any other itsdangerous token signed with the same secret.

    Tokens are itsdangerous ``Signer`` tokens (``payload.signature``, HMAC-SHA256 under the key itsdangerous
    derives from each secret, URL-safe base64 without padding), byte for byte. itsdangerous derives the keys;
    the per-message work is done here, from keyed HMAC states prepared once: every forward signs a marker and
    every hop verifies one, and itsdangerous's per-call layers cost more than the HMAC itself.

    The marker carries its own millisecond timestamp rather than itsdangerous's whole-second one, which rejects
    any negative age: a receiver whose clock is a few milliseconds behind the sender's would otherwise reject
    every marker signed just after a second boundary. A marker up to ``max_skew`` seconds in the future passes.
    Fields are percent-escaped, so no value a client can influence (its address as a proxy reported it) can
    break the format.
    """

    def __init__(self, secret_keys: str | Sequence[str], *, max_age: int = 30, max_skew: float = 5.0) -> None:
        keys = [secret_keys] if isinstance(secret_keys, str) else list(secret_keys)
        if not keys or not all(keys):
            raise ValueError("The hop marker needs at least one non-empty secret key (AFFINITY_SECRET).")
        if max_age < 1:
            raise ValueError(f"The hop marker max_age must be at least 1 second, got {max_age!r}.")
        self.max_age = max_age
        self.max_skew = max_skew
        signer = Signer(keys, salt=_SALT, digest_method=hashlib.sha256)
        derived = [signer.derive_key(key) for key in signer.secret_keys]
        self._signing = _keyed(derived[-1])
        self._verifying = [_keyed(key) for key in reversed(derived)]  # newest first
        legacy = Signer(keys, salt=_LEGACY_SALT, digest_method=hashlib.sha256)
        self._verifying_legacy = [_keyed(legacy.derive_key(key)) for key in reversed(legacy.secret_keys)]

    def sign(
        self,
        *,
        sender: str,
        key_hash: int,
        ring_checksum: str,
        receiver: str = "",
        method: str = "",
        target: str = "",
        attempt: int = 1,
        client: tuple[str, int] | None = None,
        scheme: str = "http",
        added: str = "",
        rerouted: bool = False,
    ) -> bytes:
        """A marker for one forward: *method* and *target* (origin-form, as sent) of the request, to the node
        whose member id is *receiver*."""
        host, port = client if client is not None else ("", 0)
        host = host or ""
        # One scan for what would need escaping; almost no marker has any, and then no field is touched twice.
        fields = sender + receiver + ring_checksum + host + scheme + added
        if "%" in fields or "|" in fields:
            sender, receiver, ring_checksum, host, scheme, added = map(
                _escape, (sender, receiver, ring_checksum, host, scheme, added)
            )
        stamp = int(time.time() * 1000)
        binding = request_binding(method, target)
        value = (
            f"{stamp:x}|{sender}|{receiver}|{binding}|{key_hash:016x}|{ring_checksum}|{attempt}|{int(rerouted)}|"
            f"{host}|{port}|{scheme}|{added}"
        ).encode()
        mac = self._signing.copy()
        mac.update(value)
        return value + b"." + _b64(mac.digest())

    def verify(self, token: bytes | str) -> HopMarker | None:
        """The marker's content if it is authentic and fresh, else ``None`` (never raises on client input).

        Authentic is not enough to honour it: see :meth:`HopMarker.mismatch`.
        """
        try:
            if isinstance(token, str):
                token = token.encode("utf-8")
            value, sep, sig = token.rpartition(b".")
            if not sep:
                return None
            # The field count tells the format apart, so each token costs one HMAC per key, not one per format.
            fields = value.count(b"|")
            if fields == _FIELDS - 1:
                bases = self._verifying
            elif fields == _LEGACY_FIELDS - 1:
                bases = self._verifying_legacy
            else:
                return None
            for base in bases:
                mac = base.copy()
                mac.update(value)
                if hmac.compare_digest(_b64(mac.digest()), sig):
                    break
            else:
                return None
            payload = value.decode("utf-8")
            if fields == _LEGACY_FIELDS - 1:
                return self._legacy(payload)
            stamp, sender, receiver, binding, key_hash, checksum, attempt, rerouted, host, port, scheme, added = (
                payload.split(_SEP)
            )
            if not self._fresh(stamp):
                return None
            if "%" in payload:
                sender, receiver, checksum, host, scheme, added = map(
                    _unescape, (sender, receiver, checksum, host, scheme, added)
                )
            return HopMarker(
                sender,
                int(key_hash, 16),
                checksum,
                int(attempt),
                host or None,
                int(port),
                scheme,
                added,
                receiver,
                binding,
                rerouted == "1",
            )
        except (ValueError, UnicodeError):
            return None

    def _fresh(self, stamp: str) -> bool:
        age = time.time() - int(stamp, 16) / 1000
        return -self.max_skew <= age <= self.max_age

    def _legacy(self, payload: str) -> HopMarker | None:
        stamp, sender, key_hash, checksum, attempt, host, port, scheme, added = payload.split(_SEP)
        if not self._fresh(stamp):
            return None
        if "%" in payload:
            sender, checksum, host, scheme, added = map(_unescape, (sender, checksum, host, scheme, added))
        return HopMarker(
            sender, int(key_hash, 16), checksum, int(attempt), host or None, int(port), scheme, added, legacy=True
        )


_SALT = "affinity-mw.hop.v3"
_FIELDS = 12
# The unbound format of earlier versions, verified (never signed) so a rolling upgrade keeps its one-hop bound.
_LEGACY_SALT = "affinity-mw.hop.v2"
_LEGACY_FIELDS = 9
_URLSAFE = bytes.maketrans(b"+/", b"-_")


def _keyed(key: bytes) -> Any:
    """An HMAC-SHA256 state keyed once, to be copied per message. CPython's ``hmac.HMAC`` wraps a C object
    (``_hmac``) in Python-level ``copy``/``update``/``digest`` methods that cost more than the hashing of a
    marker; the C object has the same three methods, so it is used directly when present."""
    state = hmac.new(key, digestmod="sha256")
    inner = getattr(state, "_hmac", None)
    return inner if inner is not None and hasattr(inner, "copy") else state


def _b64(digest: bytes) -> bytes:
    """itsdangerous's ``base64_encode``: URL-safe base64 without padding."""
    return binascii.b2a_base64(digest, newline=False).translate(_URLSAFE).rstrip(b"=")


def _escape(value: str) -> str:
    # Only the separator and the escape character need escaping; most values have neither.
    if "%" in value or "|" in value:
        return value.replace("%", "%25").replace("|", "%7C")
    return value


def _unescape(value: str) -> str:
    return value.replace("%7C", "|").replace("%25", "%")

"""Signatures of webhook deliveries, so a receiver can tell our requests from forgeries.

The header is ``t=<unix seconds>,v1=<hex HMAC-SHA256>``, the HMAC keyed with the webhook's
secret over ``"<t>."`` followed by the raw body. The timestamp is signed too, so an old,
captured request cannot be replayed later (``verify`` refuses timestamps out of tolerance).
"""

from __future__ import annotations

import hashlib
import hmac

SCHEME = "v1"


def signature_header(secret: str, body: bytes, now: int) -> str:
    """The ``X-Signature`` value for ``body`` sent at ``now`` (unix seconds)."""
    return f"t={now},{SCHEME}={_digest(secret, now, body)}"


def verify(secret: str, body: bytes, header: str, *, now: int, tolerance: int = 300) -> bool:
    """Whether ``header`` signs ``body`` with ``secret`` within ``tolerance`` seconds of ``now``.

    Several ``v1=`` values are accepted (one per secret while a secret is being rotated);
    any malformed header is simply not valid.
    """
    timestamp, signatures = _parse(header)
    if timestamp is None or not signatures or abs(now - timestamp) > tolerance:
        return False
    expected = _digest(secret, timestamp, body).encode()
    # Bytes, since compare_digest refuses non-ASCII str (a forged header may hold any).
    matches = [hmac.compare_digest(expected, candidate.encode()) for candidate in signatures]
    return any(matches)


def _digest(secret: str, timestamp: int, body: bytes) -> str:
    signed = f"{timestamp}.".encode() + body
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def _parse(header: str) -> tuple[int | None, list[str]]:
    """The timestamp (None unless exactly one, valid) and the ``v1`` signatures of a header."""
    timestamps: list[str] = []
    signatures: list[str] = []
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        if key == "t":
            timestamps.append(value)
        elif key == SCHEME and value:
            signatures.append(value)
    # One timestamp, digits only: an ambiguous header is refused, not guessed at.
    if len(timestamps) != 1 or not (timestamps[0].isascii() and timestamps[0].isdigit()):
        return None, signatures
    return int(timestamps[0]), signatures

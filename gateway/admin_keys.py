"""Admin keys: known only by their SHA-256 digests, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Collection


def key_digest(key: str) -> str:
    """The hex SHA-256 digest that the config stores instead of the key."""
    return hashlib.sha256(key.encode()).hexdigest()


class AdminKeys:
    """Which bearer keys may use the admin API (and force a rollout arm)."""

    def __init__(self, digests: Collection[str]) -> None:
        self._digests = [bytes.fromhex(digest) for digest in digests]

    def actor(self, authorization: str) -> str | None:
        """`admin:<first 8 hex of the key's digest>` for an admin key, else None."""
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return None
        given = hashlib.sha256(key.strip().encode()).digest()
        matched = False
        for digest in self._digests:  # every digest, no early exit: time does not tell which
            matched |= hmac.compare_digest(given, digest)
        return f"admin:{given.hex()[:8]}" if matched else None

"""Secrets (client secrets, API keys) are shown once and kept only as argon2id hashes.

Hashing and verifying are deliberately slow (tens of milliseconds, memory-hard), so they
run in a thread, never on the event loop. ``Verified`` remembers, per key id, the SHA-256 of
a secret that passed (for a few minutes): a client sending the same key on every request
pays argon2 once, while revocation and expiry are still read from the index each time.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

_HASHER = PasswordHasher()
#: How long a verified secret is remembered.
REMEMBER_SECONDS = 300.0
_REMEMBERED_MAX = 10_000


def new_secret() -> str:
    """32 random bytes, base64url: what a client is shown once."""
    return secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    return _HASHER.hash(secret)


async def hash_secret_async(secret: str) -> str:
    return await asyncio.to_thread(_HASHER.hash, secret)


def _verify(stored: str, secret: str) -> bool:
    try:
        return _HASHER.verify(stored, secret)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


class Verified:
    """Checks secrets against their stored hashes, remembering recent successes."""

    def __init__(self, remember: float = REMEMBER_SECONDS, concurrency: int | None = 2) -> None:
        self._remember = remember
        # At most this many argon2 verifications at once (each holds 64 MiB and a core for
        # tens to hundreds of ms): a flood of wrong secrets queues here instead of
        # exhausting the host.
        self._slots = asyncio.Semaphore(concurrency) if concurrency else None
        # (id, stored hash) -> (sha256 of the secret, until)
        self._ok: dict[tuple[str, str], tuple[bytes, float]] = {}

    async def check(self, ident: str, stored: str, secret: str) -> bool:
        digest = hashlib.sha256(secret.encode("utf-8", "surrogateescape")).digest()
        key = (ident, stored)
        now = time.monotonic()
        if self._remembered(key, digest, now):
            return True
        if self._slots is None:
            ok = await asyncio.to_thread(_verify, stored, secret)
        else:
            async with self._slots:
                # Asked again once a slot is free: a burst of requests with one new secret
                # (a service's replicas after a restart) pays argon2 once, not once each.
                if self._remembered(key, digest, time.monotonic()):
                    return True
                ok = await asyncio.to_thread(_verify, stored, secret)
        if not ok:
            return False
        if len(self._ok) >= _REMEMBERED_MAX:
            self._ok.clear()  # bounded: the next requests pay argon2 once more
        self._ok[key] = (digest, now + self._remember)
        return True

    def _remembered(self, key: tuple[str, str], digest: bytes, now: float) -> bool:
        hit = self._ok.get(key)
        return hit is not None and hit[1] > now and hmac.compare_digest(hit[0], digest)

    def forget(self, ident: str) -> None:
        for key in [k for k in self._ok if k[0] == ident]:
            del self._ok[key]

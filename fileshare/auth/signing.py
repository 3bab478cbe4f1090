"""fileshare's own signing keys, as the token endpoint and the JWT validator use them.

``Signer`` holds the key the token endpoint signs with, read from the index at most once a
minute (and when it stops signing), so issuing a token costs no index read. ``PublishedKeys``
is the ``KeySource`` of fileshare's own issuer (``auth.trust``) and the content of
``/.well-known/jwks.json``: the published keys, cached, refreshed on an unknown ``kid`` at
most every few seconds, served from the cache while the index is down.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import structlog
from cryptography.hazmat.primitives.asymmetric import ec

from fileshare.auth.trust import KeysUnavailable
from fileshare.index.base import IndexError_
from fileshare.index.signing import SigningKey, SigningKeyStore

log = structlog.get_logger(__name__)
Clock = Callable[[], datetime]
#: How long after a key stops signing it stays published, beyond the tokens' lifetime:
#: the validator's clock leeway and a margin for replicas' clocks.
OVERLAP_MARGIN = timedelta(minutes=5)


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class ActiveKey:
    kid: str
    alg: str
    private: ec.EllipticCurvePrivateKey = field(repr=False)
    sign_until: datetime


class Signer:
    """The signing key, cached: re-read every ``refresh`` seconds (which also lets the
    store create the next key ahead of time) and as soon as the cached one stops signing.
    Used assertion ids are pruned on the same occasions, at most every ``prune_every``."""

    def __init__(
        self,
        store: SigningKeyStore,
        *,
        refresh: float = 60.0,
        prune_every: float = 600.0,
        clock: Clock = utcnow,
    ) -> None:
        self._store = store
        self._refresh = refresh
        self._prune_every = prune_every
        self._clock = clock
        self._active: ActiveKey | None = None
        self._fetched = 0.0
        self._pruned = float("-inf")
        self._lock = asyncio.Lock()

    async def key(self) -> ActiveKey:
        now = self._clock()
        active = self._active
        if active is not None and self._fresh(active, now):
            return active
        async with self._lock:  # one index read for a burst of requests
            active = self._active
            if active is not None and self._fresh(active, now):
                return active
            found: SigningKey = await self._store.signer(now)
            active = ActiveKey(found.kid, found.alg, found.private_key(), found.sign_until)
            self._active, self._fetched = active, time.monotonic()
            if time.monotonic() - self._pruned >= self._prune_every:
                self._pruned = time.monotonic()
                try:
                    keys, assertions = await self._store.prune(now)
                    if keys or assertions:
                        log.info("signing.pruned", keys=keys, assertions=assertions)
                except IndexError_ as exc:  # housekeeping: the next round does it
                    log.warning("signing.prune_failed", error=str(exc))
            return active

    def _fresh(self, active: ActiveKey, now: datetime) -> bool:
        return now < active.sign_until and time.monotonic() - self._fetched < self._refresh


class PublishedKeys:
    """The published keys of fileshare's own issuer (a ``KeySource``).

    ``max_age``: how long the cached set is served before it is read again; ``min_refresh``:
    the least time between two reads prompted by an unknown ``kid`` (so a stream of tokens
    with made-up kids costs one index read every few seconds, not one each)."""

    def __init__(
        self,
        store: SigningKeyStore,
        *,
        max_age: float = 60.0,
        min_refresh: float = 5.0,
        clock: Clock = utcnow,
    ) -> None:
        self._store = store
        self._max_age = max_age
        self._min_refresh = min_refresh
        self._clock = clock
        self._keys: list[SigningKey] | None = None
        self._parsed: dict[str, jwt.PyJWK] = {}
        self._read = float("-inf")
        self._lock = asyncio.Lock()

    async def _reload(self, *, unless_since: float) -> None:
        """Read the keys again, unless another task did since ``unless_since``. A failure
        leaves the cache as it was: it is kept serving, and only when it was never filled
        is the failure raised (``KeysUnavailable``: a token is refused, fail closed)."""
        async with self._lock:
            if self._read <= unless_since:
                self._read = time.monotonic()
                try:
                    keys = await self._store.published(self._clock())
                except IndexError_ as exc:
                    log.warning("signing.keys_unavailable", error=str(exc))
                else:
                    self._keys = keys
                    self._parsed = {k.kid: jwt.PyJWK(k.public_jwk, k.alg) for k in keys}
            if self._keys is None:
                raise KeysUnavailable("fileshare's signing keys could not be read")

    def _valid(self, now: datetime) -> list[SigningKey]:
        return [k for k in self._keys or () if now < k.verify_until]

    async def current(self) -> list[SigningKey]:
        """The published keys, at most ``max_age`` seconds old (older while the index is
        down). Never read yet: read now, at most every ``min_refresh`` while that fails."""
        age = time.monotonic() - self._read
        if self._keys is None:
            await self._reload(unless_since=time.monotonic() - self._min_refresh)
        elif age >= self._max_age:
            await self._reload(unless_since=time.monotonic() - self._max_age)
        return self._valid(self._clock())

    async def key(self, kid: str | None) -> jwt.PyJWK | None:
        found = self._pick(await self.current(), kid)
        if found is None and time.monotonic() - self._read >= self._min_refresh:
            await self._reload(unless_since=time.monotonic() - self._min_refresh)
            found = self._pick(self._valid(self._clock()), kid)
        return found

    def _pick(self, keys: list[SigningKey], kid: str | None) -> jwt.PyJWK | None:
        if kid is None:
            return self._parsed.get(keys[0].kid) if len(keys) == 1 else None
        return self._parsed.get(kid) if any(k.kid == kid for k in keys) else None

    async def jwks(self) -> dict[str, Any]:
        """The JWK Set document: public members only."""
        return {"keys": [dict(k.public_jwk) for k in await self.current()]}

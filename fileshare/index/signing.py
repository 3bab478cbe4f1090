"""The token endpoint's signing keys and used client-assertion ids, in the index.

Keys live in the index so that every replica signs with, and publishes, the same keys.
Each key signs from its ``created`` until ``sign_until`` and is published (accepted) until
``verify_until``: a token signed in the key's last second is still valid for its lifetime
after the key stopped signing.

Rotation publishes ahead: when the signing key enters the last ``ahead`` of its period, the
next key is created (signing only from the current one's ``sign_until`` on), so verifiers
that cache the JWKS have it long before the first token it signs. The signing key is the
one that stops signing first among those still signing — every replica picks the same.

Two replicas that find no key at once both create one (random key material, distinct
``kid``s, no conflict): both are published and usable, and both converge on the same signer.

The private keys are stored as unencrypted PKCS#8 PEM: whoever reads the index can sign
tokens (a follow-up could wrap them with a KMS key). They never appear in a ``repr`` or a
log line.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import Connection, RowMapping, delete, select
from sqlalchemy.dialects import postgresql, sqlite

from fileshare.index.base import Transactor
from fileshare.index.tables import signing_keys, used_assertions

ALGORITHM = "ES256"
#: How long a key that verifies no more stays in the index (for the record) before pruning.
RETAIN = timedelta(days=7)


@dataclass(frozen=True)
class SigningKey:
    kid: str
    alg: str
    #: PKCS#8 PEM. Never in a repr or log.
    private_pem: str = field(repr=False)
    #: The public JWK as published (``kid``, ``alg`` and ``use`` included).
    public_jwk: dict[str, Any]
    created: datetime
    sign_until: datetime
    verify_until: datetime

    def signs_at(self, now: datetime) -> bool:
        return self.created <= now < self.sign_until

    def private_key(self) -> ec.EllipticCurvePrivateKey:
        key = serialization.load_pem_private_key(self.private_pem.encode(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return key


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 JWK thumbprint (SHA-256) of an EC public key: the key's own name."""
    members = {k: jwk[k] for k in ("crv", "kty", "x", "y")}
    canonical = json.dumps(members, sort_keys=True, separators=(",", ":"))
    return _b64(hashlib.sha256(canonical.encode()).digest())


def new_key(created: datetime, sign_until: datetime, verify_until: datetime) -> SigningKey:
    """A fresh P-256 key pair, named by its thumbprint."""
    private = ec.generate_private_key(ec.SECP256R1())
    numbers = private.public_key().public_numbers()
    jwk: dict[str, Any] = {
        "kty": "EC",
        "crv": "P-256",
        "x": _b64(numbers.x.to_bytes(32, "big")),
        "y": _b64(numbers.y.to_bytes(32, "big")),
    }
    kid = thumbprint(jwk)
    jwk |= {"kid": kid, "alg": ALGORITHM, "use": "sig"}
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return SigningKey(kid, ALGORITHM, pem, jwk, created, sign_until, verify_until)


def _key(m: RowMapping) -> SigningKey:
    return SigningKey(
        kid=m["kid"],
        alg=m["alg"],
        private_pem=m["private_pem"],
        public_jwk=dict(m["public_jwk"]),
        created=m["created"],
        sign_until=m["sign_until"],
        verify_until=m["verify_until"],
    )


def _signing(conn: Connection, now: datetime) -> list[SigningKey]:
    """Keys that sign now or later, the one that stops first first."""
    stmt = (
        select(signing_keys)
        .where(signing_keys.c.sign_until > now)
        .order_by(signing_keys.c.sign_until, signing_keys.c.kid)
    )
    return [_key(m) for m in conn.execute(stmt).mappings()]


def _insert(conn: Connection, key: SigningKey) -> None:
    conn.execute(
        signing_keys.insert().values(
            kid=key.kid,
            alg=key.alg,
            private_pem=key.private_pem,
            public_jwk=key.public_jwk,
            created=key.created,
            sign_until=key.sign_until,
            verify_until=key.verify_until,
        )
    )


class SigningKeyStore:
    """Signing keys and used assertion ids over the index's ``Transactor``.

    ``rotation``: how long a key signs. ``overlap``: how long it stays published after it
    stopped signing (the token lifetime and a margin for clock skew). ``ahead``: how long
    before the signing key's end its successor is created and published."""

    def __init__(
        self,
        db: Transactor,
        *,
        rotation: timedelta,
        overlap: timedelta,
        ahead: timedelta | None = None,
    ) -> None:
        if rotation <= timedelta(0) or overlap < timedelta(0):
            raise ValueError("rotation must be positive and overlap not negative")
        self._db = db
        self.rotation = rotation
        self.overlap = overlap
        self.ahead = min(ahead if ahead is not None else rotation / 4, rotation / 2)
        self._insert = postgresql.insert if db.dialect == "postgresql" else sqlite.insert

    def __repr__(self) -> str:
        return f"SigningKeyStore(rotation={self.rotation}, overlap={self.overlap})"

    def _satisfied(self, keys: list[SigningKey], now: datetime) -> bool:
        """A key signs now, and keys go on signing beyond the ``ahead`` window (its
        successor exists once its end is near)."""
        if not keys or not keys[0].signs_at(now):
            return False
        return keys[-1].sign_until - now > self.ahead

    async def signer(self, now: datetime) -> SigningKey:
        """The key to sign with at ``now``, creating it (and its successor, when the
        current one's end is near) when there is none."""
        keys = await self._db.transact("read signing keys", lambda c: _signing(c, now), write=False)
        if self._satisfied(keys, now):
            return keys[0]
        # Made outside the transaction (a retried transaction reuses them): key generation
        # is cheap, but needs no connection held.
        first = new_key(now, now + self.rotation, now + self.rotation + self.overlap)

        def run(conn: Connection) -> SigningKey:
            found = _signing(conn, now)
            if not found or not found[0].signs_at(now):
                # None signs now (a fresh index, or every key expired unused): one that
                # signs at once. A successor made ahead but not yet signing stays.
                _insert(conn, first)
                found = _signing(conn, now)
            elif found[-1].sign_until - now <= self.ahead:
                start = found[-1].sign_until
                end = start + self.rotation
                succ = new_key(now, end, end + self.overlap)
                # It signs from ``start``: published now, used once the current one ends.
                _insert(conn, _starting(succ, start))
                found = _signing(conn, now)
            self._prune_keys(conn, now)
            return next(k for k in found if k.signs_at(now))

        return await self._db.transact("create signing key", run, write=True)

    async def published(self, now: datetime) -> list[SigningKey]:
        """Every key a token may be verified with at ``now`` (signing or not yet), newest
        first."""

        def run(conn: Connection) -> list[SigningKey]:
            stmt = (
                select(signing_keys)
                .where(signing_keys.c.verify_until > now)
                .order_by(signing_keys.c.created.desc(), signing_keys.c.kid)
            )
            return [_key(m) for m in conn.execute(stmt).mappings()]

        return await self._db.transact("read published keys", run, write=False)

    def _prune_keys(self, conn: Connection, now: datetime) -> int:
        done = conn.execute(
            delete(signing_keys).where(signing_keys.c.verify_until < now - RETAIN)
        ).rowcount
        return int(done)

    async def prune(self, now: datetime) -> tuple[int, int]:
        """Forget keys that stopped verifying long ago and assertion ids past their expiry:
        (keys, assertions) removed."""

        def run(conn: Connection) -> tuple[int, int]:
            keys = self._prune_keys(conn, now)
            gone = conn.execute(
                delete(used_assertions).where(used_assertions.c.expires < now)
            ).rowcount
            return keys, int(gone)

        return await self._db.transact("prune signing keys", run, write=True)

    async def use_assertion(
        self, client_id: str, jti: str, expires: datetime, now: datetime
    ) -> bool:
        """Record that ``client_id`` used the assertion ``jti`` (valid until ``expires``):
        False when it was used before and has not expired (a replay). One statement, so two
        requests with the same assertion at once cannot both pass: the second conflicts.
        An id whose assertion expired may be used again (its row is just replaced)."""
        stmt = self._insert(used_assertions).values(client_id=client_id, jti=jti, expires=expires)
        stmt = stmt.on_conflict_do_update(
            index_elements=[used_assertions.c.client_id, used_assertions.c.jti],
            set_={"expires": stmt.excluded.expires},
            where=used_assertions.c.expires < now,
        )

        def run(conn: Connection) -> bool:
            return bool(conn.execute(stmt).rowcount == 1)

        return await self._db.transact("use assertion", run, write=True)


def _starting(key: SigningKey, start: datetime) -> SigningKey:
    """``key`` as it is stored to sign from ``start``: ``created`` is when it signs first."""
    return SigningKey(
        key.kid, key.alg, key.private_pem, key.public_jwk, start, key.sign_until, key.verify_until
    )

"""The token endpoint's signing-key store and replay store, on each index (an SQLite file,
a PostgreSQL database), opened and migrated through ``open_index`` as the app does."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from sqlalchemy import Connection, select

from fileshare.auth.signing import PublishedKeys, Signer
from fileshare.auth.trust import KeysUnavailable
from fileshare.config import Settings
from fileshare.index.base import IndexUnavailable
from fileshare.index.factory import open_index
from fileshare.index.signing import RETAIN, SigningKey, SigningKeyStore, new_key, thumbprint
from fileshare.index.sql import SqlIndex
from fileshare.index.tables import signing_keys, used_assertions
from tests.contract.test_index import API_KEYS, fresh_database

T0 = datetime(2024, 3, 1, 12, 0, 0, tzinfo=UTC)
ROTATION = timedelta(hours=4)
OVERLAP = timedelta(minutes=15)
# The successor is published a quarter of the rotation ahead: the last hour.
AHEAD = ROTATION / 4
HOUR = timedelta(hours=1)


@pytest.fixture(params=["sqlite", "postgres"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    if request.param == "sqlite":
        return Settings(api_keys=API_KEYS, data_dir=tmp_path, index_path=tmp_path / "i.sqlite3")
    return Settings(
        api_keys=API_KEYS,
        data_dir=tmp_path,
        index_url=fresh_database(request.getfixturevalue("postgres")),
    )


@pytest.fixture
async def index(settings: Settings) -> AsyncIterator[SqlIndex]:
    async with open_index(settings) as opened:
        yield opened


@pytest.fixture
def store(index: SqlIndex) -> SigningKeyStore:
    return SigningKeyStore(index, rotation=ROTATION, overlap=OVERLAP)


async def rows(index: SqlIndex) -> list[str]:
    def run(conn: Connection) -> list[str]:
        return [r.kid for r in conn.execute(select(signing_keys.c.kid).order_by("created"))]

    return await index.run(run)


async def test_a_fresh_index_gets_one_key_which_signs_and_is_published(
    store: SigningKeyStore, index: SqlIndex
) -> None:
    key = await store.signer(T0)
    assert key.signs_at(T0)
    assert key.created == T0
    assert key.sign_until == T0 + ROTATION
    assert key.verify_until == T0 + ROTATION + OVERLAP
    assert key.kid == thumbprint(key.public_jwk), "named by its RFC 7638 thumbprint"
    again = await store.signer(T0 + timedelta(minutes=5))
    assert again.kid == key.kid
    assert await rows(index) == [key.kid], "no second key while the first one signs"
    assert [k.kid for k in await store.published(T0)] == [key.kid]
    # The stored private key signs what the published public key verifies.
    token = jwt.encode({"sub": "x"}, key.private_key(), algorithm="ES256")
    public = jwt.PyJWK(key.public_jwk)
    assert jwt.decode(token, public, algorithms=["ES256"]) == {"sub": "x"}
    assert set(key.public_jwk) == {"kty", "crv", "x", "y", "kid", "alg", "use"}


async def test_private_keys_stay_out_of_reprs(store: SigningKeyStore) -> None:
    key = await store.signer(T0)
    assert "PRIVATE" not in repr(key)
    assert key.private_pem.startswith("-----BEGIN PRIVATE KEY-----")
    assert "PRIVATE" not in repr(store)


async def test_the_successor_is_published_ahead_and_the_old_key_outlives_its_rotation(
    store: SigningKeyStore,
) -> None:
    first = await store.signer(T0)
    # Before the last quarter: nothing new.
    before = T0 + ROTATION - AHEAD - timedelta(seconds=1)
    assert (await store.signer(before)).kid == first.kid
    assert [k.kid for k in await store.published(before)] == [first.kid]
    # In the last quarter: the first still signs, its successor is published already.
    near = T0 + ROTATION - AHEAD + timedelta(seconds=1)
    assert (await store.signer(near)).kid == first.kid
    published = await store.published(near)
    assert len(published) == 2
    successor = next(k for k in published if k.kid != first.kid)
    assert successor.created == first.sign_until, "it signs once the first one stops"
    assert successor.sign_until == first.sign_until + ROTATION
    # After the rotation: the successor signs, the first is still published (its tokens
    # stay valid) until its overlap ends, and no third key appeared.
    after = first.sign_until + timedelta(seconds=1)
    assert (await store.signer(after)).kid == successor.kid
    assert {k.kid for k in await store.published(after)} == {first.kid, successor.kid}
    gone = first.verify_until + timedelta(seconds=1)
    assert [k.kid for k in await store.published(gone)] == [successor.kid]


async def test_an_index_whose_keys_all_expired_gets_a_new_one(
    store: SigningKeyStore, index: SqlIndex
) -> None:
    first = await store.signer(T0)
    later = T0 + 3 * ROTATION
    fresh = await store.signer(later)
    assert fresh.kid != first.kid
    assert fresh.signs_at(later)
    assert [k.kid for k in await store.published(later)] == [fresh.kid]


async def test_two_replicas_creating_the_first_key_at_once_both_get_a_usable_one(
    settings: Settings,
) -> None:
    # Two engines on one database, as two replicas have: real concurrency on PostgreSQL,
    # SQLite's file lock on the other.
    async with open_index(settings) as one, open_index(settings) as two:
        stores = [
            SigningKeyStore(i, rotation=ROTATION, overlap=OVERLAP)
            for i in (one, two, one, two, one, two)
        ]
        keys = await asyncio.gather(*(s.signer(T0) for s in stores))
        published = {k.kid for k in await stores[0].published(T0)}
        assert all(k.signs_at(T0) for k in keys)
        assert {k.kid for k in keys} <= published, "every key a replica signs with is published"
        # From now on every replica signs with the same one.
        settled = {(await s.signer(T0 + timedelta(seconds=1))).kid for s in stores}
        assert len(settled) == 1


async def test_prune_removes_long_dead_keys_and_expired_assertions(
    store: SigningKeyStore, index: SqlIndex
) -> None:
    old = new_key(T0 - 10 * RETAIN, T0 - 9 * RETAIN, T0 - RETAIN - timedelta(seconds=1))
    recent = new_key(T0 - 2 * ROTATION, T0 - ROTATION, T0 - timedelta(seconds=1))

    def insert(conn: Connection) -> None:
        for k in (old, recent):
            conn.execute(
                signing_keys.insert().values(
                    kid=k.kid,
                    alg=k.alg,
                    private_pem=k.private_pem,
                    public_jwk=k.public_jwk,
                    created=k.created,
                    sign_until=k.sign_until,
                    verify_until=k.verify_until,
                )
            )

    await index.run(insert, write=True)
    assert await store.use_assertion("c", "spent", T0 - timedelta(seconds=1), T0 - HOUR)
    assert await store.use_assertion("c", "live", T0 + HOUR, T0)
    assert await store.prune(T0) == (1, 1)
    kids = await rows(index)
    assert old.kid not in kids
    assert recent.kid in kids, "kept for the record a while"

    def assertions(conn: Connection) -> list[str]:
        return [r.jti for r in conn.execute(select(used_assertions.c.jti))]

    assert await index.run(assertions) == ["live"]


async def test_an_assertion_id_is_used_once_per_client(store: SigningKeyStore) -> None:
    expires = T0 + timedelta(minutes=5)
    assert await store.use_assertion("client-a", "jti-1", expires, T0)
    assert not await store.use_assertion("client-a", "jti-1", expires, T0), "a replay"
    assert not await store.use_assertion("client-a", "jti-1", expires, T0 + timedelta(minutes=4)), (
        "still a replay before it expires"
    )
    assert await store.use_assertion("client-b", "jti-1", expires, T0), "ids are per client"
    # Once the first use has expired, the id may be used again (its row is replaced).
    later = expires + timedelta(seconds=1)
    assert await store.use_assertion("client-a", "jti-1", later + timedelta(minutes=5), later)
    assert not await store.use_assertion("client-a", "jti-1", later + HOUR, later)


async def test_the_same_assertion_at_once_passes_exactly_once(settings: Settings) -> None:
    async with open_index(settings) as one, open_index(settings) as two:
        stores = [SigningKeyStore(i, rotation=ROTATION, overlap=OVERLAP) for i in (one, two) * 5]
        expires = T0 + timedelta(minutes=5)
        results = await asyncio.gather(
            *(s.use_assertion("client", "same-jti", expires, T0) for s in stores)
        )
        assert sorted(results) == [False] * 9 + [True]


# ------------------------------------------- the caches over it (auth.signing)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


class CountingStore(SigningKeyStore):
    """The real store, counting its reads of the published keys."""

    reads = 0

    async def published(self, now: datetime) -> list[SigningKey]:
        self.reads += 1
        return await super().published(now)


async def test_the_signer_moves_to_the_next_key_when_its_key_stops_signing(
    store: SigningKeyStore,
) -> None:
    clock = Clock(T0)
    signer = Signer(store, clock=clock)
    first = await signer.key()
    assert (await signer.key()).kid == first.kid
    clock.now = first.sign_until - AHEAD / 2  # the successor is made now, ahead
    assert (await Signer(store, clock=clock).key()).kid == first.kid
    clock.now = first.sign_until + timedelta(seconds=1)
    second = await signer.key()
    assert second.kid != first.kid, "a cached key is dropped once it stops signing"
    assert "PRIVATE" not in repr(second)


async def test_published_keys_verify_until_their_end_then_not(index: SqlIndex) -> None:
    store = SigningKeyStore(index, rotation=ROTATION, overlap=OVERLAP)
    clock = Clock(T0)
    key = await store.signer(T0)
    published = PublishedKeys(store, clock=clock)
    found = await published.key(key.kid)
    assert found is not None
    assert found.key_id == key.kid
    assert (await published.key(None)) is not None, "the only key, when none is named"
    clock.now = key.verify_until - timedelta(seconds=1)
    assert await published.key(key.kid) is not None
    clock.now = key.verify_until
    assert await published.key(key.kid) is None, "not even from the cache"
    assert (await published.jwks())["keys"] == []


async def test_an_unknown_kid_reads_the_index_again_at_most_every_interval(
    index: SqlIndex,
) -> None:
    store = CountingStore(index, rotation=ROTATION, overlap=OVERLAP)
    now = datetime.now(UTC)
    first = await store.signer(now)
    slow = PublishedKeys(store, min_refresh=3600)
    eager = PublishedKeys(store, min_refresh=0)
    assert await slow.key(first.kid) is not None
    assert await eager.key(first.kid) is not None
    assert store.reads == 2, "one read each to fill"
    # A key another replica made meanwhile (the successor, published ahead).
    await store.signer(first.sign_until - AHEAD / 2)
    [successor] = [k for k in await store.published(now) if k.kid != first.kid]
    store.reads = 0
    for _ in range(5):
        assert await slow.key(successor.kid) is None
    assert store.reads == 0, "within the interval, an unknown kid costs no read"
    assert await eager.key(successor.kid) is not None
    assert store.reads == 1, "past it, one read finds the new key"


class SwitchableIndex:
    """A real index that can be made to fail like one that is down (``IndexUnavailable``,
    what ``SqlIndex`` raises for a lost database, proven in its own contract tests): here
    only what the key cache does with that failure is under test."""

    def __init__(self, index: SqlIndex) -> None:
        self._index = index
        self.down = False

    @property
    def dialect(self) -> str:
        return self._index.dialect

    async def transact(self, action: str, fn: Any, *, write: bool) -> Any:
        if self.down:
            raise IndexUnavailable(f"{action}: the index is down")
        return await self._index.transact(action, fn, write=write)


async def test_keys_never_read_fail_closed_and_cached_ones_keep_serving(
    index: SqlIndex,
) -> None:
    switch = SwitchableIndex(index)
    store = SigningKeyStore(switch, rotation=ROTATION, overlap=OVERLAP)
    key = await store.signer(datetime.now(UTC))
    cached = PublishedKeys(store, max_age=0, min_refresh=0)
    assert await cached.key(key.kid) is not None
    never = PublishedKeys(store, min_refresh=0)
    switch.down = True
    assert await cached.key(key.kid) is not None, "served from the cache"
    assert await cached.key("another") is None
    with pytest.raises(KeysUnavailable):
        await never.key(key.kid)
    switch.down = False
    assert await never.key(key.kid) is not None, "and read once the index is back"

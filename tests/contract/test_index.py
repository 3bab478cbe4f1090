"""The file index contract: one suite, every backend (an SQLite file, a PostgreSQL database),
each opened through ``open_index`` as the application does; then what only PostgreSQL has
(a network, a password, several replicas)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from fileshare.config import ConfigError, Settings, load_settings
from fileshare.index.base import FileIndex, IndexError_
from fileshare.index.factory import open_index
from fileshare.index.postgres import PostgresIndex, redact_dsn
from fileshare.index.sqlite import SqliteIndex
from fileshare.models import FileRecord
from tests.servers import Postgres, free_port

API_KEYS = {"tester": "tester-key-0123456789"}
PASSWORD = "Sup3r-secret/pw@x"  # needs percent-encoding in a DSN
QUOTED_PASSWORD = "Sup3r-secret%2Fpw%40x"

Opener = Callable[[], AbstractAsyncContextManager[FileIndex]]


def fresh_database(postgres: Postgres) -> str:
    return postgres.create_database(f"index_{uuid.uuid4().hex[:16]}")


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
async def index(settings: Settings) -> AsyncIterator[FileIndex]:
    async with open_index(settings) as opened:
        yield opened


def record(
    *,
    id: str | None = None,
    owner: str = "alice",
    name: str | None = "scan.pdf",
    content_type: str = "application/pdf",
    sha256: str = "ab" * 32,
    created: datetime | None = None,
) -> FileRecord:
    return FileRecord(
        id=id or uuid.uuid4().hex,
        owner=owner,
        name=name,
        content_type=content_type,
        sha256=sha256,
        sha1=bytes(range(20)),
        size=3 * 2**30,  # beyond a 32-bit int
        created=created or datetime(2024, 2, 29, 12, 0, 0, 123456, tzinfo=UTC),
    )


# --------------------------------------------------------------------------------------------
# the contract, every backend


async def test_add_get_round_trip(index: FileIndex) -> None:
    created = datetime(2024, 2, 29, 23, 59, 58, 654321, tzinfo=timezone(timedelta(hours=2)))
    rec = record(name="Röntgenbefund \u2013 東京 😷.pdf", created=created)
    await index.add(rec)
    got = await index.get(rec.id)
    assert got == rec
    assert isinstance(got.sha1, bytes)
    assert got.created.tzinfo is not None
    assert got.created == created  # the same instant (PostgreSQL answers it in UTC)


async def test_none_name_round_trip(index: FileIndex) -> None:
    rec = record(name=None)
    await index.add(rec)
    assert await index.get(rec.id) == rec


async def test_get_unknown_is_none(index: FileIndex) -> None:
    assert await index.get("no-such-id") is None


async def test_find_same(index: FileIndex) -> None:
    rec = record()
    await index.add(rec)
    assert await index.find_same("alice", rec.sha256, "scan.pdf", "application/pdf") == rec
    assert await index.find_same("bob", rec.sha256, "scan.pdf", "application/pdf") is None
    assert await index.find_same("alice", "cd" * 32, "scan.pdf", "application/pdf") is None
    assert await index.find_same("alice", rec.sha256, "other.pdf", "application/pdf") is None
    assert await index.find_same("alice", rec.sha256, "scan.pdf", "image/png") is None
    assert await index.find_same("alice", rec.sha256, None, "application/pdf") is None


async def test_find_same_none_name_matches_none_only(index: FileIndex) -> None:
    unnamed = record(name=None)
    await index.add(unnamed)
    assert await index.find_same("alice", unnamed.sha256, None, "application/pdf") == unnamed
    assert await index.find_same("alice", unnamed.sha256, "scan.pdf", "application/pdf") is None
    assert await index.find_same("alice", unnamed.sha256, "", "application/pdf") is None


async def test_find_same_answers_the_oldest(index: FileIndex) -> None:
    first = datetime(2024, 1, 1, tzinfo=UTC)
    newer = record(created=first + timedelta(seconds=1))
    older = record(created=first)
    await index.add(newer)
    await index.add(older)
    assert await index.find_same("alice", older.sha256, "scan.pdf", "application/pdf") == older


async def test_duplicate_id_is_refused(index: FileIndex) -> None:
    rec = record()
    await index.add(rec)
    with pytest.raises(IndexError_):
        await index.add(record(id=rec.id, owner="mallory", name="evil.exe"))
    assert await index.get(rec.id) == rec
    await index.ping()  # the index is still usable


async def test_ping(index: FileIndex) -> None:
    await index.ping()


async def test_records_survive_reopening(settings: Settings) -> None:
    rec = record()
    async with open_index(settings) as index:
        await index.add(rec)
    async with open_index(settings) as index:  # schema creation is idempotent
        assert await index.get(rec.id) == rec


async def test_concurrent_adds(index: FileIndex) -> None:
    records = [record(sha256=f"{i:064x}") for i in range(40)]
    await asyncio.gather(*(index.add(r) for r in records))
    got = await asyncio.gather(*(index.get(r.id) for r in records))
    assert got == records


# --------------------------------------------------------------------------------------------
# choosing the backend


async def test_open_index_chooses_the_backend(tmp_path: Path, postgres: Postgres) -> None:
    sqlite = Settings(api_keys=API_KEYS, data_dir=tmp_path)
    async with open_index(sqlite) as index:
        assert isinstance(index, SqliteIndex)
    assert (tmp_path / "index.sqlite3").is_file()
    dsn = fresh_database(postgres)
    for url in (dsn, dsn.replace("postgresql://", "postgres://", 1)):
        async with open_index(Settings(api_keys=API_KEYS, index_url=url)) as index:
            assert isinstance(index, PostgresIndex)
            await index.ping()


def test_index_url_setting_is_validated_without_showing_it() -> None:
    url = f"postgresql://fileshare:{QUOTED_PASSWORD}@db.internal:5432/fileshare"
    settings = load_settings({"FILESHARE_INDEX_URL": url, "FILESHARE_API_KEYS": "t:" + "k" * 16})
    assert settings.index_url == url
    assert QUOTED_PASSWORD not in repr(settings)
    for bad in (
        f"mysql://fileshare:{QUOTED_PASSWORD}@db/fileshare",
        f"fileshare:{QUOTED_PASSWORD}@db/fileshare",
        "sqlite:///var/lib/index.sqlite3",
    ):
        with pytest.raises(ConfigError, match="FILESHARE_INDEX_URL") as caught:
            Settings(api_keys=API_KEYS, index_url=bad)
        assert QUOTED_PASSWORD not in str(caught.value)


# --------------------------------------------------------------------------------------------
# PostgreSQL only: the network, the password, replicas


def assert_no_password(message: str) -> None:
    assert PASSWORD not in message
    assert QUOTED_PASSWORD not in message
    assert "secret" not in message


def test_redact_dsn() -> None:
    assert (
        redact_dsn(f"postgresql://fileshare:{QUOTED_PASSWORD}@db:5432/x?sslmode=require")
        == "postgresql://fileshare:***@db:5432/x?sslmode=require"
    )
    assert redact_dsn(f"postgresql://db/x?user=u&password={QUOTED_PASSWORD}") == (
        "postgresql://db/x?user=u&password=***"
    )
    assert redact_dsn("postgresql://db/x") == "postgresql://db/x"
    assert_no_password(redact_dsn(f"postgresql://u:{QUOTED_PASSWORD}@[::1/x"))


async def test_unreachable_postgres_fails_open_without_the_password() -> None:
    index = PostgresIndex(
        f"postgresql://fileshare:{QUOTED_PASSWORD}@127.0.0.1:{free_port()}/fileshare",
        timeout=5,
    )
    with pytest.raises(IndexError_) as caught:
        await index.open()
    message = str(caught.value)
    assert_no_password(message)
    assert "connect failed" in message
    assert "127.0.0.1" in message
    assert_no_password(repr(index))
    with pytest.raises(IndexError_, match="not open"):
        await index.ping()
    await index.close()


@pytest.mark.parametrize(
    "dsn",
    [
        f"postgresql://fileshare:{QUOTED_PASSWORD}@127.0.0.1:notaport/fileshare",
        f"postgresql://fileshare:{QUOTED_PASSWORD}@[::1/fileshare",
        f"postgresql://fileshare@127.0.0.1:1/fileshare?password={QUOTED_PASSWORD}&sslmode=bogus",
    ],
)
async def test_malformed_dsn_fails_open_without_the_password(dsn: str) -> None:
    with pytest.raises(IndexError_) as caught:
        await PostgresIndex(dsn, timeout=5).open()
    assert_no_password(str(caught.value))


async def test_wrong_password_fails_open_without_either_password(postgres: Postgres) -> None:
    dsn = fresh_database(postgres)
    assert postgres.password in dsn
    with pytest.raises(IndexError_, match="password authentication failed") as caught:
        await PostgresIndex(dsn.replace(postgres.password, QUOTED_PASSWORD), timeout=5).open()
    assert_no_password(str(caught.value))
    assert postgres.password not in str(caught.value)


async def test_replicas_opening_at_once_on_a_fresh_database(postgres: Postgres) -> None:
    dsn = fresh_database(postgres)
    replicas = [PostgresIndex(dsn, timeout=10) for _ in range(8)]
    try:
        await asyncio.gather(*(r.open() for r in replicas))
        rec = record()
        await replicas[0].add(rec)
        assert [await r.get(rec.id) for r in replicas] == [rec] * len(replicas)
    finally:
        await asyncio.gather(*(r.close() for r in replicas))


async def test_naive_created_is_taken_as_utc(postgres: Postgres) -> None:
    index = PostgresIndex(fresh_database(postgres))
    await index.open()
    try:
        rec = record(created=datetime(2024, 6, 1, 8, 30))
        await index.add(rec)
        got = await index.get(rec.id)
        assert got is not None
        assert got.created == datetime(2024, 6, 1, 8, 30, tzinfo=UTC)
    finally:
        await index.close()


async def test_postgres_going_away_and_coming_back(tmp_path: Path) -> None:
    # Its own server: this test kills it.
    with Postgres(dir=tmp_path, password=PASSWORD) as server:
        index = PostgresIndex(server.dsn, timeout=5)
        await index.open()
        try:
            rec = record()
            await index.add(rec)
            server.kill()
            with pytest.raises(IndexError_) as caught:
                await index.ping()
            assert_no_password(str(caught.value))
            with pytest.raises(IndexError_):
                await index.get(rec.id)
            server.restart()
            await index.ping()  # the pool reconnects by itself
            assert await index.get(rec.id) == rec
        finally:
            await index.close()

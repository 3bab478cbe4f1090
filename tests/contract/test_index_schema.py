"""The index's schema over time, and what only PostgreSQL has (a network, a password,
several replicas): migrations from the first release's index, the lock replicas queue
behind, passwords kept out of every message."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection

from fileshare.config import ConfigError, Settings, load_settings
from fileshare.index.base import FileQuery, IndexUnavailable
from fileshare.index.engine import current_revision, open_sql_index, redact_dsn
from fileshare.index.factory import open_index
from fileshare.index.migrations.versions import v0001_first_release as first_release
from fileshare.index.sql import SqlIndex
from fileshare.index.tables import metadata
from fileshare.models import ScanState, legacy_key
from tests.servers import Postgres, free_port

API_KEYS = {"tester": "tester-key-0123456789"}
PASSWORD = "Sup3r-secret/pw@x"  # needs percent-encoding in a DSN
QUOTED_PASSWORD = "Sup3r-secret%2Fpw%40x"
HEAD = "0011"

#: Rows as the first release wrote them: (id, owner, name, type, sha256, sha1, size, created).
LEGACY_ROWS: list[tuple[str, str, str | None, str, str, bytes, int, datetime]] = [
    (
        uuid.uuid4().hex,
        "alice",
        "Röntgen 😷.pdf",
        "application/pdf",
        "aa" * 32,
        bytes(range(20)),
        3 * 2**30,
        datetime(2024, 2, 29, 12, 0, 0, tzinfo=UTC),
    ),
    (
        uuid.uuid4().hex,
        "bob",
        None,
        "image/png",
        "aa" * 32,
        bytes(range(20)),
        3 * 2**30,
        # written with another offset: an hour *before* the first row in UTC terms
        datetime(2024, 2, 29, 13, 0, 0, 250000, tzinfo=timezone(timedelta(hours=2))),
    ),
    (
        uuid.uuid4().hex,
        "alice",
        "b.txt",
        "text/plain",
        "bb" * 32,
        bytes(20),
        5,
        datetime(2024, 3, 1, 8, 0, 0, tzinfo=UTC),
    ),
]


def fresh_database(postgres: Postgres) -> str:
    return postgres.create_database(f"index_{uuid.uuid4().hex[:16]}")


def make_first_release_sqlite(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.executescript(first_release._SQLITE + ";" + first_release._INDEX)
    conn.executemany(
        "INSERT INTO files VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [(*row[:7], row[7].isoformat()) for row in LEGACY_ROWS],
    )
    conn.commit()
    conn.close()


async def make_first_release_postgres(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(first_release._POSTGRES)
        await conn.execute(first_release._INDEX)
        await conn.executemany(
            "INSERT INTO files VALUES ($1, $2, $3, $4, $5, $6, $7, $8)", LEGACY_ROWS
        )
    finally:
        await conn.close()


async def revision(index: SqlIndex) -> str | None:
    return await index.run(current_revision)


async def assert_first_release_records(index: SqlIndex) -> None:
    assert await revision(index) == HEAD
    for file_id, owner, name, content_type, sha256, sha1, size, created in LEGACY_ROWS:
        record = await index.get(owner, file_id)
        assert record is not None, file_id
        assert (record.name, record.content_type) == (name, content_type)
        assert record.created == created
        assert record.updated == created
        content = record.content
        assert (content.sha256, content.sha1, content.size) == (sha256, sha1, size)
        assert content.key == legacy_key(sha256)  # where that release put the blob
        assert content.state is ScanState.CLEAN
        assert content.present
        assert content.scan.scanner is None  # unknown provenance: rescanned first
    alice = await index.list_files("alice", FileQuery())
    assert [r.id for r in alice.items] == [LEGACY_ROWS[0][0], LEGACY_ROWS[2][0]]
    # one content row for the bytes both owners hold
    assert (await index.find_clean("aa" * 32)) is not None


async def test_a_first_release_sqlite_index_upgrades_in_place(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite3"
    make_first_release_sqlite(path)
    index = await open_sql_index(url=None, sqlite_path=path)
    try:
        await assert_first_release_records(index)
    finally:
        await index.close()
    # and once more: nothing left to do, nothing lost
    async with open_index(Settings(api_keys=API_KEYS, index_path=path)) as again:
        assert isinstance(again, SqlIndex)
        await assert_first_release_records(again)


async def test_a_first_release_postgres_index_upgrades_in_place(postgres: Postgres) -> None:
    dsn = fresh_database(postgres)
    await make_first_release_postgres(dsn)
    # replicas of the new release starting together: one migrates, the others wait
    replicas = await asyncio.gather(
        *(open_sql_index(url=dsn, sqlite_path=Path("unused")) for _ in range(4))
    )
    try:
        for index in replicas:
            await assert_first_release_records(index)
    finally:
        await asyncio.gather(*(r.close() for r in replicas))


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_the_migrations_make_the_schema_the_queries_expect(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = fresh_database(request.getfixturevalue("postgres")) if backend == "postgres" else None
    index = await open_sql_index(url=url, sqlite_path=tmp_path / "i.sqlite3")

    def differences(conn: Connection) -> list[Any]:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
        return [d for d in diff if d[0] != "remove_table" or d[1].name != "alembic_version"]

    try:
        assert await index.run(differences) == []
    finally:
        await index.close()


async def test_replicas_opening_at_once_on_a_fresh_database(postgres: Postgres) -> None:
    dsn = fresh_database(postgres)
    replicas = await asyncio.gather(
        *(open_sql_index(url=dsn, sqlite_path=Path("unused")) for _ in range(8))
    )
    try:
        assert {await revision(r) for r in replicas} == {HEAD}
    finally:
        await asyncio.gather(*(r.close() for r in replicas))


# --------------------------------------------------------------------------------------------
# settings and passwords


async def test_open_index_chooses_the_backend(tmp_path: Path, postgres: Postgres) -> None:
    sqlite = Settings(api_keys=API_KEYS, data_dir=tmp_path)
    async with open_index(sqlite) as index:
        assert isinstance(index, SqlIndex)
        assert index.dialect == "sqlite"
    assert (tmp_path / "index.sqlite3").is_file()
    dsn = fresh_database(postgres)
    for url in (dsn, dsn.replace("postgresql://", "postgres://", 1)):
        async with open_index(Settings(api_keys=API_KEYS, index_url=url)) as index:
            assert isinstance(index, SqlIndex)
            assert index.dialect == "postgresql"
            await index.ping()


def test_index_url_setting_is_validated_without_showing_it() -> None:
    url = f"postgresql://fileshare:{QUOTED_PASSWORD}@db.internal:5432/fileshare?sslmode=require"
    settings = load_settings({"FILESHARE_INDEX_URL": url, "FILESHARE_API_KEYS": "t:" + "k" * 16})
    assert settings.index_url == url
    assert QUOTED_PASSWORD not in repr(settings)
    for bad in (
        f"mysql://fileshare:{QUOTED_PASSWORD}@db/fileshare",
        f"fileshare:{QUOTED_PASSWORD}@db/fileshare",
        "sqlite:///var/lib/index.sqlite3",
        f"postgresql://fileshare:{QUOTED_PASSWORD}@db.internal/fileshare",  # no TLS
    ):
        with pytest.raises(ConfigError, match="FILESHARE_INDEX_URL") as caught:
            Settings(api_keys=API_KEYS, index_url=bad)
        assert QUOTED_PASSWORD not in str(caught.value)


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
    dsn = f"postgresql://fileshare:{QUOTED_PASSWORD}@127.0.0.1:{free_port()}/fileshare"
    with pytest.raises(IndexUnavailable) as caught:
        await open_sql_index(url=dsn, sqlite_path=Path("unused"), query_timeout=5)
    message = str(caught.value)
    assert_no_password(message)
    assert "connect and migrate failed" in message
    assert "127.0.0.1" in message


@pytest.mark.parametrize(
    "dsn",
    [
        f"postgresql://fileshare:{QUOTED_PASSWORD}@127.0.0.1:notaport/fileshare",
        f"postgresql://fileshare:{QUOTED_PASSWORD}@[::1/fileshare",
        f"postgresql://fileshare@127.0.0.1:1/fileshare?password={QUOTED_PASSWORD}&sslmode=bogus",
    ],
)
async def test_malformed_dsn_fails_open_without_the_password(dsn: str) -> None:
    with pytest.raises(IndexUnavailable) as caught:
        await open_sql_index(url=dsn, sqlite_path=Path("unused"), query_timeout=5)
    assert_no_password(str(caught.value))


async def test_wrong_password_fails_open_without_either_password(postgres: Postgres) -> None:
    dsn = fresh_database(postgres)
    assert postgres.password in dsn
    with pytest.raises(IndexUnavailable, match="password authentication failed") as caught:
        await open_sql_index(
            url=dsn.replace(postgres.password, QUOTED_PASSWORD),
            sqlite_path=Path("unused"),
            query_timeout=5,
        )
    assert_no_password(str(caught.value))
    assert postgres.password not in str(caught.value)


async def test_postgres_going_away_and_coming_back(tmp_path: Path) -> None:
    # Its own server: this test kills it.
    with Postgres(dir=tmp_path, password=PASSWORD) as server:
        index = await open_sql_index(url=server.dsn, sqlite_path=Path("unused"), query_timeout=5)
        try:
            await index.create_tag("alice", "kept", datetime.now(UTC))
            server.kill()
            with pytest.raises(IndexUnavailable) as caught:
                await index.ping()
            assert_no_password(str(caught.value))
            assert_no_password(repr(index))
            with pytest.raises(IndexUnavailable):
                await index.list_tags("alice", None, 10)
            server.restart()
            await index.ping()  # the pool replaces its dead connections by itself
            assert [t.name for t in await index.list_tags("alice", None, 10)] == ["kept"]
        finally:
            await index.close()


def test_the_migrate_command(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = tmp_path / "index.sqlite3"
    make_first_release_sqlite(path)
    env = {
        "FILESHARE_API_KEYS": "t:" + "k" * 16,
        "FILESHARE_INDEX_PATH": str(path),
        "FILESHARE_LOG_FORMAT": "console",
        "PATH": "/usr/bin:/bin",
    }
    done = subprocess.run(
        [sys.executable, "-m", "fileshare", "migrate"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "up to date" in done.stdout
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [(HEAD,)]
    assert conn.execute("SELECT count(*) FROM files").fetchone() == (len(LEGACY_ROWS),)
    conn.close()
    unreachable = f"postgresql://u:{QUOTED_PASSWORD}@127.0.0.1:{free_port()}/x"
    failed = subprocess.run(
        [sys.executable, "-m", "fileshare", "migrate"],
        env={**env, "FILESHARE_INDEX_URL": unreachable},
        capture_output=True,
        text=True,
    )
    assert failed.returncode == 1
    assert "connect and migrate failed" in failed.stderr
    assert_no_password(failed.stderr + failed.stdout)


async def test_inconsistent_first_release_records_are_not_served(tmp_path: Path) -> None:
    """Two first-release rows of one sha256 that disagree about its sha1 or size cannot
    both be right: the content is kept, marked failed, never served."""
    path = tmp_path / "index.sqlite3"
    make_first_release_sqlite(path)
    conn = sqlite3.connect(path)
    bad = (
        uuid.uuid4().hex,
        "carol",
        "x",
        "text/plain",
        "bb" * 32,
        bytes(20),
        6,
        "2024-01-01T00:00:00+00:00",
    )
    conn.execute("INSERT INTO files VALUES (?, ?, ?, ?, ?, ?, ?, ?)", bad)
    conn.commit()
    conn.close()
    index = await open_sql_index(url=None, sqlite_path=path)
    try:
        record = await index.get("carol", bad[0])
        assert record is not None
        assert record.content.state is ScanState.FAILED
        assert not record.content.present
        assert await index.find_clean("bb" * 32) is None
        assert await index.find_clean("aa" * 32) is not None
    finally:
        await index.close()


async def test_a_migration_waits_for_another_replicas_lock(postgres: Postgres) -> None:
    """The migration lock is held by a replica migrating a large index: the others wait
    for it longer than any query may take, then find nothing left to do."""
    dsn = fresh_database(postgres)
    holder = await asyncpg.connect(dsn)
    try:
        await holder.execute("BEGIN")
        await holder.execute("SELECT pg_advisory_xact_lock($1)", 0x66696C6573686172)
        waiting = asyncio.ensure_future(
            open_sql_index(url=dsn, sqlite_path=Path("unused"), query_timeout=1)
        )
        done, _ = await asyncio.wait([waiting], timeout=3)
        assert not done, "the migration did not wait for the lock"
        await holder.execute("COMMIT")
        index = await waiting
        try:
            assert await revision(index) == HEAD
        finally:
            await index.close()
    finally:
        await holder.close()


async def test_a_failed_upgrade_leaves_the_first_release_index_as_it_was(tmp_path: Path) -> None:
    """The whole upgrade is one transaction: a row it cannot convert rolls everything
    back, and once the row is mended the upgrade runs through."""
    path = tmp_path / "index.sqlite3"
    make_first_release_sqlite(path)
    conn = sqlite3.connect(path)
    conn.execute("UPDATE files SET created = 'not a time' WHERE id = ?", (LEGACY_ROWS[2][0],))
    conn.commit()
    conn.close()
    with pytest.raises(IndexUnavailable):
        await open_sql_index(url=None, sqlite_path=path)
    conn = sqlite3.connect(path)
    tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert tables == {"files"}
    conn.execute(
        "UPDATE files SET created = ? WHERE id = ?",
        (LEGACY_ROWS[2][7].isoformat(), LEGACY_ROWS[2][0]),
    )
    conn.commit()
    conn.close()
    index = await open_sql_index(url=None, sqlite_path=path)
    try:
        await assert_first_release_records(index)
    finally:
        await index.close()

"""The audit trail's contract (``fileshare.index.audit``) on every index backend: an SQLite
file and a PostgreSQL database, each opened and migrated through ``open_index``.

Appends are ordered and gapless, from many tasks and from two index instances (two
replicas) at once; every row hashes the same after the database's round trip; every kind of
tampering is found at the row it concerns; queries filter and page newest first."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, delete, insert, select, update

from fileshare.audit import Action, AuditEvent, AuditRecord, Result
from fileshare.config import Settings
from fileshare.index.audit import (
    GENESIS,
    AuditQuery,
    AuditStore,
    Broken,
    canonical,
    chain_hash,
    plain,
)
from fileshare.index.factory import open_index
from fileshare.index.sql import SqlIndex
from fileshare.index.tables import audit_events, audit_head

API_KEYS = {"tester": "tester-key-0123456789"}
#: Not UTC, and a microsecond that a float-seconds conversion would lose.
T0 = datetime(2024, 2, 29, 13, 0, 0, 123457, tzinfo=timezone(timedelta(hours=1)))
SECOND = timedelta(seconds=1)
#: JSON a database could give back differently: unicode, key order, ints next to floats,
#: an int beyond 2**53, nesting, nulls.
AWKWARD_DETAIL: dict[str, Any] = {
    "zeta": "naïve ☃ — \U0001f9ec",
    "alpha": 1,
    "half": 1.5,
    "one": 1.0,
    "big": 2**62 + 1,
    "tiny": 1e-7,
    "nested": {"b": [1, 2.5, "x", None, True], "a": {}},
    "empty": [],
    "flag": False,
    "none": None,
}


@pytest.fixture(params=["sqlite", "postgres"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    if request.param == "sqlite":
        return Settings(api_keys=API_KEYS, data_dir=tmp_path, index_path=tmp_path / "i.sqlite3")
    postgres = request.getfixturevalue("postgres")
    return Settings(
        api_keys=API_KEYS,
        data_dir=tmp_path,
        index_url=postgres.create_database(f"audit_{uuid.uuid4().hex[:16]}"),
    )


@pytest.fixture
async def index(settings: Settings) -> AsyncIterator[SqlIndex]:
    async with open_index(settings) as opened:
        yield opened


@pytest.fixture
def store(index: SqlIndex) -> AuditStore:
    return AuditStore(index)


def event(n: int, **fields: Any) -> AuditEvent:
    values: dict[str, Any] = {
        "action": Action.FILE_UPLOAD,
        "subject": f"worker-{n % 3}",
        "client": f"client-{n % 2}",
        "role": "worker",
        "source": "127.0.0.1",
        "owner": f"owner-{n % 2}",
        "file_id": f"file-{n}",
        "sha256": f"{n:064x}",
        "request_id": f"req-{n}",
        "detail": {"n": n},
    }
    values.update(fields)
    return AuditEvent(**values)


async def walk(store: AuditStore, q: AuditQuery) -> list[AuditRecord]:
    """Every page of ``q``, following the keyset."""
    found: list[AuditRecord] = []
    before = None
    while True:
        page = await store.query(replace(q, before=before))
        found += page
        if len(page) < q.limit:
            return found
        before = page[-1].seq


async def rows(index: SqlIndex) -> list[dict[str, Any]]:
    def run(conn: Connection) -> list[dict[str, Any]]:
        stmt = select(audit_events).order_by(audit_events.c.seq)
        return [dict(m) for m in conn.execute(stmt).mappings()]

    return await index.run(run)


async def sql(index: SqlIndex, fn: Callable[[Connection], object]) -> None:
    """Tampering: a write behind the store's back, as someone with database access would."""
    await index.run(fn, write=True)


# ------------------------------------------------------------------ appends and the chain


async def test_appends_number_rows_in_order_and_keep_every_field(
    store: AuditStore, index: SqlIndex
) -> None:
    first = await store.record(event(1), event(2), event(3), now=T0)
    second = await store.record(
        event(4, result=Result.DENIED, subject=None, client=None, role=None), now=T0 + SECOND
    )
    assert (first, second) == ([1, 2, 3], [4])

    newest_first = await store.query(AuditQuery())
    assert [r.seq for r in newest_first] == [4, 3, 2, 1]
    one = newest_first[-1]
    assert one.event == event(1)
    assert one.at == T0
    assert one.at.utcoffset() == timedelta(0)
    assert newest_first[0].event.result is Result.DENIED
    assert newest_first[0].event.subject is None
    # Each row links to the one before; the first to the genesis hash.
    chain = list(reversed(newest_first))
    assert chain[0].prev_hash == GENESIS
    assert [r.prev_hash for r in chain[1:]] == [r.hash for r in chain[:-1]]
    assert len({r.hash for r in chain}) == 4
    assert await store.verify() == (4, None)


async def test_an_awkward_detail_and_time_hash_the_same_after_the_round_trip(
    store: AuditStore,
) -> None:
    await store.record(event(1, detail=AWKWARD_DETAIL), now=T0)
    (record,) = await store.query(AuditQuery())
    assert record.event.detail == AWKWARD_DETAIL
    assert type(record.event.detail["alpha"]) is int
    assert type(record.event.detail["one"]) is float
    assert record.at == T0
    assert record.at.microsecond == 123457
    values = canonical(record.event)
    assert chain_hash(1, record.at, values, GENESIS) == record.hash
    assert await store.verify() == (1, None)


async def test_a_detail_rewritten_as_equal_json_still_verifies(
    store: AuditStore, index: SqlIndex
) -> None:
    """Another key order, 1.0 for 1: the same JSON value, which a database (or a restore
    through another tool) may well produce; not an edit."""
    await store.record(event(1, detail={"a": 1, "b": [2, {"c": 3}]}), now=T0)
    rewritten = {"b": [2.0, {"c": 3.0}], "a": 1.0}
    await sql(index, lambda c: c.execute(update(audit_events).values(detail=rewritten)))
    assert await store.verify() == (1, None)


async def test_concurrent_appends_from_many_tasks_make_one_gapless_chain(
    store: AuditStore,
) -> None:
    async def writer(n: int) -> list[int]:
        events = [event(n * 10 + i) for i in range(1 + n % 3)]
        return await store.record(*events, now=T0 + n * SECOND)

    results = await asyncio.gather(*(writer(n) for n in range(40)))
    seqs = sorted(s for r in results for s in r)
    total = sum(1 + n % 3 for n in range(40))
    assert seqs == list(range(1, total + 1))
    # A transaction's own rows are consecutive: the head was held across them.
    for r in results:
        assert r == list(range(r[0], r[0] + len(r)))
    assert await store.verify() == (total, None)


async def test_two_index_instances_append_to_one_chain(
    settings: Settings, store: AuditStore
) -> None:
    """Two replicas on one database (or two processes on one SQLite file)."""
    async with open_index(settings) as other_index:
        other = AuditStore(other_index)

        async def writer(s: AuditStore, n: int) -> list[int]:
            return await s.record(event(n), event(n + 1000), now=T0 + n * SECOND)

        results = await asyncio.gather(*(writer(store if n % 2 else other, n) for n in range(30)))
    seqs = sorted(s for r in results for s in r)
    assert seqs == list(range(1, 61))
    assert await store.verify() == (60, None)


async def test_verify_walks_in_batches(store: AuditStore, index: SqlIndex) -> None:
    for n in range(7):
        await store.record(event(n), now=T0 + n * SECOND)
    assert await store.verify(batch=2) == (7, None)
    await sql(
        index,
        lambda c: c.execute(update(audit_events).where(audit_events.c.seq == 6).values(role="x")),
    )
    assert await store.verify(batch=2) == (5, Broken(6, "it was changed after it was written"))


async def test_an_empty_trail_verifies(store: AuditStore) -> None:
    assert await store.verify() == (0, None)


async def test_values_longer_than_their_column_are_clipped_alike_and_stay_distinct(
    store: AuditStore,
) -> None:
    long_a, long_b = "s" * 400 + "a", "s" * 400 + "b"
    await store.record(event(1, subject=long_a), event(2, subject=long_b), now=T0)
    found = {r.event.subject for r in await store.query(AuditQuery())}
    assert all(s is not None and len(s) == 255 for s in found)
    assert len(found) == 2
    assert [r.seq for r in await store.query(AuditQuery(subject=long_b))] == [2]
    assert await store.verify() == (2, None)


# ------------------------------------------------------------------ tampering


async def six_rows(store: AuditStore) -> None:
    for n in range(1, 7):
        await store.record(event(n, detail={"n": n, "tags": ["a", "b"]}), now=T0 + n * SECOND)


def set_column(column: str, value: Any) -> Callable[[Connection], object]:
    def run(conn: Connection) -> object:
        stmt = update(audit_events).where(audit_events.c.seq == 3).values({column: value})
        return conn.execute(stmt)

    return run


CHANGED = "it was changed after it was written"
EDITS: dict[str, Any] = {
    "at": T0 + 3 * SECOND + timedelta(microseconds=1),
    "action": Action.FILE_DOWNLOAD.value,
    "result": Result.DENIED.value,
    "subject": "someone-else",
    "client": None,
    "role": "admin",
    "source": "10.0.0.1",
    "owner": "owner-9",
    "file_id": "file-other",
    "sha256": "f" * 64,
    "request_id": "req-forged",
    "detail": {"n": 4, "tags": ["a", "b"]},
    "hash": "e" * 64,
}


@pytest.mark.parametrize("column", list(EDITS))
async def test_an_edited_field_is_found_at_its_row(
    store: AuditStore, index: SqlIndex, column: str
) -> None:
    await six_rows(store)
    await sql(index, set_column(column, EDITS[column]))
    assert await store.verify() == (2, Broken(3, CHANGED))


async def test_a_detail_with_one_more_key_is_an_edit(store: AuditStore, index: SqlIndex) -> None:
    await six_rows(store)
    await sql(index, set_column("detail", {"n": 3, "tags": ["a", "b"], "ok": True}))
    assert await store.verify() == (2, Broken(3, CHANGED))


async def test_an_edited_link_is_found_at_its_row(store: AuditStore, index: SqlIndex) -> None:
    await six_rows(store)
    await sql(index, set_column("prev_hash", "d" * 64))
    assert await store.verify() == (2, Broken(3, "it does not link to the row before it"))


async def test_a_deleted_row_in_the_middle_is_missing(store: AuditStore, index: SqlIndex) -> None:
    await six_rows(store)
    await sql(index, lambda c: c.execute(delete(audit_events).where(audit_events.c.seq == 3)))
    assert await store.verify() == (2, Broken(3, "row 3 is missing"))


async def test_deleted_last_rows_are_missing_by_the_head(
    store: AuditStore, index: SqlIndex
) -> None:
    await six_rows(store)
    await sql(index, lambda c: c.execute(delete(audit_events).where(audit_events.c.seq >= 5)))
    assert await store.verify() == (
        4,
        Broken(5, "row 5 is missing (the chain's head names row 6)"),
    )


async def test_deleted_last_row_and_a_head_moved_back_still_break_at_the_head(
    store: AuditStore, index: SqlIndex
) -> None:
    """Deleting the last row and setting the head's seq back, without knowing the hash
    that row linked from, leaves the head naming a hash no row has."""
    await six_rows(store)

    def run(conn: Connection) -> None:
        conn.execute(delete(audit_events).where(audit_events.c.seq == 6))
        conn.execute(update(audit_head).values(seq=5))

    await sql(index, run)
    assert await store.verify() == (5, Broken(5, "the chain's head does not name this row's hash"))


def forged_row(seq: int, prev: str, **fields: Any) -> dict[str, Any]:
    """A row as a forger who knows the hash function writes it: it holds its own hash."""
    values = canonical(event(seq, **fields))
    at = T0 + seq * SECOND
    return {
        **values,
        "seq": seq,
        "at": at,
        "prev_hash": prev,
        "hash": chain_hash(seq, at, values, prev),
    }


async def test_a_row_added_after_the_head_is_found(store: AuditStore, index: SqlIndex) -> None:
    await six_rows(store)
    last = (await rows(index))[-1]
    row = forged_row(7, last["hash"], subject="forger")
    await sql(index, lambda c: c.execute(insert(audit_events).values(row)))
    assert await store.verify() == (0, Broken(7, "row 7 is beyond the chain's head (row 6)"))


async def test_a_row_inserted_in_the_middle_breaks_the_link_after_it(
    store: AuditStore, index: SqlIndex
) -> None:
    """Rows 4-6 moved up to 5-7, a forged row 4 linked to row 3, the head moved on: the
    forged row holds its own hash, and the row after it does not link to it."""
    await six_rows(store)
    before = await rows(index)
    row = forged_row(4, before[2]["hash"], subject="forger")

    def run(conn: Connection) -> None:
        for seq in (6, 5, 4):  # from the top: seq is the primary key
            conn.execute(update(audit_events).where(audit_events.c.seq == seq).values(seq=seq + 1))
        conn.execute(insert(audit_events).values(row))
        conn.execute(update(audit_head).values(seq=7))

    await sql(index, run)
    assert await store.verify() == (4, Broken(5, "it does not link to the row before it"))


async def test_a_reordered_pair_is_found_at_the_first_of_them(
    store: AuditStore, index: SqlIndex
) -> None:
    await six_rows(store)

    def run(conn: Connection) -> None:
        seq = audit_events.c.seq
        conn.execute(update(audit_events).where(seq == 3).values(seq=0))
        conn.execute(update(audit_events).where(seq == 4).values(seq=3))
        conn.execute(update(audit_events).where(seq == 0).values(seq=4))

    await sql(index, run)
    assert await store.verify() == (2, Broken(3, "it does not link to the row before it"))


async def test_an_edited_head_is_found(store: AuditStore, index: SqlIndex) -> None:
    await six_rows(store)
    await sql(index, lambda c: c.execute(update(audit_head).values(hash="c" * 64)))
    assert await store.verify() == (6, Broken(6, "the chain's head does not name this row's hash"))


async def test_a_consistent_rewrite_is_caught_only_by_a_copy_of_the_head_kept_elsewhere(
    store: AuditStore, index: SqlIndex
) -> None:
    """The limit of an unkeyed chain, stated as a test: whoever can write the tables can
    recompute every later row and the head; a copy of the head's hash taken earlier (a
    shipped log line) no longer matches."""
    await six_rows(store)
    kept = (await rows(index))[-1]["hash"]

    def rewrite(conn: Connection) -> None:
        set_column("subject", "nobody")(conn)
        prev = GENESIS
        for m in conn.execute(select(audit_events).order_by(audit_events.c.seq)).mappings():
            values = {k: m[k] for k in canonical(event(0))}
            digest = chain_hash(m["seq"], m["at"], values, prev)
            conn.execute(
                update(audit_events)
                .where(audit_events.c.seq == m["seq"])
                .values(prev_hash=prev, hash=digest)
            )
            prev = digest
        conn.execute(update(audit_head).values(hash=prev))

    await sql(index, rewrite)
    assert await store.verify() == (6, None)
    assert (await rows(index))[-1]["hash"] != kept


# ------------------------------------------------------------------ queries


async def test_queries_filter_by_time_subject_owner_file_and_action(store: AuditStore) -> None:
    await store.record(event(1), now=T0)
    await store.record(event(2, action=Action.FILE_DOWNLOAD), now=T0 + SECOND)
    await store.record(event(3, file_id="file-1", owner="owner-1"), now=T0 + 2 * SECOND)
    await store.record(event(4, action=Action.FILE_DOWNLOAD), now=T0 + 3 * SECOND)

    async def seqs(**filters: Any) -> list[int]:
        return [r.seq for r in await store.query(AuditQuery(**filters))]

    assert await seqs() == [4, 3, 2, 1]
    # since is inclusive, until exclusive; any zone.
    assert await seqs(since=T0 + SECOND, until=T0 + 3 * SECOND) == [3, 2]
    assert await seqs(since=(T0 + SECOND).astimezone(UTC)) == [4, 3, 2]
    assert await seqs(until=T0 + timedelta(microseconds=1)) == [1]
    assert await seqs(until=T0) == []
    assert await seqs(subject="worker-1") == [4, 1]
    assert await seqs(owner="owner-1", file_id="file-1") == [3, 1]
    assert await seqs(owner="owner-0", file_id="file-1") == []
    assert await seqs(file_id="file-1") == [3, 1]
    assert await seqs(action="file.download") == [4, 2]
    assert await seqs(action="file.download", subject="worker-2") == [2]
    assert await seqs(action="token.issue") == []


async def test_keyset_pages_run_newest_first_without_gaps_or_repeats(store: AuditStore) -> None:
    for n in range(1, 12):
        await store.record(event(n), now=T0 + n * SECOND)
    pages: list[list[int]] = []
    before = None
    while True:
        page = [r.seq for r in await store.query(AuditQuery(limit=3, before=before))]
        pages.append(page)
        if len(page) < 3:
            break
        before = page[-1]
    assert pages == [[11, 10, 9], [8, 7, 6], [5, 4, 3], [2, 1]]
    filtered = await walk(store, AuditQuery(limit=2, subject="worker-0"))
    assert [r.seq for r in filtered] == [9, 6, 3]
    # Rows appended while paging go to the top, never into a later page.
    first = await store.query(AuditQuery(limit=5))
    await store.record(event(99), now=T0)
    rest = await store.query(AuditQuery(limit=50, before=first[-1].seq))
    assert [r.seq for r in rest] == [6, 5, 4, 3, 2, 1]


# ------------------------------------------------------------------ the canonical form


def test_details_that_are_not_json_are_refused_before_anything_is_written() -> None:
    for bad in ({"x": float("nan")}, {"x": float("inf")}, {1: "a"}, {"x": object()}, {"x": b"b"}):
        with pytest.raises(TypeError):
            plain(bad)
    when = datetime(2024, 1, 1, 1, 0, tzinfo=timezone(timedelta(hours=1)))
    assert plain({"at": when, "state": Result.DENIED, "t": (1, 2)}) == {
        "at": "2024-01-01T00:00:00Z",
        "state": "denied",
        "t": [1, 2],
    }


async def test_a_bad_detail_fails_the_append_and_leaves_the_chain_as_it_was(
    store: AuditStore,
) -> None:
    await store.record(event(1), now=T0)
    with pytest.raises(TypeError):
        await store.record(event(2), event(3, detail={"x": float("nan")}), now=T0)
    assert await store.verify() == (1, None)
    assert await store.record(event(4), now=T0) == [2]


def test_the_hash_of_a_fixed_row_never_changes() -> None:
    """Rows written today must verify in every later release: a change of the canonical form
    needs a new HASH_VERSION, never a silent edit."""
    values = canonical(event(7, detail=AWKWARD_DETAIL))
    at = datetime(2024, 2, 29, 12, 0, 0, 123457, tzinfo=UTC)
    assert chain_hash(7, at, values, GENESIS) == chain_hash(7, T0, values, GENESIS)
    assert chain_hash(7, at, values, GENESIS) == EXPECTED_HASH


EXPECTED_HASH = "450b88b5f8cd7415387ac886a24a3a3ae8719a7efa45a99e78ba90b6372795bd"

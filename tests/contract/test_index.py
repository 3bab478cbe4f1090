"""The file index contract: one suite, every backend (an SQLite file, a PostgreSQL database),
each opened (and migrated) through ``open_index`` as the application does."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select, update

from fileshare.audit import Action, AuditEvent, Result
from fileshare.config import Settings
from fileshare.index.base import (
    Committed,
    Conflict,
    ContentGone,
    Cursor,
    FileIndex,
    FilePatch,
    FileQuery,
    IndexUnavailable,
    Placement,
    PreconditionFailed,
    TooLarge,
    VerdictStands,
)
from fileshare.index.factory import open_index
from fileshare.index.sql import CommitOutcomeUnknown, SqlIndex
from fileshare.index.tables import audit_events, contents, doomed_objects
from fileshare.models import Content, FileRecord, ScanRecord, ScanState, new_object_key
from tests.servers import Postgres

API_KEYS = {"tester": "tester-key-0123456789"}
NOW = datetime(2024, 2, 29, 12, 0, 0, 123456, tzinfo=UTC)
HOUR = timedelta(hours=1)
SCANNER = "ClamAV 1.4.6/27000/Thu Feb 29 09:00:00 2024"


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


def sha(n: int) -> str:
    return f"{n:064x}"


def content(n: int = 1, *, key: str | None = None) -> Content:
    h = sha(n)
    return Content(
        sha256=h,
        sha1=bytes(range(20)),
        size=3 * 2**30,  # beyond a 32-bit int
        key=key or new_object_key(h),
        scan=ScanRecord(ScanState.CLEAN, scanner=SCANNER, scanned_at=NOW),
    )


async def reserve(index: FileIndex, c: Content, now: datetime = NOW) -> None:
    """What ``claim`` does for an upload that goes on to promote: list its key, due in an
    hour. Written directly, so that a test can also stage two uploads that both passed
    their claim before either committed."""
    assert isinstance(index, SqlIndex)
    assert c.key is not None
    key = c.key

    def run(conn: Any) -> None:
        conn.execute(insert(doomed_objects).values(object_key=key, not_before=now + HOUR))

    await index.run(run, write=True)


async def post(
    index: FileIndex,
    c: Content | None = None,
    *,
    owner: str = "alice",
    name: str | None = "scan.pdf",
    content_type: str = "application/pdf",
    held: bool = False,
    now: datetime = NOW,
) -> Committed:
    c = c or content()
    if not held:
        await reserve(index, c, now)
    return await index.commit(
        owner,
        c,
        name=name,
        content_type=content_type,
        placement=Placement(new_id=uuid.uuid4().hex),
        held=held,
        now=now,
    )


async def put(
    index: FileIndex,
    file_id: str,
    c: Content,
    *,
    owner: str = "alice",
    if_match: tuple[str, ...] = (),
    if_none_match: bool = False,
    now: datetime = NOW,
    held: bool = False,
) -> Committed:
    if not held:
        await reserve(index, c, now)
    return await index.commit(
        owner,
        c,
        name="put.bin",
        content_type="application/octet-stream",
        placement=Placement(file_id=file_id, if_match=if_match, if_none_match=if_none_match),
        held=held,
        now=now,
    )


async def walk(index: FileIndex, owner: str, query: FileQuery) -> list[FileRecord]:
    found: list[FileRecord] = []
    cursor: Cursor | None = None
    while True:
        page = await index.list_files(owner, FileQuery(**{**query.__dict__, "after": cursor}))
        found += page.items
        if page.next is None:
            return found
        assert len(page.items) == query.page_size
        cursor = page.next


# -------------------------------------------------------------------------------- records


async def test_commit_and_get_round_trip(index: FileIndex) -> None:
    c = content()
    when = datetime(2024, 2, 29, 23, 59, 58, 654321, tzinfo=timezone(timedelta(hours=2)))
    done = await post(index, c, name="Röntgenbefund \u2013 東京 😷.pdf", now=when)
    assert done.created
    assert done.doomed == ()
    got = await index.get("alice", done.record.id)
    assert got == done.record
    assert got.name == "Röntgenbefund \u2013 東京 😷.pdf"
    assert got.content == c
    assert got.content.present
    assert got.created == when
    assert got.updated == when
    assert got.created.tzinfo is not None
    assert got.metadata == {}
    assert got.tags == ()


async def test_unnamed_record(index: FileIndex) -> None:
    done = await post(index, name=None)
    got = await index.get("alice", done.record.id)
    assert got is not None
    assert got.name is None


async def test_another_owner_sees_nothing(index: FileIndex) -> None:
    done = await post(index)
    assert await index.get("bob", done.record.id) is None
    assert (await index.list_files("bob", FileQuery())).items == []
    assert await index.delete("bob", done.record.id, NOW) is None
    assert await index.tag_file("bob", done.record.id, "x", NOW, add=True, max_tags=50) is None
    with pytest.raises(KeyError):
        await index.update("bob", done.record.id, FilePatch(name="stolen"), NOW)
    assert await index.get("alice", done.record.id) == done.record


async def test_a_retried_post_returns_the_same_record(index: FileIndex) -> None:
    first = await post(index)
    again = await post(index, content(), held=True)
    assert not again.created
    assert again.record == first.record
    # the same bytes under another name, type or owner are other records
    assert (await post(index, content(), name="other.pdf", held=True)).created
    assert (await post(index, content(), content_type="image/png", held=True)).created
    assert (await post(index, content(), name=None, held=True)).created
    bob = await post(index, content(), owner="bob", held=True)
    assert bob.created
    assert bob.record.owner == "bob"


async def test_find_clean_and_verdicts(index: FileIndex) -> None:
    assert await index.find_clean(sha(1)) is None
    infected = Content(
        sha256=sha(2),
        sha1=bytes(20),
        size=68,
        scan=ScanRecord(ScanState.INFECTED, signature="Eicar", scanner=SCANNER, scanned_at=NOW),
    )
    await index.record_verdict(infected)
    assert await index.find_clean(sha(2)) is None
    done = await post(index, content(1))
    assert await index.find_clean(sha(1)) == done.record.content
    # a clean content is never downgraded by a recorded verdict
    await index.record_verdict(
        Content(sha256=sha(1), sha1=bytes(20), size=1, scan=ScanRecord(ScanState.FAILED))
    )
    assert await index.find_clean(sha(1)) == done.record.content
    # ... but content recorded infected and later scanned clean becomes clean
    later = content(2)
    await post(index, later)
    assert await index.find_clean(sha(2)) == later


async def test_held_content_that_was_deleted_is_gone(index: FileIndex) -> None:
    done = await post(index)
    removed = await index.delete("alice", done.record.id, NOW)
    assert removed is not None
    assert removed.doomed == (done.record.content.key,)
    with pytest.raises(ContentGone):
        await post(index, content(), held=True)
    assert (await index.list_files("alice", FileQuery())).items == []


async def test_two_promotions_of_the_same_bytes_converge(index: FileIndex) -> None:
    first = await post(index, content(1))
    second = await post(index, content(1), owner="bob")
    assert second.created
    # bob's record uses the object alice's upload made; bob's own copy is doomed
    assert second.record.content.key == first.record.content.key
    assert second.doomed != ()
    assert second.doomed[0] != first.record.content.key
    assert await index.doomed(NOW, 10) == list(second.doomed)
    await index.forget(second.doomed)
    assert await index.doomed(NOW, 10) == []


async def test_a_reserved_object_is_doomed_unless_a_commit_claims_it(index: FileIndex) -> None:
    claimed, lost = content(1), content(2)
    for c in (claimed, lost):
        assert c.key is not None
        assert await index.claim(c.sha256, c.key, NOW + timedelta(hours=1)) is None
    # not before its time: the upload may still be waiting for its verdict
    assert await index.doomed(NOW, 10) == []
    await index.commit(
        "alice",
        claimed,
        name="a",
        content_type="text/plain",
        placement=Placement(new_id="a1"),
        held=False,
        now=NOW,
    )
    # the commit claimed one; the other (its upload crashed) is due after the grace
    assert await index.doomed(NOW + timedelta(hours=2), 10) == [lost.key]


async def test_a_commit_after_its_reservation_expired_is_refused(index: FileIndex) -> None:
    late = content(1)
    assert late.key is not None
    assert await index.claim(late.sha256, late.key, NOW + HOUR) is None
    # the sweeper may be removing the object right now: the commit must not use it
    with pytest.raises(ContentGone):
        await index.commit(
            "alice",
            late,
            name="late",
            content_type="text/plain",
            placement=Placement(new_id="late"),
            held=False,
            now=NOW + 2 * HOUR,
        )
    assert await index.find_clean(late.sha256) is None
    assert await index.doomed(NOW + 2 * HOUR, 10) == [late.key]


async def test_claim_answers_a_dedup_hit_without_reserving(index: FileIndex) -> None:
    done = await post(index, content(1))
    other = new_object_key(sha(1))
    assert await index.claim(sha(1), other, NOW + HOUR) == done.record.content
    assert await index.doomed(NOW + 2 * HOUR, 10) == []


async def test_a_lost_object_is_stored_again_by_the_next_upload(index: FileIndex) -> None:
    first = await post(index, content(1))
    key = first.record.content.key
    assert key is not None
    await index.lose(sha(1), key)
    got = await index.get("alice", first.record.id)
    assert got is not None
    assert not got.content.present
    assert await index.find_clean(sha(1)) is None
    again = await post(index, content(1), owner="bob")
    assert again.doomed == ()
    healed = await index.get("alice", first.record.id)
    assert healed is not None
    assert healed.content.present
    assert healed.content.key == again.record.content.key != key


async def test_postponed_objects_wait(index: FileIndex) -> None:
    c = content(1)
    assert c.key is not None
    await index.claim(c.sha256, c.key, NOW)
    assert await index.doomed(NOW, 10) == [c.key]
    await index.postpone([c.key], NOW + HOUR)
    assert await index.doomed(NOW, 10) == []
    assert await index.doomed(NOW + HOUR, 10) == [c.key]


async def test_racing_writers_never_fail(index: FileIndex) -> None:
    """PUTs swapping bytes, PUTs of a file's own bytes against its DELETE, taggings against
    the tag's deletion: every transaction that lost a race runs again, none fails."""
    for round_ in range(10):
        await put(index, "x", content(1))
        await put(index, "y", content(2))
        await asyncio.gather(
            put(index, "x", content(2)),
            put(index, "y", content(1)),
            put(index, "z", content(1)),
        )
        for fid in ("x", "y", "z"):
            got = await index.get("alice", fid)
            assert got is not None
            assert got.content.present
        # a PUT of the file's own bytes against its DELETE: either order is fine, and
        # when the delete wins, the held bytes are gone (the upload is retried), not a 500
        raced = await asyncio.gather(
            put(index, "x", content(2), held=True),
            index.delete("alice", "x", NOW),
            return_exceptions=True,
        )
        assert not isinstance(raced[1], BaseException)
        assert not isinstance(raced[0], BaseException) or isinstance(raced[0], ContentGone)
        await index.create_tag("alice", "t", NOW)
        results = await asyncio.gather(
            index.tag_file("alice", "y", "t", NOW, add=True, max_tags=50),
            index.delete_tag("alice", "t"),
        )
        assert results[0] is not None
        for fid in ("x", "y", "z"):
            await index.delete("alice", fid, NOW)
        assert await index.find_clean(sha(1)) is None, round_
        assert await index.find_clean(sha(2)) is None, round_


async def test_a_file_carries_a_bounded_number_of_tags(index: FileIndex) -> None:
    done = await post(index)
    for tag in ("a", "b"):
        await index.tag_file("alice", done.record.id, tag, NOW, add=True, max_tags=2)
    with pytest.raises(TooLarge):
        await index.tag_file("alice", done.record.id, "c", NOW, add=True, max_tags=2)
    again = await index.tag_file("alice", done.record.id, "a", NOW, add=True, max_tags=2)
    assert again is not None


async def test_times_on_a_whole_second_sort_and_compare_right(index: FileIndex) -> None:
    """A time with no fraction is written as every other (the upload path's statements
    and SQLAlchemy's alike): inclusive and exclusive edges and ties in pages hold."""
    whole = datetime(2024, 1, 1, 12, 0, 0, tzinfo=UTC)
    a = await post(index, content(1), now=whole)
    b = await post(index, content(2), now=whole)
    later = await post(index, content(3), now=whole + timedelta(microseconds=1))
    ids = sorted([a.record.id, b.record.id])
    page = await index.list_files("alice", FileQuery(created_from=whole))
    assert [r.id for r in page.items] == [*ids, later.record.id]
    page = await index.list_files("alice", FileQuery(created_to=whole + timedelta(microseconds=1)))
    assert [r.id for r in page.items] == ids
    walked = await walk(index, "alice", FileQuery(page_size=1))
    assert [r.id for r in walked] == [*ids, later.record.id]
    got = await index.get("alice", a.record.id)
    assert got is not None
    assert got.created == whole


async def test_a_key_claimed_twice_is_a_conflict_not_a_crash(index: FileIndex) -> None:
    c = content(1)
    assert c.key is not None
    await index.claim(c.sha256, c.key, NOW + HOUR)
    with pytest.raises(Conflict):
        await index.claim(c.sha256, c.key, NOW + HOUR)


async def test_a_commit_whose_outcome_is_unknown_is_not_run_again(index: FileIndex) -> None:
    """COMMIT failed (the answer lost): the server may have committed. The transaction
    must not run a second time — it would misjudge its own work (the reservation it
    consumed) and the service would remove an object a record now uses. The lost answer
    is simulated: the real runner commits, then the wrapper reports the commit failed."""
    assert isinstance(index, SqlIndex)
    runner = index._runner
    runs = 0

    class LosesTheAnswer:
        dialect = runner.dialect
        sa_dialect = runner.sa_dialect

        async def run(self, fn: Any, *, write: bool, autocommit: bool = False) -> Any:
            nonlocal runs
            runs += 1
            await runner.run(fn, write=write, autocommit=autocommit)
            raise CommitOutcomeUnknown() from OSError("connection reset")

        async def close(self) -> None:
            await runner.close()

    c = content(1)
    await reserve(index, c)
    index._runner = LosesTheAnswer()  # type: ignore[assignment]
    try:
        with pytest.raises(IndexUnavailable, match="outcome is unknown"):
            await index.commit(
                "alice",
                c,
                name="x",
                content_type="text/plain",
                placement=Placement(new_id="lost-answer"),
                held=False,
                now=NOW,
            )
    finally:
        index._runner = runner
    assert runs == 1
    got = await index.get("alice", "lost-answer")
    assert got is not None
    assert got.content.key == c.key
    assert await index.doomed(NOW + 2 * HOUR, 10) == []  # the object stays claimed


async def test_delete_frees_content_with_its_last_record(index: FileIndex) -> None:
    a = await post(index, content(1))
    b = await post(index, content(1), owner="bob", held=True)
    c = await post(index, content(1), name="again.pdf", held=True)
    key = a.record.content.key
    for record in (a.record, c.record):
        removed = await index.delete("alice", record.id, NOW)
        assert removed is not None
        assert removed.doomed == ()
    assert await index.find_clean(sha(1)) is not None
    last = await index.delete("bob", b.record.id, NOW)
    assert last is not None
    assert last.doomed == (key,)
    assert await index.find_clean(sha(1)) is None
    assert await index.doomed(NOW, 10) == [key]
    assert await index.delete("bob", b.record.id, NOW) is None


# -------------------------------------------------------------------------------- PUT


async def test_put_creates_then_replaces(index: FileIndex) -> None:
    created = await put(index, "report-2024", content(1))
    assert created.created
    assert created.record.id == "report-2024"
    await index.tag_file("alice", "report-2024", "kept", NOW, add=True, max_tags=50)
    later = NOW + timedelta(minutes=1)
    replaced = await put(index, "report-2024", content(2), now=later)
    assert not replaced.created
    record = replaced.record
    assert record.content.sha256 == sha(2)
    assert record.created == NOW
    assert record.updated == later
    assert record.tags == ("kept",)
    # no versioning: the old bytes had no other record and are released
    assert replaced.doomed == (created.record.content.key,)
    assert await index.find_clean(sha(1)) is None
    # the same id is another owner's own name
    assert (await put(index, "report-2024", content(2), owner="bob", held=True)).created


async def test_replace_keeps_content_another_record_uses(index: FileIndex) -> None:
    await put(index, "one", content(1))
    await post(index, content(1), held=True)
    replaced = await put(index, "one", content(2))
    assert replaced.doomed == ()
    assert await index.find_clean(sha(1)) is not None


async def test_replace_with_the_same_bytes_frees_nothing(index: FileIndex) -> None:
    await put(index, "same", content(1))
    again = await put(index, "same", content(1), held=True)
    assert not again.created
    assert again.doomed == ()
    assert await index.find_clean(sha(1)) is not None


async def test_put_conditions(index: FileIndex) -> None:
    with pytest.raises(PreconditionFailed):
        await put(index, "cond", content(1), if_match=("*",))
    with pytest.raises(PreconditionFailed):
        await put(index, "cond", content(1), if_match=(sha(1),))
    assert (await put(index, "cond", content(1), if_none_match=True)).created
    with pytest.raises(PreconditionFailed):
        await put(index, "cond", content(2), if_none_match=True)
    with pytest.raises(PreconditionFailed):
        await put(index, "cond", content(2), if_match=(sha(9),))
    got = await index.get("alice", "cond")
    assert got is not None
    assert got.content.sha256 == sha(1)
    assert not (await put(index, "cond", content(2), if_match=(sha(9), sha(1)))).created
    assert not (await put(index, "cond", content(3), if_match=("*",))).created


# -------------------------------------------------------------------------------- listing


async def test_pages_walk_every_record_once_in_order(index: FileIndex) -> None:
    ids = []
    for i in range(23):
        # pairs of records share a timestamp: the id breaks the tie
        done = await post(index, content(i), now=NOW + timedelta(seconds=i // 2))
        ids.append(done.record)
    await post(index, content(99), owner="bob")
    found = await walk(index, "alice", FileQuery(page_size=5))
    assert len(found) == 23
    assert [r.id for r in found] == [r.id for r in sorted(ids, key=lambda r: (r.created, r.id))]


async def test_pages_under_concurrent_inserts(index: FileIndex) -> None:
    before = [
        (await post(index, content(i), now=NOW + timedelta(milliseconds=i))).record.id
        for i in range(30)
    ]
    stop = asyncio.Event()

    async def writer() -> None:
        i = 1000
        while not stop.is_set():
            await post(index, content(i), now=datetime.now(UTC))
            i += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(writer())
    try:
        found = await walk(index, "alice", FileQuery(page_size=5))
    finally:
        stop.set()
        await task
    seen = [r.id for r in found]
    assert len(seen) == len(set(seen)), "a record came twice"
    assert set(before) <= set(seen), "a record that existed before the walk was skipped"


async def test_filters(index: FileIndex) -> None:
    pdf = await post(index, content(1), name="a.pdf", content_type="application/pdf")
    png = await post(
        index, content(2), name="b.png", content_type="image/png", now=NOW + timedelta(hours=1)
    )
    jpg = await post(
        index, content(3), name="a.pdf", content_type="image/jpeg", now=NOW + timedelta(hours=2)
    )

    async def ids(**kw: object) -> list[str]:
        return [r.id for r in (await index.list_files("alice", FileQuery(**kw))).items]  # type: ignore[arg-type]

    assert await ids(name="a.pdf") == [pdf.record.id, jpg.record.id]
    assert await ids(content_type="image/png") == [png.record.id]
    assert await ids(content_type="image/*") == [png.record.id, jpg.record.id]
    # from is inclusive, to exclusive
    assert await ids(created_from=NOW + timedelta(hours=1)) == [png.record.id, jpg.record.id]
    assert await ids(created_to=NOW + timedelta(hours=1)) == [pdf.record.id]
    assert await ids(created_from=NOW, created_to=NOW + timedelta(hours=2)) == [
        pdf.record.id,
        png.record.id,
    ]
    # the same instant in another zone is the same instant
    plus2 = timezone(timedelta(hours=2))
    assert await ids(created_from=(NOW + timedelta(hours=2)).astimezone(plus2)) == [jpg.record.id]
    assert await ids(present=True) == [pdf.record.id, png.record.id, jpg.record.id]
    assert await ids(present=False) == []


async def test_hostile_values_are_only_values(index: FileIndex) -> None:
    evil = "x' OR '1'='1"
    done = await post(index, content(1), name=evil, owner="o'; DROP TABLE files; --")
    assert (await index.list_files("alice", FileQuery(name=evil))).items == []
    got = await index.list_files("o'; DROP TABLE files; --", FileQuery(name=evil))
    assert [r.id for r in got.items] == [done.record.id]
    assert (await index.list_files("alice", FileQuery(tags=(evil,)))).items == []
    assert (await index.list_files("%", FileQuery(tag_like="%"))).items == []
    await index.ping()


# -------------------------------------------------------------------------------- tags


async def test_tag_vocabulary(index: FileIndex) -> None:
    assert await index.create_tag("alice", "xray", NOW)
    assert not await index.create_tag("alice", "xray", NOW)
    assert await index.create_tag("alice", "Ärzte", NOW)
    assert await index.create_tag("bob", "bob-only", NOW)
    names = [t.name for t in await index.list_tags("alice", None, 10)]
    assert names == sorted(["xray", "Ärzte"])
    assert [t.name for t in await index.list_tags("alice", names[0], 10)] == names[1:]
    done = await post(index)
    await index.tag_file("alice", done.record.id, "xray", NOW, add=True, max_tags=50)
    assert await index.delete_tag("alice", "xray")
    assert not await index.delete_tag("alice", "xray")
    got = await index.get("alice", done.record.id)
    assert got is not None
    assert got.tags == ()


async def test_tagging_files(index: FileIndex) -> None:
    done = await post(index)
    fid = done.record.id
    tagged = await index.tag_file("alice", fid, "b", NOW, add=True, max_tags=50)
    assert tagged is not None
    assert tagged.tags == ("b",)
    tagged = await index.tag_file("alice", fid, "a", NOW, add=True, max_tags=50)
    assert tagged is not None
    assert tagged.tags == ("a", "b")
    again = await index.tag_file("alice", fid, "a", NOW, add=True, max_tags=50)  # idempotent
    assert again is not None
    assert again.tags == ("a", "b")
    assert [t.name for t in await index.list_tags("alice", None, 10)] == ["a", "b"]
    untagged = await index.tag_file("alice", fid, "b", NOW, add=False, max_tags=50)
    assert untagged is not None
    assert untagged.tags == ("a",)


async def test_search_by_tags(index: FileIndex) -> None:
    records = []
    for i in range(12):
        done = await post(index, content(i), now=NOW + timedelta(seconds=i))
        records.append(done.record.id)
        if i % 2 == 0:
            await index.tag_file("alice", done.record.id, "even", NOW, add=True, max_tags=50)
        if i % 3 == 0:
            await index.tag_file("alice", done.record.id, "three", NOW, add=True, max_tags=50)
    other = await post(index, content(50), owner="bob")
    await index.tag_file("bob", other.record.id, "even", NOW, add=True, max_tags=50)
    evens = await walk(index, "alice", FileQuery(page_size=5, tags=("even",)))
    assert [r.id for r in evens] == records[0::2]
    assert all("even" in r.tags for r in evens)
    both = await walk(index, "alice", FileQuery(page_size=5, tags=("even", "three")))
    assert [r.id for r in both] == records[0::6]
    # exact means exact
    assert (await index.list_files("alice", FileQuery(tags=("Even",)))).items == []
    assert (await index.list_files("alice", FileQuery(tags=("eve",)))).items == []
    narrowed = await index.list_files(
        "alice", FileQuery(tags=("even",), created_from=NOW + timedelta(seconds=5))
    )
    assert [r.id for r in narrowed.items] == records[6::2]


async def test_matching_tags_escape_and_fold(index: FileIndex) -> None:
    tags = {"a_b": 1, "axb": 2, "Ärzte-Befund": 3, "ÄRZTE-notes": 4, "plain": 5}
    ids = {}
    for tag, n in tags.items():
        done = await post(index, content(n), now=NOW + timedelta(seconds=n))
        await index.tag_file("alice", done.record.id, tag, NOW, add=True, max_tags=50)
        ids[tag] = done.record.id

    async def matching(pattern: str) -> set[str]:
        page = await index.list_files("alice", FileQuery(tag_like=pattern, page_size=100))
        return {r.id for r in page.items}

    # "_" is literal, not SQL's any-one-character
    assert await matching("a_b") == {ids["a_b"]}
    assert await matching("a_%") == {ids["a_b"]}
    assert await matching("a%b") == {ids["a_b"], ids["axb"]}
    # case-insensitive beyond ASCII
    assert await matching("ärzte%") == {ids["Ärzte-Befund"], ids["ÄRZTE-notes"]}
    assert await matching("%BEFUND") == {ids["Ärzte-Befund"]}
    assert await matching("%") == set(ids.values())
    assert await matching("nothing%") == set()
    # a file with two matching tags comes once
    await index.tag_file("alice", ids["axb"], "a-b", NOW, add=True, max_tags=50)
    page = await index.list_files("alice", FileQuery(tag_like="a%b", page_size=100))
    assert [r.id for r in page.items] == [ids["a_b"], ids["axb"]]


# -------------------------------------------------------------------------------- patch


async def test_patch(index: FileIndex) -> None:
    done = await post(index)
    fid = done.record.id
    later = NOW + timedelta(seconds=5)
    got = await index.update(
        "alice", fid, FilePatch(name="new.pdf", metadata={"a": 1, "b": {"c": 2}}), later
    )
    assert got.name == "new.pdf"
    assert got.metadata == {"a": 1, "b": {"c": 2}}
    assert got.updated == later
    assert got.created == NOW
    got = await index.update(
        "alice", fid, FilePatch(metadata={"a": None, "b": {"d": "ü"}}, tags=("x", "y")), later
    )
    assert got.metadata == {"b": {"c": 2, "d": "ü"}}
    assert got.name == "new.pdf"
    assert got.tags == ("x", "y")
    got = await index.update("alice", fid, FilePatch(name=None, tags=("y",)), later)
    assert got.name is None
    assert got.tags == ("y",)
    got = await index.update("alice", fid, FilePatch(metadata=None), later)
    assert got.metadata == {}
    with pytest.raises(TooLarge):
        await index.update(
            "alice", fid, FilePatch(metadata={"big": "x" * 200}, metadata_limit=100), later
        )
    again = await index.get("alice", fid)
    assert again is not None
    assert again.metadata == {}
    with pytest.raises(KeyError):
        await index.update("alice", "nope", FilePatch(name="x"), later)


async def test_records_survive_reopening(settings: Settings) -> None:
    async with open_index(settings) as index:
        done = await post(index)
    async with open_index(settings) as index:  # migrating again changes nothing
        assert await index.get("alice", done.record.id) == done.record


async def test_concurrent_commits(index: FileIndex) -> None:
    done = await asyncio.gather(*(post(index, content(i % 7)) for i in range(40)))
    got = await asyncio.gather(*(index.get("alice", d.record.id) for d in done))
    assert [g.id if g else None for g in got] == [d.record.id for d in done]
    assert len({d.record.id for d in done}) == 7  # a retried upload gets its record back


def test_the_index_is_one_implementation(index: FileIndex) -> None:
    assert isinstance(index, SqlIndex)


# -------------------------------------------------------------------------------- rescans

OLD_DB_SCANNER = "ClamAV 1.4.6/26000/Thu Feb 01 09:00:00 2024"


async def lease_all(index: FileIndex, now: datetime = NOW) -> list[Content]:
    return await index.lease_rescans(
        scanned_before=now + HOUR,
        older_db=None,
        round_started=now + HOUR,
        now=now,
        until=now + HOUR,
        limit=50,
    )


async def test_rescans_are_leased_oldest_first_and_once(index: FileIndex) -> None:
    older = replace(
        content(1), scan=ScanRecord(ScanState.CLEAN, scanner=SCANNER, scanned_at=NOW - HOUR)
    )
    newer = content(2)
    old_db = replace(
        content(3), scan=ScanRecord(ScanState.CLEAN, scanner=OLD_DB_SCANNER, scanned_at=NOW)
    )
    for c in (older, newer, old_db):
        await post(index, c)

    def lease(now: datetime, **kw: Any) -> Any:
        args = {
            "scanned_before": NOW,
            "older_db": None,
            "round_started": NOW + HOUR,
            "now": now,
            "until": now + HOUR,
        }
        return index.lease_rescans(**(args | {"limit": 10} | kw))

    # By age: only the verdict made before the bound; by database too: the older database's.
    assert [c.sha256 for c in await lease(NOW)] == [older.sha256]
    assert [c.sha256 for c in await lease(NOW, older_db=27000)] == [old_db.sha256]
    # Leased: nobody gets them again until the lease is past.
    assert await lease(NOW, older_db=27000) == []
    again = await lease(NOW + 2 * HOUR, older_db=27000)
    assert sorted(c.sha256 for c in again) == sorted([older.sha256, old_db.sha256])
    assert [c.sha256 for c in await lease(NOW + 4 * HOUR, older_db=27000, limit=1)] == [
        older.sha256  # oldest verdict first
    ]


async def test_a_rescan_verdict_takes_effect_on_every_record_once(index: FileIndex) -> None:
    c = content(7)
    mine = await post(index, c)
    theirs = await post(index, c, owner="bob", held=True)
    (leased,) = await lease_all(index)
    infected = ScanRecord(ScanState.INFECTED, "Later.Signature", SCANNER, NOW + HOUR)
    event = AuditEvent(action=Action.SCAN_VERDICT, result=Result.DENIED, detail={"x": 1})
    changed = await index.record_rescan(leased, infected, audit=event)
    assert sorted(changed) == sorted([("alice", mine.record.id), ("bob", theirs.record.id)])
    got = await index.get("alice", mine.record.id)
    assert got is not None
    assert got.content.scan.state is ScanState.INFECTED
    assert not got.content.present
    assert await index.find_clean(c.sha256) is None
    # Not clean any more: never leased for a rescan again.
    assert await lease_all(index, NOW + 8 * HOUR) == []


async def test_a_rescan_verdict_names_the_records_oldest_first(index: FileIndex) -> None:
    """The rescanner keeps the evidence as the oldest record's (quarantine item)."""
    c = content(17)
    zed = await post(index, c, owner="zed", now=NOW - 2 * HOUR)
    bob = await post(index, c, owner="bob", held=True, now=NOW)
    alice = await post(index, c, owner="alice", held=True, now=NOW - HOUR)
    (leased,) = await lease_all(index)
    infected = ScanRecord(ScanState.INFECTED, "Later.Signature", SCANNER, NOW + HOUR)
    changed = await index.record_rescan(
        leased, infected, audit=AuditEvent(action=Action.SCAN_VERDICT)
    )
    assert changed == [
        ("zed", zed.record.id),
        ("alice", alice.record.id),
        ("bob", bob.record.id),
    ]


async def test_evidence_moved_to_the_quarantine_is_forgotten_and_stored_anew(
    index: FileIndex,
) -> None:
    """The rescanner moved the infected object into the quarantine and ``lose``s it: the
    content stays infected and unserved, a refused re-upload names no object, and bytes
    committed clean later are stored anew (nothing doomed: the old object is gone)."""
    c = content(18)
    first = await post(index, c)
    (leased,) = await lease_all(index)
    infected = ScanRecord(ScanState.INFECTED, "Later.Signature", SCANNER, NOW + HOUR)
    await index.record_rescan(leased, infected, audit=AuditEvent(action=Action.SCAN_VERDICT))
    assert c.key is not None
    await index.lose(c.sha256, c.key)
    got = await index.get("alice", first.record.id)
    assert got is not None
    assert (got.content.scan.state, got.content.key) == (ScanState.INFECTED, None)
    assert await index.find_clean(c.sha256) is None
    await index.record_verdict(replace(c, key=None, scan=infected))
    assert await lease_all(index, NOW + 8 * HOUR) == []
    again = replace(c, key=new_object_key(c.sha256))
    committed = await post(index, again)
    assert committed.doomed == ()
    assert committed.record.content.key == again.key
    served = await index.get("alice", first.record.id)  # the old record is served again too
    assert served is not None
    assert served.content.present
    assert served.content.key == again.key


async def test_a_rescan_of_content_that_moved_changes_nothing(index: FileIndex) -> None:
    c = content(8)
    await post(index, c)
    (leased,) = await lease_all(index)
    moved = replace(leased, key=new_object_key(c.sha256))  # as if promoted again meanwhile
    infected = ScanRecord(ScanState.INFECTED, "Later.Signature", SCANNER, NOW + HOUR)
    event = AuditEvent(action=Action.SCAN_VERDICT)
    assert await index.record_rescan(moved, infected, audit=event) == []
    assert await index.find_clean(c.sha256) is not None


async def test_bytes_found_infected_then_clean_again_leave_no_orphan(index: FileIndex) -> None:
    """A signature withdrawn (a false positive): the same bytes uploaded again and scanned
    clean are promoted anew; the object kept as evidence is handed back for removal."""
    c = content(9)
    await post(index, c)
    (leased,) = await lease_all(index)
    infected = ScanRecord(ScanState.INFECTED, "False.Positive", SCANNER, NOW + HOUR)
    await index.record_rescan(leased, infected, audit=AuditEvent(action=Action.SCAN_VERDICT))
    again = replace(c, key=new_object_key(c.sha256))
    committed = await post(index, again)
    assert committed.doomed == (c.key,)
    assert committed.record.content.key == again.key
    assert committed.record.content.present


async def test_a_verdict_of_unknown_time_is_rescanned_first(index: FileIndex) -> None:
    """The first release's contents have no provenance (migration 0002): the oldest."""
    legacy = replace(content(11), scan=ScanRecord(ScanState.CLEAN))
    recent = content(12)
    await post(index, recent)
    await post(index, legacy)
    assert [c.sha256 for c in await lease_all(index)] == [legacy.sha256, recent.sha256]


async def test_a_refused_reupload_keeps_the_evidence_for_the_next_clean_commit(
    index: FileIndex,
) -> None:
    """Rescan: infected, object kept. A re-upload refused as infected records its verdict
    without dropping that key (nor weakening the verdict to unscannable); when the bytes are
    later committed clean, the evidence object is handed back for removal, not orphaned."""
    c = content(13)
    first = await post(index, c)
    (leased,) = await lease_all(index)
    infected = ScanRecord(ScanState.INFECTED, "Later.Signature", SCANNER, NOW + HOUR)
    await index.record_rescan(leased, infected, audit=AuditEvent(action=Action.SCAN_VERDICT))
    unscannable = ScanRecord(
        ScanState.UNSCANNABLE, "Heuristics.Limits.Exceeded.MaxScanTime", SCANNER, NOW + HOUR
    )
    await index.record_verdict(replace(c, key=None, scan=unscannable))
    got = await index.get("alice", first.record.id)
    assert got is not None
    assert got.content.scan.state is ScanState.INFECTED  # not weakened
    assert got.content.key == c.key  # the evidence is still known
    again = replace(c, key=new_object_key(c.sha256))
    committed = await post(index, again)
    assert committed.doomed == (c.key,)


async def test_a_clean_verdict_of_an_older_database_does_not_undo_a_newer_one(
    index: FileIndex,
) -> None:
    c = content(15)
    await post(index, c)
    (leased,) = await lease_all(index)
    infected = ScanRecord(ScanState.INFECTED, "Newer.Signature", SCANNER, NOW + HOUR)
    await index.record_rescan(leased, infected, audit=AuditEvent(action=Action.SCAN_VERDICT))
    lagging = replace(
        c,
        key=new_object_key(c.sha256),
        scan=ScanRecord(ScanState.CLEAN, scanner=OLD_DB_SCANNER, scanned_at=NOW + 2 * HOUR),
    )
    with pytest.raises(VerdictStands) as stands:
        await post(index, lagging)
    assert stands.value.signature == "Newer.Signature"
    assert await index.find_clean(c.sha256) is None


async def left_failed(index: FileIndex, c: Content) -> None:
    """What migration 0002 leaves of first-release records of one sha256 that disagree
    about its sha1 or size: the content stored, ``failed``, of unknown provenance, with
    the sha1 of one of them."""
    assert isinstance(index, SqlIndex)

    def run(conn: Any) -> None:
        conn.execute(
            update(contents)
            .where(contents.c.sha256 == c.sha256)
            .values(
                state="failed", sha1=bytes(20), scanner=None, signature_db=None, scanned_at=None
            )
        )

    await index.run(run, write=True)


async def verdict_rows(index: FileIndex, sha256: str) -> list[Any]:
    assert isinstance(index, SqlIndex)

    def run(conn: Any) -> list[Any]:
        query = select(audit_events).where(audit_events.c.sha256 == sha256)
        return list(conn.execute(query.order_by(audit_events.c.seq)).mappings())

    return await index.run(run)


async def test_stored_content_left_failed_is_rescanned_first_whatever_its_age(
    index: FileIndex,
) -> None:
    """Migration 0002 promised it: never served, rescanned first."""
    old = replace(content(21), scan=ScanRecord(ScanState.CLEAN, scanner=SCANNER, scanned_at=NOW))
    await post(index, old)
    broken = content(22)
    record = (await post(index, broken)).record
    await left_failed(index, broken)
    # Failed without an object (a verdict for bytes never stored): nothing to read back.
    unstored = replace(content(23), key=None, scan=ScanRecord(ScanState.FAILED))
    await index.record_verdict(unstored)
    got = await index.get("alice", record.id)
    assert got is not None
    assert not got.content.present

    def lease(now: datetime, **kw: Any) -> Any:
        args = {
            "scanned_before": NOW - HOUR,  # no clean verdict is due by age
            "older_db": None,
            "round_started": now,
            "now": now,
            "until": now + HOUR,
            "limit": 10,
        }
        return index.lease_rescans(**(args | kw))

    assert [c.sha256 for c in await lease(NOW)] == [broken.sha256]
    assert await lease(NOW) == []  # leased: once
    due = await lease(NOW + 2 * HOUR, scanned_before=NOW + HOUR)
    assert [c.sha256 for c in due] == [broken.sha256, old.sha256]  # failed before clean
    again = await lease(NOW + 4 * HOUR, scanned_before=NOW + HOUR, limit=1)
    assert [c.sha256 for c in again] == [broken.sha256]


async def test_a_failed_content_rescanned_clean_is_served_again_as_hashed(
    index: FileIndex,
) -> None:
    c = content(24)
    mine = (await post(index, c)).record
    theirs = (await post(index, c, owner="bob", held=True)).record
    await left_failed(index, c)
    (leased,) = await lease_all(index)
    assert leased.state is ScanState.FAILED
    assert leased.sha1 == bytes(20)
    clean = ScanRecord(ScanState.CLEAN, scanner=SCANNER, scanned_at=NOW + HOUR)
    event = AuditEvent(action=Action.SCAN_VERDICT, detail={"state": "clean"})
    hashed = replace(leased, sha1=c.sha1, size=c.size)
    changed = await index.record_rescan(hashed, clean, audit=event)
    assert sorted(changed) == sorted([("alice", mine.id), ("bob", theirs.id)])
    got = await index.get("bob", theirs.id)
    assert got is not None
    assert got.content.present
    assert (got.content.sha1, got.content.size, got.content.key) == (c.sha1, c.size, c.key)
    assert got.content.scan.scanned_at == NOW + HOUR
    assert await index.find_clean(c.sha256) == got.content
    rows = await verdict_rows(index, c.sha256)
    assert sorted((r["owner"], r["file_id"]) for r in rows if r["action"] == "scan.verdict") == (
        sorted([("alice", mine.id), ("bob", theirs.id)])
    )
    # Clean now, verdicted an hour later: not due before; a later clean rescan changes no
    # record.
    assert await lease_all(index) == []
    (leased,) = await lease_all(index, NOW + 2 * HOUR)
    later = replace(clean, scanned_at=NOW + 3 * HOUR)
    assert await index.record_rescan(leased, later, audit=event) == []


async def test_a_failed_content_rescanned_infected_stays_unserved(index: FileIndex) -> None:
    c = content(25)
    record = (await post(index, c)).record
    await left_failed(index, c)
    (leased,) = await lease_all(index)
    infected = ScanRecord(ScanState.INFECTED, "Later.Signature", SCANNER, NOW + HOUR)
    event = AuditEvent(action=Action.SCAN_VERDICT, result=Result.DENIED)
    assert await index.record_rescan(leased, infected, audit=event) == [("alice", record.id)]
    got = await index.get("alice", record.id)
    assert got is not None
    assert got.content.scan.state is ScanState.INFECTED
    assert not got.content.present
    assert await lease_all(index, NOW + 8 * HOUR) == []


async def test_a_rescan_verdict_for_a_state_that_changed_meanwhile_changes_nothing(
    index: FileIndex,
) -> None:
    """Leased failed, then an upload of the same bytes committed them clean: the rescan's
    verdict (made for the failed content) is not that content's any more."""
    c = content(26)
    await post(index, c)
    await left_failed(index, c)
    (leased,) = await lease_all(index)
    again = replace(c, key=new_object_key(c.sha256))
    assert (await post(index, again)).record.content.present
    infected = ScanRecord(ScanState.INFECTED, "Later.Signature", SCANNER, NOW + HOUR)
    moved = replace(leased, key=again.key)  # even under the content's key of now
    event = AuditEvent(action=Action.SCAN_VERDICT)
    assert await index.record_rescan(moved, infected, audit=event) == []
    assert await index.find_clean(c.sha256) is not None

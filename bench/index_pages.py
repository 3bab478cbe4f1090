"""Paging cost of the file index at a million records, on SQLite and on PostgreSQL.

    .venv/bin/python -m bench.index_pages [--records N] [--backends sqlite,postgres]
        [--repeats K] [--depth D] [--output FILE]

Per backend: a fresh index (a SQLite file in a temporary directory; a throwaway PostgreSQL
cluster from ``tests.servers.Postgres`` with ``POSTGRES_CONFIG``: shared_buffers 512MB),
migrated by ``open_sql_index``, then filled in bulk: ``--records`` files of one owner (plus
``--others`` files of five other owners, interleaved in time, so the owner filter matters),
sharing ``--contents`` content rows, each file with 1-3 tags of a 50-tag vocabulary in
which ``t07`` is on about 10% of the files. ``created`` increases by a random step of
microseconds, 0 for about 5% of the files (equal times: the id breaks the tie). SQLite is
filled through ``sqlite3`` in the formats SQLAlchemy writes (``YYYY-MM-DD HH:MM:SS.ffffff``
UTC text), PostgreSQL with COPY through the engine's asyncpg connection; then ANALYZE
(PostgreSQL: VACUUM ANALYZE). Row counts and the first page read back through the index
must match what was generated.

Timed: ``time.perf_counter`` around ``await index.list_files(...)``, ``--repeats`` rounds
after 5 untimed ones, every case once per round so that drift hits all alike; page size 50:

* ``list first`` / ``list deep``: the owner's listing, from the start and after the
  ``--depth``-th record (its cursor read by a direct query with OFFSET);
* ``tag first`` / ``tag deep``: the exact tag search ``tags=("t07",)``, likewise;
* ``like first`` / ``like deep``: the wildcard search ``tag_like="t0%"``, likewise.

Each page is checked (the deep one starts at record ``depth + 1``, (created, id) order, the
tag filter holds). Prints a markdown table (p50 and p99 in ms; deep / first for p99, target
<= 1.2 for list and tag search, and for p50), the plans (SQLite: EXPLAIN QUERY PLAN;
PostgreSQL: EXPLAIN ANALYZE with the values, and the generic plan, which the server may
switch a prepared statement to after five runs: SQLAlchemy's asyncpg dialect prepares
every query) and writes JSON to ``bench/results/index_pages.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import hashlib
import json
import os
import platform
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

if __package__ in (None, ""):  # run as a script: python bench/index_pages.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg
from sqlalchemy import Select, and_, event, exists, func, literal, select
from sqlalchemy.engine import Connection as SyncConnection

from fileshare.index.base import Cursor, FileQuery, Page
from fileshare.index.engine import open_sql_index
from fileshare.index.sql import SqlIndex, like_pattern
from fileshare.index.tables import contents, file_tags, files, tags
from tests.servers import Postgres

OWNER = "bench"
OTHER_OWNERS = ("alice", "bob", "carol", "dave", "erin")
VOCABULARY = tuple(f"t{i:02d}" for i in range(50))
HOT_TAG = "t07"
HOT_SHARE = 0.10
TAG_LIKE = "t0%"
PAGE_SIZE = 50
WARMUP = 5
BATCH = 10_000
#: Seconds a bulk statement on the raw connection may take (the engine says 10).
LONG = 1800.0
EPOCH = datetime(2024, 1, 1, tzinfo=UTC)
CONTENT_TYPES = ("application/pdf", "image/png", "text/plain", "application/octet-stream")
RESULTS = Path(__file__).resolve().parent / "results" / "index_pages.json"
POSTGRES_CONFIG = {
    "shared_buffers": "512MB",
    "maintenance_work_mem": "256MB",
    "max_wal_size": "8GB",
    "checkpoint_timeout": "30min",
}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# the data set (generated once, loaded into every backend)


@dataclass(frozen=True)
class Content:
    sha256: str
    sha1: bytes
    size: int
    object_key: str


@dataclass
class DataSet:
    contents: list[Content]
    #: Every file in created order: (owner, id, created in µs after EPOCH, content index,
    #: content type index, tags).
    files: list[tuple[str, str, int, int, int, tuple[str, ...]]]
    owners: tuple[str, ...]

    @property
    def file_tag_count(self) -> int:
        return sum(len(f[5]) for f in self.files)


def generate(records: int, others: int, n_contents: int, seed: int) -> DataSet:
    rng = random.Random(seed)
    found: list[Content] = []
    for i in range(n_contents):
        seed_bytes = f"content-{i}".encode()
        sha256 = hashlib.sha256(seed_bytes).hexdigest()
        key = f"sha256/{sha256[:2]}/{sha256[2:4]}/{sha256}.{rng.getrandbits(64):016x}"
        sha1 = hashlib.sha1(seed_bytes, usedforsecurity=False).digest()
        found.append(Content(sha256, sha1, rng.randint(1, 1 << 30), key))
    owners = [OWNER] * records + [OTHER_OWNERS[i % len(OTHER_OWNERS)] for i in range(others)]
    rng.shuffle(owners)
    others_vocabulary = [t for t in VOCABULARY if t != HOT_TAG]
    rows: list[tuple[str, str, int, int, int, tuple[str, ...]]] = []
    created = 0
    for owner in owners:
        if rng.random() >= 0.05:  # else the same time as the previous file
            created += rng.randint(1, 5_000_000)
        count = rng.randint(1, 3)
        chosen = rng.sample(others_vocabulary, count)
        if rng.random() < HOT_SHARE:
            chosen[0] = HOT_TAG
        rows.append(
            (
                owner,
                f"{rng.getrandbits(128):032x}",
                created,
                rng.randrange(n_contents),
                rng.randrange(len(CONTENT_TYPES)),
                tuple(chosen),
            )
        )
    rows.sort(key=lambda row: (row[2], row[1]))  # equal times: in id order, as listed
    return DataSet(found, rows, (OWNER, *OTHER_OWNERS))


def when(micros: int) -> datetime:
    return EPOCH + timedelta(microseconds=micros)


def sqlite_time(moment: datetime) -> str:
    """What SQLAlchemy's SQLite DateTime stores for a UTC time (``UtcDateTime``)."""
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


def content_rows(data: DataSet) -> Iterator[tuple[Any, ...]]:
    scanner = "ClamAV 1.4.6/27000/Mon Jan  1 00:00:00 2024"
    for c in data.contents:
        yield (c.sha256, c.sha1, c.size, "clean", c.object_key, None, scanner, 27000, EPOCH, EPOCH)


def tag_rows(data: DataSet) -> Iterator[tuple[str, str, str, datetime]]:
    for owner in data.owners:
        for tag in VOCABULARY:
            yield (owner, tag, tag.casefold(), EPOCH)


CONTENT_COLUMNS = (
    "sha256",
    "sha1",
    "size",
    "state",
    "object_key",
    "signature",
    "scanner",
    "signature_db",
    "scanned_at",
    "created",
)
FILE_COLUMNS = ("owner", "id", "name", "content_type", "sha256", "created", "updated", "meta")
TAG_COLUMNS = ("owner", "name", "folded", "created")
FILE_TAG_COLUMNS = ("owner", "tag", "created", "file_id")


def batches(rows: Iterator[tuple[Any, ...]], size: int = BATCH) -> Iterator[list[tuple[Any, ...]]]:
    batch: list[tuple[Any, ...]] = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def file_and_tag_rows(
    data: DataSet, stamp: Any
) -> tuple[Iterator[tuple[Any, ...]], Iterator[tuple[Any, ...]]]:
    """Rows of files and file_tags, times converted by ``stamp``: the same value in both."""
    stamps = [stamp(when(f[2])) for f in data.files]

    def file_rows() -> Iterator[tuple[Any, ...]]:
        for (owner, file_id, _, content, ctype, _tags), moment in zip(
            data.files, stamps, strict=True
        ):
            sha256 = data.contents[content].sha256
            name = f"file-{file_id[:8]}.bin"
            yield (owner, file_id, name, CONTENT_TYPES[ctype], sha256, moment, moment, "{}")

    def link_rows() -> Iterator[tuple[Any, ...]]:
        for (owner, file_id, _, _, _, names), moment in zip(data.files, stamps, strict=True):
            for tag in names:
                yield (owner, tag, moment, file_id)

    return file_rows(), link_rows()


def insert_sql(table: str, columns: Sequence[str]) -> str:
    marks = ", ".join("?" * len(columns))
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"  # noqa: S608 (ours)


def load_sqlite(path: Path, data: DataSet) -> None:
    """Bulk insert with ``sqlite3`` into the migrated file, then ANALYZE."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        for pragma in ("synchronous=OFF", "cache_size=-1048576", "temp_store=MEMORY"):
            db.execute(f"PRAGMA {pragma}")
        db.execute("BEGIN")
        stamp = sqlite_time
        db.executemany(
            insert_sql("contents", CONTENT_COLUMNS),
            [(*row[:8], stamp(row[8]), stamp(row[9])) for row in content_rows(data)],
        )
        db.executemany(
            insert_sql("tags", TAG_COLUMNS),
            [(*row[:3], stamp(row[3])) for row in tag_rows(data)],
        )
        file_rows, link_rows = file_and_tag_rows(data, stamp)
        for batch in batches(file_rows):
            db.executemany(insert_sql("files", FILE_COLUMNS), batch)
        for batch in batches(link_rows):
            db.executemany(insert_sql("file_tags", FILE_TAG_COLUMNS), batch)
        db.execute("COMMIT")
        db.execute("ANALYZE")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()


@contextlib.asynccontextmanager
async def raw_postgres(index: SqlIndex) -> Any:
    """The engine's own asyncpg connection, outside any SQLAlchemy transaction."""
    engine: Any = index._runner.engine  # type: ignore[attr-defined]
    async with engine.connect() as conn:
        raw = await conn.get_raw_connection()
        yield cast(asyncpg.Connection, raw.driver_connection)


async def load_postgres(index: SqlIndex, data: DataSet) -> None:
    """COPY through the engine's asyncpg connection, then VACUUM ANALYZE."""
    async with raw_postgres(index) as pg:

        async def copy(table: str, columns: Sequence[str], rows: list[tuple[Any, ...]]) -> None:
            await pg.copy_records_to_table(table, records=rows, columns=list(columns), timeout=LONG)

        async with pg.transaction():
            await copy("contents", CONTENT_COLUMNS, list(content_rows(data)))
            await copy("tags", TAG_COLUMNS, list(tag_rows(data)))
            file_rows, link_rows = file_and_tag_rows(data, lambda moment: moment)
            for batch in batches(file_rows, 100_000):
                await copy("files", FILE_COLUMNS, batch)
            for batch in batches(link_rows, 100_000):
                await copy("file_tags", FILE_TAG_COLUMNS, batch)
        await pg.execute("VACUUM ANALYZE", timeout=LONG)


async def list_page(index: SqlIndex, query: FileQuery) -> Page:
    """``index.list_files`` (called ``list`` before the rename), for the benchmark's owner."""
    method = getattr(index, "list_files", None) or getattr(index, "list")  # noqa: B009
    return cast(Page, await method(OWNER, query))


# --------------------------------------------------------------------------------------------
# checks and cursors


def ordered(stmt: Select[Any], created: Any, file_id: Any, offset: int) -> Select[Any]:
    return stmt.order_by(created, file_id).offset(offset).limit(1)


def like_source(pattern: str) -> Select[Any]:
    matching = file_tags.join(
        tags, and_(tags.c.owner == file_tags.c.owner, tags.c.name == file_tags.c.tag)
    )
    return select(files.c.created, files.c.id).where(
        files.c.owner == OWNER,
        exists(
            select(literal(1))
            .select_from(matching)
            .where(
                file_tags.c.owner == OWNER,
                file_tags.c.file_id == files.c.id,
                tags.c.folded.like(like_pattern(pattern), escape="\\"),
            )
        ),
    )


async def cursor_at(index: SqlIndex, kind: str, offset: int) -> Cursor:
    """The cursor of the record at ``offset`` (0-based) in the order of ``kind``."""
    stmt: Select[Any]
    if kind == "list":
        stmt = ordered(
            select(files.c.created, files.c.id).where(files.c.owner == OWNER),
            files.c.created,
            files.c.id,
            offset,
        )
    elif kind == "tag":
        stmt = ordered(
            select(file_tags.c.created, file_tags.c.file_id).where(
                file_tags.c.owner == OWNER, file_tags.c.tag == HOT_TAG
            ),
            file_tags.c.created,
            file_tags.c.file_id,
            offset,
        )
    else:
        stmt = ordered(like_source(TAG_LIKE), files.c.created, files.c.id, offset)
    row = await index.run(lambda conn: conn.execute(stmt).one())
    return Cursor(row[0], row[1])


async def count(index: SqlIndex, stmt: Select[Any]) -> int:
    return int(await index.run(lambda conn: conn.execute(stmt).scalar_one()))


async def verify(index: SqlIndex, data: DataSet) -> dict[str, int]:
    """The load is what was generated, as the index reads it."""
    mine = [f for f in data.files if f[0] == OWNER]
    expected = {
        "files": len(data.files),
        "owner_files": len(mine),
        "file_tags": data.file_tag_count,
        "owner_hot_tag": sum(HOT_TAG in f[5] for f in mine),
        "contents": len(data.contents),
    }
    found = {
        "files": await count(index, select(func.count()).select_from(files)),
        "owner_files": await count(
            index, select(func.count()).select_from(files).where(files.c.owner == OWNER)
        ),
        "file_tags": await count(index, select(func.count()).select_from(file_tags)),
        "owner_hot_tag": await count(
            index,
            select(func.count())
            .select_from(file_tags)
            .where(file_tags.c.owner == OWNER, file_tags.c.tag == HOT_TAG),
        ),
        "contents": await count(index, select(func.count()).select_from(contents)),
    }
    if found != expected:
        raise AssertionError(f"loaded {found}, generated {expected}")
    page = await list_page(index, FileQuery(page_size=PAGE_SIZE))
    for record, (_, file_id, micros, content, ctype, names) in zip(
        page.items, mine[:PAGE_SIZE], strict=True
    ):
        got = (record.id, record.created, record.content.sha256, record.content_type)
        want = (file_id, when(micros), data.contents[content].sha256, CONTENT_TYPES[ctype])
        if got != want or sorted(record.tags) != sorted(names):
            raise AssertionError(f"read back {record}, generated {want} {names}")
        if record.content.sha1 != data.contents[content].sha1 or record.content.key is None:
            raise AssertionError(f"content read back wrong: {record.content}")
    return found


# --------------------------------------------------------------------------------------------
# timing


@dataclass
class Case:
    name: str
    query: FileQuery
    #: The id the page must start with (the record after the cursor).
    first_id: str
    samples: list[float] = field(default_factory=list)


def quantile(samples: Sequence[float], q: int) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[q - 1]


async def build_cases(index: SqlIndex, depth: int) -> list[Case]:
    cases: list[Case] = []
    for kind, base in (
        ("list", FileQuery(page_size=PAGE_SIZE)),
        ("tag", FileQuery(page_size=PAGE_SIZE, tags=(HOT_TAG,))),
        ("like", FileQuery(page_size=PAGE_SIZE, tag_like=TAG_LIKE)),
    ):
        head = await cursor_at(index, kind, 0)
        after = await cursor_at(index, kind, depth - 1)
        following = await cursor_at(index, kind, depth)
        cases.append(Case(f"{kind} first", base, head.id))
        deep = FileQuery(page_size=PAGE_SIZE, tags=base.tags, tag_like=base.tag_like, after=after)
        cases.append(Case(f"{kind} deep", deep, following.id))
    return cases


def check_page(case: Case, page: Page) -> None:
    if len(page.items) != PAGE_SIZE or page.items[0].id != case.first_id or page.next is None:
        raise AssertionError(f"{case.name}: page starts at {page.items[:1]}, not {case.first_id}")
    if case.query.tags and not all(HOT_TAG in r.tags for r in page.items):
        raise AssertionError(f"{case.name}: a record without {HOT_TAG}")
    if case.query.tag_like and not all(any(t.startswith("t0") for t in r.tags) for r in page.items):
        raise AssertionError(f"{case.name}: a record without a t0* tag")
    keys = [(r.created, r.id) for r in page.items]
    if keys != sorted(keys):
        raise AssertionError(f"{case.name}: page out of (created, id) order")


async def measure(index: SqlIndex, cases: list[Case], repeats: int) -> None:
    for case in cases:
        check_page(case, await list_page(index, case.query))
    for round_ in range(WARMUP + repeats):
        for case in cases:
            start = time.perf_counter()
            await list_page(index, case.query)
            elapsed = time.perf_counter() - start
            if round_ >= WARMUP:
                case.samples.append(elapsed * 1000)


# --------------------------------------------------------------------------------------------
# plans


async def statement_of(index: SqlIndex, query: FileQuery) -> tuple[str, Any]:
    """The page query ``index.list`` sends (SQL and parameters as the driver gets them)."""
    seen: list[tuple[str, Any]] = []

    def hook(
        _conn: SyncConnection,
        _cursor: Any,
        statement: str,
        parameters: Any,
        _context: Any,
        _executemany: bool,
    ) -> None:
        seen.append((statement, parameters))

    runner_engine: Any = index._runner.engine  # type: ignore[attr-defined]
    engine = getattr(runner_engine, "sync_engine", runner_engine)
    event.listen(engine, "before_cursor_execute", hook)
    try:
        await list_page(index, query)
    finally:
        event.remove(engine, "before_cursor_execute", hook)
    pages = [s for s in seen if s[0].lstrip().upper().startswith("SELECT") and "LIMIT" in s[0]]
    assert len(pages) == 1, seen
    return pages[0]


def pg_literal(value: Any) -> str:
    if isinstance(value, datetime):
        return f"'{value.isoformat()}'"
    if isinstance(value, bool | int | float):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


async def plans(index: SqlIndex, cases: list[Case]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for case in cases:
        sql, params = await statement_of(index, case.query)
        entry: dict[str, Any] = {"sql": sql, "params": [str(p) for p in params]}
        if index.dialect == "sqlite":
            explain = "EXPLAIN QUERY PLAN " + sql

            def query_plan(conn: Any, explain: str = explain, params: Any = params) -> Any:
                return conn.exec_driver_sql(explain, params).all()

            rows = await index.run(query_plan)
            depth: dict[int, int] = {0: -1}
            lines = []
            for row in rows:
                values: tuple[Any, ...] = tuple(row)
                node, parent, detail = int(values[0]), int(values[1]), str(values[3])
                depth[node] = depth.get(parent, -1) + 1
                lines.append("  " * depth[node] + detail)
            entry["plan"] = lines
        else:
            async with raw_postgres(index) as pg:
                explain = "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) "
                entry["plan"] = [r[0] for r in await pg.fetch(explain + sql, *params, timeout=LONG)]
                # What a prepared statement (SQLAlchemy's asyncpg dialect prepares every
                # query) runs after five executions if the generic plan looks no worse.
                async with pg.transaction():
                    await pg.execute("SET LOCAL plan_cache_mode = force_generic_plan")
                    await pg.execute(f"PREPARE bench_page AS {sql}")
                    args = ", ".join(pg_literal(p) for p in params)
                    rows = await pg.fetch(f"{explain}EXECUTE bench_page({args})", timeout=LONG)
                    entry["generic_plan"] = [r[0] for r in rows]
                    await pg.execute("DEALLOCATE bench_page")
        found[case.name] = entry
    return found


# --------------------------------------------------------------------------------------------
# backends


async def bench_loaded(index: SqlIndex, data: DataSet, args: argparse.Namespace) -> dict[str, Any]:
    counts = await verify(index, data)
    cases = await build_cases(index, args.depth)
    log(f"  timing {len(cases)} cases x {args.repeats} rounds")
    await measure(index, cases, args.repeats)
    found_plans = await plans(index, cases)
    stats = {
        c.name: {
            "p50_ms": quantile(c.samples, 50),
            "p99_ms": quantile(c.samples, 99),
            "mean_ms": statistics.fmean(c.samples),
            "max_ms": max(c.samples),
        }
        for c in cases
    }
    kinds = ("list", "tag", "like")
    ratios = {k: stats[f"{k} deep"]["p99_ms"] / stats[f"{k} first"]["p99_ms"] for k in kinds}
    p50_ratios = {k: stats[f"{k} deep"]["p50_ms"] / stats[f"{k} first"]["p50_ms"] for k in kinds}
    return {
        "counts": counts,
        "cases": stats,
        "ratios": ratios,
        "p50_ratios": p50_ratios,
        "plans": found_plans,
    }


async def run_sqlite(data: DataSet, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    path = tmp / "index.sqlite3"
    index = await open_sql_index(url=None, sqlite_path=path)
    await index.close()
    log(f"  sqlite: loading into {path}")
    start = time.perf_counter()
    await asyncio.to_thread(load_sqlite, path, data)
    load_s = time.perf_counter() - start
    log(f"  sqlite: loaded and analyzed in {load_s:.1f}s")
    index = await open_sql_index(url=None, sqlite_path=path, migrate=False)
    try:
        result = await bench_loaded(index, data, args)
    finally:
        await index.close()
    version = sqlite3.sqlite_version
    return {"backend": "sqlite", "version": version, "load_s": load_s, **result}


async def run_postgres(data: DataSet, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    with Postgres(dir=tmp, extra_config=POSTGRES_CONFIG) as pg:
        dsn = pg.create_database("index_bench")
        index = await open_sql_index(url=dsn, sqlite_path=tmp / "unused")
        try:
            log("  postgres: loading with COPY")
            start = time.perf_counter()
            await load_postgres(index, data)
            load_s = time.perf_counter() - start
            log(f"  postgres: loaded and analyzed in {load_s:.1f}s")
            async with raw_postgres(index) as conn:
                version = str(await conn.fetchval("SHOW server_version"))
            result = await bench_loaded(index, data, args)
        finally:
            await index.close()
    return {
        "backend": "postgres",
        "version": version,
        "config": POSTGRES_CONFIG,
        "load_s": load_s,
        **result,
    }


# --------------------------------------------------------------------------------------------
# report


def table(results: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| backend | case | p50 ms | p99 ms | deep/first p99 (target <= 1.2) | deep/first p50 |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for result in results:
        for name, stat in result["cases"].items():
            kind, _, which = name.partition(" ")
            ratio = p50_ratio = ""
            if which == "deep":
                p50_ratio = f"{result['p50_ratios'][kind]:.2f}"
                value = result["ratios"][kind]
                verdict = ("ok" if value <= 1.2 else "MISSES 1.2") if kind != "like" else "-"
                ratio = f"{value:.2f} ({verdict})"
            lines.append(
                f"| {result['backend']} {result['version']} | {name} | "
                f"{stat['p50_ms']:.2f} | {stat['p99_ms']:.2f} | {ratio} | {p50_ratio} |"
            )
    return "\n".join(lines)


def plan_text(results: Sequence[dict[str, Any]]) -> str:
    out = []
    for result in results:
        # First pages in one line each (the same plan shapes; the work done, to compare).
        for name, entry in result["plans"].items():
            if name.endswith("first"):
                lines = [line.strip() for line in entry["plan"]]
                if result["backend"] == "postgres":  # the top node, its buffers, the time
                    lines = [lines[0], *(x for x in lines if x.startswith(("Buffers", "Exec")))]
                    lines = lines[:2] + lines[-1:]
                summary = lines
                out.append(f"- {result['backend']} {name}: " + "; ".join(summary))
        out.append("")
        for name, entry in result["plans"].items():
            if not name.endswith("deep"):
                continue
            out.append(f"### {result['backend']}: {name}\n")
            out.append("```")
            out.append(entry["sql"])
            out.append(f"-- params: {entry['params']}")
            out.append("```")
            out.append("```")
            out.extend(entry["plan"])
            out.append("```")
            if "generic_plan" in entry:
                out.append("generic plan (prepared statement):\n```")
                out.extend(entry["generic_plan"])
                out.append("```")
    return "\n".join(out)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = set(backends) - {"sqlite", "postgres"}
    if unknown:
        raise SystemExit(f"unknown backend(s): {', '.join(sorted(unknown))}")
    start = time.perf_counter()
    data = generate(args.records, args.others, args.contents, args.seed)
    log(
        f"generated {len(data.files)} files ({args.records} of {OWNER!r}), "
        f"{data.file_tag_count} file tags, {len(data.contents)} contents "
        f"in {time.perf_counter() - start:.1f}s"
    )
    # A million generated rows would make every full collection a pause of its own in
    # the timings: they are kept out of the collector's way.
    gc.collect()
    gc.freeze()
    results = []
    with tempfile.TemporaryDirectory(prefix="index-pages-") as tmp:
        for backend in backends:
            log(f"{backend}:")
            runner = run_sqlite if backend == "sqlite" else run_postgres
            results.append(await runner(data, args, Path(tmp)))
    report = {
        "records": args.records,
        "others": args.others,
        "contents": args.contents,
        "file_tags": data.file_tag_count,
        "owner_hot_tag": results[0]["counts"]["owner_hot_tag"] if results else None,
        "depth": args.depth,
        "page_size": PAGE_SIZE,
        "repeats": args.repeats,
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_average_at_end": os.getloadavg(),
        },
        "results": results,
    }
    print(table(results))
    print()
    print(plan_text(results))
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.index_pages", description=__doc__)
    parser.add_argument("--records", type=int, default=1_000_000, help="files of the owner")
    parser.add_argument("--others", type=int, default=5_000, help="files of other owners")
    parser.add_argument("--contents", type=int, default=10_000, help="content rows")
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--depth", type=int, default=10_000, help="records before deep pages")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args(argv)
    if args.depth + PAGE_SIZE >= args.records * HOT_SHARE:
        parser.error("--depth too large for --records (the hot tag has ~10% of the records)")
    report = asyncio.run(main_async(args))
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2, default=str) + "\n")
    log(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

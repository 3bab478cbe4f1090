"""The end of a soak: what the server acknowledged is there, byte for byte; what was deleted
or refused is not; nothing was left behind in the stores, the index, the memory budget or
the log; RSS stayed within its budget.

A *loss* is something a client was promised and did not get (a file that does not download
as sent, an answer that is not one the API documents); a *leak* is something left behind
(a staging object, an unfinished multipart upload, an object or row nobody references, a
reservation of the memory budget, an error in the log, RSS over its budget).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from bench.soak.driver import Api
from bench.soak.ledger import Ledger, Record, State
from bench.soak.probes import IndexProbe, StoreProbe
from fileshare.models import legacy_key

T = TypeVar("T")
#: Details kept per run (all findings are counted).
DETAIL_LIMIT = 100
#: Log levels that fail a soak.
FAILING_LEVELS = frozenset({"error", "critical", "exception", "fatal"})


@dataclass
class Findings:
    losses: Counter[str] = field(default_factory=Counter)
    leaks: Counter[str] = field(default_factory=Counter)
    details: list[str] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)

    def loss(self, kind: str, detail: str) -> None:
        self.losses[kind] += 1
        self._detail(f"LOSS {kind}: {detail}")

    def leak(self, kind: str, detail: str) -> None:
        self.leaks[kind] += 1
        self._detail(f"LEAK {kind}: {detail}")

    def _detail(self, line: str) -> None:
        if len(self.details) < DETAIL_LIMIT:
            self.details.append(line)


async def _bounded(
    items: Iterable[T], concurrency: int, one: Callable[[T], Awaitable[None]]
) -> None:
    queue: asyncio.Queue[T] = asyncio.Queue()
    for item in items:
        queue.put_nowait(item)

    async def worker() -> None:
        while not queue.empty():
            await one(queue.get_nowait())

    async with asyncio.TaskGroup() as tg:
        for _ in range(concurrency):
            tg.create_task(worker())


# ---------------------------------------------------------------------------- records


async def verify_records(
    api: Api,
    ledger: Ledger,
    findings: Findings,
    *,
    concurrency: int = 8,
    only: list[Record] | None = None,
) -> None:
    """Every acknowledged, undeleted record downloads as the bytes sent; every deleted one
    answers 404 (``only``: just these records)."""
    started = time.perf_counter()
    downloaded = 0

    async def live(record: Record) -> None:
        nonlocal downloaded
        what = f"{record.id} ({record.name}, {record.body.size} B) of {record.owner}"
        try:
            status, sha, size = await api.download(record.owner, record.id)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            findings.loss("download failed", f"{what}: {type(exc).__name__}: {exc}")
            return
        downloaded += size
        if status != 200:
            findings.loss("acknowledged file not served", f"{what}: HTTP {status}")
        elif sha != record.sha256 or size != record.body.size:
            findings.loss("downloaded other bytes", f"{what}: {size} B sha256 {sha}")

    async def deleted(record: Record) -> None:
        try:
            meta = await api.metadata_status(record.owner, record.id)
            content, _, _ = await api.download(record.owner, record.id)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            findings.loss("exception", f"GET deleted {record.id}: {exc!r}")
            return
        if (meta, content) != (404, 404):
            findings.leak(
                "deleted file still answers", f"{record.id}: metadata {meta}, content {content}"
            )

    chosen = list(ledger.records.values()) if only is None else only
    live_records = [r for r in chosen if r.expected_present]
    deleted_records = [r for r in chosen if r.state is State.DELETED]
    await _bounded(live_records, concurrency, live)
    await _bounded(deleted_records, concurrency, deleted)
    seconds = time.perf_counter() - started
    findings.notes["verified"] = {
        "downloaded_files": len(live_records),
        "downloaded_bytes": downloaded,
        "deleted_checked": len(deleted_records),
        "seconds": round(seconds, 1),
    }


# ------------------------------------------------------------------------------ index


def verify_index(
    index: IndexProbe,
    store: StoreProbe,
    ledger: Ledger,
    findings: Findings,
    *,
    permanent_bucket: str,
) -> None:
    """The index and the permanent bucket agree with the ledger and with each other."""
    rows = index.files()
    expected = {(r.owner, r.id): r for r in ledger.expected_live()}
    found = {(owner, fid): (sha, name) for owner, fid, sha, name in rows}
    for key, record in expected.items():
        if key not in found:
            findings.loss("acknowledged record missing from the index", f"{key}")
        elif found[key][0] != record.sha256:
            findings.loss("record names other bytes", f"{key}: {found[key][0]}")
    for key, (sha, name) in found.items():
        if key in expected:
            continue
        if (key[0], name) in ledger.aborted:
            findings.leak("record of an aborted upload", f"{key} {name}")
        elif sha in ledger.infected:
            findings.leak("record of an infected body", f"{key} {name}")
        elif key in ledger.records:
            findings.leak("deleted record still indexed", f"{key} {name}")
        else:
            findings.leak("record never acknowledged", f"{key} {name} {sha}")

    contents = index.contents()
    doomed = set(index.doomed())
    clean_keys = {obj: sha for sha, state, obj in contents if state == "clean" and obj}
    referenced = {sha for sha, _ in found.values()}
    states = Counter(state for _, state, _ in contents)
    for sha, state, obj in contents:
        if state == "clean" and sha not in referenced:
            findings.leak("clean content no record references", f"{sha} {obj}")
    permanent = store.keys(permanent_bucket)
    present = set(permanent)
    for obj in permanent:
        if obj in clean_keys:
            continue
        if obj in doomed:
            findings.notes["deferred_removals"] = findings.notes.get("deferred_removals", 0) + 1
        else:
            findings.leak("permanent object the index does not know", obj)
    for obj, sha in clean_keys.items():
        if sha in referenced and obj not in present:
            findings.loss("content object missing from the permanent bucket", f"{sha} {obj}")

    by_hash = {_hash_of(obj) for obj in permanent}
    state_of = {sha: state for sha, state, _ in contents}
    for sha in ledger.infected:
        if sha in by_hash:
            findings.leak("INFECTED BYTES IN THE PERMANENT BUCKET", sha)
        if sha in referenced:
            findings.leak("record of infected bytes", sha)
        if state_of.get(sha) == "clean":
            findings.leak("infected bytes indexed clean", sha)
    findings.notes["index"] = {
        "records": len(rows),
        "contents_by_state": dict(states),
        "doomed_rows": len(doomed),
        "permanent_objects": len(permanent),
        "infected_bodies": len(ledger.infected),
    }


def _hash_of(key: str) -> str | None:
    """The sha-256 a permanent key holds: keys are ``legacy_key(hex)`` with a suffix of
    their own (``models.new_object_key``); None for a key of another shape."""
    hexdigest = key.rsplit("/", 1)[-1].split(".", 1)[0]
    return hexdigest if key.startswith(legacy_key(hexdigest)) else None


# ------------------------------------------------------------------------------ stores


async def wait_stores_clean(
    store: StoreProbe,
    findings: Findings,
    *,
    unscanned_bucket: str,
    permanent_bucket: str,
    deadline: float,
) -> None:
    """The unscanned bucket empty, no unfinished write in either bucket: polled until
    ``deadline`` seconds have passed (cleanups of uploads cut at the very end may still
    run), then whatever is left is a leak."""
    started = time.monotonic()
    while True:
        staging = await asyncio.to_thread(store.keys, unscanned_bucket)
        unfinished: list[str] = []
        for bucket in (unscanned_bucket, permanent_bucket):
            listed = await asyncio.to_thread(store.unfinished, bucket)
            unfinished += [f"{bucket}: {u}" for u in listed or ()]
        if not staging and not unfinished:
            break
        if time.monotonic() - started > deadline:
            for key in staging:
                findings.leak("staging object left", f"{unscanned_bucket}/{key}")
            for upload in unfinished:
                findings.leak("unfinished upload left", upload)
            break
        await asyncio.sleep(0.5)
    findings.notes["stores_clean_after_s"] = round(time.monotonic() - started, 1)
    findings.notes["unfinished_listable"] = store.unfinished(unscanned_bucket) is not None


async def wait_budget_released(api: Api, findings: Findings, *, deadline: float) -> None:
    """The memory budget back at 0 and no upload in flight (a reservation never released
    would starve the server slowly)."""
    started = time.monotonic()
    while True:
        metrics = await api.metrics()
        in_use = metrics.get("fileshare_memory_budget_in_use_bytes", float("nan"))
        inflight = metrics.get("fileshare_uploads_in_flight", float("nan"))
        if in_use == 0 and inflight == 0:
            return
        if time.monotonic() - started > deadline:
            findings.leak(
                "memory budget not released", f"in use {in_use:.0f} B, in flight {inflight:.0f}"
            )
            return
        await asyncio.sleep(0.5)


# -------------------------------------------------------------------------------- log


def check_log(path: Path, findings: Findings) -> None:
    """fileshare's log (stdout and stderr, one JSON object per line in production): no
    error, no traceback, nothing that is not JSON."""
    levels: Counter[str] = Counter()
    events: Counter[str] = Counter()
    lines = 0
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        lines += 1
        try:
            doc = json.loads(line)
        except ValueError:
            findings.leak("log line not JSON", line[:200])
            continue
        if not isinstance(doc, dict):
            findings.leak("log line not JSON", line[:200])
            continue
        level = str(doc.get("level", "?")).lower()
        levels[level] += 1
        events[f"{level} {doc.get('event', '?')}"] += 1
        if level in FAILING_LEVELS:
            findings.leak(f"log {level}", line[:300])
        elif "Traceback" in line or "exception" in doc:
            findings.leak("log traceback", line[:300])
    findings.notes["log"] = {"lines": lines, "by_level": dict(levels), "events": dict(events)}


# -------------------------------------------------------------------------------- RSS


@dataclass(frozen=True)
class RssBudget:
    """What the server's RSS may reach: its baseline (after start-up and a warm-up), plus
    the upload memory budget (``FILESHARE_MEMORY_BUDGET``: what uploads in flight may
    reserve), plus what each client connection holds outside that budget (aiohttp's
    parser and stream buffers, 1 MiB is generous), plus slack for the allocator (freed
    memory is not returned to the OS at once)."""

    baseline: int
    memory_budget: int
    clients: int
    per_connection: int = 1024 * 1024
    slack: int = 64 * 1024 * 1024

    @property
    def limit(self) -> int:
        return self.baseline + self.memory_budget + self.clients * self.per_connection + self.slack


def check_rss(
    samples: list[tuple[float, int]], budget: RssBudget, end: int, findings: Findings
) -> dict[str, Any]:
    values = [v for _, v in samples] or [end]
    peak = max(max(values), end)
    if peak > budget.limit:
        at = max(samples, key=lambda s: s[1])[0] if samples else 0.0
        findings.leak(
            "RSS over budget",
            f"peak {peak / 2**20:.0f} MiB at {at:.0f} s > {budget.limit / 2**20:.0f} MiB",
        )
    fifth = max(1, len(values) // 5)
    return {
        "baseline": budget.baseline,
        "peak": peak,
        "end": end,
        "limit": budget.limit,
        "memory_budget": budget.memory_budget,
        "first_fifth_median": int(statistics.median(values[:fifth])),
        "last_fifth_median": int(statistics.median(values[-fifth:])),
        "timeline": _timeline(samples),
    }


def _timeline(samples: list[tuple[float, int]], points: int = 10) -> list[tuple[float, int]]:
    """The highest RSS in each tenth of the run."""
    if not samples:
        return []
    end = samples[-1][0] or 1.0
    out: list[tuple[float, int]] = []
    for i in range(points):
        lo, hi = end * i / points, end * (i + 1) / points
        window = [v for t, v in samples if lo <= t <= hi]
        if window:
            out.append((round(hi, 1), max(window)))
    return out

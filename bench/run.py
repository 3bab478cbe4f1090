"""The benchmark: fileshare beside its no-overhead limits, on servers it starts itself.

    .venv/bin/python -m bench [--quick] [--no-gcs] [--no-concurrency] [--output FILE]
    python bench/run.py ...

See ``bench/README.md`` for what each column measures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import platform
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if __package__ in (None, ""):  # run as a script: python bench/run.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

from bench import report
from bench.clients import (
    FileshareClient,
    GcsDirect,
    MiB,
    S3Direct,
    bounded,
    lockstep,
    metric_delta,
    scan,
    scan_stream,
    stage_key,
)
from bench.procs import REPO, CpuMeter, FileshareServer, hwm_bytes, reset_hwm, rss_bytes
from fileshare.config import ClamdAddress
from fileshare.models import legacy_key
from fileshare.scan.clamd import ClamdScanner
from tests.servers import Clamd, FakeGcs, SeaweedS3, clamd_command

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

T = TypeVar("T")

API_PRINCIPAL = "bench"
API_KEY = "bench-key-0123456789abcdef"
PART_SIZE = 8 * MiB
PARTS_IN_FLIGHT = 2
MAX_UPLOAD = 512 * MiB
#: fileshare's default (FILESHARE_CLAMD_MAX_SCANS), also used by the direct clamd client.
CLAMD_MAX_SCANS = 8
#: Every timed operation gets this long before the benchmark gives up on it.
OP_TIMEOUT = 180.0
STAGES = ("transfer", "verdict_wait", "promote")
RESULTS = REPO / "bench" / "results" / "latest.json"


@dataclass
class Plan:
    quick: bool
    sizes: list[int]
    runs: dict[int, int]
    gcs_sizes: list[int]
    gcs_runs: dict[int, int]
    concurrent_uploads: int
    concurrency: int = 16
    concurrent_size: int = 1 * MiB
    part_size: int = PART_SIZE
    parts_in_flight: int = PARTS_IN_FLIGHT
    clamd_max_threads: int = 4
    clamd_max_scans: int = CLAMD_MAX_SCANS

    @classmethod
    def make(cls, args: argparse.Namespace) -> Plan:
        sizes = [1 * MiB, 16 * MiB, 256 * MiB]
        gcs_sizes = [1 * MiB, 16 * MiB] if args.quick else [1 * MiB, 16 * MiB, 64 * MiB]
        if args.sizes:
            sizes = [int(s) * MiB for s in args.sizes.split(",")]
        if args.gcs_sizes:
            gcs_sizes = [int(s) * MiB for s in args.gcs_sizes.split(",")]

        def runs_for(size: int) -> int:
            if args.runs:
                return int(args.runs)
            if args.quick:
                return 1 if size > 16 * MiB else 2
            return 5

        return cls(
            quick=args.quick,
            sizes=sizes,
            runs={s: runs_for(s) for s in sizes},
            gcs_sizes=gcs_sizes,
            gcs_runs={s: runs_for(s) for s in gcs_sizes},
            concurrent_uploads=args.uploads or (48 if args.quick else 160),
        )


@dataclass
class Results:
    """Everything measured, as written to the JSON file."""

    meta: dict[str, Any] = field(default_factory=dict)
    #: section ("s3", "gcs") -> size label -> scenario -> list of runs
    runs: dict[str, dict[str, dict[str, list[dict[str, Any]]]]] = field(default_factory=dict)
    concurrency: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)

    def add(self, section: str, size: int, scenario: str, run: dict[str, Any]) -> None:
        by_size = self.runs.setdefault(section, {}).setdefault(report.size_label(size), {})
        by_size.setdefault(scenario, []).append(run)


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


#: The same first 4 KiB for every buffer (the rest is fresh). clamd types a file by its
#: first KiB: about 3 random heads in 4 read as "UTF-16BE character data", the rest as
#: "binary data", and a binary file holding an HTML-like magic anywhere (most 256 MiB
#: random buffers do) is scanned twice, 2.3 times as long. This head (checked with
#: ``clamscan --debug``) reads as UTF-16BE, so every run scans at the same speed.
#: ``--pure-random`` turns it off.
FIXED_HEAD = random.Random(0).randbytes(4096)
_pure_random = False


def fresh(size: int) -> bytes:
    """New random bytes: clamd caches clean verdicts by hash (the cache is off too)."""
    if _pure_random or size <= len(FIXED_HEAD):
        return os.urandom(size)
    return FIXED_HEAD + os.urandom(size - len(FIXED_HEAD))


class Timer:
    """Times one awaitable under a deadline, with the CPU each process spent on it."""

    def __init__(self, cpu: CpuMeter) -> None:
        self.cpu = cpu

    async def __call__(self, op: Awaitable[T]) -> tuple[T, float, dict[str, float]]:
        self.cpu.start()
        started = time.perf_counter()
        async with asyncio.timeout(OP_TIMEOUT):
            result = await op
        seconds = time.perf_counter() - started
        return result, seconds, self.cpu.stop()


def _run(seconds: float, cpu: dict[str, float], **extra: Any) -> dict[str, Any]:
    return {"seconds": round(seconds, 4), "cpu": cpu, **extra}


@dataclass
class Served:
    """The single-write fileshare (``FILESHARE_PROMOTION=single-write``) beside the default
    one: its client, its pid, and a timer that counts its CPU as "fileshare"."""

    client: FileshareClient
    pid: int
    timer: Timer


def _served(base: Mapping[str, int], fs: FileshareServer, http: aiohttp.ClientSession) -> Served:
    pids = {**base, "fileshare": fs.pid}
    return Served(FileshareClient(http, fs.url, API_KEY), fs.pid, Timer(CpuMeter(pids)))


# ------------------------------------------------------------------------------- S3


@dataclass
class S3Context:
    plan: Plan
    results: Results
    direct: S3Direct
    scanner: ClamdScanner
    fileshare: FileshareClient
    fileshare_pid: int
    timer: Timer
    #: None: no single-write server in this run (bench.direct reuses the context).
    single_write: Served | None = None
    direct_bucket: str = "bench-direct"
    seed_unscanned: str = "bench-seed-unscanned"
    seed_permanent: str = "bench-seed-permanent"
    fs_unscanned: str = "fs-unscanned"
    fs_permanent: str = "fs-permanent"

    @property
    def buckets(self) -> list[str]:
        return [
            self.direct_bucket,
            self.seed_unscanned,
            self.seed_permanent,
            self.fs_unscanned,
            self.fs_permanent,
        ]


async def s3_direct_multipart(ctx: S3Context, size: int, record: bool) -> None:
    data, key = fresh(size), f"direct/{uuid.uuid4().hex}"
    _, seconds, cpu = await ctx.timer(ctx.direct.multipart(ctx.direct_bucket, key, data))
    await ctx.direct.delete(ctx.direct_bucket, key)
    if record:
        ctx.results.add("s3", size, "a", _run(seconds, cpu))


async def s3_direct_put(ctx: S3Context, size: int, record: bool) -> None:
    data, key = fresh(size), f"direct/{uuid.uuid4().hex}"
    _, seconds, cpu = await ctx.timer(ctx.direct.put(ctx.direct_bucket, key, data))
    await ctx.direct.delete(ctx.direct_bucket, key)
    if record:
        ctx.results.add("s3", size, "a1", _run(seconds, cpu))


async def clamd_alone(ctx: S3Context | GcsContext, section: str, size: int, record: bool) -> None:
    data = fresh(size)
    (sent, _), seconds, cpu = await ctx.timer(scan(ctx.scanner, data))
    if record:
        extra = {"last_byte_s": round(sent, 4), "after_last_byte_s": round(seconds - sent, 4)}
        ctx.results.add(section, size, "b", _run(seconds, cpu, **extra))


async def s3_both(ctx: S3Context, size: int, record: bool) -> None:
    """(f): the direct multipart PUT and the clamd stream at the same time."""
    data, key = fresh(size), f"direct/{uuid.uuid4().hex}"

    async def put() -> float:
        started = time.perf_counter()
        await ctx.direct.multipart(ctx.direct_bucket, key, data)
        return time.perf_counter() - started

    async def both() -> tuple[float, float]:
        put_s, (_, scan_s) = await asyncio.gather(put(), scan(ctx.scanner, data))
        return put_s, scan_s

    (put_s, scan_s), seconds, cpu = await ctx.timer(both())
    await ctx.direct.delete(ctx.direct_bucket, key)
    if record:
        extra = {"put_s": round(put_s, 4), "scan_s": round(scan_s, 4)}
        ctx.results.add("s3", size, "f", _run(seconds, cpu, **extra))


async def s3_lockstep(ctx: S3Context, size: int, record: bool) -> None:
    """(f2): fileshare's data flow (1 MiB at a time to both, the slower one paces)
    from the bench process: no HTTP hop, no hashing, no promotion."""
    data, key = fresh(size), f"direct/{uuid.uuid4().hex}"
    writer = ctx.direct.writer(ctx.direct_bucket, key)
    sent, seconds, cpu = await ctx.timer(lockstep(writer, ctx.scanner, data))
    await ctx.direct.delete(ctx.direct_bucket, key)
    if record:
        extra = {"last_byte_s": round(sent, 4), "after_last_byte_s": round(seconds - sent, 4)}
        ctx.results.add("s3", size, "f2", _run(seconds, cpu, **extra))


async def s3_seed(ctx: S3Context, size: int, record: bool) -> None:
    """(c): the original seed, one step after the other."""
    data = fresh(size)
    digest = hashlib.sha256(data).hexdigest()
    staging, target = f"staging/{uuid.uuid4().hex}", legacy_key(digest)
    steps: dict[str, float] = {}

    async def seed() -> None:
        mark = time.perf_counter()

        def step(name: str) -> None:
            nonlocal mark
            now = time.perf_counter()
            steps[name] = round(now - mark, 4)
            mark = now

        await ctx.direct.multipart(ctx.seed_unscanned, staging, data)
        step("stage_s")
        if await ctx.direct.exists(ctx.seed_permanent, target):
            raise RuntimeError("fresh random bytes already permanent")
        step("head_s")
        await scan_stream(ctx.scanner, ctx.direct.read(ctx.seed_unscanned, staging, MiB))
        step("read_scan_s")
        await ctx.direct.copy(ctx.seed_unscanned, staging, ctx.seed_permanent, target)
        step("copy_s")
        await ctx.direct.delete(ctx.seed_unscanned, staging)
        step("delete_s")

    _, seconds, cpu = await ctx.timer(seed())
    await ctx.direct.delete(ctx.seed_permanent, target)
    if record:
        ctx.results.add("s3", size, "c", _run(seconds, cpu, **steps))


async def fileshare_upload_and_again(
    ctx: S3Context | GcsContext,
    section: str,
    size: int,
    record: bool,
) -> None:
    """(d) a fresh upload, (e) the same bytes again, (e2) again with Content-Digest; (w) a
    fresh upload to the single-write server. Single-write's dedup paths are the default's
    (the same pipeline up to the verdict), so they are not timed twice."""
    copy = Served(ctx.fileshare, ctx.fileshare_pid, ctx.timer)
    ids = await _fileshare_runs(
        ctx.results,
        copy,
        section,
        size,
        record,
        [("d", 201, False), ("e", 200, False), ("e2", 200, True)],
    )
    for file_id in ids:  # physically: the next run's bytes are fresh anyway
        await ctx.fileshare.delete(file_id)
    if (single := ctx.single_write) is not None:
        for file_id in await _fileshare_runs(
            ctx.results, single, section, size, record, [("w", 201, False)]
        ):
            await single.client.delete(file_id)


async def _fileshare_runs(
    results: Results,
    served: Served,
    section: str,
    size: int,
    record: bool,
    steps: list[tuple[str, int, bool]],
) -> set[str]:
    """The same fresh bytes uploaded once per step (scenario, expected status, send the
    digest), each timed with its server's stage metrics; returns the record ids."""
    data = fresh(size)
    sha = hashlib.sha256(data)
    fs, pid = served.client, served.pid
    stage_sums = [stage_key("sum", s) for s in STAGES]
    scanned_key = stage_key("count", "verdict_wait")
    ids: set[str] = set()

    async def one(scenario: str, expect: int, digest: bytes | None) -> None:
        before = await fs.metrics()
        rss_before = rss_bytes(pid)
        hwm_reset = reset_hwm(pid)
        (status, body), seconds, cpu = await served.timer(fs.upload(data, sha256=digest))
        growth = hwm_bytes(pid) - rss_before if hwm_reset else None
        after = await fs.metrics()
        if status != expect or body.get("sha256") != sha.hexdigest():
            raise RuntimeError(f"({scenario}) HTTP {status}, sha256 {body.get('sha256')}")
        ids.add(body["id"])
        stages = {
            k.split('"')[1] + "_s": v for k, v in metric_delta(before, after, stage_sums).items()
        }
        # Outside the pipeline's stages: HTTP, dedup HEAD, index, staging delete.
        stages["other_s"] = round(seconds - sum(stages.values()), 4)
        scans = metric_delta(before, after, [scanned_key])[scanned_key]
        if record:
            run = _run(
                seconds,
                cpu,
                status=status,
                scanned=scans > 0,
                rss_before=rss_before,
                rss_growth=growth,
                server_stages=stages,
            )
            results.add(section, size, scenario, run)

    for scenario, expect, with_digest in steps:
        await one(scenario, expect, sha.digest() if with_digest else None)
    return ids


async def s3_concurrency(ctx: S3Context) -> None:
    plan = ctx.plan
    n, workers, size = plan.concurrent_uploads, plan.concurrency, plan.concurrent_size
    out: dict[str, Any] = {"uploads": n, "clients": workers, "size": size}

    async def measure(name: str, one: Callable[[int], Awaitable[Any]]) -> None:
        seconds, _, cpu = await ctx.timer(bounded(n, workers, one))
        out[name] = {"seconds": round(seconds, 3), "per_s": round(n / seconds, 1), "cpu": cpu}
        progress(f"  concurrency {name}: {n / seconds:.1f}/s")

    keys = [f"conc/{uuid.uuid4().hex}" for _ in range(n)]
    blobs = [fresh(size) for _ in range(n)]
    await measure("direct_put", lambda i: ctx.direct.put(ctx.direct_bucket, keys[i], blobs[i]))
    await bounded(n, workers, lambda i: ctx.direct.delete(ctx.direct_bucket, keys[i]))

    blobs = [fresh(size) for _ in range(n)]

    async def put_and_scan(i: int) -> None:
        await asyncio.gather(
            ctx.direct.put(ctx.direct_bucket, keys[i], blobs[i]), scan(ctx.scanner, blobs[i])
        )

    await measure("direct_put_and_scan", put_and_scan)
    await bounded(n, workers, lambda i: ctx.direct.delete(ctx.direct_bucket, keys[i]))

    statuses: list[int] = []
    ids: list[str] = []

    async def upload(served: Served, i: int) -> None:
        status, body = await served.client.upload(blobs[i])
        statuses.append(status)
        ids.append(body["id"])

    servers = [("fileshare", Served(ctx.fileshare, ctx.fileshare_pid, ctx.timer))]
    if ctx.single_write is not None:
        servers.append(("fileshare_w", ctx.single_write))
    for name, served in servers:
        blobs = [fresh(size) for _ in range(n)]
        statuses.clear()
        ids.clear()
        rss_before = rss_bytes(served.pid)
        hwm_reset = reset_hwm(served.pid)
        seconds, _, cpu = await served.timer(bounded(n, workers, partial(upload, served)))
        out[name] = {"seconds": round(seconds, 3), "per_s": round(n / seconds, 1), "cpu": cpu}
        progress(f"  concurrency {name}: {n / seconds:.1f}/s")
        if hwm_reset:
            out[name]["rss_growth"] = hwm_bytes(served.pid) - rss_before
        if statuses.count(201) != n:
            raise RuntimeError(f"concurrent {name} uploads answered {sorted(set(statuses))}")
        await bounded(n, workers, partial(_delete, served.client, ids))
    ctx.results.concurrency = out


async def _delete(client: FileshareClient, ids: list[str], i: int) -> None:
    await client.delete(ids[i])


async def run_s3(
    plan: Plan,
    results: Results,
    clamd: Clamd,
    seaweed: SeaweedS3,
    fs: FileshareServer,
    fs_w: FileshareServer,
) -> None:
    config = AioConfig(
        region_name=seaweed.region,
        signature_version="s3v4",
        max_pool_connections=64,
        s3={"payload_signing_enabled": False, "addressing_style": "path"},
        retries={"mode": "standard", "max_attempts": 3},
    )
    client_cm = get_session().create_client(
        "s3",
        endpoint_url=seaweed.endpoint,
        region_name=seaweed.region,
        aws_access_key_id=seaweed.access_key,
        aws_secret_access_key=seaweed.secret_key,
        config=config,
    )
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=OP_TIMEOUT)
    connector = aiohttp.TCPConnector(limit=64)
    async with (
        client_cm as client,
        aiohttp.ClientSession(timeout=timeout, connector=connector) as http,
    ):
        s3: S3Client = client
        pids = {
            "bench": os.getpid(),
            "fileshare": fs.pid,
            "seaweedfs": seaweed.pid,
            "clamd": clamd.pid,
        }
        ctx = S3Context(
            single_write=_served(pids, fs_w, http),
            plan=plan,
            results=results,
            direct=S3Direct(s3, part_size=plan.part_size, parts_in_flight=plan.parts_in_flight),
            scanner=_scanner(clamd),
            fileshare=FileshareClient(http, fs.url, API_KEY),
            fileshare_pid=fs.pid,
            timer=Timer(CpuMeter(pids)),
        )

        units: list[tuple[str, Callable[[int, bool], Awaitable[None]]]] = [
            ("a", lambda size, rec: s3_direct_multipart(ctx, size, rec)),
            ("a1", lambda size, rec: s3_direct_put(ctx, size, rec)),
            ("b", lambda size, rec: clamd_alone(ctx, "s3", size, rec)),
            ("f", lambda size, rec: s3_both(ctx, size, rec)),
            ("f2", lambda size, rec: s3_lockstep(ctx, size, rec)),
            ("c", lambda size, rec: s3_seed(ctx, size, rec)),
            (
                "d/e/e2",
                lambda size, rec: fileshare_upload_and_again(ctx, "s3", size, rec),
            ),
        ]
        await _run_units("s3", plan.sizes, plan.runs, units, results)
        if plan.concurrent_uploads:
            progress(
                f"[s3] concurrency: {plan.concurrent_uploads} uploads of "
                f"{report.size_label(plan.concurrent_size)}, {plan.concurrency} clients"
            )
            await s3_concurrency(ctx)


async def _run_units(
    section: str,
    sizes: list[int],
    runs: dict[int, int],
    units: list[tuple[str, Callable[[int, bool], Awaitable[None]]]],
    results: Results,
) -> None:
    """A warm-up round (at the smallest size, and at 16 MiB for the multipart paths),
    then every unit in turn for each run, so that a drift of the machine spreads over
    every scenario alike."""
    progress(f"[{section}] warm-up")
    for warm in sorted({min(sizes), min(16 * MiB, max(sizes))}):
        for _name, unit in units:
            await unit(warm, False)
    for size in sizes:
        for run in range(runs[size]):
            started = time.perf_counter()
            for _name, unit in units:
                await unit(size, True)
            took = time.perf_counter() - started
            progress(
                f"[{section}] {report.size_label(size)} run {run + 1}/{runs[size]}: "
                f"{report.run_line(results.runs[section][report.size_label(size)], run)}"
                f"  ({took:.1f} s with set-up)"
            )


def _scanner(clamd: Clamd) -> ClamdScanner:
    return ClamdScanner(
        ClamdAddress.parse(clamd.address), verdict_timeout=OP_TIMEOUT, max_scans=CLAMD_MAX_SCANS
    )


# ------------------------------------------------------------------------------ GCS


@dataclass
class GcsContext:
    plan: Plan
    results: Results
    direct: GcsDirect
    scanner: ClamdScanner
    fileshare: FileshareClient
    fileshare_pid: int
    timer: Timer
    #: None: no single-write server in this run (bench.direct reuses the context).
    single_write: Served | None = None
    direct_bucket: str = "bench-direct"
    fs_unscanned: str = "fs-unscanned"
    fs_permanent: str = "fs-permanent"


async def gcs_direct(ctx: GcsContext, size: int, record: bool, resumable: bool) -> None:
    data, key = fresh(size), f"direct/{uuid.uuid4().hex}"
    upload = ctx.direct.resumable if resumable else ctx.direct.simple
    _, seconds, cpu = await ctx.timer(upload(ctx.direct_bucket, key, data))
    await ctx.direct.delete(ctx.direct_bucket, key)
    if record:
        ctx.results.add("gcs", size, "g_resumable" if resumable else "g_simple", _run(seconds, cpu))


async def gcs_both(ctx: GcsContext, size: int, record: bool) -> None:
    data, key = fresh(size), f"direct/{uuid.uuid4().hex}"

    # As fileshare writes: one request if the object fits in a part, else resumable.
    upload = ctx.direct.simple if size <= ctx.plan.part_size else ctx.direct.resumable

    async def put() -> float:
        started = time.perf_counter()
        await upload(ctx.direct_bucket, key, data)
        return time.perf_counter() - started

    async def both() -> tuple[float, float]:
        put_s, (_, scan_s) = await asyncio.gather(put(), scan(ctx.scanner, data))
        return put_s, scan_s

    (put_s, scan_s), seconds, cpu = await ctx.timer(both())
    await ctx.direct.delete(ctx.direct_bucket, key)
    if record:
        extra = {"put_s": round(put_s, 4), "scan_s": round(scan_s, 4)}
        ctx.results.add("gcs", size, "g_both", _run(seconds, cpu, **extra))


async def run_gcs(
    plan: Plan,
    results: Results,
    clamd: Clamd,
    gcs: FakeGcs,
    fs: FileshareServer,
    fs_w: FileshareServer,
) -> None:
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=OP_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        pids = {"bench": os.getpid(), "fileshare": fs.pid, "fake-gcs": gcs.pid, "clamd": clamd.pid}
        ctx = GcsContext(
            single_write=_served(pids, fs_w, http),
            plan=plan,
            results=results,
            direct=GcsDirect(http, gcs.endpoint, part_size=plan.part_size),
            scanner=_scanner(clamd),
            fileshare=FileshareClient(http, fs.url, API_KEY),
            fileshare_pid=fs.pid,
            timer=Timer(CpuMeter(pids)),
        )

        units: list[tuple[str, Callable[[int, bool], Awaitable[None]]]] = [
            ("g_simple", lambda size, rec: gcs_direct(ctx, size, rec, resumable=False)),
            ("g_resumable", lambda size, rec: gcs_direct(ctx, size, rec, resumable=True)),
            ("b", lambda size, rec: clamd_alone(ctx, "gcs", size, rec)),
            ("g_both", lambda size, rec: gcs_both(ctx, size, rec)),
            (
                "d/e/e2",
                lambda size, rec: fileshare_upload_and_again(ctx, "gcs", size, rec),
            ),
        ]
        await _run_units("gcs", plan.gcs_sizes, plan.gcs_runs, units, results)


# ---------------------------------------------------------------------------- driver


class _Diagnosed(RuntimeError):
    """A section failed; the message says which server is gone, with its log tail."""


class _Watched(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def running(self) -> bool: ...
    def log_tail(self, lines: int = ...) -> str: ...


def _section(coro: Coroutine[Any, Any, None], servers: list[_Watched]) -> None:
    """Run one section; on failure, tell whether a server died under it."""
    try:
        asyncio.run(coro)
    except Exception as exc:
        notes = []
        for server in servers:
            if not server.running:
                notes.append(
                    f"{server.name} is not running any more; log tail:\n{server.log_tail()}"
                )
        if not notes:
            raise
        raise _Diagnosed(f"{type(exc).__name__}: {exc}\n" + "\n".join(notes)) from exc


def _fileshare_settings(buckets: tuple[str, str], clamd: Clamd) -> dict[str, str]:
    return {
        "FILESHARE_UNSCANNED_BUCKET": buckets[0],
        "FILESHARE_PERMANENT_BUCKET": buckets[1],
        "FILESHARE_CLAMD": clamd.address,
        "FILESHARE_MAX_UPLOAD_SIZE": str(MAX_UPLOAD),
        "FILESHARE_PART_SIZE": str(PART_SIZE),
        "FILESHARE_PARTS_IN_FLIGHT": str(PARTS_IN_FLIGHT),
        "FILESHARE_API_KEYS": f"{API_PRINCIPAL}:{API_KEY}",
        "FILESHARE_CLAMD_VERDICT_TIMEOUT": str(OP_TIMEOUT),
        "FILESHARE_CLAMD_MAX_SCANS": str(CLAMD_MAX_SCANS),
    }


def _single_write(settings: dict[str, str]) -> dict[str, str]:
    """The same server with single-write promotion, on buckets of its own."""
    return settings | {
        "FILESHARE_PROMOTION": "single-write",
        "FILESHARE_UNSCANNED_BUCKET": "fs-w-unscanned",
        "FILESHARE_PERMANENT_BUCKET": "fs-w-permanent",
    }


def _version(command: list[str]) -> str:
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else ""


def _meta(plan: Plan, clamd: Clamd) -> dict[str, Any]:
    commit = _version(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    weed = Path(sys.executable).parent / "weed"
    return {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "content": "os.urandom" if _pure_random else "fixed 4 KiB head + os.urandom",
        "commit": commit,
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "clamd": clamd_command(clamd.host, clamd.port, b"VERSION").decode(errors="replace"),
        "seaweedfs": _version([str(weed), "version"]) if weed.exists() else "unknown",
        "plan": asdict(plan),
        "fileshare": {
            "part_size": PART_SIZE,
            "parts_in_flight": PARTS_IN_FLIGHT,
            "max_upload_size": MAX_UPLOAD,
            "clamd_max_scans": plan.clamd_max_scans,
        },
        "clamd_config": {
            "StreamMaxLength": clamd.max_stream,
            "DisableCache": clamd.disable_cache,
            "MaxThreads": clamd.max_threads,
        },
    }


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs (about 2 minutes)")
    parser.add_argument("--sizes", help="S3 sizes in MiB, comma-separated (default 1,16,256)")
    parser.add_argument("--gcs-sizes", help="GCS sizes in MiB (default 1,16,64; quick: 1,16)")
    parser.add_argument(
        "--runs", type=int, help="runs per size (default 5; quick: 2, 1 above 16 MiB)"
    )
    parser.add_argument("--uploads", type=int, help="concurrent-test uploads (default 160)")
    parser.add_argument("--no-s3", action="store_true", help="skip the S3 section")
    parser.add_argument("--no-gcs", action="store_true", help="skip the GCS section")
    parser.add_argument("--no-concurrency", action="store_true", help="skip 16-client test")
    parser.add_argument(
        "--pure-random",
        action="store_true",
        help="no fixed 4 KiB head: clamd's speed then varies with the content (see README)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"JSON ({RESULTS})")
    args = parser.parse_args(argv)
    if args.no_concurrency:
        args.uploads = 0
    return args


def main(argv: list[str] | None = None) -> int:
    global _pure_random
    args = parse_args(argv)
    _pure_random = args.pure_random
    plan = Plan.make(args)
    if args.no_concurrency:
        plan.concurrent_uploads = 0
    results = Results()
    started = time.perf_counter()
    status = 0
    try:
        with _sigterm_as_interrupt(), contextlib.ExitStack() as stack:
            progress("starting clamd (DisableCache yes)...")
            clamd = stack.enter_context(
                Clamd(
                    max_stream=MAX_UPLOAD,
                    disable_cache=True,
                    max_threads=plan.clamd_max_threads,
                )
            )
            results.meta = _meta(plan, clamd)
            if not args.no_s3:
                progress("starting SeaweedFS and fileshare (s3)...")
                with SeaweedS3() as seaweed:
                    for bucket in (
                        "bench-direct",
                        "bench-seed-unscanned",
                        "bench-seed-permanent",
                        "fs-unscanned",
                        "fs-permanent",
                        "fs-w-unscanned",
                        "fs-w-permanent",
                    ):
                        seaweed.create_bucket(bucket)
                    settings = _fileshare_settings(("fs-unscanned", "fs-permanent"), clamd)
                    settings |= {
                        "FILESHARE_STORAGE": "s3",
                        "FILESHARE_S3_ENDPOINT": seaweed.endpoint,
                        "FILESHARE_S3_REGION": seaweed.region,
                        "FILESHARE_S3_ACCESS_KEY": seaweed.access_key,
                        "FILESHARE_S3_SECRET_KEY": seaweed.secret_key,
                    }
                    with (
                        FileshareServer("s3", settings) as fs,
                        FileshareServer("s3-w", _single_write(settings)) as fs_w,
                    ):
                        _section(
                            run_s3(plan, results, clamd, seaweed, fs, fs_w),
                            [clamd, seaweed, fs, fs_w],
                        )
            if not args.no_gcs:
                progress("starting fake-gcs-server and fileshare (gcs)...")
                with FakeGcs() as gcs:
                    for bucket in (
                        "bench-direct",
                        "fs-unscanned",
                        "fs-permanent",
                        "fs-w-unscanned",
                        "fs-w-permanent",
                    ):
                        gcs.create_bucket(bucket)
                    settings = _fileshare_settings(("fs-unscanned", "fs-permanent"), clamd)
                    settings |= {
                        "FILESHARE_STORAGE": "gcs",
                        "FILESHARE_GCS_ENDPOINT": gcs.endpoint,
                        "FILESHARE_GCS_PROJECT": gcs.project,
                    }
                    with (
                        FileshareServer("gcs", settings) as fs,
                        FileshareServer("gcs-w", _single_write(settings)) as fs_w,
                    ):
                        _section(
                            run_gcs(plan, results, clamd, gcs, fs, fs_w), [clamd, gcs, fs, fs_w]
                        )
    except KeyboardInterrupt:
        progress("interrupted: servers stopped; writing what was measured")
        results.meta["interrupted"] = True
        status = 130
    except Exception as exc:
        progress(f"benchmark failed: {type(exc).__name__}: {exc}")
        results.meta["error"] = f"{type(exc).__name__}: {exc}"
        status = 1
    results.meta["duration_s"] = round(time.perf_counter() - started, 1)
    results.summary = report.summarize(results, plan)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(asdict(results), indent=2) + "\n")
    print(report.render(results, plan))
    progress(f"results written to {args.output}")
    return status


if __name__ == "__main__":
    sys.exit(main())
